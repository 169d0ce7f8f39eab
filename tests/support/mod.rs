//! Shared test harness: the database, the runtime, and ways to look at the server from
//! outside a lock (pg_locks), so tests prove behaviour without trusting our counters.
#![allow(dead_code)]

pub mod cluster;
pub mod examples;
pub mod lanes;
pub mod pgbouncer;
pub mod rt;
pub mod statements;

use std::time::{Duration, Instant};

use pglock::LockKey;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

pub use cluster::{database_url, scratch_dir};

/// The bound on every wait that should simply end (a blocking lock, a task, a poll).
pub const WAIT: Duration = Duration::from_secs(10);

/// A new pool on the test database, for one test.
pub async fn pool() -> PgPool {
    pool_with(16).await
}

/// A new pool of at most `max` connections on the test database.
pub async fn pool_with(max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(20))
        .connect(&database_url())
        .await
        .unwrap_or_else(|err| panic!("{}", no_database(&err)))
}

/// A new connection outside any pool, to look at the server from another session.
pub async fn connect() -> PgConnection {
    let options: PgConnectOptions = database_url().parse().expect("DATABASE_URL parses");
    options
        .disable_statement_logging()
        .connect()
        .await
        .unwrap_or_else(|err| panic!("{}", no_database(&err)))
}

fn no_database(err: &sqlx::Error) -> String {
    format!(
        "cannot reach the test database ({err}); set DATABASE_URL to a PostgreSQL server, \
         or unset it to let the tests start a private cluster"
    )
}

/// The name the test harness knows a test by, for running it again in a child process
/// (`--exact`): `module_path!()` without the crate, then the function, e.g.
/// `test_name(module_path!(), "child")` in `tests/pg/loss.rs` is `loss::child`.
pub fn test_name(module_path: &str, function: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, module)) => format!("{module}::{function}"),
        None => function.to_owned(),
    }
}

/// A key no other test uses: the hash of the test's own name and this process.
pub fn key(test: &str) -> LockKey {
    LockKey::from_name(&format!("pglock-tests/{test}/{}", std::process::id()))
}

/// An int-pair key no other test uses.
pub fn pair_key(test: &str) -> LockKey {
    match key(test) {
        LockKey::BigInt(k) => LockKey::IntPair((k >> 32) as i32, k as i32),
        pair => pair,
    }
}

/// The backend pids of sessions that hold `key` (granted), in any mode: one entry per mode
/// held, ordered by pid.
pub async fn holders(key: LockKey) -> Vec<i32> {
    let rows = holders_with_mode(key).await;
    rows.into_iter().map(|(pid, _)| pid).collect()
}

/// The backend pids of sessions waiting for `key`.
pub async fn waiters(key: LockKey) -> Vec<i32> {
    waiters_at(&database_url(), key).await
}

/// How many advisory locks (any key) the session with backend `pid` holds or waits for.
pub async fn advisory_locks_of(pid: i32) -> i64 {
    advisory_locks_of_pid_at(&database_url(), pid).await
}

/// How many advisory locks (any key) the backend `pid` at the server `url` holds or awaits.
pub async fn advisory_locks_of_pid_at(url: &str, pid: i32) -> i64 {
    let mut conn = connect_at(url).await;
    let n = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
    )
    .bind(pid)
    .fetch_one(&mut conn)
    .await
    .expect("query pg_locks");
    let _ = conn.close().await;
    n
}

/// Every advisory lock on `key` at the server `url`, held or awaited, as
/// `(pid, mode, granted)` ordered by pid then mode, `mode` as `pg_locks` names it
/// (`ExclusiveLock`, `ShareLock`); read from a session of its own.
pub async fn advisory_locks_on_key_at(url: &str, key: LockKey) -> Vec<(i32, String, bool)> {
    let (classid, objid, objsubid) = key.pg_locks_ids();
    let mut conn = connect_at(url).await;
    let rows = sqlx::query_as(
        "SELECT pid, mode, granted FROM pg_locks WHERE locktype = 'advisory' \
         AND classid = $1 AND objid = $2 AND objsubid = $3 ORDER BY pid, mode",
    )
    .bind(sqlx::postgres::types::Oid(classid))
    .bind(sqlx::postgres::types::Oid(objid))
    .bind(objsubid)
    .fetch_all(&mut conn)
    .await
    .expect("query pg_locks");
    let _ = conn.close().await;
    rows
}

/// The backend pid of a pool's connections: every idle connection of `pool`, by pid.
pub async fn idle_pids(pool: &PgPool) -> Vec<i32> {
    let mut conns = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..pool.num_idle() {
        let mut conn = pool.acquire().await.expect("acquire");
        pids.push(backend_pid(&mut conn).await);
        conns.push(conn);
    }
    pids
}

/// The backend pid of a connection.
pub async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pg_backend_pid")
}

/// Polls `condition` every 20 ms until it holds, failing the test after `limit`.
/// Returns how long it took.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not true within {limit:?}");
        rt::sleep(Duration::from_millis(20)).await;
    }
}

/// Granted advisory locks on `key` as `(pid, mode)`, `mode` as `pg_locks` names it
/// (`ExclusiveLock`, `ShareLock`), ordered by pid then mode.
pub async fn holders_with_mode(key: LockKey) -> Vec<(i32, String)> {
    holders_with_mode_at(&database_url(), key).await
}

/// Like [`holders`], but finds the key in `pg_locks` with the server's own arithmetic
/// instead of `LockKey::pg_locks_ids`, so a wrong mapping in the library cannot hide.
pub async fn holders_by_server_arithmetic(key: LockKey) -> Vec<i32> {
    let mut conn = connect().await;
    let query = match key {
        LockKey::BigInt(k) => sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = $1 ORDER BY pid",
        )
        .bind(k),
        LockKey::IntPair(a, b) => sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objsubid = 2 AND classid::int8 = ($1::int8 & 4294967295) \
             AND objid::int8 = ($2::int8 & 4294967295) ORDER BY pid",
        )
        .bind(a)
        .bind(b),
    };
    let pids = query.fetch_all(&mut conn).await.expect("query pg_locks");
    let _ = conn.close().await;
    pids
}

/// `pg_try_advisory_lock` on `key` from `conn`: another session, outside any pglock lock.
pub async fn try_lock_on(conn: &mut PgConnection, key: LockKey) -> bool {
    advisory_call(
        conn,
        key,
        "SELECT pg_try_advisory_lock($1)",
        "SELECT pg_try_advisory_lock($1, $2)",
    )
    .await
}

/// `pg_advisory_unlock` on `key` from `conn`; whether a level was released.
pub async fn unlock_on(conn: &mut PgConnection, key: LockKey) -> bool {
    advisory_call(
        conn,
        key,
        "SELECT pg_advisory_unlock($1)",
        "SELECT pg_advisory_unlock($1, $2)",
    )
    .await
}

/// Whether a brand-new session (outside every pool) can take `key` exclusively right
/// now. It unlocks at once (before closing: a closing backend frees its locks only
/// when it exits), so it never holds the key afterwards.
pub async fn free_for_another_session(key: LockKey) -> bool {
    let mut conn = connect().await;
    let took = try_lock_on(&mut conn, key).await;
    if took {
        assert!(
            unlock_on(&mut conn, key).await,
            "unlock what was just taken"
        );
    }
    let _ = conn.close().await;
    took
}

/// `(pid, advisory locks held or awaited)` for every idle connection of `pool`.
/// Borrows every idle connection for the look, then gives them all back.
pub async fn advisory_locks_of_idle(pool: &PgPool) -> Vec<(i32, i64)> {
    let mut counts = Vec::new();
    for pid in idle_pids(pool).await {
        counts.push((pid, advisory_locks_of(pid).await));
    }
    counts
}

/// Whether a backend with `pid` is still connected.
pub async fn backend_alive(pid: i32) -> bool {
    let mut conn = connect().await;
    let alive = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
        .bind(pid)
        .fetch_one(&mut conn)
        .await
        .expect("query pg_stat_activity");
    let _ = conn.close().await;
    alive
}

/// A table name no other test (or test process) uses: `<prefix>_<pid>_<n>`.
pub fn unique_table(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_{}_{n}", std::process::id())
}

/// Waits (up to `limit`) until every connection of `pool` is back and idle, so a look at
/// its idle connections sees all of them.
pub async fn settled(pool: &PgPool, limit: Duration) {
    eventually(
        limit,
        "every pool connection is back in the pool",
        || async { pool.num_idle() as u32 == pool.size() },
    )
    .await;
}

/// A new pool of at most `max` connections on the database at `url` (a private cluster,
/// say), failing the test if it cannot connect.
pub async fn pool_at(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(20))
        .connect(url)
        .await
        .unwrap_or_else(|err| panic!("cannot reach {url}: {err}"))
}

/// A new connection outside any pool to the database at `url`.
pub async fn connect_at(url: &str) -> PgConnection {
    let options: PgConnectOptions = url.parse().expect("the URL parses");
    options
        .disable_statement_logging()
        .connect()
        .await
        .unwrap_or_else(|err| panic!("cannot reach {url}: {err}"))
}

/// `pg_try_advisory_lock_shared` on `key` from `conn`: a shared holder outside pglock.
pub async fn try_lock_shared_on(conn: &mut PgConnection, key: LockKey) -> bool {
    advisory_call(
        conn,
        key,
        "SELECT pg_try_advisory_lock_shared($1)",
        "SELECT pg_try_advisory_lock_shared($1, $2)",
    )
    .await
}

/// `pg_advisory_unlock_shared` on `key` from `conn`; whether a level was released.
pub async fn unlock_shared_on(conn: &mut PgConnection, key: LockKey) -> bool {
    advisory_call(
        conn,
        key,
        "SELECT pg_advisory_unlock_shared($1)",
        "SELECT pg_advisory_unlock_shared($1, $2)",
    )
    .await
}

/// `SHOW name` on `conn`.
pub async fn show(conn: &mut PgConnection, name: &str) -> String {
    // SHOW takes no parameters; current_setting does the same and binds the name.
    sqlx::query_scalar("SELECT current_setting($1)")
        .bind(name)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|err| panic!("SHOW {name}: {err}"))
}

/// `application_name` of the backend `pid`, from `pg_stat_activity` (None: no such backend).
pub async fn application_name_of(pid: i32) -> Option<String> {
    let mut conn = connect().await;
    let name = sqlx::query_scalar("SELECT application_name FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_optional(&mut conn)
        .await
        .expect("query pg_stat_activity");
    let _ = conn.close().await;
    name
}

/// A loopback TCP proxy in front of the test database, to cut or silence connections.
pub mod proxy;

/// Granted advisory locks on `key` at the server `url` (a private cluster, say) as
/// `(pid, mode)`, like [`holders_with_mode`].
pub async fn holders_with_mode_at(url: &str, key: LockKey) -> Vec<(i32, String)> {
    let rows = advisory_locks_on_key_at(url, key).await;
    rows.into_iter()
        .filter(|(_, _, granted)| *granted)
        .map(|(pid, mode, _)| (pid, mode))
        .collect()
}

/// Backend pids waiting for `key` at the server `url`, like [`waiters`].
pub async fn waiters_at(url: &str, key: LockKey) -> Vec<i32> {
    let rows = advisory_locks_on_key_at(url, key).await;
    rows.into_iter()
        .filter(|(_, _, granted)| !*granted)
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Runs `create_role` (fixed statements that create `role` with a password) on `cluster`,
/// then makes the cluster ask `role` for it ([`require_password_for`]).
pub async fn add_password_role(
    cluster: &cluster::PrivateCluster,
    role: &str,
    create_role: &'static str,
) {
    let mut admin = connect_at(&cluster.url()).await;
    sqlx::raw_sql(create_role)
        .execute(&mut admin)
        .await
        .expect("create the role");
    admin.close().await.unwrap();
    require_password_for(cluster, role);
}

/// Makes `cluster` ask `role` for a password (`scram-sha-256`) on TCP connections from
/// 127.0.0.1, ahead of the `trust` lines initdb wrote, and reloads the configuration.
/// Every other role keeps connecting without one.
pub fn require_password_for(cluster: &cluster::PrivateCluster, role: &str) {
    let hba = cluster
        .log_file()
        .parent()
        .expect("the cluster directory")
        .join("data")
        .join("pg_hba.conf");
    let current = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let line = format!("host all {role} 127.0.0.1/32 scram-sha-256\n");
    // Rewritten in place: the file keeps its owner (the server's user) and mode.
    std::fs::write(&hba, format!("{line}{current}")).expect("write pg_hba.conf");
    cluster.pg_ctl(&["reload"]);
}

/// Fails unless `elapsed` lies in `[low, high]`.
pub fn assert_between(elapsed: Duration, low: Duration, high: Duration, what: &str) {
    assert!(
        elapsed >= low && elapsed <= high,
        "{what}: took {elapsed:?}, expected between {low:?} and {high:?} on {}",
        rt::NAME
    );
}

/// The backend pid of the one session named `application_name` at the server `url`.
pub async fn backend_pid_of_application(url: &str, application_name: &str) -> i32 {
    let mut conn = connect_at(url).await;
    let pid = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(application_name)
    .fetch_one(&mut conn)
    .await
    .expect("query pg_stat_activity");
    let _ = conn.close().await;
    pid
}

/// The one element of `items`, failing the test otherwise.
pub fn only<T: std::fmt::Debug>(mut items: Vec<T>) -> T {
    assert_eq!(items.len(), 1, "expected exactly one: {items:?}");
    items.remove(0)
}

/// The pid `pg_locks` shows holding `key` now (exactly one session).
pub async fn only_holder(key: LockKey) -> i32 {
    let pids = holders(key).await;
    assert_eq!(pids.len(), 1, "exactly one holder of {key}: {pids:?}");
    pids[0]
}

/// Every pool connection is back, and none of them holds or waits for an advisory lock.
pub async fn assert_pool_holds_no_advisory_lock(pool: &PgPool) {
    settled(pool, WAIT).await;
    for (pid, locks) in advisory_locks_of_idle(pool).await {
        assert_eq!(
            locks, 0,
            "idle pool connection (pid {pid}) holds {locks} advisory lock(s)"
        );
    }
}

/// `pg_terminate_backend(pid)` from a session of our own, as an operator (or a failover)
/// would, waiting (up to [`WAIT`]) until the backend is gone.
pub async fn terminate(pid: i32) {
    let mut conn = connect().await;
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut conn)
        .await
        .expect("pg_terminate_backend");
    let _ = conn.close().await;
    assert!(ended, "pg_terminate_backend({pid})");
    eventually(WAIT, "a terminated backend is gone", || async move {
        !backend_alive(pid).await
    })
    .await;
}

/// Fails unless `result` is `Err(Error::LockLost)` for exactly `key`.
pub fn assert_lock_lost<T: std::fmt::Debug>(result: pglock::Result<T>, key: LockKey, what: &str) {
    match result {
        Err(pglock::Error::LockLost { key: lost }) => assert_eq!(lost, key, "{what}"),
        other => panic!("{what}: expected Err(LockLost {{ key: {key} }}), got {other:?}"),
    }
}

/// A fixed-seed xorshift64 generator: the same schedule on every run.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration of `from..=to` ms.
    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// `future`, failing the test if it takes longer than `limit`: an answer, never a hang.
pub async fn bounded<F: std::future::Future>(limit: Duration, what: &str, future: F) -> F::Output {
    rt::timeout(limit, future)
        .await
        .unwrap_or_else(|| panic!("{what} did not finish within {limit:?} on {}", rt::NAME))
}

/// Like [`bounded`], and how long `future` took.
pub async fn within<F: std::future::Future>(
    limit: Duration,
    what: &str,
    future: F,
) -> (F::Output, Duration) {
    let start = Instant::now();
    let output = bounded(limit, what, future).await;
    (output, start.elapsed())
}

/// Polls until a brand-new session can take `key` (see [`free_for_another_session`]),
/// failing the test after `limit`; prints and returns how long that took after `what`.
pub async fn freed_within(limit: Duration, key: LockKey, what: &str) -> Duration {
    let took = eventually(
        limit,
        &format!("another session gets the key after {what}"),
        || free_for_another_session(key),
    )
    .await;
    eprintln!("[{}] key free {took:?} after {what}", rt::NAME);
    took
}

/// One of the boolean advisory-lock functions on `key` from `conn`: `bigint` for a
/// `BigInt` key, `pair` (the same function, two arguments) for an `IntPair`.
async fn advisory_call(
    conn: &mut PgConnection,
    key: LockKey,
    bigint: &'static str,
    pair: &'static str,
) -> bool {
    let query = match key {
        LockKey::BigInt(k) => sqlx::query_scalar(bigint).bind(k),
        LockKey::IntPair(a, b) => sqlx::query_scalar(pair).bind(a).bind(b),
    };
    query
        .fetch_one(conn)
        .await
        .unwrap_or_else(|err| panic!("{bigint}: {err}"))
}

/// The test server's URL, pointing at `database` instead.
pub fn url_for_database(database: &str) -> String {
    let options: PgConnectOptions = database_url()
        .parse()
        .expect("the test database URL parses");
    options.database(database).to_url_lossy().to_string()
}

/// Ends the sessions on `database` (of the test server) and drops it.
pub async fn drop_database(database: &str) {
    let mut conn = connect().await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .execute(&mut conn)
    .await
    .expect("end the sessions on the test database");
    // DROP DATABASE waits (up to 5 s) for terminated backends to exit.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database}"
    )))
    .execute(&mut conn)
    .await
    .unwrap_or_else(|err| panic!("drop database {database}: {err}"));
    let _ = conn.close().await;
}

/// Runs blocking `work` (`pg_ctl`, say) on a thread of its own while the test's runtime
/// keeps running, failing the test if it takes longer than `limit`; its panic is the
/// test's. Returns how long it took.
pub async fn off_thread(
    what: &str,
    limit: Duration,
    work: impl FnOnce() + Send + 'static,
) -> Duration {
    let start = Instant::now();
    let thread = std::thread::spawn(work);
    while !thread.is_finished() {
        assert!(
            start.elapsed() < limit,
            "{what} did not finish within {limit:?}"
        );
        rt::sleep(Duration::from_millis(20)).await;
    }
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
    start.elapsed()
}

/// A connection from `pool` (bounded by [`WAIT`]) and its backend pid: which session the
/// pool hands out next.
pub async fn acquire_with_pid(pool: &PgPool) -> (sqlx::pool::PoolConnection<sqlx::Postgres>, i32) {
    let mut conn = rt::timeout(WAIT, pool.acquire())
        .await
        .expect("the pool hands out a connection within the wait bound")
        .expect("acquire");
    let pid = backend_pid(&mut conn).await;
    (conn, pid)
}

/// A new session outside any pool and outside pglock that holds `key` exclusively
/// (`pg_try_advisory_lock`), and its backend pid.
pub async fn held_elsewhere(key: LockKey) -> (PgConnection, i32) {
    let mut conn = connect().await;
    assert!(
        try_lock_on(&mut conn, key).await,
        "another session takes {key}"
    );
    let pid = backend_pid(&mut conn).await;
    (conn, pid)
}

/// Asserts that `conn` (another session) can take `key` now; it lets go at once and is
/// closed.
pub async fn take_then_close(mut conn: PgConnection, key: LockKey) {
    assert!(
        try_lock_on(&mut conn, key).await,
        "{key} is free for another session"
    );
    assert!(unlock_on(&mut conn, key).await);
    let _ = conn.close().await;
}

//! `LockClient` benchmarks: `cargo bench --bench client` prints the tables.
//!
//! Many locks over a few sessions ("lanes"), against what the same work costs with an
//! `AdvisoryLock` per operation. Sections (arguments pick some; none runs all):
//!
//! - `hold`: 10,000 exclusive locks held at once, taken by 64 tasks through one client
//!   (4 lanes): the time to take them, how many server sessions hold them (`pg_locks`),
//!   the statements sent, the time to give them back. The floor for reference: the same
//!   10,000 keys taken by 4 raw connections in one statement each (an `AdvisoryLock` per
//!   key would need 10,000 sessions; the server allows 300).
//! - `throughput`: 64 tasks, each `try_lock` + `unlock` on a key of its own, over and
//!   over: through one `LockClient` (4 lanes), against the same tasks on 4 connections
//!   shared behind an async mutex each (task `t` uses connection `t mod 4`; per pair it
//!   takes the mutex, makes an `AdvisoryLock::with_connection` on the connection, tries,
//!   unlocks, and lets go), and raw sqlx on those 4 connections the same way. Once with
//!   everything on one CPU, once with the bench process and the server on a CPU each (as
//!   on two machines); CPU per pair of the bench process and of the server.
//! - `batch`: the lane's statement sent raw with 1 to 32 operations: its cost per
//!   operation, the floor under the client's throughput.
//! - `all`: `try_lock_all` of 100 keys against 100 sequential `ClientLock::try_lock`
//!   (same client) and 100 sequential `AdvisoryLock::try_lock` (100 locks made once, a
//!   pool connection each); round trips counted on the wire.
//! - `loss`: 10,000 held `ClientLock`s, each with its `lost()` future polled by a task of
//!   its own, for several `lost_check_interval`s: statements on the wire (and by
//!   `pg_stat_statements`) per lane and interval, and the CPU the bench process spends,
//!   with a `check_timeout` longer than the count; then, with the default
//!   `check_timeout`, how many of the held locks' `lost()` resolve (none should).
//! - `quiet`: one uncontended `try_lock` + `unlock` on a client nobody else uses, against
//!   `AdvisoryLock::with_connection` (and raw sqlx, and raw sqlx sending the lane's
//!   statement) on a connection of the same server; interleaved in rotating blocks,
//!   medians of per-block ratios.
//!
//! Not in the default run: `false-loss` (one, then two held locks on one lane watching
//! `lost()` with a short interval and check timeout: any report is false), and
//! `profile-throughput` / `profile-throughput-split` (the client's throughput blocks
//! alone for 10 s, for `perf`).
//!
//! Always a private cluster with `max_locks_per_transaction = 256` (the default 64 gives
//! a lock table of 64 × 300 = 19,200 slots shared by every kind of lock; 10,000 advisory
//! locks fit, but not with the room to spare that the floor and the checks need). The
//! bench process (every thread) and the cluster's postmaster (so every backend) are
//! pinned to one CPU (`support::pin`), one current-thread Tokio runtime, and the client's
//! driver spawned on it. The whole run is bounded (`support::deadline`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, ClientLock, ClientOptions, LockClient, LockKey, LockOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

use support::wire::{Tally, WireCounter};
use support::{Cpu, median, median_ratio, pin};

/// Locks held at once (`hold`, `loss`), and the tasks that take them.
const HELD: i64 = 10_000;
const TASKS: usize = 64;
/// `hold`: runs (the first opens the lanes).
const HOLD_RUNS: usize = 6;
/// `throughput`: rotating blocks per contender, and pairs per task per block.
const THROUGHPUT_BLOCKS: usize = 30;
const THROUGHPUT_PAIRS: u32 = 20;
/// Connections of the `throughput` baseline, and the client's lanes.
const LANES: usize = 4;
/// `all`: keys per set, rotating blocks, rounds per block.
const SET: i64 = 100;
const ALL_BLOCKS: usize = 40;
const ALL_ROUNDS: u32 = 5;
/// `loss`: the check interval, and how many of them are counted (after a warm-up).
const LOSS_INTERVAL: Duration = Duration::from_secs(1);
const LOSS_WINDOW: u32 = 5;
/// `quiet`: rotating blocks per contender, pairs per block.
const QUIET_BLOCKS: usize = 100;
const QUIET_PAIRS: u32 = 100;
/// Rounds counted on the wire per measure.
const COUNTED: u32 = 10;

/// Key spaces of the sections (int-pair keys, first number), so that none meets another.
const HOLD_SPACE: i32 = 101;
const THROUGHPUT_SPACE: i32 = 102;
const ALL_SPACE: i32 = 103;
const LOSS_SPACE: i32 = 104;
const QUIET_SPACE: i32 = 105;

fn key(space: i32, n: i64) -> LockKey {
    LockKey::IntPair(space, i32::try_from(n).expect("key number fits an int4"))
}

/// The private cluster's postmaster, whose children are the server's backends.
static POSTMASTER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// A CPU counter for the bench process and the backends alive now.
fn cpu_counter() -> Cpu {
    Cpu::new(POSTMASTER.get().copied())
}

fn per_us(t: Duration, n: f64) -> f64 {
    t.as_secs_f64() * 1e6 / n
}

fn main() {
    // First, so that every thread made later (the runtime's, pglock's timer) inherits it.
    pin::pin_self();
    support::deadline(Duration::from_secs(600));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the Tokio runtime");
    rt.block_on(run());
}

/// A pool for clients and locks (lanes, waits, the baselines' connections).
async fn new_pool(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .expect("connect the pool")
}

/// A client with its driver spawned (it ends when the client and its locks are gone).
fn new_client(pool: &PgPool, options: LockOptions) -> LockClient {
    let client = LockClient::with_options(
        pool,
        ClientOptions::new()
            .max_sessions(LANES)
            .lock_options(options),
    );
    tokio::spawn(client.driver());
    client
}

async fn run() {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |s: &str| sections.is_empty() || sections.iter().any(|a| a == s);
    let url = support::private_cluster_with(&["max_locks_per_transaction = 256"]);
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    let admin_pid = pin::pin_conn(&mut admin).await;
    pin::pin_private_server(admin_pid);
    ADMIN_PID.set(admin_pid).ok();
    if let Some(pm) = u32::try_from(admin_pid).ok().and_then(pin::parent_of) {
        POSTMASTER.set(pm).ok();
    }
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut admin)
        .await
        .expect("create extension pg_stat_statements");
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut admin)
        .await
        .expect("server version");
    let lock_table: String = sqlx::query_scalar("SHOW max_locks_per_transaction")
        .fetch_one(&mut admin)
        .await
        .expect("max_locks_per_transaction");

    println!();
    println!("Server: {version}; max_locks_per_transaction = {lock_table}");
    if wants("hold") {
        hold(&url, &mut admin).await;
    }
    if wants("throughput") {
        throughput(&url, &mut admin).await;
    }
    if wants("batch") {
        batch_sweep(&url).await;
    }
    if wants("all") {
        all(&url).await;
    }
    if wants("loss") {
        loss(&url, &mut admin).await;
    }
    if wants("quiet") {
        quiet(&url).await;
    }
    // Not in the default run: two held locks on one lane, both watching lost() with a
    // short interval; none is lost, so any report is false.
    if sections.iter().any(|a| a == "false-loss") {
        for watchers in [1, 2] {
            false_loss(&url, watchers).await;
        }
    }
    // Not in the default run: only the LockClient's throughput blocks, for 10 s, for a
    // profiler to watch (`perf record -C <cpu>` meanwhile); `-split` with client and
    // server apart.
    if let Some(arg) = sections
        .iter()
        .find(|a| a.starts_with("profile-throughput"))
    {
        match arg.ends_with("-split") {
            true => Placement::Split.apply(),
            false => Placement::Together.apply(),
        }
        let pool = new_pool(&url, 16).await;
        let client = new_client(&pool, LockOptions::default());
        let start = Instant::now();
        let mut blocks = 0;
        while start.elapsed() < Duration::from_secs(10) {
            throughput_block(Who::Client, &client, &[]).await;
            blocks += 1;
        }
        println!("profile-throughput: {blocks} LockClient blocks in 10 s");
    }
    // Likewise for the quiet client's try_lock + unlock (`profile-quiet`): one lock, one
    // task, pairs for 10 s.
    if sections.iter().any(|a| a == "profile-quiet") {
        let pool = new_pool(&url, 4).await;
        let client = new_client(&pool, LockOptions::default());
        let mut lock = client.lock(key(QUIET_SPACE, 1));
        let start = Instant::now();
        let mut pairs = 0u64;
        while start.elapsed() < Duration::from_secs(10) {
            assert!(lock.try_lock().await.unwrap());
            lock.unlock().await.unwrap();
            pairs += 1;
        }
        println!("profile-quiet: {pairs} ClientLock pairs in 10 s");
    }
    println!();
    println!("{}", pin::report());
    admin.close().await.ok();
}

/// Statements the server ran since the last reset, but for the admin's own queries.
async fn statements(admin: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
         WHERE query NOT ILIKE '%pg_stat_statements%' AND query NOT ILIKE '%pg_locks%'",
    )
    .fetch_one(admin)
    .await
    .expect("read pg_stat_statements")
}

async fn reset_statements(admin: &mut PgConnection) {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(admin)
        .await
        .expect("reset pg_stat_statements");
}

/// Advisory locks granted on the server, and how many server sessions hold them.
async fn advisory_holders(admin: &mut PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT pid) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted",
    )
    .fetch_one(admin)
    .await
    .expect("read pg_locks")
}

/// `TASKS` tasks take `keys` (task `t` every `TASKS`th key from `t`), one `try_lock`
/// after another; all must be granted.
async fn take(client: &LockClient, keys: &[LockKey]) -> (Duration, Vec<ClientLock>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = client.clone();
            let mine: Vec<LockKey> = keys.iter().skip(t).step_by(TASKS).copied().collect();
            tokio::spawn(async move {
                let mut locks = Vec::with_capacity(mine.len());
                for key in mine {
                    let mut lock = client.lock(key);
                    assert!(lock.try_lock().await.expect("try_lock"), "free key refused");
                    locks.push(lock);
                }
                locks
            })
        })
        .collect();
    let mut locks = Vec::with_capacity(keys.len());
    for task in tasks {
        locks.extend(task.await.expect("take task"));
    }
    (start.elapsed(), locks)
}

/// `TASKS` tasks unlock `locks`, one after another each.
async fn give_back(locks: Vec<ClientLock>) -> Duration {
    let start = Instant::now();
    let mut shares: Vec<Vec<ClientLock>> = (0..TASKS).map(|_| Vec::new()).collect();
    for (i, lock) in locks.into_iter().enumerate() {
        shares[i % TASKS].push(lock);
    }
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|mut share| {
            tokio::spawn(async move {
                for lock in &mut share {
                    lock.unlock().await.expect("unlock");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("unlock task");
    }
    start.elapsed()
}

/// 10,000 exclusive locks held at once on at most 4 server sessions.
async fn hold(url: &str, admin: &mut PgConnection) {
    let pool = new_pool(url, 16).await;
    let client = new_client(&pool, LockOptions::default());
    let keys: Vec<LockKey> = (0..HELD).map(|n| key(HOLD_SPACE, n)).collect();
    let mut rows = Vec::new();
    for run in 0..HOLD_RUNS {
        reset_statements(admin).await;
        let (took, locks) = take(&client, &keys).await;
        let sent = statements(admin).await;
        let (held, sessions) = advisory_holders(admin).await;
        assert_eq!(held, HELD, "every lock held on the server");
        let lanes = client.sessions();
        let released = give_back(locks).await;
        rows.push((run, took, sent, held, sessions, lanes, released));
    }
    drop(client);
    pool.close().await;

    // The floor: 4 raw connections, one statement of 2,500 keys each, at once.
    let mut floor = Vec::new();
    let mut conns = support::workloads::connections(url, LANES).await;
    let raw_keys: Vec<i64> = (0..HELD).map(|n| (1 << 40) + n).collect();
    for _ in 0..HOLD_RUNS {
        let start = Instant::now();
        let tasks: Vec<_> = conns
            .drain(..)
            .enumerate()
            .map(|(c, mut conn)| {
                let mine: Vec<i64> = raw_keys.iter().skip(c).step_by(LANES).copied().collect();
                tokio::spawn(async move {
                    let taken: i64 = sqlx::query_scalar(
                        "SELECT count(*) FILTER (WHERE pg_try_advisory_lock(k)) \
                         FROM unnest($1::int8[]) AS k",
                    )
                    .bind(&mine)
                    .fetch_one(&mut conn)
                    .await
                    .expect("raw try of many keys");
                    assert_eq!(taken, mine.len() as i64);
                    conn
                })
            })
            .collect();
        for task in tasks {
            conns.push(task.await.expect("raw task"));
        }
        let took = start.elapsed();
        let (held, _) = advisory_holders(admin).await;
        assert_eq!(held, HELD);
        for conn in &mut conns {
            sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *conn)
                .await
                .expect("unlock all");
        }
        floor.push(took.as_secs_f64() * 1e3);
    }
    support::workloads::close(conns).await;

    println!();
    println!(
        "10,000 exclusive locks held at once: {TASKS} tasks take them through one LockClient \
         ({LANES} lanes), one try_lock after another per task; then unlock them the same way. \
         Run 0 opens the lanes."
    );
    println!();
    println!(
        "| run | take (ms) | locks/s | statements | ops per statement | held (pg_locks) | \
         server sessions holding them | client sessions | unlock all (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (run, took, sent, held, sessions, lanes, released) in &rows {
        println!(
            "| {run} | {:.1} | {:.0} | {sent} | {:.1} | {held} | {sessions} | {lanes} | {:.1} |",
            took.as_secs_f64() * 1e3,
            HELD as f64 / took.as_secs_f64(),
            HELD as f64 / *sent as f64,
            released.as_secs_f64() * 1e3
        );
    }
    let warm: Vec<f64> = rows[1..].iter().map(|r| r.1.as_secs_f64() * 1e3).collect();
    let warm_release: Vec<f64> = rows[1..].iter().map(|r| r.6.as_secs_f64() * 1e3).collect();
    println!();
    println!(
        "Median of runs 1..: take {:.1} ms ({:.1} µs per lock), unlock {:.1} ms. Floor (4 raw \
         connections, one statement of 2,500 keys each, at once): median {:.1} ms.",
        median(warm.clone()),
        median(warm) * 1e3 / HELD as f64,
        median(warm_release),
        median(floor)
    );
}

#[derive(Debug, Clone, Copy)]
enum Who {
    Client,
    Advisory,
    Raw,
}

const THROUGHPUT_NAMES: [&str; 3] = [
    "LockClient (4 lanes)",
    "AdvisoryLock on 4 shared connections",
    "raw sqlx on 4 shared connections",
];

/// One block: `TASKS` tasks, `THROUGHPUT_PAIRS` `try_lock` + `unlock` each on a key of
/// its own.
async fn throughput_block(
    who: Who,
    client: &LockClient,
    conns: &[Arc<Mutex<PgConnection>>],
) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let key = key(THROUGHPUT_SPACE, t as i64);
            let client = client.clone();
            let conn = conns.get(t % conns.len().max(1)).cloned();
            tokio::spawn(async move {
                match who {
                    Who::Client => {
                        let mut lock = client.lock(key);
                        for _ in 0..THROUGHPUT_PAIRS {
                            assert!(lock.try_lock().await.unwrap());
                            lock.unlock().await.unwrap();
                        }
                    }
                    Who::Advisory => {
                        let conn = conn.expect("a connection");
                        for _ in 0..THROUGHPUT_PAIRS {
                            let mut conn = conn.lock().await;
                            let mut lock = AdvisoryLock::with_connection(&mut *conn, key);
                            assert!(lock.try_lock().await.unwrap());
                            lock.unlock().await.unwrap();
                        }
                    }
                    Who::Raw => {
                        let LockKey::IntPair(a, b) = key else {
                            unreachable!()
                        };
                        let conn = conn.expect("a connection");
                        for _ in 0..THROUGHPUT_PAIRS {
                            let mut conn = conn.lock().await;
                            let taken: bool =
                                sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                                    .bind(a)
                                    .bind(b)
                                    .fetch_one(&mut *conn)
                                    .await
                                    .unwrap();
                            assert!(taken);
                            let released: bool =
                                sqlx::query_scalar("SELECT pg_advisory_unlock($1, $2)")
                                    .bind(a)
                                    .bind(b)
                                    .fetch_one(&mut *conn)
                                    .await
                                    .unwrap();
                            assert!(released);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("throughput task");
    }
    start.elapsed()
}

/// Where the bench process and the server run during a measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Everything on one CPU (`support::pin`).
    Together,
    /// The bench process on one CPU, the server on the other: as on two machines.
    Split,
}

impl Placement {
    fn describe(self) -> String {
        match self {
            Placement::Together => format!("bench process and server on CPU {}", pin::cpu()),
            Placement::Split => format!(
                "bench process on CPU {}, server on CPU {}",
                pin::other_cpu(),
                pin::cpu()
            ),
        }
    }

    fn apply(self) {
        let backend = *ADMIN_PID.get().expect("the admin connection's backend");
        match self {
            Placement::Together => pin::together(backend),
            Placement::Split => pin::split(backend),
        }
    }
}

/// The admin connection's backend (a child of the private cluster's postmaster).
static ADMIN_PID: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// Mean operations per lane statement since the last reset (`pg_stat_statements`: the
/// lane's statement answers one row per operation).
async fn ops_per_lane_statement(admin: &mut PgConnection) -> f64 {
    let (calls, rows): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(rows), 0)::bigint \
         FROM pg_stat_statements WHERE query ILIKE '%WITH ORDINALITY AS o(kind%'",
    )
    .fetch_one(admin)
    .await
    .expect("read pg_stat_statements");
    rows as f64 / calls as f64
}

/// 64 tasks' try_lock + unlock through one client against 4 shared connections, with
/// everything on one CPU and then with client and server apart.
async fn throughput(url: &str, admin: &mut PgConnection) {
    for placement in [Placement::Together, Placement::Split] {
        placement.apply();
        throughput_at(url, admin, placement).await;
    }
    Placement::Together.apply();
}

async fn throughput_at(url: &str, admin: &mut PgConnection, placement: Placement) {
    let pool = new_pool(url, 16).await;
    let client = new_client(&pool, LockOptions::default());
    let conns: Vec<Arc<Mutex<PgConnection>>> = support::workloads::connections(url, LANES)
        .await
        .into_iter()
        .map(|conn| Arc::new(Mutex::new(conn)))
        .collect();
    // Backends forked after a split inherit the postmaster's CPU, but say it again.
    placement.apply();
    let who = [Who::Client, Who::Advisory, Who::Raw];
    // One untimed block each: lanes opened, statements prepared.
    for w in who {
        throughput_block(w, &client, &conns).await;
    }
    let mut times = vec![Vec::new(); who.len()];
    let mut cpu = vec![(Duration::ZERO, Duration::ZERO); who.len()];
    let counter = cpu_counter();
    for b in 0..THROUGHPUT_BLOCKS {
        for turn in 0..who.len() {
            let i = (b + turn) % who.len();
            let from = counter.now();
            let t = throughput_block(who[i], &client, &conns).await;
            let spent = counter.since(from);
            cpu[i] = (cpu[i].0 + spent.0, cpu[i].1 + spent.1);
            times[i].push(per_us(t, (TASKS as u32 * THROUGHPUT_PAIRS) as f64));
        }
    }
    let pairs = f64::from(THROUGHPUT_BLOCKS as u32 * TASKS as u32 * THROUGHPUT_PAIRS);
    // Statements per operation, one untimed block each, by pg_stat_statements; and the
    // client's operations per lane statement.
    let mut per_op = Vec::new();
    let mut batch = f64::NAN;
    for w in who {
        reset_statements(admin).await;
        throughput_block(w, &client, &conns).await;
        let sent = statements(admin).await;
        per_op.push(sent as f64 / f64::from(2 * TASKS as u32 * THROUGHPUT_PAIRS));
        if matches!(w, Who::Client) {
            batch = ops_per_lane_statement(admin).await;
        }
    }
    drop(client);
    pool.close().await;
    for conn in conns {
        if let Ok(conn) = Arc::try_unwrap(conn) {
            conn.into_inner().close().await.ok();
        }
    }

    println!();
    println!(
        "Throughput ({}): {TASKS} tasks, each try_lock + unlock on a key of its own, \
         {THROUGHPUT_PAIRS} pairs per task per block; {THROUGHPUT_BLOCKS} rotating blocks per \
         contender. µs per pair: median block; speed-up: median of per-block ratios; CPU: \
         schedstat, over every timed block. LockClient: {batch:.1} operations per lane \
         statement.",
        placement.describe()
    );
    println!();
    println!(
        "| contender | µs per pair | pairs/s | statements per operation | bench CPU µs per pair | \
         server CPU µs per pair | LockClient speed-up |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, name) in THROUGHPUT_NAMES.iter().enumerate() {
        let us = median(times[i].clone());
        println!(
            "| {name} | {us:.2} | {:.0} | {:.3} | {:.1} | {:.1} | {:.2}× |",
            1e6 / us,
            per_op[i],
            per_us(cpu[i].0, pairs),
            per_us(cpu[i].1, pairs),
            median_ratio(&times[i], &times[0])
        );
    }
    println!();
    let speedup = median_ratio(&times[1], &times[0]);
    println!(
        "Goal ({placement:?}): LockClient ≥ 5× the AdvisoryLock baseline (never below 1×): \
         {speedup:.2}× — {}",
        match speedup {
            s if s >= 5.0 => "met",
            s if s >= 1.0 => "MISSED (5×), above 1×",
            _ => "MISSED, below 1×",
        }
    );
}

/// Operations per statement in the `batch` sweep.
const BATCH_SIZES: [usize; 7] = [1, 2, 3, 4, 8, 16, 32];
const BATCH_BLOCKS: usize = 30;
const BATCH_ROUNDS: u32 = 20;

/// What the lane's statement costs by how many operations it carries: one connection,
/// `k` tries in one statement then their `k` unlocks in another, sent raw (no client
/// bookkeeping), everything on one CPU. The floor under the client's throughput.
async fn batch_sweep(url: &str) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let pid = pin::pin_conn(&mut conn).await;
    let counter = cpu_counter();
    let n = BATCH_SIZES.len();
    let mut times = vec![Vec::new(); n];
    let mut cpu = vec![(Duration::ZERO, Duration::ZERO); n];
    for b in 0..BATCH_BLOCKS {
        for turn in 0..n {
            let i = (b + turn) % n;
            let k = BATCH_SIZES[i];
            let keys: Vec<i32> = (0..k as i32).collect();
            let round = async |conn: &mut PgConnection, kind: i32| {
                let rows: Vec<(i64, Option<bool>, i32)> = sqlx::query_as(LANE_BATCH)
                    .bind(pid)
                    .bind(vec![kind; k])
                    .bind(vec![true; k])
                    .bind(vec![i64::from(THROUGHPUT_SPACE + 100); k])
                    .bind(&keys)
                    .fetch_all(conn)
                    .await
                    .unwrap();
                assert!(rows.iter().all(|r| r.1 == Some(true)));
            };
            round(&mut conn, 1).await;
            round(&mut conn, 3).await;
            let from = counter.now();
            let start = Instant::now();
            for _ in 0..BATCH_ROUNDS {
                round(&mut conn, 1).await;
                round(&mut conn, 3).await;
            }
            let t = start.elapsed();
            let spent = counter.since(from);
            cpu[i] = (cpu[i].0 + spent.0, cpu[i].1 + spent.1);
            times[i].push(per_us(t, f64::from(BATCH_ROUNDS)));
        }
    }
    conn.close().await.ok();
    println!();
    println!(
        "The lane's statement by batch size, sent raw on one connection (k tries, then their k \
         unlocks; {BATCH_BLOCKS} rotating blocks of {BATCH_ROUNDS}; one CPU): the floor under \
         the client's throughput"
    );
    println!();
    println!(
        "| operations per statement | µs per statement | µs per try + unlock | bench CPU µs per \
         statement | server CPU µs per statement |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for (i, k) in BATCH_SIZES.iter().enumerate() {
        let statements = f64::from(2 * BATCH_BLOCKS as u32 * BATCH_ROUNDS);
        let us = median(times[i].clone());
        println!(
            "| {k} | {:.1} | {:.2} | {:.1} | {:.1} |",
            us / 2.0,
            us / *k as f64,
            per_us(cpu[i].0, statements),
            per_us(cpu[i].1, statements)
        );
    }
}

/// A 100-key set's keys for round `r` (fresh keys each round).
fn set_keys(r: u32) -> Vec<LockKey> {
    (0..SET)
        .map(|n| key(ALL_SPACE, i64::from(r % 2) * 1000 + n))
        .collect()
}

const ALL_NAMES: [&str; 3] = [
    "try_lock_all (100 keys)",
    "100 sequential ClientLock::try_lock (same client)",
    "100 sequential AdvisoryLock::try_lock (a connection each)",
];

/// Times `rounds` acquisitions of 100 keys by contender `who`; each is given back
/// untimed before the next.
async fn all_rounds(
    who: usize,
    client: &LockClient,
    advisory: &mut [AdvisoryLock],
    rounds: u32,
) -> Duration {
    let mut total = Duration::ZERO;
    for r in 0..rounds {
        let keys = set_keys(r);
        match who {
            0 => {
                let start = Instant::now();
                let set = client.try_lock_all(keys).await.unwrap().expect("free keys");
                total += start.elapsed();
                set.release().await.unwrap();
            }
            1 => {
                let mut locks: Vec<ClientLock> = keys.iter().map(|k| client.lock(*k)).collect();
                let start = Instant::now();
                for lock in &mut locks {
                    assert!(lock.try_lock().await.unwrap());
                }
                total += start.elapsed();
                for lock in &mut locks {
                    lock.unlock().await.unwrap();
                }
            }
            _ => {
                let start = Instant::now();
                for lock in advisory.iter_mut() {
                    assert!(lock.try_lock().await.unwrap());
                }
                total += start.elapsed();
                for lock in advisory.iter_mut() {
                    lock.unlock().await.unwrap();
                }
            }
        }
    }
    total
}

/// 100 AdvisoryLocks, one pool connection each, on the keys of [`set_keys`]`(0)` (the
/// sequential baseline reuses them every round: its try is the steady statement).
async fn advisory_locks(pool: &PgPool) -> Vec<AdvisoryLock> {
    let mut locks = Vec::new();
    for k in set_keys(0) {
        locks.push(AdvisoryLock::new(pool, k).await.expect("AdvisoryLock::new"));
    }
    locks
}

/// `try_lock_all` of 100 keys against 100 sequential try_locks.
async fn all(url: &str) {
    let pool = new_pool(url, 16).await;
    let client = new_client(&pool, LockOptions::default());
    let locks_pool = pool_for_locks(url).await;
    let mut advisory = advisory_locks(&locks_pool).await;
    for who in 0..3 {
        all_rounds(who, &client, &mut advisory, 2).await;
    }
    let mut times = vec![Vec::new(); 3];
    for b in 0..ALL_BLOCKS {
        for turn in 0..3 {
            let who = (b + turn) % 3;
            all_rounds(who, &client, &mut advisory, 1).await;
            let t = all_rounds(who, &client, &mut advisory, ALL_ROUNDS).await;
            times[who].push(per_us(t, f64::from(ALL_ROUNDS)));
        }
    }
    drop(client);
    for mut lock in advisory {
        lock.close().await.ok();
    }
    pool.close().await;
    locks_pool.close().await;

    // On the wire: a client and 100 locks of their own through the counting proxy.
    let wire = WireCounter::start(url);
    let wire_url = wire.url(url);
    let pool = pool_for_locks(&wire_url).await;
    let client = new_client(&pool, LockOptions::default());
    let mut advisory = advisory_locks(&pool).await;
    let mut counts = Vec::new();
    for who in 0..3 {
        all_rounds(who, &client, &mut advisory, 2).await;
        let mut tally = Tally::default();
        for r in 0..COUNTED {
            // Counted: the acquisition only (the release is let through first).
            let keys = set_keys(r);
            let from = settle(&wire).await;
            match who {
                0 => {
                    let set = client.try_lock_all(keys).await.unwrap().unwrap();
                    tally = tally + (settle(&wire).await - from);
                    set.release().await.unwrap();
                }
                1 => {
                    let mut locks: Vec<ClientLock> = keys.iter().map(|k| client.lock(*k)).collect();
                    for lock in &mut locks {
                        assert!(lock.try_lock().await.unwrap());
                    }
                    tally = tally + (settle(&wire).await - from);
                    for lock in &mut locks {
                        lock.unlock().await.unwrap();
                    }
                }
                _ => {
                    for lock in advisory.iter_mut() {
                        assert!(lock.try_lock().await.unwrap());
                    }
                    tally = tally + (settle(&wire).await - from);
                    for lock in advisory.iter_mut() {
                        lock.unlock().await.unwrap();
                    }
                }
            }
        }
        counts.push(tally);
    }
    drop(client);
    for mut lock in advisory {
        lock.close().await.ok();
    }
    pool.close().await;
    drop(wire);

    println!();
    println!(
        "try_lock_all of {SET} keys against {SET} sequential try_locks (keys free; each \
         acquisition given back untimed); {ALL_BLOCKS} rotating blocks of {ALL_ROUNDS} per \
         contender; round trips on the wire, {COUNTED} acquisitions each"
    );
    println!();
    println!("| acquisition of 100 keys | µs | round trips | / try_lock_all (time) |");
    println!("|---|---:|---:|---:|");
    for (i, name) in ALL_NAMES.iter().enumerate() {
        println!(
            "| {name} | {:.1} | {:.2} | {:.1}× |",
            median(times[i].clone()),
            counts[i].round_trips as f64 / f64::from(COUNTED),
            median_ratio(&times[i], &times[0])
        );
    }
    let vs_client = median_ratio(&times[1], &times[0]);
    let vs_advisory = median_ratio(&times[2], &times[0]);
    let trips = counts[0].round_trips as f64 / f64::from(COUNTED);
    println!();
    println!(
        "Goals: try_lock_all in 1 round trip: {trips:.2} — {}; ≥ 20× faster than 100 \
         sequential try_locks: {vs_client:.1}× (ClientLock), {vs_advisory:.1}× (AdvisoryLock) — {}",
        if trips <= 1.0 { "met" } else { "MISSED" },
        if vs_client.min(vs_advisory) >= 20.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}

/// A pool with room for 100 locks' connections and a client's lanes.
async fn pool_for_locks(url: &str) -> PgPool {
    new_pool(url, 120).await
}

/// Lets answers in flight arrive through the counting proxy, then reads its counts.
async fn settle(wire: &WireCounter) -> Tally {
    tokio::time::sleep(support::wire::ANSWER_DELAY * 20).await;
    wire.tally()
}

/// What the bench process, the wire and the server saw over `window`.
struct Window {
    tally: Tally,
    statements: i64,
    cpu: Option<Duration>,
    elapsed: Duration,
}

async fn observe(wire: &WireCounter, admin: &mut PgConnection, window: Duration) -> Window {
    reset_statements(admin).await;
    let (from, cpu0, start) = (wire.tally(), support::cpu_time(), Instant::now());
    tokio::time::sleep(window).await;
    let (to, cpu1, elapsed) = (wire.tally(), support::cpu_time(), start.elapsed());
    Window {
        tally: to - from,
        statements: statements(admin).await,
        cpu: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
        elapsed,
    }
}

/// A task per lock, polling its `lost()` until `stop` says so; a lock whose `lost()`
/// resolved comes back with the report (and when it came, after `started`).
type Watched = (ClientLock, Option<(Duration, String)>);

fn watch(
    locks: Vec<ClientLock>,
    stop: &tokio::sync::watch::Sender<bool>,
    started: Instant,
) -> Vec<tokio::task::JoinHandle<Watched>> {
    locks
        .into_iter()
        .map(|mut lock| {
            let mut stopped = stop.subscribe();
            tokio::spawn(async move {
                let reported = tokio::select! {
                    err = lock.lost() => Some((started.elapsed(), err.to_string())),
                    _ = stopped.wait_for(|s| *s) => None,
                };
                (lock, reported)
            })
        })
        .collect()
}

/// Stops the watchers: the locks nobody reported lost, and the reports.
async fn unwatch(
    tasks: Vec<tokio::task::JoinHandle<Watched>>,
    stop: tokio::sync::watch::Sender<bool>,
) -> (Vec<ClientLock>, Vec<(Duration, String)>) {
    stop.send_replace(true);
    let mut locks = Vec::new();
    let mut reports = Vec::new();
    for task in tasks {
        match task.await.expect("watcher task") {
            (lock, None) => locks.push(lock),
            (_, Some(report)) => reports.push(report),
        }
    }
    (locks, reports)
}

/// The check_timeout of the counted run: longer than the count, so that lanes are not
/// ended during it (see the false-loss run).
const LOSS_CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the false-loss run watches, with the default check_timeout.
const FALSE_LOSS_WATCH: Duration = Duration::from_secs(10);

/// 10,000 held locks with a `lost()` future each: the loss checks' load (with a long
/// check_timeout), then what the default one makes of it.
async fn loss(url: &str, admin: &mut PgConnection) {
    let wire = WireCounter::start(url);
    let pool = new_pool(&wire.url(url), 16).await;
    let client = new_client(
        &pool,
        LockOptions::new()
            .lost_check_interval(LOSS_INTERVAL)
            .check_timeout(LOSS_CHECK_TIMEOUT),
    );
    let keys: Vec<LockKey> = (0..HELD).map(|n| key(LOSS_SPACE, n)).collect();
    let (_, locks) = take(&client, &keys).await;
    let lanes = client.sessions();
    let window = LOSS_INTERVAL * LOSS_WINDOW;

    // Held, nobody asking whether they are lost.
    tokio::time::sleep(LOSS_INTERVAL).await;
    let quiet = observe(&wire, admin, window).await;

    // Every lock's lost() polled; two intervals for each to settle into its cycle.
    let (stop, _) = tokio::sync::watch::channel(false);
    let tasks = watch(locks, &stop, Instant::now());
    tokio::time::sleep(LOSS_INTERVAL * 2).await;
    let watched = observe(&wire, admin, window).await;
    let (locks, reports) = unwatch(tasks, stop).await;
    if let Some((at, err)) = reports.first() {
        println!(
            "counted run: {} lost() resolved, e.g. at {at:?}: {err}",
            reports.len()
        );
    }
    let lanes_after = client.sessions();
    give_back(locks).await;
    drop(client);
    pool.close().await;
    drop(wire);

    // The same with the default check_timeout (5 s), no proxy: does any held lock's
    // lost() resolve?
    let pool = new_pool(url, 16).await;
    let client = new_client(&pool, LockOptions::new().lost_check_interval(LOSS_INTERVAL));
    let (_, locks) = take(&client, &keys).await;
    let default_timeout = LockOptions::default().get_check_timeout();
    let (stop, _) = tokio::sync::watch::channel(false);
    let tasks = watch(locks, &stop, Instant::now());
    tokio::time::sleep(FALSE_LOSS_WATCH).await;
    let (locks, false_losses) = unwatch(tasks, stop).await;
    let kept = locks.len();
    drop(locks); // lost ones cannot be unlocked; the rest go with the client's lanes
    drop(client);
    pool.close().await;

    println!();
    println!(
        "Loss checks: {HELD} ClientLocks held on {lanes} lanes ({lanes_after} after), \
         lost_check_interval {LOSS_INTERVAL:?}, check_timeout {LOSS_CHECK_TIMEOUT:?}; counted \
         over {LOSS_WINDOW} intervals: requests (Sync + Query) and round trips on the wire \
         (through the counting proxy), statements by pg_stat_statements, the bench process's \
         CPU (schedstat)"
    );
    println!();
    println!(
        "| lost() futures polled | requests on the wire | round trips | statements | \
         statements per lane per interval | bench CPU (% of one core) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (futures, w) in [(0, &quiet), (HELD, &watched)] {
        let intervals = w.elapsed.as_secs_f64() / LOSS_INTERVAL.as_secs_f64();
        let cpu = w.cpu.map_or("—".to_owned(), |cpu| {
            format!("{:.1}", 100.0 * cpu.as_secs_f64() / w.elapsed.as_secs_f64())
        });
        println!(
            "| {futures} | {} | {} | {} | {:.2} | {cpu} |",
            w.tally.syncs + w.tally.queries,
            w.tally.round_trips,
            w.statements,
            w.statements as f64 / (lanes as f64 * intervals),
        );
    }
    let intervals = watched.elapsed.as_secs_f64() / LOSS_INTERVAL.as_secs_f64();
    let wire_per =
        (watched.tally.syncs + watched.tally.queries) as f64 / (lanes as f64 * intervals);
    println!();
    println!(
        "Goal: ≤ 1 statement per lane per lost_check_interval with {HELD} lost() futures: \
         {wire_per:.2} on the wire — {}",
        if wire_per <= 1.0 { "met" } else { "MISSED" }
    );
    println!(
        "With the default check_timeout ({default_timeout:?}), no proxy, watched for \
         {FALSE_LOSS_WATCH:?}: {} of {HELD} held locks' lost() resolved (none was lost; \
         {kept} still watched at the end){}",
        false_losses.len(),
        match false_losses.iter().min_by_key(|r| r.0) {
            Some((at, err)) => format!(
                "; the first {:.1} s after the watchers started: {err}",
                at.as_secs_f64()
            ),
            None => String::new(),
        }
    );
}

/// `watchers` held locks on a one-lane client, each with its `lost()` polled
/// (lost_check_interval 200 ms, check_timeout 1 s), for 3 s: prints the losses reported.
async fn false_loss(url: &str, watchers: i64) {
    let pool = new_pool(url, 4).await;
    let client = LockClient::with_options(
        &pool,
        ClientOptions::new().max_sessions(1).lock_options(
            LockOptions::new()
                .lost_check_interval(Duration::from_millis(200))
                .check_timeout(Duration::from_secs(1)),
        ),
    );
    tokio::spawn(client.driver());
    let start = Instant::now();
    let tasks: Vec<_> = (0..watchers)
        .map(|n| {
            let mut lock = client.lock(key(LOSS_SPACE, 50_000 + n));
            tokio::spawn(async move {
                assert!(lock.try_lock().await.unwrap());
                tokio::select! {
                    err = lock.lost() => Some((start.elapsed(), err.to_string())),
                    _ = tokio::time::sleep(Duration::from_secs(3)) => None,
                }
            })
        })
        .collect();
    let mut reports = Vec::new();
    for task in tasks {
        reports.extend(task.await.expect("watcher"));
    }
    println!();
    println!(
        "false-loss: {watchers} held locks on one lane watching lost() (interval 200 ms, \
         check_timeout 1 s) for 3 s: {} reported a loss",
        reports.len()
    );
    for (at, err) in reports {
        println!("  at {:.2} s: {err}", at.as_secs_f64());
    }
    pool.close().await;
}

const QUIET_NAMES: [&str; 4] = [
    "ClientLock (quiet client)",
    "AdvisoryLock::with_connection",
    "raw sqlx",
    "raw sqlx, the lane's statement (one operation)",
];

/// `src/sql.rs` `LANE_BATCH` (bench SQL may be literal): what a lane sends for a batch.
const LANE_BATCH: &str = "SELECT o.n, CASE WHEN pg_backend_pid() = $1 THEN \
        CASE o.kind \
        WHEN 1 THEN CASE WHEN o.pair THEN pg_try_advisory_lock(o.k1::int4, o.k2) \
                    ELSE pg_try_advisory_lock(o.k1) END \
        WHEN 2 THEN CASE WHEN o.pair THEN pg_try_advisory_lock_shared(o.k1::int4, o.k2) \
                    ELSE pg_try_advisory_lock_shared(o.k1) END \
        WHEN 3 THEN CASE WHEN o.pair THEN pg_advisory_unlock(o.k1::int4, o.k2) \
                    ELSE pg_advisory_unlock(o.k1) END \
        WHEN 4 THEN CASE WHEN o.pair THEN pg_advisory_unlock_shared(o.k1::int4, o.k2) \
                    ELSE pg_advisory_unlock_shared(o.k1) END END END, \
        pg_backend_pid() \
    FROM unnest($2::int4[], $3::bool[], $4::int8[], $5::int4[]) \
        WITH ORDINALITY AS o(kind, pair, k1, k2, n)";

/// One operation (`kind`: 1 try, 3 unlock) as a lane's statement, on `conn` (its
/// server session `pid`), as the lane binds it: `true` if done.
async fn lane_statement(conn: &mut PgConnection, pid: i32, kind: i32, k: (i32, i32)) -> bool {
    let rows: Vec<(i64, Option<bool>, i32)> = sqlx::query_as(LANE_BATCH)
        .bind(pid)
        .bind(vec![kind])
        .bind(vec![true])
        .bind(vec![i64::from(k.0)])
        .bind(vec![k.1])
        .fetch_all(conn)
        .await
        .unwrap();
    rows.len() == 1 && rows[0].1 == Some(true)
}

/// One operation as its plain statement (`kind`: 1 try, 3 unlock), int-pair key.
async fn plain_statement(conn: &mut PgConnection, kind: i32, k: (i32, i32)) -> bool {
    let sql = match kind {
        1 => "SELECT pg_try_advisory_lock($1, $2)",
        _ => "SELECT pg_advisory_unlock($1, $2)",
    };
    sqlx::query_scalar(sql)
        .bind(k.0)
        .bind(k.1)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// One block of `n` uncontended try_lock + unlock pairs, after two untimed ones. Every
/// contender on a key of its own (int pairs); `pid` is `conn`'s server session.
async fn quiet_block(
    who: usize,
    client_lock: &mut ClientLock,
    conn: &mut PgConnection,
    pid: i32,
    n: u32,
) -> Duration {
    let k = (QUIET_SPACE, 10 + who as i32);
    // Two untimed pairs first (a borrowed lock's first runs its session's first
    // statement), then `n` timed.
    macro_rules! timed {
        ($pair:block) => {{
            $pair;
            $pair;
            let start = Instant::now();
            for _ in 0..n {
                $pair;
            }
            start.elapsed()
        }};
    }
    match who {
        0 => timed!({
            assert!(client_lock.try_lock().await.unwrap());
            client_lock.unlock().await.unwrap();
        }),
        1 => {
            let mut lock = AdvisoryLock::with_connection(&mut *conn, LockKey::IntPair(k.0, k.1));
            timed!({
                assert!(lock.try_lock().await.unwrap());
                lock.unlock().await.unwrap();
            })
        }
        2 => timed!({
            assert!(plain_statement(conn, 1, k).await);
            assert!(plain_statement(conn, 3, k).await);
        }),
        _ => timed!({
            assert!(lane_statement(conn, pid, 1, k).await);
            assert!(lane_statement(conn, pid, 3, k).await);
        }),
    }
}

/// Uncontended try_lock + unlock on a quiet client against AdvisoryLock::with_connection.
async fn quiet(url: &str) {
    let n = QUIET_NAMES.len();
    let pool = new_pool(url, 4).await;
    let client = new_client(&pool, LockOptions::default());
    let mut client_lock = client.lock(key(QUIET_SPACE, 0));
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let pid = pin::pin_conn(&mut conn).await;
    let mut times = vec![Vec::new(); n];
    let mut cpu = vec![(Duration::ZERO, Duration::ZERO); n];
    // Open the client's lane first, so that its backend is counted.
    quiet_block(0, &mut client_lock, &mut conn, pid, 0).await;
    let counter = cpu_counter();
    for b in 0..QUIET_BLOCKS {
        for turn in 0..n {
            let who = (b + turn) % n;
            let from = counter.now();
            let t = quiet_block(who, &mut client_lock, &mut conn, pid, QUIET_PAIRS).await;
            let spent = counter.since(from);
            cpu[who] = (cpu[who].0 + spent.0, cpu[who].1 + spent.1);
            times[who].push(per_us(t, f64::from(QUIET_PAIRS)));
        }
    }
    // Every block also ran two untimed pairs.
    let pairs = f64::from(QUIET_BLOCKS as u32 * (QUIET_PAIRS + 2));
    drop(client_lock);
    drop(client);
    pool.close().await;

    // Round trips per pair on the wire.
    let wire = WireCounter::start(url);
    let wire_url = wire.url(url);
    let pool = new_pool(&wire_url, 4).await;
    let client = new_client(&pool, LockOptions::default());
    let mut client_lock = client.lock(key(QUIET_SPACE, 0));
    let mut wire_conn = PgConnection::connect(&wire_url).await.expect("connect");
    let wire_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut wire_conn)
        .await
        .expect("backend pid");
    let mut trips = Vec::new();
    for who in 0..n {
        quiet_block(who, &mut client_lock, &mut wire_conn, wire_pid, 0).await;
        let from = settle(&wire).await;
        quiet_block(who, &mut client_lock, &mut wire_conn, wire_pid, COUNTED).await;
        let tally = settle(&wire).await - from;
        // Two untimed pairs ran after `from` as well.
        trips.push(tally.round_trips as f64 / f64::from(COUNTED + 2));
    }
    drop(client_lock);
    drop(client);
    pool.close().await;
    wire_conn.close().await.ok();
    conn.close().await.ok();
    drop(wire);

    println!();
    println!(
        "Uncontended try_lock + unlock: {QUIET_BLOCKS} rotating blocks of {QUIET_PAIRS} pairs \
         per contender, each after two untimed pairs; µs: median block; ratios: medians of \
         per-block ratios; CPU: the bench process's and the server backends' (schedstat), per \
         pair over every block"
    );
    println!();
    println!(
        "| contender | µs per pair | round trips per pair | bench CPU µs per pair | server CPU \
         µs per pair | ClientLock / this | this / raw |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, name) in QUIET_NAMES.iter().enumerate() {
        println!(
            "| {name} | {:.1} | {:.2} | {:.1} | {:.1} | {:.3} | {:.3} |",
            median(times[i].clone()),
            trips[i],
            per_us(cpu[i].0, pairs),
            per_us(cpu[i].1, pairs),
            median_ratio(&times[0], &times[i]),
            median_ratio(&times[i], &times[2])
        );
    }
    let ratio = median_ratio(&times[0], &times[1]);
    println!();
    println!(
        "Goal: quiet ClientLock try_lock + unlock ≤ 1.10× AdvisoryLock::with_connection: \
         {ratio:.3}× — {}",
        if ratio <= 1.10 { "met" } else { "MISSED" }
    );
    println!(
        "Taken apart: the lane's statement sent raw / the plain statements: {:.3}×; ClientLock / \
         the lane's statement sent raw (the client's own work): {:.3}×",
        median_ratio(&times[3], &times[2]),
        median_ratio(&times[0], &times[3])
    );
}

//! Where pglock's time beyond raw sqlx goes: `cargo bench --bench overhead`.
//!
//! `interleaved` compares pglock with the plain statements a user would write. This one
//! adds, in the same interleaved and pinned run, a third contender: raw sqlx sending
//! **pglock's own SQL** (copied from `src/sql.rs`, bench SQL may be literal), bound as
//! pglock binds it. So each measure comes apart in two:
//!
//! - pglock's SQL run raw / the plain SQL: what pglock's statements cost on the wire and
//!   in the server (the pinning guard `CASE WHEN pg_backend_pid() = $1`, its parameter,
//!   a first statement that also reads what the lock must know about its session);
//! - pglock / its SQL run raw: pglock's own client work (the session's state, the
//!   statement bound on its watch slot, the result checks).
//!
//! Three measures, each on what the `interleaved` bench uses:
//!
//! - `try_lock` + `unlock` on one connection (a borrowed lock made once per block): pglock
//!   sends `TRY_LOCK` and `UNLOCK` (one column each, NULL on another server session);
//!   `PgAdvisoryLock` (`try_acquire` + `release_now`) alongside.
//! - the borrowed cycle (`with_connection` + `try_lock_for(1s)` + `unlock`): pglock sends
//!   `FIRST_BORROWED` (which tries the key: it is free) and `UNLOCK`.
//! - the lifecycle (`AdvisoryLock::new` + `try_lock` + `unlock` + `close`) on a
//!   one-connection pool: pglock's statements are `FIRST_CONFIGURED` (an owned session's
//!   first statement once `FIRST` has set the session up, which one untimed lifecycle
//!   does before the runs) and `UNLOCK`; the pool's pings on `acquire` and return come on
//!   top for every contender.
//!
//! Each table also shows the CPU each contender costs per round (the bench process's and
//! the server backends', from `schedstat`), over every block. Always a private cluster,
//! pinned like `interleaved`.

mod support;

use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, LockKey};
use sqlx::postgres::{PgAdvisoryLock, PgAdvisoryLockKey, PgPool, PgPoolOptions};
use sqlx::{Connection, Either, PgConnection};

use support::{Cpu, median, median_ratio, pin, raw};

const PAIR_BLOCKS: usize = 100;
const PAIRS: u32 = 100;
const CYCLE_BLOCKS: usize = 100;
const CYCLES: u32 = 50;

/// `src/sql.rs` `TRY_LOCK` and `UNLOCK` (bigint).
const TRY_LOCK: &str = "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_try_advisory_lock($2) END";
const UNLOCK: &str = "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_unlock($2) END";

/// `src/sql.rs` `FIRST_BORROWED` (bigint).
const FIRST_BORROWED: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            WHEN $1 = 1 THEN pg_try_advisory_lock($2) \
            WHEN $1 = 2 THEN pg_try_advisory_lock_shared($2) ELSE false END, \
        pg_backend_pid(), current_setting('statement_timeout')";

/// `src/sql.rs` `FIRST_CONFIGURED` (bigint): an owned session's first statement once an
/// earlier lock has set the session up, as every cycle but the first finds it.
const FIRST_CONFIGURED: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            WHEN current_setting('pglock.session', true) IS DISTINCT FROM $2 THEN false \
            WHEN $1 = 1 THEN pg_try_advisory_lock($3) \
            WHEN $1 = 2 THEN pg_try_advisory_lock_shared($3) ELSE false END, \
        pg_backend_pid(), current_setting('statement_timeout'), \
        current_setting('pglock.session', true) IS NOT DISTINCT FROM $2";

/// The row of `FIRST_CONFIGURED`, as the session reads it.
type ConfiguredRow = (Option<bool>, i32, String, bool);

/// The row of `FIRST_BORROWED`, as the session reads it.
type BorrowedRow = (Option<bool>, i32, String);

const KEY_NAME: &str = "pglock-bench/overhead";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Pair,
    Borrowed,
    Lifecycle,
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Measure::Pair => "try_lock + unlock (one connection)",
            Measure::Borrowed => "borrowed: with_connection + try_lock_for(1s) + unlock",
            Measure::Lifecycle => "lifecycle: new + try_lock + unlock + close (pool of one)",
        }
    }

    fn contenders(self) -> &'static [&'static str] {
        match self {
            Measure::Pair => &[
                "pglock",
                "raw sqlx, pglock's SQL",
                "raw sqlx, plain SQL",
                "PgAdvisoryLock",
            ],
            _ => &["pglock", "raw sqlx, pglock's SQL", "raw sqlx, plain SQL"],
        }
    }

    fn blocks(self) -> (usize, u32) {
        match self {
            Measure::Pair => (PAIR_BLOCKS, PAIRS),
            _ => (CYCLE_BLOCKS, CYCLES),
        }
    }
}

struct Target {
    conn: PgConnection,
    /// `conn`'s server session, bound as pglock binds its own.
    pid: i32,
    pool: PgPool,
    sqlx_lock: PgAdvisoryLock,
}

async fn first_owned(conn: &mut PgConnection, k: i64) -> (bool, i32) {
    let row: ConfiguredRow = sqlx::query_as(FIRST_CONFIGURED)
        .bind(1_i32)
        .bind("1")
        .bind(k)
        .fetch_one(conn)
        .await
        .unwrap();
    assert!(
        row.3,
        "the pool's session is set up by pglock before the runs"
    );
    (row.0 == Some(true), row.1)
}

async fn first_borrowed(conn: &mut PgConnection, k: i64) -> (bool, i32) {
    let row: BorrowedRow = sqlx::query_as(FIRST_BORROWED)
        .bind(1_i32)
        .bind(k)
        .fetch_one(conn)
        .await
        .unwrap();
    (row.0 == Some(true), row.1)
}

async fn pinned(conn: &mut PgConnection, sql: &'static str, pid: i32, k: i64) -> bool {
    let (value,): (Option<bool>,) = sqlx::query_as(sql)
        .bind(pid)
        .bind(k)
        .fetch_one(conn)
        .await
        .unwrap();
    value == Some(true)
}

/// Two untimed rounds of contender `who`, then `n` timed ones.
async fn rounds(t: &mut Target, m: Measure, who: usize, n: u32) -> Duration {
    let k = raw::big(LockKey::from_name(KEY_NAME));
    let key = LockKey::BigInt(k);
    macro_rules! timed {
        ($round:block) => {{
            $round;
            $round;
            let start = Instant::now();
            for _ in 0..n {
                $round;
            }
            start.elapsed()
        }};
    }
    let Target {
        conn,
        pid,
        pool,
        sqlx_lock,
    } = t;
    let pid = *pid;
    match (m, who) {
        (Measure::Pair, 0) => {
            let mut lock = AdvisoryLock::with_connection(&mut *conn, key);
            timed!({
                assert!(lock.try_lock().await.unwrap());
                lock.unlock().await.unwrap();
            })
        }
        (Measure::Pair, 1) => timed!({
            assert!(pinned(conn, TRY_LOCK, pid, k).await);
            assert!(pinned(conn, UNLOCK, pid, k).await);
        }),
        (Measure::Pair, 2) | (Measure::Borrowed, 2) => timed!({
            assert!(raw::try_lock(conn, k).await);
            raw::unlock(conn, k).await;
        }),
        (Measure::Pair, _) => timed!({
            match sqlx_lock.try_acquire(&mut *conn).await.unwrap() {
                Either::Left(guard) => {
                    guard.release_now().await.unwrap();
                }
                Either::Right(_) => panic!("free key not acquired"),
            }
        }),
        (Measure::Borrowed, 0) => timed!({
            let mut lock = AdvisoryLock::with_connection(&mut *conn, key);
            assert!(lock.try_lock_for(raw::WAIT).await.unwrap());
            lock.unlock().await.unwrap();
        }),
        (Measure::Borrowed, _) => timed!({
            let (taken, first_pid) = first_borrowed(conn, k).await;
            assert!(taken);
            assert!(pinned(conn, UNLOCK, first_pid, k).await);
        }),
        (Measure::Lifecycle, 0) => timed!({
            let mut lock = AdvisoryLock::new(pool, key).await.unwrap();
            assert!(lock.try_lock().await.unwrap());
            lock.unlock().await.unwrap();
            lock.close().await.unwrap();
        }),
        (Measure::Lifecycle, 1) => timed!({
            let mut pooled = pool.acquire().await.unwrap();
            // The first statement reports the server session; the unlock binds it.
            let (taken, first_pid) = first_owned(&mut pooled, k).await;
            assert!(taken);
            assert!(pinned(&mut pooled, UNLOCK, first_pid, k).await);
        }),
        (Measure::Lifecycle, _) => timed!({
            let mut pooled = pool.acquire().await.unwrap();
            assert!(raw::try_lock(&mut pooled, k).await);
            raw::unlock(&mut pooled, k).await;
        }),
    }
}

struct Table {
    measure: Measure,
    times: Vec<Vec<f64>>,
    cpu: Vec<(Duration, Duration)>,
    rounds: f64,
}

async fn interleave(t: &mut Target, m: Measure, postmaster: Option<u32>) -> Table {
    let names = m.contenders();
    let (blocks, n) = m.blocks();
    let mut times = vec![Vec::new(); names.len()];
    let mut cpu = vec![(Duration::ZERO, Duration::ZERO); names.len()];
    // Every contender once, so that every backend is there for the CPU count.
    for who in 0..names.len() {
        rounds(t, m, who, 0).await;
    }
    let counter = Cpu::new(postmaster);
    for b in 0..blocks {
        for turn in 0..names.len() {
            let who = (b + turn) % names.len();
            let from = counter.now();
            let elapsed = rounds(t, m, who, n).await;
            let spent = counter.since(from);
            cpu[who] = (cpu[who].0 + spent.0, cpu[who].1 + spent.1);
            times[who].push(elapsed.as_secs_f64() * 1e6 / f64::from(n));
        }
    }
    Table {
        measure: m,
        times,
        cpu,
        // Two untimed rounds per block too.
        rounds: (blocks as u32 * (n + 2)) as f64,
    }
}

fn main() {
    pin::pin_self();
    support::deadline(Duration::from_secs(300));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the Tokio runtime");
    rt.block_on(run());
}

async fn run() {
    let url = support::private_cluster();
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    let admin_pid = pin::pin_conn(&mut admin).await;
    pin::pin_private_server(admin_pid);
    let postmaster = u32::try_from(admin_pid).ok().and_then(pin::parent_of);
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let pid = pin::pin_conn(&mut conn).await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect(&url)
        .await
        .expect("connect the pool");
    let k = raw::big(LockKey::from_name(KEY_NAME));
    // pglock sets the pool's one session up once; every timed cycle finds it so.
    let mut lock = AdvisoryLock::new(&pool, LockKey::BigInt(k))
        .await
        .expect("lock");
    assert!(lock.try_lock().await.expect("try_lock"));
    lock.close().await.expect("close");
    let mut t = Target {
        conn,
        pid,
        pool,
        sqlx_lock: PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(k)),
    };
    // Not in the default run: one contender alone for 10 s, for a profiler to watch
    // (`profile-lifecycle-0` pglock, `-1` its SQL raw, `-2` the plain SQL; `profile-pair-N`
    // the same for `try_lock` + `unlock`, `-3` `PgAdvisoryLock`).
    if let Some((m, who)) = std::env::args().find_map(|a| {
        let (m, who) = match (
            a.strip_prefix("profile-lifecycle-"),
            a.strip_prefix("profile-pair-"),
        ) {
            (Some(who), _) => (Measure::Lifecycle, who),
            (_, Some(who)) => (Measure::Pair, who),
            _ => return None,
        };
        who.parse::<usize>().ok().map(|who| (m, who))
    }) {
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(10) {
            rounds(&mut t, m, who, 100).await;
            n += 102;
        }
        println!("profile {}, contender {who}: {n} rounds in 10 s", m.name());
        return;
    }
    let mut tables = Vec::new();
    for m in [Measure::Pair, Measure::Borrowed, Measure::Lifecycle] {
        tables.push(interleave(&mut t, m, postmaster).await);
    }
    t.conn.close().await.ok();
    t.pool.close().await;
    admin.close().await.ok();

    println!();
    println!("{}", pin::report());
    println!(
        "Rotating blocks (pairs: {PAIR_BLOCKS} of {PAIRS}; cycles: {CYCLE_BLOCKS} of {CYCLES}), \
         each after two untimed rounds; µs: median block; ratios: medians of per-block ratios; \
         CPU per round: bench process and server backends (schedstat), over every block."
    );
    for table in &tables {
        let names = table.measure.contenders();
        println!();
        println!("{}", table.measure.name());
        println!();
        println!(
            "| contender | µs per round | / plain SQL | / pglock's SQL | bench CPU µs | server \
             CPU µs |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (i, name) in names.iter().enumerate() {
            println!(
                "| {name} | {:.1} | {:.3} | {:.3} | {:.1} | {:.1} |",
                median(table.times[i].clone()),
                median_ratio(&table.times[i], &table.times[2]),
                median_ratio(&table.times[i], &table.times[1]),
                table.cpu[i].0.as_secs_f64() * 1e6 / table.rounds,
                table.cpu[i].1.as_secs_f64() * 1e6 / table.rounds,
            );
        }
        println!();
        println!(
            "pglock / plain: {:.3}× = pglock's SQL / plain {:.3}× (its statements) × pglock / \
             its SQL {:.3}× (its client work)",
            median_ratio(&table.times[0], &table.times[2]),
            median_ratio(&table.times[1], &table.times[2]),
            median_ratio(&table.times[0], &table.times[1]),
        );
    }
}

//! Statements sent per lock operation, counted by the server: `cargo bench --bench
//! round_trips` prints the tables.
//!
//! Always on a private cluster (see `support`), which preloads `pg_stat_statements`. For
//! each operation pair it warms the lock up with one uncounted pair (a lock's first
//! operation is its session's first statement: `sql::FIRST`, which also sets an owned
//! session up, or on a session already set up the smaller `sql::FIRST_CONFIGURED`),
//! resets `pg_stat_statements`, runs the pair 1000 times, and sums `calls` over every
//! statement but the counting queries themselves. pglock's goal: exactly one
//! statement per operation. This counts statements, not round trips: a pool's `acquire`
//! and its return of a connection each send a ping, a round trip but no statement, and
//! two statements can share a round trip. `cargo bench --bench interleaved` counts round
//! trips on the wire.
//!
//! A second table shows where a short-lived lock's time goes on the server: each
//! statement's mean execution time over lock lifecycles.

mod support;

use pglock::{AdvisoryLock, LockKey};
use sqlx::postgres::{PgAdvisoryLock, PgAdvisoryLockKey, PgPoolOptions};
use sqlx::{Connection, Either, PgConnection};

use support::raw::{self, WAIT};

const ROUNDS: i64 = 1000;

/// Statements run since the last reset, but for the counting queries themselves.
async fn statements(admin: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
         WHERE query NOT ILIKE '%pg_stat_statements%'",
    )
    .fetch_one(admin)
    .await
    .expect("read pg_stat_statements")
}

async fn reset(admin: &mut PgConnection) {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(admin)
        .await
        .expect("reset pg_stat_statements");
}

struct Row {
    contender: &'static str,
    what: &'static str,
    ops_per_round: i64,
    statements: i64,
}

/// Warms up with one round of `$round`, resets the counts, runs `ROUNDS` rounds, and
/// records the statements the server ran for `$ops_per_round` operations per round.
macro_rules! count {
    ($rows:expr, $admin:expr, $contender:expr, $what:expr, $ops_per_round:expr, $round:block) => {{
        $round;
        reset($admin).await;
        for _ in 0..ROUNDS {
            $round;
        }
        let statements = statements($admin).await;
        $rows.push(Row {
            contender: $contender,
            what: $what,
            ops_per_round: $ops_per_round,
            statements,
        });
    }};
}

/// Every operation pair of one pglock lock, counted.
macro_rules! pglock_pairs {
    ($rows:expr, $admin:expr, $contender:expr, $lock:ident) => {
        count!($rows, $admin, $contender, "try_lock + unlock", 2, {
            assert!($lock.try_lock().await.unwrap());
            $lock.unlock().await.unwrap();
        });
        count!($rows, $admin, $contender, "lock + unlock", 2, {
            $lock.lock().await.unwrap();
            $lock.unlock().await.unwrap();
        });
        count!(
            $rows,
            $admin,
            $contender,
            "try_lock_shared + unlock_shared",
            2,
            {
                assert!($lock.try_lock_shared().await.unwrap());
                $lock.unlock_shared().await.unwrap();
            }
        );
        count!(
            $rows,
            $admin,
            $contender,
            "lock_shared + unlock_shared",
            2,
            {
                $lock.lock_shared().await.unwrap();
                $lock.unlock_shared().await.unwrap();
            }
        );
        count!($rows, $admin, $contender, "try_lock_for(1s) + unlock", 2, {
            assert!($lock.try_lock_for(WAIT).await.unwrap());
            $lock.unlock().await.unwrap();
        });
        count!(
            $rows,
            $admin,
            $contender,
            "try_lock_shared_for(1s) + unlock_shared",
            2,
            {
                assert!($lock.try_lock_shared_for(WAIT).await.unwrap());
                $lock.unlock_shared().await.unwrap();
            }
        );
        count!($rows, $admin, $contender, "is_held", 1, {
            assert!(!$lock.is_held().await.unwrap());
        });
        $lock.close().await.unwrap();
    };
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = support::private_cluster();
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    let admin = &mut admin;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut *admin)
        .await
        .expect("create extension pg_stat_statements");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("connect");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let conn = &mut conn;
    let key = LockKey::from_name("pglock-bench/round-trips");
    let k = raw::big(key);
    let mut rows = Vec::new();

    // pglock on a borrowed connection, then on its own pool connection.
    {
        let mut lock = AdvisoryLock::with_connection(&mut *conn, key);
        pglock_pairs!(rows, admin, "pglock (borrowed conn)", lock);
    }
    {
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        pglock_pairs!(rows, admin, "pglock (AdvisoryLock::new)", lock);
    }

    // sqlx's PgAdvisoryLock on the same borrowed connection (no shared or timed modes).
    let sqlx_lock = PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(k));
    let contender = "sqlx PgAdvisoryLock";
    count!(rows, admin, contender, "try_lock + unlock", 2, {
        match sqlx_lock.try_acquire(&mut *conn).await.unwrap() {
            Either::Left(guard) => {
                guard.release_now().await.unwrap();
            }
            Either::Right(_) => panic!("free key not acquired"),
        }
    });
    count!(rows, admin, contender, "lock + unlock", 2, {
        let guard = sqlx_lock.acquire(&mut *conn).await.unwrap();
        guard.release_now().await.unwrap();
    });

    // Raw sqlx statements on the same connection.
    let contender = "raw sqlx";
    count!(rows, admin, contender, "try_lock + unlock", 2, {
        assert!(raw::try_lock(conn, k).await);
        raw::unlock(conn, k).await;
    });
    count!(rows, admin, contender, "lock + unlock", 2, {
        raw::lock(conn, k).await;
        raw::unlock(conn, k).await;
    });
    count!(
        rows,
        admin,
        contender,
        "try_lock_shared + unlock_shared",
        2,
        {
            assert!(raw::try_lock_shared(conn, k).await);
            raw::unlock_shared(conn, k).await;
        }
    );
    count!(rows, admin, contender, "try_lock_for(1s) + unlock", 2, {
        raw::try_lock_for(conn, k).await;
        raw::unlock(conn, k).await;
    });

    // Whole lifecycles: what a short-lived lock costs beyond its operations.
    count!(
        rows,
        admin,
        "pglock (AdvisoryLock::new)",
        "cycle: new + try_lock + unlock + close",
        2,
        {
            let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
            assert!(lock.try_lock().await.unwrap());
            lock.unlock().await.unwrap();
            lock.close().await.unwrap();
        }
    );
    count!(
        rows,
        admin,
        "pglock (borrowed conn)",
        "cycle: with_connection + try_lock_for(1s) + unlock",
        2,
        {
            let mut lock = AdvisoryLock::with_connection(&mut *conn, key);
            assert!(lock.try_lock_for(WAIT).await.unwrap());
            lock.unlock().await.unwrap();
        }
    );
    count!(
        rows,
        admin,
        "raw sqlx",
        "cycle: pool.acquire + try_lock + unlock + drop",
        2,
        {
            let mut pooled = pool.acquire().await.unwrap();
            assert!(raw::try_lock(&mut pooled, k).await);
            raw::unlock(&mut pooled, k).await;
        }
    );

    // Where a short-lived lock's time goes on the server: each statement's mean
    // execution time over whole lifecycles, pglock's and raw ones alike.
    reset(admin).await;
    for _ in 0..ROUNDS {
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(lock.try_lock().await.unwrap());
        lock.unlock().await.unwrap();
        lock.close().await.unwrap();
        let mut pooled = pool.acquire().await.unwrap();
        assert!(raw::try_lock(&mut pooled, k).await);
        raw::unlock(&mut pooled, k).await;
    }
    let server_times: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT query, calls, mean_exec_time FROM pg_stat_statements \
         WHERE query NOT ILIKE '%pg_stat_statements%' ORDER BY mean_exec_time DESC",
    )
    .fetch_all(&mut *admin)
    .await
    .expect("read pg_stat_statements");

    println!();
    println!(
        "Statements per operation ({ROUNDS} rounds each, counted by pg_stat_statements; \
         a cycle's operations are its lock operations)"
    );
    println!();
    println!("| contender | round | statements | per round | per operation |");
    println!("|---|---|---:|---:|---:|");
    for row in &rows {
        let per_round = row.statements as f64 / ROUNDS as f64;
        println!(
            "| {} | {} | {} | {:.2} | {:.2} |",
            row.contender,
            row.what,
            row.statements,
            per_round,
            per_round / row.ops_per_round as f64
        );
    }

    println!();
    println!(
        "Server execution time per statement, {ROUNDS} cycles each of AdvisoryLock::new + \
         try_lock + unlock + close and of pool.acquire + raw try_lock + unlock + drop \
         (pg_stat_statements mean_exec_time)"
    );
    println!();
    println!("| statement | calls | mean exec time (µs) |");
    println!("|---|---:|---:|");
    for (query, calls, mean_ms) in server_times {
        let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
        let shown: String = query.chars().take(90).collect();
        let more = if shown.len() < query.len() { "…" } else { "" };
        println!("| `{shown}{more}` | {calls} | {:.1} |", mean_ms * 1000.0);
    }
}

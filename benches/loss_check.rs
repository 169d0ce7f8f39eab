//! What one loss check costs (`cargo bench --bench loss_check`): the statement an owned
//! lock's `lost()` sends every interval, against a bare round trip and against the
//! check it replaced, with other sessions holding many advisory locks.
//!
//! - **bare round trip**: `SELECT 1`, prepared: the least a check can cost.
//! - **liveness** (now, `src/sql.rs` `LIVENESS`): `SELECT true, pg_backend_pid()`. On a
//!   session the lock owns only the lock changes its levels, so a live session with the
//!   same pid still holds them.
//! - **pg_locks** (before, `src/sql.rs` `IS_HELD`): whether `pg_locks` shows the key held
//!   by this session. Reading `pg_locks` takes every lock-manager partition lock and copies
//!   the whole lock table, so it grows with what *other* sessions hold.
//!
//! All three on one connection that holds the checked key, as an owned lock's session
//! does; interleaved in rotating blocks, medians of per-block ratios, pinned (the bench
//! process and the private cluster on one CPU; see `support::pin`). First with no other
//! advisory locks on the server, then with 5,000 held by five other sessions (1,000
//! each; the private cluster's lock table has room for 64 × 300). Always a private
//! cluster.

mod support;

use std::time::Instant;

use pglock::LockKey;
use sqlx::postgres::types::Oid;
use sqlx::{Connection, PgConnection};

use support::pin;

const BLOCKS: usize = 40;
const CHECKS: u32 = 100;
const HOLDERS: i32 = 5;
const LOCKS_PER_HOLDER: i32 = 1000;

/// The statements, as `src/sql.rs` has them (bench SQL may be literal).
const BARE: &str = "SELECT 1";
const LIVENESS: &str = "SELECT true, pg_backend_pid()";
const IS_HELD: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted \
     AND classid = $1 AND objid = $2 AND objsubid = $3), pg_backend_pid()";

const NAMES: [&str; 3] = ["bare round trip", "liveness (now)", "pg_locks (before)"];

async fn check(conn: &mut PgConnection, who: usize, key: LockKey) {
    match who {
        0 => {
            let one: i32 = sqlx::query_scalar(BARE).fetch_one(conn).await.unwrap();
            assert_eq!(one, 1);
        }
        1 => {
            let (alive, _pid): (bool, i32) =
                sqlx::query_as(LIVENESS).fetch_one(conn).await.unwrap();
            assert!(alive);
        }
        _ => {
            let (classid, objid, objsubid) = key.pg_locks_ids();
            let (held, _pid): (bool, i32) = sqlx::query_as(IS_HELD)
                .bind(Oid(classid))
                .bind(Oid(objid))
                .bind(objsubid)
                .fetch_one(conn)
                .await
                .unwrap();
            assert!(held, "the checked key is held by the checking session");
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n % 2 {
        1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

/// One table row: µs per check for each contender, and the ratios.
async fn measure(conn: &mut PgConnection, key: LockKey, others: i64) -> String {
    let mut times = vec![Vec::new(); NAMES.len()];
    for b in 0..BLOCKS {
        for turn in 0..NAMES.len() {
            let who = (b + turn) % NAMES.len();
            check(conn, who, key).await;
            let start = Instant::now();
            for _ in 0..CHECKS {
                check(conn, who, key).await;
            }
            times[who].push(start.elapsed().as_secs_f64() * 1e6 / f64::from(CHECKS));
        }
    }
    format!(
        "| {others} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} | {:.3} |",
        median(times[0].clone()),
        median(times[1].clone()),
        median(times[2].clone()),
        ratio(&times[1], &times[0]),
        ratio(&times[2], &times[0]),
        ratio(&times[2], &times[1]),
    )
}

async fn advisory_locks(admin: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        .fetch_one(admin)
        .await
        .expect("count advisory locks")
}

fn main() {
    pin::pin_self();
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

    // The checking session holds its key, as an owned lock's session does.
    let key = LockKey::from_name("pglock-bench/loss-check");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    pin::pin_conn(&mut conn).await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(support::raw::big(key))
        .execute(&mut conn)
        .await
        .expect("take the checked key");

    let mut rows = Vec::new();
    let others = advisory_locks(&mut admin).await - 1;
    rows.push(measure(&mut conn, key, others).await);

    // Other sessions hold 1,000 advisory locks each (int-pair keys, apart from the
    // checked bigint key), idle.
    let mut holders = Vec::new();
    for h in 0..HOLDERS {
        let mut holder = PgConnection::connect(&url).await.expect("connect a holder");
        sqlx::query("SELECT pg_advisory_lock($1, g) FROM generate_series(1, $2) AS g")
            .bind(h)
            .bind(LOCKS_PER_HOLDER)
            .execute(&mut holder)
            .await
            .expect("hold advisory locks");
        holders.push(holder);
    }
    let others = advisory_locks(&mut admin).await - 1;
    assert_eq!(others, i64::from(HOLDERS * LOCKS_PER_HOLDER));
    rows.push(measure(&mut conn, key, others).await);

    for holder in holders {
        holder.close().await.ok();
    }
    conn.close().await.ok();
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut admin)
        .await
        .expect("server version");
    admin.close().await.ok();

    println!();
    println!("Server: {version}");
    println!("{}", pin::report());
    println!(
        "One loss check on a session that holds its key: {BLOCKS} blocks of {CHECKS} checks \
         per contender, rotating, each block after one untimed check; µs: median block; \
         ratios: medians of per-block ratios."
    );
    println!();
    println!(
        "| advisory locks held by others | bare round trip (µs) | liveness, now (µs) | \
         pg_locks, before (µs) | liveness / bare | pg_locks / bare | pg_locks / liveness |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}

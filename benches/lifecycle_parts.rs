//! Where a lock lifecycle's time goes: `cargo bench --bench lifecycle_parts`.
//!
//! The `interleaved` bench times `AdvisoryLock::new` + `try_lock` + `unlock` + `close`
//! against the raw cycle (`pool.acquire` + try + unlock + drop). This one adds, in the same
//! interleaved and pinned run on the same one-connection pool, the raw cycle with one more
//! statement before the connection goes back to the pool, sent the ways pglock's `close`
//! could send its settings restore:
//!
//! - `SELECT 1` sent without waiting for its answer (what an extra message costs at all);
//! - the restore statement sent without waiting, as a simple query (what `close` does at
//!   the time of writing);
//! - the same, waited for;
//! - the same, waited for, as a prepared statement (cached per connection like any
//!   `sqlx::query`).
//!
//! The restore is a copy of `src/sql.rs` `RESTORE_SESSION` at the time of writing (bench
//! SQL may be literal); its stash, `pglock.restore`, is set once per connection to the
//! session's own values, so each restore sets every setting to what it already is.
//!
//! A request sent without waiting does not share the next one's round trip here: sqlx
//! does not set `TCP_NODELAY`, so the pool's return ping (a small write while the restore
//! is unacknowledged) is held by Nagle's algorithm until the restore's answer, which
//! carries the acknowledgement, arrives.

mod support;

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Instant;

use pglock::{AdvisoryLock, LockKey};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use support::{pin, raw};

const BLOCKS: usize = 100;
const CYCLES: u32 = 50;

/// `src/sql.rs` `RESTORE_SESSION` at the time of writing.
const RESTORE: &str = "SELECT \
     set_config('application_name', r.v[1], false), \
     CASE WHEN r.v[2] IS NOT NULL THEN set_config('idle_session_timeout', r.v[2], false) END, \
     set_config('idle_in_transaction_session_timeout', r.v[3], false), \
     CASE WHEN r.v[4] IS NOT NULL \
          THEN set_config('client_connection_check_interval', r.v[4], false) END, \
     set_config('tcp_keepalives_idle', r.v[5], false), \
     set_config('tcp_keepalives_interval', r.v[6], false), \
     set_config('tcp_keepalives_count', r.v[7], false) \
     FROM (SELECT current_setting('pglock.restore')::text[] AS v OFFSET 0) AS r";

/// The stash `RESTORE` reads: the session's own current values.
const STASH: &str = "SELECT set_config('pglock.restore', ARRAY[ \
     current_setting('application_name'), \
     current_setting('idle_session_timeout', true), \
     current_setting('idle_in_transaction_session_timeout'), \
     current_setting('client_connection_check_interval', true), \
     current_setting('tcp_keepalives_idle'), \
     current_setting('tcp_keepalives_interval'), \
     current_setting('tcp_keepalives_count')]::text, false)";

const NAMES: [&str; 6] = [
    "pglock: new + try_lock + unlock + close",
    "raw: acquire + try + unlock + drop",
    "raw + SELECT 1, not waited for",
    "raw + restore, not waited for (simple query; as close does)",
    "raw + restore, waited for (simple query)",
    "raw + restore, waited for (prepared)",
];

/// Sends a simple query and returns once it is on its way (as `close` does); an answer
/// that is there at once is read, and must be a success.
async fn send_without_waiting(conn: &mut PgConnection, sql: &'static str) {
    let mut execute = pin!(sqlx::raw_sql(sql).execute(conn));
    std::future::poll_fn(|cx| match execute.as_mut().poll(cx) {
        Poll::Ready(result) => {
            result.expect("statement");
            Poll::Ready(())
        }
        Poll::Pending => Poll::Ready(()),
    })
    .await
}

async fn cycle(pool: &PgPool, who: usize, key: LockKey) {
    if who == 0 {
        let mut lock = AdvisoryLock::new(pool, key).await.unwrap();
        assert!(lock.try_lock().await.unwrap());
        lock.unlock().await.unwrap();
        lock.close().await.unwrap();
        return;
    }
    let k = raw::big(key);
    let mut conn = pool.acquire().await.unwrap();
    assert!(raw::try_lock(&mut conn, k).await);
    raw::unlock(&mut conn, k).await;
    match who {
        1 => {}
        2 => send_without_waiting(&mut conn, "SELECT 1").await,
        3 => send_without_waiting(&mut conn, RESTORE).await,
        4 => {
            sqlx::raw_sql(RESTORE).execute(&mut *conn).await.unwrap();
        }
        _ => {
            sqlx::query(RESTORE).execute(&mut *conn).await.unwrap();
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
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect(&url)
        .await
        .expect("connect the pool");
    {
        let mut conn = pool.acquire().await.expect("pool connection");
        pin::pin_conn(&mut conn).await;
        sqlx::query(STASH)
            .execute(&mut *conn)
            .await
            .expect("stash the settings");
    }
    let key = LockKey::from_name("pglock-bench/lifecycle-parts");
    let mut times = vec![Vec::new(); NAMES.len()];
    for b in 0..BLOCKS {
        for turn in 0..NAMES.len() {
            let who = (b + turn) % NAMES.len();
            cycle(&pool, who, key).await;
            cycle(&pool, who, key).await;
            let start = Instant::now();
            for _ in 0..CYCLES {
                cycle(&pool, who, key).await;
            }
            times[who].push(start.elapsed().as_secs_f64() * 1e6 / f64::from(CYCLES));
        }
    }
    pool.close().await;
    admin.close().await.ok();

    println!();
    println!("{}", pin::report());
    println!(
        "{BLOCKS} blocks of {CYCLES} cycles per contender, rotating, each block after two \
         untimed cycles, one one-connection pool; µs: median block; ratio: median of \
         per-block ratios to the raw cycle."
    );
    println!();
    println!("| cycle | µs | / raw cycle |");
    println!("|---|---:|---:|");
    for (i, name) in NAMES.iter().enumerate() {
        let ratio = median(times[i].iter().zip(&times[1]).map(|(t, r)| t / r).collect());
        println!("| {name} | {:.1} | {ratio:.3} |", median(times[i].clone()));
    }
}

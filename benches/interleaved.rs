//! A cross-check of the `locks` bench's ratios that a busy machine cannot skew:
//! `cargo bench --bench interleaved` prints a table.
//!
//! Criterion measures its contenders one after another, a few seconds each; on a small
//! shared machine the background load can change between them, and move a ratio by more
//! than the 5% it is meant to resolve. Here the contenders alternate in short blocks (in
//! a rotating order), every pair of blocks measured seconds apart at most, and the
//! ratio reported is the median of the per-block ratios, so a change in load hits every
//! contender alike. Same database choice as `locks` (`DATABASE_URL`, else a private
//! cluster), same connection for the per-operation pairs, same runtime (current-thread
//! Tokio).

mod support;

use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, LockKey};
use sqlx::postgres::{PgAdvisoryLock, PgAdvisoryLockKey};
use sqlx::{Connection, Either, PgConnection};

use support::raw::{self, WAIT};
use support::workloads::{self, Contender};

/// Blocks per contender for the per-operation pairs, and pairs per block.
const PAIR_BLOCKS: usize = 40;
const PAIRS: u32 = 100;
/// Blocks per contender for the several-session workloads.
const SESSION_BLOCKS: usize = 40;
/// Handoffs per block, and reader rounds per block.
const HANDOFFS: u64 = 200;
const READER_ROUNDS: u64 = 100;
const READERS: usize = 8;

struct Line {
    what: String,
    unit: &'static str,
    /// Median per-block cost of pglock, raw sqlx and (for two pairs) PgAdvisoryLock.
    medians: [Option<f64>; 3],
    /// Median of the per-block ratios pglock / raw and pglock / PgAdvisoryLock.
    vs_raw: f64,
    vs_sqlx: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Per-contender block costs in, one table line out.
fn line(what: String, unit: &'static str, times: &[Vec<f64>]) -> Line {
    let ratio = |other: usize| {
        median(
            times[0]
                .iter()
                .zip(&times[other])
                .map(|(pglock, o)| pglock / o)
                .collect(),
        )
    };
    let med = |i: usize| times.get(i).map(|t| median(t.clone()));
    Line {
        what,
        unit,
        medians: [med(0), med(1), med(2)],
        vs_raw: ratio(1),
        vs_sqlx: (times.len() > 2).then(|| ratio(2)),
    }
}

/// µs per round of `PAIRS` rounds of `$round`, after one untimed round.
macro_rules! block {
    ($round:block) => {{
        $round;
        let start = Instant::now();
        for _ in 0..PAIRS {
            $round;
        }
        start.elapsed().as_secs_f64() * 1e6 / f64::from(PAIRS)
    }};
}

/// pglock, raw sqlx and (where it has the operation) sqlx's PgAdvisoryLock on one
/// connection, in alternating blocks.
async fn pairs(conn: &mut PgConnection, key: LockKey) -> Vec<Line> {
    let k = raw::big(key);
    let sqlx_lock = PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(k));
    let mut lines = Vec::new();
    for what in [
        "try_lock+unlock",
        "lock+unlock",
        "try_lock_shared+unlock_shared",
        "try_lock_for+unlock",
    ] {
        let contenders = if what.starts_with("try_lock+") || what.starts_with("lock+") {
            3
        } else {
            2
        };
        let mut times = vec![Vec::new(); contenders];
        for b in 0..PAIR_BLOCKS {
            for turn in 0..contenders {
                let who = (b + turn) % contenders;
                let t = match (who, what) {
                    (0, _) => {
                        // A borrowed lock is a plain struct: making one per block is free,
                        // and its warm-up round does its once-per-lock reads.
                        let mut lock = AdvisoryLock::with_connection(&mut *conn, key);
                        match what {
                            "try_lock+unlock" => block!({
                                assert!(lock.try_lock().await.unwrap());
                                lock.unlock().await.unwrap();
                            }),
                            "lock+unlock" => block!({
                                lock.lock().await.unwrap();
                                lock.unlock().await.unwrap();
                            }),
                            "try_lock_shared+unlock_shared" => block!({
                                assert!(lock.try_lock_shared().await.unwrap());
                                lock.unlock_shared().await.unwrap();
                            }),
                            _ => block!({
                                assert!(lock.try_lock_for(WAIT).await.unwrap());
                                lock.unlock().await.unwrap();
                            }),
                        }
                    }
                    (1, "try_lock+unlock") => block!({
                        assert!(raw::try_lock(conn, k).await);
                        raw::unlock(conn, k).await;
                    }),
                    (1, "lock+unlock") => block!({
                        raw::lock(conn, k).await;
                        raw::unlock(conn, k).await;
                    }),
                    (1, "try_lock_shared+unlock_shared") => block!({
                        assert!(raw::try_lock_shared(conn, k).await);
                        raw::unlock_shared(conn, k).await;
                    }),
                    (1, _) => block!({
                        raw::try_lock_for(conn, k).await;
                        raw::unlock(conn, k).await;
                    }),
                    (_, "try_lock+unlock") => block!({
                        match sqlx_lock.try_acquire(&mut *conn).await.unwrap() {
                            Either::Left(guard) => {
                                guard.release_now().await.unwrap();
                            }
                            Either::Right(_) => panic!("free key not acquired"),
                        }
                    }),
                    (_, _) => block!({
                        let guard = sqlx_lock.acquire(&mut *conn).await.unwrap();
                        guard.release_now().await.unwrap();
                    }),
                };
                times[who].push(t);
            }
        }
        lines.push(line(format!("uncontended {what}"), "µs/pair", &times));
    }
    lines
}

/// pglock and raw sqlx taking turns on the same N sessions, in alternating blocks.
async fn sessions(url: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let who = [Contender::Pglock, Contender::Raw];
    let handoff_key = LockKey::from_name("pglock-bench/interleaved-handoff");
    for n in [2usize, 8, 32] {
        let mut conns = workloads::connections(url, n).await;
        let mut times = vec![Vec::new(), Vec::new()];
        for contender in who {
            workloads::handoff_run(&mut conns, handoff_key, HANDOFFS, contender).await;
        }
        for b in 0..SESSION_BLOCKS {
            for turn in 0..2 {
                let i = (b + turn) % 2;
                let (t, acquisitions) =
                    workloads::handoff_run(&mut conns, handoff_key, HANDOFFS, who[i]).await;
                times[i].push(per(t, acquisitions));
            }
        }
        workloads::close(conns).await;
        lines.push(line(
            format!("contended_handoff N={n}"),
            "µs/handoff",
            &times,
        ));
    }
    let readers_key = LockKey::from_name("pglock-bench/interleaved-readers");
    let mut conns = workloads::connections(url, READERS).await;
    let mut times = vec![Vec::new(), Vec::new()];
    for contender in who {
        workloads::readers_run(&mut conns, readers_key, 1, contender).await;
    }
    for b in 0..SESSION_BLOCKS {
        for turn in 0..2 {
            let i = (b + turn) % 2;
            let t = workloads::readers_run(&mut conns, readers_key, READER_ROUNDS, who[i]).await;
            times[i].push(per(t, READER_ROUNDS));
        }
    }
    workloads::close(conns).await;
    lines.push(line(
        format!("readers N={READERS}"),
        "µs/round of 8",
        &times,
    ));
    lines
}

fn per(t: Duration, n: u64) -> f64 {
    t.as_secs_f64() * 1e6 / n as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = support::database_url();
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let key = LockKey::from_name("pglock-bench/interleaved");
    let mut lines = pairs(&mut conn, key).await;
    conn.close().await.ok();
    lines.extend(sessions(&url).await);

    println!();
    println!(
        "Interleaved: contenders alternate block by block (per-op pairs: {PAIR_BLOCKS} \
         blocks of {PAIRS} pairs on one connection; sessions: {SESSION_BLOCKS} blocks of \
         {HANDOFFS} handoffs or {READER_ROUNDS} reader rounds on the same N connections). \
         Medians of the per-block costs, and of the per-block ratios."
    );
    println!();
    println!(
        "| workload | unit | pglock | raw sqlx | PgAdvisoryLock | pglock / raw | pglock / PgAdvisoryLock |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let num = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.1}"));
    for l in lines {
        println!(
            "| {} | {} | {} | {} | {} | {:.3} | {} |",
            l.what,
            l.unit,
            num(l.medians[0]),
            num(l.medians[1]),
            num(l.medians[2]),
            l.vs_raw,
            l.vs_sqlx.map_or("—".to_owned(), |r| format!("{r:.3}"))
        );
    }
}

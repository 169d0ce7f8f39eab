//! Workloads of several sessions at once, for pglock and for the raw statements alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, LockKey};
use sqlx::PgConnection;
use sqlx::postgres::PgPoolOptions;

use super::raw;

/// Who takes the locks: pglock's `AdvisoryLock` (borrowing each session's connection),
/// or the raw statements of [`raw`].
#[derive(Clone, Copy, Debug)]
pub enum Contender {
    Pglock,
    Raw,
}

/// N sessions (one connection each) take turns on `key` until `handoffs` acquisitions
/// have been counted; every task holds its connection and gives it back at the end.
/// PostgreSQL grants a released lock to the first waiter, so with N ≥ 2 every counted
/// acquisition is a handoff to another session. Returns the time taken and the
/// acquisitions made: `handoffs`, plus at most N - 1 by sessions that were already
/// waiting when the count ran out.
pub async fn handoff_run(
    conns: &mut Vec<PgConnection>,
    key: LockKey,
    handoffs: u64,
    who: Contender,
) -> (Duration, u64) {
    let remaining = Arc::new(AtomicI64::new(handoffs as i64));
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .drain(..)
        .map(|mut conn| {
            let remaining = Arc::clone(&remaining);
            tokio::spawn(async move {
                match who {
                    Contender::Pglock => {
                        let mut lock = AdvisoryLock::with_connection(&mut conn, key);
                        loop {
                            lock.lock().await.unwrap();
                            let left = remaining.fetch_sub(1, Ordering::Relaxed);
                            lock.unlock().await.unwrap();
                            if left <= 1 {
                                break;
                            }
                        }
                    }
                    Contender::Raw => {
                        let k = raw::big(key);
                        loop {
                            raw::lock(&mut conn, k).await;
                            let left = remaining.fetch_sub(1, Ordering::Relaxed);
                            raw::unlock(&mut conn, k).await;
                            if left <= 1 {
                                break;
                            }
                        }
                    }
                }
                conn
            })
        })
        .collect();
    for task in tasks {
        conns.push(task.await.expect("handoff task"));
    }
    let elapsed = start.elapsed();
    let overrun = u64::try_from(-remaining.load(Ordering::Relaxed)).unwrap_or(0);
    (elapsed, handoffs + overrun)
}

/// `n` sessions, each its own connection from a pool (detached: the bench owns each
/// session for as long as it runs).
pub async fn connections(url: &str, n: usize) -> Vec<PgConnection> {
    let pool = PgPoolOptions::new()
        .max_connections(n as u32)
        .connect(url)
        .await
        .expect("connect to the bench database");
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(pool.acquire().await.expect("pool connection").detach());
    }
    conns
}

/// Each of the sessions takes and releases the shared lock `rounds` times, all at once.
pub async fn readers_run(
    conns: &mut Vec<PgConnection>,
    key: LockKey,
    rounds: u64,
    who: Contender,
) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .drain(..)
        .map(|mut conn| {
            tokio::spawn(async move {
                match who {
                    Contender::Pglock => {
                        let mut lock = AdvisoryLock::with_connection(&mut conn, key);
                        for _ in 0..rounds {
                            lock.lock_shared().await.unwrap();
                            lock.unlock_shared().await.unwrap();
                        }
                    }
                    Contender::Raw => {
                        let k = raw::big(key);
                        for _ in 0..rounds {
                            raw::lock_shared(&mut conn, k).await;
                            raw::unlock_shared(&mut conn, k).await;
                        }
                    }
                }
                conn
            })
        })
        .collect();
    for task in tasks {
        conns.push(task.await.expect("reader task"));
    }
    start.elapsed()
}

/// Closes the sessions.
pub async fn close(conns: Vec<PgConnection>) {
    for conn in conns {
        sqlx::Connection::close(conn).await.ok();
    }
}

//! Swap the lock in tests: application code depends on `&dyn LockProvider`; production
//! hands it a `PgPool`, unit tests hand it `MemoryLocks`, which behaves like PostgreSQL.
//!
//! `cargo run --example swap_in_tests` runs the same service function against both, then
//! tests, without a database, how the application handles a lost lock
//! (`MemoryLocks::lose`, standing in for a terminated database session).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use pglock::memory::MemoryLocks;
use pglock::{Error, LockKey, LockProvider};
use sqlx::postgres::PgPoolOptions;

/// The application code: send the daily digest, once across the fleet. Returns whether
/// this replica sent it (another replica holding the lock means it is being sent).
async fn send_daily_digest(locks: &dyn LockProvider, day: &str) -> pglock::Result<bool> {
    let mut lock = locks
        .new_lock(LockKey::from_name(&format!("digest/{day}")))
        .await?;
    let sent = lock.try_lock_for(Duration::from_millis(100)).await?;
    if sent {
        // ... render and send the digest ...
        lock.unlock().await?;
    }
    lock.close().await?;
    Ok(sent)
}

/// What a unit test of that code looks like: no database, the same semantics.
async fn a_held_digest_lock_means_another_replica_is_sending(
    locks: Arc<dyn LockProvider>,
) -> pglock::Result<()> {
    let mut other_replica = locks
        .new_lock(LockKey::from_name("digest/2026-11-26"))
        .await?;
    other_replica.lock().await?;
    assert!(!send_daily_digest(locks.as_ref(), "2026-11-26").await?);
    other_replica.unlock().await?;
    assert!(send_daily_digest(locks.as_ref(), "2026-11-26").await?);
    other_replica.close().await
}

/// More application code: run `work` holding the lock on `name`, and stop it the moment
/// the lock is lost (another replica may hold the key by then). What the work returned,
/// or the loss.
async fn run_exclusively<T>(
    locks: &dyn LockProvider,
    name: &str,
    work: impl Future<Output = T> + Send,
) -> pglock::Result<T> {
    let mut lock = locks.new_lock(LockKey::from_name(name)).await?;
    lock.lock().await?;
    let outcome = future::or(async { Ok(work.await) }, async { Err(lock.lost().await) }).await;
    match outcome {
        Ok(value) => {
            lock.unlock().await?;
            lock.close().await?;
            Ok(value)
        }
        Err(lost) => {
            let _ = lock.close().await; // reports the same loss again
            Err(lost)
        }
    }
}

/// Its unit test: the database session is terminated halfway through the work, which
/// must stop, report the loss, and leave the key to the next replica.
async fn a_lost_lock_stops_the_work_and_frees_the_key() -> pglock::Result<()> {
    let locks = MemoryLocks::new();
    let failover = locks.clone();
    let work = async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Halfway through: the session holding the lock is gone.
        assert_eq!(failover.lose("search-index"), 1);
        tokio::time::sleep(Duration::from_secs(3600)).await; // the rest of the work
        "rebuilt"
    };
    let outcome = run_exclusively(&locks, "search-index", work).await;
    assert!(
        matches!(outcome, Err(Error::LockLost { .. })),
        "{outcome:?}"
    );
    let mut next_replica = locks.lock("search-index");
    assert!(next_replica.try_lock().await?);
    // Without a loss, the work runs to the end.
    next_replica.unlock().await?;
    let done = run_exclusively(&locks, "search-index", async { "rebuilt" }).await?;
    assert_eq!(done, "rebuilt");
    Ok(())
}

#[tokio::main]
async fn main() -> pglock::Result<()> {
    let memory: Arc<dyn LockProvider> = Arc::new(MemoryLocks::new());
    a_held_digest_lock_means_another_replica_is_sending(memory).await?;
    println!("MemoryLocks: the digest is sent once, and not while another replica holds it");
    a_lost_lock_stops_the_work_and_frees_the_key().await?;
    println!("MemoryLocks: a lost lock stops the work and frees the key (MemoryLocks::lose)");

    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    match PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => {
            let postgres: Arc<dyn LockProvider> = Arc::new(pool);
            a_held_digest_lock_means_another_replica_is_sending(postgres).await?;
            println!("PostgreSQL:  the same test passes against the database");
        }
        Err(err) => {
            eprintln!(
                "no PostgreSQL server answers ({err}); set DATABASE_URL to run the database half"
            );
            std::process::exit(2);
        }
    }
    Ok(())
}

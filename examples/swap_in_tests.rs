//! Swap the lock in tests: application code depends on `&dyn LockProvider`; production
//! hands it a `PgPool`, unit tests hand it `MemoryLocks`, which behaves like PostgreSQL.
//!
//! `cargo run --example swap_in_tests` runs the same service function against both.

use std::sync::Arc;
use std::time::Duration;

use pglock::memory::MemoryLocks;
use pglock::{LockKey, LockProvider};
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

#[tokio::main]
async fn main() -> pglock::Result<()> {
    let memory: Arc<dyn LockProvider> = Arc::new(MemoryLocks::new());
    a_held_digest_lock_means_another_replica_is_sending(memory).await?;
    println!("MemoryLocks: the digest is sent once, and not while another replica holds it");

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

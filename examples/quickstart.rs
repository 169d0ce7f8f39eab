//! The Go pglock README example, in Rust: two processes' worth of locks on one key.
//!
//! Run it with `cargo run --example quickstart`. It uses `DATABASE_URL` when set, and
//! the local server (`postgres://postgres@127.0.0.1:5432/postgres`) otherwise.

use std::time::Duration;

use pglock::{AdvisoryLock, LockKey};
use sqlx::postgres::PgPoolOptions;

const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("quickstart failed: {err}");
        std::process::exit(1);
    }
}

async fn run() -> pglock::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_SERVER.to_owned());
    let pool = match PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(err) => {
            eprintln!(
                "no PostgreSQL server answers at {}: {err}. Set DATABASE_URL to one, e.g. \
                 DATABASE_URL=postgres://user:password@host:5432/db cargo run --example quickstart",
                redact(&url)
            );
            std::process::exit(2);
        }
    };

    // Go: id := pglock.Hash("mylock") — the same key a Go service would use.
    let key = LockKey::from_name("mylock");
    println!("key for \"mylock\": {key}");

    // Go: lock, _ := pglock.New(ctx, db, id) — each lock has a dedicated connection.
    let mut lock1 = AdvisoryLock::new(&pool, key).await?;
    let mut lock2 = AdvisoryLock::new(&pool, key).await?;

    // Go: ok, _ := lock1.TryLock(ctx)
    println!("lock1.try_lock() = {}", lock1.try_lock().await?);
    println!("lock2.try_lock() = {}", lock2.try_lock().await?);

    // Go: lock1.Unlock(ctx) — now lock2 can have it.
    lock1.unlock().await?;
    println!("lock1.unlock()");
    println!("lock2.try_lock() = {}", lock2.try_lock().await?);

    // A timed wait: lock1 gives up after 200 ms because lock2 holds the key.
    println!(
        "lock1.try_lock_for(200ms) = {}",
        lock1.try_lock_for(Duration::from_millis(200)).await?
    );

    // Shared locks: both may read at once once the exclusive holder lets go.
    lock2.unlock().await?;
    println!(
        "lock1.try_lock_shared() = {}, lock2.try_lock_shared() = {}",
        lock1.try_lock_shared().await?,
        lock2.try_lock_shared().await?
    );

    // Unlocking what is not held is an error, not a silent no-op as in Go.
    if let Err(err) = lock1.unlock().await {
        println!("lock1.unlock() without an exclusive level: {err}");
    }

    // Go: lock.Close() — releases every level left and returns the connection, clean.
    lock1.close().await?;
    lock2.close().await?;
    println!("closed both locks");
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url.parse::<sqlx::postgres::PgConnectOptions>() {
        Ok(opts) => format!(
            "{}@{}:{}/{}",
            opts.get_username(),
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        ),
        Err(_) => "DATABASE_URL".to_owned(),
    }
}

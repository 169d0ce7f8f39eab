//! The quickstart on smol: two locks on one key, with try_lock, unlock, a timed wait,
//! shared levels and close.
//!
//! Run it with `cargo run --example smol --features runtime-smol`: the feature
//! turns on sqlx's smol runtime (pglock itself depends on no runtime). It uses
//! `DATABASE_URL` when set, and the local server
//! (`postgres://postgres@127.0.0.1:5432/postgres`) otherwise.

use std::time::Duration;

use pglock::{AdvisoryLock, LockKey};
use sqlx::postgres::PgPoolOptions;

const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn main() {
    if let Err(err) = smol::block_on(run()) {
        eprintln!("smol example failed: {err}");
        std::process::exit(1);
    }
}

async fn run() -> pglock::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_SERVER.to_owned());
    let pool = match PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(err) => {
            eprintln!(
                "no PostgreSQL server answers at {}: {err}. Set DATABASE_URL to one, e.g. \
                 DATABASE_URL=postgres://user:password@host:5432/db cargo run --example \
                 smol --features runtime-smol",
                redact(&url)
            );
            std::process::exit(2);
        }
    };

    let key = LockKey::from_name("mylock");
    let mut lock1 = AdvisoryLock::new(&pool, key).await?;
    let mut lock2 = AdvisoryLock::new(&pool, key).await?;

    println!("lock1.try_lock() = {}", lock1.try_lock().await?);
    println!("lock2.try_lock() = {}", lock2.try_lock().await?);
    println!(
        "lock2.try_lock_for(200ms) = {}",
        lock2.try_lock_for(Duration::from_millis(200)).await?
    );
    lock1.unlock().await?;
    println!(
        "lock1.unlock(); lock2.try_lock() = {}",
        lock2.try_lock().await?
    );
    lock2.unlock().await?;
    println!(
        "lock1.try_lock_shared() = {}, lock2.try_lock_shared() = {}",
        lock1.try_lock_shared().await?,
        lock2.try_lock_shared().await?
    );
    lock1.close().await?;
    lock2.close().await?;
    println!("closed both locks, on smol");
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

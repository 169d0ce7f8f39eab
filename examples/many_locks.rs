//! Many locks over a few sessions: a lock per customer, 1,000 customers, 4 connections.
//!
//! Run it with `cargo run --example many_locks`. It uses `DATABASE_URL` when set, and the
//! local server (`postgres://postgres@127.0.0.1:5432/postgres`) otherwise.

use std::time::{Duration, Instant};

use pglock::{LockClient, LockKey};
use sqlx::postgres::PgPoolOptions;

const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const CUSTOMERS: i32 = 1_000;

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("many_locks failed: {err}");
        std::process::exit(1);
    }
}

async fn run() -> pglock::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_SERVER.to_owned());
    let Ok(pool) = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    else {
        eprintln!(
            "no PostgreSQL server answers; set DATABASE_URL, e.g. DATABASE_URL=postgres://user@host/db"
        );
        std::process::exit(2);
    };

    // One client for the process; its driver releases dropped locks and gives idle
    // sessions back to the pool. Spawn it once, next to the client.
    let client = LockClient::new(&pool);
    tokio::spawn(client.driver());

    // A lock per customer: (7, id) in the int-pair key space, so as not to meet the
    // bigint keys of other applications.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for customer in 0..CUSTOMERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lock = client.lock((7, customer));
            let held = lock.try_lock().await?;
            Ok::<_, pglock::Error>((lock, held))
        }));
    }
    let mut locks = Vec::new();
    for task in tasks {
        let (lock, held) = task.await.expect("the task ran")?;
        assert!(held, "nobody else holds these keys");
        locks.push(lock);
    }
    println!(
        "{CUSTOMERS} customers locked in {:?} over {} server sessions",
        started.elapsed(),
        client.sessions()
    );

    // Another lock of the client on a held key is refused, as another session would be.
    let mut second = client.lock((7, 0));
    println!(
        "a second lock on customer 0: try_lock() = {}",
        second.try_lock().await?
    );

    // Several keys at once, every one or none, in one round trip.
    let pair = [LockKey::IntPair(8, 1), LockKey::IntPair(8, 2)];
    match client.try_lock_all(pair).await? {
        Some(set) => {
            println!("took {} keys all at once", set.len());
            set.release().await?;
        }
        None => println!("one of the keys was taken"),
    }

    for mut lock in locks {
        lock.unlock().await?;
    }
    println!("released all {CUSTOMERS}");
    Ok(())
}

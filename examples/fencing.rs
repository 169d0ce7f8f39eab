//! Fencing tokens against a paused lock holder, step by step, with two locks on one key.
//!
//! Worker A acquires the lock and gets a fencing token, then "pauses": its session is cut
//! from another connection, as a GC pause, swap or a cut network would. Worker B acquires
//! the key (a newer token) and writes, checking its token in its transaction. A wakes and
//! writes with its old token: `pglock::fencing::check` refuses it, and nothing of A's
//! write is committed.
//!
//! Run it with `cargo run --example fencing --features migrate`. It uses `DATABASE_URL`
//! when set, and the local server (`postgres://postgres@127.0.0.1:5432/postgres`)
//! otherwise. It applies pglock's migrations (the `pglock_fencing_tokens` table), and
//! creates a small demo table that it drops at the end.

use std::time::Duration;

use pglock::fencing::{self, FencingToken};
use pglock::{AdvisoryLock, Error, LockKey};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| LOCAL_SERVER.to_owned());
    let pool = match PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(err) => {
            eprintln!(
                "no PostgreSQL server answers at {} ({err}); set DATABASE_URL to one, e.g. \
                 DATABASE_URL=postgres://user:password@host:5432/db cargo run --example fencing --features migrate",
                redact(&url)
            );
            std::process::exit(2);
        }
    };

    // A table and a key of this run's own, so that runs side by side do not meet.
    let table = format!("pglock_fencing_demo_{}", std::process::id());
    let name = format!("invoice-42/{}", std::process::id());
    let key = LockKey::from_name(&name);
    println!("two workers, A and B, lock {name:?} (key {key}) before they write invoice 42");

    let result = run(&pool, &url, &table, key).await;
    // Clean up whatever happened: the demo table, and this run's token row.
    let cleanup = async {
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .execute(&pool)
            .await?;
        sqlx::query("DELETE FROM pglock_fencing_tokens WHERE lock_key = $1")
            .bind(key.to_string())
            .execute(&pool)
            .await?;
        println!("dropped {table}");
        Ok::<_, sqlx::Error>(())
    };
    let cleaned = cleanup.await;
    pool.close().await;
    if let Err(err) = result {
        eprintln!("fencing example failed: {err}");
        std::process::exit(1);
    }
    if let Err(err) = cleaned {
        eprintln!("fencing example could not clean up: {err}");
        std::process::exit(1);
    }
}

async fn run(pool: &PgPool, url: &str, table: &str, key: LockKey) -> pglock::Result<()> {
    pglock::migrate(pool).await?;
    println!("applied pglock's migrations (table pglock_fencing_tokens)");

    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, status text NOT NULL, \
         written_by text, token bigint); \
         INSERT INTO {table} VALUES (42, 'pending', NULL, NULL)"
    )))
    .execute(pool)
    .await?;
    println!("created demo table {table}: invoice 42 is pending");

    // 1. A acquires the key and gets a token.
    let mut a = AdvisoryLock::new(pool, key).await?;
    let a_token = a.lock_fenced().await?;
    println!("A: acquired the lock, fencing token {a_token}");

    // 2. A pauses; meanwhile its session is cut (here: from a third connection), and the
    //    server frees the lock. A does not know yet.
    let a_pid = holder_pid(pool, key).await?;
    let mut admin = PgConnection::connect(url).await?;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(a_pid)
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    println!("A: pauses; its session (backend pid {a_pid}) is terminated");

    // 3. B acquires the key: a newer token.
    let mut b = AdvisoryLock::new(pool, key).await?;
    let b_token = b.lock_fenced().await?;
    println!("B: acquired the lock, fencing token {b_token}");

    // 4. B writes, checking its token in the same transaction.
    write(pool, table, key, "B", "sent", b_token).await?;
    println!("B: wrote status 'sent' with token {b_token}: accepted");
    b.unlock().await?;
    b.close().await?;

    // 5. A wakes and writes with its old token: refused, and its write rolled back.
    match write(pool, table, key, "A", "cancelled", a_token).await {
        Err(stale @ Error::StaleToken { .. }) => {
            println!("A: wakes and writes status 'cancelled' with token {a_token}: refused");
            println!("   {stale}");
        }
        Err(err) => return Err(err),
        Ok(()) => {
            return Err(Error::Database(sqlx::Error::Protocol(
                "A's stale write was accepted".into(),
            )));
        }
    }
    // A's lock learns the loss when it next asks the server.
    match a.is_held().await {
        Err(err @ Error::LockLost { .. }) => println!("A: its lock reports: {err}"),
        other => println!("A: its lock reports: {other:?}"),
    }
    let _ = a.close().await;

    let rows: Vec<(i32, String, Option<String>, Option<i64>)> = sqlx::query_as(AssertSqlSafe(
        format!("SELECT id, status, written_by, token FROM {table} ORDER BY id"),
    ))
    .fetch_all(pool)
    .await?;
    println!("{table} now:");
    for (id, status, by, token) in rows {
        println!(
            "  invoice {id}: {status} (written by {}, token {})",
            by.as_deref().unwrap_or("-"),
            token.map_or("-".to_owned(), |t| t.to_string())
        );
    }
    Ok(())
}

/// A fenced write: the token check and the update in one transaction.
async fn write(
    pool: &PgPool,
    table: &str,
    key: LockKey,
    who: &str,
    status: &str,
    token: FencingToken,
) -> pglock::Result<()> {
    let mut tx = pool.begin().await?;
    fencing::check(&mut tx, key, token).await?;
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {table} SET status = $1, written_by = $2, token = $3 WHERE id = 42"
    )))
    .bind(status)
    .bind(who)
    .bind(token.get())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The backend pid holding `key`, from `pg_locks` and `pglock::inspect`.
async fn holder_pid(pool: &PgPool, key: LockKey) -> pglock::Result<i32> {
    pglock::inspect::locks_on(pool, key)
        .await?
        .into_iter()
        .find(|lock| lock.granted)
        .map(|lock| lock.pid)
        .ok_or(Error::Database(sqlx::Error::RowNotFound))
}

/// The server a URL names, without its password, for messages.
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

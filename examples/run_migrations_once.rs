//! A replica's startup: apply the database migrations exactly once, however many replicas
//! start at the same moment.
//!
//! Run it with `cargo run --example run_migrations_once`, or start several at once:
//!
//! ```text
//! cargo build --example run_migrations_once
//! for i in 1 2 3 4; do target/debug/examples/run_migrations_once & done; wait
//! ```
//!
//! It uses `DATABASE_URL` when set, and the local server
//! (`postgres://postgres@127.0.0.1:5432/postgres`) otherwise, and applies the SQL files in
//! this crate's `migrations/` (pglock's fencing-token table). Every replica takes the
//! exclusive pglock lock on `LockKey::from_name("pglock/migrations")`: the first applies
//! what is pending (`replica <pid>: applied N migration(s)`), the others wait for the lock
//! and then find nothing to do (`replica <pid>: waited, 0 to apply`), and all go on. A
//! replica that starts after the work is done says `replica <pid>: up to date, 0 to apply`.
//!
//! # sqlx's own migration lock
//!
//! With locking on (the default), `Migrator::run` (sqlx-postgres 0.9, `impl Migrate for
//! PgConnection`) does this:
//!
//! 1. It acquires *one* connection from what it is given (a pool connection when given a
//!    `&PgPool`) and does everything below on that session.
//! 2. It asks `SELECT current_database()` and takes a **session-level** advisory lock with
//!    `SELECT pg_advisory_lock($1)`, the key being the bigint
//!    `0x3d32ad9e * crc32(database name)` (CRC-32/ISO-HDLC of the name's bytes). The wait
//!    has no bound.
//! 3. It creates `_sqlx_migrations` if missing, stops with `MigrateError::Dirty` if a
//!    migration is recorded as failed, checks the applied migrations against the files
//!    (missing versions, changed checksums), and applies each pending one in its own
//!    transaction together with its bookkeeping row (unless the file opts out of one).
//! 4. It runs `SELECT pg_advisory_unlock($1)` with the same key on the same session.
//!
//! So sqlx already serialises the migrators *of one database*. This example turns that off
//! (`set_locking(false)`) because the pglock lock around the whole step replaces it: with
//! both on, each replica would take sqlx's lock inside ours, where it is always free. (If
//! something else migrates the same database with sqlx's lock alone, the `sqlx migrate
//! run` CLI say, leave locking on: the two locks then nest, and still exclude each other.)
//! An explicit lock earns its place:
//!
//! - **A key you name and control.** sqlx's key is derived from the database name, shared
//!   by every migrator of that database and unknown to anything else. `pglock/migrations`
//!   is yours: the same lock can cover other startup work that must not run twice (seed
//!   data, a schema check, a cache warm-up), before or after the migrations.
//! - **A timed wait.** sqlx waits as long as it takes. Here a replica gives up after
//!   [`WAIT_LIMIT`] with a clear error instead of hanging behind a stuck migration.
//! - **Nothing leaks into the pool.** When a step fails (a dirty or changed migration, a
//!   failing statement), sqlx returns through `?` before its unlock: the lock stays with
//!   that session and the pool connection goes back to the pool still holding it, so other
//!   processes' migrators wait until that connection happens to close. pglock's scoped
//!   helpers release the lock however the work ends (errors and panics too).
//! - **Go services can take the same key.** `LockKey::from_name` is Go pglock's `Hash`,
//!   so a Go service locking `pglock.Hash("pglock/migrations")` waits for the same lock.
//! - **It works with the in-memory lock in tests.** [`migrate_once`] takes any
//!   [`LockProvider`]: production passes the `PgPool`; a test can pass
//!   `pglock::memory::MemoryLocks` (which queues like PostgreSQL) to run several "replicas"
//!   in one process, or hold the key itself to check that startup waits for it.
//!
//! In an application, embed the migrations with `sqlx::migrate!()` instead of reading
//! them at run time, and turn sqlx's locking off on that migrator the same way. (pglock's
//! `migrate` feature applies these same files itself, `pglock::migrate(&pool)`, recording
//! them in `_pglock_migrations`; the SQL is idempotent, so both routes can meet one
//! database.)

use std::error::Error;
use std::path::Path;
use std::time::Duration;

use pglock::{LockKey, LockProvider};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long a replica waits for another one's migrations before it gives up.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("run_migrations_once failed: {err}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_SERVER.to_owned());
    let pool = match PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(err) => {
            eprintln!(
                "no PostgreSQL server answers at {}: {err}. Set DATABASE_URL to one, e.g. \
                 DATABASE_URL=postgres://user:password@host:5432/db cargo run --example \
                 run_migrations_once",
                redact(&url)
            );
            std::process::exit(2);
        }
    };

    let mut migrator = Migrator::new(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations"
    )))
    .await?;
    // pglock's lock below replaces the one sqlx would take itself (see the module docs).
    migrator.set_locking(false);

    let startup = migrate_once(&pool, &pool, &migrator).await?;
    let pid = std::process::id();
    match startup {
        Startup { applied: 0, waited } => {
            let how = if waited { "waited" } else { "up to date" };
            println!("replica {pid}: {how}, 0 to apply");
        }
        Startup { applied, .. } => println!("replica {pid}: applied {applied} migration(s)"),
    }

    // ... the rest of the replica's startup: every replica gets here, after the schema
    // is in place ...
    pool.close().await;
    Ok(())
}

/// What one replica's migration step did.
struct Startup {
    /// Whether another replica held the lock when this one asked for it.
    waited: bool,
    /// How many migrations this replica applied.
    applied: usize,
}

/// Applies the pending migrations of `migrator` to `pool` while holding the exclusive lock
/// on `pglock/migrations` from `locks`, waiting at most [`WAIT_LIMIT`] for it.
async fn migrate_once(
    locks: &dyn LockProvider,
    pool: &PgPool,
    migrator: &Migrator,
) -> Result<Startup, BoxError> {
    let key = LockKey::from_name("pglock/migrations");

    // Free now: this replica is first (or alone), and does the work.
    if let Some(applied) =
        pglock::try_with_lock(locks, key, || apply_pending(pool, migrator)).await?
    {
        return Ok(Startup {
            waited: false,
            applied: applied?,
        });
    }
    // Another replica is migrating: wait for it, then see what is left (normally nothing).
    match pglock::with_lock_for(locks, key, WAIT_LIMIT, || apply_pending(pool, migrator)).await? {
        Some(applied) => Ok(Startup {
            waited: true,
            applied: applied?,
        }),
        None => Err(format!(
            "another replica has held the lock on \"pglock/migrations\" for over {WAIT_LIMIT:?}; \
             is its migration stuck? (pg_locks shows the holder)"
        )
        .into()),
    }
}

/// Runs the migrator, and returns how many migrations it applied.
async fn apply_pending(pool: &PgPool, migrator: &Migrator) -> Result<usize, BoxError> {
    let before = applied_versions(pool).await?;
    migrator.run(pool).await?;
    let after = applied_versions(pool).await?;
    Ok(after.saturating_sub(before))
}

/// How many migrations `_sqlx_migrations` records (0 before the table exists).
async fn applied_versions(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(pool)
        .await?;
    Ok(usize::try_from(count).unwrap_or(0))
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

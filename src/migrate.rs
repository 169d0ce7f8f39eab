//! The schema pglock's optional features need, applied with sqlx's migrator.
//!
//! Today that is the fencing-token table (see [`fencing`](crate::fencing)). The SQL lives
//! in `migrations/` at the crate's top level and is embedded here. pglock records what it
//! applied in its own table, `_pglock_migrations`, so its versions never mix with your
//! application's `_sqlx_migrations`, and your migrator never reports them as missing.
//! Concurrent callers are safe: sqlx's migrator takes an advisory lock while it runs.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
//! pglock::migrate(&pool).await?;
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;

use sqlx::PgPool;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::Result;

/// The table where pglock records the migrations it applied.
pub const MIGRATIONS_TABLE: &str = "_pglock_migrations";

/// pglock's migrations, embedded: `(version, description, sql)`.
const MIGRATIONS: [(i64, &str, &str); 2] = [
    (
        20261126000001,
        "pglock fencing tokens",
        include_str!("../migrations/20261126000001_pglock_fencing_tokens.sql"),
    ),
    (
        20261126000002,
        "pglock fencing tokens comment",
        include_str!("../migrations/20261126000002_pglock_fencing_tokens_comment.sql"),
    ),
];

/// A sqlx [`Migrator`] for pglock's schema, recording into [`MIGRATIONS_TABLE`].
pub fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(sql),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// Applies pglock's migrations to the database behind `pool` (those not yet applied).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    migrator()
        .run(pool)
        .await
        .map_err(|err| crate::Error::Database(sqlx::Error::Migrate(Box::new(err))))
}

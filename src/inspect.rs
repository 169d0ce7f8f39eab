//! Who holds what: advisory locks as the server sees them, for operators and dashboards.
//!
//! Reads `pg_locks` joined with `pg_stat_activity` for the current database: every
//! advisory lock held or awaited, by which backend, in which mode, since when, from which
//! application and client. Keys are decoded back into [`LockKey`]s in both key spaces
//! (`pg_locks` shows them as unsigned `oid` halves; see [`LockKey::pg_locks_ids`]).
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
//! let key = pglock::LockKey::from_name("nightly-report");
//! for lock in pglock::inspect::locks_on(&pool, key).await? {
//!     println!(
//!         "pid {} {} {} (application {:?}, waiting {:?})",
//!         lock.pid,
//!         lock.mode,
//!         if lock.granted { "holds" } else { "waits" },
//!         lock.application_name,
//!         lock.waiting_for,
//!     );
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgArguments, PgRow, Postgres};

use crate::sql::{self, add};
use crate::{LockKey, LockMode, Result};

/// One advisory lock held or awaited by one backend.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock's key.
    pub key: LockKey,
    /// The backend (server process) that holds or waits: `pg_backend_pid()` of its session.
    pub pid: i32,
    /// Exclusive or shared.
    pub mode: LockMode,
    /// `true` if held, `false` if waited for.
    pub granted: bool,
    /// How long it has waited, for a lock not granted (PostgreSQL 14+).
    pub waiting_for: Option<Duration>,
    /// When the wait started, as the server's timestamp text (PostgreSQL 14+).
    pub wait_start: Option<String>,
    /// The session's `application_name` (pglock's own sessions show `pglock` by default).
    pub application_name: Option<String>,
    /// The client's address, if it connected over TCP.
    pub client_addr: Option<String>,
    /// How long the session's current (or last) query has been running.
    pub query_age: Option<Duration>,
    /// The session's state: `active`, `idle`, ...
    pub state: Option<String>,
}

impl LockInfo {
    fn from_row(row: &PgRow) -> Result<Option<LockInfo>> {
        let ids = (
            row.try_get::<i64, _>("classid")?,
            row.try_get::<i64, _>("objid")?,
            row.try_get::<i16, _>("objsubid")?,
        );
        let (Ok(classid), Ok(objid)) = (u32::try_from(ids.0), u32::try_from(ids.1)) else {
            return Ok(None);
        };
        let Some(key) = LockKey::from_pg_locks_ids(classid, objid, ids.2) else {
            return Ok(None);
        };
        let mode = match row.try_get::<String, _>("mode")?.as_str() {
            "ExclusiveLock" => LockMode::Exclusive,
            _ => LockMode::Shared,
        };
        let seconds = |column: &str| -> Result<Option<Duration>> {
            let secs: Option<f64> = row.try_get(column)?;
            Ok(secs.and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok()))
        };
        Ok(Some(LockInfo {
            key,
            pid: row.try_get("pid")?,
            mode,
            granted: row.try_get("granted")?,
            waiting_for: seconds("waiting_secs")?,
            wait_start: row.try_get("wait_start")?,
            application_name: row.try_get("application_name")?,
            client_addr: row.try_get("client_addr")?,
            query_age: seconds("query_secs")?,
            state: row.try_get("state")?,
        }))
    }
}

/// Every advisory lock held or awaited in the current database, holders first.
pub async fn locks<'e, E>(executor: E) -> Result<Vec<LockInfo>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    query(executor, None).await
}

/// The holders and waiters of one key, holders first, then waiters in arrival order.
pub async fn locks_on<'e, E>(executor: E, key: impl Into<LockKey>) -> Result<Vec<LockInfo>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    query(executor, Some(key.into())).await
}

async fn query<'e, E>(executor: E, key: Option<LockKey>) -> Result<Vec<LockInfo>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let ids = key.map(LockKey::pg_locks_ids);
    let mut args = PgArguments::default();
    add(&mut args, ids.map(|(classid, _, _)| i64::from(classid)))?;
    add(&mut args, ids.map(|(_, objid, _)| i64::from(objid)))?;
    add(&mut args, ids.map(|(_, _, objsubid)| objsubid))?;
    let rows = sqlx::query_with(sql::ADVISORY_LOCKS, args)
        .fetch_all(executor)
        .await?;
    let mut locks = Vec::with_capacity(rows.len());
    for row in &rows {
        locks.extend(LockInfo::from_row(row)?);
    }
    Ok(locks)
}

//! Transaction-scoped advisory locks over a caller's transaction.
//!
//! `pg_advisory_xact_lock` and its family take a lock that belongs to the *transaction*:
//! there is no unlock; commit or rollback releases it. That makes these the locks to use
//! where a session is not yours to keep, above all **behind PgBouncer in transaction
//! pooling mode**: there a client's statements may run on a different server session
//! after each transaction, so a session lock ([`AdvisoryLock`](crate::AdvisoryLock))
//! would stay on a server session you no longer have, while a transaction lock lives and
//! dies with the one transaction PgBouncer keeps on a single server session.
//!
//! Each acquisition runs inside a savepoint, so that its failure (a timeout, a deadlock,
//! a full lock table) rolls back to the savepoint and leaves the caller's transaction
//! usable; the session's `lock_timeout` and `statement_timeout` read the same afterwards.
//! That costs two short statements around the acquisition. The statements are not kept
//! prepared on the server session: behind a transaction-pooling proxy the next
//! transaction may run on another server session, which would not know them.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
//! let key = pglock::LockKey::from_name("invoice-42");
//! let mut tx = pool.begin().await?;
//! if pglock::xact::try_lock_for(&mut tx, key, std::time::Duration::from_secs(1)).await? {
//!     // ... work under the lock, in this transaction ...
//! }
//! tx.commit().await?; // releases the lock
//! # Ok(())
//! # }
//! ```
//!
//! On a hot standby (a server in recovery) every acquisition returns
//! [`Error::StandbyServer`] and takes nothing: advisory locks granted there are local to
//! the standby and exclude no session on the primary. The check is part of the
//! acquisition's own statement, and the transaction stays usable.
//!
//! # Errors
//!
//! Every acquisition returns, and leaves the caller's transaction usable (its savepoint is
//! rolled back):
//!
//! - [`Error::StandbyServer`]: the server is a hot standby; nothing was taken.
//! - [`Error::Deadlock`]: PostgreSQL broke a deadlock by failing this wait (not for the
//!   `try_` functions, which never wait).
//! - [`Error::TooManyLocks`]: the server's lock table is full.
//!
//! and [`Error::Database`] for any other failure: the transaction was already aborted,
//! the connection is gone, a savepoint statement failed. A timed wait that runs out is
//! `Ok(false)`, not an error.
//!
//! # Cancel safety
//!
//! Cancelling one of these futures mid-wait leaves the statement running on the
//! transaction's session (sqlx cannot cancel it): the wait may still be granted, and the
//! level is then the transaction's until it ends; the savepoint may be left open. Rolling
//! back or dropping the transaction ends both (it first waits for the statement). Give up
//! on waits with [`try_lock_for`] instead.

use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnection, Postgres};
use sqlx::{Executor, Transaction};

use crate::error::{self, sqlstate};
use crate::sql::{self, KeyedSql, add, key_args};
use crate::{Error, LockKey, LockMode, Result};

/// Waits until the exclusive level on `key` is granted to `tx`; held until it ends.
///
/// # Errors
///
/// See [Errors](self#errors): [`Error::StandbyServer`], [`Error::Deadlock`],
/// [`Error::TooManyLocks`], [`Error::Database`]; after all but the last the transaction
/// stays usable.
///
/// # Cancel safety
///
/// The wait runs on if the future is dropped, and may still be granted to the
/// transaction: see [Cancel safety](self#cancel-safety).
pub async fn lock(tx: &mut Transaction<'_, Postgres>, key: impl Into<LockKey>) -> Result<()> {
    blocking(tx.as_mut(), key.into(), sql::XACT_LOCK).await
}

/// Waits until the shared level on `key` is granted to `tx`; held until it ends.
///
/// # Errors
///
/// See [Errors](self#errors): [`Error::StandbyServer`], [`Error::Deadlock`],
/// [`Error::TooManyLocks`], [`Error::Database`]; after all but the last the transaction
/// stays usable.
///
/// # Cancel safety
///
/// The wait runs on if the future is dropped, and may still be granted to the
/// transaction: see [Cancel safety](self#cancel-safety).
pub async fn lock_shared(
    tx: &mut Transaction<'_, Postgres>,
    key: impl Into<LockKey>,
) -> Result<()> {
    blocking(tx.as_mut(), key.into(), sql::XACT_LOCK_SHARED).await
}

/// Takes the exclusive level on `key` for `tx` if it is free now.
///
/// # Errors
///
/// See [Errors](self#errors): [`Error::StandbyServer`], [`Error::TooManyLocks`],
/// [`Error::Database`]; after all but the last the transaction stays usable.
/// `Ok(false)` if the key is taken.
///
/// # Cancel safety
///
/// As [`lock`], but the try does not wait: a grant the dropped future did not see
/// belongs to the transaction until it ends ([Cancel safety](self#cancel-safety)).
pub async fn try_lock(tx: &mut Transaction<'_, Postgres>, key: impl Into<LockKey>) -> Result<bool> {
    trying(tx.as_mut(), key.into(), sql::TRY_XACT_LOCK).await
}

/// Takes the shared level on `key` for `tx` if no one holds it exclusively now.
///
/// # Errors
///
/// See [Errors](self#errors): [`Error::StandbyServer`], [`Error::TooManyLocks`],
/// [`Error::Database`]; after all but the last the transaction stays usable.
/// `Ok(false)` if the key is taken.
///
/// # Cancel safety
///
/// As [`lock`], but the try does not wait: a grant the dropped future did not see
/// belongs to the transaction until it ends ([Cancel safety](self#cancel-safety)).
pub async fn try_lock_shared(
    tx: &mut Transaction<'_, Postgres>,
    key: impl Into<LockKey>,
) -> Result<bool> {
    trying(tx.as_mut(), key.into(), sql::TRY_XACT_LOCK_SHARED).await
}

/// Waits at most `timeout` for the exclusive level on `key`: `Ok(false)` when the time
/// runs out, and the transaction goes on as before. A zero timeout is [`try_lock`].
///
/// # Errors
///
/// See [Errors](self#errors): [`Error::StandbyServer`], [`Error::Deadlock`],
/// [`Error::TooManyLocks`], [`Error::Database`]; after all but the last the transaction
/// stays usable. Running out of time is `Ok(false)`.
///
/// # Cancel safety
///
/// As [`lock`]: the wait runs on (up to `timeout`, kept by the server) if the future is
/// dropped; see [Cancel safety](self#cancel-safety).
pub async fn try_lock_for(
    tx: &mut Transaction<'_, Postgres>,
    key: impl Into<LockKey>,
    timeout: Duration,
) -> Result<bool> {
    timed(tx.as_mut(), key.into(), LockMode::Exclusive, timeout).await
}

/// Waits at most `timeout` for the shared level on `key`: `Ok(false)` when the time runs
/// out. A zero timeout is [`try_lock_shared`].
///
/// # Errors
///
/// See [Errors](self#errors): [`Error::StandbyServer`], [`Error::Deadlock`],
/// [`Error::TooManyLocks`], [`Error::Database`]; after all but the last the transaction
/// stays usable. Running out of time is `Ok(false)`.
///
/// # Cancel safety
///
/// As [`lock`]: the wait runs on (up to `timeout`, kept by the server) if the future is
/// dropped; see [Cancel safety](self#cancel-safety).
pub async fn try_lock_shared_for(
    tx: &mut Transaction<'_, Postgres>,
    key: impl Into<LockKey>,
    timeout: Duration,
) -> Result<bool> {
    timed(tx.as_mut(), key.into(), LockMode::Shared, timeout).await
}

async fn blocking(conn: &mut PgConnection, key: LockKey, sql: KeyedSql) -> Result<()> {
    fenced(conn, async |conn| {
        let granted: Option<bool> = sqlx::query_scalar_with(sql.for_key(key), key_args(key)?)
            .persistent(false)
            .fetch_one(conn)
            .await
            .map_err(|err| error::from_acquisition(err, key))?;
        not_on_standby(granted, key)?;
        Ok(())
    })
    .await
}

async fn trying(conn: &mut PgConnection, key: LockKey, sql: KeyedSql) -> Result<bool> {
    fenced(conn, async |conn| {
        let granted: Option<bool> = sqlx::query_scalar_with(sql.for_key(key), key_args(key)?)
            .persistent(false)
            .fetch_one(conn)
            .await
            .map_err(|err| error::from_acquisition(err, key))?;
        not_on_standby(granted, key)
    })
    .await
}

/// An acquisition's answer: NULL is the statement saying the server is a hot standby and
/// it took nothing there.
fn not_on_standby(answer: Option<bool>, key: LockKey) -> Result<bool> {
    answer.ok_or(Error::StandbyServer { key })
}

async fn timed(
    conn: &mut PgConnection,
    key: LockKey,
    mode: LockMode,
    timeout: Duration,
) -> Result<bool> {
    let (plain_try, timed) = match mode {
        LockMode::Exclusive => (sql::TRY_XACT_LOCK, sql::TRY_XACT_LOCK_FOR),
        LockMode::Shared => (sql::TRY_XACT_LOCK_SHARED, sql::TRY_XACT_LOCK_SHARED_FOR),
    };
    if timeout.is_zero() {
        return trying(conn, key, plain_try).await;
    }
    let millis = sql::lock_timeout_millis(timeout);
    let outcome = fenced(conn, async |conn| {
        // A statement_timeout is armed when a statement starts; lift a shorter one for
        // the wait, as a transaction-local setting the savepoint puts back on failure.
        let statement_timeout: i64 = sqlx::query_scalar(sql::STATEMENT_TIMEOUT_MS)
            .persistent(false)
            .fetch_one(&mut *conn)
            .await?;
        let lift = statement_timeout != 0 && statement_timeout <= millis.saturating_add(1000);
        if lift {
            set_local_statement_timeout(conn, 0).await?;
        }
        let mut args = key_args(key)?;
        add(&mut args, format!("{millis}ms"))?;
        let granted: Option<bool> = sqlx::query_scalar_with(timed.for_key(key), args)
            .persistent(false)
            .fetch_one(&mut *conn)
            .await
            .map_err(|err| error::from_acquisition(err, key))?;
        not_on_standby(granted, key)?;
        if lift {
            set_local_statement_timeout(conn, statement_timeout).await?;
        }
        Ok(())
    })
    .await;
    match outcome {
        Ok(()) => Ok(true),
        // Rolled back to the savepoint: a grant that raced the timeout went with it.
        Err(Error::Database(err))
            if error::sqlstate(&err).as_deref() == Some(sqlstate::LOCK_NOT_AVAILABLE) =>
        {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

async fn set_local_statement_timeout(conn: &mut PgConnection, millis: i64) -> Result<()> {
    let mut args = PgArguments::default();
    add(&mut args, millis.to_string())?;
    sqlx::query_with(sql::SET_LOCAL_STATEMENT_TIMEOUT, args)
        .persistent(false)
        .execute(conn)
        .await?;
    Ok(())
}

/// Runs `acquire` inside a savepoint: kept on success, rolled back on failure, so the
/// caller's transaction survives a failed acquisition.
async fn fenced<T>(
    conn: &mut PgConnection,
    acquire: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    conn.execute(sql::SAVEPOINT).await?;
    match acquire(&mut *conn).await {
        Ok(value) => {
            conn.execute(sql::RELEASE_SAVEPOINT).await?;
            Ok(value)
        }
        Err(err) => {
            conn.execute(sql::ROLLBACK_TO_SAVEPOINT).await?;
            conn.execute(sql::RELEASE_SAVEPOINT).await?;
            Err(err)
        }
    }
}

//! Fencing tokens: a lock that a paused holder cannot misuse.
//!
//! A lock alone cannot protect a resource from a holder that stalled (a GC pause, swap,
//! a cut network) and lost its lock without knowing: when it wakes, it writes as if it
//! still held the lock, while another process already does. A *fencing token* closes that
//! gap. Every exclusive acquisition gets a token larger than any before it for that key,
//! and the resource refuses a write that carries an older token than the newest it knows.
//!
//! The pause scenario, step by step:
//!
//! 1. Worker A acquires `invoice-42` with [`AdvisoryLock::lock_fenced`] and gets token 7.
//! 2. A stalls. Its session dies; the server frees the lock.
//! 3. Worker B acquires the key and gets token 8 (the increment happens in the same
//!    statement as the acquisition, so tokens follow the order of grants).
//! 4. B writes, checking its token inside its transaction with [`check`]: 8 is current.
//! 5. A wakes and writes with token 7: [`check`] fails with [`Error::StaleToken`], and A's
//!    transaction writes nothing.
//!
//! [`check`] takes a share lock on the key's token row inside the caller's transaction,
//! so a new holder's increment waits until that write commits: a write is either checked
//! before the newer token exists, or refused.
//!
//! The tokens live in the table `pglock_fencing_tokens`, created by the migrations in
//! `migrations/` (run them with `pglock::migrate` under the `migrate` feature,
//! or copy them into your own migrations).
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
//! use pglock::{AdvisoryLock, LockKey, fencing};
//!
//! let key = LockKey::from_name("invoice-42");
//! let mut lock = AdvisoryLock::new(&pool, key).await?;
//! let token = lock.lock_fenced().await?;
//!
//! let mut tx = pool.begin().await?;
//! fencing::check(&mut tx, key, token).await?; // Err(StaleToken) if a newer holder exists
//! sqlx::query("UPDATE invoices SET status = 'sent' WHERE id = 42").execute(&mut *tx).await?;
//! tx.commit().await?;
//!
//! lock.unlock().await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;

use sqlx::Transaction;
use sqlx::postgres::Postgres;

use crate::sql::{self, add};
use crate::{AdvisoryLock, Error, LockConnection, LockKey, Result};

/// A number that grows with every exclusive acquisition of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub i64);

impl FencingToken {
    /// The token's value.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Exclusive acquisitions that hand out a fencing token.
impl<C: LockConnection> AdvisoryLock<C> {
    /// [`lock`](Self::lock), and the key's next fencing token, in one round trip.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock) (but a session found gone is not tried again: that call
    /// fails), and:
    ///
    /// - [`Error::Database`] if the statement fails: above all when the token table is
    ///   missing (run `pglock::migrate`, feature `migrate`, or the migrations
    ///   in `migrations/`), then nothing is taken. A level granted before a failure is found
    ///   in `pg_locks` and released.
    /// - [`Error::LockLost`] if it fails while the lock held exclusive levels already:
    ///   `pg_locks` cannot tell whether one more was taken, so the session is ended and
    ///   its levels are lost.
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock). A token issued to a cut-off acquisition is used up:
    /// tokens grow, but may skip numbers.
    pub async fn lock_fenced(&mut self) -> Result<FencingToken> {
        self.acquire_exclusive_returning(sql::LOCK_FENCED, self.key().to_string(), true)
            .await?
            .map(FencingToken)
            .ok_or(Error::Database(sqlx::Error::RowNotFound))
    }

    /// [`try_lock`](Self::try_lock): the next fencing token if the key was free, or
    /// `None` (and no token is used up).
    ///
    /// # Errors
    ///
    /// As [`lock_fenced`](Self::lock_fenced), with [`try_lock`](Self::try_lock)'s in
    /// place of `lock`'s.
    ///
    /// # Cancel safety
    ///
    /// As [`lock_fenced`](Self::lock_fenced).
    pub async fn try_lock_fenced(&mut self) -> Result<Option<FencingToken>> {
        let token = self
            .acquire_exclusive_returning(sql::TRY_LOCK_FENCED, self.key().to_string(), false)
            .await?;
        Ok(token.map(FencingToken))
    }
}

/// The fenced-write check, inside the transaction that writes to the protected resource:
/// `Ok(())` if `token` is still the newest for `key`, else [`Error::StaleToken`].
///
/// It share-locks the token row until the transaction ends, so no newer token can be
/// issued before this write commits.
///
/// # Errors
///
/// [`Error::StaleToken`] if a newer token was issued for `key` (or none was: `current`
/// is then 0); [`Error::Database`] if the statement fails (the token table is missing,
/// the transaction is aborted, the connection is gone).
///
/// # Cancel safety
///
/// Dropping the future leaves its statement to the transaction's connection, as sqlx
/// does with any dropped query; roll the transaction back (or drop it) to end it.
pub async fn check(
    tx: &mut Transaction<'_, Postgres>,
    key: impl Into<LockKey>,
    token: FencingToken,
) -> Result<()> {
    let key = key.into();
    let mut args = sqlx::postgres::PgArguments::default();
    add(&mut args, key.to_string())?;
    let current: Option<i64> = sqlx::query_scalar_with(sql::CURRENT_TOKEN, args)
        .fetch_optional(&mut **tx)
        .await?;
    match current {
        Some(current) if current == token.0 => Ok(()),
        current => Err(Error::StaleToken {
            key,
            token: token.0,
            current: current.unwrap_or(0),
        }),
    }
}

//! [`AdvisoryLockGuard`]: one held level that cannot be forgotten.
//!
//! The guard borrows its lock, so the lock cannot be used (or dropped) while a guard
//! lives. Release it with [`AdvisoryLockGuard::release`] to hear about errors. If it is
//! dropped instead, `Drop` cannot wait for the server, so the level is *owed*: the lock
//! releases it, in one round trip, before its next operation or in `close`; and if the
//! lock is dropped first, it still counts the level as held, so an owned connection is
//! closed rather than returned to its pool (the server then frees the level). A dropped
//! guard never leaks a level; until the lock's next call, the key stays held.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;

use crate::{AdvisoryLock, LockConnection, LockKey, LockMode, Result};

/// One level of an [`AdvisoryLock`], held until [`release`](Self::release) or drop.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
/// let mut lock = pglock::AdvisoryLock::new(&pool, pglock::LockKey::from_name("reindex")).await?;
/// if let Some(guard) = lock.try_lock_guard().await? {
///     // ... the work ...
///     guard.release().await?; // or just let it drop
/// }
/// lock.close().await
/// # }
/// ```
#[must_use = "dropping the guard at once gives the level back before the lock's next call"]
pub struct AdvisoryLockGuard<'a, C: LockConnection = PoolConnection<Postgres>> {
    lock: &'a mut AdvisoryLock<C>,
    mode: LockMode,
    /// Set by `release`, so that `Drop` owes nothing.
    released: bool,
}

impl<C: LockConnection> AdvisoryLockGuard<'_, C> {
    /// The mode of the level this guard holds.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// The key of the lock.
    pub fn key(&self) -> LockKey {
        self.lock.key()
    }

    /// Releases the level now and reports how that went.
    ///
    /// # Errors
    ///
    /// As [`AdvisoryLock::unlock`] (or [`unlock_shared`](AdvisoryLock::unlock_shared)):
    /// [`Error::LockLost`](crate::Error::LockLost) if the level was lost meanwhile (it is
    /// then accounted for), or the [session's errors](AdvisoryLock#errors).
    ///
    /// # Cancel safety
    ///
    /// Dropped before its first poll, it is a dropped guard: the release is owed. Cut off
    /// while its statement runs, it ends an owned session as
    /// [`unlock`](AdvisoryLock::unlock) does.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        match self.mode {
            LockMode::Exclusive => self.lock.unlock().await,
            LockMode::Shared => self.lock.unlock_shared().await,
        }
    }
}

impl<C: LockConnection> Drop for AdvisoryLockGuard<'_, C> {
    fn drop(&mut self) {
        if !self.released {
            self.lock.defer_release(self.mode);
        }
    }
}

impl<C: LockConnection> std::fmt::Debug for AdvisoryLockGuard<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvisoryLockGuard")
            .field("key", &self.lock.key())
            .field("mode", &self.mode)
            .finish()
    }
}

/// Acquisitions that hand back a guard.
///
/// Each returns the errors of the acquisition it wraps ([`lock`](AdvisoryLock::lock),
/// [`try_lock`](AdvisoryLock::try_lock), ...; see [Errors](AdvisoryLock#errors)) and is
/// as cancel safe: no guard exists until the future resolves, and a dropped acquisition
/// costs what it costs without one ([Cancel safety](AdvisoryLock#cancel-safety)).
impl<C: LockConnection> AdvisoryLock<C> {
    /// [`lock`](Self::lock), returning a guard for the level.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock): no guard exists until the future resolves.
    pub async fn lock_guard(&mut self) -> Result<AdvisoryLockGuard<'_, C>> {
        self.lock().await?;
        Ok(self.guard(LockMode::Exclusive))
    }

    /// [`lock_shared`](Self::lock_shared), returning a guard for the level.
    ///
    /// # Errors
    ///
    /// As [`lock_shared`](Self::lock_shared).
    ///
    /// # Cancel safety
    ///
    /// As [`lock_shared`](Self::lock_shared): no guard exists until the future resolves.
    pub async fn lock_shared_guard(&mut self) -> Result<AdvisoryLockGuard<'_, C>> {
        self.lock_shared().await?;
        Ok(self.guard(LockMode::Shared))
    }

    /// [`try_lock`](Self::try_lock): a guard, or `None` if another session holds the key.
    ///
    /// # Errors
    ///
    /// As [`try_lock`](Self::try_lock).
    ///
    /// # Cancel safety
    ///
    /// As [`try_lock`](Self::try_lock): no guard exists until the future resolves.
    pub async fn try_lock_guard(&mut self) -> Result<Option<AdvisoryLockGuard<'_, C>>> {
        let acquired = self.try_lock().await?;
        Ok(acquired.then(|| self.guard(LockMode::Exclusive)))
    }

    /// [`try_lock_shared`](Self::try_lock_shared): a guard, or `None`.
    ///
    /// # Errors
    ///
    /// As [`try_lock_shared`](Self::try_lock_shared).
    ///
    /// # Cancel safety
    ///
    /// As [`try_lock_shared`](Self::try_lock_shared): no guard exists until the future resolves.
    pub async fn try_lock_shared_guard(&mut self) -> Result<Option<AdvisoryLockGuard<'_, C>>> {
        let acquired = self.try_lock_shared().await?;
        Ok(acquired.then(|| self.guard(LockMode::Shared)))
    }

    /// [`try_lock_for`](Self::try_lock_for): a guard, or `None` when `timeout` runs out.
    ///
    /// # Errors
    ///
    /// As [`try_lock_for`](Self::try_lock_for).
    ///
    /// # Cancel safety
    ///
    /// As [`try_lock_for`](Self::try_lock_for): no guard exists until the future resolves.
    pub async fn try_lock_guard_for(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<AdvisoryLockGuard<'_, C>>> {
        let acquired = self.try_lock_for(timeout).await?;
        Ok(acquired.then(|| self.guard(LockMode::Exclusive)))
    }

    /// [`try_lock_shared_for`](Self::try_lock_shared_for): a guard, or `None`.
    ///
    /// # Errors
    ///
    /// As [`try_lock_shared_for`](Self::try_lock_shared_for).
    ///
    /// # Cancel safety
    ///
    /// As [`try_lock_shared_for`](Self::try_lock_shared_for): no guard exists until the future resolves.
    pub async fn try_lock_shared_guard_for(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<AdvisoryLockGuard<'_, C>>> {
        let acquired = self.try_lock_shared_for(timeout).await?;
        Ok(acquired.then(|| self.guard(LockMode::Shared)))
    }

    fn guard(&mut self, mode: LockMode) -> AdvisoryLockGuard<'_, C> {
        AdvisoryLockGuard {
            lock: self,
            mode,
            released: false,
        }
    }
}

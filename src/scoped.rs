//! Run a future while holding a lock, and release it afterwards, whatever happens.
//!
//! Each helper takes a new lock from a [`LockProvider`] (a `PgPool`, or `MemoryLocks` in
//! tests), acquires it, runs the future, and closes the lock, which releases the level,
//! also when the future returns an error or panics (the panic is then resumed). If the
//! helper's own future is dropped midway, the lock is dropped holding its level, and its
//! owned connection is closed rather than returned to the pool: the server frees the key.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
//! let report = pglock::with_lock(&pool, pglock::LockKey::from_name("monthly-report"), || async {
//!     // ... only one process at a time runs this ...
//!     42
//! })
//! .await?;
//! assert_eq!(report, 42);
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::{DistributedLock, LockKey, LockMode, LockProvider, Result};

/// Runs `f()` while holding the exclusive lock on `key`, waiting for it as long as it takes.
///
/// The lock is closed after `f`'s future completes, which releases the level, also when
/// that future panics (the panic is resumed once the lock is closed).
///
/// # Errors
///
/// The errors of [`LockProvider::new_lock`], of the acquisition
/// ([`DistributedLock::lock`]) and of [`close`](DistributedLock::close): then `f` was
/// not run, or its output is dropped. An error from closing after `f` ran is most likely
/// [`Error::LockLost`](crate::Error::LockLost): the lock was lost while `f` ran, and
/// another process may have held the key meanwhile.
///
/// # Cancel safety
///
/// Dropping the future drops `f`'s future and the lock, which gives up its levels: an
/// [`AdvisoryLock`](crate::AdvisoryLock) holding one closes its owned connection rather
/// than return it to the pool (the server frees the key), a
/// [`ClientLock`](crate::ClientLock) or [`MemoryLock`](crate::memory::MemoryLock)
/// releases it. A dropped acquisition costs what [`DistributedLock`]'s
/// [Cancel safety](DistributedLock#cancel-safety) says.
pub async fn with_lock<P, F, Fut, T>(provider: &P, key: impl Into<LockKey>, f: F) -> Result<T>
where
    P: LockProvider + ?Sized,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let mut lock = provider.new_lock(key.into()).await?;
    lock.lock().await?;
    run_then_close(lock, f).await
}

/// Runs `f()` while holding the shared lock on `key`, waiting for it as long as it takes.
///
/// # Errors
///
/// As [`with_lock`], with [`DistributedLock::lock_shared`].
///
/// # Cancel safety
///
/// As [`with_lock`].
pub async fn with_lock_shared<P, F, Fut, T>(
    provider: &P,
    key: impl Into<LockKey>,
    f: F,
) -> Result<T>
where
    P: LockProvider + ?Sized,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let mut lock = provider.new_lock(key.into()).await?;
    lock.lock_shared().await?;
    run_then_close(lock, f).await
}

/// Runs `f()` if the exclusive lock on `key` is free now: `Ok(None)` if another session
/// holds it (and `f` is not run).
///
/// # Errors
///
/// As [`with_lock`], with [`DistributedLock::try_lock`].
///
/// # Cancel safety
///
/// As [`with_lock`].
pub async fn try_with_lock<P, F, Fut, T>(
    provider: &P,
    key: impl Into<LockKey>,
    f: F,
) -> Result<Option<T>>
where
    P: LockProvider + ?Sized,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    with_lock_within(provider, key.into(), LockMode::Exclusive, Duration::ZERO, f).await
}

/// Runs `f()` once the exclusive lock on `key` is granted within `timeout`: `Ok(None)`
/// if the time runs out first (and `f` is not run).
///
/// # Errors
///
/// As [`with_lock`], with [`DistributedLock::try_lock_for`]; running out of time is
/// `Ok(None)`.
///
/// # Cancel safety
///
/// As [`with_lock`].
pub async fn with_lock_for<P, F, Fut, T>(
    provider: &P,
    key: impl Into<LockKey>,
    timeout: Duration,
    f: F,
) -> Result<Option<T>>
where
    P: LockProvider + ?Sized,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    with_lock_within(provider, key.into(), LockMode::Exclusive, timeout, f).await
}

async fn with_lock_within<P, F, Fut, T>(
    provider: &P,
    key: LockKey,
    mode: LockMode,
    timeout: Duration,
    f: F,
) -> Result<Option<T>>
where
    P: LockProvider + ?Sized,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let mut lock = provider.new_lock(key).await?;
    let acquired = match mode {
        LockMode::Exclusive => lock.try_lock_for(timeout).await?,
        LockMode::Shared => lock.try_lock_shared_for(timeout).await?,
    };
    if !acquired {
        lock.close().await?;
        return Ok(None);
    }
    run_then_close(lock, f).await.map(Some)
}

/// Runs the work, then closes the lock (releasing its level) before reporting the
/// work's outcome, or resuming its panic.
async fn run_then_close<F, Fut, T>(mut lock: Box<dyn DistributedLock>, f: F) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let outcome = CatchUnwind(Box::pin(async move { f().await })).await;
    let closed = lock.close().await;
    match outcome {
        Ok(value) => closed.map(|()| value),
        Err(panic) => resume_unwind(panic),
    }
}

/// Polls a future, turning a panic inside it into an `Err` so the lock can be released
/// before the panic goes on.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::result::Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

//! The contract every lock implements, so application code can depend on a trait object.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{LockKey, Result};

/// A distributed lock on one key, with PostgreSQL advisory-lock semantics.
///
/// Levels stack per lock object (a session): `n` successful acquisitions of a mode need
/// `n` releases of that mode. Shared and exclusive levels are counted apart, and one lock
/// may hold both on its key. The trait is object-safe, so code can take a
/// `Box<dyn DistributedLock>` and tests can hand it another implementation.
///
/// # When a lock is lost
///
/// A lock's levels can be lost through no fault of the caller: its session ends (it is
/// terminated, the network is cut, the server restarts or fails over). A loss takes every
/// level the lock held at that moment, in both modes. From then on, until each lost level
/// is accounted for:
///
/// - each [`unlock`](Self::unlock) / [`unlock_shared`](Self::unlock_shared) that pairs
///   with a lost level returns [`Error::LockLost`](crate::Error::LockLost), never
///   [`Error::NotHeld`](crate::Error::NotHeld), and accounts for that level; `NotHeld`
///   stays for an unlock that pairs with no acquisition at all;
/// - [`is_held`](Self::is_held), [`lost`](Self::lost) and [`close`](Self::close) return
///   `LockLost` while any lost level is unaccounted for (`close` still closes the lock,
///   and accounts for all of them);
/// - a new acquisition works (on a fresh session where the lock can open one). Levels are
///   a stack per mode: unlocks pair with the newest levels first, so the levels taken
///   after the loss are released normally, and the lost ones are reported after them.
///
/// Guards, the `with_lock` helpers and fenced acquisitions follow the same rules (a
/// dropped guard accounts for its level silently: nobody is there to tell).
///
/// ```no_run
/// use pglock::{AdvisoryLock, DistributedLock};
///
/// async fn run_job(lock: &mut dyn DistributedLock) -> pglock::Result<()> {
///     if lock.try_lock().await? {
///         // ... the work only one process may do ...
///         lock.unlock().await?;
///     }
///     Ok(())
/// }
///
/// # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
/// let mut lock: Box<dyn DistributedLock> = Box::new(AdvisoryLock::new(&pool, 42).await?);
/// run_job(lock.as_mut()).await?;
/// lock.close().await
/// # }
/// ```
#[async_trait]
pub trait DistributedLock: Send {
    /// The key this lock is for.
    fn key(&self) -> LockKey;

    /// Waits until the exclusive level is granted, then holds one more level of it.
    async fn lock(&mut self) -> Result<()>;

    /// Waits until the shared level is granted, then holds one more level of it.
    async fn lock_shared(&mut self) -> Result<()>;

    /// Takes one exclusive level if that is possible at once; `Ok(false)` if another
    /// session holds the key, or (as PostgreSQL decides a request that may not wait) a
    /// conflicting request of another session waits for it.
    async fn try_lock(&mut self) -> Result<bool>;

    /// Takes one shared level if that is possible at once; `Ok(false)` if another
    /// session holds the key exclusively, or an exclusive request of another session waits
    /// for it.
    async fn try_lock_shared(&mut self) -> Result<bool>;

    /// Waits at most `timeout` for one exclusive level: `Ok(true)` once granted,
    /// `Ok(false)` when the time is up. A zero timeout is [`try_lock`](Self::try_lock).
    async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool>;

    /// Waits at most `timeout` for one shared level: `Ok(true)` once granted, `Ok(false)`
    /// when the time is up. A zero timeout is [`try_lock_shared`](Self::try_lock_shared).
    async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool>;

    /// Releases one exclusive level; [`Error::NotHeld`](crate::Error::NotHeld) if none is
    /// held, and then nothing changes.
    async fn unlock(&mut self) -> Result<()>;

    /// Releases one shared level; [`Error::NotHeld`](crate::Error::NotHeld) if none is
    /// held, and then nothing changes.
    async fn unlock_shared(&mut self) -> Result<()>;

    /// Releases every level held and ends the lock's use of its session. Afterwards every
    /// operation returns [`Error::Closed`](crate::Error::Closed); closing again is `Ok(())`.
    async fn close(&mut self) -> Result<()>;

    /// Whether this lock's session holds the key in any mode, as the lock service
    /// (for PostgreSQL: `pg_locks`) says.
    async fn is_held(&mut self) -> Result<bool>;

    /// Resolves when the levels this lock holds are lost, with the reason
    /// ([`Error::LockLost`](crate::Error::LockLost)); race it against the work the lock
    /// protects. With nothing held it resolves at once with
    /// [`Error::NotHeld`](crate::Error::NotHeld), on a closed lock with
    /// [`Error::Closed`](crate::Error::Closed). See
    /// [`AdvisoryLock::lost`](crate::AdvisoryLock::lost) for how PostgreSQL locks detect
    /// a loss; an in-memory lock is lost only by
    /// [`MemoryLocks::lose`](crate::memory::MemoryLocks::lose).
    async fn lost(&mut self) -> crate::Error;
}

/// Makes locks: what application code holds (as `Arc<dyn LockProvider>`) so that its
/// tests can hand it [`MemoryLocks`](crate::memory::MemoryLocks) instead of a database.
///
/// Implemented for [`sqlx::PgPool`] (each lock takes its own connection, as
/// [`AdvisoryLock::new`](crate::AdvisoryLock::new)) and for
/// [`MemoryLocks`](crate::memory::MemoryLocks).
///
/// ```
/// use std::sync::Arc;
/// use pglock::{LockKey, LockProvider, memory::MemoryLocks};
///
/// async fn rebuild_index(locks: &dyn LockProvider) -> pglock::Result<bool> {
///     let mut lock = locks.new_lock(LockKey::from_name("rebuild-index")).await?;
///     let ran = lock.try_lock().await?;
///     if ran {
///         // ... rebuild ...
///         lock.unlock().await?;
///     }
///     lock.close().await?;
///     Ok(ran)
/// }
///
/// # futures_lite::future::block_on(async {
/// let locks: Arc<dyn LockProvider> = Arc::new(MemoryLocks::new());
/// assert!(rebuild_index(locks.as_ref()).await?);
/// # Ok::<(), pglock::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait LockProvider: Send + Sync {
    /// A new lock on `key`, with a session of its own.
    async fn new_lock(&self, key: LockKey) -> Result<Box<dyn DistributedLock>>;
}

/// Which of PostgreSQL's two advisory lock modes an operation concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// `pg_advisory_lock`: one session at a time.
    Exclusive,
    /// `pg_advisory_lock_shared`: any number of sessions together, but no exclusive holder.
    Shared,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        })
    }
}

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
/// # Errors
///
/// Every implementation returns these [`Error`](crate::Error) variants, where each
/// method's section says:
///
/// - [`Error::Closed`](crate::Error::Closed): any operation after [`close`](Self::close)
///   (closing again is `Ok(())`).
/// - [`Error::NotHeld`](crate::Error::NotHeld): an unlock that pairs with no acquisition;
///   nothing changed.
/// - [`Error::LockLost`](crate::Error::LockLost): levels were lost, under the rules above.
/// - [`Error::Deadlock`](crate::Error::Deadlock): a wait that could never end was failed
///   (by PostgreSQL's deadlock check, or by [`MemoryLocks`](crate::memory::MemoryLocks)'
///   model of it); nothing was taken.
///
/// A wait that runs out of time is not an error: the timed and `try_` acquisitions return
/// `Ok(false)`. Locks on PostgreSQL add the errors of their session (it is gone, silent,
/// behind a pooling proxy, on a standby, out of lock-table space): see
/// [`AdvisoryLock`'s](crate::AdvisoryLock#errors) and
/// [`ClientLock`'s](crate::ClientLock#errors) lists. A
/// [`MemoryLock`](crate::memory::MemoryLock) has no session and adds none.
///
/// # Cancel safety
///
/// Every method's future may be dropped at any point. The lock's record stays true: a
/// grant that races the drop is given back, so no level is left held on the lock's
/// behalf that it does not count (the one exception, a borrowed connection, is below),
/// and levels held before the call stay counted, still held or lost and reported under
/// the rules above. What a dropped call costs besides depends on the implementation:
///
/// - an [`AdvisoryLock`](crate::AdvisoryLock#cancel-safety) on a connection it owns ends
///   its session when a statement that may change levels is cut off (sqlx cannot cancel
///   a statement), so the levels it held are lost. On a *borrowed* connection it cannot
///   end the session, which may still be granted the key: the lock never uses that
///   session again ([`Error::Interrupted`](crate::Error::Interrupted)), and the
///   connection's owner frees the key by closing it;
/// - a [`ClientLock`](crate::ClientLock#cancel-safety) gives up only the dropped call:
///   its lane's statement runs on and its answer is applied, and a wait on a session of
///   its own ends that session alone;
/// - a [`MemoryLock`](crate::memory::MemoryLock) leaves the wait queue.
#[async_trait]
pub trait DistributedLock: Send {
    /// The key this lock is for.
    fn key(&self) -> LockKey;

    /// Waits until the exclusive level is granted, then holds one more level of it.
    ///
    /// # Errors
    ///
    /// [`Error::Deadlock`](crate::Error::Deadlock) if the wait could never end;
    /// [`Error::LockLost`](crate::Error::LockLost) if the acquisition failed and levels the
    /// lock held were lost on the way (they stay to be accounted for);
    /// [`Error::Closed`](crate::Error::Closed) after [`close`](Self::close); and the
    /// implementation's own ([Errors](DistributedLock#errors)). After an error the lock
    /// holds no new level.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future gives up the wait; a grant that raced the drop is given back.
    /// See [Cancel safety](DistributedLock#cancel-safety) for what else it may cost.
    async fn lock(&mut self) -> Result<()>;

    /// Waits until the shared level is granted, then holds one more level of it.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    async fn lock_shared(&mut self) -> Result<()>;

    /// Takes one exclusive level if that is possible at once; `Ok(false)` if another
    /// session holds the key, or (as PostgreSQL decides a request that may not wait) a
    /// conflicting request of another session waits for it.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock), but for [`Error::Deadlock`](crate::Error::Deadlock): a try
    /// never waits.
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    async fn try_lock(&mut self) -> Result<bool>;

    /// Takes one shared level if that is possible at once; `Ok(false)` if another
    /// session holds the key exclusively, or an exclusive request of another session waits
    /// for it.
    ///
    /// # Errors
    ///
    /// As [`try_lock`](Self::try_lock).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    async fn try_lock_shared(&mut self) -> Result<bool>;

    /// Waits at most `timeout` for one exclusive level: `Ok(true)` once granted,
    /// `Ok(false)` when the time is up. A zero timeout is [`try_lock`](Self::try_lock).
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock); running out of time is `Ok(false)`, not an error.
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool>;

    /// Waits at most `timeout` for one shared level: `Ok(true)` once granted, `Ok(false)`
    /// when the time is up. A zero timeout is [`try_lock_shared`](Self::try_lock_shared).
    ///
    /// # Errors
    ///
    /// As [`try_lock_for`](Self::try_lock_for).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool>;

    /// Releases one exclusive level (the newest: levels are a stack per mode).
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`](crate::Error::NotHeld) if no exclusive level is held, live or
    /// lost, and then nothing changes; [`Error::LockLost`](crate::Error::LockLost) if the
    /// level it pairs with was lost (it is then accounted for);
    /// [`Error::Closed`](crate::Error::Closed) after [`close`](Self::close); and the
    /// implementation's own ([Errors](DistributedLock#errors)).
    ///
    /// # Cancel safety
    ///
    /// A dropped unlock never leaves the lock counting a level the server released, nor
    /// the other way round; see [Cancel safety](DistributedLock#cancel-safety).
    async fn unlock(&mut self) -> Result<()>;

    /// Releases one shared level (the newest: levels are a stack per mode).
    ///
    /// # Errors
    ///
    /// As [`unlock`](Self::unlock), for the shared mode.
    ///
    /// # Cancel safety
    ///
    /// As [`unlock`](Self::unlock).
    async fn unlock_shared(&mut self) -> Result<()>;

    /// Releases every level held and ends the lock's use of its session. Afterwards every
    /// operation returns [`Error::Closed`](crate::Error::Closed); closing again is `Ok(())`.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`](crate::Error::LockLost) if lost levels were unaccounted for (or
    /// were lost as it released them); the lock is closed all the same, and every lost
    /// level is accounted for. Implementations may add their own
    /// ([Errors](DistributedLock#errors)).
    ///
    /// # Cancel safety
    ///
    /// See [Cancel safety](DistributedLock#cancel-safety): no level is left behind, but
    /// the lock may not be closed yet; call `close` again.
    async fn close(&mut self) -> Result<()>;

    /// Whether this lock's session holds the key in any mode, as the lock service
    /// (for PostgreSQL: `pg_locks`) says.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`](crate::Error::LockLost) while a lost level is unaccounted for
    /// (also one this call finds lost); [`Error::Closed`](crate::Error::Closed) after
    /// [`close`](Self::close); and the implementation's own
    /// ([Errors](DistributedLock#errors)).
    ///
    /// # Cancel safety
    ///
    /// It asks and changes nothing: dropping it is safe, under the
    /// [Cancel safety](DistributedLock#cancel-safety) rules all methods share.
    async fn is_held(&mut self) -> Result<bool>;

    /// Resolves when the levels this lock holds are lost, with the reason
    /// ([`Error::LockLost`](crate::Error::LockLost)); race it against the work the lock
    /// protects. See [`AdvisoryLock::lost`](crate::AdvisoryLock::lost) for how PostgreSQL
    /// locks detect a loss; an in-memory lock is lost only by
    /// [`MemoryLocks::lose`](crate::memory::MemoryLocks::lose).
    ///
    /// # Errors
    ///
    /// The future's output is the error itself: `LockLost` when the levels are lost (at
    /// once while a lost level is unaccounted for); with nothing held, at once,
    /// [`Error::NotHeld`](crate::Error::NotHeld); on a closed lock
    /// [`Error::Closed`](crate::Error::Closed). A check that fails without costing levels
    /// resolves with its own error.
    ///
    /// # Cancel safety
    ///
    /// Dropping it (when the work wins the race) is safe at any point, under the
    /// [Cancel safety](DistributedLock#cancel-safety) rules all methods share.
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
    ///
    /// # Errors
    ///
    /// For a [`PgPool`](sqlx::PgPool): [`Error::Database`](crate::Error::Database) if the
    /// pool gives no connection (closed, or its `acquire_timeout` passed), as
    /// [`AdvisoryLock::new`](crate::AdvisoryLock::new). A
    /// [`LockClient`](crate::LockClient) and [`MemoryLocks`](crate::memory::MemoryLocks)
    /// make locks without I/O and never fail.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future takes nothing: no lock exists until it resolves, and a pool
    /// connection it was waiting for stays in the pool.
    async fn new_lock(&self, key: LockKey) -> Result<Box<dyn DistributedLock>>;
}

/// Which of PostgreSQL's two advisory lock modes an operation concerns.
///
/// Levels of the two modes are counted apart, and one lock may hold both on its key: a
/// shared level conflicts only with other sessions' exclusive levels, an exclusive one
/// with every other session's level. Carried by [`Error::NotHeld`](crate::Error::NotHeld)
/// and by the guards and lock sets, which hold one mode.
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

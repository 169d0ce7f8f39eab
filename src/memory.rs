//! [`MemoryLocks`]: an in-process stand-in for PostgreSQL advisory locks, for tests.
//!
//! Application code that takes a `&dyn LockProvider` (or a `Box<dyn DistributedLock>`)
//! can run its unit tests on [`MemoryLocks`] without a database. That is only safe if the
//! stand-in behaves like the real thing, so it follows PostgreSQL 15's lock manager
//! (`lock.c`, `proc.c`) for advisory locks, and the same conformance suite, plus a
//! randomized differential test, runs against both.
//!
//! # What is modelled
//!
//! - **Sessions and levels.** Each [`MemoryLock`] is one session on one key. Levels stack
//!   per session, shared and exclusive counted apart; one session may hold both modes, and
//!   its own levels never conflict with each other.
//! - **Immediate grants** (`LockAcquireExtended`). A request for a mode the session already
//!   holds is granted at once. A request for a new mode is granted at once only if it
//!   conflicts neither with another session's levels nor with any waiting request (the
//!   *wait mask*). So a `try_*` fails while a conflicting request waits, even for a session
//!   that holds the key in the other mode.
//! - **Where a wait queues** (`ProcSleep`). A session that holds no level on the key waits
//!   at the tail. One that does scans the queue for the first waiter that must wait for
//!   it: if it must also wait for that waiter, the request fails at once with
//!   [`Error::Deadlock`]; if nothing granted or queued ahead of that waiter conflicts with
//!   it, it is granted at once; otherwise it waits just ahead of that waiter.
//! - **Grants on release** (`ProcLockWakeup`). Whenever levels or waiters go away, the
//!   queue is walked in order and every waiter is granted that conflicts neither with the
//!   holders nor with a request still waiting ahead of it.
//! - **Timed waits.** A grant that races the timeout counts; a wait that gives up leaves
//!   the queue, which may grant those behind it.
//! - **Lost sessions.** [`MemoryLocks::lose`] does to the holders of a key what a
//!   terminated PostgreSQL session suffers, and the rules of
//!   [`DistributedLock`]'s "When a lock is lost" then apply.
//! - Dropping a [`MemoryLock`] releases everything it held, like a session ending.
//!
//! # Deadlocks
//!
//! PostgreSQL looks for deadlocks in two places: in `ProcSleep`, at once, when a session
//! holding levels queues (above), and in `DeadLockCheck`, which each waiter runs once,
//! `deadlock_timeout` after its wait began. Only the first is modelled, because here the
//! second would find nothing more. Every `MemoryLock` is a session of its own on one key,
//! so a waits-for cycle stays on one key, and there the only sessions that wait while
//! holding a level hold it shared and want it exclusive. The scan puts the first such
//! session ahead of every exclusive waiter, so the next one (another shared holder asking
//! for exclusive) meets it first and fails at once: the same request, at the same moment,
//! with the same error as on PostgreSQL, whose waits-for graph then never keeps a cycle
//! for the timed check. The differential test runs PostgreSQL with `deadlock_timeout =
//! 100ms` and waits longer than that, so a cycle this argument missed would show.
//!
//! # What is not modelled
//!
//! - Connections: no connection failures, statement timeouts, server restarts, or the
//!   lock-table limit ([`Error::TooManyLocks`]).
//! - *When* a loss is noticed: [`MemoryLock::lost`] resolves the moment
//!   [`MemoryLocks::lose`] runs, where [`AdvisoryLock::lost`](crate::AdvisoryLock::lost)
//!   notices within its check interval.
//! - Cancelling a wait: a dropped wait leaves the queue and gives back a grant that raced
//!   the drop, and the session keeps the levels it held. An `AdvisoryLock` on an owned
//!   connection instead ends its session, so levels it held are lost.
//! - Sessions on several keys: `AdvisoryLock`s made one after another on one borrowed
//!   connection share its session, which may then hold one key and wait for another; such
//!   waits can form a cycle across keys, which PostgreSQL finds `deadlock_timeout` after a
//!   wait began. A `MemoryLock` is always a session of its own.
//! - Transaction-level locks ([`xact`](crate::xact)) and other lock kinds.
//!
//! It needs no async runtime: waits are woken by whoever releases, and timed waits keep
//! time with a std thread.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use fnv::FnvHashMap;

use crate::{DistributedLock, Error, LockKey, LockMode, LockProvider, Result, timer};

/// An in-process lock space: the stand-in for one PostgreSQL database. Cheap to clone;
/// clones share the same locks.
///
/// ```
/// use pglock::memory::MemoryLocks;
///
/// # futures_lite::future::block_on(async {
/// let locks = MemoryLocks::new();
/// let mut a = locks.lock("jobs");
/// let mut b = locks.lock("jobs");
/// assert!(a.try_lock().await?);
/// assert!(!b.try_lock().await?); // another session holds it
/// a.unlock().await?;
/// assert!(b.try_lock().await?);
/// # Ok::<(), pglock::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryLocks {
    space: Arc<Mutex<Space>>,
}

impl MemoryLocks {
    /// An empty lock space.
    ///
    /// ```
    /// let locks = pglock::memory::MemoryLocks::new();
    /// assert_eq!(locks.holders("anything"), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// A new session with a lock on `key`. A `&str` is a name, whose key is
    /// [`LockKey::from_name`]'s, so tests can use the names production code uses.
    ///
    /// ```
    /// use pglock::{LockKey, memory::MemoryLocks};
    ///
    /// let locks = MemoryLocks::new();
    /// assert_eq!(locks.lock("jobs").key(), LockKey::from_name("jobs"));
    /// assert_eq!(locks.lock(42).key(), LockKey::from(42));
    /// ```
    pub fn lock(&self, key: impl IntoMemoryKey) -> MemoryLock {
        let mut space = lock_space(&self.space);
        space.next_id += 1;
        MemoryLock {
            space: Arc::clone(&self.space),
            key: key.into_key(),
            session: space.next_id,
            closed: false,
        }
    }

    /// How many sessions hold `key` in any mode: the distinct pids `pg_locks` would show
    /// as granted.
    ///
    /// ```
    /// # futures_lite::future::block_on(async {
    /// let locks = pglock::memory::MemoryLocks::new();
    /// let (mut a, mut b) = (locks.lock("report"), locks.lock("report"));
    /// a.lock_shared().await?;
    /// b.lock_shared().await?;
    /// assert_eq!(locks.holders("report"), 2);
    /// # Ok::<(), pglock::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn holders(&self, key: impl IntoMemoryKey) -> usize {
        self.look(key, |queue| queue.held.len())
    }

    /// How many requests for `key` are waiting: what `pg_locks` would show as not granted.
    ///
    /// ```
    /// # futures_lite::future::block_on(async {
    /// use std::time::Duration;
    ///
    /// let locks = pglock::memory::MemoryLocks::new();
    /// let (mut a, mut b) = (locks.lock("report"), locks.lock("report"));
    /// a.lock().await?;
    /// let probe = locks.clone();
    /// let watch = async {
    ///     // While b waits, the queue shows it.
    ///     while probe.waiters("report") == 0 {
    ///         futures_lite::future::yield_now().await;
    ///     }
    ///     probe.waiters("report")
    /// };
    /// let (waited, seen) =
    ///     futures_lite::future::zip(b.try_lock_for(Duration::from_millis(50)), watch).await;
    /// assert!(!waited?);
    /// assert_eq!(seen, 1);
    /// assert_eq!(locks.waiters("report"), 0); // a timed-out wait leaves the queue
    /// # Ok::<(), pglock::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn waiters(&self, key: impl IntoMemoryKey) -> usize {
        self.look(key, |queue| queue.waiting.len())
    }

    /// Makes every session holding `key` lose all its levels, in both modes, as if its
    /// PostgreSQL session had been terminated; returns how many sessions lost levels.
    ///
    /// A wait such a session has pending fails with [`Error::LockLost`], and so does a
    /// pending [`lost`](MemoryLock::lost). The key is free for others at once, and waiters
    /// are granted. From then on the lock follows the rules of "When a lock is lost" in
    /// [`DistributedLock`]'s docs: each unlock pairing with a lost level, and `is_held`,
    /// `lost` and `close` report `LockLost` until every lost level is accounted for. A
    /// session that only waits for the key, holding none of it, is not touched.
    ///
    /// ```
    /// use pglock::{Error, memory::MemoryLocks};
    ///
    /// # futures_lite::future::block_on(async {
    /// let locks = MemoryLocks::new();
    /// let mut lock = locks.lock("leader");
    /// lock.lock().await?;
    /// assert_eq!(locks.lose("leader"), 1);
    /// assert!(matches!(lock.is_held().await, Err(Error::LockLost { .. })));
    /// assert!(matches!(lock.unlock().await, Err(Error::LockLost { .. }))); // accounted for
    /// assert!(!lock.is_held().await?);
    /// assert!(lock.try_lock().await?); // and the lock can be taken again
    /// # Ok::<(), pglock::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn lose(&self, key: impl IntoMemoryKey) -> usize {
        lock_space(&self.space).with_queue(key.into_key(), KeyQueue::lose_all)
    }

    fn look<T>(&self, key: impl IntoMemoryKey, f: impl FnOnce(&mut KeyQueue) -> T) -> T {
        lock_space(&self.space).with_queue(key.into_key(), f)
    }
}

impl std::fmt::Debug for MemoryLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = lock_space(&self.space).keys.len();
        f.debug_struct("MemoryLocks")
            .field("keys_in_use", &keys)
            .finish()
    }
}

/// What [`MemoryLocks`] accepts as a key: a [`LockKey`], an `i64`, an `(i32, i32)`, or a
/// name (`&str`, whose key is [`LockKey::from_name`]'s).
///
/// ```
/// use pglock::{LockKey, memory::IntoMemoryKey};
///
/// assert_eq!("jobs".into_key(), LockKey::from_name("jobs"));
/// assert_eq!((1, 2).into_key(), LockKey::IntPair(1, 2));
/// ```
pub trait IntoMemoryKey {
    /// The key.
    fn into_key(self) -> LockKey;
}

impl<K: Into<LockKey>> IntoMemoryKey for K {
    fn into_key(self) -> LockKey {
        self.into()
    }
}

impl IntoMemoryKey for &str {
    fn into_key(self) -> LockKey {
        LockKey::from_name(self)
    }
}

#[async_trait]
impl LockProvider for MemoryLocks {
    async fn new_lock(&self, key: LockKey) -> Result<Box<dyn DistributedLock>> {
        Ok(Box::new(self.lock(key)))
    }
}

/// One session's lock on one key in a [`MemoryLocks`] space. Behaves like an
/// [`AdvisoryLock`](crate::AdvisoryLock); see the [module docs](self) for what is
/// modelled.
///
/// A session that holds the key is refused a `try` for the other mode while a conflicting
/// request waits, as PostgreSQL's `pg_try_advisory_lock` is; its blocking request may go
/// ahead of that waiter instead:
///
/// ```
/// use std::time::Duration;
/// use pglock::memory::MemoryLocks;
///
/// # futures_lite::future::block_on(async {
/// let locks = MemoryLocks::new();
/// let (mut a, mut b) = (locks.lock("k"), locks.lock("k"));
/// a.lock_shared().await?;
/// let b_waits = b.lock(); // queued behind a's shared level
/// futures_lite::pin!(b_waits);
/// assert!(futures_lite::future::poll_once(&mut b_waits).await.is_none());
/// assert!(!a.try_lock().await?, "a try does not jump the queue");
/// assert!(a.try_lock_for(Duration::from_secs(1)).await?, "a wait goes ahead of b");
/// # Ok::<(), pglock::Error>(())
/// # }).unwrap();
/// ```
///
/// # Errors
///
/// Only those every [`DistributedLock`] returns ([Errors](DistributedLock#errors)):
/// [`Error::Closed`], [`Error::NotHeld`], [`Error::LockLost`] (after
/// [`MemoryLocks::lose`]) and [`Error::Deadlock`]. There is no session to fail.
///
/// # Cancel safety
///
/// A dropped wait leaves the queue (which may grant those behind it) and gives back a
/// grant that raced the drop; the levels held before stay held. [`lost`](Self::lost)
/// only watches; every other method completes at its first poll.
pub struct MemoryLock {
    space: Arc<Mutex<Space>>,
    key: LockKey,
    session: u64,
    closed: bool,
}

impl MemoryLock {
    /// The key this lock is for.
    pub fn key(&self) -> LockKey {
        self.key
    }

    /// Waits until the exclusive level is granted, then holds one more level.
    ///
    /// # Errors
    ///
    /// [`Error::Deadlock`] at once if the wait could never end (see the module docs);
    /// [`Error::LockLost`] if [`MemoryLocks::lose`] takes this session's levels
    /// meanwhile; [`Error::Closed`] after [`close`](Self::close).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the queue, giving back a grant that raced the drop.
    pub async fn lock(&mut self) -> Result<()> {
        self.open()?;
        Wait::new(self, LockMode::Exclusive).await
    }

    /// Waits until the shared level is granted, then holds one more level.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn lock_shared(&mut self) -> Result<()> {
        self.open()?;
        Wait::new(self, LockMode::Shared).await
    }

    /// Takes one exclusive level if that is possible at once: `Ok(false)` if another
    /// session holds the key, or a conflicting request waits (unless this session holds
    /// the exclusive level already).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`close`](Self::close).
    ///
    /// # Cancel safety
    ///
    /// It completes at its first poll: nothing to cancel.
    pub async fn try_lock(&mut self) -> Result<bool> {
        self.try_now(LockMode::Exclusive)
    }

    /// Takes one shared level if that is possible at once: `Ok(false)` if another session
    /// holds the key exclusively, or an exclusive request waits (unless this session
    /// holds a shared level already).
    ///
    /// # Errors
    ///
    /// As [`try_lock`](Self::try_lock).
    ///
    /// # Cancel safety
    ///
    /// As [`try_lock`](Self::try_lock).
    pub async fn try_lock_shared(&mut self) -> Result<bool> {
        self.try_now(LockMode::Shared)
    }

    /// Waits at most `timeout` for one exclusive level: `Ok(true)` once granted (also when
    /// the grant races the timeout), `Ok(false)` when the time is up. A zero timeout is
    /// [`try_lock`](Self::try_lock).
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool> {
        self.try_for(LockMode::Exclusive, timeout).await
    }

    /// Waits at most `timeout` for one shared level; otherwise as
    /// [`try_lock_for`](Self::try_lock_for).
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool> {
        self.try_for(LockMode::Shared, timeout).await
    }

    /// Releases the newest exclusive level.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if that level was lost (and it is accounted for),
    /// [`Error::NotHeld`] if there is none, [`Error::Closed`] after
    /// [`close`](Self::close).
    ///
    /// # Cancel safety
    ///
    /// It completes at its first poll: nothing to cancel.
    pub async fn unlock(&mut self) -> Result<()> {
        self.release(LockMode::Exclusive)
    }

    /// Releases the newest shared level; otherwise as [`unlock`](Self::unlock).
    ///
    /// # Errors
    ///
    /// As [`unlock`](Self::unlock).
    ///
    /// # Cancel safety
    ///
    /// As [`unlock`](Self::unlock).
    pub async fn unlock_shared(&mut self) -> Result<()> {
        self.release(LockMode::Shared)
    }

    /// Releases every level; afterwards operations return [`Error::Closed`].
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if lost levels were still unaccounted for (it closes all the
    /// same).
    ///
    /// # Cancel safety
    ///
    /// It completes at its first poll: nothing to cancel.
    pub async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        match self.end_session() {
            true => Err(Error::LockLost { key: self.key }),
            false => Ok(()),
        }
    }

    /// As [`DistributedLock::lost`]: resolves with [`Error::LockLost`] when
    /// [`MemoryLocks::lose`] takes this session's levels (at once while lost levels are
    /// unaccounted for); until then, with levels held, it waits (race it against the
    /// work, as with PostgreSQL). With none held it resolves at once with
    /// [`Error::NotHeld`], on a closed lock with [`Error::Closed`].
    ///
    /// Dropping the future is safe at any point: it only watches.
    ///
    /// ```
    /// use pglock::{Error, memory::MemoryLocks};
    ///
    /// # futures_lite::future::block_on(async {
    /// let locks = MemoryLocks::new();
    /// let mut lock = locks.lock("leader");
    /// lock.lock().await?;
    /// let lose = async {
    ///     futures_lite::future::yield_now().await;
    ///     locks.lose("leader")
    /// };
    /// let (lost, _) = futures_lite::future::zip(lock.lost(), lose).await;
    /// assert!(matches!(lost, Error::LockLost { .. }));
    /// # Ok::<(), pglock::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn lost(&mut self) -> Error {
        match self.is_held().await {
            Err(err) => err,
            Ok(false) => Error::NotHeld {
                key: self.key,
                mode: LockMode::Exclusive,
            },
            Ok(true) => LossWatch { lock: self }.await,
        }
    }

    /// Whether this session holds the key in any mode.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] while lost levels are unaccounted for; [`Error::Closed`] after
    /// [`close`](Self::close).
    ///
    /// # Cancel safety
    ///
    /// It completes at its first poll: nothing to cancel.
    pub async fn is_held(&mut self) -> Result<bool> {
        self.open()?;
        let (held, lost) =
            self.with_queue(|queue| (queue.levels(self.session), queue.lost(self.session)));
        match lost.any() {
            true => Err(Error::LockLost { key: self.key }),
            false => Ok(held.any()),
        }
    }

    /// Whether this session holds a level of `mode`.
    pub(crate) fn holds(&self, mode: LockMode) -> bool {
        self.with_queue(|queue| queue.levels(self.session).of(mode) > 0)
    }

    fn open(&self) -> Result<()> {
        match self.closed {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    fn with_queue<T>(&self, f: impl FnOnce(&mut KeyQueue) -> T) -> T {
        lock_space(&self.space).with_queue(self.key, f)
    }

    /// Takes a level of `mode` if that is possible at once (a `try`, without the future).
    pub(crate) fn try_now(&mut self, mode: LockMode) -> Result<bool> {
        self.open()?;
        Ok(self.with_queue(|queue| {
            let granted = queue.grantable_now(self.session, mode);
            if granted {
                queue.grant(self.session, mode);
            }
            granted
        }))
    }

    async fn try_for(&mut self, mode: LockMode, timeout: Duration) -> Result<bool> {
        if timeout.is_zero() {
            return self.try_now(mode);
        }
        self.open()?;
        let mut wait = Wait::new(self, mode);
        match timer::timeout(timeout, &mut wait).await {
            Some(result) => result.map(|()| true),
            None => wait.give_up(),
        }
    }

    /// Releases the newest level of `mode` (an `unlock`, without the future).
    pub(crate) fn release(&mut self, mode: LockMode) -> Result<()> {
        self.open()?;
        let key = self.key;
        match self.with_queue(|queue| queue.release(self.session, mode)) {
            Released::Held => Ok(()),
            Released::Lost => Err(Error::LockLost { key }),
            Released::Nothing => Err(Error::NotHeld { key, mode }),
        }
    }

    /// Ends the session at once (as `close`, without the future): every level is
    /// released; whether lost ones were unaccounted for.
    pub(crate) fn end(&mut self) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        self.end_session()
    }

    /// Forgets every level, held or lost; whether lost ones were unaccounted for.
    fn end_session(&mut self) -> bool {
        self.with_queue(|queue| queue.end_session(self.session))
    }
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        if !self.closed {
            self.end_session();
        }
    }
}

impl std::fmt::Debug for MemoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (held, lost) =
            self.with_queue(|queue| (queue.levels(self.session), queue.lost(self.session)));
        f.debug_struct("MemoryLock")
            .field("key", &self.key)
            .field("exclusive", &held.exclusive)
            .field("shared", &held.shared)
            .field("lost_exclusive", &lost.exclusive)
            .field("lost_shared", &lost.shared)
            .field("closed", &self.closed)
            .finish()
    }
}

#[async_trait]
impl DistributedLock for MemoryLock {
    fn key(&self) -> LockKey {
        self.key
    }

    async fn lock(&mut self) -> Result<()> {
        MemoryLock::lock(self).await
    }

    async fn lock_shared(&mut self) -> Result<()> {
        MemoryLock::lock_shared(self).await
    }

    async fn try_lock(&mut self) -> Result<bool> {
        MemoryLock::try_lock(self).await
    }

    async fn try_lock_shared(&mut self) -> Result<bool> {
        MemoryLock::try_lock_shared(self).await
    }

    async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool> {
        MemoryLock::try_lock_for(self, timeout).await
    }

    async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool> {
        MemoryLock::try_lock_shared_for(self, timeout).await
    }

    async fn unlock(&mut self) -> Result<()> {
        MemoryLock::unlock(self).await
    }

    async fn unlock_shared(&mut self) -> Result<()> {
        MemoryLock::unlock_shared(self).await
    }

    async fn close(&mut self) -> Result<()> {
        MemoryLock::close(self).await
    }

    async fn is_held(&mut self) -> Result<bool> {
        MemoryLock::is_held(self).await
    }

    async fn lost(&mut self) -> Error {
        MemoryLock::lost(self).await
    }
}

/// A poisoned mutex only means another thread panicked mid-update of plain counters;
/// the space is still consistent enough to release locks, so carry on.
fn lock_space(space: &Mutex<Space>) -> MutexGuard<'_, Space> {
    space
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// All keys of one lock space.
#[derive(Default)]
struct Space {
    /// By key: keys are the caller's, so a seeded hasher.
    keys: HashMap<LockKey, KeyQueue, foldhash::fast::RandomState>,
    /// Session ids and wait tickets, never reused.
    next_id: u64,
}

impl Space {
    /// Runs `f` on `key`'s state, and drops that state again once it is empty.
    fn with_queue<T>(&mut self, key: LockKey, f: impl FnOnce(&mut KeyQueue) -> T) -> T {
        let queue = self.keys.entry(key).or_default();
        let out = f(queue);
        if queue.is_empty() {
            self.keys.remove(&key);
        }
        out
    }
}

/// One key, as PostgreSQL's shared lock table sees it, plus what lost sessions still
/// have to hear. Maps by session or request id use FNV: ids are the crate's own counter.
#[derive(Default)]
struct KeyQueue {
    /// The levels each session holds (only sessions holding some).
    held: FnvHashMap<u64, Levels>,
    /// Levels each session lost and has not accounted for yet.
    lost: FnvHashMap<u64, Levels>,
    /// The waker of each session's pending `lost()`.
    loss_watchers: FnvHashMap<u64, Waker>,
    /// Requests waiting, in PostgreSQL's wait-queue order.
    waiting: VecDeque<Waiter>,
    /// Requests that left the queue granted or failed, until their `Wait` collects them.
    finished: FnvHashMap<u64, Outcome>,
}

/// Levels per mode; also used as a set of modes (a mode is in it if its count is not 0).
#[derive(Debug, Clone, Copy, Default)]
struct Levels {
    exclusive: u32,
    shared: u32,
}

impl Levels {
    fn of(self, mode: LockMode) -> u32 {
        match mode {
            LockMode::Exclusive => self.exclusive,
            LockMode::Shared => self.shared,
        }
    }

    fn of_mut(&mut self, mode: LockMode) -> &mut u32 {
        match mode {
            LockMode::Exclusive => &mut self.exclusive,
            LockMode::Shared => &mut self.shared,
        }
    }

    fn any(self) -> bool {
        self.exclusive > 0 || self.shared > 0
    }

    /// Whether a request for `mode` conflicts with these modes.
    fn block(self, mode: LockMode) -> bool {
        match mode {
            LockMode::Exclusive => self.any(),
            LockMode::Shared => self.exclusive > 0,
        }
    }

    /// These levels plus one of `mode`.
    fn with(mut self, mode: LockMode) -> Levels {
        *self.of_mut(mode) += 1;
        self
    }

    fn add(&mut self, other: Levels) {
        self.exclusive += other.exclusive;
        self.shared += other.shared;
    }
}

fn conflicts(a: LockMode, b: LockMode) -> bool {
    a == LockMode::Exclusive || b == LockMode::Exclusive
}

struct Waiter {
    ticket: u64,
    session: u64,
    mode: LockMode,
    waker: Waker,
}

/// How a request that left the queue ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Granted,
    /// Its session lost its levels ([`MemoryLocks::lose`]).
    Lost,
}

/// What a request that found the key taken does, by `ProcSleep`.
enum Placement {
    Grant,
    Deadlock,
    /// Wait at this index of the queue.
    Queue(usize),
}

/// Which level an unlock paired with.
enum Released {
    Held,
    Lost,
    Nothing,
}

impl KeyQueue {
    fn is_empty(&self) -> bool {
        self.held.is_empty()
            && self.lost.is_empty()
            && self.loss_watchers.is_empty()
            && self.waiting.is_empty()
            && self.finished.is_empty()
    }

    fn levels(&self, session: u64) -> Levels {
        self.held.get(&session).copied().unwrap_or_default()
    }

    fn lost(&self, session: u64) -> Levels {
        self.lost.get(&session).copied().unwrap_or_default()
    }

    /// Whether another session's levels conflict with a request for `mode`
    /// (`LockCheckConflicts`).
    fn others_block(&self, session: u64, mode: LockMode) -> bool {
        self.held
            .iter()
            .any(|(holder, levels)| *holder != session && levels.block(mode))
    }

    /// Whether a waiting request conflicts with `mode` (the lock's wait mask).
    fn queue_blocks(&self, mode: LockMode) -> bool {
        self.waiting.iter().any(|w| conflicts(w.mode, mode))
    }

    /// `LockAcquireExtended`'s rule for granting without waiting: a mode already held is
    /// granted from the session's own count; a new one only if it conflicts neither with
    /// the wait mask nor with other sessions' levels.
    fn grantable_now(&self, session: u64, mode: LockMode) -> bool {
        self.levels(session).of(mode) > 0
            || !(self.queue_blocks(mode) || self.others_block(session, mode))
    }

    /// `ProcSleep`'s placement of a request that cannot be granted at once: a session
    /// holding levels goes ahead of the first waiter that must wait for it, or is granted
    /// if nothing before that waiter stops it, or has a deadlock if it must also wait for
    /// that waiter. Everyone else waits at the tail.
    fn place(&self, session: u64, mode: LockMode) -> Placement {
        let mine = self.levels(session);
        let mut ahead = Levels::default();
        if mine.any() {
            for (index, waiter) in self.waiting.iter().enumerate() {
                if !mine.block(waiter.mode) {
                    ahead = ahead.with(waiter.mode);
                    continue;
                }
                if self.levels(waiter.session).block(mode) {
                    return Placement::Deadlock;
                }
                if !ahead.block(mode) && !self.others_block(session, mode) {
                    return Placement::Grant;
                }
                return Placement::Queue(index);
            }
        }
        Placement::Queue(self.waiting.len())
    }

    fn grant(&mut self, session: u64, mode: LockMode) {
        *self.held.entry(session).or_default().of_mut(mode) += 1;
    }

    /// Releases the newest level of `mode`: levels held now were taken after any loss.
    fn release(&mut self, session: u64, mode: LockMode) -> Released {
        if let Some(levels) = self.held.get_mut(&session)
            && levels.of(mode) > 0
        {
            *levels.of_mut(mode) -= 1;
            if !levels.any() {
                self.held.remove(&session);
            }
            self.wake_waiters();
            return Released::Held;
        }
        if let Some(levels) = self.lost.get_mut(&session)
            && levels.of(mode) > 0
        {
            *levels.of_mut(mode) -= 1;
            if !levels.any() {
                self.lost.remove(&session);
            }
            return Released::Lost;
        }
        Released::Nothing
    }

    /// Drops every trace of `session`; whether it had lost levels unaccounted for.
    fn end_session(&mut self, session: u64) -> bool {
        self.held.remove(&session);
        self.loss_watchers.remove(&session);
        self.wake_waiters();
        self.lost.remove(&session).is_some_and(Levels::any)
    }

    /// `ProcLockWakeup`: grants, in queue order, every waiter that conflicts neither with
    /// other sessions' levels nor with a request still waiting ahead of it.
    fn wake_waiters(&mut self) {
        let mut ahead = Levels::default();
        let mut index = 0;
        while let Some(waiter) = self.waiting.get(index) {
            let (session, mode) = (waiter.session, waiter.mode);
            if ahead.block(mode) || self.others_block(session, mode) {
                ahead = ahead.with(mode);
                index += 1;
                continue;
            }
            self.grant(session, mode);
            if let Some(waiter) = self.waiting.remove(index) {
                self.finish(waiter, Outcome::Granted);
            }
        }
    }

    fn finish(&mut self, waiter: Waiter, outcome: Outcome) {
        self.finished.insert(waiter.ticket, outcome);
        waiter.waker.wake();
    }

    /// Takes a request out of the queue (then `None`), or collects how it ended.
    fn withdraw(&mut self, ticket: u64) -> Option<Outcome> {
        match self.waiting.iter().position(|w| w.ticket == ticket) {
            Some(index) => {
                self.waiting.remove(index);
                self.wake_waiters();
                None
            }
            None => self.finished.remove(&ticket),
        }
    }

    /// [`MemoryLocks::lose`]: every holder's levels become lost, its pending wait and its
    /// `lost()` fail, and the queue moves on. Returns how many sessions lost levels.
    fn lose_all(&mut self) -> usize {
        let held = std::mem::take(&mut self.held);
        for (session, levels) in &held {
            self.lost.entry(*session).or_default().add(*levels);
            if let Some(waker) = self.loss_watchers.remove(session) {
                waker.wake();
            }
            while let Some(index) = self.waiting.iter().position(|w| w.session == *session) {
                if let Some(waiter) = self.waiting.remove(index) {
                    self.finish(waiter, Outcome::Lost);
                }
            }
        }
        self.wake_waiters();
        held.len()
    }
}

/// A request for one level, queued if it cannot be granted at once. Dropping it before
/// it completes removes it from the queue, giving back a grant that raced the drop.
struct Wait {
    space: Arc<Mutex<Space>>,
    key: LockKey,
    session: u64,
    mode: LockMode,
    /// Our place in the queue, once queued and until the outcome is collected.
    ticket: Option<u64>,
}

impl Wait {
    fn new(lock: &MemoryLock, mode: LockMode) -> Self {
        Wait {
            space: Arc::clone(&lock.space),
            key: lock.key,
            session: lock.session,
            mode,
            ticket: None,
        }
    }

    /// After a timeout: leaves the queue (`Ok(false)`), or keeps a grant that raced it
    /// (`Ok(true)`), or reports a loss that did.
    fn give_up(&mut self) -> Result<bool> {
        let Some(ticket) = self.ticket.take() else {
            return Ok(false);
        };
        let outcome = lock_space(&self.space).with_queue(self.key, |queue| queue.withdraw(ticket));
        match outcome {
            Some(outcome) => outcome.result(self.key).map(|()| true),
            None => Ok(false),
        }
    }
}

impl Outcome {
    fn result(self, key: LockKey) -> Result<()> {
        match self {
            Outcome::Granted => Ok(()),
            Outcome::Lost => Err(Error::LockLost { key }),
        }
    }
}

impl Future for Wait {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        let (key, session, mode) = (this.key, this.session, this.mode);
        let mut space = lock_space(&this.space);
        let Some(ticket) = this.ticket else {
            space.next_id += 1;
            let ticket = space.next_id;
            return space.with_queue(key, |queue| {
                if queue.grantable_now(session, mode) {
                    queue.grant(session, mode);
                    return Poll::Ready(Ok(()));
                }
                match queue.place(session, mode) {
                    Placement::Grant => {
                        queue.grant(session, mode);
                        Poll::Ready(Ok(()))
                    }
                    Placement::Deadlock => Poll::Ready(Err(Error::Deadlock { key })),
                    Placement::Queue(index) => {
                        let waker = cx.waker().clone();
                        let waiter = Waiter {
                            ticket,
                            session,
                            mode,
                            waker,
                        };
                        queue.waiting.insert(index, waiter);
                        this.ticket = Some(ticket);
                        Poll::Pending
                    }
                }
            });
        };
        space.with_queue(key, |queue| {
            if let Some(outcome) = queue.finished.remove(&ticket) {
                this.ticket = None;
                return Poll::Ready(outcome.result(key));
            }
            match queue.waiting.iter_mut().find(|w| w.ticket == ticket) {
                Some(waiter) => waiter.waker.clone_from(cx.waker()),
                // Neither queued nor finished (nothing does that, but never wait for a
                // grant that cannot come): ask again.
                None => {
                    this.ticket = None;
                    cx.waker().wake_by_ref();
                }
            }
            Poll::Pending
        })
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let (session, mode) = (self.session, self.mode);
        lock_space(&self.space).with_queue(self.key, |queue| {
            if queue.withdraw(ticket) == Some(Outcome::Granted) {
                // Granted, but nobody will ever know: give it back.
                queue.release(session, mode);
            }
        });
    }
}

/// The pending part of [`MemoryLock::lost`]: resolves once the session has lost levels.
struct LossWatch<'a> {
    lock: &'a MemoryLock,
}

impl Future for LossWatch<'_> {
    type Output = Error;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Error> {
        let lock = self.lock;
        lock.with_queue(|queue| {
            if queue.lost(lock.session).any() {
                return Poll::Ready(Error::LockLost { key: lock.key });
            }
            queue.loss_watchers.insert(lock.session, cx.waker().clone());
            Poll::Pending
        })
    }
}

impl Drop for LossWatch<'_> {
    fn drop(&mut self) {
        let session = self.lock.session;
        self.lock
            .with_queue(|queue| queue.loss_watchers.remove(&session));
    }
}

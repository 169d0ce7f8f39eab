//! [`MemoryLocks`]: an in-process stand-in for PostgreSQL advisory locks, for tests.
//!
//! Application code that takes a `&dyn LockProvider` (or a `Box<dyn DistributedLock>`)
//! can run its unit tests on [`MemoryLocks`] without a database. That is only safe if the
//! stand-in behaves like the real thing, so it models PostgreSQL's lock manager for
//! advisory locks, and the same conformance suite runs against both:
//!
//! - each [`MemoryLock`] is one *session*; levels stack per session, shared and exclusive
//!   counted apart, and one session may hold both modes on a key (its own levels never
//!   conflict with each other);
//! - a request that conflicts with another session's levels *or with a request queued
//!   before it* waits, and waiters are granted in arrival order: a queued exclusive
//!   request makes later shared requests wait, and a shared `try` fails while it is
//!   queued. A session that already holds the key is not queued behind waiters (as in
//!   PostgreSQL, which puts such a request ahead of them);
//! - a wait dropped before it completes leaves no trace: a grant that raced the drop is
//!   given back at once;
//! - dropping a `MemoryLock` releases everything it held, like a session ending.
//!
//! Not modelled: deadlock detection (two sessions waiting on each other wait until one
//! of them gives up; use timed waits in tests that could deadlock), lost sessions, and the
//! lock-table limit.
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
    pub fn new() -> Self {
        Self::default()
    }

    /// A new session with a lock on `key`. A `&str` is a name, hashed as
    /// [`LockKey::from_name`] does, so tests can use the names production code uses.
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
}

impl MemoryLocks {
    /// How many sessions hold `key` in any mode: what `pg_locks` would show as granted.
    pub fn holders(&self, key: impl IntoMemoryKey) -> usize {
        let space = lock_space(&self.space);
        space
            .keys
            .get(&key.into_key())
            .map_or(0, |queue| queue.held.len())
    }

    /// How many requests for `key` are waiting: what `pg_locks` would show as not granted.
    pub fn waiters(&self, key: impl IntoMemoryKey) -> usize {
        let space = lock_space(&self.space);
        space.keys.get(&key.into_key()).map_or(0, |queue| {
            queue.waiting.iter().filter(|w| !w.granted).count()
        })
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

/// What [`MemoryLocks::lock`] accepts as a key: a [`LockKey`], an `i64`, an `(i32, i32)`,
/// or a name (`&str`, hashed like [`LockKey::from_name`]).
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
/// [`AdvisoryLock`](crate::AdvisoryLock); see the module docs for what is modelled.
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
    pub async fn lock(&mut self) -> Result<()> {
        self.open()?;
        Wait::new(self, LockMode::Exclusive).await;
        Ok(())
    }

    /// Waits until the shared level is granted, then holds one more level.
    pub async fn lock_shared(&mut self) -> Result<()> {
        self.open()?;
        Wait::new(self, LockMode::Shared).await;
        Ok(())
    }

    /// Takes one exclusive level if that is possible at once.
    pub async fn try_lock(&mut self) -> Result<bool> {
        self.try_now(LockMode::Exclusive)
    }

    /// Takes one shared level if that is possible at once.
    pub async fn try_lock_shared(&mut self) -> Result<bool> {
        self.try_now(LockMode::Shared)
    }

    /// Waits at most `timeout` for one exclusive level.
    pub async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool> {
        self.try_for(LockMode::Exclusive, timeout).await
    }

    /// Waits at most `timeout` for one shared level.
    pub async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool> {
        self.try_for(LockMode::Shared, timeout).await
    }

    /// Releases one exclusive level; [`Error::NotHeld`] if none is held.
    pub async fn unlock(&mut self) -> Result<()> {
        self.release(LockMode::Exclusive)
    }

    /// Releases one shared level; [`Error::NotHeld`] if none is held.
    pub async fn unlock_shared(&mut self) -> Result<()> {
        self.release(LockMode::Shared)
    }

    /// Releases every level; afterwards operations return [`Error::Closed`].
    pub async fn close(&mut self) -> Result<()> {
        self.release_all();
        self.closed = true;
        Ok(())
    }

    /// As [`DistributedLock::lost`]: an in-memory session is never lost, so with levels
    /// held this waits for ever (race it against the work, as with PostgreSQL); with
    /// none it resolves at once with [`Error::NotHeld`], on a closed lock with
    /// [`Error::Closed`].
    pub async fn lost(&mut self) -> Error {
        match self.is_held().await {
            Err(err) => err,
            Ok(false) => Error::NotHeld {
                key: self.key,
                mode: LockMode::Exclusive,
            },
            Ok(true) => std::future::pending().await,
        }
    }

    /// Whether this session holds the key in any mode.
    pub async fn is_held(&mut self) -> Result<bool> {
        self.open()?;
        let space = lock_space(&self.space);
        Ok(space.levels(self.key, self.session).any())
    }

    fn open(&self) -> Result<()> {
        match self.closed {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    fn try_now(&mut self, mode: LockMode) -> Result<bool> {
        self.open()?;
        let mut space = lock_space(&self.space);
        let granted = space.grantable_now(self.key, self.session, mode);
        if granted {
            space.add_level(self.key, self.session, mode);
        }
        Ok(granted)
    }

    async fn try_for(&mut self, mode: LockMode, timeout: Duration) -> Result<bool> {
        if timeout.is_zero() {
            return self.try_now(mode);
        }
        self.open()?;
        let mut wait = Wait::new(self, mode);
        let granted = timer::timeout(timeout, &mut wait).await.is_some();
        // A grant that raced the timeout counts, as with PostgreSQL.
        Ok(granted || wait.take_grant())
    }

    fn release(&mut self, mode: LockMode) -> Result<()> {
        self.open()?;
        let mut space = lock_space(&self.space);
        if space.levels(self.key, self.session).of(mode) == 0 {
            return Err(Error::NotHeld {
                key: self.key,
                mode,
            });
        }
        space.remove_level(self.key, self.session, mode);
        space.wake_waiters(self.key);
        Ok(())
    }

    fn release_all(&mut self) {
        let mut space = lock_space(&self.space);
        if let Some(queue) = space.keys.get_mut(&self.key) {
            queue.held.remove(&self.session);
        }
        space.wake_waiters(self.key);
    }
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        self.release_all();
    }
}

impl std::fmt::Debug for MemoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let levels = lock_space(&self.space).levels(self.key, self.session);
        f.debug_struct("MemoryLock")
            .field("key", &self.key)
            .field("exclusive", &levels.exclusive)
            .field("shared", &levels.shared)
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
    keys: HashMap<LockKey, KeyQueue>,
    /// Session ids and wait tickets, never reused.
    next_id: u64,
}

/// One key: who holds which levels, and who waits, in arrival order.
#[derive(Default)]
struct KeyQueue {
    held: HashMap<u64, Levels>,
    waiting: VecDeque<Waiter>,
}

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

    /// Whether another session's levels block a request for `mode`.
    fn block(self, mode: LockMode) -> bool {
        match mode {
            LockMode::Exclusive => self.any(),
            LockMode::Shared => self.exclusive > 0,
        }
    }
}

struct Waiter {
    ticket: u64,
    session: u64,
    mode: LockMode,
    /// Granted by a release; the level is already counted as held.
    granted: bool,
    waker: Option<Waker>,
}

fn modes_conflict(a: LockMode, b: LockMode) -> bool {
    a == LockMode::Exclusive || b == LockMode::Exclusive
}

impl Space {
    fn levels(&self, key: LockKey, session: u64) -> Levels {
        self.keys
            .get(&key)
            .and_then(|queue| queue.held.get(&session).copied())
            .unwrap_or_default()
    }

    fn blocked_by_holders(&self, key: LockKey, session: u64, mode: LockMode) -> bool {
        self.keys.get(&key).is_some_and(|queue| {
            queue
                .held
                .iter()
                .any(|(holder, levels)| *holder != session && levels.block(mode))
        })
    }

    /// Whether a new request may be granted at once, without queueing.
    fn grantable_now(&self, key: LockKey, session: u64, mode: LockMode) -> bool {
        let own = self.levels(key, session);
        if own.of(mode) > 0 {
            return true; // re-entrant: PostgreSQL never makes a holder wait for more
        }
        if self.blocked_by_holders(key, session, mode) {
            return false;
        }
        // A session that holds the key already goes ahead of waiters; others queue
        // behind any waiting request they conflict with.
        own.any()
            || self.keys.get(&key).is_none_or(|queue| {
                !queue
                    .waiting
                    .iter()
                    .any(|w| !w.granted && modes_conflict(w.mode, mode))
            })
    }

    fn add_level(&mut self, key: LockKey, session: u64, mode: LockMode) {
        let queue = self.keys.entry(key).or_default();
        *queue.held.entry(session).or_default().of_mut(mode) += 1;
    }

    fn remove_level(&mut self, key: LockKey, session: u64, mode: LockMode) {
        if let Some(queue) = self.keys.get_mut(&key)
            && let Some(levels) = queue.held.get_mut(&session)
        {
            let count = levels.of_mut(mode);
            *count = count.saturating_sub(1);
            if !levels.any() {
                queue.held.remove(&session);
            }
        }
    }

    /// Grants waiting requests in arrival order, as PostgreSQL does on release: a waiter
    /// is granted if no other holder blocks it and no earlier, still-waiting request
    /// conflicts with it.
    fn wake_waiters(&mut self, key: LockKey) {
        let Some(queue) = self.keys.get_mut(&key) else {
            return;
        };
        let mut ahead: Vec<LockMode> = Vec::new();
        for i in 0..queue.waiting.len() {
            let (session, mode, granted) = {
                let w = &queue.waiting[i];
                (w.session, w.mode, w.granted)
            };
            if granted {
                continue;
            }
            let blocked = queue
                .held
                .iter()
                .any(|(holder, levels)| *holder != session && levels.block(mode))
                || ahead.iter().any(|a| modes_conflict(*a, mode));
            if blocked {
                ahead.push(mode);
                continue;
            }
            *queue.held.entry(session).or_default().of_mut(mode) += 1;
            let waiter = &mut queue.waiting[i];
            waiter.granted = true;
            if let Some(waker) = waiter.waker.take() {
                waker.wake();
            }
        }
        if queue.held.is_empty() && queue.waiting.is_empty() {
            self.keys.remove(&key);
        }
    }
}

/// A request for one level, queued if it cannot be granted at once. Dropping it before
/// it completes removes it from the queue, giving back a grant that raced the drop.
struct Wait {
    space: Arc<Mutex<Space>>,
    key: LockKey,
    session: u64,
    mode: LockMode,
    /// Our place in the queue, once queued.
    ticket: Option<u64>,
    done: bool,
}

impl Wait {
    fn new(lock: &MemoryLock, mode: LockMode) -> Self {
        Wait {
            space: Arc::clone(&lock.space),
            key: lock.key,
            session: lock.session,
            mode,
            ticket: None,
            done: false,
        }
    }

    /// After a timeout: keeps a grant that raced it (true), or leaves the queue (false).
    fn take_grant(&mut self) -> bool {
        if self.done {
            return true;
        }
        let Some(ticket) = self.ticket.take() else {
            return false;
        };
        let mut space = lock_space(&self.space);
        let granted = remove_waiter(&mut space, self.key, ticket).is_some_and(|w| w.granted);
        if !granted {
            space.wake_waiters(self.key);
        }
        self.done = true;
        granted
    }
}

fn remove_waiter(space: &mut Space, key: LockKey, ticket: u64) -> Option<Waiter> {
    let queue = space.keys.get_mut(&key)?;
    let index = queue.waiting.iter().position(|w| w.ticket == ticket)?;
    queue.waiting.remove(index)
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(());
        }
        let mut space = lock_space(&this.space);
        match this.ticket {
            None => {
                if space.grantable_now(this.key, this.session, this.mode) {
                    space.add_level(this.key, this.session, this.mode);
                    this.done = true;
                    return Poll::Ready(());
                }
                space.next_id += 1;
                let ticket = space.next_id;
                let holds_key = space.levels(this.key, this.session).any();
                let queue = space.keys.entry(this.key).or_default();
                let waiter = Waiter {
                    ticket,
                    session: this.session,
                    mode: this.mode,
                    granted: false,
                    waker: Some(cx.waker().clone()),
                };
                // A holder's request goes ahead of the waiters (see module docs).
                if holds_key {
                    queue.waiting.push_front(waiter);
                } else {
                    queue.waiting.push_back(waiter);
                }
                this.ticket = Some(ticket);
                Poll::Pending
            }
            Some(ticket) => {
                let queue = space.keys.get_mut(&this.key);
                let waiter = queue.and_then(|q| q.waiting.iter_mut().find(|w| w.ticket == ticket));
                match waiter {
                    Some(w) if w.granted => {
                        remove_waiter(&mut space, this.key, ticket);
                        this.ticket = None;
                        this.done = true;
                        Poll::Ready(())
                    }
                    Some(w) => {
                        w.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    // Not in the queue any more (nothing removes a live waiter, but never
                    // claim a grant we cannot see): ask again.
                    None => {
                        this.ticket = None;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let mut space = lock_space(&self.space);
        if let Some(waiter) = remove_waiter(&mut space, self.key, ticket)
            && waiter.granted
        {
            // Granted, but nobody will ever know: give it back.
            space.remove_level(self.key, self.session, self.mode);
        }
        space.wake_waiters(self.key);
    }
}

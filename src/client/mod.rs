//! [`LockClient`]: many locks over a few sessions.
//!
//! An [`AdvisoryLock`](crate::AdvisoryLock) owns a PostgreSQL session, so a process
//! holds as many locks as it has connections. A `LockClient` holds thousands of locks
//! over a handful of sessions, its *lanes* (`max_sessions`, 4 by default), and sends the
//! operations of many tasks in one statement per lane and round trip.
//!
//! # How it works
//!
//! - **Each [`ClientLock`] is a session of its own, locally.** A second request for a
//!   key on the same server session would simply be granted again, so the client decides
//!   conflicts between its own locks itself, with the in-process lock space of
//!   [`MemoryLocks`], which follows PostgreSQL's lock manager
//!   (stacking per lock, shared with shared, queued writers blocking later readers). Only
//!   what passes that table goes to the server, which then holds at most one level per
//!   key and mode for the whole client: locks sharing a key shared share that level.
//! - **Operations are batched.** A task waiting for an operation drives the lanes: what
//!   queued up for a lane while its statement was on the wire goes out together in its
//!   next statement (arrays and `unnest`). The statement belongs to the lane, not to a
//!   task, so a dropped future costs nothing: its answer is applied when it is read, and
//!   a grant nobody wants any more is released in the next statement. A new key goes to
//!   its own lane (by its hash) unless two lanes have a statement on the wire and its own
//!   has none: then it joins the shorter of their queues. A quiet client sends each
//!   operation at once; under load batches grow instead of statements multiplying (64
//!   tasks' `try_lock` + `unlock` on 4 lanes: 16–19 operations per statement instead of
//!   12–15, 1.2× the pairs per second with the server on the same CPU, 1.4× on another;
//!   BENCHMARKS.md).
//! - **Waits never block a lane.** A try that fails for a call that may wait moves the
//!   wait to a session of its own, taken from the pool, holding nothing else. Local
//!   waiters for one key queue locally behind it; once granted, that session keeps the
//!   level and serves as an extra lane until it holds nothing, then goes back to the pool
//!   clean. Dropping a wait ends only that session. (A lock that holds a key in one mode
//!   and waits for the other tries again every few milliseconds instead: a wait on the
//!   key's lane would stall the other locks there.)
//! - **Loss is detected per lane.** `lost()` futures share one liveness check per lane
//!   and [`lost_check_interval`](LockOptions::lost_check_interval) (any statement the lane
//!   answers counts); never a `pg_locks` scan. A lane whose session dies takes its levels
//!   with it: every lock that held one reports [`Error::LockLost`](crate::Error::LockLost) under the rules of
//!   [`DistributedLock`]; other lanes are untouched, and the lane
//!   opens a new session on demand.
//! - **Background work.** The library depends on no runtime, so the client's housekeeping
//!   is a future the application spawns: [`LockClient::driver`]. With it running, the
//!   levels of a dropped lock are released within a round trip and idle lanes go back to
//!   the pool after [`ClientOptions::idle_timeout`]. Without it everything still works:
//!   awaited operations drive their lanes themselves, and a dropped lock's levels go out
//!   with the next operation on their lane, or with [`LockClient::check_sessions`], which
//!   returns once the lanes have sent everything queued.
//! - **Waits are never joined by tries.** While a lock of the client waits for a mode on a
//!   session of its own, another lock's try for that mode is refused without a round
//!   trip (the server refused the waiter a moment ago), and a timed attempt shares the
//!   wait's outcome for no longer than its own timeout.
//!
//! Lanes are sessions like an `AdvisoryLock`'s: bounded statements, session set-up,
//! pooling-proxy detection and the standby refusal hold for them too. One deviation from
//! separate PostgreSQL sessions: a shared request by a lock of the client is granted
//! without a round trip while another lock of the same client holds the key shared, even
//! if a session elsewhere waits for it exclusively (the server sees one holder).

mod lock;
mod set;
mod table;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use sqlx::postgres::PgPool;

use crate::memory::MemoryLocks;
use crate::{DistributedLock, LockKey, LockMode, LockOptions, LockProvider, Result, timer};

pub use lock::ClientLock;
pub use set::LockSet;

use table::{OpId, Shared, Table, Wakers, lock};

/// Settings of a [`LockClient`], built with chained setters.
///
/// ```
/// use std::time::Duration;
/// use pglock::{ClientOptions, LockOptions};
///
/// let options = ClientOptions::new()
///     .max_sessions(8)
///     .lock_options(LockOptions::new().application_name("billing"))
///     .idle_timeout(Duration::from_secs(5));
/// assert_eq!(options.get_max_sessions(), 8);
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    max_sessions: usize,
    lock_options: LockOptions,
    idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_sessions: 4,
            lock_options: LockOptions::default(),
            idle_timeout: Duration::from_secs(1),
        }
    }
}

impl ClientOptions {
    /// The defaults: 4 lanes, [`LockOptions::default`], lanes back to the pool after 1 s
    /// idle.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many sessions (lanes) hold the client's locks; at least 1. Waits use sessions
    /// of their own on top, one per key being waited for.
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.max_sessions = sessions.max(1);
        self
    }

    /// Session settings and bounds for the lanes and waiting sessions (see
    /// [`LockOptions`]).
    pub fn lock_options(mut self, options: LockOptions) -> Self {
        self.lock_options = options;
        self
    }

    /// How long a lane that holds nothing stays open before the driver gives its session
    /// back to the pool.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// The configured number of lanes.
    pub fn get_max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// The configured lock options.
    pub fn get_lock_options(&self) -> &LockOptions {
        &self.lock_options
    }

    /// The configured idle timeout.
    pub fn get_idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

/// Many locks over a few PostgreSQL sessions; see the [module docs](self).
///
/// Cheap to clone: clones share the sessions and the locks' record.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
/// let client = pglock::LockClient::new(&pool);
/// tokio::spawn(client.driver()); // releases dropped locks, gives idle sessions back
///
/// let mut invoice = client.lock(pglock::LockKey::from_name("invoice-42"));
/// if invoice.try_lock().await? {
///     // ... the work ...
///     invoice.unlock().await?;
/// }
/// if let Some(set) = client.try_lock_all([1_i64, 2, 3]).await? {
///     // all three keys, taken in one round trip
///     set.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
///
/// # Shutting down
///
/// The client keeps its lanes' sessions until it, its clones and every lock and set it
/// made are dropped (with the driver running, a lane that holds nothing also goes back to
/// the pool after [`ClientOptions::idle_timeout`]). `PgPool::close` waits for every
/// connection to come back: drop the client and its locks before it, or it waits for them.
#[derive(Clone)]
pub struct LockClient {
    inner: Arc<Inner>,
}

/// What a client and all its locks share.
pub(crate) struct Inner {
    shared: Shared,
    table: std::sync::Mutex<Table>,
    wakers: Wakers,
    idle_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The driver holds only a weak reference: let it see that the client is gone.
        self.wakers.wake_listeners();
    }
}

impl LockClient {
    /// A client taking its sessions from `pool`, with the default [`ClientOptions`]. No
    /// session is taken until a lock needs one.
    pub fn new(pool: &PgPool) -> LockClient {
        Self::with_options(pool, ClientOptions::default())
    }

    /// A client with `options`.
    pub fn with_options(pool: &PgPool, options: ClientOptions) -> LockClient {
        LockClient {
            inner: Arc::new(Inner {
                shared: Shared {
                    pool: pool.clone(),
                    options: options.lock_options,
                    local: MemoryLocks::new(),
                },
                table: std::sync::Mutex::new(Table::new(options.max_sessions)),
                wakers: Wakers::default(),
                idle_timeout: options.idle_timeout,
            }),
        }
    }

    /// A lock on `key`: a session of its own, as far as the client's other locks are
    /// concerned. No I/O: it takes effect with its first acquisition.
    pub fn lock(&self, key: impl Into<LockKey>) -> ClientLock {
        ClientLock::new(Arc::clone(&self.inner), key.into())
    }

    /// Every key exclusively, or none, in one round trip: `None` (and nothing held
    /// anywhere) if any key is taken, by another session or another lock of this client.
    /// Duplicate keys count once; no keys give an empty set.
    ///
    /// # Errors
    ///
    /// The errors of the lane's session, as a [`ClientLock`]'s
    /// ([Errors](ClientLock#errors)): [`Error::Database`](crate::Error::Database),
    /// [`Error::Disconnected`](crate::Error::Disconnected),
    /// [`Error::Unresponsive`](crate::Error::Unresponsive),
    /// [`Error::SessionNotPinned`](crate::Error::SessionNotPinned),
    /// [`Error::StandbyServer`](crate::Error::StandbyServer),
    /// [`Error::TooManyLocks`](crate::Error::TooManyLocks). Nothing is held anywhere
    /// after an error.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future gives back whatever it took (at once, or with the statement's
    /// answer).
    pub async fn try_lock_all<I, K>(&self, keys: I) -> Result<Option<LockSet>>
    where
        I: IntoIterator<Item = K>,
        K: Into<LockKey>,
    {
        set::acquire_all(&self.inner, keys, LockMode::Exclusive, None).await
    }

    /// [`try_lock_all`](Self::try_lock_all), shared.
    ///
    /// # Errors
    ///
    /// As [`try_lock_all`](Self::try_lock_all).
    ///
    /// # Cancel safety
    ///
    /// As [`try_lock_all`](Self::try_lock_all).
    pub async fn try_lock_all_shared<I, K>(&self, keys: I) -> Result<Option<LockSet>>
    where
        I: IntoIterator<Item = K>,
        K: Into<LockKey>,
    {
        set::acquire_all(&self.inner, keys, LockMode::Shared, None).await
    }

    /// Waits at most `timeout` for every key exclusively, or takes none. First one
    /// all-or-nothing try; then the keys are waited for in sorted order on a session that
    /// holds nothing else, so that callers doing the same never deadlock. `None` when the
    /// time runs out, and nothing is held anywhere.
    ///
    /// # Errors
    ///
    /// As [`try_lock_all`](Self::try_lock_all), for the try and for the waiting session
    /// (taken from the pool: [`Error::Database`](crate::Error::Database) if it gives
    /// none), and [`Error::Deadlock`](crate::Error::Deadlock) if the server breaks a
    /// deadlock with sessions that take the keys in another order. Running out of time is
    /// `Ok(None)`. Nothing is held anywhere after an error.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future ends the waiting session and gives back whatever it took.
    pub async fn try_lock_all_for<I, K>(
        &self,
        keys: I,
        timeout: Duration,
    ) -> Result<Option<LockSet>>
    where
        I: IntoIterator<Item = K>,
        K: Into<LockKey>,
    {
        set::acquire_all(&self.inner, keys, LockMode::Exclusive, Some(timeout)).await
    }

    /// [`try_lock_all_for`](Self::try_lock_all_for), shared.
    ///
    /// # Errors
    ///
    /// As [`try_lock_all_for`](Self::try_lock_all_for).
    ///
    /// # Cancel safety
    ///
    /// As [`try_lock_all_for`](Self::try_lock_all_for).
    pub async fn try_lock_all_shared_for<I, K>(
        &self,
        keys: I,
        timeout: Duration,
    ) -> Result<Option<LockSet>>
    where
        I: IntoIterator<Item = K>,
        K: Into<LockKey>,
    {
        set::acquire_all(&self.inner, keys, LockMode::Shared, Some(timeout)).await
    }

    /// How many of this client's locks hold `key`, in any mode (its own record: the server
    /// sees one session per lane).
    pub fn holders(&self, key: impl Into<LockKey>) -> usize {
        self.inner.shared.local.holders(key.into())
    }

    /// How many of this client's locks wait for `key` behind another of its locks.
    pub fn waiters(&self, key: impl Into<LockKey>) -> usize {
        self.inner.shared.local.waiters(key.into())
    }

    /// Checks every session the client holds now, in one round trip (the lanes at once):
    /// a lane found gone reports its levels lost to every lock that held one, as their
    /// next operation or `lost()` would find it. `Ok` once every lane has answered or
    /// been found gone, and has sent what it had queued: on a client without its
    /// [`driver`](Self::driver), this is the call that releases the levels of dropped
    /// locks and of grants nobody wants any more (a try given up on its way), at the cost
    /// of a round trip or two more.
    ///
    /// # Errors
    ///
    /// None: a lane found gone is the answer, reported to its locks, not an error of the
    /// check.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is safe: the checks belong to the lanes, which apply their
    /// answers anyway.
    pub async fn check_sessions(&self) -> Result<()> {
        let mut awaited = Awaited {
            inner: &self.inner,
            ops: lock(&self.inner.table).check_lanes().into(),
        };
        // Then what the lanes still carry: an answer may queue a release (a grant nobody
        // wants), which needs one more round trip; a few rounds bound it under load.
        for _ in 0..FLUSH_ROUNDS {
            while let Some(op) = awaited.ops.pop_front() {
                // A lane found gone is the answer, not an error of the check.
                let _ = self.inner.complete(op).await;
            }
            awaited.ops = lock(&self.inner.table).join_pending().into();
            if awaited.ops.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// How many server sessions the client holds right now: its open lanes and its
    /// waiting sessions.
    pub fn sessions(&self) -> usize {
        lock(&self.inner.table).sessions()
    }

    /// The client's background work, as a future for the application to spawn (as
    /// tokio-postgres does with its `Connection`): it sends the releases of dropped locks
    /// at once and gives idle lanes back to the pool. It ends when the client and every
    /// lock and set it made are dropped.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let client = pglock::LockClient::new(&pool);
    /// tokio::spawn(client.driver());
    /// # }
    /// ```
    ///
    /// On smol and async-std, detach the task (`smol::spawn(client.driver()).detach()`):
    /// there a task whose handle is dropped is cancelled.
    pub fn driver(&self) -> impl Future<Output = ()> + Send + 'static {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let mut retirement: Option<Pin<Box<timer::Sleep>>> = None;
        std::future::poll_fn(move |cx| {
            let Some(inner) = weak.upgrade() else {
                return Poll::Ready(());
            };
            inner.wakers.listen(cx.waker());
            let (landed, next) = {
                let mut table = lock(&inner.table);
                let landed = inner.drive(&mut table, cx.waker());
                table.retire_idle(inner.idle_timeout);
                let retired = inner.drive(&mut table, cx.waker());
                (landed || retired, table.next_retirement(inner.idle_timeout))
            };
            inner.landed(landed);
            // A timer that wakes this task when a lane may be given back.
            if retirement.as_ref().map(|sleep| sleep.deadline()) != next {
                retirement = next.map(|at| Box::pin(timer::sleep_until(at)));
            }
            if let Some(sleep) = retirement.as_mut()
                && sleep.as_mut().poll(cx).is_ready()
            {
                retirement = None;
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
    }
}

/// How many times [`LockClient::check_sessions`] waits for what the lanes carry: a grant
/// nobody wants queues its release, and a release queues nothing.
const FLUSH_ROUNDS: usize = 3;

impl Inner {
    /// Moves the lanes on, polling them for the task of `waker`; whether anything
    /// landed (then call [`landed`](Self::landed) once the table is unlocked).
    fn drive(&self, table: &mut Table, waker: &Waker) -> bool {
        table.drive(&self.shared, waker)
    }

    /// After a drive that landed answers: a lane may have gone idle (for the driver to
    /// give back) or a key settled (for a set waiting for it): the listeners look again.
    /// The answers themselves woke the tasks that wait for them.
    fn landed(&self, landed: bool) {
        if landed {
            self.wakers.wake_listeners();
        }
    }

    /// Waits for the answer of `op`, driving the lanes meanwhile. Dropping the future
    /// leaves the operation to the lane.
    async fn complete(&self, op: OpId) -> Result<bool> {
        let mut guard = Pending {
            inner: self,
            op,
            done: false,
            ticket: None,
        };
        std::future::poll_fn(|cx| {
            guard.inner.wakers.wait(&mut guard.ticket, cx.waker());
            let mut table = lock(&guard.inner.table);
            table.watch(guard.op, cx.waker());
            let landed = guard.inner.drive(&mut table, cx.waker());
            let outcome = table.take(guard.op);
            let busy = table.busy();
            drop(table);
            guard.inner.landed(landed);
            match outcome {
                Some(outcome) => {
                    guard.done = true;
                    guard.inner.wakers.leave(guard.ticket.take(), busy);
                    Poll::Ready(outcome)
                }
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// Operations a task will wait for, one after the other; those it no longer waits for
/// when it goes (or stops) are left to their lanes.
struct Awaited<'a> {
    inner: &'a Inner,
    ops: std::collections::VecDeque<OpId>,
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        let mut table = lock(&self.inner.table);
        self.ops.drain(..).for_each(|op| table.abandon(op));
    }
}

/// An operation some task waits for; if the task goes, the lane applies the answer
/// without it.
struct Pending<'a> {
    inner: &'a Inner,
    op: OpId,
    done: bool,
    /// Under which the task waits in [`Wakers`].
    ticket: Option<u64>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            let busy = {
                let mut table = lock(&self.inner.table);
                table.abandon(self.op);
                table.busy()
            };
            self.inner.wakers.leave(self.ticket.take(), busy);
        }
    }
}

#[async_trait::async_trait]
impl LockProvider for LockClient {
    async fn new_lock(&self, key: LockKey) -> Result<Box<dyn DistributedLock>> {
        Ok(Box::new(self.lock(key)))
    }
}

impl std::fmt::Debug for LockClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockClient")
            .field("sessions", &self.sessions())
            .finish_non_exhaustive()
    }
}

//! [`ClientLock`]: one key, a session of its own as far as the client's other locks are
//! concerned, and a share of the client's server levels.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;

use super::Inner;
use super::table::{Backed, OpId, Table, WaitStart, lock};
use crate::levels::Levels;
use crate::memory::MemoryLock;
use crate::{AdvisoryLock, DistributedLock, Error, LockKey, LockMode, Result, timer, trace};

/// A lock on one key made by a [`LockClient`](super::LockClient); see the
/// [module docs](super).
///
/// It behaves as a session of its own: two `ClientLock`s on one key exclude each other
/// exactly as two PostgreSQL sessions would, although they may share a server session.
/// Every method is [`DistributedLock`]'s, with the same semantics; its loss rules
/// included. Dropping it releases its levels (with the client's driver running, at once;
/// otherwise with the next operation on their lane).
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
/// let client = pglock::LockClient::new(&pool);
/// let mut a = client.lock(7);
/// let mut b = client.lock(7);
/// assert!(a.try_lock().await?);
/// assert!(!b.try_lock().await?); // a holds it, although both may share a session
/// a.unlock().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// Besides the errors every [`DistributedLock`] returns ([`Error::Closed`],
/// [`Error::NotHeld`], [`Error::LockLost`], [`Error::Deadlock`]: see
/// [Errors](DistributedLock#errors); a deadlock is found among the client's own locks
/// as [`MemoryLocks`](crate::memory::MemoryLocks) finds one, or by the server), the
/// sessions it runs on can fail it. A lane that fails takes its levels with it: every
/// lock that held one reports [`Error::LockLost`]; other operations on it get:
///
/// - [`Error::Database`]: a statement's error (its message, where the statement carried
///   several locks' operations), or a pool that gives no connection.
/// - [`Error::Disconnected`]: the lane's session was found gone (a try runs once more on
///   a new session first).
/// - [`Error::Unresponsive`]: a statement went unanswered for
///   [`operation_timeout`](crate::LockOptions::operation_timeout) (a timed wait: its
///   timeout plus that), or a loss check for
///   [`check_timeout`](crate::LockOptions::check_timeout); the session was ended.
/// - [`Error::SessionNotPinned`], [`Error::StandbyServer`], [`Error::TooManyLocks`]: as
///   for an [`AdvisoryLock`'s](crate::AdvisoryLock#errors) session; nothing was taken.
///
/// Lanes are owned pool connections: [`Error::Interrupted`] never occurs.
///
/// # Cancel safety
///
/// Any method's future may be dropped at any point, and only that call is given up:
/// levels the lock held stay held. A lane's statement belongs to the lane, not to the
/// call, so it runs on and its answer is applied: a grant nobody wants any more is
/// released in the lane's next statement, and a release (an [`unlock`](Self::unlock) or
/// [`close`](Self::close) polled once) goes out all the same. A local wait leaves its
/// queue; a wait on a session of its own ends that session, and no other lock's.
pub struct ClientLock {
    inner: Arc<Inner>,
    local: MemoryLock,
}

/// How long an acquisition may wait.
#[derive(Debug, Clone, Copy)]
enum Wait {
    No,
    Until(Instant),
    Forever,
}

impl Wait {
    fn remaining(self) -> Option<Duration> {
        match self {
            Wait::No => Some(Duration::ZERO),
            Wait::Until(deadline) => Some(deadline.saturating_duration_since(Instant::now())),
            Wait::Forever => None,
        }
    }

    fn may_wait(self) -> bool {
        self.remaining() != Some(Duration::ZERO)
    }
}

/// How long a lock holding a key in one mode waits between tries for the other.
const RETRY: Duration = Duration::from_millis(20);

impl ClientLock {
    pub(super) fn new(inner: Arc<Inner>, key: LockKey) -> ClientLock {
        let local = inner.shared.local.lock(key);
        ClientLock { inner, local }
    }

    /// The key this lock is for.
    pub fn key(&self) -> LockKey {
        self.local.key()
    }

    /// Waits until the exclusive level is granted, then holds one more level.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::lock`], and the [sessions' errors](Self#errors).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future gives up the wait: a local wait leaves its queue, a wait on
    /// the server ends its own session (no other lock's), and a grant that raced the drop
    /// is released. Levels held before stay held ([Cancel safety](Self#cancel-safety)).
    pub async fn lock(&mut self) -> Result<()> {
        self.acquire(LockMode::Exclusive, Wait::Forever)
            .await
            .map(drop)
    }

    /// Waits until the shared level is granted, then holds one more level.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::lock_shared`], and the [sessions' errors](Self#errors).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn lock_shared(&mut self) -> Result<()> {
        self.acquire(LockMode::Shared, Wait::Forever)
            .await
            .map(drop)
    }

    /// Takes one exclusive level if that is possible at once.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::try_lock`], and the [sessions' errors](Self#errors).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn try_lock(&mut self) -> Result<bool> {
        self.acquire(LockMode::Exclusive, Wait::No).await
    }

    /// Takes one shared level if that is possible at once.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::try_lock_shared`], and the [sessions' errors](Self#errors).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn try_lock_shared(&mut self) -> Result<bool> {
        self.acquire(LockMode::Shared, Wait::No).await
    }

    /// Waits at most `timeout` for one exclusive level: `Ok(false)` when the time is up.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::try_lock_for`], and the [sessions' errors](Self#errors).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool> {
        self.acquire(LockMode::Exclusive, deadline(timeout)).await
    }

    /// Waits at most `timeout` for one shared level: `Ok(false)` when the time is up.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::try_lock_shared_for`], and the [sessions' errors](Self#errors).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool> {
        self.acquire(LockMode::Shared, deadline(timeout)).await
    }

    /// Releases one exclusive level.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::unlock`]: [`Error::NotHeld`] with none,
    /// [`Error::LockLost`] if the level it pairs with was lost (also when its lane is
    /// found gone as it releases); otherwise the [sessions' errors](Self#errors).
    ///
    /// # Cancel safety
    ///
    /// Once polled, the level is released locally and the lane sends the server's release
    /// whether or not the future is kept.
    pub async fn unlock(&mut self) -> Result<()> {
        self.release(LockMode::Exclusive).await
    }

    /// Releases one shared level.
    ///
    /// # Errors
    ///
    /// As [`unlock`](Self::unlock), for the shared mode.
    ///
    /// # Cancel safety
    ///
    /// As [`unlock`](Self::unlock).
    pub async fn unlock_shared(&mut self) -> Result<()> {
        self.release(LockMode::Shared).await
    }

    /// Releases every level; afterwards every operation is [`Error::Closed`].
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if lost levels were unaccounted for, or a release found its
    /// lane gone (it closes all the same); a release that fails otherwise returns the
    /// [sessions' errors](Self#errors).
    ///
    /// # Cancel safety
    ///
    /// Once polled, the lock is closed and the lanes send its releases whether or not the
    /// future is kept.
    pub async fn close(&mut self) -> Result<()> {
        let held = self.held_modes();
        let closed = self.local.close().await;
        let releases: Vec<OpId> = {
            let mut table = lock(&self.inner.table);
            held.into_iter()
                .filter_map(|mode| table.unback(self.key(), mode))
                .collect()
        };
        let mut released = Ok(());
        for op in releases {
            if let Err(err) = self.inner.complete(op).await {
                released = Err(err);
            }
        }
        closed.and(released)
    }

    /// Whether this lock holds the key in any mode: its own record, confirmed by its
    /// lane's session being alive and the same (only the client changes its levels
    /// there).
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] while lost levels are unaccounted for (also those the check
    /// finds lost); [`Error::Closed`] after [`close`](Self::close). A check that fails
    /// otherwise is not this call's error: its lane reports it to the operations that
    /// need the lane.
    ///
    /// # Cancel safety
    ///
    /// Dropping it is safe: the check belongs to the lane.
    pub async fn is_held(&mut self) -> Result<bool> {
        if !self.local.is_held().await? {
            return Ok(false);
        }
        let check = lock(&self.inner.table).check_alive(self.key(), Duration::ZERO);
        if let Some(op) = check {
            // A lane that died took the level with it: the local record then says so.
            let _ = self.inner.complete(op).await;
        }
        self.local.is_held().await
    }

    /// Resolves when the levels this lock holds are lost, with the reason; see
    /// [`DistributedLock::lost`]. The check is its lane's: one statement per lane and
    /// [`lost_check_interval`](crate::LockOptions::lost_check_interval), shared by every
    /// `lost()` on that lane (any statement the lane answers counts). A check unanswered
    /// for [`check_timeout`](crate::LockOptions::check_timeout) ends the lane: its levels
    /// are lost.
    ///
    /// # Errors
    ///
    /// The output is the error, as [`DistributedLock::lost`] says: [`Error::LockLost`],
    /// or at once [`Error::NotHeld`] (nothing held) or [`Error::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is safe at any point: the checks belong to the lane.
    pub async fn lost(&mut self) -> Error {
        let interval = self.inner.shared.options.get_lost_check_interval();
        let check_timeout = self.inner.shared.options.get_check_timeout();
        loop {
            match self.local.is_held().await {
                Err(err) => return err,
                Ok(false) => {
                    return Error::NotHeld {
                        key: self.key(),
                        mode: LockMode::Exclusive,
                    };
                }
                Ok(true) => {}
            }
            let key = self.key();
            let inner = Arc::clone(&self.inner);
            let check = async move {
                timer::sleep(interval).await;
                let op = lock(&inner.table).check_alive(key, interval);
                let Some(op) = op else {
                    return;
                };
                if timer::timeout(check_timeout, inner.complete(op))
                    .await
                    .is_none()
                {
                    lock(&inner.table).abort_lane(key, &inner.shared);
                }
            };
            let lost = self.local.lost();
            let mut lost = std::pin::pin!(lost);
            let mut check = std::pin::pin!(check);
            let resolved = std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(err) = lost.as_mut().poll(cx) {
                    return std::task::Poll::Ready(Some(err));
                }
                check.as_mut().poll(cx).map(|()| None)
            })
            .await;
            if let Some(err) = resolved {
                return err;
            }
        }
    }

    /// The modes this lock holds a level of.
    fn held_modes(&self) -> Vec<LockMode> {
        [LockMode::Exclusive, LockMode::Shared]
            .into_iter()
            .filter(|mode| self.local.holds(*mode))
            .collect()
    }

    async fn acquire(&mut self, mode: LockMode, wait: Wait) -> Result<bool> {
        let kind = match wait {
            Wait::No => "try",
            Wait::Until(_) => "timed",
            Wait::Forever => "blocking",
        };
        trace::acquisition(self.key(), mode, kind, self.acquire_traced(mode, wait)).await
    }

    async fn acquire_traced(&mut self, mode: LockMode, wait: Wait) -> Result<bool> {
        loop {
            let already = self.local.holds(mode);
            let granted = match (wait.remaining(), mode) {
                (Some(Duration::ZERO), _) => self.local.try_now(mode)?,
                (Some(left), LockMode::Exclusive) => self.local.try_lock_for(left).await?,
                (Some(left), LockMode::Shared) => self.local.try_lock_shared_for(left).await?,
                (None, LockMode::Exclusive) => self.local.lock().await.map(|()| true)?,
                (None, LockMode::Shared) => self.local.lock_shared().await.map(|()| true)?,
            };
            // Refused locally, or a level stacked on one this lock holds: no round trip.
            if !granted || already {
                return Ok(granted);
            }
            let mut reservation = Reservation {
                lock: &mut *self,
                mode,
                kept: false,
                lost_unbacked: false,
            };
            let outcome = reservation.back(wait).await;
            reservation.kept = matches!(outcome, Ok(true));
            if !reservation.lost_unbacked {
                return outcome;
            }
            // The local grant went with a lane before the server's level was asked for:
            // it was never the caller's, so its loss is accounted for silently (as the
            // reservation is dropped) and the acquisition starts again.
        }
    }

    async fn release(&mut self, mode: LockMode) -> Result<()> {
        self.local.release(mode)?;
        if self.local.holds(mode) {
            return Ok(()); // a stacked level: the client's server level stays
        }
        let op = lock(&self.inner.table).unback(self.key(), mode);
        let released = match op {
            Some(op) => match self.inner.complete(op).await? {
                true => Ok(()),
                false => Err(Error::LockLost { key: self.key() }),
            },
            None => Ok(()),
        };
        if released.is_ok() {
            trace::released(self.key(), Levels::default().with(mode));
        }
        released
    }
}

fn deadline(timeout: Duration) -> Wait {
    match Instant::now().checked_add(timeout) {
        Some(deadline) if !timeout.is_zero() => Wait::Until(deadline),
        Some(_) => Wait::No,
        None => Wait::Forever,
    }
}

/// A level this lock holds locally while it asks the server for it. If the server says
/// no (or the future is dropped), the local level is given back, and with it the
/// client's share of the server level.
struct Reservation<'a> {
    lock: &'a mut ClientLock,
    mode: LockMode,
    kept: bool,
    /// The local level was lost with a lane before the server's was asked for (first, or
    /// again after a refusal).
    lost_unbacked: bool,
}

impl Reservation<'_> {
    async fn back(&mut self, wait: Wait) -> Result<bool> {
        let key = self.lock.key();
        let inner = Arc::clone(&self.lock.inner);
        let mode = self.mode;
        let Some(backed) = self.request(|table| table.back(key, mode, wait.may_wait())) else {
            return Ok(false);
        };
        let mut outcome = answer(&inner, backed, wait).await;
        loop {
            match outcome {
                Ok(false) if wait.may_wait() => {}
                outcome => return outcome,
            }
            if lock(&inner.table).holds_other_mode(key, mode) {
                // Held in the other mode on a lane: a wait there would stall the lane.
                timer::sleep(RETRY.min(wait.remaining().unwrap_or(RETRY))).await;
                let retried = self.request(|table| table.retry(key, mode, wait.may_wait()));
                let Some(backed) = retried else {
                    return Ok(false);
                };
                outcome = answer(&inner, backed, wait).await;
                continue;
            }
            let Some(start) = self.request(|table| table.wait_begin(key, mode)) else {
                return Ok(false);
            };
            outcome = match start {
                WaitStart::Shared => Ok(true),
                WaitStart::Join(op) => inner.complete(op).await,
                WaitStart::JoinWait(op) => join_wait(&inner, op, wait).await,
                WaitStart::Start(op) => {
                    // Boxed: a rare path, whose future (a whole AdvisoryLock's) would
                    // otherwise weigh on every acquisition's.
                    let waited = Box::pin(wait_alone(&inner, key, mode, wait, op)).await;
                    match waited {
                        // Timed out: nothing more to wait for.
                        Ok(false) => return Ok(false),
                        waited => waited,
                    }
                }
            };
        }
    }

    /// Asks the client's table for the server level, unless the local level went with a
    /// lane meanwhile (`None`, and `lost_unbacked` set). A lane loss takes local levels
    /// under the table's lock: checked under it, a lost level is never backed by a fresh
    /// server level (the loss, once accounted for, would leave that level held by nobody,
    /// and the next lock on the key would answer for it).
    fn request<T>(&mut self, ask: impl FnOnce(&mut Table) -> T) -> Option<T> {
        let mut table = lock(&self.lock.inner.table);
        if !self.lock.local.holds(self.mode) {
            self.lost_unbacked = true;
            return None;
        }
        Some(ask(&mut table))
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let key = self.lock.key();
        // A level lost meanwhile went with its lane, and the client's count of holders
        // with it: the key's count now (if any) is other locks', not ours to take from.
        if self.lock.local.release(self.mode).is_ok() {
            let mut table = lock(&self.lock.inner.table);
            if let Some(op) = table.unback(key, self.mode) {
                table.abandon(op);
            }
        }
        self.lock.inner.wakers.nudge();
    }
}

/// What a request for the server level comes to, once answered.
async fn answer(inner: &Inner, backed: Backed, wait: Wait) -> Result<bool> {
    match backed {
        Backed::Shared => Ok(true),
        Backed::Refused => Ok(false),
        Backed::Pending(op) => inner.complete(op).await,
        Backed::Waiting(op) => join_wait(inner, op, wait).await,
    }
}

/// Shares the outcome of another lock's wait `op` for as long as `wait` allows:
/// `Ok(false)` when the time is up first (the wait goes on for the others).
async fn join_wait(inner: &Inner, op: OpId, wait: Wait) -> Result<bool> {
    match wait.remaining() {
        None => inner.complete(op).await,
        Some(left) => timer::timeout(left, inner.complete(op))
            .await
            .unwrap_or(Ok(false)),
    }
}

/// Waits for `mode` of `key` on a session of its own (taken from the pool, holding
/// nothing else), answering `op` for the locks that join. Granted, the session becomes an
/// extra lane for the key; timed out, it goes back to the pool; dropped, it is ended.
async fn wait_alone(
    inner: &Inner,
    key: LockKey,
    mode: LockMode,
    wait: Wait,
    op: OpId,
) -> Result<bool> {
    let mut guard = Alone {
        inner,
        key,
        mode,
        op,
        counted: false,
        ended: false,
    };
    let conn: PoolConnection<Postgres> = inner.shared.pool.acquire().await?;
    lock(&inner.table).waiting += 1;
    guard.counted = true;
    let mut waiting =
        AdvisoryLock::with_connection(conn, key).with_options(inner.shared.options.clone());
    let granted = match (wait.remaining(), mode) {
        (None, LockMode::Exclusive) => waiting.lock().await.map(|()| true),
        (None, LockMode::Shared) => waiting.lock_shared().await.map(|()| true),
        (Some(left), LockMode::Exclusive) => waiting.try_lock_for(left).await,
        (Some(left), LockMode::Shared) => waiting.try_lock_shared_for(left).await,
    };
    let session = match granted {
        Ok(true) => Some(waiting.into_session()),
        Ok(false) => {
            let _ = waiting.close().await; // back to the pool, clean
            None
        }
        Err(_) => None,
    };
    let held = session.is_some();
    lock(&inner.table).wait_end(key, mode, op, session);
    guard.ended = true;
    inner.wakers.nudge();
    granted.map(|_| held)
}

/// Keeps the client's record right if a wait on a session of its own is dropped.
struct Alone<'a> {
    inner: &'a Inner,
    key: LockKey,
    mode: LockMode,
    op: OpId,
    counted: bool,
    ended: bool,
}

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        let mut table = lock(&self.inner.table);
        if self.counted {
            table.waiting = table.waiting.saturating_sub(1);
        }
        if !self.ended {
            table.wait_end(self.key, self.mode, self.op, None);
        }
        drop(table);
        self.inner.wakers.nudge();
    }
}

impl Drop for ClientLock {
    fn drop(&mut self) {
        let held = self.held_modes();
        self.local.end();
        let mut table = lock(&self.inner.table);
        for mode in held {
            if let Some(op) = table.unback(self.key(), mode) {
                table.abandon(op);
            }
        }
        drop(table);
        self.inner.wakers.nudge();
    }
}

impl std::fmt::Debug for ClientLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLock")
            .field("key", &self.key())
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl DistributedLock for ClientLock {
    fn key(&self) -> LockKey {
        ClientLock::key(self)
    }

    async fn lock(&mut self) -> Result<()> {
        ClientLock::lock(self).await
    }

    async fn lock_shared(&mut self) -> Result<()> {
        ClientLock::lock_shared(self).await
    }

    async fn try_lock(&mut self) -> Result<bool> {
        ClientLock::try_lock(self).await
    }

    async fn try_lock_shared(&mut self) -> Result<bool> {
        ClientLock::try_lock_shared(self).await
    }

    async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool> {
        ClientLock::try_lock_for(self, timeout).await
    }

    async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool> {
        ClientLock::try_lock_shared_for(self, timeout).await
    }

    async fn unlock(&mut self) -> Result<()> {
        ClientLock::unlock(self).await
    }

    async fn unlock_shared(&mut self) -> Result<()> {
        ClientLock::unlock_shared(self).await
    }

    async fn close(&mut self) -> Result<()> {
        ClientLock::close(self).await
    }

    async fn is_held(&mut self) -> Result<bool> {
        ClientLock::is_held(self).await
    }

    async fn lost(&mut self) -> Error {
        ClientLock::lost(self).await
    }
}

//! [`AdvisoryLock`]: one key, one PostgreSQL session, and a record of the levels it holds.
//!
//! # Advisory locks belong to sessions
//!
//! PostgreSQL ties a session-level advisory lock to the *connection* that took it, not to
//! a transaction or a task. Four facts follow, and they shape this module:
//!
//! - A pooled connection that goes back to the pool keeps its locks. The next borrower
//!   of that connection then "holds" them, and nobody else can get them until the
//!   connection closes. So a lock works on one dedicated session, and never returns a
//!   session that holds levels (or is in the middle of a statement) to the pool.
//! - Levels stack: `n` successful `pg_advisory_lock` calls need `n` `pg_advisory_unlock`
//!   calls. Shared and exclusive levels are counted apart.
//! - sqlx cannot cancel a statement. A dropped `SELECT pg_advisory_lock(...)` keeps
//!   waiting on the server, may be granted later, and the connection's next use waits for
//!   it. So a cancelled acquisition must end the session, not just the future.
//! - Behind a transaction-pooling proxy (PgBouncer) one client connection talks to
//!   several server sessions. So every statement that changes levels acts only on the
//!   server session the lock learned first, and reports where it ran.
//!
//! The session — its connection, its state machine, what it learned, how a statement is
//! bounded and how it ends — is [`crate::session`]'s. A lock keeps its key and its counts:
//! the levels it holds, the levels a dropped guard still owes, and the levels it lost and
//! has not reported yet. Every public method checks, sends at most one statement in the
//! common path, and updates the counts from the server's answer: the server is the truth,
//! the counts our record of it.
//!
//! # Losing levels
//!
//! The lock records the session generation its levels live in. When the session ends
//! (an error, a silent network, a cancelled statement, a terminated backend) the levels
//! become *lost*, and stay reported until accounted for, as [`DistributedLock`] states:
//! each unlock that pairs with a lost level is [`Error::LockLost`]; `is_held`, `lost` and
//! `close` are `LockLost` while any is unaccounted for; new acquisitions work, on a fresh
//! session for locks from [`AdvisoryLock::new`] (an acquisition that finds its session
//! gone tries once more on a new one, since nothing it did can have survived).
//!
//! A lock dropped while it holds levels, or with a statement in flight, or after it set
//! its session up (see [`LockOptions`]), closes an owned pool connection instead of
//! returning it: close a lock to hand its connection back to the pool for reuse. A
//! borrowed connection stays with its owner, and so do the levels on it (the owner's
//! session, the owner's locks).

use std::fmt;
use std::time::{Duration, Instant};

use sqlx::Acquire;
use sqlx::pool::PoolConnection;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArguments, PgPool, Postgres};

use crate::levels::Levels;
use crate::session::{self, Effect, Reconnect, Session};
use crate::sql::{self, KeyedSql, add};
use crate::{
    DistributedLock, Error, LockConnection, LockKey, LockMode, LockOptions, Result, timer, trace,
};

/// A PostgreSQL session-level advisory lock on one key, on one dedicated session.
///
/// `C` is the connection the lock works on: by default an owned [`PoolConnection`] taken
/// from a pool by [`AdvisoryLock::new`], or any [`LockConnection`] through
/// [`AdvisoryLock::with_connection`] and [`AdvisoryLock::from_acquire`].
///
/// ```no_run
/// use pglock::AdvisoryLock;
///
/// # async fn example() -> pglock::Result<()> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// let mut lock = AdvisoryLock::new(&pool, pglock::LockKey::from_name("nightly-report")).await?;
///
/// lock.lock().await?;          // waits for the key
/// // ... the work only one process may do at a time ...
/// lock.unlock().await?;        // one level, as many times as you locked
///
/// lock.close().await?;         // releases anything left and returns the connection
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// Besides the errors every [`DistributedLock`] returns ([`Error::Closed`],
/// [`Error::NotHeld`], [`Error::LockLost`], [`Error::Deadlock`]: see
/// [Errors](DistributedLock#errors)), the lock's session can fail it:
///
/// - [`Error::Database`]: the error of a statement, as sqlx reports it. Among them a
///   session found gone (the call that finds it; a lock from [`new`](Self::new) then
///   tries an acquisition once more on a new session first), and a pool that gives no
///   new connection.
/// - [`Error::Disconnected`]: the session ended earlier (it failed, or a cut-off
///   statement ended it) and the lock cannot open another: a lock made with
///   [`with_connection`](Self::with_connection) or [`from_acquire`](Self::from_acquire).
///   A lock from [`new`](Self::new) opens a new session from its pool instead.
/// - [`Error::Interrupted`]: on a borrowed connection, an earlier call was dropped while
///   its statement could change levels (see [Cancel safety](#cancel-safety)).
/// - [`Error::Unresponsive`]: a statement went unanswered for
///   [`operation_timeout`](LockOptions::operation_timeout) (a timed wait: its timeout
///   plus that; a blocking wait has no bound), and the session was ended. Levels held
///   were lost with it: then [`Error::LockLost`].
/// - [`Error::SessionNotPinned`]: the statements ran on two server sessions (a
///   transaction-pooling proxy); the lock is unusable from then on.
/// - [`Error::StandbyServer`]: the session's first statement found a hot standby;
///   nothing was taken.
/// - [`Error::TooManyLocks`]: the server's lock table is full; nothing was taken.
///
/// A call that fails after finding levels lost on the way reports [`Error::LockLost`]
/// rather than its own error (but for `SessionNotPinned`, which says why).
///
/// # Cancel safety
///
/// sqlx cannot cancel a statement: a dropped `pg_advisory_lock` keeps waiting on the
/// server, and may be granted later. So a future dropped while a statement that may change
/// levels is in flight (an acquisition, a release, or the release a dropped guard owes,
/// which any call sends first) ends the session at once: an owned connection is closed,
/// not returned to its pool, so the server frees what it held or waited for. The levels
/// the lock held are then lost, and reported as [`DistributedLock`] says; a lock from
/// [`new`](Self::new) opens a new session with its next call, others return
/// [`Error::Disconnected`]. A dropped read ([`is_held`](Self::is_held), the checks of
/// [`lost`](Self::lost)) ends nothing: its answer is read before the next statement.
///
/// On a borrowed connection the lock cannot end the session, which may still be waiting
/// for or holding the key: every later call returns [`Error::Interrupted`], and the
/// connection's owner frees the key by closing the connection. Where a wait may be given
/// up on a borrowed connection, use [`try_lock_for`](Self::try_lock_for).
pub struct AdvisoryLock<C: LockConnection = PoolConnection<Postgres>> {
    key: LockKey,
    session: Session<C>,
    /// Levels held on the session of generation `generation`.
    held: Levels,
    /// Of `held`, the levels of dropped guards, released before the next operation.
    deferred: Levels,
    /// Levels lost with an earlier session, not yet reported by an unlock or `close`.
    lost: Levels,
    generation: u64,
}

impl AdvisoryLock {
    /// Takes a dedicated connection from `pool` for a lock on `key`, as Go's `New` does.
    ///
    /// The connection is the lock's until [`close`](Self::close) or drop; size the pool
    /// for the locks you keep open at once. No statement is sent until the lock's first
    /// operation, which also sets the session up. If the lock is dropped holding levels,
    /// the connection is closed instead of returned to the pool, so the levels go with
    /// it. If the session is lost, the lock takes a new connection from the same pool.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the pool gives no connection (it is closed, or its
    /// `acquire_timeout` passed).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future takes nothing: a connection it was waiting for stays in the
    /// pool.
    pub async fn new(pool: &PgPool, key: impl Into<LockKey>) -> Result<Self> {
        let mut lock = Self::from_acquire(pool, key).await?;
        lock.session.set_reconnect(Reconnect {
            pool: pool.clone(),
            wrap: |conn| conn,
        });
        Ok(lock)
    }
}

#[async_trait::async_trait]
impl crate::LockProvider for PgPool {
    async fn new_lock(&self, key: LockKey) -> Result<Box<dyn DistributedLock>> {
        Ok(Box::new(AdvisoryLock::new(self, key).await?))
    }
}

impl<C: LockConnection> AdvisoryLock<C> {
    /// A lock on `key` over a connection the caller supplies.
    ///
    /// Owned connections (`PgConnection`, `PoolConnection<Postgres>`) are the lock's: a
    /// dirty drop closes them. Borrowed ones (`&mut PgConnection`, `&mut PoolConnection`,
    /// `&mut Transaction`) stay the caller's: if the lock is dropped holding levels, the
    /// levels stay with that session until it unlocks them or closes. Close the lock (or
    /// unlock every level) before you hand a borrowed pool connection back.
    ///
    /// A session lock taken inside a transaction outlives the transaction: commit and
    /// rollback do not release it.
    ///
    /// Sends nothing, and cannot fail: the first operation sets the session up.
    pub fn with_connection(conn: C, key: impl Into<LockKey>) -> Self {
        AdvisoryLock {
            key: key.into(),
            session: Session::new(conn),
            held: Levels::default(),
            deferred: Levels::default(),
            lost: Levels::default(),
            generation: 0,
        }
    }

    /// A lock on `key` over a connection from anything that implements [`sqlx::Acquire`]
    /// for Postgres: `&PgPool` (a dedicated pool connection), `&mut PgConnection`,
    /// `&mut PoolConnection<Postgres>` or `&mut Transaction`.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> pglock::Result<()> {
    /// let mut conn = pool.acquire().await?;
    /// let mut lock = pglock::AdvisoryLock::from_acquire(&mut conn, (7, 42)).await?;
    /// assert!(lock.try_lock().await?);
    /// lock.close().await?; // unlocks, and lets go of the borrow
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if `source` gives no connection (a pool that is closed, or
    /// whose `acquire_timeout` passed; a `&mut` connection or transaction always gives
    /// one).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future takes nothing, as [`new`](Self::new).
    pub async fn from_acquire<'a, A>(source: A, key: impl Into<LockKey>) -> Result<Self>
    where
        A: Acquire<'a, Database = Postgres, Connection = C>,
    {
        let key = key.into();
        let conn = source.acquire().await?;
        Ok(Self::with_connection(conn, key))
    }

    /// Replaces the lock's [`LockOptions`]. Session settings take effect from the next
    /// session the lock sets up (with its first statement). Sends nothing, and cannot
    /// fail.
    pub fn with_options(mut self, options: LockOptions) -> Self {
        self.session.set_options(options);
        self
    }

    /// The lock's options.
    pub fn options(&self) -> &LockOptions {
        self.session.options()
    }

    /// The key this lock is for.
    pub fn key(&self) -> LockKey {
        self.key
    }

    /// How many exclusive levels this lock holds, by its own record (none once its
    /// session has ended).
    pub fn exclusive_levels(&self) -> u32 {
        self.live().exclusive
    }

    /// How many shared levels this lock holds, by its own record (none once its session
    /// has ended).
    pub fn shared_levels(&self) -> u32 {
        self.live().shared
    }

    /// The levels held on the current session: none if it ended since they were taken.
    fn live(&self) -> Levels {
        match self.session.generation() == self.generation {
            true => self.held,
            false => Levels::default(),
        }
    }

    /// Hands the session on with the levels it holds, leaving this lock closed: a
    /// `LockClient`'s granted wait becomes one of its lanes.
    pub(crate) fn into_session(mut self) -> Session<C> {
        self.held = Levels::default();
        self.session.take()
    }

    /// Whether [`close`](Self::close) has run.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// Waits until the exclusive level is granted (`pg_advisory_lock`), then holds one
    /// more level.
    ///
    /// The wait has no bound; use [`try_lock_for`](Self::try_lock_for) for one.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::lock`], and the [session's errors](Self#errors). A lock from
    /// [`new`](Self::new) whose session is found gone tries once more on a new one; but a
    /// wait whose session dies while the lock holds levels ends with
    /// [`Error::LockLost`]: the loss happened during the call.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future ends an owned session at once (its connection is closed, not
    /// returned to the pool), so a cancelled wait is never granted behind the caller's
    /// back; levels the lock held before are then lost, and reported as the
    /// [`DistributedLock`] docs say. On a borrowed connection the lock cannot end the
    /// session: its next call fails with [`Error::Interrupted`]. See
    /// [Cancel safety](Self#cancel-safety).
    pub async fn lock(&mut self) -> Result<()> {
        self.acquire(LockMode::Exclusive, Wait::Forever)
            .await
            .map(drop)
    }

    /// Waits until the shared level is granted (`pg_advisory_lock_shared`), then holds
    /// one more level.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn lock_shared(&mut self) -> Result<()> {
        self.acquire(LockMode::Shared, Wait::Forever)
            .await
            .map(drop)
    }

    /// Takes one exclusive level if no other session holds the key; `Ok(false)` otherwise.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::try_lock`], and the [session's errors](Self#errors). A lock
    /// from [`new`](Self::new) whose session is found gone tries once more on a new one.
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn try_lock(&mut self) -> Result<bool> {
        self.acquire(LockMode::Exclusive, Wait::No).await
    }

    /// Takes one shared level if no other session holds the key exclusively; `Ok(false)`
    /// otherwise.
    ///
    /// # Errors
    ///
    /// As [`try_lock`](Self::try_lock).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn try_lock_shared(&mut self) -> Result<bool> {
        self.acquire(LockMode::Shared, Wait::No).await
    }

    /// Waits at most `timeout` for one exclusive level: `Ok(true)` once granted,
    /// `Ok(false)` when the time is up.
    ///
    /// The bound is kept by the server (`lock_timeout`, set for this one statement in the
    /// same round trip), so a slow or cancelled client cannot stretch it. The session's
    /// own `lock_timeout` and `statement_timeout` read the same afterwards; a session
    /// `statement_timeout` shorter than the wait is lifted for it (one more statement on
    /// each side, only then). If the lock is granted just as the timeout fires, the lock
    /// asks the server and reports what is true (a second round trip, only on a timeout:
    /// PostgreSQL ends a timed-out wait with an error that no statement can catch, and
    /// may have granted the level just before). A zero timeout is
    /// [`try_lock`](Self::try_lock).
    ///
    /// On a borrowed connection inside a transaction block, a timeout aborts that
    /// transaction (PostgreSQL fails the statement); use the transaction-scoped locks there.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock); running out of time is `Ok(false)`. The statement is
    /// bounded by `timeout` plus [`operation_timeout`](LockOptions::operation_timeout):
    /// past that, [`Error::Unresponsive`]. In a transaction block on a borrowed
    /// connection, a timeout leaves the transaction aborted, and the check after it fails
    /// with [`Error::Database`].
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock): the server's `lock_timeout` bounds the wait, but a dropped
    /// future still ends an owned session at once.
    pub async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool> {
        self.acquire(LockMode::Exclusive, Wait::For(timeout)).await
    }

    /// [`try_lock_for`](Self::try_lock_for) for one shared level.
    ///
    /// # Errors
    ///
    /// As [`try_lock_for`](Self::try_lock_for).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Self::lock).
    pub async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool> {
        self.acquire(LockMode::Shared, Wait::For(timeout)).await
    }

    /// Releases one exclusive level.
    ///
    /// # Errors
    ///
    /// As [`DistributedLock::unlock`]: with none held, [`Error::NotHeld`], and nothing
    /// changes; if the level it pairs with was lost, [`Error::LockLost`]. A release that
    /// finds the session gone or ends it (say, unanswered) is [`Error::LockLost`] too:
    /// the levels went with the session. With nothing left to release on a lock that can
    /// never use a session again: [`Error::Closed`], [`Error::Interrupted`] or
    /// [`Error::SessionNotPinned`] rather than `NotHeld`. Otherwise the
    /// [session's errors](Self#errors).
    ///
    /// # Cancel safety
    ///
    /// Cut off while its statement runs, it ends an owned session, as a cancelled
    /// acquisition does: every level the lock held, this one included, is then lost (see
    /// [Cancel safety](Self#cancel-safety)).
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

    /// Whether this lock's session holds the key in any mode, from `pg_locks`.
    ///
    /// # Errors
    ///
    /// If the lock believed it held levels and the server says otherwise (or the session
    /// is gone), the levels were lost: [`Error::LockLost`], as long as any lost level is
    /// unaccounted for. [`Error::Closed`] after [`close`](Self::close); otherwise the
    /// [session's errors](Self#errors) (on a new session, the first statement may find a
    /// standby: [`Error::StandbyServer`]).
    ///
    /// # Cancel safety
    ///
    /// A read: dropping it ends nothing (see [Cancel safety](Self#cancel-safety)).
    pub async fn is_held(&mut self) -> Result<bool> {
        self.sync_with_session();
        if self.lost.any() {
            return Err(self.lost_error());
        }
        let held = match self.held_in_pg_locks(None).await {
            Ok(held) => held,
            Err(err) => return Err(self.settle(err)),
        };
        // Levels may have been found lost on the way (an owed release on a dead session).
        if self.lost.any() {
            return Err(self.lost_error());
        }
        if !held && self.held.any() {
            self.lose_held();
            return Err(self.lost_error());
        }
        Ok(held)
    }

    /// Resolves when the levels this lock holds are lost, with the reason (usually
    /// [`Error::LockLost`]); race it against the work the lock protects:
    ///
    /// ```no_run
    /// # async fn example(mut lock: pglock::AdvisoryLock, work: impl std::future::Future<Output = ()>) -> pglock::Result<()> {
    /// use futures_lite::future;
    ///
    /// lock.lock().await?;
    /// let finished = future::or(async { work.await; None }, async { Some(lock.lost().await) }).await;
    /// if let Some(lost) = finished {
    ///     return Err(lost); // stop: another process may hold the key now
    /// }
    /// lock.unlock().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Every [`lost_check_interval`](LockOptions::lost_check_interval) (1 s by default) it
    /// checks the session, in one tiny statement: on a session the lock owns only the lock
    /// changes its levels, so a level can vanish only with the session, and the check asks
    /// whether the session is alive and still the same server session (not `pg_locks`,
    /// which locks the server's whole lock table to read it). On a borrowed session, whose
    /// owner may unlock, it asks `pg_locks` whether the session still holds the key. A
    /// check that takes longer than [`check_timeout`](LockOptions::check_timeout) (5 s)
    /// counts as a lost session, which is then ended. So a loss is noticed within one
    /// interval plus a round trip, or interval + check timeout on a silent network. No
    /// query stays open between checks. Runtime-agnostic: it keeps time with a std thread.
    ///
    /// # Errors
    ///
    /// The output is the error: with a lost level unaccounted for it resolves at once
    /// with [`Error::LockLost`]; with no level held with [`Error::NotHeld`]; on a closed
    /// lock with [`Error::Closed`]. A check that fails resolves with `LockLost` if the
    /// levels went with it, else with the check's own error (such as
    /// [`Error::SessionNotPinned`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping it (when the work wins) is safe at any point: its checks are reads. (With
    /// a dropped guard's release owed, it sends that first, and cut off there it ends the
    /// session as any call would: see [Cancel safety](Self#cancel-safety).)
    pub async fn lost(&mut self) -> Error {
        loop {
            self.sync_with_session();
            if self.session.is_closed() {
                return Error::Closed;
            }
            if self.lost.any() {
                return self.lost_error();
            }
            if !self.held.any() {
                return Error::NotHeld {
                    key: self.key,
                    mode: LockMode::Exclusive,
                };
            }
            timer::sleep(self.options().get_lost_check_interval()).await;
            let check_timeout = self.options().get_check_timeout();
            match timer::timeout(check_timeout, self.check_still_held()).await {
                Some(Ok(())) => continue,
                Some(Err(err)) => return self.settle(err),
                None => {
                    // No answer in time: the network or server is gone for all we know.
                    self.session.end("a loss check went unanswered");
                    self.sync_with_session();
                    return self.lost_error();
                }
            }
        }
    }

    /// Releases every level this lock holds, in one round trip, and lets go of the
    /// connection (an owned pool connection goes back to the pool, clean).
    ///
    /// Afterwards every operation returns [`Error::Closed`]; closing again is `Ok(())`.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if levels were lost and not yet reported, or were lost as it
    /// released them (a release that fails ends the session rather than hand back one
    /// that may still hold them); the lock is closed all the same. If only the levels of
    /// dropped guards were left and their release fails, that failure's error (the
    /// [session's errors](Self#errors); `Ok(())` if it found the session gone, which
    /// freed them); an owned session is ended then, which frees them.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it releases ends an owned session (its levels go with
    /// it); the lock is then not closed, and reports the loss as usual.
    pub async fn close(&mut self) -> Result<()> {
        if self.session.is_closed() {
            return Ok(());
        }
        self.sync_with_session();
        let mut result = Ok(());
        if self.held.any() {
            result = match self.session.open(self.key).await {
                Ok(()) => self.unlock_levels(self.held).await,
                Err(err) => Err(err),
            };
        }
        // Unknown what the session still holds after a failed release: never hand it
        // back to a pool.
        self.session.close(self.key, result.is_ok()).await;
        self.sync_with_session();
        if self.lost.any() || self.held.any() {
            self.lost = Levels::default();
            self.held = Levels::default();
            return Err(self.lost_error());
        }
        match result {
            // A session that died holding nothing has nothing left to release.
            Err(err) if session::found_gone(&err) => Ok(()),
            result => result,
        }
    }

    /// Takes one level of `mode`, waiting as `wait` says. On a new session the statement
    /// that sets it up also tries the key, so only a call that finds the key taken and
    /// may wait sends a second statement, the wait.
    ///
    /// An acquisition after a loss works, on a new session: the lost levels stay
    /// counted, for the unlocks, `is_held`, `lost` and `close` to report. So a statement
    /// whose session is found gone runs once more on a new session, with what is left of
    /// its time; but a wait whose session dies while it waits, taking levels the lock
    /// held, ends with `LockLost`: the loss happened during the call. (To tell the two
    /// apart, a lock that holds levels tries before it waits.)
    async fn acquire(&mut self, mode: LockMode, wait: Wait) -> Result<bool> {
        let key = self.key;
        trace::acquisition(key, mode, wait.kind(), self.acquire_traced(mode, wait)).await
    }

    async fn acquire_traced(&mut self, mode: LockMode, wait: Wait) -> Result<bool> {
        let wait = wait.remaining(Duration::ZERO);
        let start = Instant::now();
        let lost_before = self.lost;
        let outcome = match self.acquire_once(mode, wait).await {
            Err(Failed { err, waiting })
                if session::found_gone(&err) && self.session.can_reconnect() =>
            {
                let lost_while_waiting = waiting && self.newly_lost();
                self.sync_with_session();
                match lost_while_waiting {
                    true => Err(Failed { err, waiting }),
                    false => {
                        self.acquire_once(mode, wait.remaining(start.elapsed()))
                            .await
                    }
                }
            }
            outcome => outcome,
        };
        outcome.map_err(|failed| {
            // A call that fails anyway says so if it found levels lost on the way.
            self.sync_with_session();
            match self.lost != lost_before && !matches!(failed.err, Error::SessionNotPinned { .. })
            {
                true => self.lost_error(),
                false => failed.err,
            }
        })
    }

    async fn acquire_once(&mut self, mode: LockMode, wait: Wait) -> Result<bool, Failed> {
        self.prepare().await.map_err(Failed::before_waiting)?;
        let may_wait = !matches!(wait, Wait::No);
        let tried = match self.session.is_fresh() {
            true => Some(self.session.first(self.key, Some(mode)).await),
            false if !may_wait || self.held.any() => Some(self.try_now(mode).await),
            false => None,
        };
        let acquired = match tried.transpose().map_err(Failed::before_waiting)? {
            Some(taken) if taken || !may_wait => taken,
            _ => self.wait_for(mode, wait).await.map_err(Failed::waiting)?,
        };
        if acquired {
            *self.held.of_mut(mode) += 1;
        }
        Ok(acquired)
    }

    /// One `pg_try_advisory_lock*` on a known session.
    async fn try_now(&mut self, mode: LockMode) -> Result<bool> {
        let sql = match mode {
            LockMode::Exclusive => sql::TRY_LOCK,
            LockMode::Shared => sql::TRY_LOCK_SHARED,
        };
        let args = self.session.args_for(self.key)?;
        let bound = Some(self.options().get_operation_timeout());
        self.session
            .fetch_pinned(self.key, Effect::Write, sql.for_key(self.key), args, bound)
            .await
    }

    /// A wait on a known session: forever, or at most a time.
    async fn wait_for(&mut self, mode: LockMode, wait: Wait) -> Result<bool> {
        match wait {
            Wait::No => self.try_now(mode).await,
            Wait::Forever => {
                let sql = match mode {
                    LockMode::Exclusive => sql::LOCK,
                    LockMode::Shared => sql::LOCK_SHARED,
                };
                let args = self.session.args_for(self.key)?;
                let _: bool = self
                    .session
                    .fetch_pinned(self.key, Effect::Write, sql.for_key(self.key), args, None)
                    .await?;
                Ok(true)
            }
            Wait::For(timeout) => self.wait_at_most(mode, timeout).await,
        }
    }

    async fn wait_at_most(&mut self, mode: LockMode, timeout: Duration) -> Result<bool> {
        let sql = match mode {
            LockMode::Exclusive => sql::TRY_LOCK_FOR,
            LockMode::Shared => sql::TRY_LOCK_SHARED_FOR,
        };
        let millis = sql::lock_timeout_millis(timeout);
        let lifted = self
            .session
            .lift_statement_timeout(self.key, millis)
            .await?;
        let mut args = self.session.args_for(self.key)?;
        add(&mut args, format!("{millis}ms"))?;
        let bound = timeout.saturating_add(self.options().get_operation_timeout());
        let outcome: Result<Option<bool>> = self
            .session
            .fetch_optional(
                self.key,
                Effect::Write,
                sql.for_key(self.key),
                args,
                Some(bound),
            )
            .await;
        if let Some(previous) = lifted
            && self.session.is_ready()
        {
            self.session
                .set_statement_timeout(self.key, previous)
                .await?;
        }
        match outcome {
            Ok(_) => Ok(true),
            // The grant may have raced the timeout (then the session holds the level
            // although the statement failed). The mode had no level before, or it would
            // not have waited, so "held in this mode" now means "granted".
            Err(err) if session::lock_not_available(&err) => {
                self.held_in_pg_locks(Some(mode)).await
            }
            Err(err) => Err(err),
        }
    }

    async fn release(&mut self, mode: LockMode) -> Result<()> {
        if let Some(refused) = self.session.refused(self.key) {
            return Err(refused);
        }
        self.sync_with_session();
        if self.held.of(mode) == 0 {
            // Levels are a stack per mode: with no live level left, an unlock pairs with
            // a lost one, if any.
            return match self.lost.of(mode) {
                0 => Err(self
                    .session
                    .refused_for_good(self.key)
                    .unwrap_or(Error::NotHeld {
                        key: self.key,
                        mode,
                    })),
                _ => {
                    *self.lost.of_mut(mode) -= 1;
                    Err(self.lost_error())
                }
            };
        }
        if let Err(err) = self.release_now(mode).await {
            let err = self.settle(err);
            if matches!(err, Error::LockLost { .. }) {
                // This unlock pairs with one of the levels just lost: accounted for.
                *self.lost.of_mut(mode) = self.lost.of(mode).saturating_sub(1);
            }
            return Err(err);
        }
        Ok(())
    }

    async fn release_now(&mut self, mode: LockMode) -> Result<()> {
        self.prepare().await?;
        if self.held.of(mode) == 0 {
            // The level went with a session found gone on the way.
            return Err(self.lost_error());
        }
        let sql = match mode {
            LockMode::Exclusive => sql::UNLOCK,
            LockMode::Shared => sql::UNLOCK_SHARED,
        };
        let args = self.session.args_for(self.key)?;
        let bound = Some(self.options().get_operation_timeout());
        let released: bool = self
            .session
            .fetch_pinned(self.key, Effect::Write, sql.for_key(self.key), args, bound)
            .await?;
        if !released {
            // We counted a level the server no longer has: the session lost it.
            self.lose_held();
            return Err(self.lost_error());
        }
        *self.held.of_mut(mode) -= 1;
        trace::released(self.key, Levels::default().with(mode));
        Ok(())
    }

    /// Makes sure the session is usable (a new one after a loss, where the lock can open
    /// one: levels held are then already counted as lost) and owes no deferred release.
    /// An owed release that finds the session gone has nothing left to do; the other
    /// levels that went with it are counted as lost, for the rules to report.
    async fn prepare(&mut self) -> Result<()> {
        self.sync_with_session();
        self.session.open(self.key).await?;
        if self.deferred.any() {
            match self.unlock_levels(self.deferred).await {
                Err(err) if session::found_gone(&err) => {
                    self.sync_with_session();
                    self.session.open(self.key).await?;
                }
                outcome => outcome?,
            }
        }
        Ok(())
    }

    /// Gives up one level of `mode` later: before the lock's next operation, at `close`,
    /// or (with the session) when the lock is dropped. For guards, whose `Drop` cannot
    /// wait for the server.
    pub(crate) fn defer_release(&mut self, mode: LockMode) {
        *self.deferred.of_mut(mode) += 1;
    }

    /// Releases `levels` (which include every deferred one) in one round trip; if the
    /// server did not have them all, the levels were lost.
    async fn unlock_levels(&mut self, levels: Levels) -> Result<()> {
        let mut args = self.session.args_for(self.key)?;
        add(&mut args, i64::from(levels.exclusive))?;
        add(&mut args, i64::from(levels.shared))?;
        let sql = sql::UNLOCK_LEVELS.for_key(self.key);
        let released_all: bool = self
            .session
            .fetch(self.key, Effect::Write, sql, args)
            .await?;
        if !released_all {
            // The session no longer had them all: whatever it held of ours is lost.
            self.lose_held();
            return Err(self.lost_error());
        }
        self.held = self.held.minus(levels);
        self.deferred = Levels::default();
        trace::released(self.key, levels);
        Ok(())
    }

    /// The loss check of [`lost`](Self::lost): on an owned session, that it is alive and
    /// the same server session; on a borrowed one, that `pg_locks` still shows the key.
    async fn check_still_held(&mut self) -> Result<()> {
        if self.session.is_owned() {
            self.prepare().await?;
            return self.session.check_alive(self.key).await;
        }
        match self.held_in_pg_locks(None).await? {
            true => Ok(()),
            false => {
                self.lose_held();
                Err(self.lost_error())
            }
        }
    }

    /// Runs an exclusive acquisition that also returns a value in the same statement (a
    /// fencing token); no row means not acquired. `blocking` waits without bound.
    ///
    /// If the statement fails after the grant (say, the token table is missing), the
    /// session would hold a level nobody counted: it is found in `pg_locks` and released.
    pub(crate) async fn acquire_exclusive_returning(
        &mut self,
        sql: KeyedSql,
        extra: String,
        blocking: bool,
    ) -> Result<Option<i64>> {
        let (key, kind) = (self.key, if blocking { "fenced" } else { "try fenced" });
        let acquire = async {
            let outcome = self.acquire_returning(sql, extra, blocking).await;
            outcome.map_err(|err| self.settle(err))
        };
        trace::acquisition(key, LockMode::Exclusive, kind, acquire).await
    }

    async fn acquire_returning(
        &mut self,
        sql: KeyedSql,
        extra: String,
        blocking: bool,
    ) -> Result<Option<i64>> {
        self.prepare().await?;
        if self.session.is_fresh() {
            self.session.first(self.key, None).await?;
        }
        let mut args = self.session.args_for(self.key)?;
        add(&mut args, extra)?;
        let bound = (!blocking).then(|| self.options().get_operation_timeout());
        let had_exclusive = self.held.exclusive > 0;
        match self
            .session
            .fetch_optional(self.key, Effect::Write, sql.for_key(self.key), args, bound)
            .await
        {
            Ok(Some(value)) => {
                self.held.exclusive += 1;
                Ok(Some(value))
            }
            Ok(None) => Ok(None),
            // The session is gone, or the statement never ran (class 42: it did not
            // parse or plan, e.g. a missing table): the counts are right as they are.
            Err(err) if !self.session.is_ready() || session::never_ran(&err) => Err(err),
            // It ran and failed after the grant, maybe. With no exclusive level before,
            // pg_locks tells whether it left one; give that back.
            Err(err) if !had_exclusive => {
                if self.held_in_pg_locks(Some(LockMode::Exclusive)).await? {
                    self.held.exclusive += 1;
                    self.release_now(LockMode::Exclusive).await?;
                }
                Err(err)
            }
            // With levels before, pg_locks cannot tell n from n + 1: the count is unknown,
            // so end the session (its levels go with it) rather than guess.
            Err(_) => {
                self.session
                    .end("a fenced acquisition failed with levels held");
                Err(self.lost_error())
            }
        }
    }

    /// Whether `pg_locks` shows this session holding the key (in `mode`, or in any mode).
    async fn held_in_pg_locks(&mut self, mode: Option<LockMode>) -> Result<bool> {
        self.prepare().await?;
        if self.session.is_fresh() {
            self.session.first(self.key, None).await?;
        }
        let (classid, objid, objsubid) = self.key.pg_locks_ids();
        let mut args = PgArguments::default();
        add(&mut args, Oid(classid))?;
        add(&mut args, Oid(objid))?;
        add(&mut args, objsubid)?;
        let sql = match mode {
            None => sql::IS_HELD,
            Some(mode) => {
                add(&mut args, pg_locks_mode(mode))?;
                sql::IS_HELD_IN_MODE
            }
        };
        self.session.fetch(self.key, Effect::Read, sql, args).await
    }

    /// If the session has ended since the levels were taken, they are lost: counted as
    /// lost (but for the levels of dropped guards, which nobody is left to tell).
    fn sync_with_session(&mut self) {
        if self.session.generation() != self.generation {
            self.lose_held();
            self.generation = self.session.generation();
        }
    }

    /// Moves the held levels to the lost ones.
    fn lose_held(&mut self) {
        let lost = self.held.minus(self.deferred);
        if lost.any() {
            trace::lost(self.key, lost, "its session is gone, or no longer has them");
        }
        self.lost = self.lost.plus(lost);
        self.held = Levels::default();
        self.deferred = Levels::default();
    }

    /// Whether levels are found lost now, by this call (which is then the one to say so).
    fn newly_lost(&mut self) -> bool {
        let before = self.lost;
        self.sync_with_session();
        self.lost != before
    }

    /// The error to report for a failed operation: [`Error::LockLost`] if it cost levels.
    fn settle(&mut self, err: Error) -> Error {
        // A pooling proxy is what to hear of, levels or not: nothing works through it.
        match self.newly_lost() && !matches!(err, Error::SessionNotPinned { .. }) {
            true => self.lost_error(),
            false => err,
        }
    }

    /// [`Error::LockLost`], but through a pooling proxy (the session found not pinned)
    /// that is what the caller must hear of, for good: the levels it held stay on a
    /// server session the lock can no longer reach.
    fn lost_error(&self) -> Error {
        match self.session.refused_for_good(self.key) {
            Some(err @ Error::SessionNotPinned { .. }) => err,
            _ => Error::LockLost { key: self.key },
        }
    }
}

/// An acquisition's error, and whether it came from a statement that waited.
struct Failed {
    err: Error,
    waiting: bool,
}

impl Failed {
    fn before_waiting(err: Error) -> Failed {
        Failed {
            err,
            waiting: false,
        }
    }

    fn waiting(err: Error) -> Failed {
        Failed { err, waiting: true }
    }
}

/// How long an acquisition may wait.
#[derive(Debug, Clone, Copy)]
enum Wait {
    No,
    For(Duration),
    Forever,
}

impl Wait {
    /// What kind of acquisition waits like this, for its trace.
    fn kind(self) -> &'static str {
        match self {
            Wait::No => "try",
            Wait::For(_) => "timed",
            Wait::Forever => "blocking",
        }
    }

    /// What is left of the wait after `elapsed`; a timed wait with no time left is a
    /// plain try.
    fn remaining(self, elapsed: Duration) -> Wait {
        match self {
            Wait::For(timeout) if timeout > elapsed => Wait::For(timeout - elapsed),
            Wait::For(_) => Wait::No,
            wait => wait,
        }
    }
}

fn pg_locks_mode(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "ExclusiveLock",
        LockMode::Shared => "ShareLock",
    }
}

impl<C: LockConnection> Drop for AdvisoryLock<C> {
    fn drop(&mut self) {
        // Levels would pass to the pool's next borrower.
        if self.held.any() {
            self.session.discard_on_drop();
        }
    }
}

impl<C: LockConnection> fmt::Debug for AdvisoryLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdvisoryLock")
            .field("key", &self.key)
            .field("exclusive", &self.held.exclusive)
            .field("shared", &self.held.shared)
            .field("lost", &self.lost)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<C: LockConnection> DistributedLock for AdvisoryLock<C> {
    fn key(&self) -> LockKey {
        self.key
    }

    async fn lock(&mut self) -> Result<()> {
        AdvisoryLock::lock(self).await
    }

    async fn lock_shared(&mut self) -> Result<()> {
        AdvisoryLock::lock_shared(self).await
    }

    async fn try_lock(&mut self) -> Result<bool> {
        AdvisoryLock::try_lock(self).await
    }

    async fn try_lock_shared(&mut self) -> Result<bool> {
        AdvisoryLock::try_lock_shared(self).await
    }

    async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool> {
        AdvisoryLock::try_lock_for(self, timeout).await
    }

    async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool> {
        AdvisoryLock::try_lock_shared_for(self, timeout).await
    }

    async fn unlock(&mut self) -> Result<()> {
        AdvisoryLock::unlock(self).await
    }

    async fn unlock_shared(&mut self) -> Result<()> {
        AdvisoryLock::unlock_shared(self).await
    }

    async fn close(&mut self) -> Result<()> {
        AdvisoryLock::close(self).await
    }

    async fn is_held(&mut self) -> Result<bool> {
        AdvisoryLock::is_held(self).await
    }

    async fn lost(&mut self) -> Error {
        AdvisoryLock::lost(self).await
    }
}

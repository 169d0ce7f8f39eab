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
//!   several server sessions. So the lock learns its server session (`pg_backend_pid()`)
//!   before its first acquisition, every statement that changes levels acts only there,
//!   and every statement reports where it ran: a move is [`Error::SessionNotPinned`],
//!   before anything is taken on the wrong session.
//!
//! # The state machine
//!
//! A lock knows its key, how many exclusive and shared levels it holds, and the state of
//! its session:
//!
//! | state          | session      | meaning                                        | next operation              |
//! |----------------|--------------|------------------------------------------------|-----------------------------|
//! | `Ready`        | open         | idle and usable                                | runs                        |
//! | `InFlight`     | open         | a statement was sent, its answer not yet read  | see below                   |
//! | `Disconnected` | none         | the session ended (failure or cancellation)    | `LockLost` once if levels were lost; then a new session from the pool (locks from [`AdvisoryLock::new`]) or [`Error::Disconnected`] |
//! | `Interrupted`  | the caller's | a cancelled call left a *borrowed* session mid-statement | [`Error::Interrupted`] |
//! | `NotPinned`    | none         | statements ran on two server sessions (a pooling proxy) | [`Error::SessionNotPinned`] |
//! | `Closed`       | none         | `close` ran                                    | [`Error::Closed`]           |
//!
//! Every operation checks the state, sends one statement in the common path, and then
//! updates the counts from the server's answer: the server is the truth, the counts our
//! record of it. A session found gone while levels were held resets the counts and
//! reports [`Error::LockLost`]. Every statement but a deliberate wait (`lock()`,
//! `lock_shared()`) is bounded by [`LockOptions::operation_timeout`]: one unanswered in
//! time ends the session (`Disconnected`, or `Interrupted` if borrowed) and reports
//! [`Error::Unresponsive`], or [`Error::LockLost`] if levels were held.
//!
//! A session's first use costs one statement more: an owned session is configured
//! (see [`LockOptions`]; the answer also names its server session), a borrowed one is
//! asked for its `pg_backend_pid()`.
//!
//! A statement's future dropped before its answer (a `timeout`, a `select!`) is a
//! transition too, taken at once by a guard inside the future:
//!
//! - a read (`is_held`, the lost-lock check) stays `InFlight`; its answer is small and
//!   sqlx reads it before the next statement;
//! - anything that may change levels (`lock`, `try_lock`, timed waits, `unlock`, `close`)
//!   ends an owned session on the spot (an owned pool connection is closed, not returned),
//!   so the server stops waiting and frees every level: `Disconnected`. A borrowed session
//!   cannot be ended by us: `Interrupted`.
//!
//! Dropping the lock while it holds levels, or with a statement in flight, does the same
//! for an owned connection ([`LockConnection::discard_on_drop`]); so does dropping it
//! after it changed the session's settings (see [`LockOptions`]), which only an awaited
//! [`close`](AdvisoryLock::close) can put back: close a lock to hand its connection back
//! to the pool for reuse. A borrowed connection stays with its owner, and so do the
//! levels on it (the owner's session, the owner's locks).

use std::fmt;
use std::time::Duration;

use sqlx::Acquire;
use sqlx::pool::PoolConnection;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArguments, PgConnection, PgPool, Postgres};

use crate::error::{self, LockMode, sqlstate};
use crate::sql::{self, KeyedSql, add};
use crate::{DistributedLock, Error, LockKey, LockOptions, Result, timer};

/// A connection an [`AdvisoryLock`] can work on, owned or borrowed.
///
/// Implemented for the connections sqlx hands out: an owned [`PgConnection`] or
/// [`PoolConnection<Postgres>`], an owned [`sqlx::Transaction`], and `&mut` to anything
/// that derefs to a [`PgConnection`] (`&mut PgConnection`, `&mut PoolConnection<Postgres>`,
/// `&mut Transaction<'_, Postgres>`, ...). Implement it for your own connection wrapper
/// in one line (`impl pglock::LockConnection for MyConn {}`); the defaults treat the
/// connection as borrowed.
pub trait LockConnection: AsMut<PgConnection> + Send {
    /// Whether the lock owns the session: it may then set session options on it and end
    /// it when that is the only safe way out. Borrowed connections: `false`.
    fn owns_session(&self) -> bool {
        false
    }

    /// Called before the lock lets go of a session that holds levels or is mid-statement.
    ///
    /// An owned pool connection closes itself rather than going back to the pool (where
    /// its locks, or its pending wait, would pass to the next borrower). The default does
    /// nothing: an owned `PgConnection` closes its socket when dropped anyway, and a
    /// borrowed connection belongs to its owner.
    fn discard_on_drop(&mut self) {}
}

impl LockConnection for PgConnection {
    fn owns_session(&self) -> bool {
        true
    }
}

impl LockConnection for PoolConnection<Postgres> {
    fn owns_session(&self) -> bool {
        true
    }

    fn discard_on_drop(&mut self) {
        self.close_on_drop();
    }
}

impl<T: AsMut<PgConnection> + Send + ?Sized> LockConnection for &mut T {}

/// An owned transaction is the caller's session all the same: the lock treats it as
/// borrowed. Levels left on it when the lock is dropped stay with its connection, which
/// commit and rollback do not release, and which goes back to its pool with them: close
/// the lock before you end the transaction (or pass `&mut tx`).
impl LockConnection for sqlx::Transaction<'_, Postgres> {}

/// Where the lock's session stands; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    InFlight(Effect),
    Disconnected {
        unreported_loss: bool,
    },
    Interrupted,
    /// Statements ran on two server sessions: a transaction-pooling proxy is in between.
    NotPinned {
        first: Option<i32>,
        now: Option<i32>,
    },
    Closed,
}

/// What an abandoned statement may have done to the levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Nothing: safe to let sqlx read its answer later.
    Read,
    /// It may have taken or released a level: only ending the session is safe.
    Write,
}

/// What the lock knows about its current session, learned once per session.
#[derive(Debug, Clone, Default)]
struct SessionFacts {
    /// The settings the session had before the lock configured it (owned sessions
    /// only), to be put back by `close`; `Some` once configured.
    previous_settings: Option<Vec<Option<String>>>,
    /// The session's `statement_timeout` in ms, once read.
    statement_timeout_ms: Option<i64>,
    /// The server session (`pg_backend_pid()`) every statement must run on.
    backend_pid: Option<i32>,
}

/// Levels whose release was asked for synchronously (a guard's drop) and is still owed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Deferred {
    exclusive: u32,
    shared: u32,
}

/// How a lock from [`AdvisoryLock::new`] gets a fresh session after losing one.
struct Reconnect<C> {
    pool: PgPool,
    wrap: fn(PoolConnection<Postgres>) -> C,
}

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
/// let mut lock = AdvisoryLock::new(&pool, pglock::hash("nightly-report")).await?;
///
/// lock.lock().await?;          // waits for the key
/// // ... the work only one process may do at a time ...
/// lock.unlock().await?;        // one level, as many times as you locked
///
/// lock.close().await?;         // releases anything left and returns the connection
/// # Ok(())
/// # }
/// ```
pub struct AdvisoryLock<C: LockConnection = PoolConnection<Postgres>> {
    key: LockKey,
    /// `None` when `Disconnected`, `Interrupted` or `Closed`.
    conn: Option<C>,
    state: State,
    exclusive: u32,
    shared: u32,
    /// Levels of dropped guards, still counted above, released before the next operation.
    deferred: Deferred,
    options: LockOptions,
    facts: SessionFacts,
    reconnect: Option<Reconnect<C>>,
}

impl AdvisoryLock {
    /// Takes a dedicated connection from `pool` for a lock on `key`, as Go's `New` does.
    ///
    /// The connection is the lock's until [`close`](Self::close) or drop; size the pool
    /// for the locks you keep open at once. If the lock is dropped holding levels, the
    /// connection is closed instead of returned to the pool, so the levels go with it.
    /// If the session is lost, the lock reports it once and then takes a new connection
    /// from the same pool.
    pub async fn new(pool: &PgPool, key: impl Into<LockKey>) -> Result<Self> {
        let mut lock = Self::from_acquire(pool, key).await?;
        lock.reconnect = Some(Reconnect {
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
    pub fn with_connection(conn: C, key: impl Into<LockKey>) -> Self {
        AdvisoryLock {
            key: key.into(),
            conn: Some(conn),
            state: State::Ready,
            exclusive: 0,
            shared: 0,
            deferred: Deferred::default(),
            options: LockOptions::default(),
            facts: SessionFacts::default(),
            reconnect: None,
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
    pub async fn from_acquire<'a, A>(source: A, key: impl Into<LockKey>) -> Result<Self>
    where
        A: Acquire<'a, Database = Postgres, Connection = C>,
    {
        let key = key.into();
        let conn = source.acquire().await?;
        Ok(Self::with_connection(conn, key))
    }

    /// Replaces the lock's [`LockOptions`]. Session settings take effect from the next
    /// session the lock configures (before its first statement).
    pub fn with_options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// The lock's options.
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// The key this lock is for.
    pub fn key(&self) -> LockKey {
        self.key
    }

    /// How many exclusive levels this lock holds, by its own record.
    pub fn exclusive_levels(&self) -> u32 {
        self.exclusive
    }

    /// How many shared levels this lock holds, by its own record.
    pub fn shared_levels(&self) -> u32 {
        self.shared
    }

    /// Whether [`close`](Self::close) has run.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Waits until the exclusive level is granted (`pg_advisory_lock`), then holds one
    /// more level.
    ///
    /// The wait has no bound; use [`try_lock_for`](Self::try_lock_for) for one. Dropping
    /// the future ends an owned session at once (see the module docs), so a cancelled
    /// wait never leaves a grant behind.
    pub async fn lock(&mut self) -> Result<()> {
        self.acquire(sql::LOCK, LockMode::Exclusive).await
    }

    /// Waits until the shared level is granted (`pg_advisory_lock_shared`), then holds
    /// one more level.
    pub async fn lock_shared(&mut self) -> Result<()> {
        self.acquire(sql::LOCK_SHARED, LockMode::Shared).await
    }

    /// Takes one exclusive level if no other session holds the key; `Ok(false)` otherwise.
    pub async fn try_lock(&mut self) -> Result<bool> {
        self.try_acquire(sql::TRY_LOCK, LockMode::Exclusive).await
    }

    /// Takes one shared level if no other session holds the key exclusively; `Ok(false)`
    /// otherwise.
    pub async fn try_lock_shared(&mut self) -> Result<bool> {
        self.try_acquire(sql::TRY_LOCK_SHARED, LockMode::Shared)
            .await
    }

    /// Waits at most `timeout` for one exclusive level: `Ok(true)` once granted,
    /// `Ok(false)` when the time is up.
    ///
    /// The bound is kept by the server (`lock_timeout`, set for this one statement in the
    /// same round trip), so a slow or cancelled client cannot stretch it. The session's
    /// own `lock_timeout` and `statement_timeout` read the same afterwards; a session
    /// `statement_timeout` shorter than the wait is lifted for it (one more statement on
    /// each side, only then). If the lock is granted just as the timeout fires, the lock
    /// asks the server and reports what is true. A zero timeout is [`try_lock`](Self::try_lock).
    ///
    /// On a borrowed connection inside a transaction block, a timeout aborts that
    /// transaction (PostgreSQL fails the statement); use the transaction-scoped locks there.
    pub async fn try_lock_for(&mut self, timeout: Duration) -> Result<bool> {
        self.try_acquire_for(timeout, LockMode::Exclusive).await
    }

    /// [`try_lock_for`](Self::try_lock_for) for one shared level.
    pub async fn try_lock_shared_for(&mut self, timeout: Duration) -> Result<bool> {
        self.try_acquire_for(timeout, LockMode::Shared).await
    }

    /// Releases one exclusive level. With none held: [`Error::NotHeld`], and nothing changes.
    pub async fn unlock(&mut self) -> Result<()> {
        self.release(sql::UNLOCK, LockMode::Exclusive).await
    }

    /// Releases one shared level. With none held: [`Error::NotHeld`], and nothing changes.
    pub async fn unlock_shared(&mut self) -> Result<()> {
        self.release(sql::UNLOCK_SHARED, LockMode::Shared).await
    }

    /// Whether this lock's session holds the key in any mode, from `pg_locks`.
    ///
    /// If the lock believed it held levels and the server says otherwise (or the session
    /// is gone), the levels were lost: [`Error::LockLost`].
    pub async fn is_held(&mut self) -> Result<bool> {
        self.open_session().await?;
        let held = self.held_in_pg_locks(None).await?;
        if !held && self.holds_levels() {
            return Err(self.forget_levels());
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
    /// asks the server, in one short query, whether the session still holds the key; a
    /// check that takes longer than [`check_timeout`](LockOptions::check_timeout) (5 s)
    /// counts as a lost session, which is then ended. So a loss is noticed within one
    /// interval plus a round trip, or interval + check timeout on a silent network. No
    /// query stays open between checks. Runtime-agnostic: it keeps time with a std thread.
    ///
    /// With no level held it resolves at once with [`Error::NotHeld`]; on a closed lock
    /// with [`Error::Closed`]. Dropping it (when the work wins) is safe at any point.
    pub async fn lost(&mut self) -> Error {
        loop {
            match self.state {
                State::Closed => return Error::Closed,
                // A cancelled call already ended the session that held levels.
                State::Disconnected {
                    unreported_loss: true,
                } => return self.unusable_session_error(),
                _ => {}
            }
            if !self.holds_levels() {
                return Error::NotHeld {
                    key: self.key,
                    mode: LockMode::Exclusive,
                };
            }
            timer::sleep(self.options.get_lost_check_interval()).await;
            match timer::timeout(self.options.get_check_timeout(), self.is_held()).await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return err,
                None => {
                    // No answer in time: the network or server is gone for all we know.
                    self.end_session();
                    self.state = State::Disconnected {
                        unreported_loss: false,
                    };
                    return Error::LockLost { key: self.key };
                }
            }
        }
    }

    /// Releases every level this lock holds, in one round trip, and lets go of the
    /// connection (an owned pool connection goes back to the pool, clean).
    ///
    /// Afterwards every operation returns [`Error::Closed`]; closing again is `Ok(())`.
    /// If the session was already gone while levels were held, the lock is closed and the
    /// loss is reported as [`Error::LockLost`].
    pub async fn close(&mut self) -> Result<()> {
        match self.state {
            State::Closed => return Ok(()),
            State::Interrupted | State::NotPinned { .. } => {
                self.state = State::Closed;
                return Ok(());
            }
            State::Disconnected { unreported_loss } => {
                self.state = State::Closed;
                return match unreported_loss {
                    true => Err(Error::LockLost { key: self.key }),
                    false => Ok(()),
                };
            }
            // A read's answer is small; sqlx reads it before our next statement.
            State::Ready | State::InFlight(_) => self.state = State::Ready,
        }
        let result = self.release_everything().await;
        if result.is_err() {
            // Unknown what the session still holds: never hand it back to a pool.
            self.end_session();
        }
        self.conn = None;
        self.state = State::Closed;
        match result {
            // A session that died holding nothing has nothing left to release.
            Err(Error::Database(err)) if error::session_is_gone(&err) => Ok(()),
            result => result,
        }
    }

    async fn release_everything(&mut self) -> Result<()> {
        if self.holds_levels() {
            self.unlock_levels(self.exclusive, self.shared).await?;
        }
        if let Some(previous) = self.facts.previous_settings.take() {
            let mut args = PgArguments::default();
            add(&mut args, previous)?;
            let _: bool = self
                .fetch(Effect::Write, sql::RESTORE_SESSION, args)
                .await?;
        }
        Ok(())
    }

    async fn acquire(&mut self, sql: KeyedSql, mode: LockMode) -> Result<()> {
        self.open_session().await?;
        let args = self.session_args()?;
        let _: Option<bool> = self
            .fetch_optional(Effect::Write, sql.for_key(self.key), args, None)
            .await?;
        *self.levels_mut(mode) += 1;
        Ok(())
    }

    async fn try_acquire(&mut self, sql: KeyedSql, mode: LockMode) -> Result<bool> {
        self.open_session().await?;
        let args = self.session_args()?;
        let acquired: bool = self
            .fetch(Effect::Write, sql.for_key(self.key), args)
            .await?;
        if acquired {
            *self.levels_mut(mode) += 1;
        }
        Ok(acquired)
    }

    async fn try_acquire_for(&mut self, timeout: Duration, mode: LockMode) -> Result<bool> {
        let (plain_try, timed) = match mode {
            LockMode::Exclusive => (sql::TRY_LOCK, sql::TRY_LOCK_FOR),
            LockMode::Shared => (sql::TRY_LOCK_SHARED, sql::TRY_LOCK_SHARED_FOR),
        };
        if timeout.is_zero() {
            return self.try_acquire(plain_try, mode).await;
        }
        let millis = sql::lock_timeout_millis(timeout);
        self.open_session().await?;
        let lifted = self.lift_statement_timeout(millis).await?;
        let mut args = self.session_args()?;
        add(&mut args, format!("{millis}ms"))?;
        let bound = timeout.saturating_add(self.options.get_operation_timeout());
        let outcome: Result<Option<bool>> = self
            .fetch_optional(Effect::Write, timed.for_key(self.key), args, Some(bound))
            .await;
        if let Some(previous) = lifted
            && self.state == State::Ready
        {
            self.set_statement_timeout(previous).await?;
        }
        let acquired = match outcome {
            Ok(_) => true,
            Err(Error::Database(err))
                if error::sqlstate(&err).as_deref() == Some(sqlstate::LOCK_NOT_AVAILABLE) =>
            {
                // The grant may have raced the timeout (then the session holds the level
                // although the statement failed). The mode had no level before, or it
                // would not have waited, so "held in this mode" now means "granted".
                self.held_in_pg_locks(Some(mode)).await?
            }
            Err(err) => return Err(err),
        };
        if acquired {
            *self.levels_mut(mode) += 1;
        }
        Ok(acquired)
    }

    /// Lifts a session `statement_timeout` that would cut a wait of `millis` short.
    /// Returns the value to put back, if it lifted one.
    async fn lift_statement_timeout(&mut self, millis: i64) -> Result<Option<i64>> {
        let current = match self.facts.statement_timeout_ms {
            Some(ms) => ms,
            None => {
                let ms: i64 = self
                    .fetch(
                        Effect::Read,
                        sql::STATEMENT_TIMEOUT_MS,
                        PgArguments::default(),
                    )
                    .await?;
                self.facts.statement_timeout_ms = Some(ms);
                ms
            }
        };
        // Leave a second for the round trip and the race check after a timeout.
        if current == 0 || current > millis.saturating_add(1000) {
            return Ok(None);
        }
        self.set_statement_timeout(0).await?;
        Ok(Some(current))
    }

    async fn set_statement_timeout(&mut self, millis: i64) -> Result<()> {
        let mut args = PgArguments::default();
        add(&mut args, millis.to_string())?;
        let _: String = self
            .fetch(Effect::Read, sql::SET_STATEMENT_TIMEOUT, args)
            .await?;
        Ok(())
    }

    async fn release(&mut self, sql: KeyedSql, mode: LockMode) -> Result<()> {
        self.open_session().await?;
        if *self.levels_mut(mode) == 0 {
            return Err(Error::NotHeld {
                key: self.key,
                mode,
            });
        }
        let args = self.session_args()?;
        let released: bool = self
            .fetch(Effect::Write, sql.for_key(self.key), args)
            .await?;
        if !released {
            // We counted a level the server no longer has: the session lost it.
            return Err(self.forget_levels());
        }
        *self.levels_mut(mode) -= 1;
        Ok(())
    }

    /// Whether `pg_locks` shows this session holding the key (in `mode`, or in any mode).
    async fn held_in_pg_locks(&mut self, mode: Option<LockMode>) -> Result<bool> {
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
        self.fetch(Effect::Read, sql, args).await
    }

    /// The bind parameters of a statement that changes levels: the server session the
    /// levels live on (`$1`, known once `open_session` ran), then the key.
    fn session_args(&self) -> Result<PgArguments> {
        let pid = self.facts.backend_pid.ok_or(Error::Closed)?;
        let mut args = PgArguments::default();
        add(&mut args, pid)?;
        match self.key {
            LockKey::BigInt(k) => add(&mut args, k)?,
            LockKey::IntPair(a, b) => {
                add(&mut args, a)?;
                add(&mut args, b)?;
            }
        }
        Ok(args)
    }

    fn levels_mut(&mut self, mode: LockMode) -> &mut u32 {
        match mode {
            LockMode::Exclusive => &mut self.exclusive,
            LockMode::Shared => &mut self.shared,
        }
    }

    fn holds_levels(&self) -> bool {
        self.exclusive > 0 || self.shared > 0
    }

    /// Forgets the levels the server no longer has, and says so.
    fn forget_levels(&mut self) -> Error {
        self.exclusive = 0;
        self.shared = 0;
        self.deferred = Deferred::default();
        Error::LockLost { key: self.key }
    }

    /// Makes sure there is a usable, configured session, or says why not.
    async fn open_session(&mut self) -> Result<()> {
        match self.state {
            State::Ready => {}
            // A read's answer is small; sqlx reads it before our next statement.
            State::InFlight(Effect::Read) => self.state = State::Ready,
            // Not reachable through the guard, which takes this transition on drop.
            State::InFlight(Effect::Write) => {
                self.abandon(Effect::Write);
                return Err(self.unusable_session_error());
            }
            State::Closed | State::Interrupted | State::NotPinned { .. } => {
                return Err(self.unusable_session_error());
            }
            State::Disconnected {
                unreported_loss: true,
            } => {
                self.state = State::Disconnected {
                    unreported_loss: false,
                };
                return Err(Error::LockLost { key: self.key });
            }
            State::Disconnected {
                unreported_loss: false,
            } => {
                let Some(reconnect) = &self.reconnect else {
                    return Err(Error::Disconnected { key: self.key });
                };
                let conn = reconnect.pool.acquire().await?;
                self.conn = Some((reconnect.wrap)(conn));
                self.facts = SessionFacts::default();
                self.state = State::Ready;
            }
        }
        let owned = self.conn.as_ref().is_some_and(|c| c.owns_session());
        if owned && self.facts.previous_settings.is_none() {
            let check = self.options.get_client_connection_check_interval();
            let keepalive = self.options.get_keepalive_idle();
            let mut args = PgArguments::default();
            add(&mut args, self.options.get_application_name().to_owned())?;
            add(&mut args, format!("{}ms", check.as_millis()))?;
            add(&mut args, format!("{}s", keepalive.as_secs()))?;
            add(&mut args, format!("{}s", (keepalive.as_secs() / 2).max(1)))?;
            add(&mut args, "0")?; // idle killers off
            add(&mut args, "3")?; // keepalive probes
            let previous: Vec<Option<String>> = self
                .fetch(Effect::Read, sql::CONFIGURE_SESSION, args)
                .await?;
            self.facts.previous_settings = Some(previous);
        } else if self.facts.backend_pid.is_none() {
            // A borrowed session: learn which server session it is before the first lock.
            let _: i32 = self
                .fetch(Effect::Read, sql::BACKEND_PID, PgArguments::default())
                .await?;
        }
        if self.deferred != Deferred::default() {
            self.release_deferred().await?;
        }
        Ok(())
    }

    /// Gives up one level of `mode` later: before the lock's next operation, at `close`,
    /// or (with the session) when the lock is dropped. For guards, whose `Drop` cannot
    /// wait for the server.
    pub(crate) fn defer_release(&mut self, mode: LockMode) {
        match mode {
            LockMode::Exclusive => self.deferred.exclusive += 1,
            LockMode::Shared => self.deferred.shared += 1,
        }
    }

    /// Releases the levels dropped guards left, in one round trip.
    async fn release_deferred(&mut self) -> Result<()> {
        let Deferred { exclusive, shared } = self.deferred;
        self.unlock_levels(exclusive, shared).await
    }

    /// Releases `exclusive` and `shared` levels (which include every deferred one) in one
    /// round trip; if the server did not have them all, the levels were lost.
    async fn unlock_levels(&mut self, exclusive: u32, shared: u32) -> Result<()> {
        let mut args = self.session_args()?;
        add(&mut args, i64::from(exclusive))?;
        add(&mut args, i64::from(shared))?;
        let sql = sql::UNLOCK_LEVELS.for_key(self.key);
        let released_all: bool = self.fetch(Effect::Write, sql, args).await?;
        self.exclusive = self.exclusive.saturating_sub(exclusive);
        self.shared = self.shared.saturating_sub(shared);
        self.deferred = Deferred::default();
        match released_all {
            true => Ok(()),
            false => Err(self.forget_levels()),
        }
    }

    /// Sends a statement and reads its one value, waiting at most the operation timeout.
    async fn fetch<T>(&mut self, effect: Effect, sql: &'static str, args: PgArguments) -> Result<T>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let bound = Some(self.options.get_operation_timeout());
        self.fetch_optional(effect, sql, args, bound)
            .await?
            .ok_or(Error::Database(sqlx::Error::RowNotFound))
    }

    /// Sends a statement and reads its value, if it returns a row, waiting at most
    /// `bound` (`None`: a deliberate unbounded wait for a lock).
    async fn fetch_optional<T>(
        &mut self,
        effect: Effect,
        sql: &'static str,
        args: PgArguments,
        bound: Option<Duration>,
    ) -> Result<Option<T>>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let mut statement = InFlight::begin(self, effect)?;
        let query = sqlx::query_as_with::<_, (Option<T>, i32), _>(sql, args)
            .fetch_optional(statement.conn()?);
        let answer = match bound {
            Some(limit) => timer::timeout(limit, query).await,
            None => Some(query.await),
        };
        match answer {
            Some(result) => statement.finish(result),
            None => Err(statement.unanswered(bound.unwrap_or_default())),
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
        self.open_session().await?;
        let mut args = self.session_args()?;
        add(&mut args, extra)?;
        let bound = (!blocking).then(|| self.options.get_operation_timeout());
        let had_exclusive = self.exclusive > 0;
        match self
            .fetch_optional(Effect::Write, sql.for_key(self.key), args, bound)
            .await
        {
            Ok(Some(value)) => {
                self.exclusive += 1;
                Ok(Some(value))
            }
            Ok(None) => Ok(None),
            // The session is gone, or the statement never ran (class 42: it did not
            // parse or plan, e.g. a missing table): the counts are right as they are.
            Err(err) if self.state != State::Ready || never_ran(&err) => Err(err),
            // It ran and failed after the grant, maybe. With no exclusive level before,
            // pg_locks tells whether it left one; give that back.
            Err(err) if !had_exclusive => {
                if self.held_in_pg_locks(Some(LockMode::Exclusive)).await? {
                    self.exclusive += 1;
                    self.unlock().await?;
                }
                Err(err)
            }
            // With levels before, pg_locks cannot tell n from n + 1: the count is unknown,
            // so end the session (its levels go with it) rather than guess.
            Err(_) => {
                let owned = self.end_session();
                self.state = match owned {
                    true => State::Disconnected {
                        unreported_loss: false,
                    },
                    false => State::Interrupted,
                };
                Err(Error::LockLost { key: self.key })
            }
        }
    }

    /// A statement's future was dropped before its answer; see the module docs.
    fn abandon(&mut self, effect: Effect) {
        match effect {
            Effect::Read => self.state = State::InFlight(Effect::Read),
            Effect::Write => {
                let unreported_loss = self.holds_levels();
                self.state = match self.end_session() {
                    true => State::Disconnected { unreported_loss },
                    false => State::Interrupted,
                };
            }
        }
    }

    /// Lets go of the session, so that the server frees whatever it holds or waits for:
    /// an owned session is closed (a pool connection is not returned). Forgets the
    /// levels. Returns whether the session was owned (and so is really ending).
    fn end_session(&mut self) -> bool {
        self.exclusive = 0;
        self.shared = 0;
        self.deferred = Deferred::default();
        match self.conn.take() {
            Some(mut conn) => {
                let owned = conn.owns_session();
                conn.discard_on_drop();
                owned
            }
            None => true,
        }
    }

    /// A session lock needs every statement on one server session. The first statement
    /// records which; any other means a transaction-pooling proxy (PgBouncer) moves the
    /// connection between server sessions, where session locks cannot work.
    fn check_pinned(&mut self, pid: i32) -> Result<()> {
        match self.facts.backend_pid {
            None => {
                self.facts.backend_pid = Some(pid);
                Ok(())
            }
            Some(first) if first == pid => Ok(()),
            Some(first) => {
                self.end_session();
                self.state = State::NotPinned {
                    first: Some(first),
                    now: Some(pid),
                };
                Err(self.unusable_session_error())
            }
        }
    }

    /// Why a lock in its current state cannot run a statement.
    fn unusable_session_error(&mut self) -> Error {
        match self.state {
            State::Closed => Error::Closed,
            State::Interrupted => Error::Interrupted { key: self.key },
            State::NotPinned { first, now } => Error::SessionNotPinned {
                key: self.key,
                first_pid: first,
                pid: now,
            },
            State::Disconnected {
                unreported_loss: true,
            } => {
                self.state = State::Disconnected {
                    unreported_loss: false,
                };
                Error::LockLost { key: self.key }
            }
            _ => Error::Disconnected { key: self.key },
        }
    }

    fn classify(&mut self, err: sqlx::Error) -> Error {
        if error::pooler_lost_statement(&err) {
            // The server session does not know our prepared statement: the connection
            // was moved to another server session (PgBouncer before 1.21). Nothing ran.
            self.end_session();
            self.state = State::NotPinned {
                first: self.facts.backend_pid,
                now: None,
            };
            return self.unusable_session_error();
        }
        if error::session_is_gone(&err) {
            let lost = self.holds_levels();
            self.end_session();
            self.state = State::Disconnected {
                unreported_loss: false,
            };
            return match lost {
                true => Error::LockLost { key: self.key },
                false => Error::Database(err),
            };
        }
        error::from_acquisition(err, self.key)
    }
}

/// Whether `err` is from a statement the server refused before running it (SQLSTATE
/// class 42: syntax error or access rule violation, such as a missing table).
fn never_ran(err: &Error) -> bool {
    match err {
        Error::Database(err) => error::sqlstate(err).is_some_and(|code| code.starts_with("42")),
        _ => false,
    }
}

/// One statement on the lock's session, from send to answer. If its future is dropped
/// first, `Drop` takes the lock through the cancellation transition at once.
struct InFlight<'a, C: LockConnection> {
    lock: &'a mut AdvisoryLock<C>,
}

impl<'a, C: LockConnection> InFlight<'a, C> {
    fn begin(lock: &'a mut AdvisoryLock<C>, effect: Effect) -> Result<Self> {
        if lock.state != State::Ready || lock.conn.is_none() {
            return Err(Error::Closed);
        }
        lock.state = State::InFlight(effect);
        Ok(InFlight { lock })
    }

    fn conn(&mut self) -> Result<&mut PgConnection> {
        self.lock
            .conn
            .as_mut()
            .map(AsMut::as_mut)
            .ok_or(Error::Closed)
    }

    /// No answer within `limit`: the server or the network is gone for all we know, and
    /// the answer, if it ever comes, must not be waited for. Ends the session.
    fn unanswered(self, limit: Duration) -> Error {
        let lock = &mut *self.lock;
        let held = lock.holds_levels();
        lock.state = match lock.end_session() {
            true => State::Disconnected {
                unreported_loss: false,
            },
            false => State::Interrupted,
        };
        match held {
            true => Error::LockLost { key: lock.key },
            false => Error::Unresponsive {
                key: lock.key,
                after: limit,
            },
        }
    }

    /// The answer arrived: the session is idle again; errors become ours.
    /// Also checks that the statement ran on the session's server session.
    /// A value is `None` when there was no row, or it was NULL.
    fn finish<T>(self, result: Result<Option<(Option<T>, i32)>, sqlx::Error>) -> Result<Option<T>> {
        self.lock.state = State::Ready;
        match result {
            Ok(Some((value, pid))) => {
                self.lock.check_pinned(pid)?;
                Ok(value)
            }
            Ok(None) => Ok(None),
            Err(err) => Err(self.lock.classify(err)),
        }
    }
}

impl<C: LockConnection> Drop for InFlight<'_, C> {
    fn drop(&mut self) {
        if let State::InFlight(effect) = self.lock.state {
            self.lock.abandon(effect);
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
        // Levels or a pending statement would pass to the pool's next borrower, and so
        // would our session settings, which only an awaited `close` can put back.
        let in_flight = matches!(self.state, State::InFlight(_));
        if (self.holds_levels() || in_flight || self.facts.previous_settings.is_some())
            && let Some(conn) = self.conn.as_mut()
        {
            conn.discard_on_drop();
        }
    }
}

impl<C: LockConnection> fmt::Debug for AdvisoryLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdvisoryLock")
            .field("key", &self.key)
            .field("exclusive", &self.exclusive)
            .field("shared", &self.shared)
            .field("state", &self.state)
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

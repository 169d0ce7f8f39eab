//! [`AdvisoryLock`]: one key, one PostgreSQL session, and a record of the levels it holds.
//!
//! # Advisory locks belong to sessions
//!
//! PostgreSQL ties a session-level advisory lock to the *connection* that took it, not to
//! a transaction or a task. Two facts follow, and they shape this module:
//!
//! - A pooled connection that goes back to the pool keeps its locks. The next borrower
//!   of that connection then "holds" them, and nobody else can get them until the
//!   connection closes. So a lock works on one dedicated session, and never returns a
//!   session that holds levels (or is in the middle of a statement) to the pool.
//! - Levels stack: `n` successful `pg_advisory_lock` calls need `n` `pg_advisory_unlock`
//!   calls. Shared and exclusive levels are counted apart.
//!
//! # The state machine
//!
//! A lock knows its key, how many exclusive and shared levels it holds, and the state
//! of its session:
//!
//! | state      | meaning                                   | next operation            |
//! |------------|-------------------------------------------|---------------------------|
//! | `Ready`    | the session is idle and usable            | runs                      |
//! | `InFlight` | a statement was sent, no answer read yet  | (only seen after a cancel)|
//! | `Closed`   | `close` ran; the session is let go        | `Err(Closed)`             |
//!
//! Every operation checks the state, sends at most one statement, and then updates the
//! counts from the server's answer: the server is the truth, the counts our record of it.
//! A session that turns out to be gone while levels were held resets the counts and
//! reports [`Error::LockLost`].
//!
//! Dropping the lock while it holds levels, or while a statement is in flight, calls
//! [`LockConnection::discard_on_drop`]: an owned pool connection is then closed instead of
//! returned, and the server frees the levels at once. A borrowed connection stays with its
//! owner, and so do the levels on it (the owner's session, the owner's locks).

use std::fmt;

use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArguments, PgConnection, PgPool, Postgres};
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Arguments};

use crate::error::{self, LockMode, sqlstate};
use crate::sql::{self, KeyedSql};
use crate::{DistributedLock, Error, LockKey, Result};

/// A connection an [`AdvisoryLock`] can work on, owned or borrowed.
///
/// Implemented for the connections sqlx hands out: an owned [`PgConnection`] or
/// [`PoolConnection<Postgres>`], and `&mut` to anything that derefs to a
/// [`PgConnection`] (`&mut PgConnection`, `&mut PoolConnection<Postgres>`,
/// `&mut Transaction<'_, Postgres>`, ...). Implement it for your own connection wrapper
/// in one line: `impl pglock::LockConnection for MyConn {}`.
pub trait LockConnection: AsMut<PgConnection> + Send {
    /// Called when a lock is dropped while its session holds levels or is mid-statement.
    ///
    /// An owned pool connection closes itself rather than going back to the pool (where
    /// its locks, or its pending wait, would pass to the next borrower). The default does
    /// nothing: an owned `PgConnection` closes its socket when dropped anyway, and a
    /// borrowed connection belongs to its owner.
    fn discard_on_drop(&mut self) {}
}

impl LockConnection for PgConnection {}

impl LockConnection for PoolConnection<Postgres> {
    fn discard_on_drop(&mut self) {
        self.close_on_drop();
    }
}

impl<T: AsMut<PgConnection> + Send + ?Sized> LockConnection for &mut T {}

/// Where the lock's session stands; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    InFlight,
    Closed,
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
    /// `None` once closed.
    conn: Option<C>,
    state: State,
    exclusive: u32,
    shared: u32,
}

impl AdvisoryLock {
    /// Takes a dedicated connection from `pool` for a lock on `key`, as Go's `New` does.
    ///
    /// The connection is the lock's until [`close`](Self::close) or drop; size the pool
    /// for the locks you keep open at once. If the lock is dropped holding levels, the
    /// connection is closed instead of returned to the pool, so the levels go with it.
    pub async fn new(pool: &PgPool, key: impl Into<LockKey>) -> Result<Self> {
        Self::from_acquire(pool, key).await
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
        }
    }

    /// A lock on `key` over a connection from anything that implements [`sqlx::Acquire`]
    /// for Postgres: `&PgPool` (a dedicated pool connection, as [`new`](AdvisoryLock::new)),
    /// `&mut PgConnection`, `&mut PoolConnection<Postgres>` or `&mut Transaction`.
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
        self.try_acquire(sql::TRY_LOCK_SHARED, LockMode::Shared).await
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
        let (classid, objid, objsubid) = self.key.pg_locks_ids();
        let mut args = PgArguments::default();
        add(&mut args, Oid(classid))?;
        add(&mut args, Oid(objid))?;
        add(&mut args, objsubid)?;
        let held = self.fetch_bool(sql::IS_HELD, args).await?;
        if !held && self.holds_levels() {
            return Err(self.lost());
        }
        Ok(held)
    }

    /// Releases every level this lock holds, in one round trip, and lets go of the
    /// connection (an owned pool connection goes back to the pool, clean).
    ///
    /// Afterwards every operation returns [`Error::Closed`]; closing again is `Ok(())`.
    /// If the session was already gone while levels were held, the lock is closed and the
    /// loss is reported as [`Error::LockLost`].
    pub async fn close(&mut self) -> Result<()> {
        if self.state == State::Closed {
            return Ok(());
        }
        let result = self.release_all().await;
        self.state = State::Closed;
        if let (Err(_), Some(conn)) = (&result, self.conn.as_mut()) {
            // Unknown what the session still holds: never hand it back to a pool.
            conn.discard_on_drop();
        }
        self.conn = None;
        result
    }

    async fn release_all(&mut self) -> Result<()> {
        self.ready()?;
        if !self.holds_levels() {
            return Ok(());
        }
        let (exclusive, shared) = (self.exclusive, self.shared);
        let mut args = key_args(self.key)?;
        add(&mut args, i64::from(exclusive))?;
        add(&mut args, i64::from(shared))?;
        let released = self.fetch_counts(sql::UNLOCK_LEVELS.for_key(self.key), args).await?;
        self.exclusive = 0;
        self.shared = 0;
        if released != (i64::from(exclusive), i64::from(shared)) {
            return Err(Error::LockLost { key: self.key });
        }
        Ok(())
    }

    async fn acquire(&mut self, sql: KeyedSql, mode: LockMode) -> Result<()> {
        let args = key_args(self.key)?;
        self.execute(sql.for_key(self.key), args).await?;
        *self.levels_mut(mode) += 1;
        Ok(())
    }

    async fn try_acquire(&mut self, sql: KeyedSql, mode: LockMode) -> Result<bool> {
        let args = key_args(self.key)?;
        let acquired = self.fetch_bool(sql.for_key(self.key), args).await?;
        if acquired {
            *self.levels_mut(mode) += 1;
        }
        Ok(acquired)
    }

    async fn release(&mut self, sql: KeyedSql, mode: LockMode) -> Result<()> {
        self.ready()?;
        if *self.levels_mut(mode) == 0 {
            return Err(Error::NotHeld {
                key: self.key,
                mode,
            });
        }
        let args = key_args(self.key)?;
        let released = self.fetch_bool(sql.for_key(self.key), args).await?;
        if !released {
            // We counted a level the server no longer has: the session lost it.
            return Err(self.lost());
        }
        *self.levels_mut(mode) -= 1;
        Ok(())
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
    fn lost(&mut self) -> Error {
        self.exclusive = 0;
        self.shared = 0;
        Error::LockLost { key: self.key }
    }

    /// The session, if an operation may use it now.
    fn ready(&mut self) -> Result<()> {
        match self.state {
            State::Closed => Err(Error::Closed),
            State::Ready | State::InFlight => Ok(()),
        }
    }

    async fn execute(&mut self, sql: &'static str, args: PgArguments) -> Result<()> {
        let conn = self.begin_statement()?;
        let result = sqlx::query_with(sql, args).execute(conn).await;
        self.end_statement(result.map(drop))
    }

    async fn fetch_bool(&mut self, sql: &'static str, args: PgArguments) -> Result<bool> {
        let conn = self.begin_statement()?;
        let result = sqlx::query_scalar_with(sql, args).fetch_one(conn).await;
        self.end_statement(result)
    }

    async fn fetch_counts(&mut self, sql: &'static str, args: PgArguments) -> Result<(i64, i64)> {
        let conn = self.begin_statement()?;
        let result = sqlx::query_as_with(sql, args).fetch_one(conn).await;
        self.end_statement(result)
    }

    /// Marks a statement in flight and hands out the session to send it on.
    fn begin_statement(&mut self) -> Result<&mut PgConnection> {
        self.ready()?;
        let conn = self.conn.as_mut().ok_or(Error::Closed)?;
        self.state = State::InFlight;
        Ok(conn.as_mut())
    }

    /// Records that the statement's answer was read, and turns errors into ours.
    fn end_statement<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T> {
        self.state = State::Ready;
        result.map_err(|err| self.classify(err))
    }

    fn classify(&mut self, err: sqlx::Error) -> Error {
        if error::session_is_gone(&err) && self.holds_levels() {
            return self.lost();
        }
        match error::sqlstate(&err).as_deref() {
            Some(sqlstate::DEADLOCK_DETECTED) => Error::Deadlock { key: self.key },
            Some(sqlstate::OUT_OF_SHARED_MEMORY) => Error::TooManyLocks { key: self.key },
            _ => Error::Database(err),
        }
    }
}

/// The key's bind parameters: `$1` for a `bigint` key, `$1, $2` for an int pair.
fn key_args(key: LockKey) -> Result<PgArguments> {
    let mut args = PgArguments::default();
    match key {
        LockKey::BigInt(k) => add(&mut args, k)?,
        LockKey::IntPair(a, b) => {
            add(&mut args, a)?;
            add(&mut args, b)?;
        }
    }
    Ok(args)
}

fn add<'t, T>(args: &mut PgArguments, value: T) -> Result<()>
where
    T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>,
{
    args.add(value)
        .map_err(|err| Error::Database(sqlx::Error::Encode(err)))
}

impl<C: LockConnection> Drop for AdvisoryLock<C> {
    fn drop(&mut self) {
        if self.holds_levels() || self.state == State::InFlight {
            if let Some(conn) = self.conn.as_mut() {
                conn.discard_on_drop();
            }
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
}

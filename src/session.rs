//! [`Session`]: one PostgreSQL session as pglock works on it, owned or borrowed.
//!
//! A lock's levels live on a server session, so the session is where most things can go
//! wrong: it can die, go silent, be moved between server sessions by a pooling proxy, be
//! a hot standby, or be left mid-statement by a cancelled future. This module owns all of
//! that; a lock on top of it keeps only its key and its counts of levels.
//!
//! # The state machine
//!
//! | state          | connection   | meaning                                        | next statement              |
//! |----------------|--------------|------------------------------------------------|-----------------------------|
//! | `Ready`        | open         | idle and usable                                | runs                        |
//! | `InFlight`     | open         | a statement was sent, its answer not yet read  | see below                   |
//! | `Disconnected` | none         | the session ended (failure or cancellation)    | a new session from the pool if the session can reconnect, else [`Error::Disconnected`] |
//! | `Interrupted`  | the caller's | a cancelled statement left a *borrowed* session mid-statement | [`Error::Interrupted`] |
//! | `NotPinned`    | none         | statements ran on two server sessions (a pooling proxy) | [`Error::SessionNotPinned`] |
//! | `Closed`       | none         | `close` ran                                    | [`Error::Closed`]           |
//!
//! Every transition that ends a session goes through [`Session::end`], which lets go of
//! the connection (an owned pool connection is closed, not returned, so the server frees
//! whatever it held or waited for) and bumps the session's *generation*. A lock records
//! the generation its levels were taken in: a different generation at its next call
//! means those levels are gone, however the session ended (an error, a timeout, a
//! cancelled future whose `Drop` ran the transition).
//!
//! A statement's future dropped before its answer is a transition too, taken at once by
//! a guard inside the future:
//!
//! - a read (`is_held`, the loss check) stays `InFlight`; its answer is small and sqlx
//!   reads it before the next statement;
//! - anything that may change levels ends an owned session on the spot: `Disconnected`.
//!   A borrowed session cannot be ended by us: `Interrupted`.
//!
//! # What a session learns first
//!
//! A session's first statement ([`sql::FIRST`]) rides on the lock's first acquisition:
//! it reports the server session every later statement must run on, whether the server is
//! a hot standby, and the session's `statement_timeout`; it sets an owned session up (see
//! [`LockOptions`]); and it tries the key once. So a lock's life costs no round trip
//! beyond its own operations. Setting up is done once per server session, not per lock:
//! [`sql::FIRST`] marks the session, and a later lock on it (a pool hands sessions out
//! again and again) starts with [`sql::FIRST_CONFIGURED`], which reports the same but is
//! a fifth of the size (PostgreSQL builds the executor state of every column at every
//! execution: the big one cost 14% of a lock's whole life, the small one 3–4%). A session
//! the mark is missing from (its owner ran `RESET ALL`, or `close` put back settings it
//! owed) is set up again, for one round trip more, before its lock is taken.
//!
//! Every later statement acts only on that server session and reports where it ran: a
//! move is [`Error::SessionNotPinned`], before anything is taken on the wrong session.
//! On a standby nothing is taken ([`Error::StandbyServer`]); an owned session there is
//! ended, so that the next attempt asks a fresh session (the server may have been
//! promoted since).

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow, Postgres};

use crate::error::{self, sqlstate};
use crate::sql::{self, KeyedSql, add};
use crate::timer::Watch;
use crate::{Error, LockKey, LockMode, LockOptions, Result, trace};

/// A connection an [`AdvisoryLock`](crate::AdvisoryLock) can work on, owned or borrowed.
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

    /// Whether the connection goes back to a pool for reuse when the lock lets go of it,
    /// so that session settings the lock changed must be put back first. An owned
    /// `PgConnection` is closed instead: `false`.
    fn returns_to_pool(&self) -> bool {
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

    fn returns_to_pool(&self) -> bool {
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

/// Where a session stands; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Ready,
    InFlight(Effect),
    Disconnected,
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
pub(crate) enum Effect {
    /// Nothing: safe to let sqlx read its answer later.
    Read,
    /// It may have taken or released a level: only ending the session is safe.
    Write,
}

/// What the session's first statement taught us; reset with every new session.
#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    /// The server session (`pg_backend_pid()`) every statement must run on; `None` until
    /// the first statement ran.
    pid: Option<i32>,
    /// The first statement changed settings a pool's next borrower could notice: `close`
    /// owes them back.
    restore_owed: bool,
    /// The session's `statement_timeout` in ms, as the first statement read it.
    statement_timeout_ms: i64,
}

/// How a session from [`AdvisoryLock::new`](crate::AdvisoryLock::new) gets a fresh
/// connection after losing one.
pub(crate) struct Reconnect<C> {
    pub(crate) pool: PgPool,
    pub(crate) wrap: fn(PoolConnection<Postgres>) -> C,
}

/// One PostgreSQL session and what pglock knows about it; see the module docs.
pub(crate) struct Session<C: LockConnection> {
    /// `None` when `Disconnected`, `Interrupted`, `NotPinned` or `Closed`.
    conn: Option<C>,
    state: State,
    facts: Facts,
    options: LockOptions,
    reconnect: Option<Reconnect<C>>,
    /// Sessions ended so far: levels taken in an older generation are gone.
    generation: u64,
    /// The bound on each statement.
    watch: Watch,
}

/// The row of [`sql::FIRST`]: tried (NULL if nothing was tried), pid, standby,
/// `statement_timeout` as the server shows it, whether settings are owed back.
type FirstRow = (Option<bool>, i32, bool, String, bool);

/// The row of [`sql::FIRST_CONFIGURED`]: tried (NULL on a standby), pid,
/// `statement_timeout`, whether [`sql::FIRST`] had set the session up.
type ConfiguredRow = (Option<bool>, i32, String, bool);

/// The row of [`sql::FIRST_BORROWED`]: tried (NULL on a standby), pid, `statement_timeout`.
type BorrowedRow = (Option<bool>, i32, String);

/// The mark [`sql::FIRST`] leaves on a session it set up (`pglock.session`). Another
/// value (a later pglock that sets sessions up differently) means "not set up".
const SET_UP_MARK: &str = "1";

impl<C: LockConnection> Session<C> {
    pub(crate) fn new(conn: C) -> Self {
        Session {
            conn: Some(conn),
            state: State::Ready,
            facts: Facts::default(),
            options: LockOptions::default(),
            reconnect: None,
            generation: 0,
            watch: Watch::new(),
        }
    }

    pub(crate) fn set_reconnect(&mut self, reconnect: Reconnect<C>) {
        self.reconnect = Some(reconnect);
    }

    pub(crate) fn options(&self) -> &LockOptions {
        &self.options
    }

    pub(crate) fn set_options(&mut self, options: LockOptions) {
        self.options = options;
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether the lock owns this session (and may end it).
    pub(crate) fn is_owned(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.owns_session())
    }

    /// Whether the session has not run its first statement yet.
    pub(crate) fn is_fresh(&self) -> bool {
        self.facts.pid.is_none()
    }

    /// Whether a lost session can be replaced by a new one from the pool.
    pub(crate) fn can_reconnect(&self) -> bool {
        self.reconnect.is_some()
    }

    /// Makes sure there is a usable session, opening a new one after a loss where it can,
    /// or says why not.
    pub(crate) async fn open(&mut self, key: LockKey) -> Result<()> {
        match self.state {
            State::Ready => Ok(()),
            // A read's answer is small; sqlx reads it before our next statement.
            State::InFlight(Effect::Read) => {
                self.state = State::Ready;
                Ok(())
            }
            // Not reachable through the guard, which takes this transition on drop.
            State::InFlight(Effect::Write) => {
                self.abandon(Effect::Write);
                Err(self.unusable(key))
            }
            State::Disconnected => {
                let Some(reconnect) = &self.reconnect else {
                    return Err(Error::Disconnected { key });
                };
                // Boxed: the pool's acquire is a large future (about 8 KB), and every
                // operation's future would carry its room though it runs only after a loss.
                let conn = Box::pin(reconnect.pool.acquire()).await?;
                self.conn = Some((reconnect.wrap)(conn));
                self.facts = Facts::default();
                self.state = State::Ready;
                Ok(())
            }
            State::Closed | State::Interrupted | State::NotPinned { .. } => Err(self.unusable(key)),
        }
    }

    /// Runs the session's first statement, trying `key` once in `mode` unless `mode` is
    /// `None`. Returns whether it took the level.
    ///
    /// A borrowed session runs [`sql::FIRST_BORROWED`]. An owned one runs [`sql::FIRST`],
    /// which sets it up, unless it may have been set up already (sqlx has statements
    /// cached on it, so it ran statements before, and no `application_name` is to be set,
    /// which is owed back at every close): then the much smaller
    /// [`sql::FIRST_CONFIGURED`], and [`sql::FIRST`] after it only if the session turns
    /// out not to be set up (once in a pooled session's life).
    pub(crate) async fn first(&mut self, key: LockKey, mode: Option<LockMode>) -> Result<bool> {
        let mode = match mode {
            None => 0_i32,
            Some(LockMode::Exclusive) => 1,
            Some(LockMode::Shared) => 2,
        };
        if !self.is_owned() {
            let mut args = PgArguments::default();
            add(&mut args, mode)?;
            add_key(&mut args, key)?;
            let row: BorrowedRow = self.first_row(key, sql::FIRST_BORROWED, args).await?;
            let (taken, pid, statement_timeout) = row;
            return self.learn(key, taken, pid, &statement_timeout, false);
        }
        let mut earlier_pid = None;
        if self.options.get_application_name().is_none() && self.has_run_statements() {
            let mut args = PgArguments::default();
            add(&mut args, mode)?;
            add(&mut args, SET_UP_MARK)?;
            add_key(&mut args, key)?;
            let row: ConfiguredRow = self.first_row(key, sql::FIRST_CONFIGURED, args).await?;
            let (taken, pid, statement_timeout, set_up) = row;
            let taken = self.learn(key, taken, pid, &statement_timeout, false)?;
            if set_up {
                return Ok(taken);
            }
            // Not set up, and nothing tried: still fresh until FIRST has run, on the same
            // server session.
            earlier_pid = self.facts.pid.take();
        }
        let options = &self.options;
        let check = options.get_client_connection_check_interval();
        let keepalive = options.get_keepalive_idle();
        let mut args = PgArguments::default();
        add(&mut args, true)?;
        add(&mut args, options.get_application_name().map(str::to_owned))?;
        add(
            &mut args,
            (!check.is_zero()).then(|| format!("{}ms", check.as_millis())),
        )?;
        // Whole seconds, at least 1 (0 would mean "the kernel's default": hours).
        let idle = keepalive.as_secs().max(1);
        add(&mut args, idle.to_string())?;
        add(&mut args, (idle / 2).max(1).to_string())?;
        add(&mut args, "0")?; // idle killers off; and what "off" reads as
        add(&mut args, "3")?; // keepalive probes
        add(&mut args, mode)?;
        add(&mut args, SET_UP_MARK)?;
        add_key(&mut args, key)?;
        let row: FirstRow = self.first_row(key, sql::FIRST, args).await?;
        let (taken, pid, standby, statement_timeout, owed) = row;
        self.facts.pid = earlier_pid;
        self.learn(
            key,
            (!standby).then_some(taken == Some(true)),
            pid,
            &statement_timeout,
            owed,
        )
    }

    /// Whether sqlx has prepared statements cached on the connection: if not, it is new
    /// to us (or caches nothing) and certainly not set up.
    fn has_run_statements(&mut self) -> bool {
        use sqlx::Connection;
        self.conn
            .as_mut()
            .is_some_and(|conn| conn.as_mut().cached_statements_size() > 0)
    }

    /// Sends a first statement, bounded by the operation timeout.
    async fn first_row<R>(&mut self, key: LockKey, sql: KeyedSql, args: PgArguments) -> Result<R>
    where
        R: Send + Unpin + for<'r> sqlx::FromRow<'r, PgRow>,
    {
        let bound = Some(self.options.get_operation_timeout());
        self.query(key, Effect::Write, sql.for_key(key), args, bound)
            .await?
            .ok_or(Error::Database(sqlx::Error::RowNotFound))
    }

    /// Records what a first statement reported: `taken` is whether it took the level,
    /// `None` on a hot standby (then nothing was taken). A second first statement on one
    /// session (after [`sql::FIRST_CONFIGURED`] found it not set up) must have run on the
    /// same server session.
    fn learn(
        &mut self,
        key: LockKey,
        taken: Option<bool>,
        pid: i32,
        statement_timeout: &str,
        owed: bool,
    ) -> Result<bool> {
        let Some(taken) = taken else {
            // Nothing was taken. An owned session is let go of, so that the next attempt
            // asks a new one; a borrowed one runs its first statement again.
            if self.is_owned() {
                self.end("the server is a hot standby");
            }
            return Err(Error::StandbyServer { key });
        };
        self.check_pinned(key, pid)?;
        self.facts = Facts {
            pid: Some(pid),
            restore_owed: owed,
            statement_timeout_ms: setting_millis(statement_timeout),
        };
        Ok(taken)
    }

    /// The bind parameters of a statement that changes levels: the server session the
    /// levels live on (`$1`), then the key.
    pub(crate) fn args_for(&self, key: LockKey) -> Result<PgArguments> {
        let pid = self.facts.pid.ok_or(Error::Closed)?;
        let mut args = PgArguments::default();
        add(&mut args, pid)?;
        add_key(&mut args, key)?;
        Ok(args)
    }

    /// Sends a statement that returns `(value, pg_backend_pid())` and reads its value,
    /// waiting at most the operation timeout.
    pub(crate) async fn fetch<T>(
        &mut self,
        key: LockKey,
        effect: Effect,
        sql: &'static str,
        args: PgArguments,
    ) -> Result<T>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let bound = Some(self.options.get_operation_timeout());
        self.fetch_optional(key, effect, sql, args, bound)
            .await?
            .ok_or(Error::Database(sqlx::Error::RowNotFound))
    }

    /// Sends a statement that returns `(value, pg_backend_pid())`, waiting at most
    /// `bound` (`None`: a deliberate unbounded wait for a lock), and checks that it ran
    /// on the session's server session. `None` when there was no row, or a NULL value.
    pub(crate) async fn fetch_optional<T>(
        &mut self,
        key: LockKey,
        effect: Effect,
        sql: &'static str,
        args: PgArguments,
        bound: Option<Duration>,
    ) -> Result<Option<T>>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let row: Option<(Option<T>, i32)> = self.query(key, effect, sql, args, bound).await?;
        match row {
            Some((value, pid)) => {
                self.check_pinned(key, pid)?;
                Ok(value)
            }
            None => Ok(None),
        }
    }

    /// Sends one statement and reads its row, if any, waiting at most `bound`.
    async fn query<R>(
        &mut self,
        key: LockKey,
        effect: Effect,
        sql: &'static str,
        args: PgArguments,
        bound: Option<Duration>,
    ) -> Result<Option<R>>
    where
        R: Send + Unpin + for<'r> sqlx::FromRow<'r, PgRow>,
    {
        let watch = self.watch.clone();
        let mut statement = InFlight::begin(self, effect)?;
        let query = sqlx::query_as_with::<_, R, _>(sql, args).fetch_optional(statement.conn()?);
        let answer = match bound {
            Some(limit) => watch.bound(limit, query).await,
            None => Some(query.await),
        };
        match answer {
            Some(result) => statement.finish(key, result),
            None => Err(statement.unanswered(key, bound.unwrap_or_default())),
        }
    }

    /// Sends a statement whose one column is its value on the session's server session and
    /// NULL anywhere else (`CASE WHEN pg_backend_pid() = $1 ...`), waiting at most `bound`
    /// (`None`: a deliberate unbounded wait for a lock). A NULL means the statement ran on
    /// another server session and did nothing there: [`Error::SessionNotPinned`].
    pub(crate) async fn fetch_pinned<T>(
        &mut self,
        key: LockKey,
        effect: Effect,
        sql: &'static str,
        args: PgArguments,
        bound: Option<Duration>,
    ) -> Result<T>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let row: Option<(Option<T>,)> = self.query(key, effect, sql, args, bound).await?;
        match row {
            Some((Some(value),)) => Ok(value),
            Some((None,)) => {
                let first = self.facts.pid;
                self.let_go("statements ran on two server sessions");
                self.state = State::NotPinned { first, now: None };
                Err(self.unusable(key))
            }
            None => Err(Error::Database(sqlx::Error::RowNotFound)),
        }
    }

    /// Sends one statement and reads all its rows, waiting at most the operation timeout.
    async fn query_all<R>(
        &mut self,
        key: LockKey,
        effect: Effect,
        sql: &'static str,
        args: PgArguments,
    ) -> Result<Vec<R>>
    where
        R: Send + Unpin + for<'r> sqlx::FromRow<'r, PgRow>,
    {
        let bound = self.options.get_operation_timeout();
        let watch = self.watch.clone();
        let mut statement = InFlight::begin(self, effect)?;
        let query = sqlx::query_as_with::<_, R, _>(sql, args).fetch_all(statement.conn()?);
        match watch.bound(bound, query).await {
            Some(result) => Ok(statement.finish(key, result.map(Some))?.unwrap_or_default()),
            None => Err(statement.unanswered(key, bound)),
        }
    }

    /// Sends a statement whose rows are `(number, value, pg_backend_pid())`, waiting at
    /// most the operation timeout, and checks that every row ran on the session's server
    /// session. Returns `(number, value)` per row.
    pub(crate) async fn fetch_numbered<T>(
        &mut self,
        key: LockKey,
        effect: Effect,
        sql: &'static str,
        args: PgArguments,
    ) -> Result<Vec<(i64, Option<T>)>>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let rows: Vec<(i64, Option<T>, i32)> = self.query_all(key, effect, sql, args).await?;
        let mut values = Vec::with_capacity(rows.len());
        for (number, value, pid) in rows {
            self.check_pinned(key, pid)?;
            values.push((number, value));
        }
        Ok(values)
    }

    /// The advisory levels this session holds, from `pg_locks` ([`sql::LANE_HOLDINGS`]).
    pub(crate) async fn holdings(&mut self, key: LockKey) -> Result<Vec<(LockKey, LockMode)>> {
        let pid = self.facts.pid.ok_or(Error::Disconnected { key })?;
        let mut args = PgArguments::default();
        add(&mut args, pid)?;
        let rows: Vec<(i64, i64, i16, bool, i32)> = self
            .query_all(key, Effect::Read, sql::LANE_HOLDINGS, args)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(classid, objid, objsubid, exclusive, _)| {
                let key = LockKey::from_pg_locks_ids(
                    u32::try_from(classid).ok()?,
                    u32::try_from(objid).ok()?,
                    objsubid,
                )?;
                let mode = match exclusive {
                    true => LockMode::Exclusive,
                    false => LockMode::Shared,
                };
                Some((key, mode))
            })
            .collect())
    }

    /// The session's `statement_timeout` in ms, as its first statement read it.
    pub(crate) fn statement_timeout_ms(&self) -> i64 {
        self.facts.statement_timeout_ms
    }

    /// The server session every statement must run on, once known.
    pub(crate) fn pid(&self) -> Option<i32> {
        self.facts.pid
    }

    /// Lifts a session `statement_timeout` that would cut a wait of `millis` short.
    /// Returns the value to put back, if it lifted one.
    pub(crate) async fn lift_statement_timeout(
        &mut self,
        key: LockKey,
        millis: i64,
    ) -> Result<Option<i64>> {
        let current = self.facts.statement_timeout_ms;
        // Leave a second for the round trip and the race check after a timeout.
        if current == 0 || current > millis.saturating_add(1000) {
            return Ok(None);
        }
        self.set_statement_timeout(key, 0).await?;
        Ok(Some(current))
    }

    pub(crate) async fn set_statement_timeout(&mut self, key: LockKey, millis: i64) -> Result<()> {
        let mut args = PgArguments::default();
        add(&mut args, millis.to_string())?;
        let _: String = self
            .fetch(key, Effect::Read, sql::SET_STATEMENT_TIMEOUT, args)
            .await?;
        Ok(())
    }

    /// Whether the session is alive and still the same server session: the loss check of
    /// an owned session (see [`sql::LIVENESS`]).
    pub(crate) async fn check_alive(&mut self, key: LockKey) -> Result<()> {
        let _: bool = self
            .fetch(key, Effect::Read, sql::LIVENESS, PgArguments::default())
            .await?;
        Ok(())
    }

    /// Ends the session so that the server frees whatever it holds or waits for: an owned
    /// session is closed (a pool connection is not returned), a borrowed one is left to
    /// its owner, unusable to us (`Interrupted`). Bumps the generation.
    pub(crate) fn end(&mut self, reason: &'static str) {
        let owned = self.let_go(reason);
        self.state = match owned {
            true => State::Disconnected,
            false => State::Interrupted,
        };
    }

    /// Lets go of the connection as [`end`](Self::end) does, without choosing the next
    /// state. Returns whether the session was owned (and so is really ending).
    fn let_go(&mut self, reason: &'static str) -> bool {
        trace::session_ended(self.facts.pid, reason);
        self.generation += 1;
        self.facts = Facts::default();
        match self.conn.take() {
            Some(mut conn) => {
                let owned = conn.owns_session();
                conn.discard_on_drop();
                owned
            }
            None => true,
        }
    }

    /// Moves the session out, leaving this one `Closed` with nothing to end: for a lock
    /// whose granted wait hands its session on (a `LockClient`'s waiting session).
    pub(crate) fn take(&mut self) -> Session<C> {
        Session {
            conn: self.conn.take(),
            state: std::mem::replace(&mut self.state, State::Closed),
            facts: std::mem::take(&mut self.facts),
            options: self.options.clone(),
            reconnect: self.reconnect.take(),
            generation: self.generation,
            watch: self.watch.clone(),
        }
    }

    /// Marks the connection for closing instead of reuse when it is let go of (a lock
    /// dropped holding levels).
    pub(crate) fn discard_on_drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.discard_on_drop();
        }
    }

    /// Lets go of the session for good (`Closed`). A clean owned pool connection goes back
    /// to its pool, with the settings its first statement owes put back (one round trip,
    /// only then). A session that is not `clean` (unknown levels left on it), or whose
    /// restore fails, is ended.
    pub(crate) async fn close(&mut self, key: LockKey, clean: bool) {
        let restore = self.facts.restore_owed
            && self
                .conn
                .as_ref()
                .is_some_and(|conn| conn.returns_to_pool());
        let clean = clean && (!restore || self.restore(key).await.is_ok());
        if !clean {
            self.let_go("closed with unknown levels on it, or settings not put back");
        }
        self.conn = None;
        self.facts = Facts::default();
        self.state = State::Closed;
    }

    /// Puts back the settings the first statement owes ([`sql::RESTORE_SESSION`]).
    async fn restore(&mut self, key: LockKey) -> Result<()> {
        if self.state == State::InFlight(Effect::Read) {
            self.state = State::Ready; // a read's answer: sqlx reads it first
        }
        let mut args = PgArguments::default();
        add(&mut args, "")?; // the set-up mark off
        let _: bool = self
            .fetch(key, Effect::Write, sql::RESTORE_SESSION, args)
            .await?;
        self.facts.restore_owed = false;
        Ok(())
    }

    /// `Closed` if `close` ran: every operation then says so first.
    pub(crate) fn refused(&self, key: LockKey) -> Option<Error> {
        match self.state {
            State::Closed => Some(self.unusable(key)),
            _ => None,
        }
    }

    /// Why the lock can never use a session again (closed, interrupted, not pinned):
    /// what an unlock with nothing left to release says rather than `NotHeld`.
    pub(crate) fn refused_for_good(&self, key: LockKey) -> Option<Error> {
        match self.state {
            State::Closed | State::Interrupted | State::NotPinned { .. } => {
                Some(self.unusable(key))
            }
            _ => None,
        }
    }

    /// Why a session in its current state cannot run a statement.
    pub(crate) fn unusable(&self, key: LockKey) -> Error {
        match self.state {
            State::Closed => Error::Closed,
            State::Interrupted => Error::Interrupted { key },
            State::NotPinned { first, now } => Error::SessionNotPinned {
                key,
                first_pid: first,
                pid: now,
            },
            _ => Error::Disconnected { key },
        }
    }

    /// A statement's future was dropped before its answer; see the module docs.
    fn abandon(&mut self, effect: Effect) {
        match effect {
            Effect::Read => self.state = State::InFlight(Effect::Read),
            Effect::Write => self.end("a statement that may change levels was cancelled"),
        }
    }

    /// A session lock needs every statement on one server session. The first statement
    /// records which; any other means a transaction-pooling proxy (PgBouncer) moves the
    /// connection between server sessions, where session locks cannot work.
    fn check_pinned(&mut self, key: LockKey, pid: i32) -> Result<()> {
        match self.facts.pid {
            Some(first) if first != pid => {
                self.let_go("statements ran on two server sessions");
                self.state = State::NotPinned {
                    first: Some(first),
                    now: Some(pid),
                };
                Err(self.unusable(key))
            }
            _ => Ok(()),
        }
    }

    fn classify(&mut self, key: LockKey, err: sqlx::Error) -> Error {
        if error::pooler_lost_statement(&err) {
            // The server session does not know our prepared statement: the connection
            // was moved to another server session (PgBouncer before 1.21). Nothing ran.
            let first = self.facts.pid;
            self.let_go("a prepared statement was missing on the server session");
            self.state = State::NotPinned { first, now: None };
            return self.unusable(key);
        }
        if error::session_is_gone(&err) {
            self.let_go("the session is gone");
            self.state = State::Disconnected;
            return Error::Database(err);
        }
        error::from_acquisition(err, key)
    }
}

/// Whether `err` says the statement never reached a live session: the session was found
/// gone, so nothing it did survives, and a new session may simply try again.
pub(crate) fn found_gone(err: &Error) -> bool {
    matches!(err, Error::Database(err) if error::session_is_gone(err))
}

/// Whether `err` is from a statement the server refused before running it (SQLSTATE
/// class 42: syntax error or access rule violation, such as a missing table).
pub(crate) fn never_ran(err: &Error) -> bool {
    match err {
        Error::Database(err) => error::sqlstate(err).is_some_and(|code| code.starts_with("42")),
        _ => false,
    }
}

/// Whether `err` is a lock wait that timed out (`lock_timeout`, SQLSTATE 55P03).
pub(crate) fn lock_not_available(err: &Error) -> bool {
    matches!(err, Error::Database(err)
        if error::sqlstate(err).as_deref() == Some(sqlstate::LOCK_NOT_AVAILABLE))
}

/// A time setting as `current_setting` shows one (`0`, `250ms`, `30s`, `5min`, `2h`,
/// `1d`), in milliseconds. Anything else reads as 1 ms: short enough that a timed wait
/// lifts it rather than be cut short by it.
fn setting_millis(shown: &str) -> i64 {
    let digits = shown
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(shown.len());
    let (number, unit) = shown.split_at(digits);
    let Ok(number) = number.parse::<i64>() else {
        return 1;
    };
    let per_unit: i64 = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return 1,
    };
    number.saturating_mul(per_unit)
}

/// Appends the key's bind parameters: one `bigint`, or the two `integer`s of a pair.
fn add_key(args: &mut PgArguments, key: LockKey) -> Result<()> {
    match key {
        LockKey::BigInt(k) => add(args, k),
        LockKey::IntPair(a, b) => {
            add(args, a)?;
            add(args, b)
        }
    }
}

/// One statement on a session, from send to answer. If its future is dropped first,
/// `Drop` takes the session through the cancellation transition at once.
struct InFlight<'a, C: LockConnection> {
    session: &'a mut Session<C>,
}

impl<'a, C: LockConnection> InFlight<'a, C> {
    fn begin(session: &'a mut Session<C>, effect: Effect) -> Result<Self> {
        if session.state != State::Ready || session.conn.is_none() {
            return Err(Error::Closed);
        }
        session.state = State::InFlight(effect);
        Ok(InFlight { session })
    }

    fn conn(&mut self) -> Result<&mut PgConnection> {
        self.session
            .conn
            .as_mut()
            .map(AsMut::as_mut)
            .ok_or(Error::Closed)
    }

    /// No answer within `limit`: the server or the network is gone for all we know, and
    /// the answer, if it ever comes, must not be waited for. Ends the session.
    fn unanswered(self, key: LockKey, limit: Duration) -> Error {
        self.session.end("a statement went unanswered");
        Error::Unresponsive { key, after: limit }
    }

    /// The answer arrived: the session is idle again; errors become ours.
    fn finish<R>(self, key: LockKey, result: Result<Option<R>, sqlx::Error>) -> Result<Option<R>> {
        self.session.state = State::Ready;
        result.map_err(|err| self.session.classify(key, err))
    }
}

impl<C: LockConnection> Drop for InFlight<'_, C> {
    fn drop(&mut self) {
        if let State::InFlight(effect) = self.session.state {
            self.session.abandon(effect);
        }
    }
}

impl<C: LockConnection> Drop for Session<C> {
    fn drop(&mut self) {
        // A pending statement would pass to the pool's next borrower, and so would our
        // session settings, which only an awaited `close` can put back.
        if matches!(self.state, State::InFlight(_)) || self.facts.restore_owed {
            self.discard_on_drop();
        }
    }
}

impl<C: LockConnection> std::fmt::Debug for Session<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("pid", &self.facts.pid)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_settings_read_as_postgresql_shows_them() {
        for (shown, millis) in [
            ("0", 0),
            ("250ms", 250),
            ("30s", 30_000),
            ("5min", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("weird", 1),
        ] {
            assert_eq!(super::setting_millis(shown), millis, "{shown}");
        }
    }
}

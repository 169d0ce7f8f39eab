//! Every statement pglock sends, in one place.
//!
//! Each is a constant with bound parameters; nothing is ever formatted into SQL. The
//! `bigint` and int-pair key spaces need different function signatures, so most
//! statements come as a [`KeyedSql`] pair and [`KeyedSql::for_key`] picks one. Its fields
//! are private: a `KeyedSql` is built only here, and read only through `for_key`.
//!
//! Every statement an `AdvisoryLock` sends on its session returns two columns: its value
//! and `pg_backend_pid()`, the server session that ran it. A session lock is only a lock
//! while every statement runs on the same server session; a transaction-pooling proxy
//! (PgBouncer) moves them between sessions, and the lock notices at once.
//!
//! # Why no statement can be built at run time
//!
//! The compiler proves most of it. In sqlx 0.9 every function that takes a statement takes
//! `impl SqlSafeStr`: `query`, `query_with`, `query_as`, `query_as_with`, `query_scalar`,
//! `query_scalar_with`, `raw_sql`, `Connection::begin_with`, `Pool::begin_with`, and
//! `Executor::execute`, `execute_many`, `fetch`, `fetch_many`, `fetch_all`, `fetch_one` and
//! `fetch_optional` through `Execute`, which a bare statement implements only as
//! `T: SqlSafeStr` (alone or as `(T, Option<arguments>)`). `Executor::prepare` and
//! `prepare_with` take a `SqlStr`, which comes only from a `SqlSafeStr`,
//! `SqlStr::from_static(&'static str)` or a `QueryBuilder`. And `SqlSafeStr` is implemented for exactly three
//! types: `&'static str`, `SqlStr`, and sqlx's escape hatch `AssertSqlSafe<T>`. So a
//! `String`, a `&String`, a `Box<str>`, an `Arc<str>`, a `Cow<'static, str>` or a borrowed
//! `&str` is a compile error wherever sqlx expects SQL; the examples below fail to compile,
//! each for that reason (the first compiles: it is the frame of the others).
//!
//! What the compiler still lets through, `tests/pg/security.rs` forbids in `src/` by a text
//! scan: `AssertSqlSafe`; `QueryBuilder`, whose `new` and `push` take any text and whose
//! `build` wraps it in `AssertSqlSafe`; `copy_in_raw` and `copy_out_raw` (of `PgConnection`
//! and `PgPoolCopyExt`), which take any `&str`; `raw_sql`, which binds no parameters; a
//! `&'static str` made at run time, by `leak` (`String::leak`, `Box::leak`, ...) or a
//! static set at run time (`OnceLock`, `LazyLock`, ...); text from outside the source
//! (`include_str!`, `env!`, ...) or whose words a scan cannot see (`concat!`, `stringify!`);
//! and SQL-looking text anywhere but in this file. The few uses the crate needs (the timer's
//! leaked state, the embedded migrations) are listed there by file and count. In this file
//! `format!` and its kin are forbidden too. `unsafe`, which could forge a `&'static str`, is
//! forbidden by the compiler (`#![forbid(unsafe_code)]` in each crate root, which the scan
//! checks).
//!
//! So every statement is a literal constant of this file, and its unit tests
//! (`sql/tests.rs`) check each one: what varies is a `$n` parameter (`$1..$n` without gaps;
//! advisory-lock functions take only parameters; no key-like column compared with a
//! literal; no `set_config` value, `LIMIT` or `OFFSET` (but the `OFFSET 0` planner fence)
//! given as a literal; no format placeholder; one statement each). They fail on a `const`
//! or `static` of this file they were not given, and on a string literal here that is not
//! a constant's value, so a new statement cannot go unchecked.
//!
//! ```no_run
//! # use sqlx::{Executor, PgConnection, postgres::PgArguments};
//! # async fn frame(conn: &mut PgConnection, args: PgArguments) -> sqlx::Result<()> {
//! const STATEMENT: &str = "SELECT pg_try_advisory_lock($1)";
//! sqlx::query_with(STATEMENT, args).execute(&mut *conn).await?;
//! conn.execute(STATEMENT).await?;
//! # Ok(())
//! # }
//! ```
//!
//! A formatted `String` (and so a `&String`):
//!
//! ```compile_fail,E0277
//! # async fn f(conn: &mut sqlx::PgConnection, key: i64) {
//! let _ = sqlx::query(format!("SELECT pg_advisory_lock({key})")).execute(conn).await;
//! # }
//! ```
//!
//! ```compile_fail,E0277
//! # async fn f(conn: &mut sqlx::PgConnection, key: i64) {
//! let _ = sqlx::query(&format!("SELECT pg_advisory_lock({key})")).execute(conn).await;
//! # }
//! ```
//!
//! A borrow of a local `String`, and a `&str` parameter, which could hold any text:
//!
//! ```compile_fail,E0597
//! # async fn f(conn: &mut sqlx::PgConnection, text: String) {
//! let _ = sqlx::query_as::<_, (bool,)>(text.as_str()).fetch_one(conn).await;
//! # }
//! ```
//!
//! ```compile_fail,E0521
//! # async fn f(conn: &mut sqlx::PgConnection, args: sqlx::postgres::PgArguments, sql: &str) {
//! let _ = sqlx::query_scalar_with::<_, bool, _>(sql, args).fetch_one(conn).await;
//! # }
//! ```
//!
//! ```compile_fail,E0521
//! # async fn f(conn: &mut sqlx::PgConnection, sql: &str) {
//! let _ = sqlx::raw_sql(sql).execute(conn).await;
//! # }
//! ```
//!
//! `Executor` methods, given a `String`, a `&str`, or a `&str` with arguments:
//!
//! ```compile_fail,E0277
//! # use sqlx::Executor;
//! # async fn f(conn: &mut sqlx::PgConnection, text: String) {
//! let _ = conn.execute(text).await;
//! # }
//! ```
//!
//! ```compile_fail,E0521
//! # use sqlx::Executor;
//! # async fn f(conn: &mut sqlx::PgConnection, sql: &str) {
//! let _ = conn.fetch_one(sql).await;
//! # }
//! ```
//!
//! ```compile_fail,E0521
//! # use sqlx::Executor;
//! # async fn f(conn: &mut sqlx::PgConnection, args: sqlx::postgres::PgArguments, sql: &str) {
//! let _ = conn.execute((sql, Some(args))).await;
//! # }
//! ```
//!
//! Owned strings of other kinds, and a `SqlStr` made from a borrowed `&str`:
//!
//! ```compile_fail,E0277
//! # async fn f(conn: &mut sqlx::PgConnection, sql: std::borrow::Cow<'static, str>) {
//! let _ = sqlx::query(sql).execute(conn).await;
//! # }
//! ```
//!
//! ```compile_fail,E0277
//! # async fn f(conn: &mut sqlx::PgConnection, sql: std::sync::Arc<str>) {
//! let _ = sqlx::query(sql).execute(conn).await;
//! # }
//! ```
//!
//! ```compile_fail,E0521
//! # async fn f(conn: &mut sqlx::PgConnection, sql: &str) {
//! let _ = sqlx::query(sqlx::SqlStr::from_static(sql)).execute(conn).await;
//! # }
//! ```

use std::time::Duration;

use sqlx::Arguments;
use sqlx::postgres::{PgArguments, Postgres};

use crate::{Error, LockKey, Result};

#[cfg(test)]
mod tests;

/// One statement in both key spaces: `$1` is the `bigint` key, or `$1, $2` the int pair.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedSql {
    bigint: &'static str,
    pair: &'static str,
}

impl KeyedSql {
    pub(crate) fn for_key(self, key: LockKey) -> &'static str {
        match key {
            LockKey::BigInt(_) => self.bigint,
            LockKey::IntPair(..) => self.pair,
        }
    }
}

/// The key's bind parameters: `$1` for a `bigint` key, `$1, $2` for an int pair.
pub(crate) fn key_args(key: LockKey) -> Result<PgArguments> {
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

/// Appends one bind parameter.
pub(crate) fn add<'t, T>(args: &mut PgArguments, value: T) -> Result<()>
where
    T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>,
{
    args.add(value)
        .map_err(|err| Error::Database(sqlx::Error::Encode(err)))
}

/// A wait's bound as `lock_timeout` milliseconds: whole milliseconds up to `i32::MAX`,
/// rounded up and never 0 (which would mean "wait forever").
pub(crate) fn lock_timeout_millis(timeout: Duration) -> i64 {
    let millis = i64::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i64::MAX);
    millis.clamp(1, i64::from(i32::MAX))
}

// Session statements. `$1` is the server session (`pg_backend_pid()`) the lock's
// levels live on: a statement that changes levels does so only there (`CASE WHEN
// pg_backend_pid() = $1 ...`), so that one that lands on another server session (behind
// a transaction-pooling proxy) changes nothing and is caught by the pid it returns. The
// key follows as `$2` (bigint) or `$2, $3` (int pair).

/// Blocks until the exclusive level is granted; `true`.
pub(crate) const LOCK: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_lock($2)::text = '' END",
    pair: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_lock($2, $3)::text = '' END",
};

/// Blocks until the shared level is granted; `true`.
pub(crate) const LOCK_SHARED: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_lock_shared($2)::text = '' END",
    pair: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_lock_shared($2, $3)::text = '' END",
};

/// Takes the exclusive level if it is free now; returns whether it did.
pub(crate) const TRY_LOCK: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_try_advisory_lock($2) END",
    pair: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_try_advisory_lock($2, $3) END",
};

/// Takes the shared level if it is free now; returns whether it did.
pub(crate) const TRY_LOCK_SHARED: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_try_advisory_lock_shared($2) END",
    pair: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_try_advisory_lock_shared($2, $3) END",
};

/// Releases one exclusive level; false (with a server WARNING) if none was held.
pub(crate) const UNLOCK: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_unlock($2) END",
    pair: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_unlock($2, $3) END",
};

/// Releases one shared level; false (with a server WARNING) if none was held.
pub(crate) const UNLOCK_SHARED: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_unlock_shared($2) END",
    pair: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_unlock_shared($2, $3) END",
};

/// Releases exactly the levels this lock holds (`$n` exclusive, `$n+1` shared) in one
/// round trip, and says whether the server had every one of them. Not
/// `pg_advisory_unlock_all()`: a borrowed session may hold other locks of its owner's.
/// Both counts are computed in the subquery, so AND cannot skip either unlock; the
/// subquery runs only in its CASE branch.
pub(crate) const UNLOCK_LEVELS: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_backend_pid() = $1 THEN (SELECT \
        r.exclusive = $3 AND r.shared = $4 FROM (SELECT \
        (SELECT count(*) FROM generate_series(1, $3) WHERE pg_advisory_unlock($2)) AS exclusive, \
        (SELECT count(*) FROM generate_series(1, $4) WHERE pg_advisory_unlock_shared($2)) AS shared \
        OFFSET 0) AS r) END, pg_backend_pid()",
    pair: "SELECT CASE WHEN pg_backend_pid() = $1 THEN (SELECT \
        r.exclusive = $4 AND r.shared = $5 FROM (SELECT \
        (SELECT count(*) FROM generate_series(1, $4) WHERE pg_advisory_unlock($2, $3)) AS exclusive, \
        (SELECT count(*) FROM generate_series(1, $5) WHERE pg_advisory_unlock_shared($2, $3)) AS shared \
        OFFSET 0) AS r) END, pg_backend_pid()",
};

/// Waits at most `$n` (a `lock_timeout` value such as `'250ms'`) for the exclusive level,
/// in one round trip: the subquery sets `lock_timeout` for this statement's own implicit
/// transaction before the lock is requested (`OFFSET 0` keeps the planner from merging
/// it away), and the outer select, after the lock, puts the previous value back, which
/// matters when the caller's session is inside a transaction block. Fails with SQLSTATE
/// 55P03 on timeout.
pub(crate) const TRY_LOCK_FOR: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_lock($2)::text = '' END, pg_backend_pid(), \
        set_config('lock_timeout', s.previous, true) \
        FROM (SELECT current_setting('lock_timeout') AS previous, \
              set_config('lock_timeout', $3, true) OFFSET 0) AS s",
    pair: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_lock($2, $3)::text = '' END, pg_backend_pid(), \
        set_config('lock_timeout', s.previous, true) \
        FROM (SELECT current_setting('lock_timeout') AS previous, \
              set_config('lock_timeout', $4, true) OFFSET 0) AS s",
};

/// [`TRY_LOCK_FOR`] for the shared level.
pub(crate) const TRY_LOCK_SHARED_FOR: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_lock_shared($2)::text = '' END, pg_backend_pid(), \
        set_config('lock_timeout', s.previous, true) \
        FROM (SELECT current_setting('lock_timeout') AS previous, \
              set_config('lock_timeout', $3, true) OFFSET 0) AS s",
    pair: "SELECT CASE WHEN pg_backend_pid() = $1 \
        THEN pg_advisory_lock_shared($2, $3)::text = '' END, pg_backend_pid(), \
        set_config('lock_timeout', s.previous, true) \
        FROM (SELECT current_setting('lock_timeout') AS previous, \
              set_config('lock_timeout', $4, true) OFFSET 0) AS s",
};

/// Whether this session holds the key in any mode, from `pg_locks`: the server's truth,
/// not our counters. Binds the key as `pg_locks` shows it (see `LockKey::pg_locks_ids`).
pub(crate) const IS_HELD: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted \
     AND classid = $1 AND objid = $2 AND objsubid = $3), pg_backend_pid()";

/// [`IS_HELD`] for one mode (`$4`: `'ExclusiveLock'` or `'ShareLock'`): after a lock
/// timeout, whether the grant raced the timeout and the session holds the level anyway.
pub(crate) const IS_HELD_IN_MODE: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted \
     AND classid = $1 AND objid = $2 AND objsubid = $3 AND mode = $4), pg_backend_pid()";

/// A session's first statement: everything the lock must learn about a session, done in
/// the round trip of its first acquisition. It tries the key (`$10`, or `$10, $11`) once
/// in mode `$8` (1 exclusive, 2 shared, 0 nothing: a first statement that is not an
/// acquisition), unless
/// the server is a hot standby (`pg_is_in_recovery()`: then nothing is taken, see
/// `Error::StandbyServer`); it never waits: a wait that a try cannot satisfy is the next
/// statement, on a session that is then fully known. It reports the server session
/// (`pg_backend_pid()`: every later statement must run there), whether it is a standby,
/// and the session's `statement_timeout` as the server shows it (it is armed when a
/// statement starts, so a longer timed wait must lift it with a statement of its own).
///
/// With `$1` (an owned session) it also sets the session up, changing only what needs
/// it. What is off is turned on, and left on at `close` (it only makes the server notice
/// a vanished client sooner): the check for a gone client even while a lock waits
/// (`client_connection_check_interval` = `$3`, PostgreSQL 14+; not when `$3` is NULL).
/// The server's probes of a silent client's socket (keepalive idle `$4` seconds, interval
/// `$5`, `$7` probes) are made at least as tight as these, so that a holder cut off
/// without a FIN or RST loses its locks in about `$4 + $7 × $5` instead of the kernel's
/// hours: on a TCP session `current_setting` shows the socket's value in effect (the
/// kernel's 7200, 75 and 9 when nothing set them), never 0, so a looser value is what
/// "off" looks like; 0 is a Unix socket, where setting them changes nothing. What is on and would let a held
/// lock go silently (`idle_session_timeout`, `idle_in_transaction_session_timeout`) is
/// turned off (`$6`: `'0'`, also what "off" reads as), and `application_name` is set if
/// `$2` is not NULL: those are owed back, so the statement stashes the values it found in
/// the placeholder setting `pglock.restore` for [`RESTORE_SESSION`], and answers whether
/// it did (the fifth column). Last, it marks the session as set up (`pglock.session` =
/// `$9`), so that a later lock on it (a pool hands the same session out again) starts
/// with [`FIRST_CONFIGURED`] instead; [`RESTORE_SESSION`] takes the mark off with what it
/// puts back. One level of select, its columns evaluated in order: the stash reads before
/// the settings change.
///
/// Its cost is its size: PostgreSQL builds the executor state of all fourteen columns at
/// every execution, whether or not a branch runs, about 10 µs of server CPU more than
/// `SELECT pg_try_advisory_lock($1)` (`BENCHMARKS.md`). Hence the mark.
pub(crate) const FIRST: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            WHEN $8 = 1 THEN pg_try_advisory_lock($10) WHEN $8 = 2 THEN pg_try_advisory_lock_shared($10) END, \
        pg_backend_pid(), pg_is_in_recovery(), current_setting('statement_timeout'), \
        $1 AND ($2 IS NOT NULL OR coalesce(current_setting('idle_session_timeout', true), $6) <> $6 \
            OR current_setting('idle_in_transaction_session_timeout') <> $6), \
        CASE WHEN $1 AND ($2 IS NOT NULL \
                OR coalesce(current_setting('idle_session_timeout', true), $6) <> $6 \
                OR current_setting('idle_in_transaction_session_timeout') <> $6) \
            THEN set_config('pglock.restore', ARRAY[current_setting('application_name'), \
                current_setting('idle_session_timeout', true), \
                current_setting('idle_in_transaction_session_timeout')]::text, false) END, \
        CASE WHEN $1 AND $2 IS NOT NULL THEN set_config('application_name', $2, false) END, \
        CASE WHEN $1 AND coalesce(current_setting('idle_session_timeout', true), $6) <> $6 \
            THEN set_config('idle_session_timeout', $6, false) END, \
        CASE WHEN $1 AND current_setting('idle_in_transaction_session_timeout') <> $6 \
            THEN set_config('idle_in_transaction_session_timeout', $6, false) END, \
        CASE WHEN $1 AND $3 IS NOT NULL \
                AND current_setting('client_connection_check_interval', true) = $6 \
            THEN set_config('client_connection_check_interval', $3, false) END, \
        CASE WHEN $1 AND current_setting('tcp_keepalives_idle')::int4 NOT BETWEEN 1 AND $4::int4 \
            THEN set_config('tcp_keepalives_idle', $4, false) END, \
        CASE WHEN $1 AND current_setting('tcp_keepalives_interval')::int4 NOT BETWEEN 1 AND $5::int4 \
            THEN set_config('tcp_keepalives_interval', $5, false) END, \
        CASE WHEN $1 AND current_setting('tcp_keepalives_count')::int4 NOT BETWEEN 1 AND $7::int4 \
            THEN set_config('tcp_keepalives_count', $7, false) END, \
        CASE WHEN $1 THEN set_config('pglock.session', $9, false) END",
    pair: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            WHEN $8 = 1 THEN pg_try_advisory_lock($10, $11) WHEN $8 = 2 THEN pg_try_advisory_lock_shared($10, $11) END, \
        pg_backend_pid(), pg_is_in_recovery(), current_setting('statement_timeout'), \
        $1 AND ($2 IS NOT NULL OR coalesce(current_setting('idle_session_timeout', true), $6) <> $6 \
            OR current_setting('idle_in_transaction_session_timeout') <> $6), \
        CASE WHEN $1 AND ($2 IS NOT NULL \
                OR coalesce(current_setting('idle_session_timeout', true), $6) <> $6 \
                OR current_setting('idle_in_transaction_session_timeout') <> $6) \
            THEN set_config('pglock.restore', ARRAY[current_setting('application_name'), \
                current_setting('idle_session_timeout', true), \
                current_setting('idle_in_transaction_session_timeout')]::text, false) END, \
        CASE WHEN $1 AND $2 IS NOT NULL THEN set_config('application_name', $2, false) END, \
        CASE WHEN $1 AND coalesce(current_setting('idle_session_timeout', true), $6) <> $6 \
            THEN set_config('idle_session_timeout', $6, false) END, \
        CASE WHEN $1 AND current_setting('idle_in_transaction_session_timeout') <> $6 \
            THEN set_config('idle_in_transaction_session_timeout', $6, false) END, \
        CASE WHEN $1 AND $3 IS NOT NULL \
                AND current_setting('client_connection_check_interval', true) = $6 \
            THEN set_config('client_connection_check_interval', $3, false) END, \
        CASE WHEN $1 AND current_setting('tcp_keepalives_idle')::int4 NOT BETWEEN 1 AND $4::int4 \
            THEN set_config('tcp_keepalives_idle', $4, false) END, \
        CASE WHEN $1 AND current_setting('tcp_keepalives_interval')::int4 NOT BETWEEN 1 AND $5::int4 \
            THEN set_config('tcp_keepalives_interval', $5, false) END, \
        CASE WHEN $1 AND current_setting('tcp_keepalives_count')::int4 NOT BETWEEN 1 AND $7::int4 \
            THEN set_config('tcp_keepalives_count', $7, false) END, \
        CASE WHEN $1 THEN set_config('pglock.session', $9, false) END",
};

/// A first statement for an owned session that [`FIRST`] has already set up (a pool's
/// session that an earlier lock used; `$2` is the mark [`FIRST`] leaves as `$9`): the
/// try (mode `$1` as `$8` there; key `$3`, or `$3, $4`), the server session and
/// `statement_timeout`, and whether the mark is there. Without the mark it tries nothing
/// and the session runs [`FIRST`] next. The first column is NULL on a hot standby and
/// only there (nothing is tried), so no column of its own says so.
pub(crate) const FIRST_CONFIGURED: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            WHEN current_setting('pglock.session', true) IS DISTINCT FROM $2 THEN false \
            WHEN $1 = 1 THEN pg_try_advisory_lock($3) \
            WHEN $1 = 2 THEN pg_try_advisory_lock_shared($3) ELSE false END, \
        pg_backend_pid(), current_setting('statement_timeout'), \
        current_setting('pglock.session', true) IS NOT DISTINCT FROM $2",
    pair: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            WHEN current_setting('pglock.session', true) IS DISTINCT FROM $2 THEN false \
            WHEN $1 = 1 THEN pg_try_advisory_lock($3, $4) \
            WHEN $1 = 2 THEN pg_try_advisory_lock_shared($3, $4) ELSE false END, \
        pg_backend_pid(), current_setting('statement_timeout'), \
        current_setting('pglock.session', true) IS NOT DISTINCT FROM $2",
};

/// [`FIRST`] for a borrowed session, which is never set up: the try (mode `$1` as `$8`
/// there), the server session and `statement_timeout` only. As in [`FIRST_CONFIGURED`],
/// the first column is NULL on a hot standby and only there.
pub(crate) const FIRST_BORROWED: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            WHEN $1 = 1 THEN pg_try_advisory_lock($2) \
            WHEN $1 = 2 THEN pg_try_advisory_lock_shared($2) ELSE false END, \
        pg_backend_pid(), current_setting('statement_timeout')",
    pair: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            WHEN $1 = 1 THEN pg_try_advisory_lock($2, $3) \
            WHEN $1 = 2 THEN pg_try_advisory_lock_shared($2, $3) ELSE false END, \
        pg_backend_pid(), current_setting('statement_timeout')",
};

/// Puts back what [`FIRST`] owed (`application_name` if it set one, and the idle
/// timeouts it turned off), from its stash, before a pool connection goes back to its
/// pool, and takes off its mark (`pglock.session` = `$1`, empty): the next lock on this
/// session must run [`FIRST`] again. The probes it turned on stay on.
pub(crate) const RESTORE_SESSION: &str = "SELECT true, pg_backend_pid(), \
     set_config('pglock.session', $1, false), \
     set_config('application_name', r.v[1], false), \
     CASE WHEN r.v[2] IS NOT NULL THEN set_config('idle_session_timeout', r.v[2], false) END, \
     set_config('idle_in_transaction_session_timeout', r.v[3], false) \
     FROM (SELECT current_setting('pglock.restore')::text[] AS v OFFSET 0) AS r";

/// Whether the session is alive, and which server session answers: the loss check of a
/// session the lock owns. There only the lock changes its levels, so a live session with
/// the same pid still holds them, and `pg_locks` (which locks every lock-manager
/// partition and copies every lock on the server) need not be read.
pub(crate) const LIVENESS: &str = "SELECT true, pg_backend_pid()";

/// The session's `statement_timeout` in milliseconds (0: none), for a timed wait that
/// may have to lift it.
pub(crate) const STATEMENT_TIMEOUT_MS: &str = "SELECT \
     (EXTRACT(EPOCH FROM current_setting('statement_timeout')::interval) * 1000)::int8, \
     pg_backend_pid()";

/// Sets the session's `statement_timeout` (`$1`, in milliseconds as text).
pub(crate) const SET_STATEMENT_TIMEOUT: &str =
    "SELECT set_config('statement_timeout', $1, false), pg_backend_pid()";

// `LockClient` statements. A lane (a session shared by many locks) sends the operations
// that queued up while its previous statement was in flight as one statement over
// arrays: `unnest` numbers each operation (`WITH ORDINALITY`), and each row answers
// one. Keys of both spaces travel in the same arrays: `pair` says whether `k1`, `k2`
// are an int pair or `k1` a bigint. `$1` is the lane's server session, as above.

/// A lane's batch: operation `n` is `kind[n]` (1 try exclusive, 2 try shared, 3 unlock
/// exclusive, 4 unlock shared) on key (`pair[n]`, `k1[n]`, `k2[n]`). One row per
/// operation: its number, its result (NULL on another server session), the pid.
pub(crate) const LANE_BATCH: &str = "SELECT o.n, CASE WHEN pg_backend_pid() = $1 THEN \
        CASE o.kind \
        WHEN 1 THEN CASE WHEN o.pair THEN pg_try_advisory_lock(o.k1::int4, o.k2) \
                    ELSE pg_try_advisory_lock(o.k1) END \
        WHEN 2 THEN CASE WHEN o.pair THEN pg_try_advisory_lock_shared(o.k1::int4, o.k2) \
                    ELSE pg_try_advisory_lock_shared(o.k1) END \
        WHEN 3 THEN CASE WHEN o.pair THEN pg_advisory_unlock(o.k1::int4, o.k2) \
                    ELSE pg_advisory_unlock(o.k1) END \
        WHEN 4 THEN CASE WHEN o.pair THEN pg_advisory_unlock_shared(o.k1::int4, o.k2) \
                    ELSE pg_advisory_unlock_shared(o.k1) END END END, \
        pg_backend_pid() \
    FROM unnest($2::int4[], $3::bool[], $4::int8[], $5::int4[]) \
        WITH ORDINALITY AS o(kind, pair, k1, k2, n)";

/// Every key or none, in one statement: tries each key (shared if `$2`), and if any
/// was refused, gives back the ones it took before answering. The materialized CTEs run
/// in order: every try, then the verdict, then the undoing. Answers whether it took
/// them all (false, and nothing taken, on another server session than `$1`).
pub(crate) const TRY_LOCK_ALL: &str = "WITH tried AS MATERIALIZED ( \
        SELECT o.pair, o.k1, o.k2, CASE WHEN pg_backend_pid() <> $1 THEN NULL \
            WHEN $2 THEN CASE WHEN o.pair THEN pg_try_advisory_lock_shared(o.k1::int4, o.k2) \
                         ELSE pg_try_advisory_lock_shared(o.k1) END \
            ELSE CASE WHEN o.pair THEN pg_try_advisory_lock(o.k1::int4, o.k2) \
                 ELSE pg_try_advisory_lock(o.k1) END END AS ok \
        FROM unnest($3::bool[], $4::int8[], $5::int4[]) WITH ORDINALITY AS o(pair, k1, k2, n)), \
    verdict AS MATERIALIZED (SELECT coalesce(bool_and(ok), false) AS all_ok FROM tried), \
    undone AS MATERIALIZED (SELECT count(CASE WHEN $2 \
            THEN CASE WHEN t.pair THEN pg_advisory_unlock_shared(t.k1::int4, t.k2) \
                 ELSE pg_advisory_unlock_shared(t.k1) END \
            ELSE CASE WHEN t.pair THEN pg_advisory_unlock(t.k1::int4, t.k2) \
                 ELSE pg_advisory_unlock(t.k1) END END) AS n \
        FROM tried AS t, verdict AS v WHERE NOT v.all_ok AND t.ok) \
    SELECT v.all_ok, pg_backend_pid() FROM verdict AS v, undone AS u";

/// Waits for every key (shared if `$2`) in the order given, on a session that holds
/// nothing else: keys taken in one global order cannot deadlock against another caller
/// doing the same. Bounded by the session's `statement_timeout`, set before it.
pub(crate) const LOCK_ALL: &str = "SELECT count(CASE WHEN pg_backend_pid() <> $1 THEN NULL \
        WHEN $2 THEN CASE WHEN o.pair THEN pg_advisory_lock_shared(o.k1::int4, o.k2)::text \
                     ELSE pg_advisory_lock_shared(o.k1)::text END \
        ELSE CASE WHEN o.pair THEN pg_advisory_lock(o.k1::int4, o.k2)::text \
             ELSE pg_advisory_lock(o.k1)::text END END) = cardinality($3::bool[]), \
        pg_backend_pid() \
    FROM unnest($3::bool[], $4::int8[], $5::int4[]) WITH ORDINALITY AS o(pair, k1, k2, n)";

/// The advisory levels this session holds (key as `pg_locks` shows it, and whether
/// exclusive), after a lane's statement failed part-way (a full lock table, 53200): a
/// session lock taken by a failed statement stays taken, so the client's record is
/// mended from the server's truth. `$1` is the lane's server session.
pub(crate) const LANE_HOLDINGS: &str = "SELECT l.classid::int8, l.objid::int8, l.objsubid, \
        l.mode = 'ExclusiveLock', pg_backend_pid() \
    FROM pg_catalog.pg_locks AS l \
    WHERE l.locktype = 'advisory' AND l.granted AND l.pid = pg_backend_pid() \
      AND pg_backend_pid() = $1";

/// Transaction-scoped: blocks until the exclusive level is granted (true); released at
/// commit or rollback. NULL, and nothing taken, on a hot standby, whose advisory locks
/// exclude no one on the primary: CASE checks `pg_is_in_recovery()` first, in the same
/// round trip.
pub(crate) const XACT_LOCK: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
        ELSE pg_advisory_xact_lock($1)::text = '' END",
    pair: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
        ELSE pg_advisory_xact_lock($1, $2)::text = '' END",
};

/// Transaction-scoped: blocks until the shared level is granted; NULL on a standby
/// (see [`XACT_LOCK`]).
pub(crate) const XACT_LOCK_SHARED: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
        ELSE pg_advisory_xact_lock_shared($1)::text = '' END",
    pair: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
        ELSE pg_advisory_xact_lock_shared($1, $2)::text = '' END",
};

/// Transaction-scoped: takes the exclusive level if it is free now; NULL on a standby
/// (see [`XACT_LOCK`]).
pub(crate) const TRY_XACT_LOCK: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
        ELSE pg_try_advisory_xact_lock($1) END",
    pair: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
        ELSE pg_try_advisory_xact_lock($1, $2) END",
};

/// Transaction-scoped: takes the shared level if no one holds it exclusively now; NULL
/// on a standby (see [`XACT_LOCK`]).
pub(crate) const TRY_XACT_LOCK_SHARED: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
        ELSE pg_try_advisory_xact_lock_shared($1) END",
    pair: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
        ELSE pg_try_advisory_xact_lock_shared($1, $2) END",
};

/// Transaction-scoped [`TRY_LOCK_FOR`]: waits at most `$n` for the exclusive level (true;
/// SQLSTATE 55P03 on timeout); NULL on a standby, without waiting (see [`XACT_LOCK`]).
pub(crate) const TRY_XACT_LOCK_FOR: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            ELSE pg_advisory_xact_lock($1)::text = '' END, \
        set_config('lock_timeout', s.previous, true) \
        FROM (SELECT current_setting('lock_timeout') AS previous, \
              set_config('lock_timeout', $2, true) OFFSET 0) AS s",
    pair: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            ELSE pg_advisory_xact_lock($1, $2)::text = '' END, \
        set_config('lock_timeout', s.previous, true) \
        FROM (SELECT current_setting('lock_timeout') AS previous, \
              set_config('lock_timeout', $3, true) OFFSET 0) AS s",
};

/// Transaction-scoped [`TRY_LOCK_SHARED_FOR`]; NULL on a standby (see [`XACT_LOCK`]).
pub(crate) const TRY_XACT_LOCK_SHARED_FOR: KeyedSql = KeyedSql {
    bigint: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            ELSE pg_advisory_xact_lock_shared($1)::text = '' END, \
        set_config('lock_timeout', s.previous, true) \
        FROM (SELECT current_setting('lock_timeout') AS previous, \
              set_config('lock_timeout', $2, true) OFFSET 0) AS s",
    pair: "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
            ELSE pg_advisory_xact_lock_shared($1, $2)::text = '' END, \
        set_config('lock_timeout', s.previous, true) \
        FROM (SELECT current_setting('lock_timeout') AS previous, \
              set_config('lock_timeout', $3, true) OFFSET 0) AS s",
};

/// Fences a transaction-scoped acquisition, so that its failure (a timeout, a deadlock)
/// rolls back to here instead of aborting the caller's transaction.
pub(crate) const SAVEPOINT: &str = "SAVEPOINT pglock_acquire";

/// Keeps what the fenced acquisition took (the lock passes to the enclosing transaction).
pub(crate) const RELEASE_SAVEPOINT: &str = "RELEASE SAVEPOINT pglock_acquire";

/// Undoes a failed fenced acquisition, and any setting it changed.
pub(crate) const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT pglock_acquire";

/// Sets `statement_timeout` for the rest of the current transaction (`$1`, ms as text).
pub(crate) const SET_LOCAL_STATEMENT_TIMEOUT: &str =
    "SELECT set_config('statement_timeout', $1, true)";

/// Takes the exclusive level, then bumps the key's fencing token (`$n`: the key's text
/// form) and returns it, in one statement; NULL (and no token used) if the statement ran
/// on another server session than `$1`. The materialized CTE runs the acquisition before
/// the upsert reads its row; the outer select always returns one row.
pub(crate) const LOCK_FENCED: KeyedSql = KeyedSql {
    bigint: "WITH acquired AS MATERIALIZED \
            (SELECT pg_advisory_lock($2) WHERE pg_backend_pid() = $1), \
        bumped AS (INSERT INTO pglock_fencing_tokens AS t (lock_key, token) \
            SELECT $3, 1 FROM acquired \
            ON CONFLICT (lock_key) DO UPDATE SET token = t.token + 1, updated_at = now() \
            RETURNING t.token) \
        SELECT (SELECT token FROM bumped), pg_backend_pid()",
    pair: "WITH acquired AS MATERIALIZED \
            (SELECT pg_advisory_lock($2, $3) WHERE pg_backend_pid() = $1), \
        bumped AS (INSERT INTO pglock_fencing_tokens AS t (lock_key, token) \
            SELECT $4, 1 FROM acquired \
            ON CONFLICT (lock_key) DO UPDATE SET token = t.token + 1, updated_at = now() \
            RETURNING t.token) \
        SELECT (SELECT token FROM bumped), pg_backend_pid()",
};

/// [`LOCK_FENCED`] without waiting: NULL (and no token used) if the key is taken.
pub(crate) const TRY_LOCK_FENCED: KeyedSql = KeyedSql {
    bigint: "WITH acquired AS MATERIALIZED \
            (SELECT pg_try_advisory_lock($2) AS ok WHERE pg_backend_pid() = $1), \
        bumped AS (INSERT INTO pglock_fencing_tokens AS t (lock_key, token) \
            SELECT $3, 1 FROM acquired WHERE acquired.ok \
            ON CONFLICT (lock_key) DO UPDATE SET token = t.token + 1, updated_at = now() \
            RETURNING t.token) \
        SELECT (SELECT token FROM bumped), pg_backend_pid()",
    pair: "WITH acquired AS MATERIALIZED \
            (SELECT pg_try_advisory_lock($2, $3) AS ok WHERE pg_backend_pid() = $1), \
        bumped AS (INSERT INTO pglock_fencing_tokens AS t (lock_key, token) \
            SELECT $4, 1 FROM acquired WHERE acquired.ok \
            ON CONFLICT (lock_key) DO UPDATE SET token = t.token + 1, updated_at = now() \
            RETURNING t.token) \
        SELECT (SELECT token FROM bumped), pg_backend_pid()",
};

/// The key's newest fencing token, share-locking its row until the caller's transaction
/// ends, so no newer token is issued before the fenced write commits.
pub(crate) const CURRENT_TOKEN: &str =
    "SELECT token FROM pglock_fencing_tokens WHERE lock_key = $1 FOR SHARE";

/// Every advisory lock in the current database with its session's activity, holders
/// first, then waiters in arrival order; `$1..$3` (nullable) narrow it to one key as
/// `pg_locks` shows it. `waitstart` (PostgreSQL 14+) is read through `to_jsonb` so that
/// older servers answer with NULL instead of failing.
pub(crate) const ADVISORY_LOCKS: &str = "SELECT l.classid::bigint AS classid, \
        l.objid::bigint AS objid, l.objsubid, l.pid, l.mode, l.granted, \
        EXTRACT(EPOCH FROM clock_timestamp() - w.wait_start)::float8 AS waiting_secs, \
        w.wait_start::text AS wait_start, a.application_name, \
        host(a.client_addr) AS client_addr, \
        EXTRACT(EPOCH FROM clock_timestamp() - a.query_start)::float8 AS query_secs, a.state \
    FROM pg_catalog.pg_locks AS l \
    CROSS JOIN LATERAL (SELECT (to_jsonb(l) ->> 'waitstart')::timestamptz AS wait_start) AS w \
    LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid \
    WHERE l.locktype = 'advisory' \
      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
      AND ($1::bigint IS NULL OR (l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid \
           AND l.objsubid = $3::int2)) \
    ORDER BY l.granted DESC, w.wait_start NULLS FIRST, l.pid";

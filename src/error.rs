//! One error type for every operation, with variants a caller can act on.

use crate::{LockKey, LockMode};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a lock operation.
///
/// A wait that times out is not an error: timed and `try_` acquisitions return `Ok(false)`.
/// Each method's `# Errors` section says which variants it returns, and when; the ones
/// every lock shares are listed on [`DistributedLock`](crate::DistributedLock#errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `unlock`/`unlock_shared` was called with no level of that mode held. Nothing changed.
    #[error(
        "advisory lock {key} is not held in {mode} mode by this lock, so there is nothing to \
         release; pair each unlock with a successful lock of the same mode"
    )]
    NotHeld {
        /// The lock's key.
        key: LockKey,
        /// The mode the caller tried to release.
        mode: LockMode,
    },

    /// The lock was closed; it no longer has a session. Create a new lock to use the key again.
    #[error(
        "the lock was closed and has no session any more; create a new lock to use the key again"
    )]
    Closed,

    /// The session that held levels of this lock is gone (terminated, network cut, server
    /// restart), and with it every level: another holder may have the key now.
    #[error(
        "advisory lock {key} was lost: the session that held it is gone (terminated, \
         disconnected or restarted), so another process may hold the key now; stop the \
         work the lock protected and acquire it again"
    )]
    LockLost {
        /// The lock's key.
        key: LockKey,
    },

    /// The lock's session is gone (the connection failed, or a cancelled operation had to
    /// end it) and this lock cannot open another. Locks from `AdvisoryLock::new` reconnect
    /// by themselves and do not return this.
    #[error(
        "the session of the lock on {key} is gone (its connection failed, or a cancelled \
         operation had to end it) and this lock cannot open another; create a new lock"
    )]
    Disconnected {
        /// The lock's key.
        key: LockKey,
    },

    /// An earlier operation on this lock was cancelled while its statement ran on a
    /// *borrowed* connection. That session may still be running it (and may get the key),
    /// so the lock will not use it again.
    #[error(
        "an earlier operation on the lock on {key} was cancelled while its statement ran on \
         a borrowed connection, which may still be waiting for or holding the key; close or \
         drop that connection to free it, and create a new lock (or use try_lock_for for \
         waits you may give up on)"
    )]
    Interrupted {
        /// The lock's key.
        key: LockKey,
    },

    /// The server did not answer a statement within the operation timeout
    /// ([`LockOptions::operation_timeout`](crate::LockOptions::operation_timeout)): the
    /// network or the server is gone for all the lock can tell, so it ended the session
    /// (a held level would be reported as [`Error::LockLost`] instead).
    #[error(
        "the server did not answer within {after:?} while working on advisory lock {key}; \
         the session was ended (check the network and the server, then retry)"
    )]
    Unresponsive {
        /// The lock's key.
        key: LockKey,
        /// How long the lock waited.
        after: std::time::Duration,
    },

    /// A fenced write carried an older token than the newest issued for its key: another
    /// holder has acquired the lock since. See [`fencing`](crate::fencing).
    #[error(
        "fencing token {token} for advisory lock {key} is stale (the newest is {current}): \
         another holder acquired the lock since; abandon this write"
    )]
    StaleToken {
        /// The lock's key.
        key: LockKey,
        /// The token the write carried.
        token: i64,
        /// The newest token issued for the key (0 if none was).
        current: i64,
    },

    /// The lock's statements did not all run on one server session: the connection goes
    /// through a transaction-pooling proxy (PgBouncer in `pool_mode = transaction`), where
    /// a session lock cannot work. Seen as two backend pids, or as the server not knowing
    /// a statement the lock prepared. The lock ended its connection and is not usable:
    /// every later operation returns this error again (also where levels it held would
    /// otherwise be reported as [`LockLost`](Error::LockLost)).
    /// Levels it took before it noticed stay on the proxy's server session until the
    /// proxy resets or closes it (PgBouncer: `server_reset_query = DISCARD ALL` with
    /// `server_reset_query_always = 1`).
    #[error(
        "the statements of the lock on {key} did not all run on one server session ({}): \
         the connection goes through a transaction-pooling proxy such as PgBouncer, where \
         session locks do not work; use transaction-scoped locks (pglock::xact) there, or \
         connect directly or through a session-pooling proxy",
        pinning_evidence(*first_pid, *pid)
    )]
    SessionNotPinned {
        /// The lock's key.
        key: LockKey,
        /// The server session (`pg_backend_pid()`) the lock's first statement ran on.
        first_pid: Option<i32>,
        /// The server session a later statement ran on, if it got that far.
        pid: Option<i32>,
    },

    /// The server is a hot standby (`pg_is_in_recovery()`): it grants advisory locks, but
    /// they are local to it (not WAL-logged) and exclude no session on the primary or on
    /// another standby. Nothing was taken.
    #[error(
        "the server is a hot standby (in recovery): advisory locks taken there are local to \
         it and exclude no one on the primary, so advisory lock {key} was not taken; point \
         the database URL at the primary"
    )]
    StandbyServer {
        /// The key that was being acquired.
        key: LockKey,
    },

    /// PostgreSQL broke a deadlock (SQLSTATE 40P01) by failing this acquisition.
    #[error(
        "acquiring advisory lock {key} would deadlock with another session (SQLSTATE 40P01); \
         release what this task holds and retry, or always take keys in one order"
    )]
    Deadlock {
        /// The key that was being acquired.
        key: LockKey,
    },

    /// The server's shared lock table is full (SQLSTATE 53200).
    #[error(
        "PostgreSQL's lock table is full while acquiring advisory lock {key} (SQLSTATE 53200); \
         release locks or raise max_locks_per_transaction on the server"
    )]
    TooManyLocks {
        /// The key that was being acquired.
        key: LockKey,
    },

    /// Any other error from sqlx or the database.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// SQLSTATEs by name, so the matching below reads as what it means.
pub(crate) mod sqlstate {
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const OUT_OF_SHARED_MEMORY: &str = "53200";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    /// Class 08: connection exception; 57P01-57P03: the server is ending the session.
    pub const SESSION_ENDED: [&str; 3] = ["57P01", "57P02", "57P03"];
}

/// The SQLSTATE of a database error, if it is one.
pub(crate) fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// What showed that a session moved between server sessions, for the message.
fn pinning_evidence(first: Option<i32>, now: Option<i32>) -> String {
    match (first, now) {
        (Some(first), Some(now)) => format!("backend pids {first} and {now}"),
        _ => "a prepared statement was missing on the server session".to_owned(),
    }
}

/// Whether `err` says the server session does not have a statement this connection
/// prepared, or has another under its name: the connection was moved to another server
/// session between statements (a transaction-pooling proxy such as PgBouncer < 1.21).
pub(crate) fn pooler_lost_statement(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else {
        return false;
    };
    match db.code().as_deref() {
        // invalid_sql_statement_name, duplicate_prepared_statement
        Some("26000") | Some("42P05") => true,
        // protocol_violation: Bind for a same-named statement with other parameters
        Some("08P01") => db.message().starts_with("bind message supplies"),
        _ => false,
    }
}

/// Turns a database error from an acquisition into the typed error a caller can act on.
pub(crate) fn from_acquisition(err: sqlx::Error, key: LockKey) -> Error {
    match sqlstate(&err).as_deref() {
        Some(sqlstate::DEADLOCK_DETECTED) => Error::Deadlock { key },
        Some(sqlstate::OUT_OF_SHARED_MEMORY) => Error::TooManyLocks { key },
        _ => Error::Database(err),
    }
}

/// Whether `err` means the session is gone, so the server has freed its locks.
pub(crate) fn session_is_gone(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(_) => sqlstate(err).is_some_and(|code| {
            code.starts_with("08") || sqlstate::SESSION_ENDED.contains(&code.as_str())
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let not_held = Error::NotHeld {
            key: LockKey::BigInt(7),
            mode: LockMode::Shared,
        };
        assert!(not_held.to_string().contains("not held in shared mode"));
        let full = Error::TooManyLocks {
            key: LockKey::IntPair(1, 2),
        };
        assert!(full.to_string().contains("max_locks_per_transaction"));
        assert!(full.to_string().contains("1,2"));
    }
}

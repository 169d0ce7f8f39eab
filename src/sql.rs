//! Every statement pglock sends, in one place.
//!
//! Each is a constant with bound parameters; nothing is ever formatted into SQL. The
//! `bigint` and int-pair key spaces need different function signatures, so most
//! statements come as a [`KeyedSql`] pair and [`KeyedSql::for_key`] picks one.

use crate::LockKey;

/// One statement in both key spaces: `$1` is the `bigint` key, or `$1, $2` the int pair.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedSql {
    pub bigint: &'static str,
    pub pair: &'static str,
}

impl KeyedSql {
    pub(crate) fn for_key(self, key: LockKey) -> &'static str {
        match key {
            LockKey::BigInt(_) => self.bigint,
            LockKey::IntPair(..) => self.pair,
        }
    }
}

/// Blocks until the exclusive level is granted.
pub(crate) const LOCK: KeyedSql = KeyedSql {
    bigint: "SELECT pg_advisory_lock($1)",
    pair: "SELECT pg_advisory_lock($1, $2)",
};

/// Blocks until the shared level is granted.
pub(crate) const LOCK_SHARED: KeyedSql = KeyedSql {
    bigint: "SELECT pg_advisory_lock_shared($1)",
    pair: "SELECT pg_advisory_lock_shared($1, $2)",
};

/// Takes the exclusive level if it is free now; returns whether it did.
pub(crate) const TRY_LOCK: KeyedSql = KeyedSql {
    bigint: "SELECT pg_try_advisory_lock($1)",
    pair: "SELECT pg_try_advisory_lock($1, $2)",
};

/// Takes the shared level if it is free now; returns whether it did.
pub(crate) const TRY_LOCK_SHARED: KeyedSql = KeyedSql {
    bigint: "SELECT pg_try_advisory_lock_shared($1)",
    pair: "SELECT pg_try_advisory_lock_shared($1, $2)",
};

/// Releases one exclusive level; false (with a server WARNING) if none was held.
pub(crate) const UNLOCK: KeyedSql = KeyedSql {
    bigint: "SELECT pg_advisory_unlock($1)",
    pair: "SELECT pg_advisory_unlock($1, $2)",
};

/// Releases one shared level; false (with a server WARNING) if none was held.
pub(crate) const UNLOCK_SHARED: KeyedSql = KeyedSql {
    bigint: "SELECT pg_advisory_unlock_shared($1)",
    pair: "SELECT pg_advisory_unlock_shared($1, $2)",
};

/// Releases exactly the levels this lock holds (`$n` exclusive, `$n+1` shared) in one
/// round trip, and says how many of each the server released. Not
/// `pg_advisory_unlock_all()`: a borrowed session may hold other locks of its owner's.
pub(crate) const UNLOCK_LEVELS: KeyedSql = KeyedSql {
    bigint: "SELECT \
        (SELECT count(*) FROM generate_series(1, $2) WHERE pg_advisory_unlock($1)), \
        (SELECT count(*) FROM generate_series(1, $3) WHERE pg_advisory_unlock_shared($1))",
    pair: "SELECT \
        (SELECT count(*) FROM generate_series(1, $3) WHERE pg_advisory_unlock($1, $2)), \
        (SELECT count(*) FROM generate_series(1, $4) WHERE pg_advisory_unlock_shared($1, $2))",
};

/// Whether this session holds the key in any mode, from `pg_locks`: the server's truth,
/// not our counters. Binds the key as `pg_locks` shows it (see `LockKey::pg_locks_ids`).
pub(crate) const IS_HELD: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
     WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted \
     AND classid = $1 AND objid = $2 AND objsubid = $3)";

//! The baselines: each lock operation as one raw sqlx statement (prepared and cached by
//! sqlx like any `sqlx::query`), with the SQL pglock sends for it.

use std::time::Duration;

use pglock::LockKey;
use sqlx::PgConnection;

/// The bound of the timed variant: the key is free, so it is granted at once.
pub const WAIT: Duration = Duration::from_secs(1);

/// [`WAIT`] as pglock sends it (`lock_timeout` text).
const WAIT_SETTING: &str = "1000ms";

/// The statement pglock sends for `try_lock_for` (src/sql.rs `TRY_LOCK_FOR`): sets
/// `lock_timeout` for this statement only, waits, and puts the old value back.
const TRY_LOCK_FOR: &str = "SELECT pg_advisory_lock($1), set_config('lock_timeout', s.previous, true) \
    FROM (SELECT current_setting('lock_timeout') AS previous, \
          set_config('lock_timeout', $2, true) OFFSET 0) AS s";

/// The `bigint` of a key made by `LockKey::from_name`.
pub fn big(key: LockKey) -> i64 {
    match key {
        LockKey::BigInt(k) => k,
        LockKey::IntPair(..) => unreachable!("LockKey::from_name makes bigint keys"),
    }
}

pub async fn try_lock(conn: &mut PgConnection, k: i64) -> bool {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(k)
        .fetch_one(conn)
        .await
        .unwrap()
}

pub async fn try_lock_shared(conn: &mut PgConnection, k: i64) -> bool {
    sqlx::query_scalar("SELECT pg_try_advisory_lock_shared($1)")
        .bind(k)
        .fetch_one(conn)
        .await
        .unwrap()
}

pub async fn lock(conn: &mut PgConnection, k: i64) {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(k)
        .execute(conn)
        .await
        .unwrap();
}

pub async fn lock_shared(conn: &mut PgConnection, k: i64) {
    sqlx::query("SELECT pg_advisory_lock_shared($1)")
        .bind(k)
        .execute(conn)
        .await
        .unwrap();
}

/// `try_lock_for(WAIT)` on a free key: granted at once.
pub async fn try_lock_for(conn: &mut PgConnection, k: i64) {
    sqlx::query(TRY_LOCK_FOR)
        .bind(k)
        .bind(WAIT_SETTING)
        .execute(conn)
        .await
        .unwrap();
}

/// Releases one exclusive level, which must have been held.
pub async fn unlock(conn: &mut PgConnection, k: i64) {
    let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(k)
        .fetch_one(conn)
        .await
        .unwrap();
    assert!(released);
}

/// Releases one shared level, which must have been held.
pub async fn unlock_shared(conn: &mut PgConnection, k: i64) {
    let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock_shared($1)")
        .bind(k)
        .fetch_one(conn)
        .await
        .unwrap();
    assert!(released);
}

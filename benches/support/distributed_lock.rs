//! A third contender for the lifecycle cycle: `distributed-lock-postgres` 0.2, the Rust
//! port of DistributedLock's PostgreSQL provider (crates.io; it runs on sqlx 0.8, so it
//! has a pool of its own: one connection, as the others').
//!
//! Its cycle, the equivalent of pglock's `AdvisoryLock::new` + `try_lock` + `unlock` +
//! `close`: `create_lock(name)` (no I/O), `try_acquire()` (takes a pool connection and
//! sends `SELECT pg_try_advisory_lock(k)` as a simple query), `release()` (`SELECT
//! pg_advisory_unlock(k)`, then the connection goes back to its pool). The name is 9
//! ASCII characters, which it encodes as the key directly (no hashing).

use distributed_lock_core::traits::{DistributedLock, LockHandle, LockProvider};
use distributed_lock_postgres::PostgresLockProvider;

/// The lock name: ≤ 9 ASCII characters, encoded as the key without a hash.
const NAME: &str = "pglock-dl";

pub struct Contender {
    provider: PostgresLockProvider,
    pool: sqlx08::PgPool,
}

impl Contender {
    /// A one-connection sqlx 0.8 pool on `url`, and the provider on it.
    pub async fn connect(url: &str) -> Contender {
        let pool = sqlx08::postgres::PgPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect(url)
            .await
            .expect("connect distributed-lock's pool");
        let provider = PostgresLockProvider::builder()
            .pool(pool.clone())
            .build()
            .await
            .expect("distributed-lock provider");
        Contender { provider, pool }
    }

    /// One cycle on a free key.
    pub async fn cycle(&self) {
        let lock = self.provider.create_lock(NAME);
        let handle = lock
            .try_acquire()
            .await
            .expect("distributed-lock try_acquire")
            .expect("free key not acquired (distributed-lock)");
        handle.release().await.expect("distributed-lock release");
    }

    /// The backend pid of the pool's connection, pinned (see `pin`).
    pub async fn pin(&self) {
        let mut conn = self.pool.acquire().await.expect("distributed-lock pool");
        let pid: i32 = sqlx08::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .expect("ask the backend pid");
        super::pin::pin_backend(pid);
    }

    /// Checks that its session holds no advisory lock (its `release` logs a failed
    /// unlock instead of returning it, and a session lock stacks, so a silent failure
    /// would go unnoticed otherwise), and closes the pool.
    pub async fn close(self) {
        let mut conn = self.pool.acquire().await.expect("distributed-lock pool");
        let held: i64 = sqlx08::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("read pg_locks");
        assert_eq!(held, 0, "distributed-lock left advisory locks held");
        drop(conn);
        self.pool.close().await;
    }
}

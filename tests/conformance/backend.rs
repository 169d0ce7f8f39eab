//! The providers under test, and a way to see holders and waiters from outside a lock.

use std::sync::Arc;

use pglock::memory::MemoryLocks;
use pglock::{DistributedLock, LockKey, LockProvider};

use crate::support;

#[derive(Clone)]
pub struct Backend {
    provider: Arc<dyn LockProvider>,
    observer: Observer,
}

#[derive(Clone)]
enum Observer {
    /// pg_locks, from another session.
    Postgres,
    Memory(MemoryLocks),
}

impl Backend {
    pub async fn postgres() -> Backend {
        Backend {
            provider: Arc::new(support::pool_with(40).await),
            observer: Observer::Postgres,
        }
    }

    pub fn memory() -> Backend {
        let locks = MemoryLocks::new();
        Backend {
            provider: Arc::new(locks.clone()),
            observer: Observer::Memory(locks),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.observer, Observer::Postgres)
    }

    /// A new lock (a session of its own) on `key`.
    pub async fn lock(&self, key: LockKey) -> Box<dyn DistributedLock> {
        self.provider.new_lock(key).await.expect("new_lock")
    }

    /// How many sessions hold `key`.
    pub async fn holders(&self, key: LockKey) -> usize {
        match &self.observer {
            Observer::Postgres => support::holders(key).await.len(),
            Observer::Memory(locks) => locks.holders(key),
        }
    }

    /// How many requests for `key` wait.
    pub async fn waiters(&self, key: LockKey) -> usize {
        match &self.observer {
            Observer::Postgres => support::waiters(key).await.len(),
            Observer::Memory(locks) => locks.waiters(key),
        }
    }
}

//! The providers under test, and a way to see holders and waiters from outside a lock.

use std::sync::Arc;

use pglock::memory::MemoryLocks;
use pglock::{DistributedLock, LockClient, LockKey, LockProvider};

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
    /// The client's record of its own locks (the server sees one session per lane), and
    /// pg_locks to find the lanes to terminate.
    Client(LockClient),
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

    pub async fn client() -> Backend {
        let client = LockClient::new(&support::pool_with(40).await);
        Backend {
            provider: Arc::new(client.clone()),
            observer: Observer::Client(client),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.observer, Observer::Postgres)
    }

    /// A new lock (a session of its own) on `key`.
    pub async fn lock(&self, key: LockKey) -> Box<dyn DistributedLock> {
        self.provider.new_lock(key).await.expect("new_lock")
    }

    /// How many sessions hold `key`, in any mode.
    pub async fn holders(&self, key: LockKey) -> usize {
        match &self.observer {
            Observer::Postgres => {
                let mut pids = support::holders(key).await;
                pids.dedup(); // one row per mode held
                pids.len()
            }
            Observer::Memory(locks) => locks.holders(key),
            Observer::Client(client) => client.holders(key),
        }
    }

    /// How many requests for `key` wait.
    pub async fn waiters(&self, key: LockKey) -> usize {
        match &self.observer {
            Observer::Postgres => support::waiters(key).await.len(),
            Observer::Memory(locks) => locks.waiters(key),
            Observer::Client(client) => client.waiters(key),
        }
    }

    /// Makes every session holding `key` lose it, as a failover or an operator would;
    /// returns how many sessions held it. PostgreSQL: `pg_terminate_backend` of each
    /// holder's pid, from another session, waiting until those backends are gone.
    pub async fn lose(&self, key: LockKey) -> usize {
        match &self.observer {
            Observer::Postgres => terminate_holders(key).await,
            Observer::Memory(locks) => locks.lose(key),
            Observer::Client(client) => {
                // Its locks on the key share the lanes' sessions: terminate those, then
                // let the client find out, as the next statement on them would.
                let holders = client.holders(key);
                terminate_holders(key).await;
                client
                    .check_sessions()
                    .await
                    .expect("check the client's sessions");
                holders
            }
        }
    }
}

async fn terminate_holders(key: LockKey) -> usize {
    let mut pids = support::holders(key).await;
    pids.dedup(); // one row per mode held
    for &pid in &pids {
        support::terminate(pid).await;
    }
    pids.len()
}

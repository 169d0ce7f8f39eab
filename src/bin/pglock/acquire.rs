//! Taking the lock for `pglock run`, and naming who holds it when it is not acquired.

use std::fmt::Write as _;
use std::time::Duration;

use pglock::inspect::{self, LockInfo};
use pglock::{AdvisoryLock, LockKey, LockMode, LockOptions};
use sqlx::postgres::PgPool;

use crate::args::{Lock, RunArgs};
use crate::database::{APPLICATION_NAME, Database};
use crate::exit::Fatal;

/// How `run` asks for the lock.
pub struct Request {
    pub mode: LockMode,
    pub wait: Wait,
}

/// How long `run` waits for the lock.
#[derive(Clone, Copy)]
pub enum Wait {
    /// As long as it takes.
    Forever,
    /// At most this long (`--timeout`).
    UpTo(Duration),
    /// Not at all (`--no-wait`).
    No,
}

impl Request {
    pub fn from_args(args: &RunArgs) -> Request {
        Request {
            mode: match args.shared {
                true => LockMode::Shared,
                false => LockMode::Exclusive,
            },
            wait: match (args.no_wait, args.timeout) {
                (true, _) => Wait::No,
                (false, Some(timeout)) => Wait::UpTo(timeout),
                (false, None) => Wait::Forever,
            },
        }
    }
}

/// What came of asking for the lock.
pub enum Acquired {
    Yes(PgPool, Box<AdvisoryLock>),
    No(PgPool),
}

/// Connects and takes the lock as `request` says. Dropping this future (a signal) ends
/// the lock's session, so the server stops waiting on our behalf.
pub async fn acquire(
    database: &Database,
    lock: &Lock,
    request: &Request,
) -> Result<Acquired, Fatal> {
    let pool = database.connect().await?;
    let mut advisory = AdvisoryLock::new(&pool, lock.key)
        .await
        .map_err(|err| database.connect_error(err))?
        .with_options(LockOptions::new().application_name(APPLICATION_NAME));
    let result = match (request.mode, request.wait) {
        (LockMode::Exclusive, Wait::No) => advisory.try_lock().await,
        (LockMode::Shared, Wait::No) => advisory.try_lock_shared().await,
        (LockMode::Exclusive, Wait::UpTo(t)) => advisory.try_lock_for(t).await,
        (LockMode::Shared, Wait::UpTo(t)) => advisory.try_lock_shared_for(t).await,
        (LockMode::Exclusive, Wait::Forever) => advisory.lock().await.map(|()| true),
        (LockMode::Shared, Wait::Forever) => advisory.lock_shared().await.map(|()| true),
    };
    match result {
        Ok(true) => Ok(Acquired::Yes(pool, Box::new(advisory))),
        Ok(false) => {
            let _ = advisory.close().await;
            Ok(Acquired::No(pool))
        }
        Err(err) => Err(Fatal(format!("cannot take lock {lock}: {err}"))),
    }
}

/// "backend pid 4242 (pglock-cli, 10.0.0.7)", from `pg_locks`; what blocks a `mode` request.
pub async fn describe_holders(pool: &PgPool, key: LockKey, mode: LockMode) -> String {
    let Ok(Ok(infos)) =
        tokio::time::timeout(Duration::from_secs(5), inspect::locks_on(pool, key)).await
    else {
        return "another session".to_owned();
    };
    let held: Vec<&LockInfo> = infos.iter().filter(|info| info.granted).collect();
    // A shared request is blocked by exclusive holders; show those if there are any.
    let exclusive: Vec<&LockInfo> = held
        .iter()
        .copied()
        .filter(|info| info.mode == LockMode::Exclusive)
        .collect();
    let blocking = match mode {
        LockMode::Shared if !exclusive.is_empty() => exclusive,
        _ => held,
    };
    if blocking.is_empty() {
        return "another session".to_owned();
    }
    let list: Vec<String> = blocking
        .iter()
        .map(|info| {
            let mut who = format!("backend pid {}", info.pid);
            let mut details = Vec::new();
            if let Some(app) = info.application_name.as_deref().filter(|a| !a.is_empty()) {
                details.push(app.to_owned());
            }
            if let Some(addr) = &info.client_addr {
                details.push(addr.clone());
            }
            if info.mode == LockMode::Shared {
                details.push("shared".to_owned());
            }
            if !details.is_empty() {
                let _ = write!(who, " ({})", details.join(", "));
            }
            who
        })
        .collect();
    list.join(", ")
}

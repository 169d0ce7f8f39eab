//! Taking the lock for `pglock run`, and naming who holds it when it is not acquired.

use std::fmt::Write as _;
use std::time::Duration;

use pglock::fencing::FencingToken;
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
    /// With a fencing token (`--fenced`; exclusive only).
    pub fenced: bool,
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
            fenced: args.fenced,
        }
    }
}

/// What came of asking for the lock.
pub enum Acquired {
    /// Held, on the lock's own session; with its fencing token if `--fenced`.
    Yes(PgPool, Box<AdvisoryLock>, Option<FencingToken>),
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
    match take(&mut advisory, request).await {
        Ok(Some(token)) => Ok(Acquired::Yes(pool, Box::new(advisory), token)),
        Ok(None) => {
            let _ = advisory.close().await;
            Ok(Acquired::No(pool))
        }
        Err(err) => Err(refused(err, lock, database)),
    }
}

/// The failure pglock exits with (2) when taking the lock fails: the library's message
/// (a hot standby, a deadlock, a full lock table, ...), or what to run when the fencing
/// table is missing.
fn refused(err: pglock::Error, lock: &Lock, database: &Database) -> Fatal {
    if missing_fencing_table(&err) {
        return Fatal(format!(
            "--fenced needs pglock's fencing-token table, pglock_fencing_tokens, which the \
             database at {} does not have: create it once with `pglock migrate` (the same \
             migrations as pglock::migrate; their SQL is in pglock's migrations/ directory)",
            database.shown
        ));
    }
    Fatal(format!("cannot take lock {lock}: {err}"))
}

/// Takes the lock: `Some(token)` once held (the token `Some` if fenced), `None` if not
/// acquired.
async fn take(
    advisory: &mut AdvisoryLock,
    request: &Request,
) -> pglock::Result<Option<Option<FencingToken>>> {
    let plain = |held: bool| held.then_some(None);
    let fenced = |token: Option<FencingToken>| token.map(Some);
    match (request.fenced, request.mode, request.wait) {
        (true, _, Wait::No) => advisory.try_lock_fenced().await.map(fenced),
        (true, _, Wait::UpTo(timeout)) if timeout.is_zero() => {
            advisory.try_lock_fenced().await.map(fenced)
        }
        // The library has no timed fenced acquisition: the wait is dropped when time is
        // up, which ends the lock's session, and with it the server's wait.
        (true, _, Wait::UpTo(timeout)) => {
            match tokio::time::timeout(timeout, advisory.lock_fenced()).await {
                Ok(token) => token.map(|token| Some(Some(token))),
                Err(_elapsed) => Ok(None),
            }
        }
        (true, _, Wait::Forever) => advisory.lock_fenced().await.map(|t| Some(Some(t))),
        (false, LockMode::Exclusive, Wait::No) => advisory.try_lock().await.map(plain),
        (false, LockMode::Shared, Wait::No) => advisory.try_lock_shared().await.map(plain),
        (false, LockMode::Exclusive, Wait::UpTo(t)) => advisory.try_lock_for(t).await.map(plain),
        (false, LockMode::Shared, Wait::UpTo(t)) => {
            advisory.try_lock_shared_for(t).await.map(plain)
        }
        (false, LockMode::Exclusive, Wait::Forever) => advisory.lock().await.map(|()| Some(None)),
        (false, LockMode::Shared, Wait::Forever) => {
            advisory.lock_shared().await.map(|()| Some(None))
        }
    }
}

/// Whether `err` says the fencing-token table does not exist (SQLSTATE 42P01,
/// undefined_table, naming it): the fencing migration was not run.
fn missing_fencing_table(err: &pglock::Error) -> bool {
    let pglock::Error::Database(sqlx::Error::Database(db)) = err else {
        return false;
    };
    db.code().as_deref() == Some("42P01") && db.message().contains("pglock_fencing_tokens")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_error_is_fatal_with_its_message() {
        let database = Database::from_args(Some("postgres://app:pw@replica:5432/db".to_owned()))
            .expect("parses");
        let lock = Lock::parse("nightly", false);
        let standby = pglock::Error::StandbyServer { key: lock.key };
        let message = standby.to_string();
        let Fatal(fatal) = refused(standby, &lock, &database);
        assert_eq!(
            fatal,
            format!("cannot take lock \"nightly\" (key {}): {message}", lock.key)
        );
        assert!(fatal.contains("hot standby"), "{fatal}");
    }
}

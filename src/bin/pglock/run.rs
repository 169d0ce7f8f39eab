//! `pglock run`: take the lock, run the command under it, release it.

use crate::acquire::{self, Acquired, Request, Wait};
use crate::args::{self, Lock, OnLost, RunArgs};
use crate::database::{self, Database};
use crate::duration::human;
use crate::exit::{self, Fatal};
use crate::signals::Signals;
use crate::supervise::{self, Policy, Supervised};

pub async fn run(url: Option<String>, args: RunArgs) -> Result<u8, Fatal> {
    // Before anything can block: from here on these signals are ours to handle.
    let mut signals = Signals::new()?;
    let lock = Lock::parse(&args.lock, args.how.name);
    let database = Database::from_args(url)?;
    let request = Request::from_args(&args);

    let acquired = tokio::select! {
        acquired = acquire::acquire(&database, &lock, &request) => acquired?,
        caught = signals.next() => {
            say!(
                "pglock: got SIG{} while waiting for lock {lock}; the command was not run",
                caught.name
            );
            return Ok(exit::of_signal(caught.signal.as_raw()));
        }
    };
    let (pool, mut advisory, token) = match acquired {
        Acquired::Yes(pool, advisory, token) => (pool, advisory, token),
        Acquired::No(pool) => {
            let why = match request.wait {
                Wait::No => "not acquired (--no-wait)".to_owned(),
                Wait::UpTo(timeout) => format!("gave up after {}", human(timeout)),
                Wait::Forever => "not acquired".to_owned(),
            };
            let holders = acquire::describe_holders(&pool, lock.key, request.mode).await;
            say!("pglock: lock {lock} is held by {holders}; {why}");
            database::close(pool).await;
            return Ok(args.conflict_exit_code);
        }
    };

    let policy = Policy {
        on_lost: args.on_lost,
        kill_after: args.kill_after.unwrap_or(args::KILL_AFTER),
    };
    let supervised = match supervise::spawn(&args.command, &lock, token) {
        Err(code) => Err(code),
        Ok(child) => {
            Ok(supervise::supervise(child, &mut advisory, &mut signals, &lock, policy).await)
        }
    };

    // After a loss the lock says so again here (`Err(LockLost)`): that is the loss, noticed
    // now if the watch had not seen it yet, not a failure to release.
    let lost_at_release = match advisory.close().await {
        Ok(()) => None,
        Err(err @ pglock::Error::LockLost { .. }) => Some(err),
        Err(err) => {
            say!("pglock: warning: releasing lock {lock}: {err}");
            None
        }
    };
    database::close(pool).await;
    Ok(match supervised {
        Err(code) => code,
        Ok(supervised) => exit_code(&lock, &args, supervised, lost_at_release),
    })
}

/// What pglock exits with once the command ran: its status, unless the lock was lost
/// and `--on-lost` is `term` or `kill`.
fn exit_code(
    lock: &Lock,
    args: &RunArgs,
    supervised: Supervised,
    lost_at_release: Option<pglock::Error>,
) -> u8 {
    let Supervised { code, ended, lost } = supervised;
    match (lost, lost_at_release, args.on_lost) {
        (None, None, _) | (Some(_), _, OnLost::Warn) => code,
        (Some(_), _, OnLost::Term | OnLost::Kill) => {
            say!(
                "pglock: the command {ended} after lock {lock} was lost; exiting with {} \
                 (lock lost)",
                args.lost_exit_code
            );
            args.lost_exit_code
        }
        (None, Some(err), OnLost::Warn) => {
            say!(
                "pglock: warning: lock {lock} was lost before the command finished ({}); \
                 noticed on release",
                supervise::loss(&err)
            );
            code
        }
        (None, Some(err), OnLost::Term | OnLost::Kill) => {
            say!(
                "pglock: lock {lock} was lost before the command finished ({}), noticed on \
                 release after the command {ended}; exiting with {} (lock lost)",
                supervise::loss(&err),
                args.lost_exit_code
            );
            args.lost_exit_code
        }
    }
}

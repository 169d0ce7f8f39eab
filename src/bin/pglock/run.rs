//! `pglock run`: take the lock, run the command under it, release it.

use crate::acquire::{self, Acquired, Request, Wait};
use crate::args::{Lock, RunArgs};
use crate::database::{self, Database};
use crate::duration::human;
use crate::exit::{self, Fatal};
use crate::signals::Signals;
use crate::supervise;

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
    let (pool, mut advisory) = match acquired {
        Acquired::Yes(pool, advisory) => (pool, advisory),
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

    let code = match supervise::spawn(&args.command) {
        Err(code) => code,
        Ok(child) => supervise::supervise(child, &mut advisory, &mut signals, &lock).await,
    };

    if let Err(err) = advisory.close().await {
        say!("pglock: warning: releasing lock {lock}: {err}");
    }
    database::close(pool).await;
    Ok(code)
}

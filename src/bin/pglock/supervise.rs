//! Running the command under the lock: starting it, forwarding signals to it, and
//! watching the lock while it runs, acting on a loss as `--on-lost` says.

use std::ffi::OsString;
use std::time::Duration;

use pglock::AdvisoryLock;
use pglock::fencing::FencingToken;
use tokio::time::Instant;

use crate::args::{Lock, OnLost};
use crate::duration::human;
use crate::exit;
use crate::signals::{self, Caught, Signals};

/// The environment variable that tells the command its lock's key (as `LockKey` shows it).
pub const KEY_VAR: &str = "PGLOCK_KEY";
/// The environment variable that hands the command its fencing token (`--fenced`).
pub const TOKEN_VAR: &str = "PGLOCK_FENCING_TOKEN";

/// Starts the command with pglock's stdio and environment, plus [`KEY_VAR`] and (only with
/// a token: an outer pglock's must not leak through) [`TOKEN_VAR`]. On failure, the exit
/// code (127 not found, 126 otherwise) after a message.
pub fn spawn(
    command: &[OsString],
    lock: &Lock,
    token: Option<FencingToken>,
) -> Result<tokio::process::Child, u8> {
    let (program, rest) = command.split_first().ok_or(exit::ERROR)?;
    let mut child = tokio::process::Command::new(program);
    child.args(rest).env(KEY_VAR, lock.key.to_string());
    match token {
        Some(token) => child.env(TOKEN_VAR, token.to_string()),
        None => child.env_remove(TOKEN_VAR),
    };
    child.spawn().map_err(|err| {
        say!("pglock: cannot run {}: {err}", program.to_string_lossy());
        match err.kind() {
            std::io::ErrorKind::NotFound => exit::NOT_FOUND,
            _ => exit::CANNOT_RUN,
        }
    })
}

/// What `--on-lost` and `--kill-after` ask for.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub on_lost: OnLost,
    pub kill_after: Duration,
}

/// How the command's run went.
pub struct Supervised {
    /// The command's exit code (128 + N if it died of signal N).
    pub code: u8,
    /// How it ended, for messages: "exited with 0".
    pub ended: String,
    /// The loss noticed while the command ran, if any.
    pub lost: Option<pglock::Error>,
}

/// Waits for the command, forwarding signals to it and watching the lock.
///
/// A loss is noticed within the lock's check interval (1 s) plus a round trip (see
/// `AdvisoryLock::lost`); then the command is warned about, sent SIGTERM (and SIGKILL
/// after `kill_after` if it is still running), or sent SIGKILL, as `policy` says.
pub async fn supervise(
    mut child: tokio::process::Child,
    advisory: &mut AdvisoryLock,
    signals: &mut Signals,
    lock: &Lock,
    policy: Policy,
) -> Supervised {
    // The pid stays valid until `wait` reaps the child, which ends the loop.
    let pid = child.id();
    let send = |signal: Caught| {
        if let Some(pid) = pid {
            signals::send(signal, pid);
        }
    };
    // One watch for the whole run: re-created per loop, its check interval would restart
    // with every forwarded signal.
    let lost = advisory.lost();
    tokio::pin!(lost);
    let mut noticed: Option<pglock::Error> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        let kill_deadline = kill_at.unwrap_or_else(Instant::now);
        tokio::select! {
            status = child.wait() => {
                let (code, ended) = match status {
                    Ok(status) => (exit::of_status(status), exit::describe(status)),
                    Err(err) => {
                        say!("pglock: lost track of the command: {err}");
                        (exit::ERROR, "could not be waited for".to_owned())
                    }
                };
                return Supervised { code, ended, lost: noticed };
            }
            caught = signals.next() => send(caught),
            err = &mut lost, if noticed.is_none() => {
                let why = loss(&err);
                match policy.on_lost {
                    OnLost::Warn => say!(
                        "pglock: warning: lock {lock} was lost while the command ran ({why}); \
                         the command keeps running (--on-lost warn)"
                    ),
                    OnLost::Term => {
                        say!(
                            "pglock: lock {lock} was lost while the command ran ({why}); \
                             sending SIGTERM to the command, SIGKILL in {}",
                            human(policy.kill_after)
                        );
                        send(Caught::TERM);
                        // None for a grace too long to reckon: SIGTERM only, in effect.
                        kill_at = Instant::now().checked_add(policy.kill_after);
                    }
                    OnLost::Kill => {
                        say!(
                            "pglock: lock {lock} was lost while the command ran ({why}); \
                             sending SIGKILL to the command"
                        );
                        send(Caught::KILL);
                    }
                }
                noticed = Some(err);
            }
            () = tokio::time::sleep_until(kill_deadline), if kill_at.is_some() => {
                kill_at = None;
                say!(
                    "pglock: the command still runs {} after SIGTERM; sending SIGKILL",
                    human(policy.kill_after)
                );
                send(Caught::KILL);
            }
        }
    }
}

/// Why a lock was lost, in a few words: the library's `LockLost` text repeats the key
/// and advice meant for programs; other errors are shown as they are.
pub fn loss(err: &pglock::Error) -> String {
    match err {
        pglock::Error::LockLost { .. } => "its database session ended: terminated, \
                                           disconnected, or the server restarted; another \
                                           process may hold it now"
            .to_owned(),
        other => other.to_string(),
    }
}

//! Running the command under the lock: starting it, forwarding signals to it, and
//! watching the lock while it runs.

use std::ffi::OsString;

use pglock::AdvisoryLock;

use crate::args::Lock;
use crate::exit;
use crate::signals::{self, Signals};

/// Starts the command with pglock's stdio and environment; on failure, the exit code
/// (127 not found, 126 otherwise) after a message.
pub fn spawn(command: &[OsString]) -> Result<tokio::process::Child, u8> {
    let (program, rest) = command.split_first().ok_or(exit::ERROR)?;
    tokio::process::Command::new(program)
        .args(rest)
        .spawn()
        .map_err(|err| {
            say!("pglock: cannot run {}: {err}", program.to_string_lossy());
            match err.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_RUN,
            }
        })
}

/// Waits for the child, forwarding signals to it and watching the lock; returns the exit
/// code pglock should exit with.
pub async fn supervise(
    mut child: tokio::process::Child,
    advisory: &mut AdvisoryLock,
    signals: &mut Signals,
    lock: &Lock,
) -> u8 {
    // The pid stays valid until `wait` reaps the child, which ends the loop.
    let pid = child.id();
    let mut watching = true;
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => exit::of_status(status),
                    Err(err) => {
                        say!("pglock: lost track of the command: {err}");
                        exit::ERROR
                    }
                };
            }
            caught = signals.next() => {
                if let Some(pid) = pid {
                    signals::send(caught, pid);
                }
            }
            lost = advisory.lost(), if watching => {
                watching = false;
                say!(
                    "pglock: warning: lock {lock} may no longer be held ({lost}); \
                     the command keeps running"
                );
            }
        }
    }
}

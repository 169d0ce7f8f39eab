//! The signals pglock catches (to forward them to the command, or to end a wait for the
//! lock), and sending signals to the command.

use rustix::process::{Pid, Signal, kill_process};
use tokio::signal::unix::{SignalKind, signal};

use crate::exit::Fatal;

/// The signals pglock forwards (and that end a wait for the lock), with their names.
const FORWARDED: [(Signal, &str); 4] = [
    (Signal::HUP, "HUP"),
    (Signal::INT, "INT"),
    (Signal::QUIT, "QUIT"),
    (Signal::TERM, "TERM"),
];

/// A signal and its name without `SIG`, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Caught {
    pub signal: Signal,
    pub name: &'static str,
}

impl Caught {
    /// What `--on-lost term` sends first.
    pub const TERM: Caught = Caught {
        signal: Signal::TERM,
        name: "TERM",
    };
    /// What `--on-lost kill` sends, and `--on-lost term` after `--kill-after`.
    pub const KILL: Caught = Caught {
        signal: Signal::KILL,
        name: "KILL",
    };
}

/// Listeners for the signals pglock forwards.
pub struct Signals {
    listeners: Vec<(tokio::signal::unix::Signal, Caught)>,
}

impl Signals {
    /// From now on SIGHUP, SIGINT, SIGQUIT and SIGTERM are ours to handle.
    pub fn new() -> Result<Self, Fatal> {
        let mut listeners = Vec::with_capacity(FORWARDED.len());
        for (sig, name) in FORWARDED {
            let listener = signal(SignalKind::from_raw(sig.as_raw()))
                .map_err(|err| Fatal(format!("cannot handle SIG{name}: {err}")))?;
            listeners.push((listener, Caught { signal: sig, name }));
        }
        Ok(Signals { listeners })
    }

    /// The next signal that reaches pglock.
    pub async fn next(&mut self) -> Caught {
        std::future::poll_fn(|cx| {
            for (listener, caught) in &mut self.listeners {
                if let std::task::Poll::Ready(Some(())) = listener.poll_recv(cx) {
                    return std::task::Poll::Ready(*caught);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// Sends `signal` to the command, whose pid is `pid`; says so on stderr if it cannot.
pub fn send(signal: Caught, pid: u32) {
    let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        say!(
            "pglock: cannot send SIG{} to the command: bad pid {pid}",
            signal.name
        );
        return;
    };
    if let Err(err) = kill_process(target, signal.signal) {
        say!(
            "pglock: cannot send SIG{} to the command: {err}",
            signal.name
        );
    }
}

//! The signals pglock catches (to forward them to the command, or to end a wait for the
//! lock), and sending signals to the command.

use std::process::Stdio;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::exit::Fatal;

/// The signals pglock forwards (and that end a wait for the lock).
pub struct Signals {
    hup: Signal,
    int: Signal,
    quit: Signal,
    term: Signal,
}

impl Signals {
    /// From now on SIGHUP, SIGINT, SIGQUIT and SIGTERM are ours to handle.
    pub fn new() -> Result<Self, Fatal> {
        let listen = |kind: SignalKind| {
            signal(kind).map_err(|err| Fatal(format!("cannot handle signals: {err}")))
        };
        Ok(Signals {
            hup: listen(SignalKind::hangup())?,
            int: listen(SignalKind::interrupt())?,
            quit: listen(SignalKind::quit())?,
            term: listen(SignalKind::terminate())?,
        })
    }

    /// The next signal: its number and its name without `SIG`, as kill(1) takes it.
    pub async fn next(&mut self) -> (i32, &'static str) {
        let kind = tokio::select! {
            _ = self.hup.recv() => (SignalKind::hangup(), "HUP"),
            _ = self.int.recv() => (SignalKind::interrupt(), "INT"),
            _ = self.quit.recv() => (SignalKind::quit(), "QUIT"),
            _ = self.term.recv() => (SignalKind::terminate(), "TERM"),
        };
        (kind.0.as_raw_value(), kind.1)
    }
}

/// Sends signal `name` (`TERM`, ...) to `pid` with kill(1), without unsafe code.
pub async fn send(name: &str, pid: u32) {
    let pid = pid.to_string();
    let quiet = |command: &mut tokio::process::Command| {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
    };
    let mut kill = tokio::process::Command::new("kill");
    kill.args(["-s", name, &pid]);
    quiet(&mut kill);
    if kill.status().await.is_ok() {
        return;
    }
    // No kill(1) on PATH: the shell's builtin.
    let mut sh = tokio::process::Command::new("/bin/sh");
    sh.args(["-c", "kill -s \"$0\" \"$1\"", name, &pid]);
    quiet(&mut sh);
    if let Err(err) = sh.status().await {
        say!("pglock: cannot forward SIG{name} to the command: {err}");
    }
}

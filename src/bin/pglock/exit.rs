//! pglock's exit codes, written once: the code uses the constants, and both `--help`
//! ([`help`]) and the README's table (checked by a test) are made from
//! [`table`].

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// `run`: the lock was not acquired (`--no-wait`, `--timeout`), unless
/// `--conflict-exit-code` says otherwise (as flock(1)'s `-E`).
pub const NOT_ACQUIRED: u8 = 1;
/// `run`: the lock was lost while the command ran, with `--on-lost term` or `kill`,
/// unless `--lost-exit-code` says otherwise.
pub const LOCK_LOST: u8 = 3;
/// Usage errors, no database URL, cannot connect, and every error from the database or
/// the lock library (a hot standby, a missing fencing-token table, ...).
pub const ERROR: u8 = 2;
/// `run`: the command could not be started.
pub const CANNOT_RUN: u8 = 126;
/// `run`: the command was not found.
pub const NOT_FOUND: u8 = 127;
/// `run`: 128 + N when the command died of signal N (as a shell reports it), or pglock
/// got signal N while it waited for the lock.
pub const SIGNAL_BASE: u8 = 128;

/// A failure that ends pglock with [`ERROR`], after one line on stderr.
#[derive(Debug)]
pub struct Fatal(pub String);

/// Every exit code and when it happens: `(code, when)`, in the order `--help` shows them.
pub fn table() -> Vec<(String, &'static str)> {
    vec![
        (
            "the command's".to_owned(),
            "run: the command ran and exited with that status (with --on-lost warn, also after a loss)",
        ),
        (
            format!("{SIGNAL_BASE}+N"),
            "run: the command died of signal N, or pglock got signal N while waiting",
        ),
        (
            NOT_ACQUIRED.to_string(),
            "run: the lock was not acquired (--no-wait, --timeout); see --conflict-exit-code",
        ),
        (
            LOCK_LOST.to_string(),
            "run: the lock was lost while the command ran (--on-lost term or kill); see --lost-exit-code",
        ),
        (
            format!("{CANNOT_RUN}, {NOT_FOUND}"),
            "run: the command could not be started (127: not found)",
        ),
        (
            ERROR.to_string(),
            "usage error, no database URL, cannot connect, any database or lock error",
        ),
        ("0".to_owned(), "status, hash, migrate: success"),
    ]
}

/// The table as `--help` shows it, after the options.
pub fn help() -> String {
    let rows = table();
    let width = rows.iter().map(|(code, _)| code.len()).max().unwrap_or(0);
    let mut text = "Exit codes:\n".to_owned();
    for (code, when) in rows {
        text.push_str(&format!("  {code:<width$}  {when}\n"));
    }
    text.push_str("\nThe database: --database-url, else the DATABASE_URL environment variable.");
    text
}

/// The command's exit code, or 128 + the signal that ended it.
pub fn of_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(ERROR),
        (None, Some(signal)) => of_signal(signal),
        (None, None) => ERROR,
    }
}

/// How the command ended, for messages: "exited with 0", "was killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// 128 + `signal`, as a shell reports a death by that signal.
pub fn of_signal(signal: i32) -> u8 {
    u8::try_from(i32::from(SIGNAL_BASE) + signal).unwrap_or(u8::MAX)
}

/// Writes `text` to stdout: `Ok(0)`, also when the reader went away (`pglock status |
/// head -1`), where `print!` would panic.
pub fn print(text: &str) -> Result<u8, Fatal> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(0),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(err) => Err(Fatal(format!("cannot write to stdout: {err}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table as the README shows it.
    fn markdown() -> String {
        let mut text = "| exit code | when |\n|---|---|\n".to_owned();
        for (code, when) in table() {
            text.push_str(&format!("| {code} | {when} |\n"));
        }
        text
    }

    #[test]
    fn signal_and_exit_codes() {
        assert_eq!(of_status(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(of_status(ExitStatus::from_raw(15)), 143);
        assert_eq!(of_signal(9), 137);
    }

    #[test]
    fn the_readme_lists_the_exit_codes_as_the_code_does() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(&markdown()),
            "README.md's exit-code table differs from the code's; it should read:\n{}",
            markdown()
        );
        assert_eq!(
            readme.matches("| exit code | when |").count(),
            1,
            "the README lists the exit codes once"
        );
    }
}

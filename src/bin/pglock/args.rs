//! The command line, as clap reads it, and how a lock argument names a key.

use std::ffi::OsString;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use pglock::LockKey;

use crate::{duration, exit};

/// flock(1) for PostgreSQL advisory locks: run a command while holding a lock that every
/// host on the same database sees.
#[derive(Debug, Parser)]
#[command(
    name = "pglock",
    version,
    about = "flock(1) for PostgreSQL advisory locks: run commands under locks that every host \
             sharing the database sees",
    long_about = "flock(1) for PostgreSQL advisory locks: run commands under locks that every \
                  host sharing the database sees.\n\n\
                  A lock is a key (42, -7, or a pair of 32-bit integers 1,-2) or a name, whose \
                  key is the one Go's pglock.Hash and Rust's LockKey::from_name make, so shell \
                  scripts, Rust and Go services share the same locks.",
    after_help = exit::help(),
    propagate_version = true
)]
pub struct Cli {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db [default: $DATABASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command while holding a lock, then release it (like flock(1))
    #[command(
        long_about = "Run a command while holding a lock, then release it (like flock(1)).\n\n\
                      Waits for the lock as long as it takes, unless --timeout bounds the wait \
                      or --no-wait tries once. When the lock is not acquired, prints the \
                      holder's backend pid and exits with the conflict exit code (1).\n\n\
                      SIGINT, SIGTERM, SIGHUP and SIGQUIT received while the command runs are \
                      forwarded to it; pglock exits with the command's status (128+N if it died \
                      of signal N) once it exits, and releases the lock. The lock belongs to \
                      pglock's database session: if pglock is killed (even with SIGKILL), the \
                      connection closes and the server frees the lock at once, though the \
                      command keeps running without it.\n\n\
                      The lock can also be lost while the command runs: the server restarts or \
                      fails over, the network is cut, the backend is terminated. pglock checks \
                      every second and notices within that plus a round trip; then --on-lost \
                      says what happens: a warning (warn, the default), SIGTERM and SIGKILL \
                      after --kill-after (term), or SIGKILL at once (kill). Signals go to the \
                      command's process, not to processes it started (use exec, or pass them \
                      on). With term or kill pglock exits with the lock-lost code (3).\n\n\
                      The command's environment gets PGLOCK_KEY, the key (42, or 1,-2 for a \
                      pair), and with --fenced PGLOCK_FENCING_TOKEN: a number that grows with \
                      every fenced acquisition of the key, to pass along with each write so \
                      that the resource refuses a former holder's (needs `pglock migrate` once).",
        after_help = format!(
            "Examples:\n  \
             pglock run nightly-report -- ./report.sh\n  \
             pglock run --no-wait backup -- pg_dump -f backup.sql app\n  \
             pglock run --timeout 30s --conflict-exit-code 75 migrate -- ./migrate\n  \
             pglock run --shared 1,7 -- ./read-only-job\n  \
             pglock run --on-lost term --kill-after 30s invoices -- ./send-invoices\n  \
             pglock run --fenced invoice-42 -- sh -c './send-invoice --token \"$PGLOCK_FENCING_TOKEN\"'\n\n{}",
            exit::help()
        )
    )]
    Run(RunArgs),

    /// Show who holds and who waits for advisory locks
    #[command(
        long_about = "Show who holds and who waits for advisory locks in the database: one row \
                      per session and mode, holders first, then waiters in arrival order. PID \
                      is the server backend's pid (pg_backend_pid()), as in pg_stat_activity.\n\n\
                      With a lock argument, only that key; without, every advisory lock in the \
                      current database.\n\n\
                      --json prints one JSON object per row instead (nothing if there is no \
                      row): key (a string, as 42 or 1,-2), key_space (bigint or int_pair), \
                      classid and objid (the key's two 32-bit parts as pg_locks shows them), \
                      mode (exclusive or shared), granted, pid, waiting_ms (null when held), \
                      application_name, client_addr (null over a Unix socket) and query_age_ms."
    )]
    Status(StatusArgs),

    /// Create the table --fenced needs (pglock's migrations)
    #[command(
        long_about = "Apply pglock's migrations to the database: today the table \
                      pglock_fencing_tokens, which `run --fenced` needs. The same migrations as \
                      pglock::migrate, recorded in _pglock_migrations; running them again \
                      changes nothing."
    )]
    Migrate,

    /// Print the key a name hashes to (the same as Go's pglock.Hash)
    #[command(
        long_about = "Print the bigint key a name hashes to: FNV-1a 64 of its UTF-8 bytes, read \
                      as a signed integer. The same as pglock::hash in Rust and pglock.Hash in \
                      Go, and the key `pglock run <name>` locks."
    )]
    Hash {
        /// The lock's name (taken as is: no trimming or Unicode normalisation)
        #[arg(allow_hyphen_values = true)]
        name: String,
    },
}

/// How to read the lock argument, shared by `run` and `status`.
#[derive(Debug, Args)]
pub struct LockArg {
    /// Read LOCK as a name (hashed) even if it looks like a key
    #[arg(long)]
    pub name: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock: a key (42, -7, or 1,-2) or a name (hashed as Go's pglock.Hash)
    #[arg(value_name = "LOCK", allow_hyphen_values = true)]
    pub lock: String,

    #[command(flatten)]
    pub how: LockArg,

    /// Take the lock in shared mode: shared holders run together, never with an exclusive one
    #[arg(short, long)]
    pub shared: bool,

    /// Give up after waiting this long: 10s, 500ms, 2m, 1h30m, or plain seconds (1.5)
    #[arg(short = 'w', long, value_name = "DURATION", value_parser = duration::parse_timeout, conflicts_with = "no_wait")]
    pub timeout: Option<Duration>,

    /// Try once: if the lock is held, do not wait
    #[arg(short, long)]
    pub no_wait: bool,

    /// Take the lock with a fencing token, handed to the command as PGLOCK_FENCING_TOKEN (needs `pglock migrate` once)
    #[arg(long, conflicts_with = "shared")]
    pub fenced: bool,

    /// Exit code when the lock is not acquired (--no-wait or --timeout)
    #[arg(short = 'E', long, value_name = "N", default_value_t = exit::NOT_ACQUIRED)]
    pub conflict_exit_code: u8,

    /// What happens to the command if the lock is lost while it runs
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = OnLost::Warn)]
    pub on_lost: OnLost,

    /// With --on-lost term: how long the command has to exit after SIGTERM before SIGKILL [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub kill_after: Option<Duration>,

    /// Exit code when the lock was lost while the command ran (--on-lost term or kill)
    #[arg(long, value_name = "N", default_value_t = exit::LOCK_LOST)]
    pub lost_exit_code: u8,

    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// What `run` does to the command when the lock is lost while it runs (the session ended:
/// a server restart, a failover, a cut network, a terminated backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLost {
    /// Warn on stderr; the command keeps running, and pglock exits with its status
    Warn,
    /// Send the command SIGTERM, and SIGKILL after --kill-after; exit with the lock-lost code
    Term,
    /// Send the command SIGKILL at once; exit with the lock-lost code
    Kill,
}

/// How long `--on-lost term` gives the command after SIGTERM, unless `--kill-after` says.
pub const KILL_AFTER: Duration = Duration::from_secs(10);

impl RunArgs {
    /// The command line's rules that clap cannot state: a usage error (exit 2) if broken.
    pub fn check(&self) -> Result<(), clap::Error> {
        if self.kill_after.is_some() && self.on_lost != OnLost::Term {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--kill-after applies only with --on-lost term",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this lock: a key (42, -7, or 1,-2) or a name [default: every advisory lock]
    #[arg(value_name = "LOCK", allow_hyphen_values = true)]
    pub lock: Option<String>,

    #[command(flatten)]
    pub how: LockArg,

    /// One JSON object per lock row (JSON Lines) instead of the table
    #[arg(long)]
    pub json: bool,
}

/// A lock as the user named it.
pub struct Lock {
    pub key: LockKey,
    /// The name it was hashed from, if it was a name.
    pub name: Option<String>,
}

impl Lock {
    /// A key if `arg` reads as one (and `force_name` is off), else a hashed name.
    pub fn parse(arg: &str, force_name: bool) -> Lock {
        match LockKey::from_str(arg) {
            Ok(key) if !force_name => Lock { key, name: None },
            _ => Lock {
                key: LockKey::from_name(arg),
                name: Some(arg.to_owned()),
            },
        }
    }
}

impl std::fmt::Display for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name:?} (key {})", self.key),
            None => write!(f, "{}", self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_arguments_are_keys_unless_they_are_names() {
        assert_eq!(Lock::parse("42", false).key, LockKey::BigInt(42));
        assert_eq!(Lock::parse("-7", false).key, LockKey::BigInt(-7));
        assert_eq!(Lock::parse("1,-2", false).key, LockKey::IntPair(1, -2));
        assert_eq!(
            Lock::parse("mylock", false).key,
            LockKey::BigInt(5745039872434889948)
        );
        assert_eq!(Lock::parse("42", true).key, LockKey::from_name("42"));
        assert_eq!(Lock::parse("42", false).to_string(), "42");
        assert_eq!(
            Lock::parse("mylock", false).to_string(),
            "\"mylock\" (key 5745039872434889948)"
        );
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_readme_lists_every_flag_once() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("**Command line.**")
            .expect("the README's CLI section");
        let section = &readme[start..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        let command = Cli::command();
        let mut flags: Vec<String> = Vec::new();
        for sub in std::iter::once(&command).chain(command.get_subcommands()) {
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long().filter(|l| !["help", "version"].contains(l)) {
                    let flag = format!("`--{long}");
                    if !flags.contains(&flag) {
                        flags.push(flag);
                    }
                }
            }
        }
        for flag in flags {
            let rows = section
                .lines()
                .filter(|line| line.starts_with("| ") && line.contains(&flag))
                .count();
            assert_eq!(
                rows, 1,
                "{flag}` should have one row in the README's flag table"
            );
        }
    }
}

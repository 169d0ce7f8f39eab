//! `pglock`: flock(1) for PostgreSQL advisory locks, from the shell.
//!
//! Built with the `cli` feature (`cargo install pglock --features cli`); the library
//! itself stays free of clap and Tokio.
//!
//! ```text
//! pglock run nightly-report -- ./report.sh        # one report at a time, cluster-wide
//! pglock run --no-wait backup -- ./backup.sh      # skip this run if a backup is running
//! pglock run --timeout 30s migrate -- ./migrate   # wait at most 30 s for the lock
//! pglock run --shared 42 -- ./reader              # many readers together, no writer
//! pglock status                                   # who holds or waits for what
//! pglock status nightly-report                    # holders and waiters of one lock
//! pglock hash nightly-report                      # the key Go's pglock.Hash gives
//! ```
//!
//! # Locks and keys
//!
//! A lock argument that reads as a key (`42`, `-7`, or a pair of 32-bit integers `1,-2`)
//! is that key; anything else is a name, turned into a key with the same hash as
//! `pglock::hash` and Go's `pglock.Hash`, so the CLI, Rust services and Go services meet
//! on the same lock. `--name` reads the argument as a name even if it looks like a number.
//!
//! # `pglock run`
//!
//! Takes the lock (exclusive, or shared with `--shared`) on a session of its own
//! (`application_name` `pglock-cli`), runs the command, and releases the lock when the
//! command exits. It waits for the lock as long as it takes, unless `--timeout` bounds
//! the wait or `--no-wait` tries once; a lock not acquired prints one line naming the
//! holder's backend pid and exits with the conflict exit code.
//!
//! The signals SIGINT, SIGTERM, SIGHUP and SIGQUIT that reach pglock while the command
//! runs are forwarded to the command (which then decides when to exit); while pglock still
//! waits for the lock they end the wait, and pglock exits with 128 + the signal's number
//! without running the command. Interrupting from a terminal (Ctrl-C) reaches the command
//! directly as well, since it runs in pglock's process group.
//!
//! The lock lives exactly as long as pglock's database session. If pglock itself dies
//! (even by SIGKILL, which cannot be caught or forwarded), its connection closes and the
//! server frees the lock at once; the command, though, keeps running without it, as with
//! flock(1). If the session is lost while the command runs (the server restarts, say),
//! pglock warns on stderr; the command is not stopped.
//!
//! # Exit codes
//!
//! | code | when |
//! |---|---|
//! | the command's | `run`: the command ran and exited |
//! | 128 + N | `run`: the command died of signal N, or pglock got signal N while waiting |
//! | the conflict exit code (1 unless `--conflict-exit-code`) | `run`: the lock was not acquired (`--no-wait` or `--timeout`) |
//! | 126, 127 | `run`: the command could not be started (127: not found) |
//! | 2 | usage errors, no database URL, cannot connect, database errors |
//! | 0 | `status`, `hash`: success |
//!
//! # The database
//!
//! `--database-url` or the `DATABASE_URL` environment variable, a libpq-style URL
//! (`postgres://user:password@host:5432/db`). pglock waits at most 10 s for a connection
//! and never prints the password: messages show the database as `user@host:port/db`.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pglock::inspect::{self, LockInfo};
use pglock::{AdvisoryLock, LockKey, LockMode, LockOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The `application_name` of pglock's sessions.
const APPLICATION_NAME: &str = "pglock-cli";
/// How long pglock waits for a database connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code for usage errors, a missing or unreachable database, and database errors.
const EXIT_ERROR: u8 = 2;

const EXIT_CODES: &str = "\
Exit codes:
  <command's>  run: the command's own exit status
  128+N        run: the command died of signal N, or pglock got signal N while waiting
  1            run: the lock was not acquired (--no-wait, --timeout); see --conflict-exit-code
  126, 127     run: the command could not be started (127: not found)
  2            usage error, no database URL, cannot connect, database error

The database: --database-url, else the DATABASE_URL environment variable.";

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
                  A lock is a key (42, -7, or a pair of 32-bit integers 1,-2) or a name, hashed \
                  into a key exactly as Go's pglock.Hash and Rust's pglock::hash do, so shell \
                  scripts, Rust and Go services share the same locks.",
    after_help = EXIT_CODES,
    propagate_version = true
)]
struct Cli {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db [default: $DATABASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
                      command keeps running without it.",
        after_help = "Examples:\n  \
                      pglock run nightly-report -- ./report.sh\n  \
                      pglock run --no-wait backup -- pg_dump -f backup.sql app\n  \
                      pglock run --timeout 30s --conflict-exit-code 75 migrate -- ./migrate\n  \
                      pglock run --shared 1,7 -- ./read-only-job\n\n\
                      Exit codes: the command's status; 128+N if it died of signal N (or pglock \
                      got signal N while waiting); the conflict exit code (1) if the lock was \
                      not acquired; 126/127 if the command could not be started; 2 for usage \
                      and database errors."
    )]
    Run(RunArgs),

    /// Show who holds and who waits for advisory locks
    #[command(
        long_about = "Show who holds and who waits for advisory locks in the database: one row \
                      per session and mode, holders first, then waiters in arrival order. PID \
                      is the server backend's pid (pg_backend_pid()), as in pg_stat_activity.\n\n\
                      With a lock argument, only that key; without, every advisory lock in the \
                      current database."
    )]
    Status(StatusArgs),

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

/// The lock argument and how to read it, shared by `run` and `status`.
#[derive(Debug, Args)]
struct LockArg {
    /// Read LOCK as a name (hashed) even if it looks like a key
    #[arg(long)]
    name: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The lock: a key (42, -7, or 1,-2) or a name (hashed as Go's pglock.Hash)
    #[arg(value_name = "LOCK", allow_hyphen_values = true)]
    lock: String,

    #[command(flatten)]
    how: LockArg,

    /// Take the lock in shared mode: shared holders run together, never with an exclusive one
    #[arg(short, long)]
    shared: bool,

    /// Give up after waiting this long: 10s, 500ms, 2m, 1h or plain seconds (1.5)
    #[arg(short = 'w', long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "no_wait")]
    timeout: Option<Duration>,

    /// Try once: if the lock is held, do not wait
    #[arg(short, long)]
    no_wait: bool,

    /// Exit code when the lock is not acquired (--no-wait or --timeout)
    #[arg(short = 'E', long, value_name = "N", default_value_t = 1)]
    conflict_exit_code: u8,

    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Only this lock: a key (42, -7, or 1,-2) or a name [default: every advisory lock]
    #[arg(value_name = "LOCK", allow_hyphen_values = true)]
    lock: Option<String>,

    #[command(flatten)]
    how: LockArg,
}

/// A failure that ends pglock with [`EXIT_ERROR`], after one line on stderr.
#[derive(Debug)]
struct Fatal(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("pglock: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Hash { name } => {
                println!("{}", pglock::hash(&name));
                Ok(0)
            }
            Command::Status(args) => status(cli.database_url, args).await,
            Command::Run(args) => run(cli.database_url, args).await,
        }
    });
    match code {
        Ok(code) => ExitCode::from(code),
        Err(Fatal(message)) => {
            eprintln!("pglock: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

// ---------------------------------------------------------------------------------------
// run

async fn run(url: Option<String>, args: RunArgs) -> Result<u8, Fatal> {
    // Before anything can block: from here on these signals are ours to handle.
    let mut signals = Signals::new()?;
    let lock = Lock::parse(&args.lock, args.how.name);
    let database = Database::from_args(url)?;
    let mode = match args.shared {
        true => LockMode::Shared,
        false => LockMode::Exclusive,
    };

    let acquired = tokio::select! {
        acquired = acquire(&database, &lock, mode, &args) => acquired?,
        (number, name) = signals.next() => {
            eprintln!("pglock: got SIG{name} while waiting for lock {lock}; the command was not run");
            return Ok(signal_exit_code(number));
        }
    };
    let (pool, mut advisory) = match acquired {
        Acquired::Yes(pool, advisory) => (pool, advisory),
        Acquired::No(pool) => {
            let why = match (args.no_wait, args.timeout) {
                (true, _) => "not acquired (--no-wait)".to_owned(),
                (_, Some(timeout)) => format!("gave up after {}", human(timeout)),
                _ => "not acquired".to_owned(),
            };
            let holders = describe_holders(&pool, lock.key, mode).await;
            eprintln!("pglock: lock {lock} is held by {holders}; {why}");
            let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
            return Ok(args.conflict_exit_code);
        }
    };

    let code = match spawn(&args.command) {
        Err(code) => code,
        Ok(child) => supervise(child, &mut advisory, &mut signals, &lock).await,
    };

    if let Err(err) = advisory.close().await {
        eprintln!("pglock: warning: releasing lock {lock}: {err}");
    }
    // A graceful goodbye, so the server logs no broken connection; bounded all the same.
    let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
    Ok(code)
}

enum Acquired {
    Yes(PgPool, Box<AdvisoryLock>),
    No(PgPool),
}

/// Connects and takes the lock as `args` says. Dropping this future (a signal) ends the
/// lock's session, so the server stops waiting on our behalf.
async fn acquire(
    database: &Database,
    lock: &Lock,
    mode: LockMode,
    args: &RunArgs,
) -> Result<Acquired, Fatal> {
    let pool = database.connect().await?;
    let mut advisory = AdvisoryLock::new(&pool, lock.key)
        .await
        .map_err(|err| database.connect_error(err))?
        .with_options(
            LockOptions::new()
                .application_name(APPLICATION_NAME)
                .lost_check_interval(Duration::from_secs(5)),
        );
    let result = match (mode, args.no_wait, args.timeout) {
        (LockMode::Exclusive, true, _) => advisory.try_lock().await,
        (LockMode::Shared, true, _) => advisory.try_lock_shared().await,
        (LockMode::Exclusive, false, Some(t)) => advisory.try_lock_for(t).await,
        (LockMode::Shared, false, Some(t)) => advisory.try_lock_shared_for(t).await,
        (LockMode::Exclusive, false, None) => advisory.lock().await.map(|()| true),
        (LockMode::Shared, false, None) => advisory.lock_shared().await.map(|()| true),
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
async fn describe_holders(pool: &PgPool, key: LockKey, mode: LockMode) -> String {
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

/// Starts the command with pglock's stdio and environment; on failure, the exit code
/// (127 not found, 126 otherwise) after a message.
fn spawn(command: &[OsString]) -> Result<tokio::process::Child, u8> {
    let (program, rest) = command.split_first().ok_or(EXIT_ERROR)?;
    tokio::process::Command::new(program)
        .args(rest)
        .spawn()
        .map_err(|err| {
            eprintln!("pglock: cannot run {}: {err}", program.to_string_lossy());
            match err.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            }
        })
}

/// Waits for the child, forwarding signals to it and watching the lock; returns the exit
/// code pglock should exit with.
async fn supervise(
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
                    Ok(status) => exit_code_of(status),
                    Err(err) => {
                        eprintln!("pglock: lost track of the command: {err}");
                        EXIT_ERROR
                    }
                };
            }
            (_, name) = signals.next() => {
                if let Some(pid) = pid {
                    forward(name, pid).await;
                }
            }
            lost = advisory.lost(), if watching => {
                watching = false;
                eprintln!(
                    "pglock: warning: lock {lock} may no longer be held ({lost}); \
                     the command keeps running"
                );
            }
        }
    }
}

/// The command's exit code, or 128 + the signal that ended it.
fn exit_code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(EXIT_ERROR),
        (None, Some(signal)) => signal_exit_code(signal),
        (None, None) => EXIT_ERROR,
    }
}

fn signal_exit_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(255)
}

/// Sends signal `name` (`TERM`, ...) to `pid` with kill(1), without unsafe code.
async fn forward(name: &str, pid: u32) {
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
        eprintln!("pglock: cannot forward SIG{name} to the command: {err}");
    }
}

/// The signals pglock forwards (and that end a wait for the lock).
struct Signals {
    hup: Signal,
    int: Signal,
    quit: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> Result<Self, Fatal> {
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
    async fn next(&mut self) -> (i32, &'static str) {
        let kind = tokio::select! {
            _ = self.hup.recv() => (SignalKind::hangup(), "HUP"),
            _ = self.int.recv() => (SignalKind::interrupt(), "INT"),
            _ = self.quit.recv() => (SignalKind::quit(), "QUIT"),
            _ = self.term.recv() => (SignalKind::terminate(), "TERM"),
        };
        (kind.0.as_raw_value(), kind.1)
    }
}

// ---------------------------------------------------------------------------------------
// status

async fn status(url: Option<String>, args: StatusArgs) -> Result<u8, Fatal> {
    let lock = args
        .lock
        .as_deref()
        .map(|arg| Lock::parse(arg, args.how.name));
    let database = Database::from_args(url)?;
    let pool = database.connect().await?;
    let infos = match &lock {
        Some(lock) => inspect::locks_on(&pool, lock.key).await,
        None => inspect::locks(&pool).await,
    }
    .map_err(|err| Fatal(format!("cannot read pg_locks: {err}")))?;
    let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
    match (&lock, infos.is_empty()) {
        (Some(lock), true) => println!("no holders or waiters for {lock}"),
        (None, true) => println!("no advisory locks"),
        (_, false) => print!("{}", table(&infos)),
    }
    Ok(0)
}

/// The aligned table `pglock status` prints.
fn table(infos: &[LockInfo]) -> String {
    let header = [
        "KEY",
        "MODE",
        "STATE",
        "PID",
        "WAITING",
        "APPLICATION",
        "CLIENT",
        "QUERY AGE",
    ]
    .map(str::to_owned);
    let dash = || "-".to_owned();
    let rows: Vec<[String; 8]> = infos
        .iter()
        .map(|info| {
            [
                info.key.to_string(),
                info.mode.to_string(),
                if info.granted { "held" } else { "waiting" }.to_owned(),
                info.pid.to_string(),
                match (info.granted, info.waiting_for) {
                    (true, _) => dash(),
                    (false, Some(waited)) => human(waited),
                    (false, None) => "?".to_owned(),
                },
                info.application_name
                    .clone()
                    .filter(|name| !name.is_empty())
                    .unwrap_or_else(dash),
                // No client address: a Unix-socket connection.
                info.client_addr
                    .clone()
                    .unwrap_or_else(|| "local".to_owned()),
                info.query_age.map(human).unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<width$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// 350ms, 1.2s, 2m05s, 3h07m.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        1..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

// ---------------------------------------------------------------------------------------
// locks, durations, the database

/// A lock as the user named it.
struct Lock {
    key: LockKey,
    /// The name it was hashed from, if it was a name.
    name: Option<String>,
}

impl Lock {
    /// A key if `arg` reads as one (and `force_name` is off), else a hashed name.
    fn parse(arg: &str, force_name: bool) -> Lock {
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

/// `10s`, `500ms`, `2m`, `1h`, or plain (possibly fractional) seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use ms, s, m or h (10s, 500ms, 2m), or plain seconds"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use 10s, 500ms, 2m, or plain seconds"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|err| format!("{text:?}: {err}"))
}

/// The database to connect to, and how to name it without its password.
struct Database {
    options: PgConnectOptions,
    shown: String,
}

impl Database {
    fn from_args(url: Option<String>) -> Result<Database, Fatal> {
        let url = url
            .filter(|url| !url.is_empty())
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()))
            .ok_or_else(|| {
                Fatal(
                    "no database given: pass --database-url <URL> or set the DATABASE_URL \
                     environment variable (postgres://user:password@host:5432/db)"
                        .to_owned(),
                )
            })?;
        let options = PgConnectOptions::from_str(&url).map_err(|err| {
            Fatal(format!(
                "invalid database URL {}: {}",
                redact_url(&url),
                scrub(&err.to_string(), &url)
            ))
        })?;
        let shown = match options.get_socket() {
            Some(socket) => format!(
                "{}@{}:{}/{}",
                options.get_username(),
                socket.display(),
                options.get_port(),
                options.get_database().unwrap_or(options.get_username())
            ),
            None => format!(
                "{}@{}:{}/{}",
                options.get_username(),
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or(options.get_username())
            ),
        };
        let options = options.application_name(APPLICATION_NAME);
        Ok(Database { options, shown })
    }

    /// A small pool (the lock's session and one for looking at `pg_locks`), with a first
    /// connection made within [`CONNECT_TIMEOUT`].
    async fn connect(&self) -> Result<PgPool, Fatal> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(self.options.clone());
        match pool.acquire().await {
            Ok(conn) => {
                drop(conn);
                Ok(pool)
            }
            Err(sqlx::Error::PoolTimedOut) => {
                // The pool retries refused connections until its deadline and then only
                // says it timed out: one more try, to tell the user why.
                let retry = <sqlx::PgConnection as sqlx::Connection>::connect_with(&self.options);
                let why = match tokio::time::timeout(Duration::from_secs(3), retry).await {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no connection within {}", human(CONNECT_TIMEOUT)),
                };
                Err(self.connect_error(why))
            }
            Err(err) => Err(self.connect_error(err)),
        }
    }

    fn connect_error(&self, err: impl std::fmt::Display) -> Fatal {
        Fatal(format!(
            "cannot connect to the database at {}: {err}",
            self.shown
        ))
    }
}

/// `url` with its password taken out, for messages about a URL that does not parse.
fn redact_url(url: &str) -> String {
    match password_span(url) {
        Some((start, end)) => format!("{}***{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

/// `message` with the URL's password (if any, and long enough to be told apart from
/// ordinary text) replaced by `***`.
fn scrub(message: &str, url: &str) -> String {
    match password_span(url).map(|(start, end)| &url[start..end]) {
        Some(password) if password.len() >= 4 => message.replace(password, "***"),
        _ => message.to_owned(),
    }
}

/// Where the password is in `scheme://user:password@host/...`, as a byte range.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let authority_start = url.find("://")? + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let userinfo_len = rest[..authority_len].rfind('@')?;
    let colon = rest[..userinfo_len].find(':')?;
    Some((authority_start + colon + 1, authority_start + userinfo_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1s", "10x", "1.2.3s", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

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
    fn passwords_never_show() {
        let url = "postgres://app:s3cret@db.example:5433/prod?sslmode=require";
        assert_eq!(
            redact_url(url),
            "postgres://app:***@db.example:5433/prod?sslmode=require"
        );
        assert_eq!(scrub("bad s3cret here", url), "bad *** here");
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("not a url"), "not a url");
        let db = Database::from_args(Some(url.to_owned())).expect("parses");
        assert_eq!(db.shown, "app@db.example:5433/prod");
    }

    #[test]
    fn signal_and_exit_codes() {
        assert_eq!(exit_code_of(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code_of(ExitStatus::from_raw(15)), 143);
        assert_eq!(signal_exit_code(9), 137);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(350)), "350ms");
        assert_eq!(human(Duration::from_millis(1200)), "1.2s");
        assert_eq!(human(Duration::from_secs(125)), "2m05s");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 7 * 60)), "3h07m");
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

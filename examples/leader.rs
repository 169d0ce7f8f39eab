//! Leader election across processes, with failover: start several, exactly one leads, and
//! when it dies another takes over.
//!
//! ```text
//! cargo build --example leader
//! for i in 1 2 3; do target/debug/examples/leader & done   # one prints "leader <pid>"
//! kill -9 <that pid>                                       # another one takes over
//! ```
//!
//! `cargo run --example leader -- --for 5` stops by itself after 5 s (unlocking first);
//! without `--for` it runs until killed or interrupted (Ctrl-C unlocks and exits 0).
//! `--name <name>` elects a leader among the processes given the same name (default
//! `pglock/leader`). It uses `DATABASE_URL` when set, and the local server
//! (`postgres://postgres@127.0.0.1:5432/postgres`) otherwise.
//!
//! Each process keeps one [`AdvisoryLock`] on `LockKey::from_name(name)` (Go pglock's
//! key for that name) and loops: `lock()` waits until it is the leader; then it does the
//! leader's work (here a heartbeat every 500 ms) raced against [`AdvisoryLock::lost`],
//! which checks every 250 ms that the session still holds the key. If the leader's session
//! is lost (the server restarted, an administrator ran `pg_terminate_backend`, the network
//! went away) it stops the work at once, says so, and queues up as a follower again. A
//! leader process that dies takes its session with it, so the server frees the key and the
//! next waiter is granted it straight away.

use std::io::Write;
use std::pin::pin;
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, Error, LockKey, LockOptions};
use sqlx::postgres::PgPoolOptions;

const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How often the leader checks that it still holds the key.
const LOST_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How often the leader says it is alive.
const HEARTBEAT: Duration = Duration::from_millis(500);

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(1);
        }
    };
    if let Err(err) = run(args).await {
        eprintln!("leader example failed: {err}");
        std::process::exit(1);
    }
}

/// The command line.
struct Args {
    /// `--for <secs>`: how long to run before stopping by itself.
    run_for: Option<Duration>,
    /// `--name <name>`: what the processes elect a leader for.
    name: String,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: leader [--for <seconds>] [--name <lock name>]";
    let mut args = std::env::args().skip(1);
    let mut run_for = None;
    let mut name = "pglock/leader".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--for" => {
                let secs: f64 = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("--for needs a number of seconds; {usage}"))?;
                run_for = Some(Duration::from_secs_f64(secs));
            }
            "--name" => {
                name = args
                    .next()
                    .ok_or_else(|| format!("--name needs a lock name; {usage}"))?;
            }
            "-h" | "--help" => return Err(usage.to_owned()),
            other => return Err(format!("unknown argument {other:?}; {usage}")),
        }
    }
    Ok(Args { run_for, name })
}

async fn run(Args { run_for, name }: Args) -> pglock::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| LOCAL_SERVER.to_owned());
    let pool = match PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(err) => {
            eprintln!(
                "no PostgreSQL server answers at {}: {err}. Set DATABASE_URL to one, e.g. \
                 DATABASE_URL=postgres://user:password@host:5432/db cargo run --example leader",
                redact(&url)
            );
            std::process::exit(2);
        }
    };

    let pid = std::process::id();
    let mut lock = AdvisoryLock::new(&pool, LockKey::from_name(&name))
        .await?
        .with_options(LockOptions::new().lost_check_interval(LOST_CHECK_INTERVAL));

    // One future for the whole run, so a Ctrl-C is never missed between two phases.
    let deadline = run_for.map(|d| Instant::now() + d);
    let mut stop = pin!(stop_requested(deadline));

    loop {
        say(&format!("follower {pid} waiting"));
        let acquired = tokio::select! {
            acquired = lock.lock() => acquired,
            // Dropping the wait ends its session: the server stops queueing us at once.
            () = &mut stop => break,
        };
        match acquired {
            Ok(()) => {}
            // The session was lost earlier: the lock reconnects on the next call.
            Err(Error::LockLost { .. }) => continue,
            Err(err) => {
                eprintln!("follower {pid}: {err}; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut stop => break,
                }
            }
        }

        say(&format!("leader {pid}"));
        tokio::select! {
            never = leader_work(pid) => match never {},
            lost = lock.lost() => {
                // Another process may be the leader already: stop leading, queue again.
                say(&format!("lost leadership {pid}: {lost}"));
                // A check that failed without losing the session (rare) leaves the level
                // held: give it up too, so that leadership is decided afresh.
                if lock.exclusive_levels() > 0 {
                    let _ = lock.unlock().await;
                }
            }
            () = &mut stop => {
                if let Err(err) = lock.unlock().await {
                    eprintln!("leader {pid}: unlock: {err}");
                }
                break;
            }
        }
    }

    lock.close().await?;
    pool.close().await;
    say(&format!("stopped {pid}"));
    Ok(())
}

/// The work only the leader does. It never ends by itself: losing the lock or being asked
/// to stop ends it.
async fn leader_work(pid: u32) -> std::convert::Infallible {
    let mut beat = 0_u64;
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        beat += 1;
        say(&format!("heartbeat {pid} {beat}"));
    }
}

/// Resolves at the deadline (if any) or on Ctrl-C, whichever comes first.
async fn stop_requested(deadline: Option<Instant>) {
    let at_deadline = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            None => std::future::pending().await,
        }
    };
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handler could be installed: run until the deadline or killed.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = at_deadline => {}
        () = interrupted => {}
    }
}

/// Prints a line and flushes it at once, so a supervisor reading a pipe sees it now.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url.parse::<sqlx::postgres::PgConnectOptions>() {
        Ok(opts) => format!(
            "{}@{}:{}/{}",
            opts.get_username(),
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        ),
        Err(_) => "DATABASE_URL".to_owned(),
    }
}

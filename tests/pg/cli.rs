//! The `pglock` binary, run as real processes against PostgreSQL: mutual exclusion between
//! two runs, conflicts, timeouts, exit statuses, signals, a killed pglock, `status` and
//! `hash`. Only with the `cli` feature (`cargo test --features cli --test cli`), which is
//! what builds the binary.
#![cfg(feature = "cli")]

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, LockKey};
use support::rt;

/// The bound on every wait for a pglock process that should end.
const WAIT: Duration = Duration::from_secs(20);

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        Scratch(support::scratch_dir(&format!("pglock-cli-{test}")))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `pglock` process, killed (and reaped) when dropped. Its stdout and stderr go
/// to files, so a grandchild holding them open never blocks a read.
struct Pglock {
    child: std::process::Child,
    started: Instant,
    out: PathBuf,
    err: PathBuf,
    _scratch: Scratch,
}

/// What a finished `pglock` left.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    elapsed: Duration,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// `pglock <args>` with `DATABASE_URL` set to the test database.
fn pglock(args: &[&str]) -> Pglock {
    spawn(args, |cmd| {
        cmd.env("DATABASE_URL", support::database_url());
    })
}

/// `pglock <args>`, with `configure` adjusting the command (environment) first.
fn spawn(args: &[&str], configure: impl FnOnce(&mut Command)) -> Pglock {
    let scratch = Scratch::new("proc");
    let out = scratch.path("stdout");
    let err = scratch.path("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pglock"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("create the stdout file"))
        .stderr(std::fs::File::create(&err).expect("create the stderr file"));
    configure(&mut cmd);
    let child = cmd.spawn().expect("start pglock");
    Pglock {
        child,
        started: Instant::now(),
        out,
        err,
        _scratch: scratch,
    }
}

impl Pglock {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (polling, at most `limit`) for the process to exit.
    async fn finish_within(&mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll pglock") {
                return Finished {
                    status,
                    elapsed: self.started.elapsed(),
                    stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
                    stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "pglock did not exit within {limit:?}; stderr so far: {}",
                std::fs::read_to_string(&self.err).unwrap_or_default()
            );
            rt::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(&mut self) -> Finished {
        self.finish_within(WAIT).await
    }
}

impl Drop for Pglock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process known only by pid (a command pglock started), SIGKILLed when dropped.
struct Orphan(Option<String>);

impl Drop for Orphan {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            send_signal("KILL", &pid);
        }
    }
}

/// `kill -s <name> <pid>`.
fn send_signal(name: &str, pid: &str) {
    let _ = Command::new("kill")
        .args(["-s", name, pid])
        .stderr(Stdio::null())
        .status();
}

/// The key as the CLI takes it.
fn arg(key: LockKey) -> String {
    key.to_string()
}

/// Waits until some session holds `key`.
async fn until_held(key: LockKey) {
    support::eventually(WAIT, "the key is held", || async {
        !support::holders(key).await.is_empty()
    })
    .await;
}

/// Waits until `path` has content.
async fn until_written(path: &Path) {
    support::eventually(WAIT, "the command wrote its file", || async {
        std::fs::read_to_string(path).is_ok_and(|text| !text.trim().is_empty())
    })
    .await;
}

/// A lock on `key` held from the test, through the library.
async fn hold(pool: &sqlx::PgPool, key: LockKey) -> AdvisoryLock {
    let mut lock = AdvisoryLock::new(pool, key).await.expect("lock");
    lock.lock().await.expect("hold the key from the test");
    lock
}

#[test]
fn two_runs_on_one_key_never_overlap() {
    rt::run(async {
        let key = support::key("cli/two_runs_on_one_key_never_overlap");
        let scratch = Scratch::new("overlap");
        let file = scratch.path("log");
        let script = format!(
            "echo start $$ >> '{0}'; sleep 0.5; echo end $$ >> '{0}'",
            file.display()
        );
        let key_arg = arg(key);
        let started = Instant::now();
        let mut first = pglock(&["run", &key_arg, "--", "sh", "-c", &script]);
        let mut second = pglock(&["run", &key_arg, "--", "sh", "-c", &script]);
        let (a, b) = (first.finish().await, second.finish().await);
        assert_eq!(a.code(), Some(0), "{a:?}");
        assert_eq!(b.code(), Some(0), "{b:?}");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "the runs overlapped in time"
        );

        let log = std::fs::read_to_string(&file).expect("read the log");
        let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(lines.len(), 4, "{log}");
        let shape: Vec<&str> = lines.iter().map(|l| l[0]).collect();
        assert_eq!(
            shape,
            ["start", "end", "start", "end"],
            "interleaved:\n{log}"
        );
        assert_eq!(lines[0][1], lines[1][1], "{log}");
        assert_eq!(lines[2][1], lines[3][1], "{log}");
        assert_ne!(lines[0][1], lines[2][1], "one command ran twice:\n{log}");
        assert!(
            support::holders(key).await.is_empty(),
            "the key was left held"
        );
    });
}

#[test]
fn no_wait_exits_with_the_conflict_code_when_held() {
    rt::run(async {
        let key = support::key("cli/no_wait_exits_with_the_conflict_code_when_held");
        let pool = support::pool().await;
        let mut held = hold(&pool, key).await;
        let holder = support::holders(key).await;
        assert_eq!(holder.len(), 1);

        let scratch = Scratch::new("nowait");
        let marker = scratch.path("ran");
        let touch = format!("touch '{}'", marker.display());
        let key_arg = arg(key);

        let out = pglock(&["run", "--no-wait", &key_arg, "--", "sh", "-c", &touch])
            .finish()
            .await;
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(out.elapsed < Duration::from_secs(5), "not quick: {out:?}");
        assert!(!marker.exists(), "the command ran without the lock");
        let line = out.stderr.trim();
        assert_eq!(line.lines().count(), 1, "one line on stderr: {line}");
        assert!(line.contains("held"), "{line}");
        assert!(
            line.contains(&holder[0].to_string()),
            "no holder pid: {line}"
        );

        let out = pglock(&[
            "run",
            "-n",
            "--conflict-exit-code",
            "75",
            &key_arg,
            "--",
            "true",
        ])
        .finish()
        .await;
        assert_eq!(out.code(), Some(75), "{out:?}");
        assert!(out.elapsed < Duration::from_secs(5), "not quick: {out:?}");

        // Shared against an exclusive holder conflicts too.
        let out = pglock(&["run", "-n", "--shared", &key_arg, "--", "true"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(1), "{out:?}");

        held.unlock().await.expect("unlock");
        let out = pglock(&["run", "--no-wait", &key_arg, "--", "sh", "-c", &touch])
            .finish()
            .await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert!(
            marker.exists(),
            "the command did not run once the key was free"
        );
        held.close().await.expect("close");
    });
}

#[test]
fn timeout_gives_up_after_the_timeout() {
    rt::run(async {
        let key = support::key("cli/timeout_gives_up_after_the_timeout");
        let pool = support::pool().await;
        let mut held = hold(&pool, key).await;
        let key_arg = arg(key);

        let out = pglock(&["run", "--timeout", "300ms", &key_arg, "--", "true"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(out.elapsed >= Duration::from_millis(300), "{out:?}");
        assert!(out.elapsed < Duration::from_secs(5), "{out:?}");
        assert!(out.stderr.contains("gave up after 300ms"), "{out:?}");

        // Released within the timeout: acquired, and the command runs.
        let mut waiting = pglock(&["run", "--timeout", "10s", &key_arg, "--", "true"]);
        support::eventually(WAIT, "pglock waits", || async {
            !support::waiters(key).await.is_empty()
        })
        .await;
        held.unlock().await.expect("unlock");
        let out = waiting.finish().await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        held.close().await.expect("close");
    });
}

#[test]
fn run_exits_with_the_commands_status() {
    rt::run(async {
        let key = support::key("cli/run_exits_with_the_commands_status");
        let key_arg = arg(key);
        let out = pglock(&["run", &key_arg, "--", "sh", "-c", "exit 7"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(7), "{out:?}");

        // Died of a signal: 128 + its number, as a shell reports it.
        let out = pglock(&["run", &key_arg, "--", "sh", "-c", "kill -s KILL $$"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(128 + 9), "{out:?}");

        // The command's output is the command's; nothing from pglock on success.
        let out = pglock(&["run", &key_arg, "--", "echo", "hello"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr, "");

        let out = pglock(&["run", &key_arg, "--", "/nonexistent/command"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(127), "{out:?}");
        assert!(
            support::holders(key).await.is_empty(),
            "the key was left held"
        );
    });
}

#[test]
fn status_shows_the_holder() {
    rt::run(async {
        let key = support::key("cli/status_shows_the_holder");
        let key_arg = arg(key);
        let out = pglock(&["status", &key_arg]).finish().await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout, format!("no holders or waiters for {key_arg}\n"));

        let pool = support::pool().await;
        let mut held = hold(&pool, key).await;
        let holder = support::holders(key).await[0];

        let out = pglock(&["status", &key_arg]).finish().await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{}", out.stdout);
        for column in [
            "KEY",
            "MODE",
            "STATE",
            "PID",
            "WAITING",
            "APPLICATION",
            "CLIENT",
        ] {
            assert!(lines[0].contains(column), "no {column}: {}", lines[0]);
        }
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        let holder = holder.to_string();
        assert_eq!(row[..4], [key_arg.as_str(), "exclusive", "held", &holder]);
        // The holder's session keeps its own application_name (none here: "-").
        assert!(lines[1].contains(" - "), "{}", lines[1]);

        // A waiter: another pglock run, shown waiting, as pglock-cli.
        let mut waiting = pglock(&["run", &key_arg, "--", "true"]);
        support::eventually(WAIT, "pglock waits", || async {
            !support::waiters(key).await.is_empty()
        })
        .await;
        let waiter = support::waiters(key).await[0].to_string();
        let out = pglock(&["status", &key_arg]).finish().await;
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{}", out.stdout);
        assert!(lines[1].contains(" held "), "holders first: {}", out.stdout);
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row[..4],
            [key_arg.as_str(), "exclusive", "waiting", &waiter]
        );
        assert!(lines[2].contains("pglock-cli"), "{}", lines[2]);
        // Columns line up: every row's PID starts where the header's does.
        let pid_at = lines[0].find("PID").expect("PID header");
        assert!(lines[2][pid_at..].starts_with(&waiter), "{}", out.stdout);
        assert!(lines[1][pid_at..].starts_with(&holder), "{}", out.stdout);

        // All advisory locks: ours among them.
        let out = pglock(&["status"]).finish().await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{key_arg} "))),
            "{}",
            out.stdout
        );

        held.unlock().await.expect("unlock");
        assert_eq!(waiting.finish().await.code(), Some(0));
        held.close().await.expect("close");

        // A name is hashed, and said so.
        let out = pglock(&["status", "--name", "no such lock"]).finish().await;
        assert_eq!(
            out.stdout,
            format!(
                "no holders or waiters for \"no such lock\" (key {})\n",
                pglock::hash("no such lock")
            )
        );
    });
}

#[test]
fn hash_prints_the_go_compatible_key() {
    rt::run(async {
        // No database needed.
        let out = spawn(&["hash", "mylock"], |cmd| {
            cmd.env_remove("DATABASE_URL");
        })
        .finish()
        .await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout, "5745039872434889948\n");
        assert_eq!(pglock::hash("mylock"), 5745039872434889948);
    });
}

#[test]
fn names_and_keys_lock_the_same_key() {
    rt::run(async {
        let name = format!("pglock-tests/cli/names/{}", std::process::id());
        let key = LockKey::from_name(&name);
        let pool = support::pool().await;
        let mut held = hold(&pool, key).await;
        // By name, and by the number it hashes to: both conflict with the holder.
        for lock in [name.clone(), arg(key)] {
            let out = pglock(&["run", "-n", &lock, "--", "true"]).finish().await;
            assert_eq!(out.code(), Some(1), "{lock}: {out:?}");
        }
        // `--name` hashes even a number: a different key, free.
        let out = pglock(&["run", "-n", "--name", &arg(key), "--", "true"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        held.close().await.expect("close");

        // An int-pair key (negative half included) is taken as that pair.
        let pair = support::pair_key("cli/names_and_keys_lock_the_same_key");
        let mut held = hold(&pool, pair).await;
        let out = pglock(&["run", "-n", &arg(pair), "--", "true"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(1), "{out:?}");
        held.close().await.expect("close");
    });
}

#[test]
fn lock_is_released_when_pglock_is_killed() {
    rt::run(async {
        let key = support::key("cli/lock_is_released_when_pglock_is_killed");
        let scratch = Scratch::new("killed");
        let pidfile = scratch.path("pid");
        let script = format!("echo $$ > '{}'; exec sleep 30", pidfile.display());
        let mut run = pglock(&["run", &arg(key), "--", "sh", "-c", &script]);
        until_held(key).await;
        until_written(&pidfile).await;
        let orphan = Orphan(Some(
            std::fs::read_to_string(&pidfile)
                .expect("read the pid file")
                .trim()
                .to_owned(),
        ));

        run.child.kill().expect("SIGKILL pglock");
        let _ = run.finish_within(Duration::from_secs(5)).await;
        support::eventually(
            Duration::from_secs(2),
            "the server freed the key",
            || async { support::holders(key).await.is_empty() },
        )
        .await;
        assert!(support::free_for_another_session(key).await);
        drop(orphan);
    });
}

#[test]
fn signals_are_forwarded_to_the_child() {
    rt::run(async {
        let key = support::key("cli/signals_are_forwarded_to_the_child");
        let scratch = Scratch::new("signals");
        let ready = scratch.path("ready");
        let script = format!(
            "trap 'kill $!; exit 42' TERM; sleep 30 & echo ready > '{}'; wait",
            ready.display()
        );
        let mut run = pglock(&["run", &arg(key), "--", "sh", "-c", &script]);
        until_held(key).await;
        until_written(&ready).await;

        send_signal("TERM", &run.pid().to_string());
        let out = run.finish().await;
        assert_eq!(out.code(), Some(42), "{out:?}");
        support::eventually(Duration::from_secs(2), "the key is free", || async {
            support::holders(key).await.is_empty()
        })
        .await;
    });
}

#[test]
fn a_signal_while_waiting_gives_up_without_running() {
    rt::run(async {
        let key = support::key("cli/a_signal_while_waiting_gives_up_without_running");
        let pool = support::pool().await;
        let mut held = hold(&pool, key).await;
        let scratch = Scratch::new("waitsignal");
        let marker = scratch.path("ran");
        let touch = format!("touch '{}'", marker.display());
        let mut run = pglock(&["run", &arg(key), "--", "sh", "-c", &touch]);
        support::eventually(WAIT, "pglock waits", || async {
            !support::waiters(key).await.is_empty()
        })
        .await;

        send_signal("INT", &run.pid().to_string());
        let out = run.finish().await;
        assert_eq!(out.code(), Some(128 + 2), "{out:?}");
        assert!(!marker.exists(), "the command ran");
        // Its wait is gone from the server too.
        support::eventually(Duration::from_secs(2), "the wait ended", || async {
            support::waiters(key).await.is_empty()
        })
        .await;
        held.close().await.expect("close");
    });
}

#[test]
fn missing_database_url_is_a_clear_error() {
    rt::run(async {
        for args in [&["status"][..], &["run", "x", "--", "true"][..]] {
            let out = spawn(args, |cmd| {
                cmd.env_remove("DATABASE_URL");
            })
            .finish()
            .await;
            assert_eq!(out.code(), Some(2), "{out:?}");
            assert!(out.stderr.contains("DATABASE_URL"), "{out:?}");
            assert!(out.stderr.contains("--database-url"), "{out:?}");
            assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        }
    });
}

#[test]
fn connection_errors_never_show_the_password() {
    rt::run(async {
        let options: sqlx::postgres::PgConnectOptions =
            support::database_url().parse().expect("the URL parses");
        let url = format!(
            "postgres://no_such_role_pglock:hunter2-secret@{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("postgres")
        );
        let out = pglock(&["--database-url", &url, "status"]).finish().await;
        assert_eq!(out.code(), Some(2), "{out:?}");
        assert!(!out.stderr.contains("hunter2"), "{out:?}");
        assert!(
            out.stderr.contains(&format!(
                "cannot connect to the database at no_such_role_pglock@{}:{}",
                options.get_host(),
                options.get_port()
            )),
            "{out:?}"
        );

        let bad = "postgres://user:hunter2-secret@host:notaport/db";
        let out = pglock(&["--database-url", bad, "status"]).finish().await;
        assert_eq!(out.code(), Some(2), "{out:?}");
        assert!(!out.stderr.contains("hunter2"), "{out:?}");

        // A usage error is 2 as well.
        let out = pglock(&["run", "--no-wait", "--timeout", "1s", "x", "--", "true"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(2), "{out:?}");
    });
}

// ---------------------------------------------------------------------------------------
// A lock lost while the command runs (--on-lost)

/// pglock's exit code for a lock lost under `--on-lost term` or `kill`.
const LOCK_LOST: i32 = 3;

/// Ends the session of the one pglock holder of `key`, found in `pg_locks`, from another
/// session (`pg_terminate_backend`), as a failover or an operator would; returns when the
/// server has done it.
async fn terminate_holder(key: LockKey) -> Instant {
    let holders = support::holders(key).await;
    assert_eq!(holders.len(), 1, "one holder of {key}: {holders:?}");
    terminate_backend(holders[0]).await
}

/// `pg_terminate_backend(pid)` from a session of our own, waiting until it is gone.
async fn terminate_backend(pid: i32) -> Instant {
    let mut conn = support::connect().await;
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(&mut conn)
        .await
        .expect("pg_terminate_backend");
    let at = Instant::now();
    assert!(ended, "backend {pid} was not terminated");
    let _ = sqlx::Connection::close(conn).await;
    at
}

/// A command that records the SIGTERM it gets in `<dir>/term`, writes its pid to
/// `<dir>/pid` and its `sleep`'s to `<dir>/sleep` once it is ready, then sleeps (30 s, or
/// `finish_after` seconds, then writes `<dir>/finished`). With `exit_on_term`, the
/// trap ends it (143) and its `sleep`; without, it records the signal and sleeps on.
fn trapping_script(dir: &Scratch, exit_on_term: bool, finish_after: u32) -> String {
    let on_term = match exit_on_term {
        true => "kill $! 2>/dev/null; exit 143",
        false => ":",
    };
    format!(
        "trap 'echo TERM >> {term}; {on_term}' TERM; \
         sleep {finish_after} & echo $! > {sleep}; echo $$ > {pid}; \
         while kill -0 $! 2>/dev/null; do wait $!; done; echo finished > {finished}",
        term = quoted(&dir.path("term")),
        sleep = quoted(&dir.path("sleep")),
        pid = quoted(&dir.path("pid")),
        finished = quoted(&dir.path("finished")),
    )
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

/// The pid a script wrote to `path`, as an [`Orphan`] to kill if it outlives the test.
async fn pid_in(path: &Path) -> Orphan {
    until_written(path).await;
    Orphan(Some(
        std::fs::read_to_string(path)
            .expect("read the pid file")
            .trim()
            .to_owned(),
    ))
}

/// Whether the process `pid` exists (not yet reaped).
fn process_exists(pid: &Orphan) -> bool {
    pid.0
        .as_ref()
        .is_some_and(|pid| Path::new("/proc").join(pid).exists())
}

/// Asserts that no session holds `key` and a fresh one can take it.
async fn assert_free(key: LockKey) {
    support::eventually(Duration::from_secs(2), "the key is free", || async {
        support::holders(key).await.is_empty()
    })
    .await;
    assert!(support::free_for_another_session(key).await);
}

#[test]
fn on_lost_term_sends_sigterm_within_2s_and_exits_with_the_lock_lost_code() {
    rt::run(async {
        let key = support::key("cli/on_lost_term_sends_sigterm");
        let dir = Scratch::new("lost-term");
        let script = trapping_script(&dir, true, 30);
        let mut run = pglock(&[
            "run",
            "--on-lost",
            "term",
            &arg(key),
            "--",
            "sh",
            "-c",
            &script,
        ]);
        until_held(key).await;
        let command = pid_in(&dir.path("pid")).await;
        let _sleep = pid_in(&dir.path("sleep")).await;

        let lost_at = terminate_holder(key).await;
        let term = dir.path("term");
        support::eventually(
            Duration::from_secs(2),
            "the command got SIGTERM",
            || async { term.exists() },
        )
        .await;
        eprintln!("--on-lost term: loss to SIGTERM in {:?}", lost_at.elapsed());
        let out = run.finish().await;
        assert_eq!(out.code(), Some(LOCK_LOST), "{out:?}");
        assert_eq!(std::fs::read_to_string(&term).unwrap_or_default(), "TERM\n");
        assert!(!dir.path("finished").exists(), "the command ran on");
        assert!(!process_exists(&command), "the command outlived pglock");
        assert!(
            out.stderr.contains(&arg(key)),
            "the key is not named: {out:?}"
        );
        assert!(out.stderr.contains("was lost"), "{out:?}");
        assert!(out.stderr.contains("exiting with 3 (lock lost)"), "{out:?}");
        assert_free(key).await;
    });
}

#[test]
fn on_lost_kill_sends_sigkill_at_once_and_exits_with_the_lock_lost_code() {
    rt::run(async {
        let key = support::key("cli/on_lost_kill_sends_sigkill");
        let dir = Scratch::new("lost-kill");
        let script = trapping_script(&dir, true, 30);
        // --no-wait and --on-lost combine: the lock is free, taken at once, then watched.
        let mut run = pglock(&[
            "run",
            "--no-wait",
            "--on-lost",
            "kill",
            &arg(key),
            "--",
            "sh",
            "-c",
            &script,
        ]);
        until_held(key).await;
        let command = pid_in(&dir.path("pid")).await;
        let _sleep = pid_in(&dir.path("sleep")).await;

        let lost_at = terminate_holder(key).await;
        support::eventually(Duration::from_secs(2), "the command is gone", || async {
            !process_exists(&command)
        })
        .await;
        eprintln!(
            "--on-lost kill: loss to the command gone in {:?}",
            lost_at.elapsed()
        );
        let out = run.finish().await;
        assert_eq!(out.code(), Some(LOCK_LOST), "{out:?}");
        assert!(!dir.path("term").exists(), "SIGTERM came first: {out:?}");
        assert!(!dir.path("finished").exists(), "the command ran on");
        assert!(out.stderr.contains("sending SIGKILL"), "{out:?}");
        assert!(out.stderr.contains("was killed by signal 9"), "{out:?}");
        assert!(
            out.stderr.contains(&arg(key)),
            "the key is not named: {out:?}"
        );
        assert_free(key).await;
    });
}

#[test]
fn on_lost_term_escalates_to_sigkill_after_kill_after() {
    rt::run(async {
        let key = support::key("cli/on_lost_term_escalates_to_sigkill");
        let dir = Scratch::new("lost-escalate");
        // Records SIGTERM and carries on: only SIGKILL ends it.
        let script = trapping_script(&dir, false, 30);
        let mut run = pglock(&[
            "run",
            "--on-lost",
            "term",
            "--kill-after",
            "700ms",
            &arg(key),
            "--",
            "sh",
            "-c",
            &script,
        ]);
        until_held(key).await;
        let command = pid_in(&dir.path("pid")).await;
        let _sleep = pid_in(&dir.path("sleep")).await;

        terminate_holder(key).await;
        let term = dir.path("term");
        support::eventually(
            Duration::from_secs(2),
            "the command got SIGTERM",
            || async { term.exists() },
        )
        .await;
        let termed = Instant::now();
        support::eventually(Duration::from_secs(3), "the command is gone", || async {
            !process_exists(&command)
        })
        .await;
        let grace = termed.elapsed();
        assert!(
            grace >= Duration::from_millis(600),
            "killed early, after {grace:?}"
        );
        let out = run.finish().await;
        assert_eq!(out.code(), Some(LOCK_LOST), "{out:?}");
        assert!(out.stderr.contains("SIGKILL in 700ms"), "{out:?}");
        assert!(
            out.stderr.contains("still runs 700ms after SIGTERM"),
            "{out:?}"
        );
        assert!(out.stderr.contains("was killed by signal 9"), "{out:?}");
        assert_free(key).await;
    });
}

#[test]
fn on_lost_warn_lets_the_command_finish_and_names_the_key() {
    rt::run(async {
        let key = support::key("cli/on_lost_warn_lets_the_command_finish");
        let dir = Scratch::new("lost-warn");
        let script = format!("{}; exit 5", trapping_script(&dir, true, 4));
        let mut run = pglock(&["run", &arg(key), "--", "sh", "-c", &script]);
        until_held(key).await;
        let _command = pid_in(&dir.path("pid")).await;
        let _sleep = pid_in(&dir.path("sleep")).await;

        terminate_holder(key).await;
        // The warning comes while the command still runs.
        support::eventually(Duration::from_secs(2), "pglock warns", || async {
            std::fs::read_to_string(&run.err).is_ok_and(|err| err.contains("warning"))
        })
        .await;
        assert!(!dir.path("finished").exists(), "the warning came too late");
        let out = run.finish().await;
        assert_eq!(out.code(), Some(5), "not the command's status: {out:?}");
        assert!(dir.path("finished").exists(), "the command did not finish");
        assert!(!dir.path("term").exists(), "the command got SIGTERM");
        let warning = out.stderr.trim();
        assert_eq!(warning.lines().count(), 1, "one warning: {warning}");
        assert!(
            warning.contains(&format!("lock {} was lost", arg(key))),
            "{warning}"
        );
        assert!(warning.contains("keeps running"), "{warning}");
        assert_free(key).await;
    });
}

#[test]
fn a_loss_noticed_only_on_release_is_still_a_loss() {
    rt::run(async {
        let key = support::key("cli/a_loss_noticed_only_on_release");
        let dir = Scratch::new("lost-release");
        let go = dir.path("go");
        // Exits 0 as soon as the test says so, right after it ended pglock's session.
        let script = format!(
            "echo $$ > {}; while [ ! -e {} ]; do sleep 0.01; done",
            quoted(&dir.path("pid")),
            quoted(&go)
        );
        let mut run = pglock(&[
            "run",
            "--on-lost",
            "term",
            &arg(key),
            "--",
            "sh",
            "-c",
            &script,
        ]);
        until_held(key).await;
        let _command = pid_in(&dir.path("pid")).await;
        terminate_holder(key).await;
        std::fs::write(&go, "").expect("tell the command to finish");
        let out = run.finish().await;
        // Noticed by the watch or on release (whichever came first): a loss all the same.
        assert_eq!(out.code(), Some(LOCK_LOST), "{out:?}");
        assert!(out.stderr.contains(&arg(key)), "{out:?}");
        assert!(
            !out.stderr.contains("releasing lock"),
            "reported as a failed release: {out:?}"
        );
        assert_free(key).await;
    });
}

#[test]
fn shared_timeout_and_on_lost_combine() {
    rt::run(async {
        let key = support::key("cli/shared_timeout_and_on_lost_combine");
        let pool = support::pool().await;
        let mut reader = AdvisoryLock::new(&pool, key).await.expect("lock");
        reader
            .lock_shared()
            .await
            .expect("a shared holder from the test");
        let ours = support::holders(key).await;
        assert_eq!(ours.len(), 1);

        let dir = Scratch::new("lost-shared");
        let script = trapping_script(&dir, true, 30);
        let mut run = pglock(&[
            "run",
            "--shared",
            "--timeout",
            "5s",
            "--on-lost",
            "kill",
            &arg(key),
            "--",
            "sh",
            "-c",
            &script,
        ]);
        // Shared with the test's holder, at once.
        let command = pid_in(&dir.path("pid")).await;
        let _sleep = pid_in(&dir.path("sleep")).await;
        let both = support::holders_with_mode(key).await;
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both.iter().all(|(_, mode)| mode == "ShareLock"), "{both:?}");
        let pglocks: Vec<i32> = both
            .iter()
            .map(|(pid, _)| *pid)
            .filter(|pid| !ours.contains(pid))
            .collect();

        terminate_backend(pglocks[0]).await;
        support::eventually(Duration::from_secs(2), "the command is gone", || async {
            !process_exists(&command)
        })
        .await;
        let out = run.finish().await;
        assert_eq!(out.code(), Some(LOCK_LOST), "{out:?}");
        // The test's own shared level is untouched.
        assert_eq!(support::holders(key).await, ours);
        reader.close().await.expect("close");
    });
}

#[test]
fn kill_after_without_on_lost_term_is_a_usage_error() {
    rt::run(async {
        for on_lost in [
            &[][..],
            &["--on-lost", "kill"][..],
            &["--on-lost", "warn"][..],
        ] {
            let mut args = vec!["run", "--kill-after", "1s"];
            args.extend_from_slice(on_lost);
            args.extend_from_slice(&["x", "--", "true"]);
            let out = pglock(&args).finish().await;
            assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
            assert!(out.stderr.contains("--on-lost term"), "{out:?}");
        }
        let out = pglock(&["run", "--on-lost", "sometimes", "x", "--", "true"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(2), "{out:?}");
    });
}

// ---------------------------------------------------------------------------------------
// The command's environment, fencing tokens, `pglock migrate`

/// The newest fencing token issued for `key`, read from the table (0: none yet).
async fn current_token(pool: &sqlx::PgPool, key: LockKey) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT token FROM pglock_fencing_tokens WHERE lock_key = $1")
        .bind(key.to_string())
        .fetch_optional(pool)
        .await
        .expect("read pglock_fencing_tokens")
        .unwrap_or(0)
}

/// What a command run under pglock saw: `PGLOCK_KEY|PGLOCK_FENCING_TOKEN` (`unset` for
/// a variable not set).
async fn seen_env(args: &[&str], outer_token: Option<&str>) -> (Finished, String) {
    let mut all = args.to_vec();
    all.extend_from_slice(&[
        "--",
        "sh",
        "-c",
        "echo \"${PGLOCK_KEY-unset}|${PGLOCK_FENCING_TOKEN-unset}\"",
    ]);
    let out = spawn(&all, |cmd| {
        cmd.env("DATABASE_URL", support::database_url());
        if let Some(token) = outer_token {
            cmd.env("PGLOCK_FENCING_TOKEN", token);
        }
    })
    .finish()
    .await;
    let seen = out.stdout.trim().to_owned();
    (out, seen)
}

#[test]
fn the_command_gets_pglock_key_and_no_stale_fencing_token() {
    rt::run(async {
        let key = support::key("cli/the_command_gets_pglock_key");
        let (out, seen) = seen_env(&["run", &arg(key)], Some("999")).await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        // An outer pglock's token does not leak into an unfenced run.
        assert_eq!(seen, format!("{}|unset", arg(key)));

        // A name: the key it hashes to, as LockKey displays it.
        let name = format!("pglock-tests/cli/env-name/{}", std::process::id());
        let (out, seen) = seen_env(&["run", "--shared", &name], None).await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert_eq!(seen, format!("{}|unset", LockKey::from_name(&name)));

        let pair = support::pair_key("cli/the_command_gets_pglock_key");
        let (out, seen) = seen_env(&["run", "-n", &arg(pair)], None).await;
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert_eq!(seen, format!("{}|unset", pair));
    });
}

#[test]
fn fenced_runs_hand_the_command_a_growing_fencing_token() {
    rt::run(async {
        let pool = support::pool().await;
        pglock::migrate(&pool).await.expect("the fencing migration");
        let key = support::key("cli/fenced_runs_hand_the_command_a_growing_token");
        let mut tokens = Vec::new();
        // Every way of waiting takes a token: for ever, --no-wait, --timeout.
        let key_arg = arg(key);
        for wait in [&[][..], &["--no-wait"][..], &["--timeout", "5s"][..]] {
            let mut args = vec!["run", "--fenced"];
            args.extend_from_slice(wait);
            args.push(&key_arg);
            let (out, seen) = seen_env(&args, Some("1")).await;
            assert_eq!(out.code(), Some(0), "{wait:?}: {out:?}");
            let (seen_key, token) = seen.split_once('|').expect("KEY|TOKEN");
            assert_eq!(seen_key, key_arg);
            let token: i64 = token.parse().unwrap_or_else(|_| panic!("a token: {seen}"));
            // The token the server issued last for the key: this run's.
            assert_eq!(token, current_token(&pool, key).await, "{wait:?}");
            tokens.push(token);
        }
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "not growing: {tokens:?}"
        );
        assert!(
            support::holders(key).await.is_empty(),
            "the key was left held"
        );
    });
}

#[test]
fn a_fenced_timeout_gives_up_without_a_token_or_a_wait_left_behind() {
    rt::run(async {
        let pool = support::pool().await;
        pglock::migrate(&pool).await.expect("the fencing migration");
        let key = support::key("cli/a_fenced_timeout_gives_up");
        let mut held = hold(&pool, key).await;
        let before = current_token(&pool, key).await;
        let dir = Scratch::new("fenced-timeout");
        let marker = dir.path("ran");
        let touch = format!("touch {}", quoted(&marker));
        let out = pglock(&[
            "run",
            "--fenced",
            "--timeout",
            "300ms",
            &arg(key),
            "--",
            "sh",
            "-c",
            &touch,
        ])
        .finish()
        .await;
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert!(out.stderr.contains("gave up after 300ms"), "{out:?}");
        assert!(!marker.exists(), "the command ran without the lock");
        // The server's wait ended with pglock's session, and issued no token.
        support::eventually(Duration::from_secs(3), "the wait ended", || async {
            support::waiters(key).await.is_empty()
        })
        .await;
        assert_eq!(current_token(&pool, key).await, before);
        held.close().await.expect("close");
    });
}

#[test]
fn fenced_without_the_fencing_table_says_to_run_pglock_migrate() {
    rt::run(async {
        // A session whose search_path finds no pglock_fencing_tokens: the table is missing
        // as far as it can tell, without dropping it from the shared test database.
        let url = support::database_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{separator}options=-c%20search_path%3Dpglock_tests_no_such_schema");
        let key = support::key("cli/fenced_without_the_fencing_table");
        let dir = Scratch::new("fenced-missing");
        let marker = dir.path("ran");
        let touch = format!("touch {}", quoted(&marker));
        let out = pglock(&[
            "--database-url",
            &url,
            "run",
            "--fenced",
            &arg(key),
            "--",
            "sh",
            "-c",
            &touch,
        ])
        .finish()
        .await;
        assert_eq!(out.code(), Some(2), "{out:?}");
        assert!(!marker.exists(), "the command ran");
        let line = out.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains("pglock_fencing_tokens"), "{line}");
        assert!(line.contains("`pglock migrate`"), "{line}");
        assert_free(key).await;

        // --fenced is exclusive only.
        let out = pglock(&["run", "--fenced", "--shared", &arg(key), "--", "true"])
            .finish()
            .await;
        assert_eq!(out.code(), Some(2), "{out:?}");
    });
}

#[test]
fn migrate_creates_the_fencing_table_and_can_run_again() {
    rt::run(async {
        for _ in 0..2 {
            let out = pglock(&["migrate"]).finish().await;
            assert_eq!(out.code(), Some(0), "{out:?}");
            assert!(out.stdout.contains("pglock_fencing_tokens"), "{out:?}");
        }
        let pool = support::pool().await;
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('pglock_fencing_tokens')::text")
                .fetch_one(&pool)
                .await
                .expect("to_regclass");
        assert_eq!(table.as_deref(), Some("pglock_fencing_tokens"));
    });
}

// ---------------------------------------------------------------------------------------
// status --json

/// `pglock status --json <key>`, each line parsed as a JSON object.
async fn status_json(key: LockKey) -> Vec<serde_json::Value> {
    let out = pglock(&["status", "--json", &arg(key)]).finish().await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    out.stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect()
}

/// Asserts that a duration in ms from `status --json` lies between what two looks with
/// the library, just before and just after, saw.
fn assert_ms_between(
    what: &str,
    json: &serde_json::Value,
    before: Option<Duration>,
    after: Option<Duration>,
) {
    match (before, after) {
        (Some(before), Some(after)) => {
            let ms = json.as_u64().unwrap_or_else(|| panic!("{what}: {json}"));
            let (low, high) = (before.as_millis(), after.as_millis());
            assert!(
                (low..=high).contains(&u128::from(ms)),
                "{what}: {ms} ms not within {low}..={high}"
            );
        }
        _ => assert!(json.is_null(), "{what}: {json}"),
    }
}

#[test]
fn status_json_matches_inspect_for_a_holder_and_a_waiter() {
    rt::run(async {
        let key = support::key("cli/status_json_matches_inspect");
        let pool = support::pool().await;
        assert!(status_json(key).await.is_empty(), "rows for a free key");

        let mut held = hold(&pool, key).await;
        let mut waiting = pglock(&["run", &arg(key), "--", "true"]);
        support::eventually(WAIT, "pglock waits", || async {
            !support::waiters(key).await.is_empty()
        })
        .await;
        let before = pglock::inspect::locks_on(&pool, key)
            .await
            .expect("inspect");
        let rows = status_json(key).await;
        let after = pglock::inspect::locks_on(&pool, key)
            .await
            .expect("inspect");

        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(before.len(), 2, "{before:?}");
        let (classid, objid, _) = key.pg_locks_ids();
        for ((row, before), after) in rows.iter().zip(&before).zip(&after) {
            assert_eq!(row["key"], arg(key), "{row}");
            assert_eq!(row["key_space"], "bigint", "{row}");
            assert_eq!(row["classid"], classid, "{row}");
            assert_eq!(row["objid"], objid, "{row}");
            assert_eq!(row["mode"], before.mode.to_string(), "{row}");
            assert_eq!(row["granted"], before.granted, "{row}");
            assert_eq!(row["pid"], before.pid, "{row}");
            assert_eq!(
                row["application_name"],
                serde_json::json!(before.application_name)
            );
            assert_eq!(row["client_addr"], serde_json::json!(before.client_addr));
            let waited =
                |info: &pglock::inspect::LockInfo| info.waiting_for.filter(|_| !info.granted);
            assert_ms_between(
                "waiting_ms",
                &row["waiting_ms"],
                waited(before),
                waited(after),
            );
            assert_ms_between(
                "query_age_ms",
                &row["query_age_ms"],
                before.query_age,
                after.query_age,
            );
        }
        // Holders first: the test's lock; then pglock, waiting.
        assert_eq!(rows[0]["granted"], true);
        assert_eq!(rows[0]["pid"], support::holders(key).await[0]);
        assert_eq!(rows[1]["granted"], false);
        assert_eq!(rows[1]["application_name"], "pglock-cli");
        assert!(rows[1]["waiting_ms"].is_u64(), "{}", rows[1]);

        held.unlock().await.expect("unlock");
        assert_eq!(waiting.finish().await.code(), Some(0));
        held.close().await.expect("close");

        // An int-pair key, negative half and all.
        let pair = support::pair_key("cli/status_json_matches_inspect");
        let mut held = hold(&pool, pair).await;
        let rows = status_json(pair).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        let (classid, objid, _) = pair.pg_locks_ids();
        assert_eq!(rows[0]["key"], arg(pair));
        assert_eq!(rows[0]["key_space"], "int_pair");
        assert_eq!(
            (&rows[0]["classid"], &rows[0]["objid"]),
            (&classid.into(), &objid.into())
        );
        held.close().await.expect("close");
    });
}

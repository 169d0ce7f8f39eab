//! The `pglock` binary, run as real processes against PostgreSQL: mutual exclusion between
//! two runs, conflicts, timeouts, exit statuses, signals, a killed pglock, `status` and
//! `hash`. Only with the `cli` feature (`cargo test --features cli --test cli`), which is
//! what builds the binary.
#![cfg(feature = "cli")]

mod support;

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
        let dir = std::env::temp_dir().join(format!(
            "pglock-cli-{test}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
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
        assert!(lines[1].contains("pglock"), "{}", lines[1]);

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

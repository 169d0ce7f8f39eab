//! The examples, run as real processes against the test database: four replicas migrating
//! one database at once, leader failover after a SIGKILL, and every other example exiting
//! 0 (the async-std and smol ones when their feature is on).
//!
//! Each test builds the example it starts (`cargo build --example <name>`, with this run's
//! features and profile) before starting it: `cargo test --test examples` alone does not
//! build examples, and an old binary left in `target/` would test old code. When the whole
//! suite runs (`cargo test`) the examples are already built and that build is a no-op.

use crate::support;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// How long a short example may run before the test kills it and fails.
const EXAMPLE_LIMIT: Duration = Duration::from_secs(60);

/// Examples that lock the same key ("mylock") must not run at the same time.
static MYLOCK_EXAMPLES: Mutex<()> = Mutex::new(());

#[test]
fn migrations_example_applies_each_migration_once_across_4_processes() {
    let bin = support::examples::example("run_migrations_once");
    let migrations = migration_versions();
    assert!(!migrations.is_empty(), "migrations/ has no migration files");

    // A database of its own, on the test server.
    let database = support::unique_table("pglock_mig");
    let url = support::url_for_database(&database);
    {
        let database = database.clone();
        support::rt::run(async move {
            let mut conn = support::connect().await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
                .execute(&mut conn)
                .await
                .expect("create the test database");
            let _ = conn.close().await;
        });
    }

    // Four replicas start at once; wait for all of them (bounded), then look at the database.
    let mut fleet = Fleet::start(&bin, &[], &url, 4);
    let statuses = fleet.wait_all(EXAMPLE_LIMIT);
    fleet.drain(Duration::from_secs(5));

    let (tx, rx) = mpsc::channel();
    {
        let (url, database) = (url.clone(), database.clone());
        support::rt::run(async move {
            let mut conn = support::connect_at(&url).await;
            let recorded: Vec<(i64, bool)> =
                sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
            let table_comment: Option<String> = sqlx::query_scalar(
                "SELECT obj_description(to_regclass('pglock_fencing_tokens'), 'pg_class')",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap_or(None);
            let table_exists: bool =
                sqlx::query_scalar("SELECT to_regclass('pglock_fencing_tokens') IS NOT NULL")
                    .fetch_one(&mut conn)
                    .await
                    .expect("look for pglock_fencing_tokens");
            let _ = conn.close().await;
            support::drop_database(&database).await;
            tx.send((recorded, table_exists, table_comment))
                .expect("send the findings");
        });
    }
    let (recorded, table_exists, table_comment) = rx.recv().expect("the findings");

    for (i, status) in statuses.iter().enumerate() {
        assert!(
            status.is_some_and(|s| s.success()),
            "replica {i} did not exit 0 within {EXAMPLE_LIMIT:?} ({status:?}):\n{}",
            fleet.describe()
        );
    }
    let applied: Vec<usize> =
        (0..4)
            .map(|i| {
                applied_count(&fleet.stdout[i]).unwrap_or_else(|| panic!(
            "replica {i} printed no \"applied N migration(s)\" / \"0 to apply\" line:\n{}",
            fleet.describe()
        ))
            })
            .collect();
    let appliers: Vec<usize> = (0..4).filter(|&i| applied[i] > 0).collect();
    eprintln!(
        "run_migrations_once x4: applied counts {applied:?}; output:\n{}",
        fleet.describe()
    );
    assert_eq!(
        applied.iter().sum::<usize>(),
        migrations.len(),
        "the replicas applied {applied:?} migrations between them, not one each of {}:\n{}",
        migrations.len(),
        fleet.describe()
    );
    assert_eq!(
        appliers.len(),
        1,
        "exactly one replica must apply migrations:\n{}",
        fleet.describe()
    );
    let versions: Vec<i64> = recorded.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions, migrations,
        "_sqlx_migrations: one row per migration"
    );
    assert!(
        recorded.iter().all(|(_, success)| *success),
        "every migration succeeded: {recorded:?}"
    );
    assert!(table_exists, "the migrations created pglock_fencing_tokens");
    assert!(
        table_comment.is_some_and(|c| c.contains("fencing")),
        "the second migration commented the table"
    );
}

#[test]
fn leader_example_fails_over_within_3_s_of_killing_the_leader() {
    let bin = support::examples::example("leader");
    // A lock name of our own, so no other leader process on the server joins the election.
    let name = format!("pglock-tests/leader/{}", std::process::id());
    let mut fleet = Fleet::start(&bin, &["--name", &name], &support::database_url(), 3);
    let pids: Vec<String> = fleet.children.iter().map(|c| c.id().to_string()).collect();

    // Wait (bounded) until one leads and works, and the other two are queued behind it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let queued = |fleet: &Fleet| {
        let mut procs: Vec<usize> = fleet
            .lines_starting("follower ")
            .into_iter()
            .map(|(proc, _)| proc)
            .collect();
        procs.dedup();
        procs.len() == 3 && !fleet.lines_starting("heartbeat ").is_empty()
    };
    while !queued(&fleet) {
        if fleet.next_line(deadline).is_none() {
            panic!(
                "no leader with two waiting followers within 20 s:\n{}",
                fleet.describe()
            );
        }
    }
    fleet.collect_for(Duration::from_millis(500));
    let leaders = fleet.lines_starting("leader ");
    assert_eq!(
        leaders.len(),
        1,
        "exactly one process leads:\n{}",
        fleet.describe()
    );
    let (leader, line) = leaders[0].clone();
    assert_eq!(
        line,
        format!("leader {}", pids[leader]),
        "it names its own pid"
    );

    // SIGKILL the leader: it cannot unlock; the server frees the key when its session dies.
    let killed_at = Instant::now();
    fleet.children[leader].kill().expect("SIGKILL the leader");
    fleet.children[leader].wait().expect("reap the leader");
    let deadline = killed_at + Duration::from_secs(10);
    let (successor, failover) = loop {
        match fleet.next_line(deadline) {
            Some(line) if line.proc != leader && line.text.starts_with("leader ") => {
                break (line.proc, line.at.duration_since(killed_at));
            }
            Some(_) => {}
            None => panic!(
                "no process took over within 10 s of killing the leader:\n{}",
                fleet.describe()
            ),
        }
    };
    eprintln!(
        "leader: process {} (pid {}) took over {failover:?} after SIGKILL of pid {}",
        successor, pids[successor], pids[leader]
    );
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}:\n{}",
        fleet.describe()
    );

    // Exactly one successor, and it stays the leader.
    fleet.collect_for(Duration::from_millis(1000));
    let new_leaders: Vec<usize> = fleet
        .lines_starting("leader ")
        .into_iter()
        .map(|(proc, _)| proc)
        .filter(|&proc| proc != leader)
        .collect();
    assert_eq!(
        new_leaders,
        vec![successor],
        "one new leader:\n{}",
        fleet.describe()
    );
    assert!(
        fleet.lines_starting("lost leadership").is_empty(),
        "nobody lost a lock:\n{}",
        fleet.describe()
    );

    // Stop everyone; no process is left behind.
    fleet.stop();
    for (i, child) in fleet.children.iter_mut().enumerate() {
        assert!(
            child.try_wait().expect("try_wait").is_some(),
            "process {i} still runs"
        );
    }
}

#[test]
fn quickstart_example_exits_0() {
    run_example("quickstart", "closed both locks");
}

#[test]
fn many_locks_example_exits_0() {
    run_example("many_locks", "released all 1000");
}

#[test]
fn swap_in_tests_example_exits_0() {
    run_example("swap_in_tests", "PostgreSQL:");
}

#[cfg(feature = "runtime-async-std")]
#[test]
fn async_std_example_exits_0() {
    run_example("async_std", "closed both locks, on async-std");
}

#[cfg(feature = "runtime-smol")]
#[test]
fn smol_example_exits_0() {
    run_example("smol", "closed both locks, on smol");
}

/// Runs one example to the end (bounded) against the test database and checks that it
/// exits 0 having printed `expect`.
fn run_example(name: &str, expect: &str) {
    let bin = support::examples::example(name);
    let _serial = MYLOCK_EXAMPLES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut fleet = Fleet::start(&bin, &[], &support::database_url(), 1);
    let status = fleet.wait_all(EXAMPLE_LIMIT)[0];
    fleet.drain(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "{name} did not exit 0 within {EXAMPLE_LIMIT:?} ({status:?}):\n{}",
        fleet.describe()
    );
    assert!(
        fleet.stdout[0].iter().any(|line| line.contains(expect)),
        "{name} did not print {expect:?}:\n{}",
        fleet.describe()
    );
}

/// The versions of the migration files in `migrations/`, in order.
fn migration_versions() -> Vec<i64> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut versions: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
        .map(|entry| entry.expect("read migrations/").file_name())
        .filter_map(|name| {
            let name = name.to_str()?.to_owned();
            let stem = name.strip_suffix(".sql")?;
            stem.split_once('_')?.0.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    versions
}

/// What a `run_migrations_once` replica says it applied: `N` from "applied N migration(s)",
/// 0 from "..., 0 to apply".
fn applied_count(stdout: &[String]) -> Option<usize> {
    stdout.iter().find_map(|line| {
        if let Some((_, rest)) = line.split_once(": applied ") {
            return rest.strip_suffix(" migration(s)")?.parse().ok();
        }
        line.ends_with(", 0 to apply").then_some(0)
    })
}

/// One line an example printed on stdout, and when the test read it.
#[derive(Debug, Clone)]
struct Line {
    proc: usize,
    text: String,
    at: Instant,
}

/// Example processes started together, their output read as it comes. Dropping it kills
/// and reaps every process, however the test ends.
struct Fleet {
    children: Vec<Child>,
    lines: Receiver<Line>,
    /// The stdout lines read so far, per process.
    stdout: Vec<Vec<String>>,
    /// Everything each process wrote to stderr.
    stderr: Vec<Arc<Mutex<String>>>,
}

impl Fleet {
    /// Starts `n` copies of `bin args...` with `DATABASE_URL=url`.
    fn start(bin: &Path, args: &[&str], url: &str, n: usize) -> Fleet {
        let (tx, lines) = mpsc::channel();
        let mut fleet = Fleet {
            children: Vec::new(),
            lines,
            stdout: vec![Vec::new(); n],
            stderr: Vec::new(),
        };
        for proc in 0..n {
            let mut child = Command::new(bin)
                .args(args)
                .env("DATABASE_URL", url)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|err| panic!("start {}: {err}", bin.display()));
            let stdout = child.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let at = Instant::now();
                    if tx.send(Line { proc, text, at }).is_err() {
                        break;
                    }
                }
            });
            let mut stderr = child.stderr.take().expect("piped stderr");
            let collected = Arc::new(Mutex::new(String::new()));
            let sink = Arc::clone(&collected);
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                sink.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push_str(&text);
            });
            fleet.children.push(child);
            fleet.stderr.push(collected);
        }
        fleet
    }

    /// The next stdout line of any process, waiting until `deadline` at most.
    fn next_line(&mut self, deadline: Instant) -> Option<Line> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.stdout[line.proc].push(line.text.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Reads lines for `period`.
    fn collect_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            self.next_line(deadline);
        }
    }

    /// Reads the lines left once the processes have exited (their pipes close), for
    /// `limit` at most.
    fn drain(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(line) => self.stdout[line.proc].push(line.text),
                Err(_) => break,
            }
        }
    }

    /// `(process, line)` for every line read so far that starts with `prefix`.
    fn lines_starting(&self, prefix: &str) -> Vec<(usize, String)> {
        self.stdout
            .iter()
            .enumerate()
            .flat_map(|(proc, lines)| {
                lines
                    .iter()
                    .filter(|line| line.starts_with(prefix))
                    .map(move |line| (proc, line.clone()))
            })
            .collect()
    }

    /// Waits for every process to exit, `limit` at most: each one's status, `None` for
    /// those still running then (which are killed).
    fn wait_all(&mut self, limit: Duration) -> Vec<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        let mut statuses = vec![None; self.children.len()];
        loop {
            for (child, status) in self.children.iter_mut().zip(statuses.iter_mut()) {
                if status.is_none() {
                    *status = child.try_wait().expect("try_wait");
                }
            }
            if statuses.iter().all(Option::is_some) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        statuses
    }

    /// Kills (SIGKILL) and reaps every process still running.
    fn stop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Every process's output so far, for failure messages.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (proc, child) in self.children.iter().enumerate() {
            out.push_str(&format!(
                "--- process {proc} (pid {}) stdout:\n",
                child.id()
            ));
            for line in &self.stdout[proc] {
                out.push_str(line);
                out.push('\n');
            }
            let stderr = self.stderr[proc]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !stderr.is_empty() {
                out.push_str(&format!("--- process {proc} stderr:\n{stderr}"));
            }
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Mutual exclusion under load, across OS processes: the test re-runs its own binary as
//! child processes (same runtime features, so the children run on the runtime under
//! test), each with many tasks taking locks on a few shared keys.
//!
//! Exclusive: 4 processes × 16 tasks run `PGLOCK_STRESS_SECTIONS` critical sections in all
//! over 8 keys. Each section takes the key's exclusive lock, reads the key's counter,
//! sleeps about 1 ms, writes counter + 1, and logs when it entered and left by the
//! server's clock (`clock_timestamp()`, read after the grant and before the release).
//! Afterwards every counter equals its key's number of sections (no lost update), and no
//! two logged intervals on one key overlap.
//!
//! Size: 5,000 sections by default, for CI (about 7 s on a 2-core machine).
//! `PGLOCK_STRESS_SECTIONS=50000` is the full-size run (about 50 s there); each child is
//! bounded by the harness's 120 s test limit, so stay under ~100,000.
//!
//! Shared: 4 processes × 4 tasks × 10 sections on one key, holding shared levels ~20 ms
//! with every fifth section exclusive: shared holders really overlap, and no interval of
//! an exclusive holder overlaps any other.
//!
//! Each runs twice: with an `AdvisoryLock` per task (a session each), and with a
//! `LockClient` per process (its tasks' locks share 4 lanes; conflicts between them are
//! decided in the process, waits run on sessions of their own). A client child also
//! checks, before it exits, that none of its sessions holds a key once its locks are
//! closed: nothing is stranded (its exit would hide that).

use crate::support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, ClientOptions, DistributedLock, LockClient, LockKey, LockOptions};
use sqlx::PgPool;
use support::XorShift;
use support::rt;

/// The database of the stress runs: a private cluster of this test binary's own, even
/// when `DATABASE_URL` names a shared server. 4 processes × (17 + 9) connections, twice
/// over when both tests run at once, is more than a default server's 100 connections.
fn stress_database_url() -> String {
    static CLUSTER: std::sync::OnceLock<support::cluster::PrivateCluster> =
        std::sync::OnceLock::new();
    CLUSTER
        .get_or_init(|| support::cluster::PrivateCluster::start(&[]))
        .url()
}

/// The child test's name within this binary (`stress::stress_child_process`): what the
/// parent runs in each child process.
fn child_test() -> String {
    support::test_name(module_path!(), "stress_child_process")
}
/// How long the parent waits for its children before it kills them and fails.
const CHILD_LIMIT: Duration = Duration::from_secs(110);

const PROCESSES: usize = 4;
const TASKS: usize = 16;
const KEYS: usize = 8;
const DEFAULT_SECTIONS: usize = 5_000;

/// The size of a run, as the parent hands it to its children (all through env vars).
#[derive(Debug, Clone)]
struct Params {
    /// Names the run's keys; unique per parent test.
    run: String,
    counters: String,
    log: String,
    processes: usize,
    tasks: usize,
    keys: usize,
    /// Sections in all, over every process and task.
    sections: usize,
    hold: Duration,
    /// 0: every section exclusive; n: every n-th section of a task exclusive, the rest shared.
    exclusive_every: usize,
    /// The children's locks come from one `LockClient` per process, not a session each.
    client: bool,
}

impl Params {
    fn to_env(&self, cmd: &mut Command, process: usize) {
        cmd.env("PGLOCK_STRESS_CHILD", process.to_string())
            .env("PGLOCK_STRESS_RUN", &self.run)
            .env("PGLOCK_STRESS_COUNTERS", &self.counters)
            .env("PGLOCK_STRESS_LOG", &self.log)
            .env("PGLOCK_STRESS_PROCESSES", self.processes.to_string())
            .env("PGLOCK_STRESS_TASKS", self.tasks.to_string())
            .env("PGLOCK_STRESS_KEYS", self.keys.to_string())
            .env("PGLOCK_STRESS_TOTAL", self.sections.to_string())
            .env("PGLOCK_STRESS_HOLD_US", self.hold.as_micros().to_string())
            .env(
                "PGLOCK_STRESS_EXCLUSIVE_EVERY",
                self.exclusive_every.to_string(),
            )
            .env("PGLOCK_STRESS_CLIENT", if self.client { "1" } else { "0" });
    }

    /// The parameters in a child, or `None` when this process is not one.
    fn from_env() -> Option<(Params, usize)> {
        let var = |name: &str| std::env::var(name).ok();
        let num = |name: &str| -> usize {
            var(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} is not set to a number"))
        };
        let process = var("PGLOCK_STRESS_CHILD")?.parse().ok()?;
        Some((
            Params {
                run: var("PGLOCK_STRESS_RUN")?,
                counters: var("PGLOCK_STRESS_COUNTERS")?,
                log: var("PGLOCK_STRESS_LOG")?,
                processes: num("PGLOCK_STRESS_PROCESSES"),
                tasks: num("PGLOCK_STRESS_TASKS"),
                keys: num("PGLOCK_STRESS_KEYS"),
                sections: num("PGLOCK_STRESS_TOTAL"),
                hold: Duration::from_micros(num("PGLOCK_STRESS_HOLD_US") as u64),
                exclusive_every: num("PGLOCK_STRESS_EXCLUSIVE_EVERY"),
                client: num("PGLOCK_STRESS_CLIENT") == 1,
            },
            process,
        ))
    }

    fn key(&self, k: usize) -> LockKey {
        LockKey::from_name(&format!("pglock-tests/stress/{}/{k}", self.run))
    }

    /// Which sections are exclusive.
    fn is_exclusive(&self, section: usize) -> bool {
        self.exclusive_every == 0 || (section + 1).is_multiple_of(self.exclusive_every)
    }

    /// The keys, in order, of the sections task `task` of process `process` runs: its
    /// share of the total, sticking to a key for a while (the lock is reused) and then
    /// moving to a random one (the lock is closed and a new one made).
    fn plan(&self, process: usize, task: usize) -> Vec<usize> {
        let per_process = share(self.sections, self.processes, process);
        let n = share(per_process, self.tasks, task);
        let mut rng = XorShift::new(0x5eed_0000 + (process * 1000 + task) as u64);
        let mut key = (process * self.tasks + task) % self.keys;
        (0..n)
            .map(|_| {
                if rng.below(4) == 0 {
                    key = rng.below(self.keys as u64) as usize;
                }
                key
            })
            .collect()
    }

    /// Sections per key over the whole run, and exclusive sections in all.
    fn expected(&self) -> (Vec<i64>, i64) {
        let mut per_key = vec![0i64; self.keys];
        let mut exclusive = 0;
        for process in 0..self.processes {
            for task in 0..self.tasks {
                for (i, k) in self.plan(process, task).into_iter().enumerate() {
                    per_key[k] += 1;
                    exclusive += i64::from(self.is_exclusive(i));
                }
            }
        }
        (per_key, exclusive)
    }
}

/// SQL naming the run's own tables (made by [`support::unique_table`], never input).
fn safe(sql: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.to_owned())
}

/// Part `i` of `total` split into `parts` nearly equal parts.
fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

fn sections_from_env() -> usize {
    std::env::var("PGLOCK_STRESS_SECTIONS")
        .ok()
        .map(|v| v.parse().expect("PGLOCK_STRESS_SECTIONS is a number"))
        .unwrap_or(DEFAULT_SECTIONS)
}

// ---------------------------------------------------------------------------------------
// The child: one process's tasks.

/// Run by the parent tests in child processes; does nothing when run by hand.
#[test]
#[ignore = "a child process of the stress tests, which run it themselves"]
fn stress_child_process() {
    let Some((params, process)) = Params::from_env() else {
        println!("not a stress child (PGLOCK_STRESS_CHILD unset): nothing to do");
        return;
    };
    rt::run(async move {
        let started = Instant::now();
        let params = Arc::new(params);
        // One connection per task for its lock (a client: its lanes, and a session per
        // task that waits), and one spare.
        let lock_pool =
            support::pool_with(params.tasks as u32 + 1 + 4 * u32::from(params.client)).await;
        let data_pool = support::pool_with(params.keys.min(params.tasks) as u32 + 1).await;
        let client_name = format!("pglock-stress-{}-{process}", params.run);
        // The client's driver runs for as long as its handle is kept (dropping it would
        // cancel the task on smol).
        let (locks, driver) = match params.client {
            true => {
                let client = LockClient::with_options(
                    &lock_pool,
                    ClientOptions::new()
                        .max_sessions(4)
                        .lock_options(LockOptions::new().application_name(&client_name)),
                );
                let driver = rt::spawn(client.driver());
                (Locks::Client(client), Some(driver))
            }
            false => (Locks::Sessions(lock_pool.clone()), None),
        };
        let mut tasks = Vec::new();
        for task in 0..params.tasks {
            let (params, locks, data_pool) = (params.clone(), locks.clone(), data_pool.clone());
            tasks.push(rt::spawn(async move {
                run_task(&params, process, task, &locks, &data_pool).await
            }));
        }
        let mut sections = 0;
        let mut max_wait = Duration::ZERO;
        for task in tasks {
            let (n, wait) = task.await;
            sections += n;
            max_wait = max_wait.max(wait);
        }
        if let Locks::Client(client) = &locks {
            // Every lock is closed: none of the client's sessions may hold a key now.
            let stranded = support::eventually(
                Duration::from_secs(2),
                "the client's sessions hold no key once its locks are closed",
                || async { !holds_any(&client_name).await },
            )
            .await;
            println!(
                "stress child {process}: client sessions {} at the end, keys free after {stranded:?}",
                client.sessions()
            );
        }
        drop(locks);
        drop(driver);
        lock_pool.close().await;
        data_pool.close().await;
        println!(
            "stress child {process} (pid {}, {}): {sections} sections by {} tasks in {:?}; \
             longest wait for a lock {max_wait:?}",
            std::process::id(),
            rt::NAME,
            params.tasks,
            started.elapsed()
        );
    });
}

/// Where a child's locks come from.
#[derive(Clone)]
enum Locks {
    /// `AdvisoryLock::new`: a session of its own each.
    Sessions(PgPool),
    /// One client for the process.
    Client(LockClient),
}

impl Locks {
    async fn lock(&self, key: LockKey) -> Box<dyn DistributedLock> {
        match self {
            Locks::Sessions(pool) => Box::new(
                AdvisoryLock::new(pool, key)
                    .await
                    .expect("AdvisoryLock::new"),
            ),
            Locks::Client(client) => Box::new(client.lock(key)),
        }
    }
}

/// Whether a session named `application_name` holds an advisory lock (any key).
async fn holds_any(application_name: &str) -> bool {
    let mut conn = support::connect().await;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND a.application_name = $1",
    )
    .bind(application_name)
    .fetch_one(&mut conn)
    .await
    .expect("query pg_locks");
    n > 0
}

/// One task's sections; returns how many it ran and its longest wait for a lock.
async fn run_task(
    params: &Params,
    process: usize,
    task: usize,
    locks: &Locks,
    data_pool: &PgPool,
) -> (usize, Duration) {
    let plan = params.plan(process, task);
    let read = format!(
        "SELECT n, clock_timestamp()::text FROM {} WHERE key = $1",
        params.counters
    );
    let write = format!(
        "WITH bump AS (UPDATE {} SET n = $2 WHERE key = $1) \
         INSERT INTO {} (key, pid, task, exclusive, enter, exit) \
         VALUES ($1, $3, $4, $5, $6::timestamptz, clock_timestamp())",
        params.counters, params.log
    );
    let log_shared = format!(
        "INSERT INTO {} (key, pid, task, exclusive, enter, exit) \
         VALUES ($1, $2, $3, false, $4::timestamptz, clock_timestamp())",
        params.log
    );
    let pid = std::process::id() as i32;
    let mut lock: Option<(usize, Box<dyn DistributedLock>)> = None;
    let mut max_wait = Duration::ZERO;
    for (i, &k) in plan.iter().enumerate() {
        if lock.as_ref().is_none_or(|(held_key, _)| *held_key != k) {
            if let Some((_, mut old)) = lock.take() {
                old.close().await.expect("close a lock between keys");
            }
            lock = Some((k, locks.lock(params.key(k)).await));
        }
        let (_, l) = lock.as_mut().expect("a lock for the key");
        let exclusive = params.is_exclusive(i);
        let asked = Instant::now();
        if exclusive {
            l.lock().await.expect("lock");
        } else {
            l.lock_shared().await.expect("lock_shared");
        }
        max_wait = max_wait.max(asked.elapsed());

        let (n, enter): (i64, String) = sqlx::query_as(safe(&read))
            .bind(k as i32)
            .fetch_one(data_pool)
            .await
            .expect("read the counter");
        rt::sleep(params.hold).await;
        if exclusive {
            sqlx::query(safe(&write))
                .bind(k as i32)
                .bind(n + 1)
                .bind(pid)
                .bind(task as i32)
                .bind(true)
                .bind(enter)
                .execute(data_pool)
                .await
                .expect("write the counter and the log");
            l.unlock().await.expect("unlock");
        } else {
            sqlx::query(safe(&log_shared))
                .bind(k as i32)
                .bind(pid)
                .bind(task as i32)
                .bind(enter)
                .execute(data_pool)
                .await
                .expect("log the shared section");
            l.unlock_shared().await.expect("unlock_shared");
        }
    }
    if let Some((_, mut last)) = lock.take() {
        last.close().await.expect("close the last lock");
    }
    (plan.len(), max_wait)
}

// ---------------------------------------------------------------------------------------
// The parent: tables, children, verdict.

/// Creates the run's tables, with a zero counter per key.
async fn create_tables(pool: &PgPool, params: &Params) {
    sqlx::query(safe(&format!(
        "CREATE TABLE {} (key int PRIMARY KEY, n bigint NOT NULL)",
        params.counters
    )))
    .execute(pool)
    .await
    .expect("create the counters table");
    sqlx::query(safe(&format!(
        "INSERT INTO {} SELECT k, 0 FROM generate_series(0, $1 - 1) AS k",
        params.counters
    )))
    .bind(params.keys as i32)
    .execute(pool)
    .await
    .expect("zero the counters");
    sqlx::query(safe(&format!(
        "CREATE TABLE {} (id bigserial PRIMARY KEY, key int NOT NULL, pid int NOT NULL, \
         task int NOT NULL, exclusive bool NOT NULL, enter timestamptz NOT NULL, \
         exit timestamptz NOT NULL)",
        params.log
    )))
    .execute(pool)
    .await
    .expect("create the log table");
    // For the overlap self-join: the intervals starting inside one, by index range.
    sqlx::query(safe(&format!(
        "CREATE INDEX ON {} (key, enter)",
        params.log
    )))
    .execute(pool)
    .await
    .expect("index the log");
}

async fn drop_tables(pool: &PgPool, params: &Params) {
    for table in [&params.counters, &params.log] {
        sqlx::query(safe(&format!("DROP TABLE IF EXISTS {table}")))
            .execute(pool)
            .await
            .expect("drop a stress table");
    }
}

/// Drops the run's tables even when the test fails half-way.
struct Tables(Option<Params>);

impl Drop for Tables {
    fn drop(&mut self) {
        if let Some(params) = self.0.take() {
            let cleanup = std::panic::catch_unwind(|| {
                rt::run(async move {
                    let pool = support::pool_at(&stress_database_url(), 1).await;
                    drop_tables(&pool, &params).await;
                    pool.close().await;
                })
            });
            if cleanup.is_err() {
                eprintln!("could not drop the stress tables");
            }
        }
    }
}

/// Runs the children and waits for all of them; panics with their output if any failed
/// or they did not finish within [`CHILD_LIMIT`].
fn run_children(params: &Params) -> Vec<String> {
    let exe = std::env::current_exe().expect("this test binary's path");
    let dir = std::env::temp_dir().join(format!("{}-out", params.log));
    std::fs::create_dir_all(&dir).expect("a directory for the children's output");
    let mut children: Vec<(Child, PathBuf)> = Vec::new();
    for process in 0..params.processes {
        let out_path = dir.join(format!("child-{process}.out"));
        // Appending, so stdout and stderr (two descriptors) interleave, not overwrite.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .expect("a file for a child's output");
        let err = out.try_clone().expect("the same file for stderr");
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--exact",
            child_test().as_str(),
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DATABASE_URL", stress_database_url())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        params.to_env(&mut cmd, process);
        children.push((cmd.spawn().expect("start a child process"), out_path));
    }
    let deadline = Instant::now() + CHILD_LIMIT;
    let mut statuses = vec![None; children.len()];
    while statuses.iter().any(Option::is_none) && Instant::now() < deadline {
        for (status, (child, _)) in statuses.iter_mut().zip(children.iter_mut()) {
            if status.is_none() {
                *status = child.try_wait().expect("poll a child");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let timed_out = statuses.iter().any(Option::is_none);
    for (status, (child, _)) in statuses.iter().zip(children.iter_mut()) {
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let outputs: Vec<String> = children
        .iter()
        .map(|(_, path)| std::fs::read_to_string(path).unwrap_or_default())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let failed: Vec<String> = statuses
        .iter()
        .zip(&outputs)
        .enumerate()
        .filter(|(_, (status, _))| !status.is_some_and(|s| s.success()))
        .map(|(i, (status, out))| format!("--- child {i}: {status:?}\n{out}"))
        .collect();
    assert!(
        failed.is_empty() && !timed_out,
        "stress children failed{}:\n{}",
        if timed_out {
            format!(" (some did not finish within {CHILD_LIMIT:?})")
        } else {
            String::new()
        },
        failed.join("\n")
    );
    outputs
        .iter()
        .flat_map(|out| out.lines())
        .filter_map(|line| line.find("stress child").map(|at| line[at..].to_owned()))
        .collect()
}

/// Pairs of logged intervals on one key that overlap (strictly: touching is not
/// overlapping), counted by the server; `filter` narrows the pairs (SQL on `a` and `b`).
///
/// A self-join: `a` is the pair's interval that starts first (ties broken by id), so
/// each pair counts once, and `b` must start inside `a`; the explicit `b.enter >= a.enter`
/// lets the server find the `b`s by an index range instead of comparing every pair.
async fn overlaps(pool: &PgPool, params: &Params, filter: &str) -> i64 {
    sqlx::query_scalar(safe(&format!(
        "SELECT count(*) FROM {log} a JOIN {log} b ON a.key = b.key \
         AND b.enter >= a.enter AND (a.enter, a.id) < (b.enter, b.id) \
         AND b.enter < a.exit AND a.enter < b.exit WHERE {filter}",
        log = params.log
    )))
    .fetch_one(pool)
    .await
    .expect("count overlapping intervals")
}

/// [`overlaps`] the plain way, comparing every pair: the check on the fast query, for
/// small logs.
async fn overlaps_by_every_pair(pool: &PgPool, params: &Params, filter: &str) -> i64 {
    sqlx::query_scalar(safe(&format!(
        "SELECT count(*) FROM {log} a JOIN {log} b ON a.key = b.key AND a.id < b.id \
         AND a.enter < b.exit AND b.enter < a.exit WHERE {filter}",
        log = params.log
    )))
    .fetch_one(pool)
    .await
    .expect("count overlapping intervals pair by pair")
}

fn new_params(prefix: &str) -> Params {
    let counters = support::unique_table(&format!("pglock_{prefix}_counters"));
    let log = support::unique_table(&format!("pglock_{prefix}_log"));
    Params {
        run: log.clone(),
        counters,
        log,
        processes: PROCESSES,
        tasks: TASKS,
        keys: KEYS,
        sections: sections_from_env(),
        hold: Duration::from_millis(1),
        exclusive_every: 0,
        client: false,
    }
}

#[test]
fn exclusive_sections_never_overlap_across_processes() {
    exclusive_sections(new_params("stress_x"));
}

#[test]
fn exclusive_sections_never_overlap_across_processes_through_lock_clients() {
    exclusive_sections(Params {
        client: true,
        ..new_params("stress_cx")
    });
}

#[test]
fn shared_sections_overlap_and_exclusive_ones_never_do() {
    shared_sections(new_params("stress_s"));
}

#[test]
fn shared_sections_overlap_and_exclusive_ones_never_do_through_lock_clients() {
    shared_sections(Params {
        client: true,
        ..new_params("stress_cs")
    });
}

/// What the locks are, for the report.
fn kind(params: &Params) -> &'static str {
    match params.client {
        true => "LockClient per process",
        false => "AdvisoryLock per task",
    }
}

fn exclusive_sections(params: Params) {
    let started = Instant::now();
    {
        let params = params.clone();
        rt::run(async move {
            let pool = support::pool_at(&stress_database_url(), 2).await;
            create_tables(&pool, &params).await;
            pool.close().await;
        });
    }
    let _tables = Tables(Some(params.clone()));
    let children = run_children(&params);
    let ran = started.elapsed();
    let params2 = params.clone();
    rt::run(async move {
        let params = params2;
        let pool = support::pool_at(&stress_database_url(), 2).await;
        let (expected, _) = params.expected();
        let counters: Vec<(i32, i64)> = sqlx::query_as(safe(&format!(
            "SELECT key, n FROM {} ORDER BY key",
            params.counters
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        let logged: BTreeMap<i32, i64> = sqlx::query_as(safe(&format!(
            "SELECT key, count(*) FROM {} GROUP BY key",
            params.log
        )))
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        let total: i64 = counters.iter().map(|(_, n)| n).sum();
        assert_eq!(
            total, params.sections as i64,
            "the counters sum to the number of sections: {counters:?}"
        );
        for (key, n) in &counters {
            assert_eq!(
                *n, expected[*key as usize],
                "key {key}: counter {n}, sections {} (a lost update means two holders)",
                expected[*key as usize]
            );
            assert_eq!(
                logged.get(key).copied().unwrap_or(0),
                *n,
                "key {key}: log rows"
            );
        }
        let backwards: i64 = sqlx::query_scalar(safe(&format!(
            "SELECT count(*) FROM {} WHERE exit < enter",
            params.log
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(backwards, 0, "every section left after it entered");
        let found = overlaps(&pool, &params, "true").await;
        let processes: i64 = sqlx::query_scalar(safe(&format!(
            "SELECT count(DISTINCT pid) FROM {}",
            params.log
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        let span: f64 = sqlx::query_scalar(safe(&format!(
            "SELECT extract(epoch FROM max(exit) - min(enter))::float8 FROM {}",
            params.log
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        for line in &children {
            println!("{line}");
        }
        println!(
            "[{}] exclusive stress ({}): {} sections ({} processes × {} tasks, {} keys, per key {:?}) \
             in {ran:?} ({:.0} sections/s on the server clock over {span:.2} s); \
             overlapping intervals on one key: {found}",
            rt::NAME,
            kind(&params),
            params.sections,
            params.processes,
            params.tasks,
            params.keys,
            expected,
            params.sections as f64 / span.max(1e-9),
        );
        assert_eq!(
            processes, params.processes as i64,
            "every process ran sections"
        );
        assert_eq!(
            found, 0,
            "exclusive sections on one key overlapped {found} times"
        );
        pool.close().await;
    });
}

fn shared_sections(params: Params) {
    let params = Params {
        processes: 4,
        tasks: 4,
        keys: 1,
        sections: 4 * 4 * 10,
        hold: Duration::from_millis(20),
        exclusive_every: 5,
        ..params
    };
    {
        let params = params.clone();
        rt::run(async move {
            let pool = support::pool_at(&stress_database_url(), 2).await;
            create_tables(&pool, &params).await;
            pool.close().await;
        });
    }
    let _tables = Tables(Some(params.clone()));
    let children = run_children(&params);
    rt::run(async move {
        let pool = support::pool_at(&stress_database_url(), 2).await;
        let (_, exclusive) = params.expected();
        let rows: i64 = sqlx::query_scalar(safe(&format!("SELECT count(*) FROM {}", params.log)))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, params.sections as i64, "every section logged");
        let counter: i64 = sqlx::query_scalar(safe(&format!(
            "SELECT n FROM {} WHERE key = 0",
            params.counters
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            counter, exclusive,
            "the exclusive sections' counter (a lost update means an exclusive holder \
             had company)"
        );
        let shared_pairs = overlaps(&pool, &params, "NOT a.exclusive AND NOT b.exclusive").await;
        for filter in ["true", "NOT a.exclusive AND NOT b.exclusive"] {
            assert_eq!(
                overlaps(&pool, &params, filter).await,
                overlaps_by_every_pair(&pool, &params, filter).await,
                "the overlap query agrees with the pair-by-pair count ({filter})"
            );
        }
        let exclusive_pairs = overlaps(&pool, &params, "a.exclusive OR b.exclusive").await;
        let max_together: i64 = sqlx::query_scalar(safe(&format!(
            "SELECT max((SELECT count(*) FROM {log} b \
                         WHERE b.enter <= a.enter AND a.enter < b.exit)) FROM {log} a",
            log = params.log
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        for line in &children {
            println!("{line}");
        }
        println!(
            "[{}] shared stress ({}): {} sections ({} exclusive), {} processes × {} tasks on one key, \
             held {:?}: {shared_pairs} overlapping shared pairs, at most {max_together} holders \
             at once; pairs overlapping an exclusive section: {exclusive_pairs}",
            rt::NAME,
            kind(&params),
            params.sections,
            exclusive,
            params.processes,
            params.tasks,
            params.hold,
        );
        assert_eq!(
            exclusive_pairs, 0,
            "an exclusive section overlapped another section"
        );
        assert!(
            shared_pairs > 0,
            "shared sections never overlapped: shared locks were exclusive in effect"
        );
        pool.close().await;
    });
}

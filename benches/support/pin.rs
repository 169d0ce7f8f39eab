//! Pinning: the bench process and the server backends of its connections on one CPU.
//!
//! On a 2-core machine a round trip costs 20–100 µs depending on where the scheduler puts
//! the client and the backend that answers it (same CPU, other CPU, behind someone
//! else's work), and that choice is made per connection. Comparing contenders that run on
//! different connections (a lifecycle's pool connection, another library's pool) is only
//! fair with every party on the same CPU: the bench process (all its threads, so also
//! pglock's timer thread and the runtime's) and every backend that answers it.
//!
//! `taskset` does it (as root, or as the backends' owner). On the bench's own private
//! cluster the postmaster is pinned too, so that every backend it forks later inherits
//! the CPU; on someone else's server (`DATABASE_URL`) only our own backends are, one by
//! one, by `pg_backend_pid()`.

use std::process::{Command, Stdio};
use std::sync::Mutex;

use sqlx::PgConnection;
use sqlx::postgres::PgPool;

/// The CPU everything is pinned to: `PGLOCK_BENCH_CPU`, else the last one (1 on this
/// 2-core machine). Chosen once, before anything is pinned (afterwards this process
/// sees one CPU).
pub fn cpu() -> usize {
    placement().0
}

/// How many CPUs the machine has, counted before anything was pinned.
pub fn cpus() -> usize {
    placement().1
}

/// The CPU and the count, chosen once, before anything is pinned (afterwards this process
/// sees one CPU).
fn placement() -> (usize, usize) {
    static PLACEMENT: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *PLACEMENT.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = std::env::var("PGLOCK_BENCH_CPU")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(n - 1);
        (cpu, n)
    })
}

/// What was pinned, and what could not be.
struct State {
    pinned: Vec<u32>,
    failures: Vec<String>,
    server_tree: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    pinned: Vec::new(),
    failures: Vec::new(),
    server_tree: false,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// `taskset -a -pc CPU PID`: every thread of `pid` on the CPU.
fn taskset(pid: u32) -> Result<(), String> {
    taskset_to(pid, cpu())
}

/// `taskset -a -pc <to> PID`.
fn taskset_to(pid: u32, to: usize) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(["-a", "-pc", &to.to_string(), &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("taskset for pid {pid}: {err}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "taskset for pid {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// `PGLOCK_BENCH_NO_PIN=1`: pin nothing (to see what pinning changes; the output says so).
fn disabled() -> bool {
    std::env::var("PGLOCK_BENCH_NO_PIN").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn pin_pid(pid: u32) {
    if disabled() {
        return;
    }
    let mut state = state();
    if state.pinned.contains(&pid) {
        return;
    }
    match taskset(pid) {
        Ok(()) => {
            state.pinned.push(pid);
        }
        Err(err) => state.failures.push(err),
    }
}

/// Pins this process (every thread; threads made later inherit it). Call first thing.
pub fn pin_self() {
    pin_pid(std::process::id());
}

/// The parent pid of a local process, from `/proc` (`None`: not a local process).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Pins the postmaster of our own private cluster, found as the parent of `backend`,
/// and all its children: every backend forked from now on inherits the CPU. Only for a
/// server the bench started itself: never for a shared server.
pub fn pin_private_server(backend: i32) {
    if disabled() {
        return;
    }
    let Some(postmaster) = u32::try_from(backend).ok().and_then(parent_of) else {
        state()
            .failures
            .push(format!("backend {backend} is not a local process"));
        return;
    };
    pin_pid(postmaster);
    let children: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(postmaster))
        .collect();
    for pid in children {
        pin_pid(pid);
    }
    state().server_tree = true;
}

/// The CPU other than [`cpu`] that [`split`] puts the bench process on (the next one).
pub fn other_cpu() -> usize {
    (cpu() + 1) % cpus()
}

/// Client and server apart, as on two machines: the bench process (every thread) on
/// [`other_cpu`], the private cluster (postmaster and every backend, found as the
/// children of the parent of `backend`) on [`cpu`]. [`together`] undoes it. Only for the
/// bench's own cluster; failures are reported like any pinning failure.
pub fn split(backend: i32) {
    if disabled() {
        return;
    }
    place(backend, other_cpu());
}

/// Everything back on [`cpu`] after [`split`].
pub fn together(backend: i32) {
    if disabled() {
        return;
    }
    place(backend, cpu());
}

fn place(backend: i32, self_cpu: usize) {
    let mut failures = Vec::new();
    if let Err(err) = taskset_to(std::process::id(), self_cpu) {
        failures.push(err);
    }
    match u32::try_from(backend).ok().and_then(parent_of) {
        Some(postmaster) => {
            let tree = std::iter::once(postmaster).chain(
                std::fs::read_dir("/proc")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|&pid| parent_of(pid) == Some(postmaster)),
            );
            for pid in tree.collect::<Vec<_>>() {
                if let Err(err) = taskset_to(pid, cpu()) {
                    failures.push(err);
                }
            }
        }
        None => failures.push(format!("backend {backend} is not a local process")),
    }
    state().failures.extend(failures);
}

/// Pins the backend of `conn` and returns its pid.
pub async fn pin_conn(conn: &mut PgConnection) -> i32 {
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("ask the backend pid");
    if let Ok(pid) = u32::try_from(pid) {
        pin_pid(pid);
    }
    pid
}

/// Pins the backend of the connection `pool` hands out next (a one-connection pool's
/// only one). Run between timed blocks: a pool may replace its connection at any time.
pub async fn pin_pool(pool: &PgPool) {
    let mut conn = pool.acquire().await.expect("pool connection");
    pin_conn(&mut conn).await;
}

/// Pins a local pid that some other client reported as its backend.
pub fn pin_backend(pid: i32) {
    if let Ok(pid) = u32::try_from(pid) {
        pin_pid(pid);
    }
}

/// One line for the bench's output: what is pinned where, or why not.
pub fn report() -> String {
    if disabled() {
        return "NOT pinned (PGLOCK_BENCH_NO_PIN): the scheduler places every process.".to_owned();
    }
    let state = state();
    let cpu = cpu();
    let what = match state.server_tree {
        true => {
            "the bench process (all threads) and the private cluster's postmaster, so every backend it forks"
        }
        false => "the bench process (all threads) and each of its connections' backends",
    };
    match state.failures.is_empty() {
        true => format!(
            "Pinned: {what}, on CPU {cpu} (taskset; {} pids).",
            state.pinned.len()
        ),
        false => format!(
            "NOT fully pinned ({} pids on CPU {cpu}); failures: {}",
            state.pinned.len(),
            state.failures.join("; ")
        ),
    }
}

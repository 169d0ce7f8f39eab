//! The database the benchmarks run against: `DATABASE_URL` when set (the `locks` bench),
//! otherwise a private throwaway PostgreSQL cluster, started the way the tests start
//! theirs (`tests/support/cluster.rs`): initdb into a temporary directory (as the
//! `postgres` user when run as root), `fsync = off`, `pg_stat_statements` preloaded,
//! `pg_ctl start` on a free loopback port, and a watchdog that stops the server and
//! deletes the directory when the bench process exits, however it exits.
//!
//! Also what every bench shares: the raw-statement baselines ([`raw`]), the
//! several-session workloads ([`workloads`]), pinning to one CPU ([`pin`]), the counting
//! proxy ([`wire`]). Not every bench uses all of it.
#![allow(dead_code)]

pub mod pin;
pub mod raw;
pub mod wire;
pub mod workloads;

/// The tests' private-cluster harness, shared rather than copied.
#[path = "../../tests/support/cluster.rs"]
mod cluster;

/// `DATABASE_URL` if set and not empty, else the URL of a new private cluster.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => private_cluster(),
    }
}

/// The bench database, and whether it is the bench's own private cluster (whose
/// processes the bench may pin; a shared server's it may not, beyond its own backends).
pub struct Database {
    pub url: String,
    pub private: bool,
}

/// [`database_url`], saying which kind it is.
pub fn database() -> Database {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Database {
            url,
            private: false,
        },
        _ => Database {
            url: private_cluster(),
            private: true,
        },
    }
}

/// Starts a private cluster (stopped and deleted when the bench exits) and returns the
/// URL of its `postgres` database.
pub fn private_cluster() -> String {
    private_cluster_with(&[])
}

/// [`private_cluster`] with extra `name = value` server settings (the bench's own
/// server: settings are never changed on a shared one).
pub fn private_cluster_with(settings: &[&str]) -> String {
    cluster::PrivateCluster::start(settings).url()
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median of the per-block ratios `a[i] / b[i]`.
pub fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

/// CPU time this process has used so far, every thread, in nanoseconds as the scheduler
/// counts it (`/proc/self/task/*/schedstat`, Linux). `None` where there is no `/proc`.
pub fn cpu_time() -> Option<std::time::Duration> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let total = tasks
        .flatten()
        .filter_map(|task| run_time(&task.path().join("schedstat")))
        .sum();
    Some(total)
}

/// The local processes whose parent is `parent` (a private cluster's backends, given its
/// postmaster).
pub fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pin::parent_of(pid) == Some(parent))
        .collect()
}

/// CPU time the single-threaded processes `pids` (backends) have used so far; those that
/// have exited count nothing.
pub fn cpu_time_of(pids: &[u32]) -> std::time::Duration {
    pids.iter()
        .filter_map(|pid| run_time(std::path::Path::new(&format!("/proc/{pid}/schedstat"))))
        .sum()
}

/// The first field of a `schedstat` file: time spent on the CPU, in nanoseconds.
fn run_time(schedstat: &std::path::Path) -> Option<std::time::Duration> {
    let text = std::fs::read_to_string(schedstat).ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(nanos))
}

/// CPU used by the bench process and by a private cluster's backends (those alive when
/// the counter was made).
pub struct Cpu {
    backends: Vec<u32>,
}

impl Cpu {
    /// Counts the children of `postmaster` alive now (none if `None`).
    pub fn new(postmaster: Option<u32>) -> Cpu {
        Cpu {
            backends: postmaster.map_or(Vec::new(), children),
        }
    }

    /// CPU used so far: the bench process's, the backends'.
    pub fn now(&self) -> (std::time::Duration, std::time::Duration) {
        (cpu_time().unwrap_or_default(), cpu_time_of(&self.backends))
    }

    /// CPU spent since `from` (a [`now`](Self::now)): the bench process's, the backends'.
    pub fn since(
        &self,
        from: (std::time::Duration, std::time::Duration),
    ) -> (std::time::Duration, std::time::Duration) {
        let now = self.now();
        (now.0.saturating_sub(from.0), now.1.saturating_sub(from.1))
    }
}

/// Ends the bench process if it is still running after `limit` (a bench must stop by
/// itself, even if a server stops answering).
pub fn deadline(limit: std::time::Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("bench still running after {limit:?}: stopping");
        std::process::exit(2);
    });
}

//! The database the benchmarks run against: `DATABASE_URL` when set (the `locks` bench),
//! otherwise a private throwaway PostgreSQL cluster, started the way the tests start
//! theirs (`tests/support/cluster.rs`): initdb into a temporary directory (as the
//! `postgres` user when run as root), `fsync = off`, `pg_stat_statements` preloaded,
//! `pg_ctl start` on a free loopback port, and a watchdog that stops the server and
//! deletes the directory when the bench process exits, however it exits.
//!
//! Also what every bench shares: the raw-statement baselines ([`raw`]) and the
//! several-session workloads ([`workloads`]). Not every bench uses all of it.
#![allow(dead_code)]

pub mod raw;
pub mod workloads;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `DATABASE_URL` if set and not empty, else the URL of a new private cluster.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => private_cluster(),
    }
}

/// Starts a private cluster and returns the URL of its `postgres` database.
pub fn private_cluster() -> String {
    let bin = server_bin_dir().expect(
        "no PostgreSQL server binaries (initdb, pg_ctl) via pg_config, PATH or \
         /usr/lib/postgresql/*/bin: install the server or set DATABASE_URL",
    );
    let as_postgres = is_root();
    let dir = std::env::temp_dir().join(format!("pglock-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the cluster directory");
    let command = |program: &str| {
        let path = bin.join(program);
        if as_postgres {
            // initdb refuses to run as root: the server runs as the `postgres` user.
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    };
    if as_postgres {
        run(Command::new("chown").arg("postgres:postgres").arg(&dir));
    }
    let data = dir.join("data");
    run(command("initdb").arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
    ]));
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("find a free loopback port");
    let conf = format!(
        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
         max_connections = 200\nshared_preload_libraries = 'pg_stat_statements'\n",
        dir.display()
    );
    // postgresql.auto.conf is already the postgres user's: writing keeps the owner.
    std::fs::write(data.join("postgresql.auto.conf"), conf).expect("write postgresql.auto.conf");
    remove_at_exit(&dir);
    run(command("pg_ctl")
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "-t", "60", "start"]));
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// A detached watchdog: once this process is gone, stop the server and delete `dir`.
fn remove_at_exit(dir: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
         pid=$(head -n 1 '{dir}/data/postmaster.pid' 2>/dev/null); \
         [ -n \"$pid\" ] && kill -QUIT \"$pid\" 2>/dev/null; \
         for _ in $(seq 50); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display()
    );
    // Deliberately not waited for: it must outlive this process.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the cluster watchdog (setsid sh)");
}

/// The server's bin directory: pg_config, then PATH, then the newest
/// /usr/lib/postgresql/*/bin.
fn server_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").exists() && dir.join("pg_ctl").exists();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let from_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    debian.sort_by_key(|dir| {
        std::cmp::Reverse(
            dir.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    from_pg_config
        .into_iter()
        .chain(from_path)
        .chain(debian)
        .find(|dir| has_server(dir))
        // PATH entries may be symlinks into the real bin directory; pg_ctl wants the real one.
        .map(|dir| {
            dir.join("initdb")
                .canonicalize()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(dir)
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|err| panic!("could not run {cmd:?}: {err}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! The database the tests run against: `DATABASE_URL` when set, otherwise a private
//! throwaway PostgreSQL cluster started once per test binary and removed when it exits.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The URL of the shared test database, starting a private cluster on first use.
pub fn database_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => PrivateCluster::start(&[]).url(),
    })
    .clone()
}

/// A PostgreSQL server of our own: initdb into a temporary directory, started with
/// `pg_ctl` on a free loopback port, stopped and deleted when the test process exits.
pub struct PrivateCluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

impl PrivateCluster {
    /// Starts a cluster; `settings` are extra `name=value` server settings.
    pub fn start(settings: &[&str]) -> PrivateCluster {
        let bin = server_bin_dir().unwrap_or_else(|| {
            panic!(
                "no database for the tests: DATABASE_URL is not set and no PostgreSQL server \
                 binaries (initdb, pg_ctl) were found via pg_config, PATH or \
                 /usr/lib/postgresql/*/bin. Set DATABASE_URL=postgres://user@host/db, or \
                 install the server (apt-get install postgresql)."
            )
        });
        let as_postgres = is_root();
        let dir = scratch_dir("pglock-test");
        if as_postgres {
            // initdb refuses to run as root: the server runs as the `postgres` user.
            run(Command::new("chown").args(["postgres:postgres"]).arg(&dir));
        }
        let mut cluster = PrivateCluster {
            dir,
            port: 0,
            bin,
            as_postgres,
        };
        let data = cluster.dir.join("data");
        run(cluster.command("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
        cluster.remove_at_exit();
        // A free port can be taken by someone else before the server binds it (another
        // test's cluster, say): try a few, and show the server's log if none works.
        let mut failures = Vec::new();
        for _ in 0..3 {
            cluster.port = free_port();
            let mut conf = format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
                 max_connections = 300\nshared_preload_libraries = 'pg_stat_statements'\n",
                cluster.port,
                cluster.dir.display()
            );
            for setting in settings {
                conf.push_str(setting);
                conf.push('\n');
            }
            let auto_conf = data.join("postgresql.auto.conf");
            std::fs::write(&auto_conf, conf).expect("write postgresql.auto.conf");
            if as_postgres {
                run(Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&auto_conf));
            }
            let log = cluster.dir.join("server.log");
            let started = cluster.start_server(&data, &log);
            match started {
                Ok(()) => return cluster,
                Err(err) => failures.push(format!(
                    "{err}\nserver log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )),
            }
        }
        panic!(
            "could not start a private PostgreSQL cluster:\n{}",
            failures.join("\n---\n")
        );
    }

    /// A URL for the `postgres` database of this cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `pg_ctl <action>` (e.g. `restart -m fast`) against this cluster.
    #[allow(dead_code)]
    pub fn pg_ctl(&self, args: &[&str]) {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60"])
            .args(args));
    }

    /// `pg_ctl start` of the data directory `data`, logging to `log`, waiting (60 s at
    /// most) until it accepts connections.
    fn start_server(&self, data: &Path, log: &Path) -> Result<(), String> {
        try_run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(data)
                .arg("-l")
                .arg(log)
                .args(["-w", "-t", "60", "start"]),
        )
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut cmd = Command::new(runuser());
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    /// A watchdog process: when this test process exits, however it exits, it stops the
    /// server and deletes the directory.
    fn remove_at_exit(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
             pid=$(head -n 1 '{dir}/data/postmaster.pid' 2>/dev/null); \
             [ -n \"$pid\" ] && kill -QUIT \"$pid\" 2>/dev/null; \
             for _ in $(seq 50); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        watchdog(&script);
    }
}

fn server_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").exists() && dir.join("pg_ctl").exists();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>());
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    // Newest version first.
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

/// `runuser` (util-linux): on `PATH`, or where Debian puts it (`/usr/sbin`, `/sbin`), which a
/// non-login shell's `PATH` may lack.
pub fn runuser() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("runuser"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// Whether this process runs as root (then servers run as `postgres`, via `runuser`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("find a free loopback port")
}

fn run(cmd: &mut Command) {
    if let Err(err) = try_run(cmd) {
        panic!("{err}");
    }
}

fn try_run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|err| format!("could not run {cmd:?}: {err}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

impl PrivateCluster {
    /// The server's log file (what the postmaster and its backends write to stderr).
    #[allow(dead_code)]
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }
}

/// A streaming hot standby of a [`PrivateCluster`]: `pg_basebackup -R` from the primary
/// over loopback, on a port and socket directory of its own, in recovery until
/// [`promote`](Standby::promote)d. Stopped and deleted when the test process exits, like
/// the primary.
pub struct Standby {
    server: PrivateCluster,
}

/// The bound on building and starting a standby, and on each wait for its state.
const STANDBY_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

impl PrivateCluster {
    /// Builds and starts a hot standby streaming from this cluster, and waits until it
    /// accepts connections and `pg_is_in_recovery()` is true.
    #[allow(dead_code)]
    pub fn start_standby(&self) -> Standby {
        let dir = scratch_dir("pglock-test");
        if self.as_postgres {
            run(Command::new("chown").args(["postgres:postgres"]).arg(&dir));
        }
        let mut server = PrivateCluster {
            dir,
            port: 0,
            bin: self.bin.clone(),
            as_postgres: self.as_postgres,
        };
        server.remove_at_exit();
        let data = server.dir.join("data");
        let log = server.log_file();
        // A fast checkpoint on the primary (the default spreads it over minutes); WAL
        // streamed alongside; -R writes standby.signal and primary_conninfo.
        let primary = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=10",
            self.port
        );
        if let Err(err) = try_run(
            server
                .bounded(STANDBY_LIMIT, "pg_basebackup")
                .arg("-D")
                .arg(&data)
                .args(["-d", &primary])
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
        ) {
            panic!(
                "pg_basebackup from the primary on port {} failed: {err}\nprimary log:\n{}",
                self.port,
                read_log(&self.log_file())
            );
        }
        // The copied postgresql.auto.conf names the primary's port and socket directory;
        // later lines win, so the standby's own go last (after -R's primary_conninfo).
        let auto_conf = data.join("postgresql.auto.conf");
        let copied = std::fs::read_to_string(&auto_conf).expect("read the standby's auto.conf");
        let mut failures = Vec::new();
        for _ in 0..3 {
            server.port = free_port();
            let conf = format!(
                "{copied}\n# the standby's own\nport = {}\nunix_socket_directories = '{}'\n\
                 hot_standby = on\n",
                server.port,
                server.dir.display()
            );
            // Rewritten in place: the file keeps its owner (the server's user) and mode.
            std::fs::write(&auto_conf, conf).expect("write the standby's auto.conf");
            let started = server.start_server(&data, &log);
            match started {
                Ok(()) => {
                    let standby = Standby { server };
                    standby.wait_for_recovery(true);
                    return standby;
                }
                Err(err) => failures.push(format!("{err}\nstandby log:\n{}", read_log(&log))),
            }
        }
        panic!(
            "could not start a standby of the private cluster on port {}:\n{}",
            self.port,
            failures.join("\n---\n")
        );
    }

    /// `program` from the server's bin directory under coreutils `timeout`, so that it
    /// cannot run longer than `limit` (then it fails with status 124).
    fn bounded(&self, limit: std::time::Duration, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = match self.as_postgres {
            true => {
                let mut cmd = Command::new(runuser());
                cmd.args(["-u", "postgres", "--", "timeout"]);
                cmd
            }
            false => Command::new("timeout"),
        };
        cmd.args(["-k", "5", &format!("{}s", limit.as_secs().max(1))])
            .arg(path);
        cmd
    }

    /// `SELECT pg_is_in_recovery()` through psql (bounded): `Ok(true)` in recovery, or
    /// why it could not tell (not accepting connections yet, say).
    fn in_recovery(&self) -> Result<bool, String> {
        let out = self
            .bounded(std::time::Duration::from_secs(10), "psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-c", "SELECT pg_is_in_recovery()"])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|err| format!("could not run psql: {err}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match (out.status.success(), stdout.trim()) {
            (true, "t") => Ok(true),
            (true, "f") => Ok(false),
            _ => Err(format!(
                "psql ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }
}

impl Standby {
    /// A URL for the `postgres` database of the standby (or, once promoted, the new primary).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The standby's server log.
    #[allow(dead_code)]
    pub fn log_file(&self) -> PathBuf {
        self.server.log_file()
    }

    /// Ends recovery (`pg_ctl promote -w`) and waits until `pg_is_in_recovery()` is
    /// false: the server is a primary of its own from then on.
    #[allow(dead_code)]
    pub fn promote(&self) {
        let promoted = try_run(
            self.server
                .command("pg_ctl")
                .arg("-D")
                .arg(self.server.dir.join("data"))
                .args(["-w", "-t", "60", "promote"]),
        );
        if let Err(err) = promoted {
            panic!(
                "could not promote the standby on port {}: {err}\nstandby log:\n{}",
                self.server.port,
                read_log(&self.log_file())
            );
        }
        self.wait_for_recovery(false);
    }

    /// Polls until the standby accepts connections and `pg_is_in_recovery()` is
    /// `wanted`, failing with its log after [`STANDBY_LIMIT`].
    fn wait_for_recovery(&self, wanted: bool) {
        let start = std::time::Instant::now();
        let mut last = String::new();
        while start.elapsed() < STANDBY_LIMIT {
            match self.server.in_recovery() {
                Ok(now) if now == wanted => return,
                Ok(now) => last = format!("pg_is_in_recovery() = {now}"),
                Err(err) => last = err,
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "the standby on port {} did not reach pg_is_in_recovery() = {wanted} within \
             {STANDBY_LIMIT:?}; last: {last}\nstandby log:\n{}",
            self.server.port,
            read_log(&self.log_file())
        );
    }
}

/// A server log for a failure message (empty if it cannot be read).
fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs the shell `script` in a session of its own, not waited for: a watchdog that must
/// outlive this test process, to clean up after it however it exits.
pub fn watchdog(script: &str) {
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a watchdog (setsid sh)");
}

/// A new directory under the system's temporary directory, `<prefix>-<pid>-<nanos>`: no
/// other test or test process uses it.
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

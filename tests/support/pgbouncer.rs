//! A PgBouncer of our own in front of a PostgreSQL server, for the tests that check how
//! locks behave behind a pooling proxy: a generated ini in a temporary directory, a free
//! loopback port, run in the foreground (as `postgres` under `runuser` when we are root,
//! since PgBouncer refuses to run as root), stopped when the guard is dropped and, as a
//! backstop, when the test process exits.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

use super::cluster::{free_port, is_root, runuser, watchdog};

/// What to install when PgBouncer is missing.
pub const INSTALL_HINT: &str = "the pgbouncer suite needs the `pgbouncer` binary \
     (Debian/Ubuntu: `apt-get install pgbouncer`; it is looked up on PATH and in /usr/sbin)";

/// Set to `1` to make a missing PgBouncer fail the suite instead of skipping it (CI does).
pub const REQUIRE_ENV: &str = "PGLOCK_REQUIRE_PGBOUNCER";

/// The `pgbouncer` binary, if it is installed.
pub fn find() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|path| path.is_file())
}

/// The `pgbouncer` binary for a test of the suite, or `None` when the suite should not
/// run: PgBouncer is an optional tool, so without it a test returns at once, after one
/// line on the terminal (once per process, past libtest's output capture) that says the
/// suite did not run and how to make it run. With `PGLOCK_REQUIRE_PGBOUNCER=1` a missing
/// binary fails the test instead.
pub fn required() -> Option<PathBuf> {
    if let Some(binary) = find() {
        return Some(binary);
    }
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("PgBouncer is not installed and {REQUIRE_ENV}=1: {INSTALL_HINT}");
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        // Straight to the terminal: libtest captures only the print macros.
        let _ = writeln!(
            std::io::stderr(),
            "pgbouncer suite DID NOT RUN: PgBouncer is not installed; {INSTALL_HINT}; \
             {REQUIRE_ENV}=1 makes its absence a failure"
        );
    });
    None
}

/// The `pgbouncer` binary, or a failure naming the package to install.
pub fn binary() -> PathBuf {
    find().unwrap_or_else(|| panic!("PgBouncer is not installed: {INSTALL_HINT}"))
}

/// A running PgBouncer; dropping it stops the process and removes its directory.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    port: u16,
    database: String,
    user: String,
    version: (u32, u32),
}

/// `(major, minor)` from `pgbouncer --version` ("PgBouncer 1.18.0 ...").
pub fn version(binary: &Path) -> (u32, u32) {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|err| panic!("cannot run {} --version: {err}", binary.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let number = text
        .split_whitespace()
        .skip_while(|word| !word.eq_ignore_ascii_case("pgbouncer"))
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected `pgbouncer --version` output: {text:?}"));
    let mut parts = number.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl PgBouncer {
    /// Starts PgBouncer in `pool_mode = transaction` in front of the server `upstream_url`
    /// points at, with the settings of the pgbouncer suite: round-robin server selection
    /// and at least two server connections, so consecutive transactions of one client
    /// really land on different server sessions. `extra` are more `name = value` lines
    /// for the `[pgbouncer]` section.
    pub fn transaction_pooling(upstream_url: &str, extra: &[&str]) -> PgBouncer {
        let binary = binary();
        let version = version(&binary);
        let upstream = PgConnectOptions::from_str(upstream_url)
            .unwrap_or_else(|err| panic!("the upstream URL does not parse: {err}"));
        let host = upstream.get_host().to_owned();
        let upstream_port = upstream.get_port();
        let user = upstream.get_username().to_owned();
        let database = upstream
            .get_database()
            .map(str::to_owned)
            .unwrap_or_else(|| user.clone());
        let password = password_of(upstream_url);

        let as_postgres = is_root();
        let dir = super::scratch_dir("pglock-pgbouncer");
        let port = free_port();

        let mut server = format!("host={host} port={upstream_port} dbname={database} user={user}");
        if let Some(password) = &password {
            server.push_str(&format!(" password={password}"));
        }
        // max_prepared_statements (PgBouncer 1.21+) makes named prepared statements work
        // in transaction mode; older versions reject the setting.
        let prepared = if version >= (1, 21) {
            "max_prepared_statements = 100\n"
        } else {
            ""
        };
        let extra: String = extra.iter().map(|line| format!("{line}\n")).collect();
        let ini = format!(
            "[databases]\n\
             {database} = {server}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             admin_users = {user}\n\
             pool_mode = transaction\n\
             server_round_robin = 1\n\
             default_pool_size = 4\n\
             min_pool_size = 2\n\
             max_client_conn = 100\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             {prepared}\
             {extra}\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("write pgbouncer.ini");
        std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n"))
            .expect("write userlist.txt");
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown the pgbouncer directory");
            assert!(status.success(), "chown the pgbouncer directory");
        }

        let mut command = if as_postgres {
            let mut cmd = Command::new(runuser());
            cmd.args(["-u", "postgres", "--"]).arg(&binary);
            cmd
        } else {
            Command::new(&binary)
        };
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let mut bouncer = PgBouncer {
            child,
            dir,
            port,
            database,
            user,
            version,
        };
        bouncer.stop_at_exit();
        bouncer.wait_until_listening();
        bouncer
    }

    /// The URL to connect through PgBouncer.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.user, self.port, self.database
        )
    }

    /// PgBouncer's `(major, minor)` version.
    pub fn version(&self) -> (u32, u32) {
        self.version
    }

    /// Whether this PgBouncer tracks named prepared statements across server connections
    /// (`max_prepared_statements`, 1.21+).
    pub fn tracks_prepared_statements(&self) -> bool {
        self.version >= (1, 21)
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn wait_until_listening(&mut self) {
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pgbouncer exited at start ({status}); its log:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pgbouncer is not listening on 127.0.0.1:{} after 20 s; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A watchdog: when this test process exits, however it exits, it stops PgBouncer
    /// and deletes the directory.
    fn stop_at_exit(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
             for _ in $(seq 50); do [ -s '{dir}/pgbouncer.pid' ] && break; sleep 0.1; done; \
             bouncer=$(head -n 1 '{dir}/pgbouncer.pid' 2>/dev/null); \
             [ -n \"$bouncer\" ] && kill -INT \"$bouncer\" 2>/dev/null; \
             kill -TERM {child} 2>/dev/null; \
             sleep 1; rm -rf '{dir}'",
            pid = std::process::id(),
            child = self.child.id(),
            dir = self.dir.display()
        );
        watchdog(&script);
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SIGINT: PgBouncer shuts down at once (SIGTERM would wait for its clients).
        // runuser forwards signals to its child, but the pid file names PgBouncer itself.
        let pid = std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The password in `postgres://user:password@host/...`, if any.
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    Some(password.to_owned()).filter(|p| !p.is_empty())
}

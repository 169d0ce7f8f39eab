//! A loopback TCP proxy between the tests and the database, to break the network on
//! purpose: cut connections (both sockets shut down: the client and the server each see
//! the connection end) or go silent (nothing forwarded either way, every socket left
//! open: neither side learns anything, as on a partitioned network).
//!
//! Plain std threads and `std::net`, so it works the same under every test runtime. Each
//! accepted connection gets a connection to the target and two forwarding threads; the
//! proxy, its threads and every socket stop when the [`Proxy`] is dropped (bounded: every
//! blocking call is woken by a shutdown or polls a flag).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// How often a held (silenced) forwarding thread looks at the flags again.
const HOLD_POLL: Duration = Duration::from_millis(5);

/// One proxied connection: the socket accepted from the client and the one opened to
/// the server.
struct Pair {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    /// Set when either side ended or the pair was cut; both threads then stop.
    done: Arc<AtomicBool>,
}

impl Pair {
    fn cut(&self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    blackhole: AtomicBool,
    /// Live pairs, oldest first.
    pairs: Mutex<Vec<Pair>>,
    /// Forwarding threads, joined on drop.
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    cuts: AtomicU64,
    cut_connections: AtomicU64,
}

impl Shared {
    fn pairs(&self) -> MutexGuard<'_, Vec<Pair>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, id: u64) {
        self.pairs().retain(|pair| pair.id != id);
    }
}

/// A test-only TCP proxy on `127.0.0.1:<random port>` in front of one target address.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    client_options: PgConnectOptions,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy in front of the test database ([`super::database_url`]).
    pub fn start() -> Proxy {
        Proxy::to_url(&super::database_url())
    }

    /// A proxy in front of the PostgreSQL server of `url` (a TCP host, not a socket dir).
    pub fn to_url(url: &str) -> Proxy {
        let options = PgConnectOptions::from_str(url).expect("the database URL parses");
        let host = options.get_host().to_owned();
        assert!(
            !host.starts_with('/'),
            "the proxy needs a TCP database URL, not a Unix socket ({host})"
        );
        let target = (host.as_str(), options.get_port())
            .to_socket_addrs()
            .expect("resolve the database host")
            .next()
            .expect("the database host has an address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let client_options = options.host("127.0.0.1").port(addr.port());
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("test-proxy-accept".into())
                .spawn(move || accept_loop(listener, target, shared))
                .expect("spawn the proxy's accept thread")
        };
        Proxy {
            addr,
            target,
            client_options,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The database URL with the proxy's address: same user, database and parameters.
    pub fn url(&self) -> String {
        let url = super::database_url();
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let userinfo = authority
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}127.0.0.1:{}{path}", self.addr.port())
    }

    /// Connect options through the proxy (the database URL's, with the proxy's address).
    pub fn connect_options(&self) -> PgConnectOptions {
        self.client_options.clone()
    }

    /// A pool through the proxy. `acquire_timeout` bounds opening a connection, which on
    /// a silent network never finishes by itself; no ping before handing out a connection
    /// (it would hang there too), so the lock's own statement finds a dead connection.
    pub async fn pool(&self, max: u32, acquire_timeout: Duration) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .connect_with(self.connect_options())
            .await
            .expect("a pool through the proxy")
    }

    /// Live proxied connections.
    pub fn connections(&self) -> usize {
        self.shared.pairs().len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many cuts (`cut_*` calls that cut at least one connection) happened.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// How many connections were cut, in all.
    pub fn cut_connections(&self) -> u64 {
        self.shared.cut_connections.load(Ordering::SeqCst)
    }

    /// Shuts down both sockets of every live connection: the client reads end-of-file
    /// (or a reset), the server sees its client go. Returns how many were cut.
    pub fn cut_all(&self) -> usize {
        let cut: Vec<Pair> = self.shared.pairs().drain(..).collect();
        cut.iter().for_each(Pair::cut);
        self.count_cut(cut.len())
    }

    /// Cuts the live connection at `index` (modulo their number; oldest first).
    /// Returns whether there was one to cut.
    pub fn cut_one(&self, index: usize) -> bool {
        let pair = {
            let mut pairs = self.shared.pairs();
            if pairs.is_empty() {
                return false;
            }
            let i = index % pairs.len();
            pairs.remove(i)
        };
        pair.cut();
        self.count_cut(1) == 1
    }

    /// Cuts one live connection chosen by `random` (any number; reduced modulo the count).
    pub fn cut_random(&self, random: u64) -> bool {
        self.cut_one(random as usize)
    }

    fn count_cut(&self, n: usize) -> usize {
        if n > 0 {
            self.shared.cuts.fetch_add(1, Ordering::SeqCst);
            self.shared
                .cut_connections
                .fetch_add(n as u64, Ordering::SeqCst);
        }
        n
    }

    /// `true`: stop forwarding in both directions, keeping every socket open (new
    /// connections are accepted and go silent too). `false`: forward again, including
    /// what was held back (like a network partition that heals).
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Whether the proxy is silent.
    pub fn is_blackholed(&self) -> bool {
        self.shared.blackhole.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept thread, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for pair in self.shared.pairs().drain(..) {
            pair.cut();
        }
        let threads: Vec<_> = self
            .shared
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let done = Arc::new(AtomicBool::new(false));
        {
            let mut pairs = shared.pairs();
            if shared.stop.load(Ordering::SeqCst) {
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
            pairs.push(Pair {
                id,
                client,
                server,
                done: done.clone(),
            });
        }
        let up = spawn_forward(c2, s2, id, done.clone(), shared.clone(), "up");
        let down = spawn_forward(s3, c3, id, done, shared.clone(), "down");
        let mut threads = shared.threads.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the list short: forget threads that already ended.
        threads.retain(|t| !t.is_finished());
        threads.extend(up);
        threads.extend(down);
    }
}

fn spawn_forward(
    from: TcpStream,
    to: TcpStream,
    id: u64,
    done: Arc<AtomicBool>,
    shared: Arc<Shared>,
    dir: &str,
) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("test-proxy-{id}-{dir}"))
        .spawn(move || forward(from, to, id, done, shared))
        .ok()
}

/// Copies `from` to `to` until either ends or the pair is cut; while the proxy is
/// silent, reads nothing and writes nothing (bytes wait in the kernel's buffers).
fn forward(
    mut from: TcpStream,
    mut to: TcpStream,
    id: u64,
    done: Arc<AtomicBool>,
    shared: Arc<Shared>,
) {
    let stopped = || done.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst);
    let hold = || {
        while shared.blackhole.load(Ordering::SeqCst) && !stopped() {
            std::thread::sleep(HOLD_POLL);
        }
    };
    // A read timeout lets a silenced thread notice the silence before it forwards what
    // it reads; cuts and drop wake blocked reads by shutting the socket down.
    let _ = from.set_read_timeout(Some(HOLD_POLL * 4));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        hold();
        if stopped() {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Read just before the silence began: hold it back too.
                hold();
                if stopped() || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => break,
        }
    }
    // One side ended (or the pair was cut): end both, as a real connection would.
    done.store(true, Ordering::SeqCst);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    shared.forget(id);
}

//! Round trips counted on the wire: a loopback TCP proxy that reads the PostgreSQL
//! protocol going through it.
//!
//! A client waits for the server once per round trip, and a round trip ends with a
//! client message that asks for an answer: `Sync` ('S', which ends an extended-protocol
//! exchange: Parse/Bind/Describe/Execute, and sqlx's ping) or a simple `Query` ('Q').
//! The server answers each with exactly one `ReadyForQuery` ('Z'). The proxy counts both
//! kinds of message, and counts a **round trip** each time the answers it forwards catch
//! up with the requests (no request left unanswered). A request the client sends before
//! the answer to an earlier one has reached it is *pipelined*: it shares that round trip
//! (pglock's `close` sends its settings restore this way, ahead of the pool's return
//! ping). To make that deterministic, the proxy holds every answer for
//! [`ANSWER_DELAY`] before forwarding it, far longer than a client takes to send a
//! message it does not wait for, so counting runs must not be timed.
//!
//! Plain std threads, so it does not share the bench's runtime. Everything stops when
//! the [`WireCounter`] is dropped (every blocking call is woken by a socket shutdown or
//! polls a flag).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the proxy holds each answer (see the module docs).
pub const ANSWER_DELAY: Duration = Duration::from_millis(2);

/// Protocol codes of untyped startup-phase messages that the server answers with one
/// byte ('S' or 'N') instead of a typed message.
const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;

/// Counts since the counter started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// `Sync` messages from clients.
    pub syncs: u64,
    /// Simple `Query` messages from clients.
    pub queries: u64,
    /// Round trips: see the module docs.
    pub round_trips: u64,
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(self, other: Tally) -> Tally {
        Tally {
            syncs: self.syncs + other.syncs,
            queries: self.queries + other.queries,
            round_trips: self.round_trips + other.round_trips,
        }
    }
}

impl std::ops::Sub for Tally {
    type Output = Tally;
    fn sub(self, earlier: Tally) -> Tally {
        Tally {
            syncs: self.syncs - earlier.syncs,
            queries: self.queries - earlier.queries,
            round_trips: self.round_trips - earlier.round_trips,
        }
    }
}

#[derive(Default)]
struct Counts {
    syncs: AtomicU64,
    queries: AtomicU64,
    round_trips: AtomicU64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    counts: Counts,
    /// Every socket, shut down on drop to wake blocked threads.
    sockets: Mutex<Vec<TcpStream>>,
}

/// The counting proxy: `127.0.0.1:<random port>` in front of one server address.
pub struct WireCounter {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl WireCounter {
    /// Starts a proxy in front of the server `url` names (host and port).
    pub fn start(url: &str) -> WireCounter {
        let (host, port) = authority(url);
        let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("resolve {host}:{port}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the counting proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        let accept_shared = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, target, accept_shared));
        WireCounter { addr, shared }
    }

    /// `url` with its host and port replaced by the proxy's, and TLS off (the proxy reads
    /// the protocol, so it must be plain).
    pub fn url(&self, url: &str) -> String {
        let scheme_end = url.find("://").map(|i| i + 3).expect("a URL with a scheme");
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let user = authority.rfind('@').map(|i| &authority[..=i]).unwrap_or("");
        let tail = &rest[authority_end..];
        let sep = if tail.contains('?') { '&' } else { '?' };
        format!(
            "{}{user}{}{tail}{sep}sslmode=disable",
            &url[..scheme_end],
            self.addr
        )
    }

    pub fn tally(&self) -> Tally {
        let c = &self.shared.counts;
        Tally {
            syncs: c.syncs.load(Ordering::SeqCst),
            queries: c.queries.load(Ordering::SeqCst),
            round_trips: c.round_trips.load(Ordering::SeqCst),
        }
    }
}

impl Drop for WireCounter {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Host and port of a `postgres://` URL (port 5432 if none).
fn authority(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    match host_port.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().expect("URL port")),
        None => (host_port.to_owned(), 5432),
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let server = match TcpStream::connect(target) {
                    Ok(server) => server,
                    Err(_) => continue, // the client sees its connection end
                };
                client
                    .set_nonblocking(false)
                    .expect("blocking client socket");
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                start_pair(client, server, &shared);
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One proxied connection's protocol state, shared by its two directions.
#[derive(Default)]
struct Conversation {
    /// Requests ('S', 'Q') sent by the client and not yet answered ('Z' forwarded).
    unanswered: u64,
    /// Single-byte answers the server owes to SSL/GSS encryption requests.
    one_byte_answers: u64,
}

fn start_pair(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) {
    let clones = (
        client.try_clone().expect("clone socket"),
        server.try_clone().expect("clone socket"),
    );
    {
        let mut sockets = shared.sockets.lock().unwrap();
        sockets.push(client.try_clone().expect("clone socket"));
        sockets.push(server.try_clone().expect("clone socket"));
    }
    let talk = Arc::new(Mutex::new(Conversation::default()));
    // Client to server: counted as it arrives, forwarded at once.
    {
        let (mut from, mut to) = (client, server);
        let (shared, talk) = (Arc::clone(shared), Arc::clone(&talk));
        std::thread::spawn(move || {
            let mut parser = Parser::client();
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                parser.feed(&buf[..n], |message| {
                    let mut talk = talk.lock().unwrap();
                    match message {
                        Message::Typed(b'S') => {
                            shared.counts.syncs.fetch_add(1, Ordering::SeqCst);
                            talk.unanswered += 1;
                        }
                        Message::Typed(b'Q') => {
                            shared.counts.queries.fetch_add(1, Ordering::SeqCst);
                            talk.unanswered += 1;
                        }
                        Message::EncryptionRequest => talk.one_byte_answers += 1,
                        _ => {}
                    }
                });
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    // Server to client: read at once, held for ANSWER_DELAY, counted as it is forwarded.
    let (mut from, mut to) = (clones.1, clones.0);
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
    });
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        let mut parser = Parser::server();
        while let Ok((arrived, bytes)) = rx.recv() {
            if let Some(wait) = (arrived + ANSWER_DELAY).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // Counted before the client can see the answer (and send its next request).
            {
                let mut talk = talk.lock().unwrap();
                parser.one_byte_answers = talk.one_byte_answers;
                parser.feed(&bytes, |message| {
                    if message == Message::OneByteAnswer {
                        talk.one_byte_answers -= 1;
                    }
                    if message == Message::Typed(b'Z') && talk.unanswered > 0 {
                        talk.unanswered -= 1;
                        if talk.unanswered == 0 {
                            shared.counts.round_trips.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    /// A typed message: its type byte.
    Typed(u8),
    /// An untyped startup-phase message (startup, cancel).
    Startup,
    /// An SSLRequest or GSSENCRequest (client side).
    EncryptionRequest,
    /// The server's one-byte answer to one (server side).
    OneByteAnswer,
}

/// Splits one direction of the protocol into messages, across reads.
struct Parser {
    /// Client side: still in the startup phase (untyped messages).
    startup: bool,
    /// Server side: one-byte answers to expect before the next typed message.
    one_byte_answers: u64,
    /// Bytes of an incomplete header.
    header: Vec<u8>,
    /// Body bytes still to skip of the current message.
    skip: usize,
}

impl Parser {
    fn client() -> Parser {
        Parser {
            startup: true,
            one_byte_answers: 0,
            header: Vec::new(),
            skip: 0,
        }
    }

    fn server() -> Parser {
        Parser {
            startup: false,
            ..Parser::client()
        }
    }

    fn feed(&mut self, mut bytes: &[u8], mut on_message: impl FnMut(Message)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            if !self.startup && self.one_byte_answers > 0 && self.header.is_empty() {
                self.one_byte_answers -= 1;
                on_message(Message::OneByteAnswer);
                bytes = &bytes[1..];
                continue;
            }
            // Startup messages: length (4) + code (4); typed: type (1) + length (4).
            let need = if self.startup { 8 } else { 5 };
            let n = (need - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < need {
                continue;
            }
            let h = std::mem::take(&mut self.header);
            if self.startup {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let code = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                self.skip = len.saturating_sub(8);
                if code == SSL_REQUEST || code == GSSENC_REQUEST {
                    on_message(Message::EncryptionRequest);
                } else {
                    self.startup = false;
                    on_message(Message::Startup);
                }
            } else {
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                self.skip = len.saturating_sub(4);
                on_message(Message::Typed(h[0]));
            }
        }
    }
}

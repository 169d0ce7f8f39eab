//! The benchmark the README quotes: `cargo bench --bench interleaved` prints the tables.
//!
//! pglock against its baselines in the same run, on the same server: a whole lock
//! lifecycle on a pool, a borrowed connection's cycle, each operation pair, and several
//! sessions at once. Three rules make a 5% difference measurable on a small shared
//! machine:
//!
//! - **Interleaved.** Contenders alternate in short blocks, in a rotating order, so a
//!   change in background load hits every contender alike; a ratio is the median of the
//!   per-block ratios (cost columns: each contender's median block).
//! - **Pinned.** The bench process (every thread) and the backends of its connections run
//!   on one CPU (`taskset`; see `support::pin`), so that contenders on different
//!   connections meet the same round-trip cost. The output says what was pinned.
//! - **Same connection** where the contenders can share one: every per-operation pair
//!   runs on one `PgConnection`; the lifecycle contenders of sqlx 0.9 share a
//!   one-connection pool.
//!
//! Round trips per round are counted on the wire in a separate, untimed pass through a
//! counting proxy (`support::wire`), with the same code as the timed rounds.
//!
//! The database is `DATABASE_URL` if set (then only our own backends are pinned), else a
//! private cluster (`support`). Arguments (any of `cycles`, `pairs`, `sessions`, `wire`)
//! run only those sections.

mod support;

use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, LockKey};
use sqlx::postgres::{PgAdvisoryLock, PgAdvisoryLockKey, PgPool, PgPoolOptions};
use sqlx::{Connection, Either, PgConnection};

use support::pin;
use support::raw::{self, WAIT};
use support::wire::{Tally, WireCounter};
use support::workloads::{self, Contender};

/// Blocks per contender and rounds per block: the per-operation pairs, then the cycles.
const PAIR_BLOCKS: usize = 100;
const PAIRS: u32 = 100;
const CYCLE_BLOCKS: usize = 100;
const CYCLES: u32 = 50;
/// Blocks per contender for the several-session workloads.
const SESSION_BLOCKS: usize = 40;
/// Handoffs per block, and reader rounds per block.
const HANDOFFS: u64 = 200;
const READER_ROUNDS: u64 = 100;
const READERS: usize = 8;
/// Rounds counted on the wire per workload and contender (after two uncounted rounds).
const COUNTED: u32 = 20;

const KEY_NAME: &str = "pglock-bench/interleaved";

/// What one round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// A lock on its own pool connection: `AdvisoryLock::new` + `try_lock` + `unlock` +
    /// `close`.
    Lifecycle,
    /// A lock on a borrowed connection: `with_connection` + `try_lock_for(1s)` + `unlock`.
    Borrowed,
    TryLock,
    Lock,
    TryLockShared,
    TryLockFor,
}

use Workload::*;

const CYCLE_WORKLOADS: [Workload; 2] = [Lifecycle, Borrowed];
const PAIR_WORKLOADS: [Workload; 4] = [TryLock, Lock, TryLockShared, TryLockFor];

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Lifecycle => "lifecycle: new + try_lock + unlock + close",
            Borrowed => "borrowed: with_connection + try_lock_for(1s) + unlock",
            TryLock => "try_lock + unlock",
            Lock => "lock + unlock",
            TryLockShared => "try_lock_shared + unlock_shared",
            TryLockFor => "try_lock_for(1s) + unlock",
        }
    }

    /// Contender 0 is pglock; 1 is its floor (raw sqlx); 2, if any, another library.
    fn contenders(self) -> &'static [&'static str] {
        match self {
            Lifecycle => &["pglock", "raw sqlx"],
            TryLock | Lock => &["pglock", "raw sqlx", "PgAdvisoryLock"],
            _ => &["pglock", "raw sqlx"],
        }
    }

    /// What the raw contender does, for the tables.
    fn floor(self) -> &'static str {
        match self {
            Lifecycle => "pool.acquire + try + unlock + drop",
            Borrowed => "try + unlock, same connection",
            _ => "the same statements",
        }
    }
}

/// Where the rounds run: one connection for the pairs and the borrowed cycle, a
/// one-connection pool for the lifecycle.
struct Target {
    conn: PgConnection,
    pool: PgPool,
    sqlx_lock: PgAdvisoryLock,
}

impl Target {
    async fn connect(url: &str) -> Target {
        let conn = PgConnection::connect(url).await.expect("connect");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect(url)
            .await
            .expect("connect the pool");
        let k = raw::big(LockKey::from_name(KEY_NAME));
        Target {
            conn,
            pool,
            sqlx_lock: PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(k)),
        }
    }

    /// Pins the backends of every connection (a pool may have replaced one).
    async fn pin(&mut self) {
        pin::pin_conn(&mut self.conn).await;
        pin::pin_pool(&self.pool).await;
    }

    async fn close(self) {
        self.conn.close().await.ok();
        self.pool.close().await;
    }
}

/// Lets answers in flight arrive and pools take their connections back, so that a wire
/// count starts and ends between rounds.
async fn settle(wire: Option<&WireCounter>) -> Tally {
    match wire {
        Some(wire) => {
            tokio::time::sleep(support::wire::ANSWER_DELAY * 20).await;
            wire.tally()
        }
        None => Tally::default(),
    }
}

/// Runs two untimed rounds of contender `who`, then `n` timed ones: their time, and
/// (through a counting proxy) what they sent.
async fn rounds(
    t: &mut Target,
    w: Workload,
    who: usize,
    n: u32,
    wire: Option<&WireCounter>,
) -> (Duration, Tally) {
    let key = LockKey::from_name(KEY_NAME);
    let k = raw::big(key);
    macro_rules! timed {
        ($round:block) => {{
            // Two untimed rounds: the first may run a session's first statement instead
            // of the steady one, which the second then prepares.
            $round;
            $round;
            let from = settle(wire).await;
            let start = Instant::now();
            for _ in 0..n {
                $round;
            }
            let elapsed = start.elapsed();
            (elapsed, settle(wire).await - from)
        }};
    }
    let Target {
        conn,
        pool,
        sqlx_lock,
    } = t;
    match (w, who) {
        (Lifecycle, 0) => timed!({
            let mut lock = AdvisoryLock::new(pool, key).await.unwrap();
            assert!(lock.try_lock().await.unwrap());
            lock.unlock().await.unwrap();
            lock.close().await.unwrap();
        }),
        (Lifecycle, _) => timed!({
            let mut pooled = pool.acquire().await.unwrap();
            assert!(raw::try_lock(&mut pooled, k).await);
            raw::unlock(&mut pooled, k).await;
        }),
        (Borrowed, 0) => timed!({
            let mut lock = AdvisoryLock::with_connection(&mut *conn, key);
            assert!(lock.try_lock_for(WAIT).await.unwrap());
            lock.unlock().await.unwrap();
        }),
        (Borrowed, _) => timed!({
            assert!(raw::try_lock(conn, k).await);
            raw::unlock(conn, k).await;
        }),
        (_, 0) => {
            // A borrowed lock per block: its first round (untimed) runs the session's
            // first statement.
            let mut lock = AdvisoryLock::with_connection(&mut *conn, key);
            match w {
                TryLock => timed!({
                    assert!(lock.try_lock().await.unwrap());
                    lock.unlock().await.unwrap();
                }),
                Lock => timed!({
                    lock.lock().await.unwrap();
                    lock.unlock().await.unwrap();
                }),
                TryLockShared => timed!({
                    assert!(lock.try_lock_shared().await.unwrap());
                    lock.unlock_shared().await.unwrap();
                }),
                _ => timed!({
                    assert!(lock.try_lock_for(WAIT).await.unwrap());
                    lock.unlock().await.unwrap();
                }),
            }
        }
        (TryLock, 1) => timed!({
            assert!(raw::try_lock(conn, k).await);
            raw::unlock(conn, k).await;
        }),
        (Lock, 1) => timed!({
            raw::lock(conn, k).await;
            raw::unlock(conn, k).await;
        }),
        (TryLockShared, 1) => timed!({
            assert!(raw::try_lock_shared(conn, k).await);
            raw::unlock_shared(conn, k).await;
        }),
        (TryLockFor, 1) => timed!({
            raw::try_lock_for(conn, k).await;
            raw::unlock(conn, k).await;
        }),
        (TryLock, _) => timed!({
            match sqlx_lock.try_acquire(&mut *conn).await.unwrap() {
                Either::Left(guard) => {
                    guard.release_now().await.unwrap();
                }
                Either::Right(_) => panic!("free key not acquired"),
            }
        }),
        (_, _) => timed!({
            let guard = sqlx_lock.acquire(&mut *conn).await.unwrap();
            guard.release_now().await.unwrap();
        }),
    }
}

/// One table line: each contender's median block cost, and pglock's median per-block
/// ratio to each other contender.
struct Line {
    what: String,
    unit: &'static str,
    names: Vec<&'static str>,
    medians: Vec<f64>,
    /// `ratios[j]`: pglock / contender j (`ratios[0]` is 1).
    ratios: Vec<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n % 2 {
        1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn line(what: String, unit: &'static str, names: &[&'static str], times: &[Vec<f64>]) -> Line {
    let ratio = |j: usize| {
        median(
            times[0]
                .iter()
                .zip(&times[j])
                .map(|(pglock, other)| pglock / other)
                .collect(),
        )
    };
    Line {
        what,
        unit,
        names: names.to_vec(),
        medians: times.iter().map(|t| median(t.clone())).collect(),
        ratios: (0..times.len()).map(ratio).collect(),
    }
}

/// Times `w`'s contenders in `blocks` rotating blocks of `n` rounds.
async fn interleave(t: &mut Target, w: Workload, blocks: usize, n: u32) -> Line {
    let names = w.contenders();
    let mut times = vec![Vec::new(); names.len()];
    for b in 0..blocks {
        t.pin().await;
        for turn in 0..names.len() {
            let who = (b + turn) % names.len();
            let (elapsed, _) = rounds(t, w, who, n, None).await;
            times[who].push(elapsed.as_secs_f64() * 1e6 / f64::from(n));
        }
    }
    line(w.name().to_owned(), "µs/round", names, &times)
}

/// pglock and raw sqlx taking turns on the same N sessions, in alternating blocks.
async fn sessions(url: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let who = [Contender::Pglock, Contender::Raw];
    let names = &["pglock", "raw sqlx"];
    let handoff_key = LockKey::from_name("pglock-bench/interleaved-handoff");
    for n in [2usize, 8, 32] {
        let mut conns = workloads::connections(url, n).await;
        for conn in &mut conns {
            pin::pin_conn(conn).await;
        }
        let mut times = vec![Vec::new(), Vec::new()];
        for contender in who {
            workloads::handoff_run(&mut conns, handoff_key, HANDOFFS, contender).await;
        }
        for b in 0..SESSION_BLOCKS {
            for turn in 0..2 {
                let i = (b + turn) % 2;
                let (t, acquisitions) =
                    workloads::handoff_run(&mut conns, handoff_key, HANDOFFS, who[i]).await;
                times[i].push(per(t, acquisitions));
            }
        }
        workloads::close(conns).await;
        lines.push(line(
            format!("contended handoff, N={n}"),
            "µs/handoff",
            names,
            &times,
        ));
    }
    let readers_key = LockKey::from_name("pglock-bench/interleaved-readers");
    let mut conns = workloads::connections(url, READERS).await;
    for conn in &mut conns {
        pin::pin_conn(conn).await;
    }
    let mut times = vec![Vec::new(), Vec::new()];
    for contender in who {
        workloads::readers_run(&mut conns, readers_key, 1, contender).await;
    }
    for b in 0..SESSION_BLOCKS {
        for turn in 0..2 {
            let i = (b + turn) % 2;
            let t = workloads::readers_run(&mut conns, readers_key, READER_ROUNDS, who[i]).await;
            times[i].push(per(t, READER_ROUNDS));
        }
    }
    workloads::close(conns).await;
    lines.push(line(
        format!("{READERS} shared readers at once"),
        "µs/round of 8",
        names,
        &times,
    ));
    lines
}

fn per(t: Duration, n: u64) -> f64 {
    t.as_secs_f64() * 1e6 / n as f64
}

/// Round trips (and requests) per round of every workload and contender, through the
/// counting proxy: (workload, contender, per-round tally).
async fn wire_counts(url: &str) -> Vec<(Workload, &'static str, Tally)> {
    let wire = WireCounter::start(url);
    let mut t = Target::connect(&wire.url(url)).await;
    let mut rows = Vec::new();
    for w in CYCLE_WORKLOADS.into_iter().chain(PAIR_WORKLOADS) {
        for (who, name) in w.contenders().iter().enumerate() {
            let (_, tally) = rounds(&mut t, w, who, COUNTED, Some(&wire)).await;
            rows.push((w, *name, tally));
        }
    }
    t.close().await;
    rows
}

fn print_lines(title: &str, lines: &[Line]) {
    println!();
    println!("{title}");
    println!();
    let third = lines.iter().find_map(|l| l.names.get(2).copied());
    match third {
        Some(third) => {
            println!(
                "| workload | unit | pglock | raw sqlx | {third} | pglock / raw | pglock / {third} |"
            );
            println!("|---|---|---:|---:|---:|---:|---:|");
        }
        None => {
            println!("| workload | unit | pglock | raw sqlx | pglock / raw |");
            println!("|---|---|---:|---:|---:|");
        }
    }
    for l in lines {
        let cost = |j: usize| {
            l.medians
                .get(j)
                .map_or("—".to_owned(), |v| format!("{v:.1}"))
        };
        let ratio = |j: usize| {
            l.ratios
                .get(j)
                .map_or("—".to_owned(), |r| format!("{r:.3}"))
        };
        let mut cells = vec![l.what.clone(), l.unit.to_owned(), cost(0), cost(1)];
        if let Some(third) = third {
            cells.push(match l.names.get(2) {
                None => "—".to_owned(),
                Some(name) if *name == third => cost(2),
                Some(name) => format!("{} ({name})", cost(2)),
            });
        }
        cells.push(ratio(1));
        if third.is_some() {
            cells.push(ratio(2));
        }
        println!("| {} |", cells.join(" | "));
    }
}

fn goal(what: &str, ratio: Option<f64>, limit: f64) {
    match ratio {
        Some(r) => println!(
            "- {what} ≤ {limit:.2}×: {r:.3}× — {}",
            if r <= limit { "met" } else { "MISSED" }
        ),
        None => println!("- {what} ≤ {limit:.2}×: not measured in this run"),
    }
}

fn main() {
    // First, so that every thread made later (the runtime's, pglock's timer) inherits it.
    pin::pin_self();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the Tokio runtime");
    rt.block_on(run());
}

async fn run() {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |s: &str| sections.is_empty() || sections.iter().any(|a| a == s);
    let db = support::database();
    let url = db.url.as_str();
    let mut admin = PgConnection::connect(url).await.expect("connect");
    let admin_pid = pin::pin_conn(&mut admin).await;
    if db.private {
        pin::pin_private_server(admin_pid);
    }
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut admin)
        .await
        .expect("server version");

    let mut cycles = Vec::new();
    let mut pairs = Vec::new();
    if wants("cycles") || wants("pairs") {
        let mut t = Target::connect(url).await;
        if wants("cycles") {
            for w in CYCLE_WORKLOADS {
                cycles.push(interleave(&mut t, w, CYCLE_BLOCKS, CYCLES).await);
            }
        }
        if wants("pairs") {
            for w in PAIR_WORKLOADS {
                pairs.push(interleave(&mut t, w, PAIR_BLOCKS, PAIRS).await);
            }
        }
        t.close().await;
    }
    let session_lines = match wants("sessions") {
        true => sessions(url).await,
        false => Vec::new(),
    };
    let counts = match wants("wire") {
        true => wire_counts(url).await,
        false => Vec::new(),
    };
    admin.close().await.ok();

    println!();
    println!("Server: {version}");
    println!("{}", pin::report());
    println!(
        "Interleaved: contenders alternate block by block in a rotating order (cycles: \
         {CYCLE_BLOCKS} blocks of {CYCLES}; pairs: {PAIR_BLOCKS} blocks of {PAIRS}; sessions: \
         {SESSION_BLOCKS} blocks of {HANDOFFS} handoffs or {READER_ROUNDS} reader rounds; cycles and \
         pairs: each block after two untimed rounds). Costs: each contender's median block; ratios: \
         medians of the per-block ratios."
    );
    if !cycles.is_empty() {
        print_lines(
            "Cycles (lifecycle: one-connection pool shared by pglock and raw sqlx; borrowed: one \
             connection)",
            &cycles,
        );
        for w in CYCLE_WORKLOADS {
            println!("  {}: raw sqlx = {}", w.name(), w.floor());
        }
    }
    if !pairs.is_empty() {
        print_lines(
            "Operation pairs on a free key, every contender on one connection",
            &pairs,
        );
    }
    if !session_lines.is_empty() {
        print_lines(
            "Several sessions (both contenders on the same N connections)",
            &session_lines,
        );
    }
    if !counts.is_empty() {
        println!();
        println!(
            "Round trips per round, counted on the wire ({COUNTED} rounds each after two \
             uncounted; requests: Sync + simple Query messages; a request sent before the \
             answer to an earlier one shares its round trip)"
        );
        println!();
        println!("| workload | contender | round trips | Sync | Query |");
        println!("|---|---|---:|---:|---:|");
        let per = |v: u64| format!("{:.2}", v as f64 / f64::from(COUNTED));
        for (w, name, tally) in &counts {
            println!(
                "| {} | {name} | {} | {} | {} |",
                w.name(),
                per(tally.round_trips),
                per(tally.syncs),
                per(tally.queries)
            );
        }
    }
    let find = |lines: &[Line], w: Workload, j: usize| {
        lines
            .iter()
            .find(|l| l.what == w.name())
            .and_then(|l| l.ratios.get(j).copied())
    };
    println!();
    println!("Goals:");
    goal("lifecycle / raw cycle", find(&cycles, Lifecycle, 1), 1.05);
    goal(
        "borrowed cycle / its floor",
        find(&cycles, Borrowed, 1),
        1.05,
    );
    goal("try_lock+unlock / raw", find(&pairs, TryLock, 1), 1.02);
    goal(
        "try_lock+unlock / PgAdvisoryLock",
        find(&pairs, TryLock, 2),
        1.00,
    );
}

//! What bounding one statement costs: `cargo bench --bench timer` prints a table.
//!
//! Every statement a lock sends runs under `timer::timeout(30 s, statement)`: a deadline
//! registered on the first poll and dropped when the statement answers, long before it
//! fires. This bench measures that register-poll-deregister cycle with pglock's own
//! timer (`src/timer.rs`, compiled in here as it is, not copied) against the
//! runtime-agnostic crates that could replace it, `futures-timer` and `async-io` (whose
//! `Timer` drives a reactor thread of its own), the way pglock would use them: the same
//! `timeout` over their sleep future.
//!
//! Contenders alternate in short blocks (rotating order), and a table line reports the
//! median per-block cost of each and the median of the per-block ratios to ours, so a
//! change in load on this shared machine hits every contender alike. Lines:
//!
//! - **tight**: one thread, cycle after cycle; the timer's own cost per cycle.
//! - **tight, 1000 pending**: the same with 1000 other 30 s deadlines registered, as
//!   when many tasks have statements in flight.
//! - **tight, 2 threads**: two threads cycling at once on the shared timer.
//! - **spaced**: one cycle per 50 µs, the pace of statements (a round trip is 20–100 µs
//!   here); only the register and deregister parts are timed (they include boxing the
//!   future, the same allocation for every contender). A timer whose helper
//!   thread goes back to sleep between statements pays to wake it every time; in a tight
//!   loop that cost hides, because the helper is still awake from the previous cycle.
//! - **end to end**: a `pg_try_advisory_lock` + `pg_advisory_unlock` pair on one
//!   connection (current-thread Tokio), each statement bounded by each timer, and
//!   unbounded as the floor; pglock's own `try_lock` + `unlock` (ours) for reference.

mod support;

/// pglock's timer, the file itself (its unit test is not compiled here, its import is).
#[path = "../src/timer.rs"]
#[allow(unused_imports, dead_code)]
mod timer;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, LockKey};
use sqlx::{Connection, PgConnection};

use support::raw;

/// The statement bound pglock uses (`LockOptions::operation_timeout`).
const LIMIT: Duration = Duration::from_secs(30);
const BLOCKS: usize = 41;
/// Cycles per block: tight lines, spaced lines, end-to-end pairs.
const TIGHT: u32 = 4000;
/// Per thread: long enough that the two threads overlap for most of the block.
const CONTENDED: u32 = 20_000;
const SPACED: u32 = 200;
const GAP: Duration = Duration::from_micros(50);
const PAIRS: u32 = 100;
const PENDING: usize = 1000;

/// `timeout` over futures-timer's `Delay`, as a wrapper in src/timer.rs would be.
async fn futures_timer_timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut delay = futures_timer::Delay::new(limit);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(&mut delay).poll(cx).map(|()| None)
    })
    .await
}

/// `timeout` over async-io's `Timer` (smol's).
async fn async_io_timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut delay = smol::Timer::after(limit);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(&mut delay).poll(cx).map(|_| None)
    })
    .await
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Ours,
    FuturesTimer,
    AsyncIo,
    Unbounded,
    PglockOurs,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Ours => "ours",
            Which::FuturesTimer => "futures-timer",
            Which::AsyncIo => "async-io",
            Which::Unbounded => "unbounded",
            Which::PglockOurs => "pglock try_lock+unlock",
        }
    }
}

const TIMERS: [Which; 3] = [Which::Ours, Which::FuturesTimer, Which::AsyncIo];

/// A statement that answers on its second poll.
struct AnswersOnSecondPoll(bool);

impl Future for AnswersOnSecondPoll {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// `timeout(LIMIT, AnswersOnSecondPoll)` with `which`'s timer, first poll done (the
/// deadline registered).
fn registered(which: Which, cx: &mut Context<'_>) -> Pin<Box<dyn Future<Output = Option<()>>>> {
    let statement = AnswersOnSecondPoll(false);
    let mut bounded: Pin<Box<dyn Future<Output = Option<()>>>> = match which {
        Which::Ours => Box::pin(timer::timeout(LIMIT, statement)),
        Which::FuturesTimer => Box::pin(futures_timer_timeout(LIMIT, statement)),
        _ => Box::pin(async_io_timeout(LIMIT, statement)),
    };
    assert!(bounded.as_mut().poll(cx).is_pending());
    bounded
}

/// Register, poll, answer, deregister: one statement's timer work, in place (no box, so
/// the box of [`registered`] does not count).
macro_rules! cycle {
    ($timeout:expr, $cx:expr) => {{
        let mut bounded = pin!($timeout(LIMIT, AnswersOnSecondPoll(false)));
        assert!(bounded.as_mut().poll($cx).is_pending());
        assert_eq!(bounded.as_mut().poll($cx), Poll::Ready(Some(())));
    }};
}

/// ns per cycle over `n` tight cycles.
fn tight(which: Which, n: u32) -> f64 {
    let mut cx = Context::from_waker(Waker::noop());
    let start = Instant::now();
    for _ in 0..n {
        match which {
            Which::Ours => cycle!(timer::timeout, &mut cx),
            Which::FuturesTimer => cycle!(futures_timer_timeout, &mut cx),
            _ => cycle!(async_io_timeout, &mut cx),
        }
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(n)
}

/// ns per cycle, two threads cycling at once (mean of the two).
fn contended(which: Which) -> f64 {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    tight(which, CONTENDED)
                })
            })
            .collect();
        let times: Vec<f64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        times.iter().sum::<f64>() / 2.0
    })
}

/// ns per cycle, one cycle per [`GAP`], only the timer's work timed.
fn spaced(which: Which) -> f64 {
    let mut cx = Context::from_waker(Waker::noop());
    let mut timed = Duration::ZERO;
    for _ in 0..SPACED {
        let t0 = Instant::now();
        let mut bounded = registered(which, &mut cx);
        let t1 = Instant::now();
        // The statement's round trip: the helper thread, if any, has time to sleep again.
        while t1.elapsed() < GAP {
            std::hint::spin_loop();
        }
        let t2 = Instant::now();
        assert_eq!(bounded.as_mut().poll(&mut cx), Poll::Ready(Some(())));
        drop(bounded);
        timed += t1 - t0 + t2.elapsed();
    }
    timed.as_secs_f64() * 1e9 / f64::from(SPACED)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

struct Line {
    what: &'static str,
    unit: &'static str,
    whos: Vec<Which>,
    times: Vec<Vec<f64>>,
}

impl Line {
    fn print(&self) {
        for (i, who) in self.whos.iter().enumerate() {
            let ratio = median(
                self.times[i]
                    .iter()
                    .zip(&self.times[0])
                    .map(|(t, ours)| t / ours)
                    .collect(),
            );
            println!(
                "| {} | {} | {} | {:.0} | {:.3} |",
                self.what,
                who.name(),
                self.unit,
                median(self.times[i].clone()),
                ratio
            );
        }
    }
}

/// Blocks of `run`, contenders in rotating order; one untimed round each first.
fn interleave(what: &'static str, unit: &'static str, run: impl Fn(Which) -> f64) -> Line {
    let whos = TIMERS.to_vec();
    whos.iter().for_each(|&w| {
        run(w);
    });
    let mut times = vec![Vec::new(); whos.len()];
    for b in 0..BLOCKS {
        for turn in 0..whos.len() {
            let i = (b + turn) % whos.len();
            times[i].push(run(whos[i]));
        }
    }
    Line {
        what,
        unit,
        whos,
        times,
    }
}

/// One statement bounded by `which`'s timer (or not at all).
macro_rules! bounded {
    ($which:expr, $statement:expr) => {
        match $which {
            Which::Ours => timer::timeout(LIMIT, $statement).await,
            Which::FuturesTimer => futures_timer_timeout(LIMIT, $statement).await,
            Which::AsyncIo => async_io_timeout(LIMIT, $statement).await,
            _ => Some($statement.await),
        }
        .expect("answered within the bound")
    };
}

/// µs per pair over `PAIRS` pairs, after one untimed pair.
async fn pairs(conn: &mut PgConnection, key: LockKey, which: Which) -> f64 {
    let k = raw::big(key);
    if which == Which::PglockOurs {
        let mut lock = AdvisoryLock::with_connection(&mut *conn, key);
        let mut start = Instant::now();
        for i in 0..=PAIRS {
            if i == 1 {
                start = Instant::now();
            }
            assert!(lock.try_lock().await.unwrap());
            lock.unlock().await.unwrap();
        }
        return start.elapsed().as_secs_f64() * 1e6 / f64::from(PAIRS);
    }
    let mut start = Instant::now();
    for i in 0..=PAIRS {
        if i == 1 {
            start = Instant::now();
        }
        assert!(bounded!(which, raw::try_lock(conn, k)));
        bounded!(which, raw::unlock(conn, k));
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(PAIRS)
}

async fn end_to_end(conn: &mut PgConnection) -> Line {
    let key = LockKey::from_name("pglock-bench/timer");
    let whos = vec![
        Which::Ours,
        Which::FuturesTimer,
        Which::AsyncIo,
        Which::Unbounded,
        Which::PglockOurs,
    ];
    for &w in &whos {
        pairs(conn, key, w).await;
    }
    let mut times = vec![Vec::new(); whos.len()];
    for b in 0..BLOCKS {
        for turn in 0..whos.len() {
            let i = (b + turn) % whos.len();
            times[i].push(pairs(conn, key, whos[i]).await);
        }
    }
    Line {
        what: "end to end: try_lock+unlock, 1 connection",
        unit: "µs/pair",
        whos,
        times,
    }
}

fn main() {
    let started = Instant::now();
    let mut lines = vec![
        interleave("tight", "ns/cycle", |w| tight(w, TIGHT)),
        interleave("spaced (one per 50 µs)", "ns/cycle", spaced),
        interleave("tight, 2 threads", "ns/cycle", contended),
    ];
    {
        // Other statements in flight: their deadlines stay registered for this line.
        let mut cx = Context::from_waker(Waker::noop());
        let _pending: Vec<_> = TIMERS
            .iter()
            .flat_map(|&w| (0..PENDING).map(move |_| w))
            .map(|w| registered(w, &mut cx))
            .collect();
        lines.push(interleave("tight, 1000 pending", "ns/cycle", |w| {
            tight(w, TIGHT)
        }));
    }
    let url = support::database_url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    lines.push(runtime.block_on(async {
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        let line = end_to_end(&mut conn).await;
        conn.close().await.ok();
        line
    }));

    println!();
    println!(
        "Timer per statement bound: {BLOCKS} blocks per contender, alternating (tight: \
         {TIGHT} cycles a block, {CONTENDED} per thread with 2; spaced: {SPACED}; end to \
         end: {PAIRS} pairs). Medians of the per-block costs, and of the per-block \
         ratios to ours. {:.0} s in all.",
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("| line | timer | unit | median | / ours |");
    println!("|---|---|---|---:|---:|");
    for line in &lines {
        line.print();
    }
}

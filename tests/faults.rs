//! Fault injection: locks doing random operations through a TCP proxy that cuts their
//! connections at random moments (holding idle, waiting for a key, mid-acquire,
//! mid-release), with a fixed-seed PRNG so a failing run can be replayed.
//!
//! Each cycle, every lock does one random operation (blocking `lock` under a short
//! `rt::timeout` of the test's, `try_lock`, `try_lock_for(50 ms)`, `unlock`, `is_held`,
//! `lost()` for a moment, `close`, drop), side by side, while the proxy may cut every
//! connection or one of them: before the operations start, or a few milliseconds in.
//! After the cycle the test asks the server which lock sessions hold a level.
//!
//! What must hold:
//! - every operation returns within its bound (the operation timeout plus a margin, a
//!   timed wait's own timeout on top; a cancelled `lock()` promptly); every call is
//!   wrapped in `rt::timeout` and a hang fails the test;
//! - a level that was cut is reported: when the server shows that a lock which believes
//!   it holds levels holds none (or every connection was cut while it sat holding), its
//!   next operation that talks to the server finds it: an acquisition then works on a new
//!   session, and anything else returns `Err(LockLost)`, never `Ok`; a cancelled `lock()`
//!   that ended a session holding levels is found by the next operation the same way;
//! - a loss stays reported until accounted for (the rules of `DistributedLock`): the test
//!   keeps its own count of the levels lost and not yet accounted for, and checks that
//!   `is_held`, `lost` and `close` report them, that each unlock pairing with one reports
//!   it, that `NotHeld` comes only when a mode has neither a live nor a lost level, and
//!   that acquisitions work again once the loss was reported;
//! - no error without a cause: `LockLost` and connection errors only after a cut; a held
//!   level is never reported as a mere connection error; `is_held` agrees with the lock's
//!   own record; `NotHeld` only when the mode holds nothing;
//! - at the end, with every lock closed or dropped, no session holds the test keys
//!   (within 2 s).
//!
//! `PGLOCK_FAULT_CYCLES` sets the number of cycles (1,000 by default, for CI);
//! `PGLOCK_FAULT_SEED` the seed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future::zip;
use pglock::{AdvisoryLock, Error, LockKey, LockOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use support::proxy::Proxy;
use support::rt;

const LOCKS: usize = 4;
const DEFAULT_CYCLES: usize = 1_000;
const DEFAULT_SEED: u64 = 0xddc0_ffee_2024;
/// The locks' operation timeout: short, so that a hang would show within the run.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
const LOST_CHECK_INTERVAL: Duration = Duration::from_millis(200);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling slack on every bound.
const MARGIN: Duration = Duration::from_secs(1);
const TIMED_WAIT: Duration = Duration::from_millis(50);
/// How long, after everything is closed, the server may take to free the keys.
const FREED_WITHIN: Duration = Duration::from_secs(2);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
        })
        .unwrap_or(default)
}

/// xorshift64: a fixed seed gives the same choices on every run.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Blocking `lock()`, given up (the future dropped) after `cancel`.
    Lock {
        cancel: Duration,
    },
    LockShared {
        cancel: Duration,
    },
    TryLock,
    TryLockShared,
    TryLockFor,
    Unlock,
    UnlockShared,
    IsHeld,
    /// `lost()` raced against a window of the test's.
    Lost {
        window: Duration,
    },
    Close,
    Drop,
    /// The lock is gone (closed, dropped, or could not be made): make a new one.
    Create,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Lock { .. } => "lock",
            Op::LockShared { .. } => "lock_shared",
            Op::TryLock => "try_lock",
            Op::TryLockShared => "try_lock_shared",
            Op::TryLockFor => "try_lock_for",
            Op::Unlock => "unlock",
            Op::UnlockShared => "unlock_shared",
            Op::IsHeld => "is_held",
            Op::Lost { .. } => "lost",
            Op::Close => "close",
            Op::Drop => "drop",
            Op::Create => "new",
        }
    }

    /// How long the call may take before it counts as hung.
    fn bound(self) -> Duration {
        match self {
            Op::Lock { cancel } | Op::LockShared { cancel } => cancel + MARGIN,
            Op::Lost { window } => window + MARGIN,
            Op::TryLockFor => TIMED_WAIT + OP_TIMEOUT + MARGIN,
            Op::Create => ACQUIRE_TIMEOUT + MARGIN,
            _ => OP_TIMEOUT + MARGIN,
        }
    }

    fn phase(self, waiting: bool) -> Phase {
        match self {
            Op::Lock { .. } | Op::LockShared { .. } if waiting => Phase::Waiting,
            Op::Lock { .. }
            | Op::LockShared { .. }
            | Op::TryLock
            | Op::TryLockShared
            | Op::TryLockFor
            | Op::Create => Phase::Acquiring,
            Op::Unlock | Op::UnlockShared | Op::Close | Op::Drop => Phase::Releasing,
            Op::IsHeld | Op::Lost { .. } => Phase::Checking,
        }
    }
}

/// What a lock was doing when a cut came, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    IdleEmpty = 0,
    IdleHolding = 1,
    Waiting = 2,
    Acquiring = 3,
    Releasing = 4,
    Checking = 5,
}

const PHASE_NAMES: [&str; 6] = [
    "idle, holding nothing",
    "holding idle",
    "waiting for a held key",
    "mid-acquire",
    "mid-release",
    "mid-check",
];

/// One lock of the run and what the test knows about it.
struct Slot {
    index: usize,
    key: LockKey,
    lock: Option<AdvisoryLock>,
    rng: XorShift,
    /// A cancelled `lock()` ended a session that held these levels: the next operation
    /// must find them lost.
    owed: Option<(u32, u32)>,
    /// The server no longer has these levels the lock believes it holds (or every
    /// connection was cut while it sat holding): the next operation that talks to the
    /// server must report `LockLost`.
    expect: Option<(u32, u32)>,
    /// Levels the lock found lost and no unlock has accounted for yet: `is_held`, `lost`
    /// and `close` must report `LockLost` while any is left.
    lost: (u32, u32),
    /// The proxy's cut count when the last operation that heard from the server (or
    /// left the lock to take a fresh, pinged, pool connection) began: an error needs a
    /// cut after it. Operations answered from the lock's own record (`NotHeld`, `lost()`
    /// with nothing held) do not move it.
    cut_mark: u64,
    /// The last few operations, for a failure's message.
    history: std::collections::VecDeque<String>,
}

impl Slot {
    fn levels(&self) -> (u32, u32) {
        self.lock
            .as_ref()
            .map_or((0, 0), |l| (l.exclusive_levels(), l.shared_levels()))
    }

    fn holds(&self) -> bool {
        self.levels() != (0, 0)
    }

    /// A new lock, or none: nothing lost, nothing owed.
    fn reset(&mut self) {
        self.owed = None;
        self.expect = None;
        self.lost = (0, 0);
    }

    fn choose(&mut self) -> Op {
        if self.lock.is_none() {
            return Op::Create;
        }
        let (ex, sh) = self.levels();
        let rng = &mut self.rng;
        // Stacks stay short: past three levels, mostly release.
        if ex + sh >= 3 && rng.below(4) != 0 {
            return if ex > 0 { Op::Unlock } else { Op::UnlockShared };
        }
        let cancel = rng.millis(5, 40);
        let weighted = [
            (12, Op::Lock { cancel }),
            (8, Op::LockShared { cancel }),
            (12, Op::TryLock),
            (8, Op::TryLockShared),
            (10, Op::TryLockFor),
            (if ex > 0 { 18 } else { 2 }, Op::Unlock),
            (if sh > 0 { 12 } else { 1 }, Op::UnlockShared),
            (10, Op::IsHeld),
            (
                2,
                Op::Lost {
                    window: rng.millis(0, 300),
                },
            ),
            (3, Op::Close),
            (3, Op::Drop),
        ];
        let total: u64 = weighted.iter().map(|(w, _)| w).sum();
        let mut pick = rng.below(total);
        for (weight, op) in weighted {
            if pick < weight {
                return op;
            }
            pick -= weight;
        }
        unreachable!()
    }
}

/// What the run counts.
#[derive(Default)]
struct Stats {
    ops: BTreeMap<&'static str, u64>,
    max_latency: BTreeMap<&'static str, Duration>,
    /// The longest a cancelled `lock()` took past its cancel time to return.
    max_cancel_overshoot: Duration,
    outcomes: BTreeMap<String, u64>,
    losses_reported: u64,
    /// Of those, losses the test knew of beforehand (server check, cut while idle).
    expected_losses_reported: u64,
    /// Losses the server confirmed between cycles (then reported by the next call).
    server_confirmed_losses: u64,
    cancellations: u64,
    cancellations_holding: u64,
    cut_phases: [u64; 6],
    cuts_before_ops: u64,
    cuts_during_ops: u64,
}

/// What one operation returned.
enum Outcome {
    Value(Option<bool>),
    Failed(Error),
    /// The test's own timeout ended it (a blocking `lock`, or the `lost()` window).
    GaveUp,
}

struct Ctx {
    proxy: Proxy,
    pool: PgPool,
    options: LockOptions,
    app_prefix: String,
    phases: [AtomicU8; LOCKS],
}

impl Ctx {
    fn set_phase(&self, index: usize, phase: Phase) {
        self.phases[index].store(phase as u8, Ordering::SeqCst);
    }

    async fn new_lock(&self, slot: &Slot) -> pglock::Result<AdvisoryLock> {
        let options = self
            .options
            .clone()
            .application_name(format!("{}{}", self.app_prefix, slot.index));
        AdvisoryLock::new(&self.pool, slot.key)
            .await
            .map(|lock| lock.with_options(options))
    }
}

/// One operation on one lock, bounded and checked. Returns what to count.
async fn step(ctx: &Ctx, slot: &mut Slot, op: Op, others_hold_key: bool) -> Record {
    let cuts_before = ctx.proxy.cuts();
    let cut_since_mark = |slot: &Slot| ctx.proxy.cuts() > slot.cut_mark;
    let (ex0, sh0) = slot.levels();
    let held_before = ex0 + sh0 > 0;
    ctx.set_phase(slot.index, op.phase(others_hold_key));
    let start = Instant::now();
    let i = slot.index;
    let hung = |what: &str| -> ! {
        panic!(
            "lock {i}: {what} did not return within {:?} (levels before: {ex0} exclusive, \
             {sh0} shared)",
            op.bound()
        )
    };

    let outcome = match op {
        Op::Create => {
            let made = rt::timeout(op.bound(), ctx.new_lock(slot))
                .await
                .unwrap_or_else(|| hung("AdvisoryLock::new"));
            match made {
                Ok(lock) => {
                    slot.lock = Some(lock);
                    slot.reset();
                    Outcome::Value(None)
                }
                Err(err) => Outcome::Failed(err),
            }
        }
        Op::Drop => {
            slot.lock = None;
            Outcome::Value(None)
        }
        _ => {
            let lock = slot.lock.as_mut().expect("a lock to operate on");
            // Boxed: the futures of every operation side by side are large for a stack.
            let bounded = Box::pin(async {
                match op {
                    Op::Lock { cancel } => match rt::timeout(cancel, lock.lock()).await {
                        Some(r) => r.map(|()| None::<bool>).into(),
                        None => Outcome::GaveUp,
                    },
                    Op::LockShared { cancel } => {
                        match rt::timeout(cancel, lock.lock_shared()).await {
                            Some(r) => r.map(|()| None::<bool>).into(),
                            None => Outcome::GaveUp,
                        }
                    }
                    Op::TryLock => lock.try_lock().await.map(Some).into(),
                    Op::TryLockShared => lock.try_lock_shared().await.map(Some).into(),
                    Op::TryLockFor => lock.try_lock_for(TIMED_WAIT).await.map(Some).into(),
                    Op::Unlock => lock.unlock().await.map(|()| None::<bool>).into(),
                    Op::UnlockShared => lock.unlock_shared().await.map(|()| None::<bool>).into(),
                    Op::IsHeld => lock.is_held().await.map(Some).into(),
                    Op::Close => lock.close().await.map(|()| None::<bool>).into(),
                    Op::Lost { window } => match rt::timeout(window, lock.lost()).await {
                        Some(err) => Outcome::Failed(err),
                        None => Outcome::GaveUp,
                    },
                    Op::Drop | Op::Create => unreachable!(),
                }
            });
            rt::timeout(op.bound(), bounded)
                .await
                .unwrap_or_else(|| hung(op.name()))
        }
    };
    let latency = start.elapsed();
    let (ex1, sh1) = slot.levels();
    let held_after = ex1 + sh1 > 0;
    ctx.set_phase(
        i,
        if held_after {
            Phase::IdleHolding
        } else {
            Phase::IdleEmpty
        },
    );

    // Whether this operation heard from the session (or ended it): see `Slot::cut_mark`.
    let mut heard_from_server = op != Op::Drop;
    let mut record = Record {
        op: op.name(),
        latency,
        cancel_overshoot: None,
        outcome: String::new(),
        lost: false,
        expected_lost: false,
        cancelled_holding: false,
    };
    let what = format!(
        "lock {i} {} (levels before {ex0}/{sh0}, after {ex1}/{sh1}; owed loss {:?}, expected \
         loss {:?}, lost {:?}; cuts {cuts_before} at the start, {} now, {} at the previous \
         operation's start; latest first: {:?})",
        op.name(),
        slot.owed,
        slot.expect,
        slot.lost,
        ctx.proxy.cuts(),
        slot.cut_mark,
        slot.history,
    );
    match outcome {
        Outcome::Value(value) => {
            record.outcome = match value {
                Some(v) => format!("Ok({v})"),
                None => "Ok".to_owned(),
            };
            // The level an acquisition added.
            let grant = match (op, value) {
                (Op::Lock { .. }, _) | (Op::TryLock | Op::TryLockFor, Some(true)) => (1, 0),
                (Op::LockShared { .. }, _) | (Op::TryLockShared, Some(true)) => (0, 1),
                _ => (0, 0),
            };
            let acquisition = matches!(
                op,
                Op::Lock { .. }
                    | Op::LockShared { .. }
                    | Op::TryLock
                    | Op::TryLockShared
                    | Op::TryLockFor
            );
            let mut base = (ex0, sh0);
            if acquisition {
                // An acquisition after a loss works, on a new session: the loss it found on
                // the way stays counted, for the unlocks, is_held, lost and close to report.
                if let Some(owed) = slot.owed.take() {
                    slot.lost = add(slot.lost, owed);
                }
                if held_before && (ex1, sh1) == grant {
                    assert!(
                        slot.expect.is_some() || cut_since_mark(slot),
                        "{what}: levels gone without a cut since they were last confirmed"
                    );
                    slot.lost = add(slot.lost, (ex0, sh0));
                    slot.expect = None;
                    base = (0, 0);
                }
            }
            if op != Op::Drop && op != Op::Create {
                assert!(
                    slot.owed.is_none(),
                    "{what}: Ok after a cancelled lock() ended a session holding levels; \
                     the loss was never found"
                );
                assert!(
                    slot.expect.is_none(),
                    "{what}: Ok although the lock's levels are gone from the server: a lost \
                     hold silently continued"
                );
                if matches!(op, Op::IsHeld | Op::Close) {
                    assert_eq!(
                        slot.lost,
                        (0, 0),
                        "{what}: Ok with lost levels not yet accounted for"
                    );
                }
            }
            let expected = match op {
                Op::Unlock => (ex0 - 1, sh0),
                Op::UnlockShared => (ex0, sh0 - 1),
                Op::Close | Op::Drop | Op::Create => (0, 0),
                _ => add(base, grant),
            };
            assert_eq!(
                (ex1, sh1),
                expected,
                "{what}: levels after {}",
                record.outcome
            );
            if op == Op::IsHeld {
                assert_eq!(
                    value,
                    Some(held_before),
                    "{what}: is_held disagrees with the lock's own record"
                );
            }
        }
        Outcome::GaveUp => {
            record.outcome = "gave up".to_owned();
            match op {
                Op::Lock { cancel } | Op::LockShared { cancel } => {
                    record.cancel_overshoot = Some(latency.saturating_sub(cancel));
                    // A cancelled acquisition ends the session, levels and all.
                    assert_eq!(
                        (ex1, sh1),
                        (0, 0),
                        "{what}: a cancelled lock() ends the session"
                    );
                    // The live levels before it (known lost on the server, or not) went
                    // with the ended session.
                    if held_before {
                        slot.owed = Some(add(slot.owed.unwrap_or_default(), (ex0, sh0)));
                        record.cancelled_holding = true;
                    }
                    slot.expect = None;
                }
                Op::Lost { .. } => {
                    assert_eq!(
                        (ex1, sh1),
                        (ex0, sh0),
                        "{what}: dropping lost() changes nothing"
                    );
                }
                _ => unreachable!(),
            }
        }
        Outcome::Failed(err) => {
            record.outcome = error_kind(&err);
            match &err {
                Error::LockLost { key } => {
                    assert_eq!(*key, slot.key, "{what}: LockLost names the key");
                    let known = slot.owed.is_some() || slot.expect.is_some();
                    // Found lost now: a session a cancelled call ended (any call sees it),
                    // or the live levels, gone from the server or cut since confirmed.
                    let mut discovered = false;
                    if let Some(owed) = slot.owed.take() {
                        slot.lost = add(slot.lost, owed);
                        discovered = true;
                    }
                    // (`close` ends with no live level anyway: with lost levels to report,
                    // its LockLost says nothing of the live ones.)
                    let closing_with_lost = op == Op::Close && slot.lost != (0, 0);
                    if held_before && (ex1, sh1) == (0, 0) && !closing_with_lost {
                        assert!(
                            slot.expect.is_some() || cut_since_mark(slot),
                            "{what}: LockLost without a cut since the levels were last confirmed"
                        );
                        slot.lost = add(slot.lost, (ex0, sh0));
                        slot.expect = None;
                        discovered = true;
                    } else {
                        // Answered from the lock's own record: no word from the server.
                        heard_from_server = false;
                    }
                    if !discovered && op != Op::Close {
                        assert_eq!(
                            (ex1, sh1),
                            (ex0, sh0),
                            "{what}: a reported loss changes no live level"
                        );
                    }
                    // Reported as a loss already found: it stays reported, and an unlock
                    // with no live level of its mode pairs with a lost one.
                    let pairs_with_lost = match op {
                        Op::Unlock => ex1 == 0 && slot.lost.0 > 0,
                        Op::UnlockShared => sh1 == 0 && slot.lost.1 > 0,
                        _ => false,
                    };
                    let sticky = pairs_with_lost
                        || (matches!(op, Op::IsHeld | Op::Close | Op::Lost { .. })
                            && slot.lost != (0, 0));
                    assert!(
                        discovered || sticky,
                        "{what}: LockLost without a loss to report"
                    );
                    match op {
                        Op::Unlock | Op::UnlockShared => {
                            assert!(
                                pairs_with_lost,
                                "{what}: an unlock's LockLost pairs with a lost level"
                            );
                            match op {
                                Op::Unlock => slot.lost.0 -= 1,
                                _ => slot.lost.1 -= 1,
                            }
                        }
                        Op::Close => slot.lost = (0, 0),
                        _ => {}
                    }
                    record.lost = true;
                    record.expected_lost = discovered && known;
                }
                Error::NotHeld { .. } => {
                    heard_from_server = false;
                    // A loss the call is the first to see still counts (silently here).
                    if let Some(owed) = slot.owed.take() {
                        slot.lost = add(slot.lost, owed);
                    }
                    let empty_mode = match op {
                        Op::Unlock => ex0 == 0 && slot.lost.0 == 0,
                        Op::UnlockShared => sh0 == 0 && slot.lost.1 == 0,
                        Op::Lost { .. } => !held_before && slot.lost == (0, 0),
                        _ => false,
                    };
                    assert!(
                        empty_mode,
                        "{what}: NotHeld with a live or lost level of the mode"
                    );
                    assert_eq!((ex1, sh1), (ex0, sh0), "{what}: NotHeld changes nothing");
                }
                Error::Database(_) | Error::Unresponsive { .. } => {
                    // A loss a cancelled call left may have been found by that call already
                    // (then this one has nothing new to say): it is counted either way.
                    if let Some(owed) = slot.owed.take() {
                        slot.lost = add(slot.lost, owed);
                    }
                    assert!(
                        !held_before && slot.expect.is_none(),
                        "{what}: a lost level reported as {err:?} instead of LockLost"
                    );
                    assert!(
                        cut_since_mark(slot),
                        "{what}: {err:?} without any cut since the previous operation"
                    );
                    assert_eq!((ex1, sh1), (0, 0), "{what}");
                }
                Error::Deadlock { .. } => {
                    assert_eq!((ex1, sh1), (ex0, sh0), "{what}: a deadlock changes nothing");
                }
                _ => panic!("{what}: unexpected {err:?}"),
            }
        }
    }
    if matches!(op, Op::Close) {
        slot.lock = None;
    }
    if slot.lock.is_none() {
        slot.reset();
    }
    if heard_from_server {
        slot.cut_mark = cuts_before;
    }
    slot.history.push_front(format!(
        "{} -> {} ({ex0}/{sh0} -> {ex1}/{sh1}, cuts {cuts_before}..{}, {latency:?})",
        op.name(),
        record.outcome,
        ctx.proxy.cuts()
    ));
    slot.history.truncate(6);
    record
}

/// Levels per mode, added.
fn add(a: (u32, u32), b: (u32, u32)) -> (u32, u32) {
    (a.0 + b.0, a.1 + b.1)
}

struct Record {
    op: &'static str,
    latency: Duration,
    cancel_overshoot: Option<Duration>,
    outcome: String,
    lost: bool,
    expected_lost: bool,
    cancelled_holding: bool,
}

fn error_kind(err: &Error) -> String {
    match err {
        Error::Database(db) => {
            let s = format!("{db:?}");
            let end = s.find(['(', ' ', '{']).unwrap_or(s.len());
            format!("Database({})", &s[..end])
        }
        other => {
            let s = format!("{other:?}");
            let end = s.find([' ', '{', '(']).unwrap_or(s.len());
            s[..end].to_owned()
        }
    }
}

impl<T> From<pglock::Result<T>> for Outcome
where
    T: Into<Option<bool>>,
{
    fn from(result: pglock::Result<T>) -> Self {
        match result {
            Ok(v) => Outcome::Value(v.into()),
            Err(err) => Outcome::Failed(err),
        }
    }
}

/// The lock indices whose sessions (named `<prefix><index>`) hold an advisory lock now.
async fn sessions_holding(observer: &mut PgConnection, prefix: &str) -> BTreeSet<usize> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT a.application_name FROM pg_locks l \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND starts_with(a.application_name, $1)",
    )
    .bind(prefix)
    .fetch_all(observer)
    .await
    .expect("ask the server who holds");
    names
        .iter()
        .filter_map(|name| name[prefix.len()..].parse().ok())
        .collect()
}

#[test]
fn random_operations_under_random_cuts_never_hang_and_never_hide_a_loss() {
    rt::run(async {
        let cycles: usize = env_or("PGLOCK_FAULT_CYCLES", DEFAULT_CYCLES);
        let seed: u64 = env_or("PGLOCK_FAULT_SEED", DEFAULT_SEED);
        let started = Instant::now();
        let proxy = Proxy::start();
        let pool = PgPoolOptions::new()
            .max_connections(LOCKS as u32 * 3)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(proxy.connect_options())
            .await
            .expect("a pool through the proxy");
        let ctx = Ctx {
            proxy,
            pool,
            options: LockOptions::new()
                .operation_timeout(OP_TIMEOUT)
                .lost_check_interval(LOST_CHECK_INTERVAL)
                .check_timeout(CHECK_TIMEOUT)
                .client_connection_check_interval(Duration::from_millis(200)),
            app_prefix: format!("pglock-faults-{}-", std::process::id()),
            phases: Default::default(),
        };
        let keys = [support::key("faults/a"), support::key("faults/b")];
        let mut rng = XorShift::new(seed);
        let mut slots: Vec<Slot> = (0..LOCKS)
            .map(|index| Slot {
                index,
                key: keys[index % keys.len()],
                lock: None,
                rng: XorShift::new(seed ^ (0x9e37_79b9 * (index as u64 + 1))),
                owed: None,
                expect: None,
                lost: (0, 0),
                cut_mark: 0,
                history: Default::default(),
            })
            .collect();
        let mut observer = support::connect().await;
        let mut stats = Stats::default();

        for _cycle in 0..cycles {
            // Where the cut (if any) lands this cycle.
            let roll = rng.below(100);
            let cut_all = rng.below(3) != 0;
            let victim = rng.next();
            let delay = Duration::from_micros(rng.below(8_000));
            let cut_now = |stats: &mut Stats| {
                for phase in &ctx.phases {
                    stats.cut_phases[phase.load(Ordering::SeqCst) as usize] += 1;
                }
                if cut_all {
                    ctx.proxy.cut_all() > 0
                } else {
                    ctx.proxy.cut_random(victim)
                }
            };
            if roll < 12 {
                // Between operations: every lock that holds levels is holding idle.
                if cut_now(&mut stats) {
                    stats.cuts_before_ops += 1;
                    if cut_all {
                        for slot in slots.iter_mut().filter(|s| s.holds()) {
                            slot.expect = Some(slot.levels());
                        }
                    }
                }
            }
            let cut_during = (12..45).contains(&roll);

            let ops: Vec<Op> = slots.iter_mut().map(Slot::choose).collect();
            let holds_by_key = |slots: &[Slot], me: usize| {
                slots
                    .iter()
                    .any(|s| s.index != me && s.key == slots[me].key && s.holds())
            };
            let waiting: Vec<bool> = (0..LOCKS).map(|i| holds_by_key(&slots, i)).collect();
            let [s0, s1, s2, s3] = &mut slots[..] else {
                unreachable!("four locks")
            };
            let ctx_ref = &ctx;
            let cutter = async {
                if cut_during {
                    rt::sleep(delay).await;
                    let mut local = Stats::default();
                    let cut = cut_now(&mut local);
                    (cut, local.cut_phases)
                } else {
                    (false, [0; 6])
                }
            };
            let ((r0, r1), ((r2, r3), (cut, phases))) = zip(
                zip(
                    Box::pin(step(ctx_ref, s0, ops[0], waiting[0])),
                    Box::pin(step(ctx_ref, s1, ops[1], waiting[1])),
                ),
                zip(
                    zip(
                        Box::pin(step(ctx_ref, s2, ops[2], waiting[2])),
                        Box::pin(step(ctx_ref, s3, ops[3], waiting[3])),
                    ),
                    cutter,
                ),
            )
            .await;
            if cut {
                stats.cuts_during_ops += 1;
                for (total, n) in stats.cut_phases.iter_mut().zip(phases) {
                    *total += n;
                }
            }
            for record in [r0, r1, r2, r3] {
                *stats.ops.entry(record.op).or_default() += 1;
                let max = stats.max_latency.entry(record.op).or_default();
                *max = (*max).max(record.latency);
                if let Some(over) = record.cancel_overshoot {
                    stats.max_cancel_overshoot = stats.max_cancel_overshoot.max(over);
                    stats.cancellations += 1;
                }
                stats.cancellations_holding += u64::from(record.cancelled_holding);
                stats.losses_reported += u64::from(record.lost);
                stats.expected_losses_reported += u64::from(record.expected_lost);
                *stats
                    .outcomes
                    .entry(format!("{} -> {}", record.op, record.outcome))
                    .or_default() += 1;
            }

            // Between cycles: which locks' sessions really hold levels?
            let holding = sessions_holding(&mut observer, &ctx.app_prefix).await;
            for slot in slots.iter_mut() {
                if slot.holds() && !holding.contains(&slot.index) && slot.expect.is_none() {
                    slot.expect = Some(slot.levels());
                    stats.server_confirmed_losses += 1;
                }
            }
        }

        // The end: close what is open (a loss may still be reported), drop the rest.
        for slot in slots.iter_mut() {
            if let Some(mut lock) = slot.lock.take() {
                let owed = slot.owed.is_some() || slot.expect.is_some() || slot.lost != (0, 0);
                let closed = rt::timeout(OP_TIMEOUT + MARGIN, lock.close())
                    .await
                    .expect("close at the end hung");
                match closed {
                    Ok(()) => assert!(!owed, "lock {}: close hid a loss", slot.index),
                    Err(Error::LockLost { .. }) => stats.losses_reported += 1,
                    Err(err) => assert!(
                        ctx.proxy.cuts() > slot.cut_mark,
                        "lock {}: close at the end: {err:?}",
                        slot.index
                    ),
                }
            }
        }
        let freed = Instant::now();
        for key in keys {
            support::eventually(
                FREED_WITHIN,
                "no session holds a test key once every lock is closed",
                || async { support::holders(key).await.is_empty() },
            )
            .await;
        }
        let freed_after = freed.elapsed();
        assert!(
            sessions_holding(&mut observer, &ctx.app_prefix)
                .await
                .is_empty()
        );
        let elapsed = started.elapsed();
        let cuts = ctx.proxy.cuts();
        let cut_connections = ctx.proxy.cut_connections();
        let accepted = ctx.proxy.accepted();
        ctx.pool.close().await;
        drop(ctx);

        let non_wait_max = stats
            .max_latency
            .iter()
            .filter(|(op, _)| !matches!(**op, "lock" | "lock_shared" | "lost" | "try_lock_for"))
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        println!(
            "[{}] faults: seed {seed:#x}, {cycles} cycles, {} operations in {elapsed:?}",
            rt::NAME,
            stats.ops.values().sum::<u64>()
        );
        println!(
            "  cuts: {cuts} ({} before operations, {} during; {cut_connections} connections \
             cut, {accepted} accepted)",
            stats.cuts_before_ops, stats.cuts_during_ops
        );
        println!(
            "  locks at the moment of a cut: {}",
            PHASE_NAMES
                .iter()
                .zip(stats.cut_phases)
                .map(|(name, n)| format!("{name}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  losses reported (LockLost): {} ({} known beforehand: {} confirmed by the server \
             between cycles, the rest cut while idle or cancelled while holding); \
             cancelled lock() calls: {} ({} holding levels)",
            stats.losses_reported,
            stats.expected_losses_reported,
            stats.server_confirmed_losses,
            stats.cancellations,
            stats.cancellations_holding
        );
        println!(
            "  max latency: non-wait operations {non_wait_max:?} (bound {:?}); per operation {:?}; \
             a cancelled lock() returned at most {:?} late; keys free {freed_after:?} after close",
            OP_TIMEOUT + MARGIN,
            stats.max_latency,
            stats.max_cancel_overshoot
        );
        println!("  outcomes: {:?}", stats.outcomes);
        assert!(
            cycles < 100 || (cuts > 0 && stats.losses_reported > 0),
            "the run cut nothing or lost nothing: it tested nothing"
        );
    });
}

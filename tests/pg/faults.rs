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

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future::zip;
use pglock::{AdvisoryLock, Error, LockKey, LockOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use support::XorShift;
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

// ---------------------------------------------------------------------------------------
// The same faults under `LockClient`s: locks sharing lanes.
//
// Two clients (each with its own pool through the proxy, 2 lanes; one runs its driver,
// the other does not) and 6 locks on 2 keys: on each key, two locks of one client and one
// of the other, so conflicts are decided both in a client and on the server. A cut ends a
// lane, or a waiting session, under every lock on it. The model is simpler than the one
// above (a `ClientLock` does not expose its levels, and a cancelled wait costs it none):
// the test counts the levels each lock was granted and released, and after any
// `LockLost` closes the lock (close must then report the loss too when nothing accounted
// for it) and makes a new one. What must hold:
// - no hang: every call returns within its bound;
// - no hidden loss: between cycles, every lock that believes it holds levels is asked
//   `is_held()`: `Ok(true)` only if the server shows its client holding the key in each
//   mode it holds (`pg_locks` by `application_name`), else `LockLost`; never `Ok(false)`;
//   `LockLost` only for a lock holding levels, after a cut since it took them;
// - no overlap: among the locks confirmed by the server, an exclusive holder of a key has
//   no company, in its client or the other;
// - errors have causes: connection errors only on acquisitions, after a cut since the
//   lock's previous operation; `NotHeld` only for a mode with no level;
// - nothing stranded: at the end, with every lock closed, no session holds or waits for
//   a test key (within 2 s).

/// One lock of the client run.
struct ClientSlot {
    index: usize,
    client: usize,
    key: LockKey,
    lock: Option<pglock::ClientLock>,
    rng: XorShift,
    /// Levels granted and not released (as far as the lock knows: a lost level counts
    /// until the loss is reported).
    levels: (u32, u32),
    /// The proxy's cut count when the lock went from no level to some.
    held_since: u64,
    /// The proxy's cut count when the previous operation began.
    cut_mark: u64,
    /// A loss was reported: `Some(true)` if by a call that accounts for no level
    /// (`is_held`, `lost`, an acquisition), so `close` must report it again.
    lost: Option<bool>,
    history: std::collections::VecDeque<String>,
}

impl ClientSlot {
    fn holds(&self) -> bool {
        self.levels != (0, 0)
    }

    fn choose(&mut self) -> Op {
        if self.lock.is_none() {
            return Op::Create;
        }
        if self.lost.is_some() {
            return Op::Close;
        }
        let (ex, sh) = self.levels;
        let rng = &mut self.rng;
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

/// What the client run counts.
#[derive(Default)]
struct ClientStats {
    ops: BTreeMap<&'static str, u64>,
    max_latency: BTreeMap<&'static str, Duration>,
    outcomes: BTreeMap<String, u64>,
    losses_reported: u64,
    /// Losses found by the check between cycles (`is_held`).
    losses_found_between: u64,
    confirmed_holds: u64,
    cancellations: u64,
}

/// One operation on one lock of the client run, bounded and checked.
///
/// `shared_since`: when another lock of the same client took the shared level of the key
/// it holds now (a shared acquisition joins that level without a round trip, so it is as
/// old as that level, and lost with it). `given_up_since`: when an acquisition by a lock
/// of the same client on the key was given up while its request may still be unanswered
/// (a later acquisition, in either mode, joins that request: its grant may be an answer
/// the server sent before a cut, read only now). `stale`: a cut may have left a session
/// of the lock's client dead and unnoticed (lanes are shared: the operation that finds
/// one can be any lock's, any cycle later, and those queued behind it fail with it).
async fn client_step(
    proxy: &Proxy,
    clients: &[pglock::LockClient; 2],
    slot: &mut ClientSlot,
    op: Op,
    shared_since: Option<u64>,
    given_up_since: Option<u64>,
    stale: bool,
) -> (Duration, String) {
    let cuts_before = proxy.cuts();
    let (ex0, sh0) = slot.levels;
    let start = Instant::now();
    let i = slot.index;
    let what = |outcome: &str, slot: &ClientSlot| {
        format!(
            "client lock {i} (client {}, key {}) {} -> {outcome} (levels {ex0}/{sh0}, held since \
             cut {}, previous op at cut {}, cuts {cuts_before} at the start, {} now; latest \
             first: {:?})",
            slot.client,
            slot.key,
            op.name(),
            slot.held_since,
            slot.cut_mark,
            proxy.cuts(),
            slot.history
        )
    };
    let outcome: Outcome = match op {
        Op::Create => {
            slot.lock = Some(clients[slot.client].lock(slot.key));
            slot.levels = (0, 0);
            slot.lost = None;
            Outcome::Value(None)
        }
        Op::Drop => {
            slot.lock = None;
            slot.levels = (0, 0);
            slot.lost = None;
            Outcome::Value(None)
        }
        _ => {
            let lock = slot.lock.as_mut().expect("a lock to operate on");
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
            rt::timeout(op.bound(), bounded).await.unwrap_or_else(|| {
                panic!(
                    "{}",
                    what(&format!("no answer within {:?}", op.bound()), slot)
                )
            })
        }
    };
    let latency = start.elapsed();
    let acquisition = matches!(
        op,
        Op::Lock { .. } | Op::LockShared { .. } | Op::TryLock | Op::TryLockShared | Op::TryLockFor
    );
    let exclusive_op = matches!(op, Op::Lock { .. } | Op::TryLock | Op::TryLockFor);
    let label = match &outcome {
        Outcome::Value(Some(v)) => format!("Ok({v})"),
        Outcome::Value(None) => "Ok".to_owned(),
        Outcome::GaveUp => "gave up".to_owned(),
        Outcome::Failed(err) => error_kind(err),
    };
    match outcome {
        Outcome::Value(value) => {
            let granted = acquisition && value != Some(false);
            let was_empty = !slot.holds();
            match op {
                _ if granted && exclusive_op => slot.levels.0 += 1,
                _ if granted => slot.levels.1 += 1,
                Op::Unlock => {
                    assert!(ex0 > 0, "{}", what("Ok without an exclusive level", slot));
                    slot.levels.0 -= 1;
                }
                Op::UnlockShared => {
                    assert!(sh0 > 0, "{}", what("Ok without a shared level", slot));
                    slot.levels.1 -= 1;
                }
                Op::IsHeld => assert_eq!(value, Some(ex0 + sh0 > 0), "{}", what(&label, slot)),
                Op::Close => {
                    assert_ne!(
                        slot.lost,
                        Some(true),
                        "{}",
                        what("close hid a reported loss", slot)
                    );
                    slot.lock = None;
                    slot.levels = (0, 0);
                    slot.lost = None;
                }
                _ => {}
            }
            if was_empty && slot.holds() {
                let shared_since = shared_since.filter(|_| granted && !exclusive_op);
                slot.held_since = [Some(cuts_before), shared_since, given_up_since]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(cuts_before);
            }
        }
        Outcome::GaveUp => {
            // A dropped wait costs a ClientLock nothing; a dropped lost() neither.
        }
        Outcome::Failed(err) => match &err {
            Error::LockLost { key } => {
                assert_eq!(*key, slot.key, "{}", what(&label, slot));
                let known = slot.lost.is_some();
                assert!(
                    known || (slot.holds() && proxy.cuts() > slot.held_since),
                    "{}",
                    what("LockLost without a level cut since it was taken", slot)
                );
                let accounts = matches!(op, Op::Unlock | Op::UnlockShared);
                match op {
                    Op::Close => {
                        slot.lock = None;
                        slot.levels = (0, 0);
                        slot.lost = None;
                    }
                    _ => {
                        if accounts && slot.lost.is_none() {
                            match op {
                                Op::Unlock => slot.levels.0 = slot.levels.0.saturating_sub(1),
                                _ => slot.levels.1 = slot.levels.1.saturating_sub(1),
                            }
                        }
                        slot.lost = Some(slot.lost == Some(true) || !accounts);
                    }
                }
            }
            Error::NotHeld { .. } => {
                let empty = match op {
                    Op::Unlock => ex0 == 0,
                    Op::UnlockShared => sh0 == 0,
                    Op::Lost { .. } => ex0 + sh0 == 0,
                    _ => false,
                };
                assert!(empty, "{}", what("NotHeld with a level of the mode", slot));
            }
            Error::Deadlock { .. } => {
                assert!(acquisition, "{}", what(&label, slot));
            }
            _ => {
                assert!(
                    acquisition,
                    "{}",
                    what(
                        "a connection error from a call that is not an acquisition",
                        slot
                    )
                );
                assert!(
                    proxy.cuts() > slot.cut_mark || stale,
                    "{}",
                    what(
                        &format!(
                            "{label}: an error without a cut since the previous operation or \
                             a dead session left unnoticed"
                        ),
                        slot
                    )
                );
            }
        },
    }
    slot.cut_mark = cuts_before;
    slot.history.push_front(format!(
        "{} -> {label} ({ex0}/{sh0} -> {}/{}, cuts {cuts_before}..{}, {latency:?})",
        op.name(),
        slot.levels.0,
        slot.levels.1,
        proxy.cuts()
    ));
    slot.history.truncate(6);
    (latency, label)
}

/// `(client, key, exclusive)` for every advisory level a session of either client holds
/// (sessions named `<prefix><client>`), and whether any of them waits.
async fn client_holdings(
    observer: &mut PgConnection,
    prefix: &str,
) -> BTreeSet<(usize, LockKey, bool)> {
    let rows: Vec<(String, i64, i64, i16, bool)> = sqlx::query_as(
        "SELECT a.application_name, l.classid::int8, l.objid::int8, l.objsubid, \
         l.mode = 'ExclusiveLock' FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND starts_with(a.application_name, $1)",
    )
    .bind(prefix)
    .fetch_all(observer)
    .await
    .expect("ask the server who holds");
    rows.into_iter()
        .filter_map(|(name, classid, objid, objsubid, exclusive)| {
            let client = name[prefix.len()..].parse().ok()?;
            let key = LockKey::from_pg_locks_ids(
                u32::try_from(classid).ok()?,
                u32::try_from(objid).ok()?,
                objsubid,
            )?;
            Some((client, key, exclusive))
        })
        .collect()
}

#[test]
fn random_operations_under_random_cuts_through_lock_clients_never_hang_overlap_or_hide_a_loss() {
    rt::run(async {
        let cycles: usize = env_or("PGLOCK_FAULT_CYCLES", DEFAULT_CYCLES);
        let seed: u64 = env_or("PGLOCK_FAULT_SEED", DEFAULT_SEED);
        let started = Instant::now();
        let proxy = Proxy::start();
        let prefix = format!("pglock-faults-client-{}-", std::process::id());
        let options = LockOptions::new()
            .operation_timeout(OP_TIMEOUT)
            .lost_check_interval(LOST_CHECK_INTERVAL)
            .check_timeout(CHECK_TIMEOUT)
            .client_connection_check_interval(Duration::from_millis(200));
        let mut pools = Vec::new();
        for _ in 0..2 {
            pools.push(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(proxy.connect_options())
                    .await
                    .expect("a pool through the proxy"),
            );
        }
        let clients: [pglock::LockClient; 2] = [0, 1].map(|c| {
            pglock::LockClient::with_options(
                &pools[c],
                pglock::ClientOptions::new()
                    .max_sessions(2)
                    .lock_options(options.clone().application_name(format!("{prefix}{c}"))),
            )
        });
        // Client 0 runs its driver; client 1 relies on its operations alone.
        // (The handle is kept: dropping it would cancel the driver on smol.)
        let driver = rt::spawn(clients[0].driver());
        let keys = [
            support::key("faults-client/a"),
            support::key("faults-client/b"),
        ];
        // Per key: two locks of one client, one of the other.
        let layout = [(0, 0), (0, 0), (1, 0), (1, 1), (1, 1), (0, 1)];
        let mut slots: Vec<ClientSlot> = layout
            .iter()
            .enumerate()
            .map(|(index, &(client, key))| ClientSlot {
                index,
                client,
                key: keys[key],
                lock: None,
                rng: XorShift::new(seed ^ (0x51_7cc1 * (index as u64 + 1))),
                levels: (0, 0),
                held_since: 0,
                cut_mark: 0,
                lost: None,
                history: Default::default(),
            })
            .collect();
        let mut rng = XorShift::new(seed ^ 0xc11e);
        let mut observer = support::connect().await;
        let mut stats = ClientStats::default();
        // Per client: a cut since its sessions were last all checked.
        let mut stale = [false; 2];
        // Per (client, key): the cut count before the oldest shared acquisition whose
        // server level the client may still hold, whoever asked for it (a lock since
        // dropped, a wait given up whose grant came anyway and waits to be released). A
        // shared grant can ride on such a level without a round trip, so it is only as old
        // as that level. Forgotten once the server shows no shared level of the client's
        // on the key.
        let mut shared_taken_since: BTreeMap<(usize, LockKey), u64> = BTreeMap::new();
        // Per (client, key): the cut count before the oldest acquisition given up since the
        // client's lanes were last flushed (`check_sessions`). Its request may still be on a
        // lane, answered by the server but not read yet (client 1 has no driver): a later
        // acquisition joins it, and is only as old as that request.
        let mut given_up_since: BTreeMap<(usize, LockKey), u64> = BTreeMap::new();

        for cycle in 0..cycles {
            let cuts_at_start = proxy.cuts();
            let roll = rng.below(100);
            let cut_all = rng.below(3) != 0;
            let victim = rng.next();
            let delay = Duration::from_micros(rng.below(8_000));
            let cut_now = || match cut_all {
                true => proxy.cut_all() > 0,
                false => proxy.cut_random(victim),
            };
            if roll < 12 {
                cut_now();
            }
            let cut_during = (12..45).contains(&roll);
            let ops: Vec<Op> = slots.iter_mut().map(ClientSlot::choose).collect();
            let cuts_before_ops = proxy.cuts();
            for (slot, op) in slots.iter().zip(&ops) {
                if matches!(op, Op::LockShared { .. } | Op::TryLockShared) {
                    shared_taken_since
                        .entry((slot.client, slot.key))
                        .or_insert(cuts_before_ops);
                }
            }
            let shared_since: Vec<Option<u64>> = slots
                .iter()
                .map(|me| {
                    slots
                        .iter()
                        .filter(|s| {
                            s.index != me.index
                                && s.client == me.client
                                && s.key == me.key
                                && s.lock.is_some()
                                && s.levels.1 > 0
                        })
                        .map(|s| s.held_since)
                        .chain(shared_taken_since.get(&(me.client, me.key)).copied())
                        .min()
                })
                .collect();
            let cutter = async {
                if cut_during {
                    rt::sleep(delay).await;
                    cut_now();
                }
            };
            if proxy.cuts() > cuts_at_start {
                stale = [true; 2]; // a cut before the operations
            }
            let stale_now = stale;
            let steps = slots
                .iter_mut()
                .zip(ops.iter().zip(&shared_since))
                .map(|(slot, (op, since))| {
                    let stale = stale_now[slot.client];
                    let given_up = given_up_since.get(&(slot.client, slot.key)).copied();
                    Box::pin(client_step(
                        &proxy, &clients, slot, *op, *since, given_up, stale,
                    ))
                })
                .collect::<Vec<_>>();
            let (records, ()) = zip(support::lanes::join_all(steps), cutter).await;
            if proxy.cuts() > cuts_at_start {
                stale = [true; 2];
            }
            for ((slot, op), (_, label)) in slots.iter().zip(&ops).zip(&records) {
                if label == "gave up" && matches!(op, Op::Lock { .. } | Op::LockShared { .. }) {
                    given_up_since
                        .entry((slot.client, slot.key))
                        .or_insert(cuts_before_ops);
                }
            }
            for (op, (latency, label)) in ops.iter().zip(records) {
                *stats.ops.entry(op.name()).or_default() += 1;
                let max = stats.max_latency.entry(op.name()).or_default();
                *max = (*max).max(latency);
                stats.losses_reported += u64::from(label == "LockLost");
                stats.cancellations += u64::from(label == "gave up");
                *stats
                    .outcomes
                    .entry(format!("{} -> {label}", op.name()))
                    .or_default() += 1;
            }

            // Between cycles: every lock that believes it holds is checked against the
            // server.
            let server = client_holdings(&mut observer, &prefix).await;
            shared_taken_since.retain(|&(client, key), _| server.contains(&(client, key, false)));
            let mut confirmed: Vec<(usize, LockKey, (u32, u32))> = Vec::new();
            for slot in slots.iter_mut() {
                if slot.lock.is_none() || !slot.holds() || slot.lost.is_some() {
                    continue;
                }
                let held = rt::timeout(OP_TIMEOUT + MARGIN, slot.lock.as_mut().unwrap().is_held())
                    .await
                    .unwrap_or_else(|| panic!("cycle {cycle}: lock {}: is_held hung", slot.index));
                let (ex, sh) = slot.levels;
                match held {
                    Ok(true) => {
                        for (mode, count) in [(true, ex), (false, sh)] {
                            assert!(
                                count == 0 || server.contains(&(slot.client, slot.key, mode)),
                                "cycle {cycle}: lock {} (client {}) says it holds {} \
                                 {ex}/{sh} but the server shows {server:?}: a hidden loss \
                                 (latest first: {:?})",
                                slot.index,
                                slot.client,
                                slot.key,
                                slot.history
                            );
                        }
                        confirmed.push((slot.client, slot.key, slot.levels));
                        stats.confirmed_holds += 1;
                    }
                    Err(Error::LockLost { .. }) => {
                        assert!(
                            proxy.cuts() > slot.held_since,
                            "cycle {cycle}: lock {}: LockLost without a cut since it took its \
                             levels (latest first: {:?})",
                            slot.index,
                            slot.history
                        );
                        slot.lost = Some(true);
                        stats.losses_found_between += 1;
                        stats.losses_reported += 1;
                    }
                    other => panic!(
                        "cycle {cycle}: lock {} holding {ex}/{sh}: is_held {other:?} \
                         (latest first: {:?})",
                        slot.index, slot.history
                    ),
                }
            }
            for key in keys {
                let on: Vec<&(usize, LockKey, (u32, u32))> =
                    confirmed.iter().filter(|(_, k, _)| *k == key).collect();
                let writers = on.iter().filter(|(_, _, (ex, _))| *ex > 0).count();
                assert!(
                    writers == 0 || on.len() == 1,
                    "cycle {cycle}: key {key}: an exclusive holder has company: {on:?}"
                );
            }
            // Now and then, each client checks its sessions: the dead ones a cut left are
            // found (and their locks' losses recorded) before the next cycle. Otherwise
            // the next operation on them finds them, any cycle later.
            for (c, client) in clients.iter().enumerate() {
                if stale[c] && rng.below(2) == 0 {
                    rt::timeout(OP_TIMEOUT + MARGIN, client.check_sessions())
                        .await
                        .expect("check_sessions hung")
                        .expect("check_sessions");
                    stale[c] = false;
                    // Every request of the client's is answered now.
                    given_up_since.retain(|&(client, _), _| client != c);
                }
            }
        }

        // The end: close everything (a loss may still be reported), then nothing may be
        // held or waited for.
        for slot in slots.iter_mut() {
            if let Some(mut lock) = slot.lock.take() {
                let closed = rt::timeout(OP_TIMEOUT + MARGIN, lock.close())
                    .await
                    .expect("close at the end hung");
                match closed {
                    Ok(()) => assert_ne!(
                        slot.lost,
                        Some(true),
                        "lock {}: close hid a loss",
                        slot.index
                    ),
                    Err(Error::LockLost { .. }) => stats.losses_reported += 1,
                    Err(err) => panic!("lock {}: close at the end: {err:?}", slot.index),
                }
            }
        }
        // Client 1 has no driver: an operation sends the releases of locks it dropped.
        rt::timeout(OP_TIMEOUT + MARGIN, clients[1].check_sessions())
            .await
            .expect("check_sessions hung")
            .expect("check_sessions");
        let freed = Instant::now();
        support::eventually(
            FREED_WITHIN,
            "no session holds or waits for a test key once every lock is closed",
            || async { support::lanes::untouched(&keys).await },
        )
        .await;
        let freed_after = freed.elapsed();
        let cuts = proxy.cuts();
        let cut_connections = proxy.cut_connections();
        let sessions = [clients[0].sessions(), clients[1].sessions()];
        drop(clients);
        drop(driver);
        for pool in pools {
            pool.close().await;
        }
        println!(
            "[{}] faults through LockClients: seed {seed:#x}, {cycles} cycles, {} operations in \
             {:?}; cuts {cuts} ({cut_connections} connections); LockLost reported {} ({} found \
             by the check between cycles); {} holds confirmed by the server; {} waits given up; \
             keys free {freed_after:?} after close; sessions at the end {sessions:?}",
            rt::NAME,
            stats.ops.values().sum::<u64>(),
            started.elapsed(),
            stats.losses_reported,
            stats.losses_found_between,
            stats.confirmed_holds,
            stats.cancellations,
        );
        println!("  max latency per operation: {:?}", stats.max_latency);
        println!("  outcomes: {:?}", stats.outcomes);
        assert!(
            cycles < 100 || (cuts > 0 && stats.losses_reported > 0),
            "the run cut nothing or lost nothing: it tested nothing"
        );
    });
}

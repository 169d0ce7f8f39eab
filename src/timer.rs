//! A runtime-agnostic timer. The library depends on no async runtime, so it keeps time
//! with one background std thread, in two ways:
//!
//! - **Sleeps** ([`sleep`], [`timeout`]): a deadline in a map, woken at that instant. For
//!   the loss-check interval, timed waits of the in-memory locks, the client's driver.
//! - **Statement bounds** ([`Watch`]): every statement a session sends is bounded (30 s
//!   by default), so arming a bound is on the hot path of every lock operation. A session
//!   owns one watch slot, registered once; arming it for a statement is two atomic stores
//!   and a waker compare, no lock, no allocation, no signal to the thread, which scans the
//!   armed slots every [`TICK`] (so a bound fires up to 250 ms late: bounds are tens of
//!   seconds). Measured against bounding each statement with a sleep of the map, the
//!   interleaved bench's `try_lock` + `unlock` pair went from 1.042× to 1.016× the same
//!   two statements sent by raw sqlx.
//!
//! The thread parks, and costs nothing, while no sleep is pending and no slot armed; the
//! first to come back wakes it.
//!
//! Why not `futures-timer` or `async-io`'s `Timer` (issue 12: use a crate unless the
//! per-statement cost gets worse)? It does: both signal their helper thread on every
//! registration. futures-timer's `Delay` allocates a node and unparks its thread when made
//! and again when dropped; async-io's `Timer` writes its reactor's eventfd on every insert.
//! `cargo bench --bench timer` (five runs, 2 cores shared with other work): a 30 s bound
//! registered, polled and dropped at the pace of statements (one per 50 µs) cost
//! 0.18–0.24 µs with the map alone, 7.8–10.2 µs with futures-timer, 7.8–8.1 µs with
//! async-io; a `try_lock` + `unlock` pair on one connection (40–60 µs) takes 1.23–1.32× as
//! long with futures-timer and 1.16–1.24× with async-io. futures-timer also panics when its
//! thread cannot start, where a sleep here never ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The longest the timer thread sleeps, so that late deadlines never need to wake it.
const TICK: Duration = Duration::from_millis(250);

/// The longest sleep: past it a deadline means "never" (a century, as far as a lock is
/// concerned), so that adding any `Duration` to now cannot overflow.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Completes once `duration` has passed.
pub(crate) fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + duration.min(FOREVER),
        entry: None,
    }
}

/// Completes at `deadline`.
pub(crate) fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        entry: None,
    }
}

/// `Some(output)` if `future` completes within `limit`; otherwise `None`, and `future`
/// is dropped.
pub(crate) async fn timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut delay = sleep(limit);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(&mut delay).poll(cx).map(|()| None)
    })
    .await
}

/// A session's statement bound: one slot, registered with the timer thread once, armed
/// for each statement. See the module docs.
#[derive(Clone)]
pub(crate) struct Watch {
    slot: Arc<Slot>,
}

struct Slot {
    /// When the armed statement is due, in nanoseconds after [`epoch`]; 0 when disarmed,
    /// [`EXPIRED`] once the timer thread found it past due.
    due: AtomicU64,
    /// The waker of the task polling the armed statement.
    waker: Mutex<Option<Waker>>,
}

/// A slot's `due` once the timer thread has fired it: the armed statement's poll reads
/// this flag instead of the clock (a lane's statement is polled by many tasks, and
/// reading the clock at every poll was 5% of a busy client's CPU).
const EXPIRED: u64 = u64::MAX;

/// The instant statement deadlines count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

impl Watch {
    pub(crate) fn new() -> Watch {
        let slot = Arc::new(Slot {
            due: AtomicU64::new(0),
            waker: Mutex::new(None),
        });
        if let Some(timer) = Timer::get() {
            timer.wheel().slots.push(Arc::downgrade(&slot));
        }
        Watch { slot }
    }

    /// `Some(output)` if `future` completes within about `limit` (up to a tick late);
    /// otherwise `None`, and `future` is dropped.
    pub(crate) async fn bound<F: Future>(&self, limit: Duration, future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let due = nanos_since_epoch(Instant::now() + limit.min(FOREVER)).clamp(1, EXPIRED - 1);
        let armed = Armed { slot: &self.slot };
        // Before the thread's `parked` is read: the thread sets it before it scans, so
        // either its scan sees this deadline or this sees it parked (see `Timer::armed`).
        armed.slot.due.store(due, Ordering::SeqCst);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            {
                let mut waker = lock_or_recover(&armed.slot.waker);
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
            }
            if let Some(timer) = Timer::get() {
                timer.armed();
            }
            // The thread sets EXPIRED before it takes the waker registered above: either
            // this sees it, or the thread wakes this task to see it.
            match armed.slot.due.load(Ordering::SeqCst) == EXPIRED {
                true => Poll::Ready(None),
                false => Poll::Pending,
            }
        })
        .await
    }
}

/// Disarms the slot when the statement is done or dropped.
struct Armed<'a> {
    slot: &'a Slot,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.slot.due.store(0, Ordering::Release);
    }
}

fn lock_or_recover<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The future [`sleep`] returns.
pub(crate) struct Sleep {
    deadline: Instant,
    /// Our key in the timer's map, once registered.
    entry: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.deregister();
            return Poll::Ready(());
        }
        let Some(timer) = Timer::get() else {
            // No timer thread could be started: the sleep never ends (unbounded, as sqlx
            // alone would be) rather than ending at once.
            return Poll::Pending;
        };
        let mut wheel = timer.wheel();
        match self.entry {
            Some(entry) => match wheel.entries.get_mut(&entry) {
                Some(waker) => waker.clone_from(cx.waker()),
                // Fired and removed: the deadline has passed.
                None => {
                    self.entry = None;
                    return Poll::Ready(());
                }
            },
            None => {
                wheel.next_id += 1;
                let entry = (self.deadline, wheel.next_id);
                wheel.entries.insert(entry, cx.waker().clone());
                self.entry = Some(entry);
                if self.deadline < wheel.next_wake {
                    wheel.next_wake = self.deadline;
                    timer.changed.notify_one();
                }
            }
        }
        Poll::Pending
    }
}

impl Sleep {
    /// When it completes.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    fn deregister(&mut self) {
        if let (Some(entry), Some(timer)) = (self.entry.take(), Timer::get()) {
            timer.wheel().entries.remove(&entry);
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.deregister();
    }
}

/// The deadlines, and the thread that fires them.
struct Timer {
    wheel: Mutex<Wheel>,
    changed: Condvar,
    /// The thread is parked with nothing to watch: the next armed slot must wake it.
    parked: AtomicBool,
}

struct Wheel {
    entries: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
    /// When the timer thread will next look at the entries, at the latest.
    next_wake: Instant,
    /// Every session's watch slot (dropped sessions' are pruned on the next scan).
    slots: Vec<Weak<Slot>>,
}

impl Timer {
    fn get() -> Option<&'static Timer> {
        static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
        *TIMER.get_or_init(|| {
            let timer: &'static Timer = Box::leak(Box::new(Timer {
                wheel: Mutex::new(Wheel {
                    entries: BTreeMap::new(),
                    next_id: 0,
                    next_wake: Instant::now(),
                    slots: Vec::new(),
                }),
                changed: Condvar::new(),
                parked: AtomicBool::new(false),
            }));
            std::thread::Builder::new()
                .name("pglock-timer".into())
                .spawn(move || timer.run())
                .ok()
                .map(|_| timer)
        })
    }

    /// The timer's state; a poisoned lock only means a waker panicked, the map is fine.
    fn wheel(&self) -> MutexGuard<'_, Wheel> {
        self.wheel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot was armed: wakes the thread if it parked with nothing to watch (only then:
    /// one atomic load otherwise).
    fn armed(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            let _wheel = self.wheel();
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut wheel = self.wheel();
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(entry) = wheel.entries.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            // Statements past their bound: wake their tasks, which see it and give up.
            // `parked` is set before the scan, so a slot armed after it reads it set.
            self.parked.store(true, Ordering::SeqCst);
            let now_nanos = nanos_since_epoch(now);
            let mut watching = false;
            wheel.slots.retain(|slot| match slot.upgrade() {
                Some(slot) => {
                    let at = slot.due.load(Ordering::SeqCst);
                    if at == 0 || at == EXPIRED {
                        // Disarmed, or fired and not yet disarmed.
                    } else if at <= now_nanos {
                        // Only if still armed for the same statement (not disarmed and
                        // armed again since the load).
                        let fired = slot
                            .due
                            .compare_exchange(at, EXPIRED, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok();
                        if let Some(waker) =
                            fired.then(|| lock_or_recover(&slot.waker).take()).flatten()
                        {
                            due.push(waker);
                        }
                    } else {
                        watching = true;
                    }
                    true
                }
                None => false,
            });
            if !due.is_empty() {
                self.parked.store(false, Ordering::SeqCst);
                drop(wheel);
                due.into_iter().for_each(Waker::wake);
                wheel = self.wheel();
                continue;
            }
            let first = wheel.entries.keys().next().map(|(deadline, _)| *deadline);
            if first.is_none() && !watching {
                // Nothing to watch: park until a sleep or an armed slot wakes us.
                wheel.next_wake = now + FOREVER;
                wheel = match self.changed.wait(wheel) {
                    Ok(wheel) => wheel,
                    Err(poisoned) => poisoned.into_inner(),
                };
                continue;
            }
            self.parked.store(false, Ordering::SeqCst);
            let tick = now + TICK;
            let next = first.map_or(tick, |deadline| deadline.min(tick));
            wheel.next_wake = next;
            wheel = match self
                .changed
                .wait_timeout(wheel, next.saturating_duration_since(now))
            {
                Ok((wheel, _)) => wheel,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_of_any_length_can_be_made_without_overflow() {
        let long = sleep(Duration::MAX);
        assert!(long.deadline > Instant::now() + Duration::from_secs(365 * 24 * 60 * 60));
    }
}

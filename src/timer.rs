//! A runtime-agnostic timer. The library depends on no async runtime, so it keeps time
//! with one background std thread that wakes sleeping futures at their deadlines.
//! Registering a deadline is a mutex lock and a map insert, cheap enough to bound every
//! statement; a deadline dropped before it fires is removed at once. The thread wakes at
//! least every [`TICK`], so a new deadline later than its next wake-up (the common case:
//! a 30 s statement bound) needs no signal to it, only the insert.
//!
//! Why not `futures-timer` or `async-io`'s `Timer` (issue 12: use a crate unless the
//! per-statement cost gets worse)? It does: both signal their helper thread on every
//! registration. futures-timer's `Delay` allocates a node and unparks its thread when made
//! and again when dropped; async-io's `Timer` writes its reactor's eventfd on every insert.
//! `cargo bench --bench timer` (five runs, 2 cores shared with other work): a 30 s bound
//! registered, polled and dropped at the pace of statements (one per 50 µs) costs
//! 0.18–0.24 µs here, 7.8–10.2 µs with futures-timer, 7.8–8.1 µs with async-io; a
//! `try_lock` + `unlock` pair on one connection (40–60 µs) takes 1.23–1.32× as long with
//! futures-timer and 1.16–1.24× with async-io as with this timer, which is within 2% of no
//! bound at all (in a fifth run, pairs slowed to 140 µs by load: 1.02× and 1.07×). Back to back on one thread a bound costs ~110 ns here, 350–720 ns and
//! 110–450 ns with them; only two threads doing nothing else but bounding saw async-io's
//! lock-free queue beat this mutex, in some runs (0.74–1.64× ours). futures-timer also
//! panics when its thread cannot start, where a sleep here never ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
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
}

struct Wheel {
    entries: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
    /// When the timer thread will next look at the entries, at the latest.
    next_wake: Instant,
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
                }),
                changed: Condvar::new(),
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
            if !due.is_empty() {
                drop(wheel);
                due.into_iter().for_each(Waker::wake);
                wheel = self.wheel();
                continue;
            }
            let tick = now + TICK;
            let next = wheel
                .entries
                .keys()
                .next()
                .map_or(tick, |(deadline, _)| (*deadline).min(tick));
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

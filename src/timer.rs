//! A runtime-agnostic sleep: the library depends on no async runtime, so it keeps time
//! with a short-lived std thread per sleep. Used only between lost-lock checks and as
//! their bound, never on the lock/unlock path.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Completes once `duration` has passed.
pub(crate) fn sleep(duration: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + duration,
        waker: None,
    }
}

/// The future [`sleep`] returns.
pub(crate) struct Sleep {
    deadline: Instant,
    /// Shared with the timer thread once started.
    waker: Option<Arc<Mutex<Option<Waker>>>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Poll::Ready(());
        }
        match &self.waker {
            Some(slot) => {
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(cx.waker().clone());
                }
            }
            None => {
                let slot = Arc::new(Mutex::new(Some(cx.waker().clone())));
                let shared = Arc::clone(&slot);
                let spawned = std::thread::Builder::new()
                    .name("pglock-timer".into())
                    .spawn(move || {
                        std::thread::sleep(remaining);
                        if let Some(waker) = shared.lock().ok().and_then(|mut w| w.take()) {
                            waker.wake();
                        }
                    });
                if spawned.is_err() {
                    // No thread to be had: poll again soon rather than never.
                    cx.waker().wake_by_ref();
                }
                self.waker = Some(slot);
            }
        }
        Poll::Pending
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

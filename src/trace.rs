//! Optional [`tracing`](https://docs.rs/tracing) instrumentation, behind the `tracing`
//! feature: a span per acquisition (key, mode, what kind of acquisition, how long it
//! took, its outcome), and events for releases, losses (with the reason) and sessions
//! ended. Without the feature every hook here is an empty inline function, so nothing is
//! compiled in.
//!
//! Targets are `pglock`; spans and release events are at `DEBUG`, losses at `WARN`,
//! sessions ended at `INFO`.

use std::future::Future;

use crate::levels::Levels;
use crate::{Error, LockKey, LockMode, Result};

/// What an acquisition came to, for its span.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) trait Outcome {
    fn describe(result: &Result<Self>) -> &'static str
    where
        Self: Sized;
}

impl Outcome for bool {
    fn describe(result: &Result<bool>) -> &'static str {
        match result {
            Ok(true) => "acquired",
            Ok(false) => "not acquired",
            Err(err) => error_kind(err),
        }
    }
}

impl Outcome for Option<i64> {
    fn describe(result: &Result<Option<i64>>) -> &'static str {
        match result {
            Ok(Some(_)) => "acquired",
            Ok(None) => "not acquired",
            Err(err) => error_kind(err),
        }
    }
}

/// The variant of an error, as a span field.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
fn error_kind(err: &Error) -> &'static str {
    match err {
        Error::NotHeld { .. } => "NotHeld",
        Error::Closed => "Closed",
        Error::LockLost { .. } => "LockLost",
        Error::Disconnected { .. } => "Disconnected",
        Error::Interrupted { .. } => "Interrupted",
        Error::Unresponsive { .. } => "Unresponsive",
        Error::StaleToken { .. } => "StaleToken",
        Error::SessionNotPinned { .. } => "SessionNotPinned",
        Error::StandbyServer { .. } => "StandbyServer",
        Error::Deadlock { .. } => "Deadlock",
        Error::TooManyLocks { .. } => "TooManyLocks",
        Error::Database(_) => "Database",
    }
}

/// Runs an acquisition inside a span `pglock.acquire` that records how long it took and
/// how it ended.
#[cfg(feature = "tracing")]
pub(crate) async fn acquisition<T: Outcome>(
    key: LockKey,
    mode: LockMode,
    kind: &'static str,
    acquire: impl Future<Output = Result<T>>,
) -> Result<T> {
    use tracing::Instrument;
    let span = tracing::debug_span!(
        target: "pglock",
        "pglock.acquire",
        key = %key,
        mode = %mode,
        kind,
        waited_ms = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let result = acquire.instrument(span.clone()).await;
    span.record("waited_ms", started.elapsed().as_secs_f64() * 1000.0);
    span.record("outcome", T::describe(&result));
    result
}

/// Without the feature, the acquisition itself: a plain function, not an `async fn`,
/// which would store its argument future twice (before and after it starts) and so
/// double the size of every acquisition's future.
#[cfg(not(feature = "tracing"))]
#[inline(always)]
pub(crate) fn acquisition<T: Outcome, F: Future<Output = Result<T>>>(
    _key: LockKey,
    _mode: LockMode,
    _kind: &'static str,
    acquire: F,
) -> F {
    acquire
}

/// A level (or all of a lock's levels, at `close`) was released on the server.
#[inline(always)]
pub(crate) fn released(key: LockKey, levels: Levels) {
    #[cfg(feature = "tracing")]
    tracing::debug!(
        target: "pglock",
        key = %key,
        exclusive = levels.exclusive,
        shared = levels.shared,
        "pglock.released"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (key, levels);
}

/// Levels were found lost.
#[inline(always)]
pub(crate) fn lost(key: LockKey, levels: Levels, reason: &'static str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        target: "pglock",
        key = %key,
        exclusive = levels.exclusive,
        shared = levels.shared,
        reason,
        "pglock.lost"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (key, levels, reason);
}

/// A session was ended (or let go of) by pglock, and why.
#[inline(always)]
pub(crate) fn session_ended(pid: Option<i32>, reason: &'static str) {
    #[cfg(feature = "tracing")]
    tracing::info!(target: "pglock", pid, reason, "pglock.session_ended");
    #[cfg(not(feature = "tracing"))]
    let _ = (pid, reason);
}

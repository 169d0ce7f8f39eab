//! [`LockOptions`]: how a lock treats the sessions it owns, and how it watches for loss.

use std::time::Duration;

/// Settings for an [`AdvisoryLock`](crate::AdvisoryLock), built with chained setters.
///
/// The session settings apply only to connections the lock *owns* (from
/// [`AdvisoryLock::new`](crate::AdvisoryLock::new), or an owned `PgConnection` /
/// `PoolConnection`), with the lock's first statement on the session, and only where
/// needed: the client check where it is off, and the keepalive probes where they are
/// looser than the lock's (the kernel's default starts probing after 2 hours), both then
/// left so (they only make the server notice a vanished client sooner); the idle timeouts
/// turned off where they are on, and an `application_name` if one is configured, which
/// [`close`](crate::AdvisoryLock::close) puts back before a pool connection returns to
/// its pool. A borrowed connection's settings are never changed for good.
///
/// A pool's session is set up by the first lock that owns it and marked so
/// (`pglock.session`); later locks on it only check the mark, which keeps their first
/// statement small. A setting the pool's owner changes on that session afterwards (`SET
/// idle_session_timeout = ...`) is therefore not looked at again, until `RESET ALL` or
/// `DISCARD ALL` takes the mark off with the settings. A session whose idle timeouts
/// `close` put back is set up again by its next lock, one round trip more.
///
/// ```
/// use std::time::Duration;
/// use pglock::LockOptions;
///
/// let options = LockOptions::new()
///     .application_name("billing-worker")
///     .lost_check_interval(Duration::from_millis(500));
/// assert_eq!(options.get_application_name(), Some("billing-worker"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    application_name: Option<String>,
    client_connection_check_interval: Duration,
    lost_check_interval: Duration,
    check_timeout: Duration,
    operation_timeout: Duration,
    keepalive_idle: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            application_name: None,
            client_connection_check_interval: Duration::from_secs(1),
            lost_check_interval: Duration::from_secs(1),
            check_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(10),
        }
    }
}

impl LockOptions {
    /// The defaults: the session's own `application_name`, a 1 s client connection check,
    /// a 1 s lost-lock check with a 5 s bound on each check, a 30 s operation timeout, and
    /// server keepalive probes after 10 s of silence.
    pub fn new() -> Self {
        Self::default()
    }

    /// An `application_name` for the lock's own sessions to show in `pg_stat_activity`
    /// while the lock has them (put back by `close`). By default the session keeps its
    /// own.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// How often the server checks that the client of an owned session is still there,
    /// even while it waits for a lock (`client_connection_check_interval`, PostgreSQL
    /// 14+). A crashed holder's locks are freed within about this long. Zero turns the
    /// check off.
    pub fn client_connection_check_interval(mut self, interval: Duration) -> Self {
        self.client_connection_check_interval = interval;
        self
    }

    /// How often [`AdvisoryLock::lost`](crate::AdvisoryLock::lost) asks the server whether
    /// the lock is still held.
    pub fn lost_check_interval(mut self, interval: Duration) -> Self {
        self.lost_check_interval = interval;
        self
    }

    /// How long one lost-lock check may take before the session is taken for gone (a
    /// silent network never answers).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// How long any statement but a deliberate wait may go unanswered before the lock
    /// takes the server or network for gone and ends the session (30 s by default).
    /// Bounds `try_lock`, `unlock`, `is_held`, `close` and the rest; a timed wait gets
    /// its own timeout plus this. Blocking `lock()` is unbounded by design.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The configured operation timeout.
    pub fn get_operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// After how long without traffic the server starts probing an owned session's client
    /// (`tcp_keepalives_idle`; probes every half of it, 3 of them). A holder cut off
    /// silently (no FIN or RST) then loses its locks on the server in about 2.5 times
    /// this (25 s by default) instead of the operating system's hours. TCP only; whole
    /// seconds, at least 1. A session whose probes are already tighter keeps its own.
    pub fn keepalive_idle(mut self, idle: Duration) -> Self {
        self.keepalive_idle = idle;
        self
    }

    /// The configured keepalive idle time.
    pub fn get_keepalive_idle(&self) -> Duration {
        self.keepalive_idle
    }

    /// The configured `application_name`, if any.
    pub fn get_application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// The configured client connection check interval.
    pub fn get_client_connection_check_interval(&self) -> Duration {
        self.client_connection_check_interval
    }

    /// The configured lost-lock check interval.
    pub fn get_lost_check_interval(&self) -> Duration {
        self.lost_check_interval
    }

    /// The configured bound on one lost-lock check.
    pub fn get_check_timeout(&self) -> Duration {
        self.check_timeout
    }
}

//! Losing a lock: a terminated session, a killed process, and the `lost()` signal; and the
//! hygiene a lock applies to (and takes back from) the sessions it owns. The rules every
//! `DistributedLock` follows after a loss are in `tests/conformance/loss.rs`; this module
//! keeps what PostgreSQL shows: sessions terminated or killed, reconnection, check intervals.

use crate::support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, Error, LockKey, LockOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use support::WAIT;
use support::assert_lock_lost;
use support::only_holder;
use support::rt;
use support::terminate;

#[test]
fn terminated_session_makes_the_next_unlock_or_is_held_report_lock_lost_then_reconnects() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("terminated_session_makes_the_next_call_report_lock_lost");

        // unlock() after the loss.
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        lock.lock().await.unwrap();
        let pid = only_holder(key).await;
        terminate(pid).await;
        assert!(
            support::holders(key).await.is_empty(),
            "the server freed the key"
        );
        assert_lock_lost(lock.unlock().await, key, "unlock after termination");
        assert_eq!(lock.exclusive_levels(), 0, "the lost level is forgotten");
        assert!(support::free_for_another_session(key).await);
        // The next call works again, on a new session from the pool.
        assert!(lock.try_lock().await.unwrap(), "try_lock after the loss");
        let new_pid = only_holder(key).await;
        assert_ne!(new_pid, pid);
        lock.unlock().await.unwrap();
        lock.close().await.unwrap();

        // is_held() after the loss, on a lock holding a shared level.
        let mut second = AdvisoryLock::new(&pool, key).await.unwrap();
        second.lock_shared().await.unwrap();
        let pid = only_holder(key).await;
        terminate(pid).await;
        assert_lock_lost(second.is_held().await, key, "is_held after termination");
        assert_eq!(second.shared_levels(), 0);
        assert!(support::free_for_another_session(key).await);
        assert_lock_lost(second.is_held().await, key, "is_held until accounted for");
        assert_lock_lost(
            second.unlock_shared().await,
            key,
            "the unlock of the lost level",
        );
        assert!(!second.is_held().await.unwrap(), "the call after works");
        assert!(second.try_lock().await.unwrap());
        assert_ne!(only_holder(key).await, pid);
        second.unlock().await.unwrap();
        second.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
    }));
}

#[test]
fn lost_resolves_with_lock_lost_within_one_check_interval_of_termination() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("lost_resolves_with_lock_lost_within_one_check_interval");
        let interval = Duration::from_millis(200);
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(LockOptions::new().lost_check_interval(interval));
        lock.lock().await.unwrap();
        let pid = only_holder(key).await;

        let watching = async {
            let lost = rt::timeout(WAIT, lock.lost()).await;
            (lost, Instant::now())
        };
        let terminating = async {
            // Let a check or two pass first, so the loss is noticed mid-watch.
            rt::sleep(Duration::from_millis(350)).await; // the scenario, not synchronisation
            let at = Instant::now();
            terminate(pid).await;
            at
        };
        let ((lost, noticed), terminated) = futures_lite::future::zip(watching, terminating).await;
        let lost = lost.expect("lost() resolves after the session is terminated");
        assert!(
            matches!(lost, Error::LockLost { key: k } if k == key),
            "lost() resolved with {lost:?}"
        );
        let delay = noticed.saturating_duration_since(terminated);
        eprintln!(
            "[{}] lost(): LockLost {delay:?} after pg_terminate_backend (interval {interval:?})",
            rt::NAME
        );
        assert!(
            delay <= interval + Duration::from_secs(1),
            "lost() took {delay:?} after the termination"
        );
        assert_eq!(lock.exclusive_levels(), 0);
        // Next call: a new session.
        assert!(lock.try_lock().await.unwrap());
        assert_ne!(only_holder(key).await, pid);
        lock.unlock().await.unwrap();
        assert_lock_lost(lock.unlock().await, key, "the unlock of the lost level");
        lock.close().await.unwrap();
        support::assert_pool_holds_no_advisory_lock(&pool).await;
    }));
}

#[test]
fn lost_does_not_resolve_while_the_lock_is_held() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("lost_does_not_resolve_while_the_lock_is_held");
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(LockOptions::new().lost_check_interval(Duration::from_millis(200)));
        lock.lock().await.unwrap();
        let pid = only_holder(key).await;
        lock.lock_shared().await.unwrap();
        let lost = rt::timeout(Duration::from_secs(1), lock.lost()).await;
        assert!(lost.is_none(), "lost() resolved while held: {lost:?}");
        assert!(lock.is_held().await.unwrap());
        assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (1, 1));
        assert_eq!(support::holders(key).await, vec![pid, pid]);
        assert!(!support::free_for_another_session(key).await);
        lock.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
    }));
}

#[test]
fn lost_reports_a_loss_that_a_cancelled_call_caused() {
    rt::run(async {
        let pool = support::pool().await;
        let key = support::key("lost_reports_a_loss_that_a_cancelled_call_caused");
        let mut a = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut b = AdvisoryLock::new(&pool, key).await.unwrap();
        a.lock_shared().await.unwrap();
        b.lock_shared().await.unwrap();
        // A's exclusive wait (behind B's shared level) is cancelled: its session, and the
        // shared level on it, must go.
        assert!(
            rt::timeout(Duration::from_millis(200), a.lock())
                .await
                .is_none()
        );
        let lost = rt::timeout(Duration::from_secs(2), a.lost())
            .await
            .expect("lost() resolves at once");
        assert!(matches!(lost, Error::LockLost { .. }), "{lost:?}");
        // Reported until accounted for: then the lock works again.
        assert_lock_lost(a.unlock_shared().await, key, "the unlock of the lost level");
        assert!(!a.is_held().await.unwrap());
        b.close().await.unwrap();
        a.close().await.unwrap();
    });
}

/// Run by [`killed_child_process_frees_its_lock_within_two_seconds`] in a child process:
/// takes the key named by `PGLOCK_CHILD_KEY` and holds it until killed (60 s at most).
/// Does nothing in a normal test run.
#[test]
#[ignore = "run by killed_child_process_frees_its_lock_within_two_seconds as a child process"]
fn child_holds_lock_until_killed() {
    let Ok(key) = std::env::var("PGLOCK_CHILD_KEY") else {
        return;
    };
    let key: LockKey = key.parse().expect("PGLOCK_CHILD_KEY is a lock key");
    rt::run(Box::pin(async move {
        let pool = support::pool_with(1).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        lock.lock().await.unwrap();
        eprintln!("child: holding {key}");
        rt::sleep(Duration::from_secs(60)).await;
        panic!("child: not killed within 60 s");
    }));
}

#[test]
fn killed_child_process_frees_its_lock_within_two_seconds() {
    rt::run(Box::pin(async {
        let key = support::key("killed_child_process_frees_its_lock");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                support::test_name(module_path!(), "child_holds_lock_until_killed").as_str(),
                "--ignored",
                "--nocapture",
            ])
            .env("PGLOCK_CHILD_KEY", key.to_string())
            .env("DATABASE_URL", support::database_url())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the child test process");

        let waited = rt::timeout(
            Duration::from_secs(30),
            support::eventually(
                Duration::from_secs(30),
                "the child process holds the key",
                || async { !support::holders(key).await.is_empty() },
            ),
        )
        .await;
        if waited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child never took the key");
        }
        let pid = only_holder(key).await;

        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        assert!(!status.success(), "the child was killed: {status:?}");
        let killed = Instant::now();
        let freed = support::eventually(
            Duration::from_secs(2),
            "the killed child's lock is freed",
            || async { support::holders(key).await.is_empty() },
        )
        .await;
        eprintln!(
            "[{}] SIGKILLed holder: key free {freed:?} later ({:?} including the reap)",
            rt::NAME,
            killed.elapsed()
        );
        assert!(support::free_for_another_session(key).await);
        support::eventually(
            Duration::from_secs(2),
            "the child's backend is gone",
            || async { !support::backend_alive(pid).await },
        )
        .await;
    }));
}

#[test]
fn owned_sessions_keep_their_application_name_or_show_the_configured_one() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("owned_sessions_show_the_application_name");
        let mut plain = AdvisoryLock::new(&pool, key).await.unwrap();
        plain.lock_shared().await.unwrap();
        let pid = only_holder(key).await;
        assert_eq!(
            support::application_name_of(pid).await.as_deref(),
            Some(""),
            "the session's own (none), unless one is configured"
        );

        let mut named = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(LockOptions::new().application_name("billing-worker"));
        named.lock_shared().await.unwrap();
        let named_pid = *support::holders(key)
            .await
            .iter()
            .find(|p| **p != pid)
            .expect("the second lock holds");
        assert_eq!(
            support::application_name_of(named_pid).await.as_deref(),
            Some("billing-worker")
        );
        plain.close().await.unwrap();
        named.close().await.unwrap();
    }));
}

/// On a pool of one connection whose sessions start with their own settings: while a
/// lock owns the connection it shows its configured name, does not let
/// `idle_session_timeout` end it, and checks for a vanished client; after `close` the same
/// connection is back with its own name and idle timeouts, and the client check (which
/// was off) stays on.
#[test]
fn owned_pool_session_is_configured_while_locked_and_reset_by_close() {
    rt::run(Box::pin(async {
        let options: PgConnectOptions = support::database_url().parse().unwrap();
        let options = options
            .application_name("pool-app")
            .options([
                ("idle_session_timeout", "400ms"),
                ("idle_in_transaction_session_timeout", "10min"),
                ("client_connection_check_interval", "0"),
            ])
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(WAIT)
            .connect_with(options)
            .await
            .unwrap();
        let settings = [
            "application_name",
            "idle_session_timeout",
            "idle_in_transaction_session_timeout",
            "client_connection_check_interval",
        ];
        let (original_pid, original) = {
            let mut conn = pool.acquire().await.unwrap();
            let mut values = Vec::new();
            for name in settings {
                values.push(support::show(&mut conn, name).await);
            }
            (support::backend_pid(&mut conn).await, values)
        };
        assert_eq!(original, ["pool-app", "400ms", "10min", "0"]);

        let key = support::key("owned_pool_session_is_configured_while_locked");
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(LockOptions::new().application_name("pglock"));
        lock.lock().await.unwrap();
        assert_eq!(
            only_holder(key).await,
            original_pid,
            "the pool's one connection"
        );
        assert_eq!(
            support::application_name_of(original_pid).await.as_deref(),
            Some("pglock")
        );
        // Idle for well past the pool's idle_session_timeout: the lock turned it off.
        rt::sleep(Duration::from_millis(1200)).await; // the scenario: idle time
        assert!(
            support::backend_alive(original_pid).await,
            "idle_session_timeout is off"
        );
        assert!(lock.is_held().await.unwrap());
        lock.close().await.unwrap();

        let (mut conn, conn_pid) = support::acquire_with_pid(&pool).await;
        assert_eq!(conn_pid, original_pid, "same session");
        let mut after = Vec::new();
        for name in settings {
            after.push(support::show(&mut conn, name).await);
        }
        assert_eq!(
            after,
            ["pool-app", "400ms", "10min", "1s"],
            "close put the session's own name and idle timeouts back; the client check it \
             turned on stays on"
        );
        drop(conn);
        pool.close().await;
    }));
}

/// A lock on a borrowed connection changes none of its settings, for good or for a while.
#[test]
fn borrowed_connection_settings_are_unchanged_by_lock_unlock_and_close() {
    rt::run(Box::pin(async {
        let key = support::key("borrowed_connection_settings_are_unchanged");
        let mut conn = support::connect().await;
        let pid = support::backend_pid(&mut conn).await;
        sqlx::query("SELECT set_config('application_name', 'owner-app', false)")
            .execute(&mut conn)
            .await
            .unwrap();
        let names = [
            "application_name",
            "idle_session_timeout",
            "idle_in_transaction_session_timeout",
            "client_connection_check_interval",
            "lock_timeout",
            "statement_timeout",
        ];
        let before = show_all(&mut conn, &names).await;
        {
            let mut lock = AdvisoryLock::with_connection(&mut conn, key);
            lock.lock().await.unwrap();
            assert!(
                lock.try_lock_shared_for(Duration::from_millis(100))
                    .await
                    .unwrap()
            );
            assert_eq!(
                support::application_name_of(pid).await.as_deref(),
                Some("owner-app"),
                "a borrowed session keeps its name while locked"
            );
            lock.unlock().await.unwrap();
            assert!(lock.is_held().await.unwrap());
            lock.close().await.unwrap();
        }
        assert_eq!(show_all(&mut conn, &names).await, before);
        assert!(support::holders(key).await.is_empty());
        conn.close().await.unwrap();
    }));
}

async fn show_all(conn: &mut PgConnection, names: &[&str]) -> Vec<String> {
    let mut values = Vec::new();
    for name in names {
        values.push(support::show(conn, name).await);
    }
    values
}

/// The loss rules hold for guards, the `with_lock` helpers and fenced acquisitions: a
/// guard released after the loss reports it; `with_lock` whose session is terminated
/// during the work returns `LockLost` (from its `close`).
#[test]
fn guards_and_with_lock_report_a_loss_during_the_work() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("guards_and_with_lock_report_a_loss_during_the_work");

        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        let guard = lock.lock_shared_guard().await.unwrap();
        terminate(support::holders(key).await[0]).await;
        assert_lock_lost(guard.release().await, key, "guard.release() after the loss");
        assert!(!lock.is_held().await.unwrap(), "accounted for by the guard");
        lock.close().await.unwrap();

        let outcome = pglock::with_lock(&pool, key, || async {
            terminate(support::holders(key).await[0]).await;
            "the work ran"
        })
        .await;
        assert_lock_lost(outcome, key, "with_lock whose session died during the work");
        assert!(support::free_for_another_session(key).await);
    }));
}

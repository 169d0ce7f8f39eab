//! Leaks the Go suites cannot see: levels or waits left on a session after `close`, after
//! a drop or after a cancelled call, and pool connections that come back dirty (or do
//! not come back). Everything is checked from outside the lock: `pg_locks`,
//! `pg_stat_activity`, other sessions, and the pool's own connections.
//!
//! Each test body is boxed (`rt::run(Box::pin(async { .. }))`): in debug builds
//! async-std's `block_on` keeps several copies of the body's future in its stack frames,
//! and unboxed bodies overflowed the test thread's 2 MiB stack.

use crate::support;

use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, Error, LockKey};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use support::WAIT;
use support::assert_pool_holds_no_advisory_lock;
use support::only;
use support::rt;
use support::terminate;

/// How soon another session must get a key its holder let go of.
const FREED_WITHIN: Duration = Duration::from_secs(1);

/// Takes `exclusive` exclusive and `shared` shared levels on `lock`, mixing the blocking
/// and try forms, and returns the pid `pg_locks` shows holding them.
async fn take_levels(lock: &mut AdvisoryLock, exclusive: u32, shared: u32) -> i32 {
    for i in 0..exclusive {
        if i % 2 == 0 {
            rt::timeout(WAIT, lock.lock())
                .await
                .expect("lock()")
                .unwrap();
        } else {
            assert!(lock.try_lock().await.unwrap());
        }
    }
    for i in 0..shared {
        if i % 2 == 0 {
            rt::timeout(WAIT, lock.lock_shared())
                .await
                .expect("lock_shared()")
                .unwrap();
        } else {
            assert!(lock.try_lock_shared().await.unwrap());
        }
    }
    assert_eq!(
        (lock.exclusive_levels(), lock.shared_levels()),
        (exclusive, shared)
    );
    let holders = support::holders(lock.key()).await;
    let pid = holders[0];
    assert!(
        holders.iter().all(|&p| p == pid),
        "one session: {holders:?}"
    );
    pid
}

/// Polls (every 20 ms) until `conn`, another session, takes `key` exclusively with
/// `pg_try_advisory_lock`, failing the test after [`FREED_WITHIN`]; then releases it.
/// Returns how long it took.
async fn other_session_gets(conn: &mut PgConnection, key: LockKey, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        if support::try_lock_on(conn, key).await {
            assert!(support::unlock_on(conn, key).await);
            return start.elapsed();
        }
        assert!(
            start.elapsed() < FREED_WITHIN,
            "{what}: another session could not take {key} within {FREED_WITHIN:?} \
             (holders: {:?})",
            support::holders(key).await
        );
        rt::sleep(Duration::from_millis(20)).await;
    }
}

/// The session settings LockOptions changes on a session it owns, as that session
/// sees them now.
async fn session_settings(conn: &mut PgConnection) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN ('application_name', \
         'idle_session_timeout', 'idle_in_transaction_session_timeout', \
         'client_connection_check_interval') ORDER BY name",
    )
    .fetch_all(conn)
    .await
    .expect("read pg_settings")
}

#[test]
fn close_after_stacked_levels_frees_the_key_at_once_and_leaves_no_lock_in_the_pool() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("close_after_stacked_levels_frees_the_key_at_once");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut other = support::connect().await;
        let pid = take_levels(&mut lock, 3, 2).await;
        assert!(!support::try_lock_on(&mut other, key).await);

        lock.close().await.unwrap();
        assert!(support::holders(key).await.is_empty(), "close left levels");
        assert_eq!(support::advisory_locks_of(pid).await, 0);
        other_session_gets(&mut other, key, "after close").await;
        assert_pool_holds_no_advisory_lock(&pool).await;
        assert!(
            support::idle_pids(&pool).await.contains(&pid),
            "close returns a clean connection to the pool rather than closing it"
        );
        other.close().await.unwrap();
    }));
}

#[test]
fn close_of_an_int_pair_lock_frees_the_key_for_a_lock_on_another_pool() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let elsewhere = support::pool_with(2).await;
        let key = support::pair_key("close_of_an_int_pair_lock_frees_the_key");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut other = AdvisoryLock::new(&elsewhere, key).await.unwrap();
        take_levels(&mut lock, 3, 2).await;
        assert!(!other.try_lock_shared().await.unwrap());

        lock.close().await.unwrap();
        let start = Instant::now();
        while !other.try_lock().await.unwrap() {
            assert!(
                start.elapsed() < FREED_WITHIN,
                "a lock on another pool did not get the key within {FREED_WITHIN:?}"
            );
            rt::sleep(Duration::from_millis(20)).await;
        }
        let other_pid = only(support::holders(key).await);
        other.close().await.unwrap();
        assert_eq!(support::advisory_locks_of(other_pid).await, 0);
        assert!(support::holders(key).await.is_empty());
        assert_pool_holds_no_advisory_lock(&pool).await;
        assert_pool_holds_no_advisory_lock(&elsewhere).await;
    }));
}

/// Drops a lock from `AdvisoryLock::new` that holds `exclusive` + `shared` levels on
/// `key`; another session must get the key within a second, the dirty connection must
/// be closed (not returned), and the pool must hold no lock and still work.
async fn dropping_while_holding_frees_the_key(key: LockKey, exclusive: u32, shared: u32) {
    let pool = support::pool_with(4).await;
    let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
    let mut other = support::connect().await;
    let pid = take_levels(&mut lock, exclusive, shared).await;
    assert!(!support::try_lock_on(&mut other, key).await);

    drop(lock);
    other_session_gets(&mut other, key, "after the drop").await;
    support::eventually(WAIT, "the dropped lock's dirty session ends", || async {
        !support::backend_alive(pid).await
    })
    .await;
    assert_pool_holds_no_advisory_lock(&pool).await;
    assert!(
        !support::idle_pids(&pool).await.contains(&pid),
        "a connection that held levels went back to the pool"
    );

    // The pool still works, and its connections are clean.
    let mut conn = rt::timeout(WAIT, pool.acquire())
        .await
        .expect("acquire within the wait bound")
        .unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let conn_pid = support::backend_pid(&mut conn).await;
    assert_ne!(conn_pid, pid);
    assert_eq!(support::advisory_locks_of(conn_pid).await, 0);
    drop(conn);
    let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
    assert!(
        lock.try_lock().await.unwrap(),
        "a new lock on the same pool gets the key"
    );
    lock.close().await.unwrap();
    other.close().await.unwrap();
}

#[test]
fn dropping_a_lock_holding_exclusive_frees_the_key_and_closes_its_connection() {
    rt::run(Box::pin(dropping_while_holding_frees_the_key(
        support::key("dropping_a_lock_holding_exclusive"),
        1,
        0,
    )));
}

#[test]
fn dropping_a_lock_holding_shared_frees_the_key_and_closes_its_connection() {
    rt::run(Box::pin(dropping_while_holding_frees_the_key(
        support::key("dropping_a_lock_holding_shared"),
        0,
        1,
    )));
}

#[test]
fn dropping_a_lock_holding_stacked_exclusive_and_shared_levels_frees_the_key() {
    rt::run(Box::pin(dropping_while_holding_frees_the_key(
        support::key("dropping_a_lock_holding_stacked_levels"),
        3,
        2,
    )));
}

#[test]
fn dropping_a_lock_holding_an_int_pair_key_frees_the_key() {
    rt::run(Box::pin(dropping_while_holding_frees_the_key(
        support::pair_key("dropping_a_lock_holding_an_int_pair_key"),
        2,
        1,
    )));
}

/// A one-connection pool, and the pid of its connection (taken and given back).
async fn one_connection_pool() -> (PgPool, i32) {
    let pool = support::pool_with(1).await;
    let mut conn = pool.acquire().await.unwrap();
    let pid = support::backend_pid(&mut conn).await;
    drop(conn);
    support::settled(&pool, WAIT).await;
    (pool, pid)
}

#[test]
fn dropping_a_lock_that_never_locked_returns_its_connection_to_the_pool() {
    rt::run(Box::pin(async {
        let (pool, pid) = one_connection_pool().await;
        let key = support::key("dropping_a_lock_that_never_locked");
        let lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert_eq!(pool.num_idle(), 0, "the lock holds the only connection");
        drop(lock);
        support::settled(&pool, WAIT).await;
        assert_eq!(pool.size(), 1, "the connection was not closed");
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(
            support::backend_pid(&mut conn).await,
            pid,
            "the same session came back"
        );
        assert_eq!(support::advisory_locks_of(pid).await, 0);
    }));
}

/// Once used, a lock has set its session's options, which only `close` puts back; so a
/// dropped lock closes its connection (see the test below), and nothing of it remains.
#[test]
fn dropping_a_lock_after_every_level_was_unlocked_leaves_nothing_behind() {
    rt::run(Box::pin(async {
        let (pool, pid) = one_connection_pool().await;
        let key = support::key("dropping_a_lock_after_every_level_was_unlocked");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert_eq!(take_levels(&mut lock, 2, 2).await, pid);
        for _ in 0..2 {
            lock.unlock().await.unwrap();
            lock.unlock_shared().await.unwrap();
        }
        assert!(!lock.is_held().await.unwrap());
        drop(lock);
        support::settled(&pool, WAIT).await;
        let mut conn = pool.acquire().await.unwrap();
        let now = support::backend_pid(&mut conn).await;
        assert_eq!(support::advisory_locks_of(now).await, 0);
        assert_eq!(support::advisory_locks_of(pid).await, 0);
        assert!(support::free_for_another_session(key).await);
    }));
}

/// A one-connection pool whose sessions start with settings of their own (as a role's
/// or a connection string's would be), so "put back" is told apart from "reset to the
/// server default". Returns the pool and its connection's pid.
async fn one_connection_pool_with_session_settings() -> (PgPool, i32) {
    let options: PgConnectOptions = support::database_url().parse().unwrap();
    let options = options.application_name("pglock-tests-app").options([
        ("idle_in_transaction_session_timeout", "60s"),
        ("idle_session_timeout", "600s"),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(WAIT)
        .connect_with(options)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let pid = support::backend_pid(&mut conn).await;
    drop(conn);
    support::settled(&pool, WAIT).await;
    (pool, pid)
}

#[test]
fn close_returns_a_clean_connection_that_the_next_acquire_reuses() {
    rt::run(Box::pin(async {
        let (pool, pid) = one_connection_pool_with_session_settings().await;
        let key = support::key("close_returns_a_clean_connection");
        let mut conn = pool.acquire().await.unwrap();
        let settings_before = session_settings(&mut conn).await;
        drop(conn);
        support::settled(&pool, WAIT).await;

        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert_eq!(take_levels(&mut lock, 2, 1).await, pid);
        lock.close().await.unwrap();

        let (mut conn, conn_pid) = support::acquire_with_pid(&pool).await;
        assert_eq!(conn_pid, pid, "reused, not replaced");
        assert_eq!(pool.size(), 1);
        assert_eq!(
            support::advisory_locks_of(pid).await,
            0,
            "it came back holding locks"
        );
        // What the pool chose is back; what was off and the lock turned on (the client
        // check: it only makes the server notice a vanished client sooner) stays on.
        let mut expected = settings_before.clone();
        for (name, value) in &mut expected {
            if name == "client_connection_check_interval" && value == "0" {
                *value = "1000".to_owned();
            }
        }
        assert_eq!(
            session_settings(&mut conn).await,
            expected,
            "close puts the session settings back"
        );
        drop(conn);
        assert!(support::free_for_another_session(key).await);
    }));
}

/// A lock that changed its session's settings cannot put them back in `Drop` (that needs
/// the server), so a dropped lock closes its connection rather than hand the pool a
/// session with pglock's settings; `close()` is the way to return it for reuse.
#[test]
fn dropping_a_used_clean_lock_never_returns_its_connection_with_changed_settings() {
    rt::run(Box::pin(async {
        let (pool, pid) = one_connection_pool_with_session_settings().await;
        let key = support::key("dropping_a_used_clean_lock_returns_session_settings");
        let mut conn = pool.acquire().await.unwrap();
        let settings_before = session_settings(&mut conn).await;
        drop(conn);
        support::settled(&pool, WAIT).await;

        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(lock.try_lock().await.unwrap());
        lock.unlock().await.unwrap();
        drop(lock);

        let (mut conn, conn_pid) = support::acquire_with_pid(&pool).await;
        assert_ne!(
            conn_pid, pid,
            "the lock's connection was closed, not returned"
        );
        assert_eq!(
            session_settings(&mut conn).await,
            settings_before,
            "a clean lock dropped without close returned its pool connection with the \
             lock's session settings still applied"
        );
    }));
}

/// Documented: a lock over a borrowed connection that is dropped while it holds levels
/// leaves them with that session (the owner's session, the owner's locks).
#[test]
fn a_borrowed_connection_keeps_the_levels_of_a_dropped_lock_until_it_unlocks() {
    rt::run(Box::pin(async {
        let key = support::key("a_borrowed_connection_keeps_the_levels_until_it_unlocks");
        let mut conn = support::connect().await;
        let pid = support::backend_pid(&mut conn).await;
        let mut lock = AdvisoryLock::with_connection(&mut conn, key);
        assert!(lock.try_lock().await.unwrap());
        assert!(lock.try_lock_shared().await.unwrap());
        drop(lock);

        assert_eq!(
            support::holders_with_mode(key).await,
            vec![
                (pid, "ExclusiveLock".to_owned()),
                (pid, "ShareLock".to_owned())
            ]
        );
        assert!(!support::free_for_another_session(key).await);
        // Still there a while later: nothing releases them behind the owner's back.
        rt::sleep(Duration::from_millis(200)).await;
        assert_eq!(support::holders(key).await, vec![pid, pid]);

        assert!(support::unlock_on(&mut conn, key).await);
        let shared_released: bool = match key {
            LockKey::BigInt(k) => sqlx::query_scalar("SELECT pg_advisory_unlock_shared($1)")
                .bind(k)
                .fetch_one(&mut conn)
                .await
                .unwrap(),
            LockKey::IntPair(..) => unreachable!("support::key is a bigint key"),
        };
        assert!(shared_released);
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        conn.close().await.unwrap();
    }));
}

#[test]
fn a_borrowed_connection_keeps_the_levels_of_a_dropped_lock_until_it_closes() {
    rt::run(Box::pin(async {
        let key = support::key("a_borrowed_connection_keeps_the_levels_until_it_closes");
        let mut conn = support::connect().await;
        let pid = support::backend_pid(&mut conn).await;
        let mut lock = AdvisoryLock::with_connection(&mut conn, key);
        rt::timeout(WAIT, lock.lock())
            .await
            .expect("lock()")
            .unwrap();
        assert!(lock.try_lock().await.unwrap());
        drop(lock);

        assert_eq!(support::holders(key).await, vec![pid]);
        let mut other = support::connect().await;
        assert!(!support::try_lock_on(&mut other, key).await);
        // The owner can still use its connection; the levels are its own.
        assert_eq!(support::backend_pid(&mut conn).await, pid);
        assert_eq!(support::holders(key).await, vec![pid]);

        conn.close().await.unwrap();
        other_session_gets(&mut other, key, "after the borrowed connection closed").await;
        assert_eq!(support::advisory_locks_of(pid).await, 0);
        other.close().await.unwrap();
    }));
}

/// A blocking `lock()` given up (its future dropped by a timeout) must not leave a wait
/// on the server that is granted later, on a session nobody tracks.
#[test]
fn a_cancelled_blocking_lock_leaves_no_wait_or_grant_behind() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("a_cancelled_blocking_lock_leaves_no_wait_or_grant_behind");
        let (mut holder, _) = support::held_elsewhere(key).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        // Race lock() against "it waits in pg_locks": the wait is seen, then given up.
        let waiting_pid = futures_lite::future::or(
            async {
                let _ = lock.lock().await;
                panic!("lock() returned while another session held the key");
            },
            async {
                support::eventually(WAIT, "lock() waits in pg_locks", || async {
                    !support::waiters(key).await.is_empty()
                })
                .await;
                only(support::waiters(key).await)
            },
        )
        .await;
        assert_eq!(lock.exclusive_levels(), 0);

        // While the key is still held elsewhere, the abandoned wait must go away.
        support::eventually(WAIT, "the abandoned wait leaves pg_locks", || async {
            support::waiters(key).await.is_empty()
        })
        .await;
        assert!(support::unlock_on(&mut holder, key).await);
        assert!(support::holders(key).await.is_empty());
        other_session_gets(&mut holder, key, "after the cancelled wait").await;
        support::eventually(WAIT, "the cancelled wait's session ends", || async {
            !support::backend_alive(waiting_pid).await
        })
        .await;
        assert_pool_holds_no_advisory_lock(&pool).await;

        // The lock itself carries on, on a new session from its pool.
        assert!(lock.try_lock().await.unwrap());
        let new_pid = only(support::holders(key).await);
        assert_ne!(new_pid, waiting_pid);
        lock.close().await.unwrap();
        assert_pool_holds_no_advisory_lock(&pool).await;
        holder.close().await.unwrap();
    }));
}

/// An `unlock()` given up mid-statement may or may not have released its level; the
/// lock must not leave the session holding an untracked level in the pool.
#[test]
fn a_cancelled_unlock_leaves_no_level_behind_and_reports_the_lost_levels() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("a_cancelled_unlock_leaves_no_level_behind");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        let pid = take_levels(&mut lock, 2, 0).await;

        // One poll: the statement is sent, then its future dropped before the answer.
        let unlocked = futures_lite::future::poll_once(lock.unlock()).await;
        if let Some(result) = unlocked {
            // The runtime let it finish: then it released exactly one level.
            result.unwrap();
            assert_eq!(lock.exclusive_levels(), 1);
            lock.close().await.unwrap();
        } else {
            let mut other = support::connect().await;
            other_session_gets(&mut other, key, "after the cancelled unlock").await;
            other.close().await.unwrap();
            // A new acquisition works, on a new session; the levels lost with the ended
            // session (both: the cancelled unlock's outcome is unknown) are reported by
            // the unlocks that pair with them, after the new level (a stack).
            assert!(lock.try_lock().await.unwrap(), "the lock carries on");
            lock.unlock().await.unwrap();
            for n in 1..=2 {
                let lost = lock.unlock().await;
                assert!(
                    matches!(lost, Err(Error::LockLost { key: k }) if k == key),
                    "unlock {n} of a lost level: {lost:?}"
                );
            }
            let none = lock.unlock().await;
            assert!(matches!(none, Err(Error::NotHeld { .. })), "{none:?}");
            lock.close().await.unwrap();
        }
        assert!(support::holders(key).await.is_empty());
        support::eventually(WAIT, "the old session holds nothing", || async {
            support::advisory_locks_of(pid).await == 0
        })
        .await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    }));
}

/// A cancelled `is_held()` (a read) leaves its answer pending on the session; `close`
/// must still release every level and return the connection clean.
#[test]
fn close_after_a_cancelled_is_held_still_releases_every_level() {
    rt::run(Box::pin(async {
        let (pool, pid) = one_connection_pool().await;
        let key = support::key("close_after_a_cancelled_is_held");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert_eq!(take_levels(&mut lock, 1, 1).await, pid);
        let _ = futures_lite::future::poll_once(lock.is_held()).await;
        lock.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    }));
}

#[test]
fn a_terminated_session_is_reported_as_lock_lost_until_accounted_for_and_the_lock_reconnects() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("a_terminated_session_is_reported_as_lock_lost_once");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        let pid = take_levels(&mut lock, 2, 1).await;

        terminate(pid).await;
        assert!(
            support::free_for_another_session(key).await,
            "the server freed the key"
        );
        // A new acquisition works, on a new session from the same pool.
        assert!(lock.try_lock().await.unwrap());
        assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (1, 0));
        let new_pid = only(support::holders(key).await);
        assert_ne!(new_pid, pid);
        // The loss stays reported until each lost level is accounted for.
        let held = lock.is_held().await;
        assert!(
            matches!(held, Err(Error::LockLost { key: k }) if k == key),
            "is_held with lost levels unaccounted for: {held:?}"
        );
        lock.unlock().await.unwrap(); // the new level, first
        for shared in [false, false, true] {
            let lost = match shared {
                false => lock.unlock().await,
                true => lock.unlock_shared().await,
            };
            assert!(
                matches!(lost, Err(Error::LockLost { key: k }) if k == key),
                "an unlock paired with a lost level: {lost:?}"
            );
        }
        assert!(!lock.is_held().await.unwrap(), "all accounted for");
        lock.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        assert_pool_holds_no_advisory_lock(&pool).await;
        assert!(
            !support::idle_pids(&pool).await.contains(&pid),
            "the dead connection is not in the pool"
        );
    }));
}

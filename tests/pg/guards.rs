//! `AdvisoryLockGuard`: a held level that is released by `release()`, or, once dropped,
//! before the lock's next operation, at `close`, or with the owned connection when the
//! lock itself is dropped. Every claim is checked from outside the lock: `pg_locks`, and
//! another session trying the key.

use crate::support;

use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, Error, LockMode};
use sqlx::Connection;
use support::assert_pool_holds_no_advisory_lock;
use support::only_holder;
use support::rt;
use support::terminate;

#[test]
fn lock_guard_holds_the_key_and_release_frees_it_at_once() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("lock_guard_holds_the_key_and_release_frees_it_at_once");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        let guard = lock.lock_guard().await.unwrap();
        assert_eq!(guard.mode(), LockMode::Exclusive);
        assert_eq!(guard.key(), key);
        let pid = only_holder(key).await;
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![(pid, "ExclusiveLock".to_owned())]
        );
        assert!(
            !support::free_for_another_session(key).await,
            "another session took a key held through a guard"
        );

        guard.release().await.unwrap();
        // At once: no polling.
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);

        lock.close().await.unwrap();
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn dropped_guard_keeps_the_key_until_is_held_releases_it() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropped_guard_keeps_the_key_until_is_held_releases_it");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        let guard = lock.lock_guard().await.unwrap();
        let pid = only_holder(key).await;
        drop(guard);

        // Drop cannot reach the server: the level is owed, the key still held.
        assert_eq!(support::holders(key).await, vec![pid]);
        assert!(!support::free_for_another_session(key).await);

        // The next operation first gives the owed level back.
        assert!(!lock.is_held().await.unwrap());
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);

        lock.close().await.unwrap();
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn dropped_guard_is_released_before_the_next_try_lock_takes_a_new_level() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropped_guard_is_released_before_the_next_try_lock");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        drop(lock.lock_guard().await.unwrap());
        let pid = only_holder(key).await;
        assert!(!support::free_for_another_session(key).await);

        // try_lock releases the owed level, then takes one: one level in all, so one
        // unlock frees the key (two levels would keep it held).
        assert!(lock.try_lock().await.unwrap());
        assert_eq!(support::holders(key).await, vec![pid]);
        lock.unlock().await.unwrap();
        assert!(
            support::holders(key).await.is_empty(),
            "the dropped guard's level was not released before try_lock"
        );
        assert!(support::free_for_another_session(key).await);
        assert!(matches!(
            lock.unlock().await,
            Err(Error::NotHeld { key: k, mode: LockMode::Exclusive }) if k == key
        ));

        lock.close().await.unwrap();
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn dropped_guard_then_close_frees_the_key() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropped_guard_then_close_frees_the_key");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        drop(lock.lock_guard().await.unwrap());
        let pid = only_holder(key).await;
        assert!(!support::free_for_another_session(key).await);

        lock.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        // close hands a clean connection back to the pool.
        assert_pool_holds_no_advisory_lock(&pool).await;
        assert_eq!(support::advisory_locks_of(pid).await, 0);
    });
}

#[test]
fn dropped_guard_then_dropped_lock_frees_the_key_with_its_connection() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropped_guard_then_dropped_lock_frees_the_key");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        drop(lock.lock_guard().await.unwrap());
        let pid = only_holder(key).await;
        assert!(!support::free_for_another_session(key).await);

        drop(lock);
        support::freed_within(Duration::from_secs(1), key, "the lock was dropped").await;
        assert!(support::holders(key).await.is_empty());
        assert_pool_holds_no_advisory_lock(&pool).await;
        assert!(
            !support::idle_pids(&pool).await.contains(&pid),
            "the connection that held the owed level went back to the pool"
        );
    });
}

#[test]
fn shared_guards_of_two_locks_overlap_and_keep_an_exclusive_try_out_until_both_are_gone() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("shared_guards_of_two_locks_overlap");
        let mut first = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut second = AdvisoryLock::new(&pool, key).await.unwrap();

        let first_guard = first.lock_shared_guard().await.unwrap();
        let second_guard = second
            .try_lock_shared_guard()
            .await
            .unwrap()
            .expect("a second shared level is granted alongside the first");
        assert_eq!(first_guard.mode(), LockMode::Shared);
        assert_eq!(second_guard.mode(), LockMode::Shared);
        let holders = support::holders_with_mode(key).await;
        assert_eq!(holders.len(), 2, "two sessions hold the key: {holders:?}");
        assert!(holders.iter().all(|(_, mode)| mode == "ShareLock"));
        assert_ne!(holders[0].0, holders[1].0);
        let second_pid = holders
            .iter()
            .map(|(pid, _)| *pid)
            .find(|pid| *pid != holders[0].0)
            .unwrap();
        assert!(!support::free_for_another_session(key).await);

        first_guard.release().await.unwrap();
        assert_eq!(support::holders(key).await.len(), 1);
        assert!(
            !support::free_for_another_session(key).await,
            "one shared guard is left"
        );

        drop(second_guard);
        // Owed, not yet released.
        assert_eq!(support::holders(key).await.len(), 1);
        assert!(!support::free_for_another_session(key).await);

        // Flushed by the lock's next operation.
        assert!(!second.is_held().await.unwrap());
        assert!(support::holders(key).await.is_empty());
        assert_eq!(support::advisory_locks_of(second_pid).await, 0);
        assert!(support::free_for_another_session(key).await);

        first.close().await.unwrap();
        second.close().await.unwrap();
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn try_lock_guard_is_none_while_held_elsewhere_and_some_when_free() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("try_lock_guard_is_none_while_held_elsewhere");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        let (mut other, other_pid) = support::held_elsewhere(key).await;

        assert!(lock.try_lock_guard().await.unwrap().is_none());
        assert!(lock.try_lock_shared_guard().await.unwrap().is_none());

        let start = Instant::now();
        let gave_up = lock
            .try_lock_guard_for(Duration::from_millis(100))
            .await
            .unwrap()
            .is_none();
        let elapsed = start.elapsed();
        assert!(gave_up);
        support::assert_between(
            elapsed,
            Duration::from_millis(100),
            Duration::from_millis(350),
            "try_lock_guard_for(100ms) while held elsewhere",
        );
        eprintln!(
            "[{}] try_lock_guard_for(100ms) gave up after {elapsed:?}",
            rt::NAME
        );

        let start = Instant::now();
        let gave_up = lock
            .try_lock_shared_guard_for(Duration::from_millis(100))
            .await
            .unwrap()
            .is_none();
        let elapsed = start.elapsed();
        assert!(gave_up);
        support::assert_between(
            elapsed,
            Duration::from_millis(100),
            Duration::from_millis(350),
            "try_lock_shared_guard_for(100ms) while held exclusively elsewhere",
        );
        // The failed attempts took nothing.
        assert_eq!(support::holders(key).await, vec![other_pid]);
        assert!(!lock.is_held().await.unwrap());

        assert!(support::unlock_on(&mut other, key).await);

        let guard = lock
            .try_lock_guard()
            .await
            .unwrap()
            .expect("the key is free");
        let pid = only_holder(key).await;
        assert_ne!(pid, other_pid);
        assert!(!support::try_lock_on(&mut other, key).await);
        guard.release().await.unwrap();
        assert!(support::holders(key).await.is_empty());

        let start = Instant::now();
        let guard = lock
            .try_lock_guard_for(Duration::from_millis(100))
            .await
            .unwrap()
            .expect("the key is free");
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "a free key is granted without waiting: {:?}",
            start.elapsed()
        );
        assert_eq!(only_holder(key).await, pid);
        guard.release().await.unwrap();

        let guard = lock
            .try_lock_shared_guard_for(Duration::from_millis(100))
            .await
            .unwrap()
            .expect("the key is free");
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![(pid, "ShareLock".to_owned())]
        );
        guard.release().await.unwrap();
        assert!(support::try_lock_on(&mut other, key).await);
        assert!(support::unlock_on(&mut other, key).await);

        lock.close().await.unwrap();
        let _ = other.close().await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn dropping_a_guard_over_stacked_levels_releases_only_its_own_level() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropping_a_guard_over_stacked_levels_releases_only_its_own");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        lock.lock().await.unwrap();
        lock.lock().await.unwrap();
        let guard = lock.lock_guard().await.unwrap();
        let pid = only_holder(key).await;
        drop(guard);

        // Flush the owed level: two manual levels remain.
        assert!(lock.is_held().await.unwrap());
        assert_eq!(support::holders(key).await, vec![pid]);
        assert!(!support::free_for_another_session(key).await);

        lock.unlock().await.unwrap();
        assert_eq!(
            support::holders(key).await,
            vec![pid],
            "one manual level is left"
        );
        assert!(!support::free_for_another_session(key).await);

        lock.unlock().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        assert!(matches!(
            lock.unlock().await,
            Err(Error::NotHeld { key: k, mode: LockMode::Exclusive }) if k == key
        ));

        lock.close().await.unwrap();
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn dropping_an_exclusive_guard_over_a_shared_level_releases_the_exclusive_level_only() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropping_an_exclusive_guard_over_a_shared_level");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        lock.lock_shared().await.unwrap();
        drop(lock.lock_guard().await.unwrap());
        let pid = support::holders_with_mode(key).await[0].0;
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![
                (pid, "ExclusiveLock".to_owned()),
                (pid, "ShareLock".to_owned())
            ]
        );

        assert!(lock.is_held().await.unwrap());
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![(pid, "ShareLock".to_owned())],
            "the owed exclusive level went, the manual shared one stayed"
        );
        let mut other = support::connect().await;
        assert!(!support::try_lock_on(&mut other, key).await);
        assert!(support::try_lock_shared_on(&mut other, key).await);
        assert!(support::unlock_shared_on(&mut other, key).await);

        lock.unlock_shared().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        support::take_then_close(other, key).await;

        lock.close().await.unwrap();
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn guard_release_after_the_session_was_terminated_is_lock_lost() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("guard_release_after_the_session_was_terminated");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        let guard = lock.lock_guard().await.unwrap();
        let pid = only_holder(key).await;
        terminate(pid).await;
        assert!(support::holders(key).await.is_empty());

        let released = guard.release().await;
        assert!(
            matches!(released, Err(Error::LockLost { key: k }) if k == key),
            "release after the session was terminated: {released:?}"
        );
        assert!(support::free_for_another_session(key).await);

        lock.close().await.unwrap();
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn dropped_guard_after_the_session_was_terminated_is_accounted_for_silently_and_the_lock_works_on()
{
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropped_guard_after_the_session_was_terminated");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        drop(lock.lock_guard().await.unwrap());
        let pid = only_holder(key).await;
        terminate(pid).await;

        // The dropped guard gave its level up: nobody is left to tell of its loss, and
        // the owed release finds nothing to do. The lock goes on, on a new session.
        let next = lock.is_held().await;
        assert!(
            matches!(next, Ok(false)),
            "after the owed release: {next:?}"
        );
        assert!(support::free_for_another_session(key).await);
        assert!(lock.try_lock().await.unwrap());
        assert_ne!(only_holder(key).await, pid);

        lock.close().await.unwrap();
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

//! `with_lock` and friends: run a future while holding a key, and free the key afterwards
//! whatever the future did (returned, failed, panicked, or was dropped). Checked from
//! outside: `pg_locks`, another session trying the key, and the pool's idle connections.

use crate::support;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use futures_lite::future::zip;
use pglock::memory::MemoryLocks;
use pglock::{LockProvider, try_with_lock, with_lock, with_lock_for, with_lock_shared};
use sqlx::Connection;
use support::WAIT;
use support::assert_pool_holds_no_advisory_lock;
use support::rt;

/// Raises `max` to `value` if it is higher.
fn raise(max: &AtomicUsize, value: usize) {
    max.fetch_max(value, Ordering::SeqCst);
}

#[test]
fn with_lock_runs_the_closure_under_the_key_and_frees_it_at_once_after() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("with_lock_runs_the_closure_under_the_key");

        let value = with_lock(&pool, key, || async move {
            assert_eq!(
                support::holders(key).await.len(),
                1,
                "one session holds the key"
            );
            assert!(
                !support::free_for_another_session(key).await,
                "another session took the key inside with_lock"
            );
            42
        })
        .await
        .unwrap();
        assert_eq!(value, 42);

        // At once, no polling.
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn with_lock_hands_back_the_closures_error_and_frees_the_key() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("with_lock_hands_back_the_closures_error");

        let outcome: pglock::Result<Result<(), String>> = with_lock(&pool, key, || async move {
            assert!(!support::free_for_another_session(key).await);
            Err("the work failed".to_owned())
        })
        .await;
        match outcome {
            Ok(Err(message)) => assert_eq!(message, "the work failed"),
            other => panic!("expected Ok(Err(..)), got {other:?}"),
        }

        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn a_panic_inside_with_lock_propagates_and_the_key_is_freed() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("a_panic_inside_with_lock_propagates");
        let entered = AtomicBool::new(false);
        let entered = &entered;

        let helper = with_lock(&pool, key, move || async move {
            entered.store(true, Ordering::SeqCst);
            assert!(!support::free_for_another_session(key).await);
            let fail = true;
            if fail {
                panic!("work panicked under the lock");
            }
            7
        });
        let caught = AssertUnwindSafe(helper).catch_unwind().await;
        assert!(entered.load(Ordering::SeqCst), "the closure ran");
        let payload = match caught {
            Err(payload) => payload,
            Ok(result) => panic!("the panic was swallowed: {result:?}"),
        };
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("<not a string>");
        assert_eq!(message, "work panicked under the lock");

        let took = support::eventually(
            Duration::from_secs(1),
            "another session gets the key after the panic",
            || support::free_for_another_session(key),
        )
        .await;
        eprintln!("[{}] key free {took:?} after the panic", rt::NAME);
        assert!(support::holders(key).await.is_empty());
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn two_with_lock_shared_helpers_overlap_while_an_exclusive_try_fails() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("two_with_lock_shared_helpers_overlap");
        let inside = AtomicUsize::new(0);
        let max_inside = AtomicUsize::new(0);
        let exclusive_failed = AtomicUsize::new(0);

        let shared_work = |name: &'static str| {
            let (inside, max_inside, exclusive_failed) = (&inside, &max_inside, &exclusive_failed);
            let pool = &pool;
            async move {
                with_lock_shared(pool, key, move || async move {
                    raise(max_inside, inside.fetch_add(1, Ordering::SeqCst) + 1);
                    rt::sleep(Duration::from_millis(300)).await;
                    if !support::free_for_another_session(key).await {
                        exclusive_failed.fetch_add(1, Ordering::SeqCst);
                    }
                    inside.fetch_sub(1, Ordering::SeqCst);
                    name
                })
                .await
            }
        };
        let both = rt::timeout(WAIT, zip(shared_work("first"), shared_work("second")))
            .await
            .expect("both shared helpers finish");
        assert_eq!(both.0.unwrap(), "first");
        assert_eq!(both.1.unwrap(), "second");
        assert_eq!(
            max_inside.load(Ordering::SeqCst),
            2,
            "both shared helpers were inside at once"
        );
        assert_eq!(
            exclusive_failed.load(Ordering::SeqCst),
            2,
            "an exclusive try failed while the shared helpers ran"
        );

        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn with_lock_shared_holds_the_key_in_share_mode_in_two_sessions_at_once() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("with_lock_shared_holds_the_key_in_share_mode");
        let entered = AtomicUsize::new(0);
        let looked = AtomicUsize::new(0);

        let shared_work = || {
            let (entered, looked) = (&entered, &looked);
            let pool = &pool;
            async move {
                with_lock_shared(pool, key, move || async move {
                    entered.fetch_add(1, Ordering::SeqCst);
                    support::eventually(WAIT, "both helpers are inside", || async {
                        entered.load(Ordering::SeqCst) == 2
                    })
                    .await;
                    let holders = support::holders_with_mode(key).await;
                    // Neither leaves before both have looked.
                    looked.fetch_add(1, Ordering::SeqCst);
                    support::eventually(WAIT, "both helpers looked", || async {
                        looked.load(Ordering::SeqCst) == 2
                    })
                    .await;
                    holders
                })
                .await
                .unwrap()
            }
        };
        let (first, second) = rt::timeout(WAIT, zip(shared_work(), shared_work()))
            .await
            .expect("both shared helpers finish");
        for holders in [first, second] {
            assert_eq!(holders.len(), 2, "two sessions hold the key: {holders:?}");
            assert!(holders.iter().all(|(_, mode)| mode == "ShareLock"));
            assert_ne!(holders[0].0, holders[1].0);
        }
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn try_with_lock_skips_the_closure_while_held_elsewhere_and_runs_it_when_free() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("try_with_lock_skips_the_closure_while_held_elsewhere");
        let (mut other, _) = support::held_elsewhere(key).await;
        let ran = AtomicBool::new(false);
        let ran = &ran;

        let skipped = try_with_lock(&pool, key, move || async move {
            ran.store(true, Ordering::SeqCst);
            1
        })
        .await
        .unwrap();
        assert_eq!(skipped, None);
        assert!(
            !ran.load(Ordering::SeqCst),
            "the closure ran without the key"
        );
        // Nothing was left behind by the failed attempt.
        assert_pool_holds_no_advisory_lock(&pool).await;

        assert!(support::unlock_on(&mut other, key).await);
        let value = try_with_lock(&pool, key, move || async move {
            ran.store(true, Ordering::SeqCst);
            assert_eq!(support::holders(key).await.len(), 1);
            assert!(!support::free_for_another_session(key).await);
            2
        })
        .await
        .unwrap();
        assert_eq!(value, Some(2));
        assert!(ran.load(Ordering::SeqCst));

        support::take_then_close(other, key).await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn with_lock_for_gives_up_within_the_bound_while_held_elsewhere() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("with_lock_for_gives_up_within_the_bound");
        let (mut other, other_pid) = support::held_elsewhere(key).await;
        let ran = AtomicBool::new(false);
        let ran = &ran;

        let start = Instant::now();
        let outcome = with_lock_for(&pool, key, Duration::from_millis(100), move || async move {
            ran.store(true, Ordering::SeqCst);
        })
        .await
        .unwrap();
        let elapsed = start.elapsed();
        assert_eq!(outcome, None);
        assert!(
            !ran.load(Ordering::SeqCst),
            "the closure ran without the key"
        );
        support::assert_between(
            elapsed,
            Duration::from_millis(100),
            Duration::from_millis(350),
            "with_lock_for(100ms) while held elsewhere",
        );
        eprintln!(
            "[{}] with_lock_for(100ms) gave up after {elapsed:?}",
            rt::NAME
        );

        assert_eq!(support::holders(key).await, vec![other_pid]);
        assert!(support::waiters(key).await.is_empty());
        assert!(support::unlock_on(&mut other, key).await);
        let _ = other.close().await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn with_lock_for_runs_the_closure_when_the_holder_releases_inside_the_window() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("with_lock_for_runs_the_closure_when_the_holder_releases");
        let (mut other, _) = support::held_elsewhere(key).await;
        let release_after = Duration::from_millis(200);

        let start = Instant::now();
        let helper = with_lock_for(&pool, key, Duration::from_secs(3), move || async move {
            let granted = start.elapsed();
            assert!(!support::free_for_another_session(key).await);
            granted
        });
        let holder = async {
            rt::sleep(release_after).await;
            assert!(support::unlock_on(&mut other, key).await);
        };
        let (outcome, ()) = rt::timeout(WAIT, zip(helper, holder))
            .await
            .expect("with_lock_for and the holder finish");
        let granted = outcome.unwrap().expect("granted inside the window");
        assert!(
            granted >= release_after && granted < Duration::from_secs(3),
            "granted after {granted:?}: not after the release at {release_after:?}, or not \
             inside the window"
        );
        eprintln!(
            "[{}] with_lock_for(3s) granted {:?} after the release",
            rt::NAME,
            granted - release_after
        );

        support::take_then_close(other, key).await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn with_lock_works_with_memory_locks_as_provider() {
    rt::run(async {
        let locks = MemoryLocks::new();
        let key = support::key("with_lock_works_with_memory_locks");

        let value = with_lock(&locks, key, || async {
            assert_eq!(locks.holders(key), 1);
            let mut other = locks.lock(key);
            assert!(!other.try_lock().await.unwrap());
            other.close().await.unwrap();
            "done"
        })
        .await
        .unwrap();
        assert_eq!(value, "done");

        assert_eq!(locks.holders(key), 0);
        let mut other = locks.lock(key);
        assert!(other.try_lock().await.unwrap());
        other.close().await.unwrap();
    });
}

#[test]
fn try_with_lock_works_with_memory_locks_as_provider() {
    rt::run(async {
        let locks = &MemoryLocks::new();
        let key = support::key("try_with_lock_works_with_memory_locks");
        let ran = AtomicBool::new(false);
        let ran = &ran;
        let mut holder = locks.lock(key);
        assert!(holder.try_lock().await.unwrap());

        let skipped = try_with_lock(locks, key, move || async move {
            ran.store(true, Ordering::SeqCst);
            1
        })
        .await
        .unwrap();
        assert_eq!(skipped, None);
        assert!(!ran.load(Ordering::SeqCst));
        assert_eq!(locks.holders(key), 1);

        holder.unlock().await.unwrap();
        let value = try_with_lock(locks, key, move || async move {
            ran.store(true, Ordering::SeqCst);
            assert_eq!(locks.holders(key), 1);
            2
        })
        .await
        .unwrap();
        assert_eq!(value, Some(2));
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(locks.holders(key), 0);
        assert!(holder.try_lock().await.unwrap());
        holder.close().await.unwrap();
    });
}

#[test]
fn helpers_work_through_a_dyn_lock_provider() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let locks = MemoryLocks::new();
        let key = support::key("helpers_work_through_a_dyn_lock_provider");

        let provider: &dyn LockProvider = &pool;
        let value = with_lock(provider, key, || async move {
            assert_eq!(support::holders(key).await.len(), 1);
            assert!(!support::free_for_another_session(key).await);
            1
        })
        .await
        .unwrap();
        assert_eq!(value, 1);
        assert!(support::free_for_another_session(key).await);

        let (mut other, _) = support::held_elsewhere(key).await;
        assert_eq!(
            try_with_lock(provider, key, || async { 2 }).await.unwrap(),
            None
        );
        assert!(support::unlock_on(&mut other, key).await);
        assert_eq!(
            try_with_lock(provider, key, || async { 3 }).await.unwrap(),
            Some(3)
        );
        assert_eq!(
            with_lock_for(provider, key, Duration::from_millis(100), || async { 4 })
                .await
                .unwrap(),
            Some(4)
        );
        let _ = other.close().await;
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;

        let provider: &dyn LockProvider = &locks;
        let value = with_lock(provider, key, || async {
            assert_eq!(locks.holders(key), 1);
            5
        })
        .await
        .unwrap();
        assert_eq!(value, 5);
        assert_eq!(locks.holders(key), 0);
        let value = with_lock_shared(provider, key, || async {
            assert_eq!(locks.holders(key), 1);
            6
        })
        .await
        .unwrap();
        assert_eq!(value, 6);
        assert_eq!(locks.holders(key), 0);
    });
}

#[test]
fn dropping_a_with_lock_future_while_it_waits_leaves_no_trace() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropping_a_with_lock_future_while_it_waits");
        let (mut other, _) = support::held_elsewhere(key).await;
        let ran = AtomicBool::new(false);
        let ran = &ran;

        let waiting = with_lock(&pool, key, move || async move {
            ran.store(true, Ordering::SeqCst);
        });
        let watch = async {
            support::eventually(WAIT, "the helper waits for the key", || async {
                support::waiters(key).await.len() == 1
            })
            .await;
        };
        // The helper is dropped by the timeout, after the watcher saw it wait.
        let (outcome, _) = zip(rt::timeout(Duration::from_millis(500), waiting), watch).await;
        assert!(outcome.is_none(), "the helper got a held key");
        assert!(!ran.load(Ordering::SeqCst));

        assert!(support::unlock_on(&mut other, key).await);
        support::freed_within(Duration::from_secs(2), key, "the holder released").await;
        assert!(
            !ran.load(Ordering::SeqCst),
            "the dropped helper ran its closure"
        );
        support::eventually(WAIT, "no one waits for the key", || async {
            support::waiters(key).await.is_empty()
        })
        .await;
        assert!(support::holders(key).await.is_empty());
        let _ = other.close().await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn dropping_a_with_lock_future_while_its_closure_runs_frees_the_key() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropping_a_with_lock_future_while_its_closure_runs");
        let entered = AtomicBool::new(false);
        let finished = AtomicBool::new(false);
        let (entered, finished) = (&entered, &finished);

        let helper = with_lock(&pool, key, move || async move {
            entered.store(true, Ordering::SeqCst);
            rt::sleep(Duration::from_secs(30)).await;
            finished.store(true, Ordering::SeqCst);
        });
        let watch = async {
            support::eventually(WAIT, "the closure runs under the key", || async {
                entered.load(Ordering::SeqCst) && support::holders(key).await.len() == 1
            })
            .await;
            assert!(!support::free_for_another_session(key).await);
        };
        let (outcome, ()) = zip(rt::timeout(Duration::from_millis(500), helper), watch).await;
        assert!(outcome.is_none());
        assert!(!finished.load(Ordering::SeqCst));

        support::freed_within(
            Duration::from_secs(1),
            key,
            "the helper was dropped mid-work",
        )
        .await;
        assert!(support::holders(key).await.is_empty());
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

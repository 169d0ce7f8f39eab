//! The behaviours every `LockProvider` must have, each proven from outside the lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pglock::{Error, LockKey, LockMode};

use crate::backend::Backend;
use crate::support::{self, rt};

/// Bounds for every wait in this suite.
pub const LIMIT: Duration = Duration::from_secs(10);

pub fn key(behaviour: &str) -> LockKey {
    support::key(&format!("conformance/{behaviour}"))
}

pub async fn wait_for_waiters(backend: &Backend, key: LockKey, n: usize) {
    support::eventually(LIMIT, "requests queued", || async {
        backend.waiters(key).await == n
    })
    .await;
}

pub async fn levels_stack_and_need_as_many_unlocks(backend: Backend) {
    let key = key("stack");
    let mut a = backend.lock(key).await;
    let mut b = backend.lock(key).await;
    // Eight levels, taken by blocking and by trying: a holder's own levels never block it.
    for level in 1..=8 {
        if level % 2 == 0 {
            assert!(a.try_lock().await.unwrap(), "level {level}");
        } else {
            rt::timeout(LIMIT, a.lock())
                .await
                .expect("lock() of a key this lock holds returns at once")
                .unwrap();
        }
    }
    assert_eq!(backend.holders(key).await, 1);
    for remaining in (0..8).rev() {
        assert!(
            !b.try_lock().await.unwrap(),
            "taken with {} levels left",
            remaining + 1
        );
        a.unlock().await.unwrap();
    }
    assert_eq!(backend.holders(key).await, 0);
    // The failed tries took nothing.
    assert!(matches!(b.unlock().await, Err(Error::NotHeld { .. })));
    assert!(b.try_lock().await.unwrap());
    assert!(!a.try_lock().await.unwrap(), "and now b excludes a");
    assert!(matches!(
        a.unlock().await,
        Err(Error::NotHeld {
            mode: LockMode::Exclusive,
            ..
        })
    ));
    b.unlock().await.unwrap();
    assert_eq!(backend.holders(key).await, 0);
    b.close().await.unwrap();
    a.close().await.unwrap();
}

pub async fn shared_holders_share_and_exclude_writers(backend: Backend) {
    let key = key("shared");
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut lock = backend.lock(key).await;
        assert!(lock.try_lock_shared().await.unwrap());
        readers.push(lock);
    }
    assert_eq!(backend.holders(key).await, 4);
    let mut writer = backend.lock(key).await;
    assert!(!writer.try_lock().await.unwrap(), "shared blocks exclusive");
    for (i, reader) in readers.iter_mut().enumerate() {
        assert!(
            !writer.try_lock().await.unwrap(),
            "{} shared holders left still block exclusive",
            4 - i
        );
        reader.unlock_shared().await.unwrap();
    }
    assert!(writer.try_lock().await.unwrap());
    assert!(
        !readers[0].try_lock_shared().await.unwrap(),
        "exclusive blocks shared"
    );
    writer.close().await.unwrap();
}

pub async fn one_session_may_hold_both_modes(backend: Backend) {
    let key = key("both-modes");
    let mut a = backend.lock(key).await;
    assert!(a.try_lock_shared().await.unwrap());
    assert!(
        a.try_lock().await.unwrap(),
        "own shared level does not block"
    );
    assert!(
        a.try_lock_shared().await.unwrap(),
        "own exclusive level does not block"
    );
    a.unlock().await.unwrap();
    // Levels are counted apart: two shared levels are still held, no exclusive.
    assert!(matches!(
        a.unlock().await,
        Err(Error::NotHeld {
            mode: LockMode::Exclusive,
            ..
        })
    ));
    let mut b = backend.lock(key).await;
    assert!(!b.try_lock().await.unwrap());
    assert!(b.try_lock_shared().await.unwrap());
    a.unlock_shared().await.unwrap();
    a.unlock_shared().await.unwrap();
    b.unlock_shared().await.unwrap();
    assert!(b.try_lock().await.unwrap());
    b.close().await.unwrap();
}

pub async fn unlock_without_a_level_is_not_held_and_changes_nothing(backend: Backend) {
    for key in [key("not-held"), support::pair_key("conformance/not-held")] {
        let mut a = backend.lock(key).await;
        for (result, mode) in [
            (a.unlock().await, LockMode::Exclusive),
            (a.unlock_shared().await, LockMode::Shared),
        ] {
            match result {
                Err(Error::NotHeld { key: k, mode: m }) => assert_eq!((k, m), (key, mode)),
                other => panic!("expected NotHeld, got {other:?}"),
            }
        }
        let message = a.unlock().await.unwrap_err().to_string();
        assert!(message.contains(&key.to_string()), "{message}");
        assert!(message.contains("exclusive"), "{message}");
        assert!(!a.is_held().await.unwrap());
        assert_eq!(backend.holders(key).await, 0);
        // The lock is as good as new.
        assert!(a.try_lock().await.unwrap());
        a.unlock().await.unwrap();
        assert!(matches!(a.unlock().await, Err(Error::NotHeld { .. })));
        assert!(a.try_lock_shared().await.unwrap());
        assert!(matches!(a.unlock().await, Err(Error::NotHeld { .. })));
        assert!(a.is_held().await.unwrap(), "the shared level is untouched");
        assert_eq!(backend.holders(key).await, 1);
        a.close().await.unwrap();
    }
}

pub async fn closed_lock_refuses_every_operation_and_closes_twice(backend: Backend) {
    let key = key("closed");
    let mut a = backend.lock(key).await;
    a.lock().await.unwrap();
    a.close().await.unwrap();
    assert!(matches!(a.lock().await, Err(Error::Closed)));
    assert!(matches!(a.lock_shared().await, Err(Error::Closed)));
    assert!(matches!(a.try_lock().await, Err(Error::Closed)));
    assert!(matches!(a.try_lock_shared().await, Err(Error::Closed)));
    let short = Duration::from_millis(10);
    assert!(matches!(a.try_lock_for(short).await, Err(Error::Closed)));
    assert!(matches!(
        a.try_lock_shared_for(short).await,
        Err(Error::Closed)
    ));
    assert!(matches!(a.unlock().await, Err(Error::Closed)));
    assert!(matches!(a.unlock_shared().await, Err(Error::Closed)));
    assert!(matches!(a.is_held().await, Err(Error::Closed)));
    assert_eq!(a.key(), key, "key() still answers after close");
    a.close().await.unwrap();
    a.close().await.expect("a third close is Ok");
    assert!(matches!(a.try_lock().await, Err(Error::Closed)));
    // A lock that never held anything closes the same way: Closed, not NotHeld, after.
    let mut b = backend.lock(key).await;
    b.close().await.unwrap();
    assert!(matches!(b.try_lock().await, Err(Error::Closed)));
    assert!(
        matches!(b.unlock().await, Err(Error::Closed)),
        "Closed, not NotHeld, after close"
    );
    b.close().await.unwrap();
}

pub async fn close_frees_the_key_for_another_session(backend: Backend) {
    let key = key("close-frees");
    let mut a = backend.lock(key).await;
    a.lock().await.unwrap();
    a.lock().await.unwrap();
    a.lock_shared().await.unwrap();
    a.close().await.unwrap();
    assert_eq!(backend.holders(key).await, 0);
    let mut b = backend.lock(key).await;
    assert!(b.try_lock().await.unwrap());
    b.close().await.unwrap();
}

pub async fn drop_frees_the_key_for_another_session(backend: Backend) {
    let key = key("drop-frees");
    let mut a = backend.lock(key).await;
    a.lock().await.unwrap();
    a.lock_shared().await.unwrap();
    drop(a);
    let mut b = backend.lock(key).await;
    let started = Instant::now();
    while !b.try_lock().await.unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not free within 1 s of the drop"
        );
        rt::sleep(Duration::from_millis(10)).await;
    }
    b.close().await.unwrap();
}

pub async fn waiters_are_granted_in_arrival_order(backend: Backend) {
    let key = key("fifo");
    let mut holder = backend.lock(key).await;
    holder.lock().await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, mode) in [LockMode::Exclusive, LockMode::Shared, LockMode::Exclusive]
        .into_iter()
        .enumerate()
    {
        let mut lock = backend.lock(key).await;
        let order = Arc::clone(&order);
        tasks.push(rt::spawn(async move {
            match mode {
                LockMode::Exclusive => lock.lock().await.unwrap(),
                LockMode::Shared => lock.lock_shared().await.unwrap(),
            }
            order.lock().unwrap().push(i);
            rt::sleep(Duration::from_millis(50)).await;
            lock.close().await.unwrap();
        }));
        // Queue them one after another, so arrival order is known.
        wait_for_waiters(&backend, key, i + 1).await;
    }
    holder.unlock().await.unwrap();
    for task in tasks {
        rt::timeout(LIMIT, task).await.expect("waiter finished");
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    holder.close().await.unwrap();
}

pub async fn queued_writer_makes_shared_try_fail(backend: Backend) {
    let key = key("queued-writer");
    let mut reader = backend.lock(key).await;
    assert!(reader.try_lock_shared().await.unwrap());
    let mut writer = backend.lock(key).await;
    let writer_task = rt::spawn(async move {
        writer.lock().await.unwrap();
        writer.close().await.unwrap();
    });
    wait_for_waiters(&backend, key, 1).await;
    let mut late_reader = backend.lock(key).await;
    assert!(
        !late_reader.try_lock_shared().await.unwrap(),
        "a shared try must not overtake a queued exclusive request"
    );
    reader.unlock_shared().await.unwrap();
    rt::timeout(LIMIT, writer_task)
        .await
        .expect("writer got the lock");
    assert!(late_reader.try_lock_shared().await.unwrap());
    late_reader.close().await.unwrap();
    reader.close().await.unwrap();
}

pub async fn timed_wait_gives_up_within_bounds(backend: Backend) {
    let key = key("timed-bounds");
    let mut holder = backend.lock(key).await;
    holder.lock().await.unwrap();
    let mut waiter = backend.lock(key).await;
    let wait = Duration::from_millis(100);
    for mode in [LockMode::Exclusive, LockMode::Shared] {
        let started = Instant::now();
        let acquired = match mode {
            LockMode::Exclusive => waiter.try_lock_for(wait).await.unwrap(),
            LockMode::Shared => waiter.try_lock_shared_for(wait).await.unwrap(),
        };
        let took = started.elapsed();
        assert!(!acquired);
        assert!(
            took >= wait && took <= wait + Duration::from_millis(250),
            "{mode} wait of {wait:?} gave up after {took:?}"
        );
    }
    assert_eq!(
        backend.waiters(key).await,
        0,
        "a timed-out wait leaves the queue"
    );
    assert!(!waiter.is_held().await.unwrap());
    holder.close().await.unwrap();
    waiter.close().await.unwrap();
}

pub async fn timed_wait_succeeds_when_released_inside_the_window(backend: Backend) {
    let key = key("timed-success");
    let mut holder = backend.lock(key).await;
    holder.lock().await.unwrap();
    let mut waiter = backend.lock(key).await;
    let started = Instant::now();
    let release = async {
        rt::sleep(Duration::from_millis(200)).await;
        holder.unlock().await.unwrap();
    };
    let (acquired, ()) =
        futures_lite::future::zip(waiter.try_lock_for(Duration::from_secs(5)), release).await;
    assert!(acquired.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "granted soon after the release"
    );
    assert!(waiter.is_held().await.unwrap());
    waiter.close().await.unwrap();
    holder.close().await.unwrap();
}

pub async fn zero_timeout_is_a_plain_try(backend: Backend) {
    let key = key("zero-timeout");
    // As fast as a try: well under the bound a timed wait may overrun by.
    let at_once = Duration::from_millis(250);
    let mut a = backend.lock(key).await;
    let mut b = backend.lock(key).await;
    assert!(a.try_lock_for(Duration::ZERO).await.unwrap());
    for mode in [LockMode::Exclusive, LockMode::Shared] {
        let started = Instant::now();
        let acquired = match mode {
            LockMode::Exclusive => b.try_lock_for(Duration::ZERO).await.unwrap(),
            LockMode::Shared => b.try_lock_shared_for(Duration::ZERO).await.unwrap(),
        };
        let took = started.elapsed();
        assert!(!acquired, "{mode} on a held key");
        assert!(
            took < at_once,
            "{mode}: zero timeout on a held key took {took:?}"
        );
    }
    a.close().await.unwrap();
    // On a free key it takes the level at once, in either mode, and one lock holds both.
    for mode in [LockMode::Exclusive, LockMode::Shared] {
        let started = Instant::now();
        let acquired = match mode {
            LockMode::Exclusive => b.try_lock_for(Duration::ZERO).await.unwrap(),
            LockMode::Shared => b.try_lock_shared_for(Duration::ZERO).await.unwrap(),
        };
        let took = started.elapsed();
        assert!(acquired, "{mode} on a free key");
        assert!(
            took < at_once,
            "{mode}: zero timeout on a free key took {took:?}"
        );
    }
    assert_eq!(backend.holders(key).await, 1, "one session, both modes");
    b.unlock().await.unwrap();
    b.unlock_shared().await.unwrap();
    assert_eq!(backend.holders(key).await, 0);
    b.close().await.unwrap();
}

pub async fn cancelled_wait_leaves_no_trace(backend: Backend) {
    let key = key("cancelled-wait");
    let mut holder = backend.lock(key).await;
    holder.lock().await.unwrap();
    let mut waiter = backend.lock(key).await;
    assert!(
        rt::timeout(Duration::from_millis(100), waiter.lock())
            .await
            .is_none(),
        "the wait was cancelled"
    );
    holder.unlock().await.unwrap();
    // The cancelled wait must not take the key behind our back: another session gets it
    // within 2 s, although `waiter` is still alive and never touched again until then.
    let mut other = backend.lock(key).await;
    let started = Instant::now();
    while !other.try_lock().await.unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "key not free within 2 s"
        );
        rt::sleep(Duration::from_millis(10)).await;
    }
    other.unlock().await.unwrap();
    // And the lock object is usable again, at once.
    let next = rt::timeout(Duration::from_secs(2), waiter.try_lock())
        .await
        .expect("next call returns within 2 s");
    assert!(next.unwrap());
    waiter.close().await.unwrap();
    other.close().await.unwrap();
    holder.close().await.unwrap();
}

pub async fn many_tasks_on_one_key_never_overlap(backend: Backend) {
    let key = key("no-overlap");
    let inside = Arc::new(AtomicBool::new(false));
    let entries = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let backend = backend.clone();
            let inside = Arc::clone(&inside);
            let entries = Arc::clone(&entries);
            rt::spawn(async move {
                let mut lock = backend.lock(key).await;
                for _ in 0..10 {
                    lock.lock().await.unwrap();
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    entries.fetch_add(1, Ordering::SeqCst);
                    rt::sleep(Duration::from_millis(1)).await;
                    inside.store(false, Ordering::SeqCst);
                    lock.unlock().await.unwrap();
                }
                lock.close().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        rt::timeout(Duration::from_secs(60), task)
            .await
            .expect("task finished");
    }
    assert_eq!(entries.load(Ordering::SeqCst), 80);
    assert_eq!(backend.holders(key).await, 0, "every task let go");
}

pub async fn is_held_reports_any_mode(backend: Backend) {
    let key = key("is-held");
    let mut a = backend.lock(key).await;
    let mut other = backend.lock(key).await;
    assert_eq!(a.key(), key);
    assert!(!a.is_held().await.unwrap());
    a.lock().await.unwrap();
    assert!(a.is_held().await.unwrap());
    assert!(
        !other.is_held().await.unwrap(),
        "is_held is about this lock only"
    );
    a.unlock().await.unwrap();
    assert!(!a.is_held().await.unwrap());
    a.lock_shared().await.unwrap();
    assert!(a.is_held().await.unwrap());
    assert!(!backend.is_postgres() || backend.holders(key).await == 1);
    assert!(other.try_lock_shared().await.unwrap());
    a.unlock_shared().await.unwrap();
    assert!(!a.is_held().await.unwrap());
    assert!(other.is_held().await.unwrap());
    other.unlock_shared().await.unwrap();
    assert!(!other.is_held().await.unwrap());
    // Stacked: held until the last level goes.
    assert!(a.try_lock().await.unwrap());
    assert!(a.try_lock().await.unwrap());
    a.unlock().await.unwrap();
    assert!(a.is_held().await.unwrap());
    a.unlock().await.unwrap();
    assert!(!a.is_held().await.unwrap());
    other.close().await.unwrap();
    a.close().await.unwrap();
}

pub async fn lost_resolves_at_once_without_levels_and_not_while_held(backend: Backend) {
    let key = key("lost");
    let at_once = Duration::from_millis(100);
    let mut a = backend.lock(key).await;
    let lost = rt::timeout(at_once, a.lost())
        .await
        .expect("resolves at once");
    assert!(
        matches!(lost, Error::NotHeld { key: k, .. } if k == key),
        "{lost:?}"
    );
    // After a lock/unlock pair too.
    a.lock().await.unwrap();
    a.unlock().await.unwrap();
    let lost = rt::timeout(at_once, a.lost())
        .await
        .expect("resolves at once");
    assert!(matches!(lost, Error::NotHeld { .. }), "{lost:?}");
    a.lock().await.unwrap();
    assert!(
        rt::timeout(Duration::from_millis(1500), a.lost())
            .await
            .is_none(),
        "a held lock is not lost"
    );
    assert!(
        a.is_held().await.unwrap(),
        "still held after the lost() race"
    );
    a.close().await.unwrap();
    let lost = rt::timeout(at_once, a.lost())
        .await
        .expect("resolves at once");
    assert!(matches!(lost, Error::Closed), "{lost:?}");
}

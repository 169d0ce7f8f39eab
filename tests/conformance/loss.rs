//! The rules of "When a lock is lost" (`DistributedLock`'s docs): a loss made from
//! outside (PostgreSQL: the holders' backends terminated; `MemoryLocks::lose`), then what
//! each call on the lock reports.

use std::time::Duration;

use pglock::{DistributedLock, Error, LockMode};

use crate::backend::Backend;
use crate::suite::{LIMIT, key, wait_for_waiters};
use crate::support::assert_lock_lost;
use crate::support::rt;

fn assert_not_held<T: std::fmt::Debug>(result: pglock::Result<T>, mode: LockMode, what: &str) {
    match result {
        Err(Error::NotHeld { mode: m, .. }) => assert_eq!(m, mode, "{what}"),
        other => panic!("{what}: expected Err(NotHeld {{ {mode} }}), got {other:?}"),
    }
}

async fn acquire(lock: &mut dyn DistributedLock, mode: LockMode) {
    match mode {
        LockMode::Exclusive => lock.lock().await.unwrap(),
        LockMode::Shared => lock.lock_shared().await.unwrap(),
    }
}

async fn release(lock: &mut dyn DistributedLock, mode: LockMode) -> pglock::Result<()> {
    match mode {
        LockMode::Exclusive => lock.unlock().await,
        LockMode::Shared => lock.unlock_shared().await,
    }
}

pub async fn each_unlock_pairing_with_a_lost_level_reports_lock_lost_then_not_held(
    backend: Backend,
) {
    for mode in [LockMode::Exclusive, LockMode::Shared] {
        let key = key(&format!("lost-levels-{mode}"));
        let mut a = backend.lock(key).await;
        acquire(a.as_mut(), mode).await;
        acquire(a.as_mut(), mode).await;
        assert_eq!(backend.lose(key).await, 1, "one session held {mode}");
        assert_eq!(backend.holders(key).await, 0, "the loss freed the key");
        assert_lock_lost(release(a.as_mut(), mode).await, key, "first lost level");
        assert_lock_lost(release(a.as_mut(), mode).await, key, "second lost level");
        assert_not_held(release(a.as_mut(), mode).await, mode, "nothing left");
        assert!(
            !a.is_held().await.unwrap(),
            "every lost level accounted for"
        );
        a.close().await.unwrap();
    }
}

pub async fn a_loss_takes_the_levels_of_both_modes(backend: Backend) {
    let key = key("lost-both-modes");
    let mut a = backend.lock(key).await;
    a.lock_shared().await.unwrap();
    a.lock().await.unwrap();
    a.lock().await.unwrap();
    assert_eq!(backend.lose(key).await, 1);
    assert_eq!(backend.holders(key).await, 0, "the loss freed the key");
    assert_lock_lost(a.unlock().await, key, "first lost exclusive level");
    assert_lock_lost(a.unlock_shared().await, key, "the lost shared level");
    // Modes are counted apart: no shared level is owed, an exclusive one still is.
    assert_not_held(a.unlock_shared().await, LockMode::Shared, "no shared left");
    assert_lock_lost(a.unlock().await, key, "second lost exclusive level");
    assert!(
        !a.is_held().await.unwrap(),
        "every lost level accounted for"
    );
    assert_not_held(a.unlock().await, LockMode::Exclusive, "no exclusive left");
    assert_not_held(a.unlock_shared().await, LockMode::Shared, "no shared left");
    a.close().await.unwrap();
}

pub async fn is_held_lost_and_close_report_the_loss_until_every_level_is_accounted_for(
    backend: Backend,
) {
    let key = key("lost-until-accounted");
    let mut a = backend.lock(key).await;
    a.lock().await.unwrap();
    a.lock().await.unwrap();
    backend.lose(key).await;
    assert_lock_lost(a.is_held().await, key, "is_held");
    assert_lock_lost(a.is_held().await, key, "is_held accounts for nothing");
    for round in 0..2 {
        let lost = rt::timeout(LIMIT, a.lost()).await.expect("lost() resolves");
        assert!(
            matches!(lost, Error::LockLost { key: k } if k == key),
            "lost(), round {round}: {lost:?}"
        );
    }
    assert_lock_lost(a.unlock().await, key, "one of two lost levels");
    assert_lock_lost(a.is_held().await, key, "is_held with one level unaccounted");
    assert_lock_lost(a.close().await, key, "close with one level unaccounted");
    a.close().await.unwrap();
    assert!(matches!(a.is_held().await, Err(Error::Closed)));
}

pub async fn close_after_a_loss_reports_it_and_accounts_for_every_level(backend: Backend) {
    let key = key("close-after-loss");
    let mut a = backend.lock(key).await;
    a.lock_shared().await.unwrap();
    a.lock().await.unwrap();
    backend.lose(key).await;
    assert!(a.try_lock().await.unwrap(), "a level taken after the loss");
    assert_eq!(backend.holders(key).await, 1);
    assert_lock_lost(a.close().await, key, "close");
    assert_eq!(
        backend.holders(key).await,
        0,
        "close released the new level"
    );
    a.close().await.expect("a second close is Ok");
    assert!(matches!(a.unlock().await, Err(Error::Closed)));
    assert!(matches!(a.unlock_shared().await, Err(Error::Closed)));
    assert!(matches!(a.is_held().await, Err(Error::Closed)));
}

pub async fn a_pending_lost_resolves_when_the_levels_are_lost(backend: Backend) {
    let key = key("pending-lost");
    let mut a = backend.lock(key).await;
    a.lock().await.unwrap();
    let lose = async {
        rt::sleep(Duration::from_millis(100)).await;
        backend.lose(key).await
    };
    let (lost, holders) = futures_lite::future::zip(rt::timeout(LIMIT, a.lost()), lose).await;
    assert_eq!(holders, 1);
    match lost {
        Some(Error::LockLost { key: k }) => assert_eq!(k, key),
        other => panic!("expected lost() to resolve with LockLost, got {other:?}"),
    }
    assert_lock_lost(a.unlock().await, key, "the lost level");
    a.close().await.unwrap();
}

pub async fn a_new_acquisition_after_a_loss_works_and_is_released_first(backend: Backend) {
    let key = key("acquire-after-loss");
    let mut a = backend.lock(key).await;
    a.lock_shared().await.unwrap();
    a.lock().await.unwrap();
    backend.lose(key).await;
    // Acquisitions of either mode work at once.
    assert!(a.try_lock_shared().await.unwrap());
    a.lock().await.unwrap();
    assert_eq!(backend.holders(key).await, 1, "the new levels are held");
    assert_lock_lost(a.is_held().await, key, "lost levels are still unaccounted");
    // The newest levels first: the ones taken after the loss.
    a.unlock_shared().await.unwrap();
    a.unlock().await.unwrap();
    assert_eq!(
        backend.holders(key).await,
        0,
        "the new levels were released"
    );
    assert_lock_lost(a.unlock_shared().await, key, "then the lost shared level");
    assert_lock_lost(a.unlock().await, key, "then the lost exclusive level");
    assert_not_held(a.unlock().await, LockMode::Exclusive, "then nothing");
    assert!(!a.is_held().await.unwrap());
    assert!(a.try_lock_shared().await.unwrap());
    a.close().await.unwrap();
}

pub async fn a_lost_key_is_free_for_another_session_and_its_waiter(backend: Backend) {
    let key = key("lost-key-free");
    let mut a = backend.lock(key).await;
    a.lock().await.unwrap();
    let mut b = backend.lock(key).await;
    let b = rt::spawn(async move {
        b.lock().await.unwrap();
        b
    });
    wait_for_waiters(&backend, key, 1).await;
    assert_eq!(backend.lose(key).await, 1, "only a holds the key; b waits");
    let mut b = rt::timeout(LIMIT, b)
        .await
        .expect("b granted after the loss");
    assert_eq!(backend.holders(key).await, 1);
    b.close().await.unwrap();
    let mut c = backend.lock(key).await;
    assert!(c.try_lock().await.unwrap(), "the key is free");
    c.close().await.unwrap();
    assert_lock_lost(a.close().await, key, "a's close reports its loss");
}

pub async fn a_pending_wait_of_a_lost_session_fails_with_lock_lost(backend: Backend) {
    let key = key("lost-while-waiting");
    let mut a = backend.lock(key).await;
    let mut c = backend.lock(key).await;
    a.lock_shared().await.unwrap();
    c.lock_shared().await.unwrap();
    let a = rt::spawn(async move {
        let waited = a.lock().await; // waits for c's shared level
        (a, waited)
    });
    wait_for_waiters(&backend, key, 1).await;
    assert_eq!(backend.lose(key).await, 2);
    let (mut a, waited) = rt::timeout(LIMIT, a).await.expect("a's wait ends");
    assert_lock_lost(waited, key, "the pending wait");
    assert_eq!(backend.waiters(key).await, 0);
    assert_eq!(backend.holders(key).await, 0);
    assert_lock_lost(a.unlock_shared().await, key, "a's lost shared level");
    assert_not_held(
        a.unlock().await,
        LockMode::Exclusive,
        "the wait took nothing",
    );
    assert_lock_lost(c.close().await, key, "c's close");
    a.close().await.unwrap();
}

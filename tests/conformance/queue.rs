//! A session that already holds the key asks for the other mode while someone waits:
//! PostgreSQL 15 refuses its `try` (the wait mask), but lets its wait go ahead of a waiter
//! it blocks, or fails it at once when that waiter also blocks it (`ProcSleep`).

use std::time::{Duration, Instant};

use pglock::{Error, LockKey};

use crate::backend::Backend;
use crate::suite::{LIMIT, key, wait_for_waiters};
use crate::support::rt;

fn assert_deadlock<T: std::fmt::Debug>(result: pglock::Result<T>, key: LockKey, what: &str) {
    match result {
        Err(Error::Deadlock { key: k }) => assert_eq!(k, key, "{what}"),
        other => panic!("{what}: expected Err(Deadlock), got {other:?}"),
    }
}

/// `b` asks for the exclusive level in a task of its own; the task ends holding it, and
/// gives the lock back.
fn spawn_exclusive_waiter(
    mut b: Box<dyn pglock::DistributedLock>,
) -> rt::Task<Box<dyn pglock::DistributedLock>> {
    rt::spawn(async move {
        b.lock().await.unwrap();
        b
    })
}

pub async fn holders_try_for_a_new_mode_fails_while_a_conflicting_request_waits(backend: Backend) {
    let key = key("holder-try-new-mode");
    let mut a = backend.lock(key).await;
    a.lock_shared().await.unwrap();
    let b = spawn_exclusive_waiter(backend.lock(key).await);
    wait_for_waiters(&backend, key, 1).await;
    assert!(
        !a.try_lock().await.unwrap(),
        "a try for a new mode must not jump the queue"
    );
    assert!(!a.try_lock_for(Duration::ZERO).await.unwrap());
    assert!(
        a.try_lock_shared().await.unwrap(),
        "a mode already held is granted at once"
    );
    assert_eq!(backend.waiters(key).await, 1, "b still waits");
    a.unlock_shared().await.unwrap();
    a.unlock_shared().await.unwrap();
    let mut b = rt::timeout(LIMIT, b)
        .await
        .expect("b granted once a let go");
    assert_eq!(backend.holders(key).await, 1);
    b.close().await.unwrap();
    a.close().await.unwrap();
}

pub async fn exclusive_holders_shared_try_fails_while_an_exclusive_request_waits(backend: Backend) {
    let key = key("exclusive-holder-try-shared");
    let mut a = backend.lock(key).await;
    a.lock().await.unwrap();
    let b = spawn_exclusive_waiter(backend.lock(key).await);
    wait_for_waiters(&backend, key, 1).await;
    assert!(!a.try_lock_shared().await.unwrap());
    assert!(!a.try_lock_shared_for(Duration::ZERO).await.unwrap());
    assert!(
        a.try_lock().await.unwrap(),
        "a mode already held is granted"
    );
    a.unlock().await.unwrap();
    assert_eq!(backend.waiters(key).await, 1, "one exclusive level is left");
    a.unlock().await.unwrap();
    let mut b = rt::timeout(LIMIT, b)
        .await
        .expect("b granted once a let go");
    b.close().await.unwrap();
    a.close().await.unwrap();
}

pub async fn holders_wait_is_granted_at_once_ahead_of_a_waiter_it_blocks(backend: Backend) {
    let key = key("holder-wait-granted");
    let mut a = backend.lock(key).await;
    a.lock_shared().await.unwrap();
    let b = spawn_exclusive_waiter(backend.lock(key).await);
    wait_for_waiters(&backend, key, 1).await;
    let started = Instant::now();
    assert!(a.try_lock_for(Duration::from_secs(5)).await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "granted at once"
    );
    assert_eq!(backend.holders(key).await, 1, "a holds both modes");
    assert_eq!(backend.waiters(key).await, 1, "b still waits");
    a.unlock().await.unwrap();
    a.unlock_shared().await.unwrap();
    let mut b = rt::timeout(LIMIT, b)
        .await
        .expect("b granted once a let go");
    b.close().await.unwrap();
    a.close().await.unwrap();
}

pub async fn holders_wait_queues_ahead_of_a_waiter_it_blocks(backend: Backend) {
    let key = key("holder-wait-queues-ahead");
    let mut a = backend.lock(key).await;
    let mut c = backend.lock(key).await;
    a.lock_shared().await.unwrap();
    c.lock_shared().await.unwrap();
    let b = spawn_exclusive_waiter(backend.lock(key).await);
    wait_for_waiters(&backend, key, 1).await;
    // c's shared level keeps a waiting too, but ahead of b, whom a blocks.
    let a = spawn_exclusive_waiter(a);
    wait_for_waiters(&backend, key, 2).await;
    c.unlock_shared().await.unwrap();
    let mut a = rt::timeout(LIMIT, a)
        .await
        .expect("a, queued second, granted first");
    assert_eq!(backend.waiters(key).await, 1, "b still waits");
    assert!(a.is_held().await.unwrap());
    a.close().await.unwrap();
    let mut b = rt::timeout(LIMIT, b)
        .await
        .expect("b granted once a closed");
    b.close().await.unwrap();
    c.close().await.unwrap();
}

pub async fn wait_that_closes_a_cycle_fails_at_once_with_deadlock(backend: Backend) {
    let key = key("deadlock-at-once");
    let mut a = backend.lock(key).await;
    let mut c = backend.lock(key).await;
    a.lock_shared().await.unwrap();
    c.lock_shared().await.unwrap();
    let c = spawn_exclusive_waiter(c); // waits for a's shared level
    wait_for_waiters(&backend, key, 1).await;
    // a would wait for c's shared level while c waits for a's: PostgreSQL says so at once,
    // long before its 1 s deadlock_timeout, so not `Ok(false)` after 300 ms.
    assert_deadlock(
        a.try_lock_for(Duration::from_millis(300)).await,
        key,
        "timed wait",
    );
    let blocking = rt::timeout(LIMIT, a.lock())
        .await
        .expect("a blocking wait fails as fast");
    assert_deadlock(blocking, key, "blocking wait");
    assert!(a.is_held().await.unwrap(), "a keeps its shared level");
    assert_eq!(backend.holders(key).await, 2);
    assert_eq!(backend.waiters(key).await, 1, "c still waits");
    a.unlock_shared().await.unwrap();
    let mut c = rt::timeout(LIMIT, c)
        .await
        .expect("c granted once a let go");
    c.close().await.unwrap();
    a.close().await.unwrap();
}

//! Cancellation: a lock future dropped before its answer (by a timeout, a `select!`, a
//! finished race) must never leave a grant behind, must not poison the pool, and must
//! leave the lock object giving sensible answers. Every claim is checked in `pg_locks`
//! from other sessions.

use crate::support;

use std::time::{Duration, Instant};

use futures_lite::future;
use pglock::{AdvisoryLock, Error, LockKey, LockOptions};
use sqlx::{Connection, PgConnection};
use support::WAIT;
use support::XorShift;
use support::assert_lock_lost;
use support::rt;

/// How soon a cancelled wait must be gone from the server once the key is released.
const FREED_WITHIN: Duration = Duration::from_secs(2);

/// How long `support::lanes::delayed_pool`'s proxy holds back every answer from the server.
const PROXY_DELAY: Duration = Duration::from_millis(25);

/// Blocks (bounded) until `conn` holds `key` exclusively (`shared`: in shared mode).
/// A session whose wait was just cancelled may still hold the key for a moment.
async fn take_on(conn: &mut PgConnection, key: LockKey, shared: bool) -> Duration {
    let LockKey::BigInt(k) = key else {
        panic!("bigint keys only here")
    };
    let sql = if shared {
        "SELECT pg_advisory_lock_shared($1)"
    } else {
        "SELECT pg_advisory_lock($1)"
    };
    let start = Instant::now();
    rt::timeout(WAIT, sqlx::query(sql).bind(k).execute(conn))
        .await
        .unwrap_or_else(|| panic!("the holder session did not get {key} within {WAIT:?}"))
        .expect("holder takes the key");
    start.elapsed()
}

async fn release_on(conn: &mut PgConnection, key: LockKey, shared: bool) {
    let released = if shared {
        support::unlock_shared_on(conn, key).await
    } else {
        support::unlock_on(conn, key).await
    };
    assert!(released, "the holder session releases {key}");
}

/// Nobody holds or waits for `key`, within [`FREED_WITHIN`]; returns how long that took.
async fn key_is_left_alone(key: LockKey, what: &str) -> Duration {
    support::eventually(FREED_WITHIN, what, || async {
        support::holders(key).await.is_empty() && support::waiters(key).await.is_empty()
    })
    .await
}

/// Polls `operation` until `pg_locks` shows a session waiting for `key`, then drops it.
/// Returns the waiting pid. Fails if the operation finished instead.
async fn drop_while_waiting<T: std::fmt::Debug>(
    key: LockKey,
    operation: impl std::future::Future<Output = T>,
) -> i32 {
    let finished = future::or(async { Some(operation.await) }, async {
        support::eventually(WAIT, "the wait shows in pg_locks", || async {
            !support::waiters(key).await.is_empty()
        })
        .await;
        None
    })
    .await;
    assert!(
        finished.is_none(),
        "the operation returned while the key was held: {finished:?}"
    );
    let waiters = support::waiters(key).await;
    waiters.first().copied().unwrap_or(0)
}

/// The stress: 200 rounds in which a holder releases after a random 0-30 ms and a
/// waiter's `lock()` is given up after a random 0-30 ms, so the future is dropped before
/// it sends, while it waits, or just as it is granted. In one round of four the waiter
/// holds a shared level before it asks (the holder then holds shared too), so a
/// cancelled wait must cost it that level and report `LockLost` exactly once.
#[test]
fn two_hundred_randomly_timed_cancellations_leave_no_grant_waiter_or_dirty_connection() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("two_hundred_randomly_timed_cancellations");
        let mut holder = support::connect().await;
        let mut waiter = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut rng = XorShift::new(0x2545_F491_4F6C_DD1D);
        let (mut acquired, mut cancelled, mut lost_reported) = (0, 0, 0);
        let mut slowest_holder_take = Duration::ZERO;
        let mut slowest_free = Duration::ZERO;

        for round in 1..=200 {
            let shared_before = rng.below(4) == 0;
            let hold = Duration::from_millis(rng.below(31));
            let give_up = Duration::from_millis(rng.below(31));
            if shared_before {
                rt::timeout(WAIT, waiter.lock_shared())
                    .await
                    .unwrap_or_else(|| panic!("round {round}: lock_shared() hung"))
                    .unwrap_or_else(|err| panic!("round {round}: lock_shared(): {err}"));
            }
            let took = take_on(&mut holder, key, shared_before).await;
            slowest_holder_take = slowest_holder_take.max(took);

            let waiting = rt::timeout(give_up, waiter.lock());
            let releasing = async {
                rt::sleep(hold).await; // the schedule under test
                release_on(&mut holder, key, shared_before).await;
            };
            let (outcome, ()) = future::zip(waiting, releasing).await;

            match outcome {
                Some(Ok(())) => {
                    acquired += 1;
                    assert_eq!(waiter.exclusive_levels(), 1, "round {round}");
                    waiter.unlock().await.expect("unlock after lock()");
                    if shared_before {
                        waiter.unlock_shared().await.expect("unlock_shared");
                    }
                }
                Some(Err(err)) => panic!("round {round}: lock() failed: {err}"),
                None => {
                    cancelled += 1;
                    assert_eq!(
                        (waiter.exclusive_levels(), waiter.shared_levels()),
                        (0, 0),
                        "round {round}: a cancelled acquisition ends the session and its levels"
                    );
                    // The next call answers at once: LockLost exactly when levels were
                    // held before the cancelled call.
                    let next = rt::timeout(FREED_WITHIN, waiter.is_held())
                        .await
                        .unwrap_or_else(|| panic!("round {round}: next call hung"));
                    if shared_before {
                        assert_lock_lost(next, key, &format!("round {round}"));
                        lost_reported += 1;
                        // The loss stays reported until accounted for: the unlock that
                        // pairs with the lost shared level says so, and accounts for it.
                        let unlocked = waiter.unlock_shared().await;
                        assert_lock_lost(unlocked, key, &format!("round {round} unlock_shared"));
                    } else {
                        assert!(matches!(next, Ok(false)), "round {round}: {next:?}");
                    }
                }
            }
            // The lock object works on: its next call is prompt and truthful.
            let next = rt::timeout(FREED_WITHIN, waiter.is_held())
                .await
                .unwrap_or_else(|| panic!("round {round}: is_held hung"));
            assert!(matches!(next, Ok(false)), "round {round}: {next:?}");

            if round % 20 == 0 {
                let took = key_is_left_alone(
                    key,
                    &format!("round {round}: nobody holds or waits for the key"),
                )
                .await;
                slowest_free = slowest_free.max(took);
                for (pid, locks) in support::advisory_locks_of_idle(&pool).await {
                    assert_eq!(locks, 0, "round {round}: idle pool connection {pid}");
                }
            }
        }
        eprintln!(
            "[{}] 200 rounds: {acquired} acquired, {cancelled} cancelled ({lost_reported} \
             reported LockLost); slowest holder re-take {slowest_holder_take:?}; slowest \
             check-point until the key was left alone {slowest_free:?}",
            rt::NAME
        );
        assert!(
            acquired > 0 && cancelled > 0 && lost_reported > 0,
            "the schedule covers every outcome"
        );

        // A fresh try on the lock works, and closing leaves a clean pool.
        assert!(
            rt::timeout(FREED_WITHIN, waiter.try_lock())
                .await
                .unwrap()
                .unwrap()
        );
        waiter.unlock().await.unwrap();
        waiter.close().await.unwrap();
        key_is_left_alone(key, "at the end, nobody holds or waits for the key").await;
        support::settled(&pool, WAIT).await;
        for (pid, locks) in support::advisory_locks_of_idle(&pool).await {
            assert_eq!(locks, 0, "idle pool connection {pid} at the end");
        }
        holder.close().await.unwrap();
    }));
}

#[test]
fn dropping_a_waiting_lock_future_frees_the_key_within_two_seconds_of_the_release() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropping_a_waiting_lock_future_frees_the_key");
        let mut holder = support::connect().await;
        take_on(&mut holder, key, false).await;
        let holder_pid = support::backend_pid(&mut holder).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        let waiter_pid = drop_while_waiting(key, lock.lock()).await;
        assert_ne!(waiter_pid, holder_pid);
        release_on(&mut holder, key, false).await;
        let freed = key_is_left_alone(key, "after the release nobody holds or waits").await;
        assert!(support::free_for_another_session(key).await);
        eprintln!(
            "[{}] dropped lock() wait: key free {freed:?} after the release",
            rt::NAME
        );
        // The lock object is still alive (never touched again until here).
        assert_eq!(lock.exclusive_levels(), 0);
        drop(lock);
        holder.close().await.unwrap();
    }));
}

/// `client_connection_check_interval` (1 s on owned sessions) lets the server notice the
/// closed connection of a cancelled wait while it still waits: it leaves the queue even
/// though the key stays held.
#[test]
fn a_dropped_lock_wait_leaves_the_server_queue_while_the_key_is_still_held() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("a_dropped_lock_wait_leaves_the_server_queue");
        let mut holder = support::connect().await;
        take_on(&mut holder, key, false).await;
        let holder_pid = support::backend_pid(&mut holder).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        let waiter_pid = drop_while_waiting(key, lock.lock()).await;
        let gone = support::eventually(
            Duration::from_millis(2500),
            "the cancelled wait leaves the server's queue while the key is still held",
            || async { !support::backend_alive(waiter_pid).await },
        )
        .await;
        eprintln!(
            "[{}] dropped lock() wait: backend gone {gone:?} later, holder still holding",
            rt::NAME
        );
        assert!(support::waiters(key).await.is_empty());
        assert_eq!(support::holders(key).await, vec![holder_pid]);
        release_on(&mut holder, key, false).await;
        assert!(support::free_for_another_session(key).await);
        // The lock reconnects and works.
        assert!(!lock.is_held().await.unwrap());
        assert!(lock.try_lock().await.unwrap());
        lock.unlock().await.unwrap();
        lock.close().await.unwrap();
        holder.close().await.unwrap();
    }));
}

/// Which acquisition a test drops mid-way.
#[derive(Debug, Clone, Copy)]
enum Acquisition {
    Lock,
    TryLockFor,
    LockShared,
}

/// A lock that holds a shared level has an acquisition dropped mid-way: its session is
/// ended (the only way to be sure the dropped statement takes nothing), which costs it
/// the shared level. `is_held` says so (`LockLost`); an acquisition after it works on a
/// new session, and its level is released first (levels are a stack); the next
/// `unlock_shared` pairs with the lost level and reports it; then `close` is clean.
async fn cancelled_acquisition_after_a_shared_level_reports_lock_lost(
    test: &str,
    acquisition: Acquisition,
) {
    let pool = match acquisition {
        // Dropped in flight: the proxy keeps the answer away long enough.
        Acquisition::LockShared => support::lanes::delayed_pool(4, PROXY_DELAY).await,
        _ => support::pool_with(4).await,
    };
    let key = support::key(test);
    let mut holder = support::connect().await;
    take_on(&mut holder, key, true).await;
    let holder_pid = support::backend_pid(&mut holder).await;
    let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
    assert!(lock.try_lock_shared().await.unwrap());
    let lock_pid = *support::holders(key)
        .await
        .iter()
        .find(|pid| **pid != holder_pid)
        .expect("the lock holds a shared level");

    match acquisition {
        Acquisition::Lock => {
            drop_while_waiting(key, lock.lock()).await;
        }
        Acquisition::TryLockFor => {
            drop_while_waiting(key, lock.try_lock_for(Duration::from_secs(30))).await;
        }
        Acquisition::LockShared => {
            // A shared request cannot wait here (this session already holds the shared
            // level, so the server grants it at once): drop it in flight instead, sent
            // but unanswered (the proxy holds the answer back).
            let first_poll = future::poll_once(lock.lock_shared()).await;
            assert!(first_poll.is_none(), "answered at once: {first_poll:?}");
        }
    }
    assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (0, 0));
    let next = rt::timeout(FREED_WITHIN, lock.is_held())
        .await
        .expect("the next call answers at once");
    assert_lock_lost(next, key, &format!("{acquisition:?} dropped"));

    support::eventually(
        FREED_WITHIN,
        "the ended session's shared level is gone",
        || async { support::holders(key).await == vec![holder_pid] },
    )
    .await;
    assert!(support::waiters(key).await.is_empty());
    assert!(
        !support::backend_alive(lock_pid).await || support::advisory_locks_of(lock_pid).await == 0
    );

    // The call after works, on a new session.
    assert!(lock.try_lock_shared().await.unwrap(), "{acquisition:?}");
    let holders = support::holders(key).await;
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert!(!holders.contains(&lock_pid), "a new session: {holders:?}");
    lock.unlock_shared().await.unwrap();
    let lost = lock.unlock_shared().await;
    assert_lock_lost(
        lost,
        key,
        &format!("{acquisition:?}: the unlock of the lost level"),
    );
    lock.close().await.unwrap();
    release_on(&mut holder, key, true).await;
    assert!(support::holders(key).await.is_empty());
    holder.close().await.unwrap();
}

#[test]
fn a_cancelled_lock_wait_after_a_shared_level_reports_lock_lost_until_accounted_for_and_works_again()
 {
    rt::run(Box::pin(
        cancelled_acquisition_after_a_shared_level_reports_lock_lost(
            "a_cancelled_lock_wait_after_a_shared_level",
            Acquisition::Lock,
        ),
    ));
}

#[test]
fn a_cancelled_try_lock_for_after_a_shared_level_reports_lock_lost_until_accounted_for_and_works_again()
 {
    rt::run(Box::pin(
        cancelled_acquisition_after_a_shared_level_reports_lock_lost(
            "a_cancelled_try_lock_for_after_a_shared_level",
            Acquisition::TryLockFor,
        ),
    ));
}

#[test]
fn a_lock_shared_dropped_in_flight_after_a_shared_level_reports_lock_lost_until_accounted_for_and_works_again()
 {
    rt::run(Box::pin(
        cancelled_acquisition_after_a_shared_level_reports_lock_lost(
            "a_lock_shared_dropped_in_flight_after_a_shared_level",
            Acquisition::LockShared,
        ),
    ));
}

/// Dropped while waiting with nothing held, `try_lock_for` and `lock_shared` take nothing
/// later and cost nothing: the next call is `Ok`, and the key is free after the release.
#[test]
fn dropped_try_lock_for_and_lock_shared_waits_with_nothing_held_take_nothing_later() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("dropped_try_lock_for_and_lock_shared_waits");
        let mut holder = support::connect().await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        for acquisition in [Acquisition::TryLockFor, Acquisition::LockShared] {
            take_on(&mut holder, key, false).await;
            match acquisition {
                Acquisition::TryLockFor => {
                    drop_while_waiting(key, lock.try_lock_for(Duration::from_secs(30))).await
                }
                _ => drop_while_waiting(key, lock.lock_shared()).await,
            };
            release_on(&mut holder, key, false).await;
            let freed = key_is_left_alone(key, "the dropped wait takes nothing").await;
            eprintln!(
                "[{}] dropped {acquisition:?} wait: key free after {freed:?}",
                rt::NAME
            );
            let next = rt::timeout(FREED_WITHIN, lock.is_held())
                .await
                .expect("prompt");
            assert!(matches!(next, Ok(false)), "{acquisition:?}: {next:?}");
        }
        assert!(lock.try_lock_shared().await.unwrap());
        lock.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        holder.close().await.unwrap();
    }));
}

/// On a borrowed connection the lock cannot end the session, so a dropped `lock()`
/// leaves the owner's session still waiting. The documented guarantee for borrowed
/// connections (`Error::Interrupted`) is that the lock then refuses, at once, to use that
/// session again; freeing it is up to its owner (close or drop the connection).
#[test]
fn borrowed_connection_after_a_dropped_lock_future_fails_at_once_with_interrupted() {
    rt::run(Box::pin(async {
        let key = support::key("borrowed_connection_after_a_dropped_lock_future");
        let mut holder = support::connect().await;
        take_on(&mut holder, key, false).await;
        let mut conn = support::connect().await;
        let conn_pid = support::backend_pid(&mut conn).await;
        {
            let mut lock = AdvisoryLock::with_connection(&mut conn, key);
            let waiter_pid = drop_while_waiting(key, lock.lock()).await;
            assert_eq!(waiter_pid, conn_pid, "the wait is on the borrowed session");

            let start = Instant::now();
            let next = rt::timeout(Duration::from_millis(100), lock.try_lock())
                .await
                .expect("the next call fails at once");
            assert!(
                matches!(next, Err(Error::Interrupted { key: k }) if k == key),
                "{next:?}"
            );
            let again = rt::timeout(Duration::from_millis(100), lock.is_held())
                .await
                .expect("and so does the one after");
            assert!(matches!(again, Err(Error::Interrupted { .. })), "{again:?}");
            eprintln!(
                "[{}] borrowed: Interrupted after {:?}",
                rt::NAME,
                start.elapsed()
            );
        }
        // The owner's session still waits; released, it would get the key.
        assert_eq!(support::waiters(key).await, vec![conn_pid]);
        // The owner closes the connection, which ends the session and its wait.
        let closed = rt::timeout(FREED_WITHIN, conn.close())
            .await
            .expect("closing the borrowed connection does not hang");
        eprintln!("[{}] borrowed: close() -> {closed:?}", rt::NAME);
        release_on(&mut holder, key, false).await;
        let freed = key_is_left_alone(key, "after the borrowed connection is gone").await;
        eprintln!(
            "[{}] borrowed: key free {freed:?} after close and release",
            rt::NAME
        );
        assert!(support::free_for_another_session(key).await);
        holder.close().await.unwrap();
    }));
}

#[test]
fn dropping_is_held_or_lost_futures_midway_does_not_lose_the_lock() {
    rt::run(Box::pin(async {
        let pool = support::lanes::delayed_pool(4, PROXY_DELAY).await;
        let key = support::key("dropping_is_held_or_lost_futures_midway");
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(LockOptions::new().lost_check_interval(Duration::from_millis(10)));
        lock.lock().await.unwrap();
        let pid = support::holders(key).await[0];
        assert!(lock.is_held().await.unwrap());

        // is_held() dropped after its first poll: sent, unanswered (the proxy holds every
        // answer back for a while).
        for round in 0..10 {
            let first_poll = future::poll_once(lock.is_held()).await;
            assert!(
                first_poll.is_none(),
                "round {round}: answered at once: {first_poll:?}"
            );
            let next = rt::timeout(FREED_WITHIN, lock.is_held())
                .await
                .expect("prompt");
            assert!(matches!(next, Ok(true)), "round {round}: {next:?}");
        }

        // lost() dropped before, during and between its checks (each check takes at least
        // the proxy's delay; one starts every 10 ms).
        for ms in (0..120).step_by(3) {
            let lost = rt::timeout(Duration::from_millis(ms), lock.lost()).await;
            assert!(lost.is_none(), "lost() resolved while held: {lost:?}");
        }
        let next = rt::timeout(FREED_WITHIN, lock.is_held())
            .await
            .expect("prompt");
        assert!(matches!(next, Ok(true)), "{next:?}");
        assert_eq!(lock.exclusive_levels(), 1);
        assert_eq!(support::holders(key).await, vec![pid]);
        assert!(!support::free_for_another_session(key).await);

        lock.unlock().await.unwrap();
        lock.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
    }));
}

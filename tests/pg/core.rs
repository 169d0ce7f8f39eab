//! The scenarios of the Go pglock suites (go.rtnl.ai/pglock, allisson/go-pglock), on
//! pglock's API: exclusive and shared, blocking and try, stacking, keys, misuse, close,
//! and the connections sqlx hands out. Every claim about who holds what is checked in
//! `pg_locks` from another session, not only through the lock's own answers. What every
//! `DistributedLock` must do (exclusion, stacking, `NotHeld`, close, `is_held`) is proven
//! once, for every provider, in `tests/conformance`; this module keeps what only
//! `AdvisoryLock` on PostgreSQL shows.
//!
//! Each test body is boxed (`rt::run(Box::pin(async { .. }))`): in debug builds
//! async-std's `block_on` keeps several copies of the body's future in its stack frames,
//! and unboxed bodies overflowed the test thread's 2 MiB stack.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, DistributedLock, Error, LockConnection, LockKey, LockMode, hash};
use sqlx::{Acquire, Connection, PgConnection};
use support::WAIT;
use support::XorShift;
use support::only;
use support::only_holder;
use support::rt;

/// Whether `result` is `Err(Error::NotHeld)` for exactly `key` and `mode`.
fn is_not_held<T>(result: &pglock::Result<T>, key: LockKey, mode: LockMode) -> bool {
    matches!(result, Err(Error::NotHeld { key: k, mode: m }) if *k == key && *m == mode)
}

fn is_closed<T>(result: &pglock::Result<T>) -> bool {
    matches!(result, Err(Error::Closed))
}

#[test]
fn negative_keys_lock_exclude_and_show_in_pg_locks_as_the_server_computes_them() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let unique = match support::key("negative_keys_lock") {
            LockKey::BigInt(k) => k | i64::MIN,
            LockKey::IntPair(..) => unreachable!("support::key is a bigint key"),
        };
        let unique_pair = match support::pair_key("negative_keys_lock") {
            LockKey::IntPair(a, b) => LockKey::IntPair(a | i32::MIN, b | i32::MIN),
            LockKey::BigInt(_) => unreachable!("support::pair_key is an int-pair key"),
        };
        for key in [
            LockKey::BigInt(-1),
            LockKey::BigInt(i64::MIN),
            LockKey::IntPair(-5, -7),
            LockKey::BigInt(unique),
            unique_pair,
        ] {
            let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
            let mut other = AdvisoryLock::new(&pool, key).await.unwrap();

            assert!(lock.try_lock().await.unwrap(), "{key}");
            let pid = only_holder(key).await;
            assert_eq!(
                support::holders_by_server_arithmetic(key).await,
                vec![pid],
                "{key} is not where PostgreSQL puts it in pg_locks"
            );
            assert!(lock.is_held().await.unwrap(), "{key}");
            assert!(!other.try_lock().await.unwrap(), "{key}");
            assert!(!other.try_lock_shared().await.unwrap(), "{key}");
            lock.unlock().await.unwrap();

            assert!(lock.try_lock_shared().await.unwrap(), "{key}");
            assert!(other.try_lock_shared().await.unwrap(), "{key}");
            assert_eq!(support::holders_by_server_arithmetic(key).await.len(), 2);
            lock.unlock_shared().await.unwrap();
            other.unlock_shared().await.unwrap();

            rt::timeout(WAIT, lock.lock())
                .await
                .expect("lock()")
                .unwrap();
            lock.unlock().await.unwrap();
            rt::timeout(WAIT, lock.lock_shared())
                .await
                .expect("lock_shared()")
                .unwrap();
            lock.unlock_shared().await.unwrap();

            assert!(support::holders(key).await.is_empty(), "{key}");
            assert!(!lock.is_held().await.unwrap(), "{key}");
            lock.close().await.unwrap();
            other.close().await.unwrap();
        }
    }));
}

/// Spawns `lock.lock()` (or `lock_shared()`), checks that it really waits in `pg_locks`
/// while `holder` holds the key, then releases and checks that it acquires.
async fn blocking_acquire_waits_for_the_holder(test: &str, holder_mode: LockMode, mode: LockMode) {
    let pool = support::pool_with(4).await;
    let key = support::key(test);
    let mut holding = AdvisoryLock::new(&pool, key).await.unwrap();
    let waiting = AdvisoryLock::new(&pool, key).await.unwrap();
    match holder_mode {
        LockMode::Exclusive => assert!(holding.try_lock().await.unwrap()),
        LockMode::Shared => assert!(holding.try_lock_shared().await.unwrap()),
    }
    let holder_pid = only_holder(key).await;

    let acquired = Arc::new(AtomicBool::new(false));
    let task = rt::spawn({
        let acquired = acquired.clone();
        async move {
            let mut waiting = waiting;
            let result = rt::timeout(WAIT, async {
                match mode {
                    LockMode::Exclusive => waiting.lock().await,
                    LockMode::Shared => waiting.lock_shared().await,
                }
            })
            .await;
            acquired.store(true, Ordering::SeqCst);
            (waiting, result)
        }
    });

    support::eventually(
        WAIT,
        "the blocked lock shows as waiting in pg_locks",
        || async { support::waiters(key).await.len() == 1 },
    )
    .await;
    let waiter_pid = only(support::waiters(key).await);
    assert_ne!(waiter_pid, holder_pid);
    assert!(
        !acquired.load(Ordering::SeqCst),
        "lock returned while the key was held"
    );
    assert_eq!(support::holders(key).await, vec![holder_pid]);

    match holder_mode {
        LockMode::Exclusive => holding.unlock().await.unwrap(),
        LockMode::Shared => holding.unlock_shared().await.unwrap(),
    }
    let (mut waiting, result) = rt::timeout(WAIT, task)
        .await
        .expect("the waiting task finishes after the release");
    result
        .expect("the blocked lock acquires within the wait bound after release")
        .unwrap();
    assert!(acquired.load(Ordering::SeqCst));
    assert_eq!(support::holders(key).await, vec![waiter_pid]);
    assert!(support::waiters(key).await.is_empty());
    let modes = support::holders_with_mode(key).await;
    let expected = match mode {
        LockMode::Exclusive => "ExclusiveLock",
        LockMode::Shared => "ShareLock",
    };
    assert_eq!(modes, vec![(waiter_pid, expected.to_owned())]);

    match mode {
        LockMode::Exclusive => waiting.unlock().await.unwrap(),
        LockMode::Shared => waiting.unlock_shared().await.unwrap(),
    }
    assert!(support::holders(key).await.is_empty());
    holding.close().await.unwrap();
    waiting.close().await.unwrap();
}

#[test]
fn blocking_lock_waits_while_another_session_holds_then_acquires_on_release() {
    rt::run(Box::pin(blocking_acquire_waits_for_the_holder(
        "blocking_lock_waits_while_another_session_holds",
        LockMode::Exclusive,
        LockMode::Exclusive,
    )));
}

#[test]
fn blocking_lock_waits_for_a_shared_holder_then_acquires_on_release() {
    rt::run(Box::pin(blocking_acquire_waits_for_the_holder(
        "blocking_lock_waits_for_a_shared_holder",
        LockMode::Shared,
        LockMode::Exclusive,
    )));
}

#[test]
fn blocking_lock_shared_waits_for_an_exclusive_holder_then_acquires_on_release() {
    rt::run(Box::pin(blocking_acquire_waits_for_the_holder(
        "blocking_lock_shared_waits_for_an_exclusive_holder",
        LockMode::Exclusive,
        LockMode::Shared,
    )));
}

/// Go's `TestLock_BlockingWithContextCancel`: a wait given up (here: the `lock()` future
/// dropped by a timeout) must not take the key. The lock object lives on, as it does
/// when code writes `timeout(d, lock.lock())` and carries on.
#[test]
fn a_blocking_lock_given_up_by_timeout_does_not_take_the_key_later() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("a_blocking_lock_given_up_by_timeout");
        let mut holding = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut gave_up = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(holding.try_lock().await.unwrap());

        let waited = rt::timeout(Duration::from_millis(200), gave_up.lock()).await;
        assert!(waited.is_none(), "lock() returned while the key was held");
        assert_eq!(gave_up.exclusive_levels(), 0);
        holding.unlock().await.unwrap();

        // Nobody wants the key now: another session must get it.
        support::eventually(
            Duration::from_secs(1),
            "after the holder's release, a third session takes the key nobody wants \
             (the given-up lock() must not have taken it)",
            || support::free_for_another_session(key),
        )
        .await;
        assert!(support::holders(key).await.is_empty());
        holding.close().await.unwrap();
        drop(gave_up);
    }));
}

#[test]
fn eight_sessions_hold_the_shared_lock_at_once() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(10).await;
        let key = support::key("eight_sessions_hold_the_shared_lock_at_once");
        let mut locks = Vec::new();
        for i in 0..8 {
            let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
            if i % 2 == 0 {
                assert!(lock.try_lock_shared().await.unwrap(), "reader {i}");
            } else {
                rt::timeout(WAIT, lock.lock_shared())
                    .await
                    .expect("lock_shared() with only readers holding returns at once")
                    .unwrap();
            }
            locks.push(lock);
        }
        let holders = support::holders(key).await;
        assert_eq!(holders.len(), 8, "pg_locks holders: {holders:?}");
        let mut distinct = holders.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 8, "eight different sessions: {holders:?}");
        assert!(
            support::holders_with_mode(key)
                .await
                .iter()
                .all(|(_, mode)| mode == "ShareLock")
        );

        let mut writer = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(!writer.try_lock().await.unwrap());
        for (i, lock) in locks.iter_mut().enumerate() {
            assert!(lock.is_held().await.unwrap(), "reader {i}");
            lock.unlock_shared().await.unwrap();
        }
        assert!(support::holders(key).await.is_empty());
        assert!(writer.try_lock().await.unwrap());
        writer.unlock().await.unwrap();
        writer.close().await.unwrap();
        for mut lock in locks {
            lock.close().await.unwrap();
        }
    }));
}

#[test]
fn one_session_holds_shared_and_exclusive_together_and_counts_them_apart() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("one_session_holds_shared_and_exclusive_together");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut other = AdvisoryLock::new(&pool, key).await.unwrap();

        assert!(lock.try_lock().await.unwrap());
        let pid = only_holder(key).await;
        assert!(
            lock.try_lock_shared().await.unwrap(),
            "own exclusive must not block own shared"
        );
        assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (1, 1));
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![
                (pid, "ExclusiveLock".to_owned()),
                (pid, "ShareLock".to_owned())
            ]
        );
        assert!(!other.try_lock_shared().await.unwrap());

        // Releasing the shared level leaves the exclusive one.
        lock.unlock_shared().await.unwrap();
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![(pid, "ExclusiveLock".to_owned())]
        );

        // Shared is now not held: NotHeld(Shared), and the exclusive level stays.
        let result = lock.unlock_shared().await;
        assert!(is_not_held(&result, key, LockMode::Shared), "{result:?}");
        assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (1, 0));
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![(pid, "ExclusiveLock".to_owned())],
            "a refused unlock_shared must not release the exclusive level"
        );
        assert!(!other.try_lock().await.unwrap());
        assert!(lock.is_held().await.unwrap());

        // And the other way round: shared held, exclusive not.
        lock.unlock().await.unwrap();
        rt::timeout(WAIT, lock.lock_shared())
            .await
            .expect("lock_shared()")
            .unwrap();
        let result = lock.unlock().await;
        assert!(is_not_held(&result, key, LockMode::Exclusive), "{result:?}");
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![(pid, "ShareLock".to_owned())],
            "a refused unlock must not release the shared level"
        );
        lock.unlock_shared().await.unwrap();
        assert!(support::holders(key).await.is_empty());

        lock.close().await.unwrap();
        other.close().await.unwrap();
    }));
}

#[test]
fn five_shared_readers_hold_the_key_concurrently() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(8).await;
        let key = support::key("five_shared_readers_hold_the_key_concurrently");
        let mut locks = Vec::new();
        for _ in 0..5 {
            locks.push(AdvisoryLock::new(&pool, key).await.unwrap());
        }
        let inside = Arc::new(AtomicUsize::new(0));
        let most_inside = Arc::new(AtomicUsize::new(0));

        let start = Instant::now();
        let tasks: Vec<_> = locks
            .into_iter()
            .map(|mut lock| {
                let (inside, most_inside) = (inside.clone(), most_inside.clone());
                rt::spawn(async move {
                    rt::timeout(WAIT, lock.lock_shared())
                        .await
                        .expect("lock_shared() with only readers")
                        .unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most_inside.fetch_max(now, Ordering::SeqCst);
                    rt::sleep(Duration::from_millis(100)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    lock.unlock_shared().await.unwrap();
                    lock.close().await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            rt::timeout(WAIT, task).await.expect("reader task finishes");
        }
        let elapsed = start.elapsed();

        assert!(
            elapsed < Duration::from_millis(450),
            "5 readers of 100 ms each took {elapsed:?}: they did not run together"
        );
        assert!(
            most_inside.load(Ordering::SeqCst) >= 2,
            "readers never overlapped (at most {} at once)",
            most_inside.load(Ordering::SeqCst)
        );
        assert!(support::holders(key).await.is_empty());
    }));
}

#[test]
fn different_keys_are_independent() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let one = support::key("different_keys_are_independent/one");
        let two = support::key("different_keys_are_independent/two");
        assert_ne!(one, two);
        let mut a = AdvisoryLock::new(&pool, one).await.unwrap();
        let mut b = AdvisoryLock::new(&pool, two).await.unwrap();

        assert!(a.try_lock().await.unwrap());
        assert!(
            b.try_lock().await.unwrap(),
            "a different key is not blocked"
        );
        let a_pid = only_holder(one).await;
        let b_pid = only_holder(two).await;
        assert_ne!(a_pid, b_pid);
        a.unlock().await.unwrap();
        assert_eq!(
            support::holders(two).await,
            vec![b_pid],
            "unlocking one keeps two"
        );
        assert!(b.is_held().await.unwrap());
        assert!(!a.is_held().await.unwrap());
        b.unlock().await.unwrap();
        a.close().await.unwrap();
        b.close().await.unwrap();
    }));
}

#[test]
fn int_pair_key_never_collides_with_the_bigint_of_the_same_bits() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let pair = support::pair_key("int_pair_key_never_collides_with_the_bigint");
        let LockKey::IntPair(a, b) = pair else {
            unreachable!("support::pair_key is an int-pair key")
        };
        let same_bits = LockKey::BigInt((i64::from(a) << 32) | i64::from(b as u32));
        assert_eq!(
            (pair.pg_locks_ids().0, pair.pg_locks_ids().1),
            (same_bits.pg_locks_ids().0, same_bits.pg_locks_ids().1),
            "the two keys share classid and objid; only the key space differs"
        );
        let mut big = AdvisoryLock::new(&pool, same_bits).await.unwrap();
        let mut pair_lock = AdvisoryLock::new(&pool, pair).await.unwrap();

        assert!(big.try_lock().await.unwrap());
        assert!(
            pair_lock.try_lock().await.unwrap(),
            "IntPair({a},{b}) blocked by its bigint"
        );
        assert_eq!(support::holders_by_server_arithmetic(pair).await.len(), 1);
        assert_eq!(
            support::holders_by_server_arithmetic(same_bits).await.len(),
            1
        );
        assert!(big.is_held().await.unwrap());
        assert!(pair_lock.is_held().await.unwrap());

        // Releasing one key space leaves the other.
        big.unlock().await.unwrap();
        assert!(!big.is_held().await.unwrap());
        assert!(pair_lock.is_held().await.unwrap());
        pair_lock.unlock().await.unwrap();

        // And the other way round, shared against exclusive.
        assert!(pair_lock.try_lock().await.unwrap());
        assert!(big.try_lock_shared().await.unwrap());
        big.unlock_shared().await.unwrap();
        pair_lock.unlock().await.unwrap();

        big.close().await.unwrap();
        pair_lock.close().await.unwrap();
    }));
}

/// What application code does with the trait object.
async fn exclusive_section(lock: &mut dyn DistributedLock) -> pglock::Result<bool> {
    if !lock.try_lock().await? {
        return Ok(false);
    }
    let held = lock.is_held().await?;
    lock.unlock().await?;
    Ok(held)
}

#[test]
fn boxed_dyn_distributed_lock_works_and_reports_its_key() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("boxed_dyn_distributed_lock_works");
        let mut conn = support::connect().await;
        let conn_pid = support::backend_pid(&mut conn).await;

        let mut owned: Box<dyn DistributedLock> =
            Box::new(AdvisoryLock::new(&pool, key).await.unwrap());
        let mut borrowed: Box<dyn DistributedLock + '_> =
            Box::new(AdvisoryLock::with_connection(&mut conn, key));
        assert_eq!(owned.key(), key);
        assert_eq!(borrowed.key(), key);

        assert!(exclusive_section(owned.as_mut()).await.unwrap());
        assert!(owned.try_lock().await.unwrap());
        assert!(
            !exclusive_section(borrowed.as_mut()).await.unwrap(),
            "owned holds the key"
        );
        owned.unlock().await.unwrap();

        assert!(borrowed.try_lock_shared().await.unwrap());
        assert_eq!(support::holders(key).await, vec![conn_pid]);
        assert!(borrowed.is_held().await.unwrap());
        assert!(!owned.try_lock().await.unwrap());
        assert!(owned.try_lock_shared().await.unwrap());
        let result = owned.unlock().await;
        assert!(is_not_held(&result, key, LockMode::Exclusive), "{result:?}");
        owned.unlock_shared().await.unwrap();
        borrowed.unlock_shared().await.unwrap();
        rt::timeout(WAIT, borrowed.lock())
            .await
            .expect("lock()")
            .unwrap();
        borrowed.unlock().await.unwrap();
        rt::timeout(WAIT, owned.lock_shared())
            .await
            .expect("lock_shared()")
            .unwrap();

        owned.close().await.unwrap();
        assert!(is_closed(&owned.try_lock().await));
        owned.close().await.unwrap();
        borrowed.close().await.unwrap();
        assert!(is_closed(&borrowed.is_held().await));
        drop(borrowed);
        assert!(support::holders(key).await.is_empty());
        assert_eq!(support::advisory_locks_of(conn_pid).await, 0);
        conn.close().await.unwrap();

        // A list of locks on different keys behind one type.
        let keys = [
            support::key("boxed_dyn_distributed_lock_works/a"),
            support::pair_key("boxed_dyn_distributed_lock_works/b"),
        ];
        let mut locks: Vec<Box<dyn DistributedLock>> = Vec::new();
        for key in keys {
            locks.push(Box::new(AdvisoryLock::new(&pool, key).await.unwrap()));
        }
        for (lock, key) in locks.iter_mut().zip(keys) {
            assert_eq!(lock.key(), key);
            assert!(lock.try_lock().await.unwrap());
            assert_eq!(support::holders(key).await.len(), 1);
            lock.close().await.unwrap();
            assert!(support::holders(key).await.is_empty());
        }
    }));
}

/// Takes and releases both modes through `lock`, checking in `pg_locks` that the levels
/// sit on the session with backend `pid`.
async fn lock_and_unlock_on<C: LockConnection>(lock: &mut AdvisoryLock<C>, pid: i32) {
    let key = lock.key();
    assert!(lock.try_lock().await.unwrap());
    assert_eq!(
        support::holders(key).await,
        vec![pid],
        "the level is on the given session"
    );
    assert!(lock.is_held().await.unwrap());
    lock.unlock().await.unwrap();
    rt::timeout(WAIT, lock.lock_shared())
        .await
        .expect("lock_shared()")
        .unwrap();
    assert_eq!(support::holders(key).await, vec![pid]);
    lock.unlock_shared().await.unwrap();
    rt::timeout(WAIT, lock.lock())
        .await
        .expect("lock()")
        .unwrap();
    assert_eq!(support::holders(key).await, vec![pid]);
    lock.unlock().await.unwrap();
    assert!(support::holders(key).await.is_empty());
    assert!(!lock.is_held().await.unwrap());
}

#[test]
fn with_connection_over_a_borrowed_pg_connection_locks_on_that_session() {
    rt::run(Box::pin(async {
        let key = support::key("with_connection_over_a_borrowed_pg_connection");
        let mut conn: PgConnection = support::connect().await;
        let pid = support::backend_pid(&mut conn).await;
        let mut lock = AdvisoryLock::with_connection(&mut conn, key);
        lock_and_unlock_on(&mut lock, pid).await;
        assert!(lock.try_lock().await.unwrap());
        lock.close().await.unwrap();
        assert!(
            support::holders(key).await.is_empty(),
            "close unlocks a borrowed session"
        );
        drop(lock);
        // The connection is the caller's again, and still works.
        assert_eq!(support::backend_pid(&mut conn).await, pid);
        conn.close().await.unwrap();
    }));
}

#[test]
fn with_connection_over_a_borrowed_pool_connection_locks_on_that_session() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(2).await;
        let key = support::key("with_connection_over_a_borrowed_pool_connection");
        let mut conn: sqlx::pool::PoolConnection<sqlx::Postgres> = pool.acquire().await.unwrap();
        let pid = support::backend_pid(&mut conn).await;
        let mut lock = AdvisoryLock::with_connection(&mut conn, key);
        lock_and_unlock_on(&mut lock, pid).await;
        lock.close().await.unwrap();
        drop(lock);
        assert_eq!(support::backend_pid(&mut conn).await, pid);
        assert_eq!(support::advisory_locks_of(pid).await, 0);
    }));
}

#[test]
fn with_connection_over_an_owned_pg_connection_locks_on_that_session() {
    rt::run(Box::pin(async {
        let key = support::key("with_connection_over_an_owned_pg_connection");
        let mut conn: PgConnection = support::connect().await;
        let pid = support::backend_pid(&mut conn).await;
        let mut lock = AdvisoryLock::with_connection(conn, key);
        lock_and_unlock_on(&mut lock, pid).await;
        assert!(lock.try_lock_shared().await.unwrap());
        lock.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
    }));
}

#[test]
fn with_connection_over_an_owned_pool_connection_locks_on_that_session() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(2).await;
        let key = support::key("with_connection_over_an_owned_pool_connection");
        let mut conn = pool.acquire().await.unwrap();
        let pid = support::backend_pid(&mut conn).await;
        let mut lock: AdvisoryLock = AdvisoryLock::with_connection(conn, key);
        lock_and_unlock_on(&mut lock, pid).await;
        assert!(lock.try_lock().await.unwrap());
        lock.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        assert_eq!(support::advisory_locks_of(pid).await, 0);
    }));
}

#[test]
fn with_connection_over_a_borrowed_transaction_locks_on_that_session() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(2).await;
        let key = support::key("with_connection_over_a_borrowed_transaction");
        let mut tx = pool.begin().await.unwrap();
        let pid = support::backend_pid(&mut tx).await;
        let mut lock = AdvisoryLock::with_connection(&mut tx, key);
        lock_and_unlock_on(&mut lock, pid).await;
        lock.close().await.unwrap();
        drop(lock);
        // The transaction is still usable afterwards.
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(one, 1);
        tx.commit().await.unwrap();
        assert_eq!(support::advisory_locks_of(pid).await, 0);
    }));
}

#[test]
fn with_connection_over_an_owned_transaction_locks_on_that_session() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(2).await;
        let key = support::key("with_connection_over_an_owned_transaction");
        let mut tx = pool.begin().await.unwrap();
        let pid = support::backend_pid(&mut tx).await;
        let mut lock = AdvisoryLock::with_connection(tx, key);
        lock_and_unlock_on(&mut lock, pid).await;
        lock.close().await.unwrap();
        assert_eq!(support::advisory_locks_of(pid).await, 0);
    }));
}

#[test]
fn from_acquire_over_a_pool_takes_a_dedicated_connection() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(2).await;
        let key = support::key("from_acquire_over_a_pool");
        let mut lock = AdvisoryLock::from_acquire(&pool, key).await.unwrap();
        assert_eq!(lock.key(), key);
        assert!(lock.try_lock().await.unwrap());
        let pid = only_holder(key).await;
        lock.unlock().await.unwrap();
        lock_and_unlock_on(&mut lock, pid).await;
        // The pool's other connection is a different session.
        let mut other = pool.acquire().await.unwrap();
        assert_ne!(support::backend_pid(&mut other).await, pid);
        drop(other);
        lock.close().await.unwrap();
    }));
}

#[test]
fn from_acquire_over_a_borrowed_pg_connection_locks_on_that_session() {
    rt::run(Box::pin(async {
        let key = support::key("from_acquire_over_a_borrowed_pg_connection");
        let mut conn = support::connect().await;
        let pid = support::backend_pid(&mut conn).await;
        let mut lock = AdvisoryLock::from_acquire(&mut conn, key).await.unwrap();
        lock_and_unlock_on(&mut lock, pid).await;
        lock.close().await.unwrap();
        drop(lock);
        conn.close().await.unwrap();
    }));
}

#[test]
fn from_acquire_over_a_borrowed_pool_connection_locks_on_that_session() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(2).await;
        let key = support::key("from_acquire_over_a_borrowed_pool_connection");
        let mut conn = pool.acquire().await.unwrap();
        let pid = support::backend_pid(&mut conn).await;
        let mut lock = AdvisoryLock::from_acquire(&mut conn, key).await.unwrap();
        lock_and_unlock_on(&mut lock, pid).await;
        lock.close().await.unwrap();
        drop(lock);
        assert_eq!(support::backend_pid(&mut conn).await, pid);
    }));
}

#[test]
fn from_acquire_over_a_borrowed_transaction_locks_on_that_session() {
    rt::run(Box::pin(async {
        let key = support::key("from_acquire_over_a_borrowed_transaction");
        let mut conn = support::connect().await;
        let pid = support::backend_pid(&mut conn).await;
        let mut tx = Connection::begin(&mut conn).await.unwrap();
        let mut lock = AdvisoryLock::from_acquire(&mut tx, key).await.unwrap();
        lock_and_unlock_on(&mut lock, pid).await;
        lock.close().await.unwrap();
        drop(lock);
        // A nested transaction through the same Acquire still works.
        let mut nested = Acquire::begin(&mut tx).await.unwrap();
        let mut lock = AdvisoryLock::from_acquire(&mut nested, key).await.unwrap();
        lock_and_unlock_on(&mut lock, pid).await;
        lock.close().await.unwrap();
        drop(lock);
        nested.commit().await.unwrap();
        tx.rollback().await.unwrap();
        conn.close().await.unwrap();
    }));
}

/// Documented: a session-level lock taken inside a transaction outlives it.
#[test]
fn a_level_taken_inside_a_transaction_outlives_its_rollback() {
    rt::run(Box::pin(async {
        let key = support::key("a_level_taken_inside_a_transaction_outlives_its_rollback");
        let mut conn = support::connect().await;
        let pid = support::backend_pid(&mut conn).await;
        let mut tx = Connection::begin(&mut conn).await.unwrap();
        let mut lock = AdvisoryLock::with_connection(&mut tx, key);
        assert!(lock.try_lock().await.unwrap());
        drop(lock); // borrowed: the level stays with the session
        tx.rollback().await.unwrap();
        assert_eq!(support::holders(key).await, vec![pid]);
        assert!(!support::free_for_another_session(key).await);
        assert!(support::unlock_on(&mut conn, key).await);
        assert!(support::holders(key).await.is_empty());
        conn.close().await.unwrap();
    }));
}

#[test]
fn hash_matches_the_go_pglock_vectors() {
    rt::run(Box::pin(async {
        assert_eq!(hash(""), -3750763034362895579);
        assert_eq!(hash("mylock"), 5745039872434889948);
        assert_eq!(hash("test"), -439409999022904539);
        assert_eq!(hash("caf\u{e9}-r\u{e9}sum\u{e9}"), -1084965660865976875);
        assert_eq!(
            LockKey::from_name("mylock"),
            LockKey::BigInt(5745039872434889948)
        );
        assert_eq!(
            LockKey::from_name(""),
            LockKey::BigInt(-3750763034362895579)
        );
    }));
}

#[test]
fn hash_does_not_normalise_unicode() {
    rt::run(Box::pin(async {
        let precomposed = "caf\u{e9}-r\u{e9}sum\u{e9}";
        let decomposed = "cafe\u{301}-re\u{301}sume\u{301}";
        assert_ne!(hash(precomposed), hash(decomposed));
        assert_eq!(hash(precomposed), -1084965660865976875);
    }));
}

#[test]
fn hashed_name_locks_the_same_key_as_its_number() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let name = format!("pglock-tests/hashed_name/{}", std::process::id());
        let mut by_name = AdvisoryLock::new(&pool, LockKey::from_name(&name))
            .await
            .unwrap();
        let mut by_number = AdvisoryLock::new(&pool, hash(&name)).await.unwrap();
        assert!(by_name.try_lock().await.unwrap());
        assert!(!by_number.try_lock().await.unwrap());
        by_name.close().await.unwrap();
        assert!(by_number.try_lock().await.unwrap());
        by_number.close().await.unwrap();
    }));
}

#[test]
fn display_and_from_str_round_trip_for_ten_thousand_random_keys_of_both_kinds() {
    rt::run(Box::pin(async {
        let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15);
        let edges = [
            LockKey::BigInt(0),
            LockKey::BigInt(-1),
            LockKey::BigInt(i64::MIN),
            LockKey::BigInt(i64::MAX),
            LockKey::IntPair(0, 0),
            LockKey::IntPair(-1, -1),
            LockKey::IntPair(i32::MIN, i32::MAX),
            LockKey::IntPair(i32::MAX, i32::MIN),
        ];
        let random = (0..10_000).map(|i| {
            let bits = rng.next();
            // Small numbers too, so short texts are covered, not only 19-digit ones.
            let bits = if i % 7 == 0 {
                bits >> (bits % 64)
            } else {
                bits
            };
            if i % 2 == 0 {
                LockKey::BigInt(bits as i64)
            } else {
                LockKey::IntPair((bits >> 32) as i32, bits as i32)
            }
        });
        let (mut bigints, mut pairs) = (0, 0);
        for key in edges.into_iter().chain(random) {
            let text = key.to_string();
            assert_eq!(text.parse::<LockKey>(), Ok(key), "{text:?}");
            match key {
                LockKey::BigInt(k) => {
                    bigints += 1;
                    assert_eq!(text, k.to_string());
                    assert!(!text.contains(','));
                }
                LockKey::IntPair(a, b) => {
                    pairs += 1;
                    assert_eq!(text, format!("{a},{b}"));
                }
            }
        }
        assert!(
            bigints >= 5000 && pairs >= 5000,
            "{bigints} bigints, {pairs} pairs"
        );
    }));
}

#[test]
fn try_lock_for_leaves_a_borrowed_sessions_timeouts_as_they_were() {
    rt::run(Box::pin(async {
        let key = support::key("try_lock_for_leaves_a_borrowed_sessions_timeouts");
        let (holder_conn, _) = support::held_elsewhere(key).await;
        let mut conn = support::connect().await;
        sqlx::query("SET statement_timeout = 200")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("SET lock_timeout = 7000")
            .execute(&mut conn)
            .await
            .unwrap();

        let mut lock = AdvisoryLock::with_connection(&mut conn, key);
        // Longer than the session's statement_timeout: the wait is not cut short by it,
        // and the lock's own timeout wins over the session's lock_timeout.
        let start = Instant::now();
        let got = rt::timeout(WAIT, lock.try_lock_for(Duration::from_millis(600)))
            .await
            .expect("try_lock_for returns")
            .unwrap();
        assert!(!got);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(550) && waited < Duration::from_secs(5),
            "waited {waited:?} for a 600 ms timeout"
        );
        lock.close().await.unwrap();
        drop(lock);

        let statement_timeout: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let lock_timeout: String = sqlx::query_scalar("SHOW lock_timeout")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            (statement_timeout.as_str(), lock_timeout.as_str()),
            ("200ms", "7s")
        );
        conn.close().await.unwrap();
        holder_conn.close().await.unwrap();
    }));
}

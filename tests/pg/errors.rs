//! Typed errors from the server (deadlock 40P01, lock table full 53200) keep the lock's
//! record of its levels right, and every error's message says what to do.

use crate::support;

use std::time::{Duration, Instant};

use futures_lite::future;
use pglock::{AdvisoryLock, Error, LockKey, LockMode};
use sqlx::{Connection, PgConnection};
use support::WAIT;
use support::cluster::PrivateCluster;
use support::rt;

/// PostgreSQL's default `deadlock_timeout` is 1 s; the check runs after it.
const DEADLOCK_FOUND_WITHIN: Duration = Duration::from_secs(3);

fn is_deadlock_on<T>(result: &pglock::Result<T>, key: LockKey) -> bool {
    matches!(result, Err(Error::Deadlock { key: k }) if *k == key)
}

/// Two sessions each hold one key and wait for the other's: PostgreSQL fails exactly one
/// wait with 40P01, which is `Error::Deadlock` for the key that was awaited. The loser's
/// lock gained nothing; once the loser's session lets go of the key it held, the winner
/// gets its lock.
#[test]
fn crossed_waits_on_two_keys_fail_exactly_one_with_deadlock() {
    rt::run(Box::pin(async {
        let key1 = support::key("crossed_waits_on_two_keys/1");
        let key2 = support::key("crossed_waits_on_two_keys/2");
        let mut conn_a = support::connect().await;
        let mut conn_b = support::connect().await;
        assert!(support::try_lock_on(&mut conn_a, key1).await);
        assert!(support::try_lock_on(&mut conn_b, key2).await);
        let start = Instant::now();

        // Each side: wait for the other's key on its own session. The loser releases the
        // key its session holds, so the winner can go on.
        async fn side(conn: &mut PgConnection, held: LockKey, wanted: LockKey) -> (bool, u32) {
            let (result, levels) = {
                let mut lock = AdvisoryLock::with_connection(&mut *conn, wanted);
                let result = rt::timeout(WAIT, lock.lock())
                    .await
                    .expect("the wait ends (deadlock or grant)");
                let levels = lock.exclusive_levels();
                if result.is_ok() {
                    lock.unlock().await.unwrap();
                }
                lock.close().await.unwrap();
                (result, levels)
            };
            let lost = is_deadlock_on(&result, wanted);
            assert!(lost || result.is_ok(), "{result:?}");
            // Either way this session now lets go of the key it held.
            assert!(support::unlock_on(conn, held).await);
            (lost, levels)
        }
        let ((a_lost, a_levels), (b_lost, b_levels)) =
            future::zip(side(&mut conn_a, key1, key2), side(&mut conn_b, key2, key1)).await;
        let took = start.elapsed();
        eprintln!(
            "[{}] crossed waits: a lost {a_lost}, b lost {b_lost}, decided in {took:?}",
            rt::NAME
        );
        assert!(a_lost != b_lost, "exactly one side gets Deadlock");
        let (loser_levels, winner_levels) = if a_lost {
            (a_levels, b_levels)
        } else {
            (b_levels, a_levels)
        };
        assert_eq!(loser_levels, 0, "the deadlocked wait gained nothing");
        assert_eq!(winner_levels, 1, "the other wait was granted");
        assert!(
            took < DEADLOCK_FOUND_WITHIN,
            "deadlock found after {took:?}"
        );
        assert!(support::holders(key1).await.is_empty());
        assert!(support::holders(key2).await.is_empty());
        conn_a.close().await.unwrap();
        conn_b.close().await.unwrap();
    }));
}

/// Two locks hold the key shared and both ask for it exclusively (an upgrade each):
/// exactly one gets `Error::Deadlock`, and keeps its shared level, still counted
/// (`shared_levels() == 1`, and `pg_locks` agrees). Once it unlocks, the other is granted.
#[test]
fn two_shared_holders_upgrading_at_once_deadlock_and_the_loser_keeps_its_level_counted() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("two_shared_holders_upgrading_at_once");
        let mut a = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut b = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(a.try_lock_shared().await.unwrap());
        assert!(b.try_lock_shared().await.unwrap());
        let start = Instant::now();

        async fn upgrade(lock: &mut AdvisoryLock, key: LockKey) -> (bool, Duration) {
            let start = Instant::now();
            let result = rt::timeout(WAIT, lock.lock())
                .await
                .expect("the wait ends (deadlock or grant)");
            if is_deadlock_on(&result, key) {
                let pid = support::holders_with_mode(key).await;
                assert_eq!(
                    lock.shared_levels(),
                    1,
                    "the loser's shared level is counted"
                );
                assert_eq!(
                    lock.exclusive_levels(),
                    0,
                    "and it gained no exclusive level"
                );
                assert!(lock.is_held().await.unwrap(), "pg_locks agrees: {pid:?}");
                lock.unlock_shared().await.unwrap();
                (true, start.elapsed())
            } else {
                result.unwrap();
                assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (1, 1));
                (false, start.elapsed())
            }
        }
        let ((a_lost, a_took), (b_lost, b_took)) =
            future::zip(upgrade(&mut a, key), upgrade(&mut b, key)).await;
        eprintln!(
            "[{}] upgrades: a lost {a_lost} after {a_took:?}, b lost {b_lost} after {b_took:?}",
            rt::NAME
        );
        assert!(a_lost != b_lost, "exactly one upgrade gets Deadlock");
        assert!(start.elapsed() < DEADLOCK_FOUND_WITHIN);
        let (winner, loser) = if a_lost {
            (&mut b, &mut a)
        } else {
            (&mut a, &mut b)
        };
        let modes = support::holders_with_mode(key).await;
        assert_eq!(modes.len(), 2, "the winner holds both modes: {modes:?}");
        assert_eq!(modes[0].0, modes[1].0, "{modes:?}");
        assert_eq!((loser.exclusive_levels(), loser.shared_levels()), (0, 0));
        assert!(
            !loser.try_lock_shared().await.unwrap(),
            "the winner holds exclusive"
        );
        winner.close().await.unwrap();
        loser.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
    }));
}

/// The number of advisory locks the backend `pid` holds, seen from `conn`.
async fn advisory_locks_held(conn: &mut PgConnection, pid: i32) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1")
        .bind(pid)
        .fetch_one(conn)
        .await
        .expect("query pg_locks")
}

/// With a tiny lock table, a filler session takes advisory locks until the server runs
/// out of shared memory for locks (53200). A lock then asked for another key gets
/// `Error::TooManyLocks`, naming the setting to raise; a lock that already held its key
/// keeps it, counted right.
#[test]
fn full_lock_table_is_too_many_locks_and_a_held_level_stays_counted() {
    rt::run(Box::pin(async {
        let cluster =
            PrivateCluster::start(&["max_locks_per_transaction = 10", "max_connections = 10"]);
        let url = cluster.url();
        let pool = support::pool_at(&url, 3).await;
        let mut observer = support::connect_at(&url).await;
        let mut filler = support::connect_at(&url).await;
        let filler_pid = support::backend_pid(&mut filler).await;
        let held_key = support::key("full_lock_table/held");
        let new_key = support::key("full_lock_table/new");

        let mut holding = AdvisoryLock::new(&pool, held_key).await.unwrap();
        holding.lock().await.unwrap();
        assert!(holding.is_held().await.unwrap());
        // Connect and configure the second lock's session before the table is full.
        let mut asking = AdvisoryLock::new(&pool, new_key).await.unwrap();
        assert!(!asking.is_held().await.unwrap());

        let filled = sqlx::query(
            "SELECT pg_advisory_lock(-k) FROM generate_series(1::int8, 1000000::int8) AS k",
        )
        .execute(&mut filler)
        .await;
        let code = match &filled {
            Err(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        assert_eq!(
            code.as_deref(),
            Some("53200"),
            "the filler fills the table: {filled:?}"
        );
        let taken = advisory_locks_held(&mut observer, filler_pid).await;
        assert!(
            taken > 50,
            "the failed statement keeps the session locks it took: {taken}"
        );
        eprintln!("[{}] lock table full after {taken} filler locks", rt::NAME);

        for attempt in ["try_lock", "lock", "try_lock_shared_for"] {
            let result = match attempt {
                "try_lock" => asking.try_lock().await.map(|_| ()),
                "lock" => rt::timeout(WAIT, asking.lock()).await.expect("lock() ends"),
                _ => asking
                    .try_lock_shared_for(Duration::from_secs(1))
                    .await
                    .map(|_| ()),
            };
            match &result {
                Err(err @ Error::TooManyLocks { key }) => {
                    assert_eq!(*key, new_key);
                    let message = err.to_string();
                    assert!(message.contains("max_locks_per_transaction"), "{message}");
                    assert!(message.contains(&new_key.to_string()), "{message}");
                }
                other => panic!("{attempt} with a full lock table: {other:?}"),
            }
            assert_eq!(
                (asking.exclusive_levels(), asking.shared_levels()),
                (0, 0),
                "{attempt}"
            );
        }

        assert_eq!(
            holding.exclusive_levels(),
            1,
            "the held level is still counted"
        );
        assert!(holding.is_held().await.unwrap());
        holding.unlock().await.unwrap();
        assert_eq!(holding.exclusive_levels(), 0);

        // Once the filler lets go, both locks work.
        filler.close().await.unwrap();
        // (Polled from the observer: a new connection may not start until they are.)
        let start = Instant::now();
        while advisory_locks_held(&mut observer, filler_pid).await > 0 {
            assert!(start.elapsed() < WAIT, "the filler's locks are not freed");
            rt::sleep(Duration::from_millis(20)).await;
        }
        assert!(asking.try_lock().await.unwrap());
        assert!(holding.try_lock_shared().await.is_ok());
        asking.close().await.unwrap();
        holding.close().await.unwrap();
        observer.close().await.unwrap();
        pool.close().await;
    }));
}

#[test]
fn every_error_message_says_what_to_do_and_names_the_key() {
    let key = LockKey::BigInt(-4_242);
    let pair = LockKey::IntPair(7, -9);
    let cases: Vec<(Error, Option<LockKey>, &[&str])> = vec![
        (
            Error::NotHeld {
                key,
                mode: LockMode::Shared,
            },
            Some(key),
            &["shared", "pair each unlock with a successful lock"],
        ),
        (
            Error::NotHeld {
                key: pair,
                mode: LockMode::Exclusive,
            },
            Some(pair),
            &["exclusive", "pair each unlock"],
        ),
        (Error::Closed, None, &["create a new lock"]),
        (
            Error::LockLost { key },
            Some(key),
            &["stop the work", "acquire it again"],
        ),
        (
            Error::Deadlock { key: pair },
            Some(pair),
            &["40P01", "retry", "one order"],
        ),
        (
            Error::TooManyLocks { key },
            Some(key),
            &["53200", "max_locks_per_transaction"],
        ),
        (
            Error::Disconnected { key },
            Some(key),
            &["create a new lock"],
        ),
        (
            Error::Interrupted { key: pair },
            Some(pair),
            &["borrowed connection", "close or drop that connection"],
        ),
    ];
    for (error, key, advice) in cases {
        let message = error.to_string();
        assert!(!message.trim().is_empty(), "{error:?}");
        if let Some(key) = key {
            assert!(
                message.contains(&format!(" {key} ")) || message.contains(&format!(" {key}")),
                "{error:?}: the message names the key {key}: {message}"
            );
        }
        for words in advice {
            assert!(
                message.contains(words),
                "{error:?}: the message says what to do ({words:?}): {message}"
            );
        }
    }
}

//! `pglock::inspect`: who holds and who waits, as the server sees it. Every claim is
//! checked against `pg_locks` and `pg_stat_activity` read from another session, and the
//! key mapping both ways against the server's own arithmetic.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use pglock::inspect::{self, LockInfo};
use pglock::{AdvisoryLock, LockKey, LockMode, LockOptions};
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;
use support::WAIT;
use support::XorShift;
use support::only_holder;
use support::rt;

/// Whether the test database is reached over TCP (not a Unix socket), so the server
/// knows a client address.
fn over_tcp() -> bool {
    let options: PgConnectOptions = support::database_url().parse().expect("the URL parses");
    !options.get_host().starts_with('/')
}

#[test]
fn locks_on_shows_the_holder_with_its_pid_mode_and_session() {
    rt::run(async {
        let pool = support::pool_with(6).await;
        let key = support::key("locks_on_shows_the_holder_with_its_pid_mode_and_session");
        let shared_key = support::pair_key("locks_on_shows_the_holder/shared");

        // Exclusive, from AdvisoryLock::new, named "pglock".
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(LockOptions::new().application_name("pglock"));
        lock.lock().await.unwrap();
        let pid = only_holder(key).await;
        let infos = inspect::locks_on(&pool, key).await.unwrap();
        assert_eq!(infos.len(), 1, "{infos:#?}");
        let info = &infos[0];
        assert_eq!(info.key, key);
        assert_eq!(info.pid, pid, "the holding session's pg_backend_pid");
        assert_eq!(info.mode, LockMode::Exclusive);
        assert!(info.granted);
        assert_eq!(info.waiting_for, None, "a holder does not wait");
        assert_eq!(info.application_name.as_deref(), Some("pglock"));
        if over_tcp() {
            assert!(
                info.client_addr.is_some(),
                "a TCP client has an address: {info:#?}"
            );
        }
        assert_eq!(info.state.as_deref(), Some("idle"), "{info:#?}");
        assert!(info.query_age.is_some());

        // The same session adds a shared level: two rows, one per mode.
        lock.lock_shared().await.unwrap();
        let mut modes: Vec<(i32, bool)> = inspect::locks_on(&pool, key)
            .await
            .unwrap()
            .iter()
            .map(|info| (info.pid, info.mode == LockMode::Exclusive))
            .collect();
        modes.sort();
        assert_eq!(modes, vec![(pid, false), (pid, true)]);
        lock.unlock_shared().await.unwrap();

        // Shared, by two locks, one with an application_name configured.
        let mut first = AdvisoryLock::new(&pool, shared_key).await.unwrap();
        let mut second = AdvisoryLock::new(&pool, shared_key)
            .await
            .unwrap()
            .with_options(LockOptions::new().application_name("pglock-inspect-test"));
        first.lock_shared().await.unwrap();
        second.lock_shared().await.unwrap();
        let infos = inspect::locks_on(&pool, shared_key).await.unwrap();
        assert_eq!(infos.len(), 2, "{infos:#?}");
        let pids: BTreeSet<i32> = support::holders(shared_key).await.into_iter().collect();
        assert_eq!(infos.iter().map(|i| i.pid).collect::<BTreeSet<_>>(), pids);
        for info in &infos {
            assert_eq!(info.key, shared_key);
            assert_eq!(info.mode, LockMode::Shared);
            assert!(info.granted);
        }
        let mut names: Vec<Option<String>> =
            infos.iter().map(|i| i.application_name.clone()).collect();
        names.sort();
        assert_eq!(
            names,
            vec![Some(String::new()), Some("pglock-inspect-test".to_owned())],
            "the session's own name (none), and the configured one"
        );
        // The pid of each row is the session that really holds it.
        for info in &infos {
            assert_eq!(
                support::holders_with_mode(shared_key)
                    .await
                    .iter()
                    .filter(|(pid, mode)| *pid == info.pid && mode == "ShareLock")
                    .count(),
                1
            );
        }

        lock.unlock().await.unwrap();
        first.unlock_shared().await.unwrap();
        second.unlock_shared().await.unwrap();
        for lock in [&mut lock, &mut first, &mut second] {
            lock.close().await.unwrap();
        }
        pool.close().await;
    });
}

#[test]
fn waiters_are_listed_after_holders_in_arrival_order_with_a_growing_wait() {
    rt::run(async {
        let pool = support::pool_with(8).await;
        let key = support::key("waiters_are_listed_after_holders_in_arrival_order");

        // Two shared holders.
        let mut h1 = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut h2 = AdvisoryLock::new(&pool, key).await.unwrap();
        h1.lock_shared().await.unwrap();
        h2.lock_shared().await.unwrap();

        // Two exclusive waiters, one after the other.
        let mut tasks = Vec::new();
        let mut waiter_pids = Vec::new();
        for n in 1..=2 {
            let mut waiter = AdvisoryLock::new(&pool, key).await.unwrap();
            tasks.push(rt::spawn(async move {
                waiter.lock().await.unwrap();
                waiter.unlock().await.unwrap();
                waiter.close().await.unwrap();
            }));
            support::eventually(WAIT, "the waiter is queued", || async {
                support::waiters(key).await.len() == n
            })
            .await;
            let pids = support::waiters(key).await;
            let new = pids
                .into_iter()
                .find(|pid| !waiter_pids.contains(pid))
                .expect("a new waiter");
            waiter_pids.push(new);
            // Distinct wait starts.
            rt::sleep(Duration::from_millis(20)).await;
        }

        let first = inspect::locks_on(&pool, key).await.unwrap();
        rt::sleep(Duration::from_millis(200)).await;
        let second = inspect::locks_on(&pool, key).await.unwrap();

        for infos in [&first, &second] {
            let granted: Vec<bool> = infos.iter().map(|i| i.granted).collect();
            assert_eq!(granted, vec![true, true, false, false], "{infos:#?}");
            let waiting: Vec<i32> = infos[2..].iter().map(|i| i.pid).collect();
            assert_eq!(waiting, waiter_pids, "waiters in arrival order");
            for holder in &infos[..2] {
                assert_eq!(holder.mode, LockMode::Shared);
                assert_eq!(holder.waiting_for, None);
                assert_eq!(holder.wait_start, None);
            }
            for waiter in &infos[2..] {
                assert_eq!(waiter.key, key);
                assert_eq!(waiter.mode, LockMode::Exclusive);
                assert!(waiter.waiting_for.is_some(), "{waiter:#?}");
                assert!(waiter.wait_start.is_some(), "{waiter:#?}");
                assert_eq!(waiter.state.as_deref(), Some("active"));
            }
        }
        for (before, after) in first[2..].iter().zip(&second[2..]) {
            let (before, after) = (before.waiting_for.unwrap(), after.waiting_for.unwrap());
            assert!(
                after >= before + Duration::from_millis(150),
                "the wait grows: {before:?} then {after:?} 200 ms later"
            );
            assert!(after < before + Duration::from_secs(5));
        }
        assert!(
            first[2].waiting_for.unwrap() > first[3].waiting_for.unwrap(),
            "the first waiter has waited longer"
        );

        h1.unlock_shared().await.unwrap();
        h2.unlock_shared().await.unwrap();
        for task in tasks {
            rt::timeout(WAIT, task)
                .await
                .expect("each waiter gets the key in turn");
        }
        assert_eq!(inspect::locks_on(&pool, key).await.unwrap(), Vec::new());
        h1.close().await.unwrap();
        h2.close().await.unwrap();
        pool.close().await;
    });
}

#[test]
fn keys_decode_in_both_key_spaces_including_negatives() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let keys = [
            LockKey::BigInt(-1),
            LockKey::BigInt(i64::MIN),
            LockKey::BigInt(i64::MAX),
            LockKey::IntPair(-5, -7),
            LockKey::IntPair(i32::MIN, i32::MAX),
            // Same halves in both spaces: told apart by objsubid.
            LockKey::IntPair(-1, -1),
            LockKey::BigInt((1 << 32) | 2),
            LockKey::IntPair(1, 2),
            support::key("keys_decode_in_both_key_spaces_including_negatives"),
            support::pair_key("keys_decode_in_both_key_spaces_including_negatives"),
        ];

        // One session holds them all (one of them shared).
        let mut conn = support::connect().await;
        let pid = support::backend_pid(&mut conn).await;
        for (i, &key) in keys.iter().enumerate() {
            // These fixed keys may be briefly held by another suite on a shared server:
            // retry for a bounded time.
            let start = std::time::Instant::now();
            loop {
                let took = if i == 3 {
                    support::try_lock_shared_on(&mut conn, key).await
                } else {
                    support::try_lock_on(&mut conn, key).await
                };
                if took {
                    break;
                }
                assert!(
                    start.elapsed() < WAIT,
                    "{key} stayed held by another session for {WAIT:?}"
                );
                rt::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                support::holders_by_server_arithmetic(key).await,
                vec![pid],
                "the server finds {key} where pglock says"
            );
        }

        let mine: Vec<LockInfo> = inspect::locks(&pool)
            .await
            .unwrap()
            .into_iter()
            .filter(|info| info.pid == pid)
            .collect();
        let found: BTreeSet<LockKey> = mine.iter().map(|info| info.key).collect();
        assert_eq!(found, keys.iter().copied().collect::<BTreeSet<_>>());
        assert_eq!(mine.len(), keys.len(), "one row per key: {mine:#?}");

        for (i, &key) in keys.iter().enumerate() {
            let infos = inspect::locks_on(&pool, key).await.unwrap();
            assert_eq!(infos.len(), 1, "{key}: {infos:#?}");
            assert_eq!(infos[0].key, key);
            assert_eq!(infos[0].pid, pid);
            assert!(infos[0].granted);
            let mode = if i == 3 {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            };
            assert_eq!(infos[0].mode, mode, "{key}");
        }

        // Through AdvisoryLock too, in both spaces.
        for key in [
            LockKey::BigInt(i64::MIN + 7),
            LockKey::IntPair(-9, i32::MIN + 3),
        ] {
            let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
            assert!(lock.try_lock().await.unwrap(), "{key} is free");
            let infos = inspect::locks_on(&pool, key).await.unwrap();
            assert_eq!(infos.len(), 1);
            assert_eq!(infos[0].key, key);
            assert_eq!(infos[0].pid, only_holder(key).await);
            lock.unlock().await.unwrap();
            lock.close().await.unwrap();
        }

        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        pool.close().await;
    });
}

#[test]
fn pg_locks_ids_round_trip_for_10000_pseudo_random_keys() {
    rt::run(async {
        let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15);
        let mut bigints = 0;
        let mut pairs = 0;
        for _ in 0..10_000 {
            let bits = rng.next();
            let key = if rng.next() & 1 == 0 {
                bigints += 1;
                LockKey::BigInt(bits as i64)
            } else {
                pairs += 1;
                LockKey::IntPair((bits >> 32) as i32, bits as i32)
            };
            let (classid, objid, objsubid) = key.pg_locks_ids();
            assert_eq!(
                LockKey::from_pg_locks_ids(classid, objid, objsubid),
                Some(key),
                "{key:?} -> ({classid}, {objid}, {objsubid})"
            );
            match key {
                LockKey::BigInt(k) => {
                    assert_eq!(objsubid, 1);
                    assert_eq!((u64::from(classid) << 32) | u64::from(objid), k as u64);
                }
                LockKey::IntPair(a, b) => {
                    assert_eq!(objsubid, 2);
                    assert_eq!((classid, objid), (a as u32, b as u32));
                }
            }
        }
        assert!(bigints > 4000 && pairs > 4000, "{bigints} / {pairs}");
    });
}

#[test]
fn pg_locks_ids_with_another_objsubid_decode_to_none() {
    rt::run(async {
        for objsubid in [0, 3, 4, -1, -2, i16::MAX, i16::MIN] {
            for (classid, objid) in [(0, 0), (1, 2), (u32::MAX, u32::MAX)] {
                assert_eq!(
                    LockKey::from_pg_locks_ids(classid, objid, objsubid),
                    None,
                    "objsubid {objsubid}"
                );
            }
        }
    });
}

#[test]
fn locks_on_a_key_nobody_holds_is_empty() {
    rt::run(async {
        let pool = support::pool_with(2).await;
        for key in [
            support::key("locks_on_a_key_nobody_holds_is_empty"),
            support::pair_key("locks_on_a_key_nobody_holds_is_empty"),
        ] {
            assert_eq!(support::holders(key).await, Vec::<i32>::new());
            assert_eq!(inspect::locks_on(&pool, key).await.unwrap(), Vec::new());
            // Also through a single connection as the executor.
            let mut conn = support::connect().await;
            assert_eq!(inspect::locks_on(&mut conn, key).await.unwrap(), Vec::new());
            let _ = conn.close().await;
        }
        pool.close().await;
    });
}

//! A server restart under held locks and pending waits (issue 7, part 3).
//!
//! A private cluster of the test's own (a restart must not disturb the other suites) is
//! restarted with `pg_ctl restart -m fast` while locks from `AdvisoryLock::new` hold
//! exclusive, stacked and shared levels, one waits in `lock()` and one in
//! `try_lock_for(10 s)`, and one watches with `lost()`. `pg_ctl` blocks, so it runs on a
//! std thread while the runtime keeps going. Then:
//!
//! - every holder learns it lost its levels, once: `LockLost` from its next call, and
//!   `lost()` resolves with `LockLost`;
//! - the waits end with an error, never a hang and never a claim to a lock the server
//!   does not show;
//! - with no manual step, the same lock objects work again (they reconnect from the pool
//!   after reporting the loss), new locks on the same pool work, and `pg_locks` shows
//!   exactly the new holders.

use crate::support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, Error, LockKey};
use sqlx::postgres::PgPoolOptions;
use support::cluster::PrivateCluster;
use support::rt;

/// The bound on every single call: an answer, never a hang.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// `future`, failing the test if it takes longer than [`CALL_LIMIT`]. Returns its output
/// and how long it took.
async fn timed<F: Future>(what: &str, future: F) -> (F::Output, Duration) {
    support::within(CALL_LIMIT, what, future).await
}

fn assert_lock_lost<T: std::fmt::Debug>(result: &pglock::Result<T>, key: LockKey, what: &str) {
    match result {
        Err(Error::LockLost { key: lost }) => assert_eq!(*lost, key, "{what}"),
        other => panic!("{what}: expected Err(LockLost {{ key: {key} }}), got {other:?}"),
    }
}

/// `pg_ctl restart -m fast` on a std thread; resolves with how long it took.
async fn restart(cluster: &Arc<PrivateCluster>) -> Duration {
    let cluster = Arc::clone(cluster);
    support::off_thread("pg_ctl restart", Duration::from_secs(90), move || {
        cluster.pg_ctl(&["restart", "-m", "fast"])
    })
    .await
}

#[test]
fn server_restart_reports_every_loss_ends_every_wait_and_locks_work_again_without_a_manual_step() {
    rt::run(async {
        let cluster = Arc::new(PrivateCluster::start(&[]));
        let url = cluster.url();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(20))
            .connect(&url)
            .await
            .expect("connect to the private cluster");
        let exclusive_key = support::key("restart/exclusive");
        let shared_key = support::key("restart/shared");
        let stacked_key = support::pair_key("restart/stacked");
        let watched_key = support::key("restart/watched");
        let fresh_key = support::key("restart/fresh");
        let retaking_key = support::key("restart/retaking");
        let closing_key = support::key("restart/closing");
        let all_keys = [
            exclusive_key,
            shared_key,
            stacked_key,
            watched_key,
            fresh_key,
            retaking_key,
            closing_key,
        ];

        // --- Holders.
        let mut exclusive = AdvisoryLock::new(&pool, exclusive_key).await.unwrap();
        timed("lock", exclusive.lock()).await.0.unwrap();
        let mut stacked = AdvisoryLock::new(&pool, stacked_key).await.unwrap();
        timed("lock", stacked.lock()).await.0.unwrap();
        timed("lock", stacked.lock()).await.0.unwrap();
        timed("lock_shared", stacked.lock_shared()).await.0.unwrap();
        let mut shared_one = AdvisoryLock::new(&pool, shared_key).await.unwrap();
        timed("lock_shared", shared_one.lock_shared())
            .await
            .0
            .unwrap();
        let mut shared_two = AdvisoryLock::new(&pool, shared_key).await.unwrap();
        timed("lock_shared", shared_two.lock_shared())
            .await
            .0
            .unwrap();
        let mut watched = AdvisoryLock::new(&pool, watched_key).await.unwrap();
        timed("lock", watched.lock()).await.0.unwrap();
        // Two more whose first call after the restart is not a check: an acquisition, and
        // close().
        let mut retaking = AdvisoryLock::new(&pool, retaking_key).await.unwrap();
        assert!(timed("try_lock", retaking.try_lock()).await.0.unwrap());
        let mut closing = AdvisoryLock::new(&pool, closing_key).await.unwrap();
        timed("lock_shared", closing.lock_shared()).await.0.unwrap();

        // --- Pending waits, each on its own task: lock() behind the exclusive holder, and
        // try_lock_for(10 s) behind the shared holders.
        let restart_started = Arc::new(std::sync::OnceLock::<Instant>::new());
        let mut waiter = AdvisoryLock::new(&pool, exclusive_key).await.unwrap();
        let started = Arc::clone(&restart_started);
        let waiting = rt::spawn(async move {
            let result = waiter.lock().await;
            let after = started.get().map(Instant::elapsed);
            (result, after, waiter)
        });
        let mut timed_waiter = AdvisoryLock::new(&pool, shared_key).await.unwrap();
        let started = Arc::clone(&restart_started);
        let timed_waiting = rt::spawn(async move {
            let result = timed_waiter.try_lock_for(Duration::from_secs(10)).await;
            let after = started.get().map(Instant::elapsed);
            (result, after, timed_waiter)
        });
        // --- And a watcher.
        let started = Arc::clone(&restart_started);
        let watching = rt::spawn(async move {
            let lost = watched.lost().await;
            let after = started.get().map(Instant::elapsed);
            (lost, after, watched)
        });

        support::eventually(
            Duration::from_secs(10),
            "both waits are queued on the server",
            || async {
                support::waiters_at(&url, exclusive_key).await.len() == 1
                    && support::waiters_at(&url, shared_key).await.len() == 1
            },
        )
        .await;
        let before: Vec<_> = {
            let mut v = Vec::new();
            for key in all_keys {
                v.push(support::holders_with_mode_at(&url, key).await);
            }
            v
        };
        assert_eq!(before[0].len(), 1, "exclusive held: {before:?}");
        assert_eq!(before[1].len(), 2, "two shared holders: {before:?}");
        assert_eq!(
            before[2].len(),
            2,
            "stacked: one session, both modes: {before:?}"
        );
        assert_eq!(before[3].len(), 1, "watched held: {before:?}");
        assert!(before[4].is_empty(), "the fresh key is free: {before:?}");
        assert_eq!(before[5].len(), 1, "retaking holds: {before:?}");
        assert_eq!(before[6].len(), 1, "closing holds: {before:?}");

        // --- The restart.
        let pids_before: Vec<i32> = before.iter().flatten().map(|(pid, _)| *pid).collect();
        restart_started.set(Instant::now()).unwrap();
        let restart_took = restart(&cluster).await;
        eprintln!(
            "[{}] pg_ctl restart -m fast took {restart_took:?}",
            rt::NAME
        );
        // Nothing from before survives: no session of then holds anything now. (The
        // pending waits run once more on new sessions and may hold keys already.)
        for key in all_keys {
            let holders = support::holders_with_mode_at(&url, key).await;
            assert!(
                holders.iter().all(|(pid, _)| !pids_before.contains(pid)),
                "nothing survives a restart: {key} held by {holders:?}"
            );
        }

        // --- The waits ended: each ran once more on a new session (so with a grant the
        // server shows), or with an error.
        let (waited, waited_after, mut waiter) = rt::timeout(CALL_LIMIT, waiting)
            .await
            .expect("the pending lock() ends after the restart, not hangs");
        eprintln!(
            "[{}] pending lock() ended {waited_after:?} after the restart began: {waited:?}",
            rt::NAME
        );
        let (timed_out, timed_after, mut timed_waiter) = rt::timeout(CALL_LIMIT, timed_waiting)
            .await
            .expect("the pending try_lock_for ends after the restart, not hangs");
        eprintln!(
            "[{}] pending try_lock_for(10s) ended {timed_after:?} after the restart began: \
             {timed_out:?}",
            rt::NAME
        );
        match &waited {
            Err(err) => assert!(!err.to_string().is_empty()),
            Ok(()) => {
                // Only true if the server shows it; then it lets go, for what follows.
                assert!(
                    timed("is_held", waiter.is_held()).await.0.unwrap(),
                    "lock() said Ok after the restart: the server must show it held"
                );
                timed("unlock", waiter.unlock()).await.0.unwrap();
            }
        }
        match &timed_out {
            Err(err) => assert!(!err.to_string().is_empty()),
            Ok(true) => {
                assert!(
                    timed("is_held", timed_waiter.is_held()).await.0.unwrap(),
                    "try_lock_for said Ok(true) after the restart: the server must show it held"
                );
                timed("unlock", timed_waiter.unlock()).await.0.unwrap();
            }
            Ok(false) => panic!(
                "try_lock_for reported a timeout (Ok(false)) after {timed_after:?}, although \
                 its session was ended by the restart, not by the 10 s wait"
            ),
        }
        let waiter_ended = waited_after.expect("set before the restart");
        assert!(
            waiter_ended < restart_took + Duration::from_secs(5),
            "the pending lock() ended promptly: {waiter_ended:?} (restart took {restart_took:?})"
        );
        let timed_ended = timed_after.expect("set before the restart");
        assert!(
            timed_ended < Duration::from_secs(10),
            "the pending try_lock_for ended before its own 10 s were up: {timed_ended:?}"
        );

        // --- lost() resolved with LockLost.
        let (lost, lost_after, mut watched) = rt::timeout(CALL_LIMIT, watching)
            .await
            .expect("lost() resolves after the restart");
        let lost_after = lost_after.expect("set before the restart");
        match &lost {
            Error::LockLost { key } => assert_eq!(*key, watched_key),
            other => panic!("lost() after a restart: expected LockLost, got {other:?}"),
        }
        eprintln!(
            "[{}] lost() resolved {lost_after:?} after the restart began",
            rt::NAME
        );
        assert!(
            lost_after < restart_took + Duration::from_secs(3),
            "lost() noticed within about one check interval: {lost_after:?}"
        );
        assert_eq!(watched.exclusive_levels(), 0);

        // --- Every holder learns it once, from its next call.
        let (result, took) = timed("is_held", exclusive.is_held()).await;
        assert_lock_lost(
            &result,
            exclusive_key,
            "exclusive.is_held() after the restart",
        );
        eprintln!(
            "[{}] exclusive: is_held() -> LockLost in {took:?}",
            rt::NAME
        );
        let (result, took) = timed("unlock", stacked.unlock()).await;
        assert_lock_lost(&result, stacked_key, "stacked.unlock() after the restart");
        eprintln!("[{}] stacked: unlock() -> LockLost in {took:?}", rt::NAME);
        assert_eq!(
            (stacked.exclusive_levels(), stacked.shared_levels()),
            (0, 0)
        );
        let (result, took) = timed("unlock_shared", shared_one.unlock_shared()).await;
        assert_lock_lost(
            &result,
            shared_key,
            "shared_one.unlock_shared() after the restart",
        );
        eprintln!(
            "[{}] shared: unlock_shared() -> LockLost in {took:?}",
            rt::NAME
        );
        let (result, _) = timed("is_held", shared_two.is_held()).await;
        assert_lock_lost(
            &result,
            shared_key,
            "shared_two.is_held() after the restart",
        );
        // An acquisition as the first call works, on a new session: the loss stays
        // counted for the unlock that pairs with the lost level (below) to report.
        let (result, took) = timed("try_lock", retaking.try_lock()).await;
        assert!(result.unwrap(), "retaking.try_lock() after the restart");
        eprintln!(
            "[{}] retaking: try_lock() -> Ok(true) on a new session in {took:?}",
            rt::NAME
        );
        assert_eq!(retaking.exclusive_levels(), 1);
        timed("unlock", retaking.unlock()).await.0.unwrap();
        let (result, _) = timed("unlock", retaking.unlock()).await;
        assert_lock_lost(
            &result,
            retaking_key,
            "retaking: the unlock of the lost level",
        );
        // close() as the first call: closed, and the loss reported.
        let (result, took) = timed("close", closing.close()).await;
        assert_lock_lost(&result, closing_key, "closing.close() after the restart");
        eprintln!("[{}] closing: close() -> LockLost in {took:?}", rt::NAME);
        assert!(
            closing.is_closed(),
            "close() closes even when it reports the loss"
        );
        match timed("try_lock", closing.try_lock()).await.0 {
            Err(Error::Closed) => {}
            other => panic!("after close: {other:?}"),
        }
        for (lock, what) in [
            (&exclusive, "exclusive"),
            (&stacked, "stacked"),
            (&shared_one, "shared_one"),
            (&shared_two, "shared_two"),
            (&retaking, "retaking"),
            (&closing, "closing"),
        ] {
            assert_eq!(
                (lock.exclusive_levels(), lock.shared_levels()),
                (0, 0),
                "{what}: the lost levels are forgotten"
            );
        }

        // --- No manual step: once each lost level is accounted for (the unlock that pairs
        // with it says LockLost), the same lock objects work again, on a new session
        // from the pool.
        let (result, _) = timed("unlock", exclusive.unlock()).await;
        assert_lock_lost(
            &result,
            exclusive_key,
            "the unlock of exclusive's lost level",
        );
        let (again, reconnect) = timed("is_held", exclusive.is_held()).await;
        assert!(
            !again.expect("is_held() after the loss was accounted for works"),
            "exclusive holds nothing now"
        );
        eprintln!(
            "[{}] exclusive: reconnect on its next call took {reconnect:?}",
            rt::NAME
        );
        let (took_it, _) = timed("try_lock", exclusive.try_lock()).await;
        assert!(took_it.unwrap(), "exclusive takes its key again");
        let (result, _) = timed("lock", stacked.lock()).await;
        result.expect("stacked locks again");
        let (result, _) = timed("lock_shared", shared_one.lock_shared()).await;
        result.expect("shared_one locks again");
        let (result, _) = timed("try_lock_shared", shared_two.try_lock_shared()).await;
        assert!(result.unwrap(), "shared_two locks again");
        let (result, _) = timed("try_lock", watched.try_lock()).await;
        assert!(result.unwrap(), "watched locks again after lost()");
        let (result, _) = timed("try_lock", retaking.try_lock()).await;
        assert!(result.unwrap(), "retaking takes its key on its next call");
        // The former waiters are usable too (they held nothing, so there was no loss to
        // report), and see the keys taken by the new holders.
        let (result, _) = timed("try_lock", waiter.try_lock()).await;
        assert!(
            !result.expect("the former lock() waiter works"),
            "exclusive holds its key"
        );
        let (result, _) = timed("try_lock_shared", timed_waiter.try_lock_shared()).await;
        assert!(
            result.expect("the former try_lock_for waiter works"),
            "shared levels go together"
        );
        // And a brand-new lock on the same pool.
        let new_at = Instant::now();
        let mut fresh = AdvisoryLock::new(&pool, fresh_key).await.unwrap();
        let (result, _) = timed("try_lock", fresh.try_lock()).await;
        assert!(result.unwrap(), "a new lock on the same pool works");
        eprintln!(
            "[{}] new lock after the restart: new + try_lock took {:?}",
            rt::NAME,
            new_at.elapsed()
        );

        // --- pg_locks: exactly the new holders.
        let exclusive_holders = support::holders_with_mode_at(&url, exclusive_key).await;
        assert_eq!(exclusive_holders.len(), 1, "{exclusive_holders:?}");
        assert_eq!(exclusive_holders[0].1, "ExclusiveLock");
        let shared_holders = support::holders_with_mode_at(&url, shared_key).await;
        assert_eq!(
            shared_holders.len(),
            3,
            "shared_one, shared_two and the former timed waiter: {shared_holders:?}"
        );
        assert!(shared_holders.iter().all(|(_, mode)| mode == "ShareLock"));
        let stacked_holders = support::holders_with_mode_at(&url, stacked_key).await;
        assert_eq!(
            stacked_holders
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>(),
            ["ExclusiveLock"],
            "stacked holds one exclusive level now, nothing from before the restart"
        );
        assert_eq!(
            support::holders_with_mode_at(&url, watched_key).await.len(),
            1
        );
        assert_eq!(
            support::holders_with_mode_at(&url, fresh_key).await.len(),
            1
        );
        for key in all_keys {
            assert!(
                support::waiters_at(&url, key).await.is_empty(),
                "no waiter on {key}"
            );
        }

        // Closing every lock leaves every key free: those holders were these locks. A lock
        // with a lost level that no unlock accounted for still reports it at close.
        for (lock, unaccounted) in [
            (&mut exclusive, false),
            (&mut stacked, true),
            (&mut shared_one, false),
            (&mut shared_two, true),
            (&mut watched, true),
            (&mut waiter, false),
            (&mut timed_waiter, false),
            (&mut fresh, false),
            (&mut retaking, false),
            (&mut closing, false),
        ] {
            let key = lock.key();
            let (result, _) = timed("close", lock.close()).await;
            match unaccounted {
                true => assert_lock_lost(&result, key, "close with a lost level unaccounted for"),
                false => result.expect("close after the restart"),
            }
            assert!(lock.is_closed());
        }
        for key in all_keys {
            assert!(
                support::holders_with_mode_at(&url, key).await.is_empty(),
                "{key} is free after every lock closed"
            );
        }
        timed("pool close", pool.close()).await;
    });
}

/// A lock that is not holding anything when the server restarts has no loss to report: its
/// next call simply works on a new session. One that is waiting in `lock()` gets an error.
#[test]
fn a_restart_between_calls_of_an_idle_lock_is_invisible_to_it() {
    rt::run(async {
        let cluster = Arc::new(PrivateCluster::start(&[]));
        let url = cluster.url();
        let pool = support::pool_at(&url, 4).await;
        let key = support::key("restart/idle");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        // A first round trip configures the session, so it is a live one when it dies.
        assert!(!timed("is_held", lock.is_held()).await.0.unwrap());
        let took = restart(&cluster).await;
        eprintln!("[{}] restart took {took:?}", rt::NAME);

        // The first call finds the session gone; no level was held, so this is not a
        // loss. It must not claim one, and the call after it must work.
        let (first, first_took) = timed("try_lock", lock.try_lock()).await;
        eprintln!(
            "[{}] idle lock: first call after the restart: {first:?} in {first_took:?}",
            rt::NAME
        );
        match &first {
            Ok(true) => {}
            Err(Error::Database(_)) => {
                let (second, _) = timed("try_lock", lock.try_lock()).await;
                assert!(second.unwrap(), "the next call works on a new session");
            }
            other => panic!("an idle lock across a restart: {other:?}"),
        }
        assert_eq!(
            support::holders_with_mode_at(&url, key).await.len(),
            1,
            "held now"
        );
        timed("unlock", lock.unlock()).await.0.unwrap();
        timed("close", lock.close()).await.0.unwrap();
        assert!(support::holders_with_mode_at(&url, key).await.is_empty());
        timed("pool close", pool.close()).await;
    });
}

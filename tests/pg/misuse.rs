//! Misuse and hostile surroundings (issue 7, part 5): each is a clear, typed error, never
//! a panic or a hang (every call is bounded), and leaves no lock behind (`pg_locks` shows
//! no holder of the key at the end).

use crate::support;

use std::future::Future;
use std::time::Duration;

use pglock::{AdvisoryLock, Error, LockKey, LockMode};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::cluster::PrivateCluster;
use support::rt;

/// The bound on every single call: an answer, never a hang.
const CALL_LIMIT: Duration = Duration::from_secs(20);

/// `future`, failing the test if it takes longer than [`CALL_LIMIT`]. Returns its output
/// and how long it took.
async fn timed<F: Future>(what: &str, future: F) -> (F::Output, Duration) {
    support::within(CALL_LIMIT, what, future).await
}

/// Prints one figure of the report: what was done, what came back, how fast.
fn note(what: &str, outcome: &dyn std::fmt::Debug, took: Duration) {
    eprintln!("[{}] {what}: {outcome:?} in {took:?}", rt::NAME);
}

fn assert_not_held<T: std::fmt::Debug>(
    result: &pglock::Result<T>,
    key: LockKey,
    mode: LockMode,
    what: &str,
) {
    match result {
        Err(err @ Error::NotHeld { key: k, mode: m }) => {
            assert_eq!((*k, *m), (key, mode), "{what}");
            let message = err.to_string();
            assert!(message.contains(&mode.to_string()), "{what}: {message}");
        }
        other => panic!("{what}: expected Err(NotHeld {{ {key}, {mode} }}), got {other:?}"),
    }
}

fn assert_closed<T: std::fmt::Debug>(result: &pglock::Result<T>, what: &str) {
    match result {
        Err(Error::Closed) => {}
        other => panic!("{what} after close: expected Err(Closed), got {other:?}"),
    }
}

async fn assert_no_holder(key: LockKey) {
    support::eventually(
        Duration::from_secs(5),
        &format!("no session holds {key}"),
        || async { support::holders(key).await.is_empty() },
    )
    .await;
}

#[test]
fn unlock_without_a_hold_is_not_held_with_the_mode_in_each_mode_and_key_space() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        for key in [
            support::key("misuse/unlock_without_hold"),
            support::pair_key("misuse/unlock_without_hold"),
        ] {
            let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
            // On a fresh lock, before any statement.
            let (result, took) = timed("unlock", lock.unlock()).await;
            assert_not_held(&result, key, LockMode::Exclusive, "unlock on a fresh lock");
            note("unlock() with nothing held", &result, took);
            let (result, took) = timed("unlock_shared", lock.unlock_shared()).await;
            assert_not_held(
                &result,
                key,
                LockMode::Shared,
                "unlock_shared on a fresh lock",
            );
            note("unlock_shared() with nothing held", &result, took);

            // After a lock/unlock cycle of each mode: one unlock too many.
            timed("lock", lock.lock()).await.0.unwrap();
            timed("unlock", lock.unlock()).await.0.unwrap();
            let (result, _) = timed("unlock", lock.unlock()).await;
            assert_not_held(&result, key, LockMode::Exclusive, "second unlock");
            timed("lock_shared", lock.lock_shared()).await.0.unwrap();
            timed("unlock_shared", lock.unlock_shared())
                .await
                .0
                .unwrap();
            let (result, _) = timed("unlock_shared", lock.unlock_shared()).await;
            assert_not_held(&result, key, LockMode::Shared, "second unlock_shared");

            // Nothing changed: the lock still works, and holds nothing.
            assert!(!timed("is_held", lock.is_held()).await.0.unwrap());
            assert!(timed("try_lock", lock.try_lock()).await.0.unwrap());
            timed("unlock", lock.unlock()).await.0.unwrap();
            timed("close", lock.close()).await.0.unwrap();
            assert_no_holder(key).await;
        }
        pool.close().await;
    });
}

#[test]
fn unlocking_the_mode_not_held_is_not_held_and_keeps_the_level_of_the_other_mode() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("misuse/wrong_mode");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        // Exclusive held, shared released: NotHeld { Shared }, and still held exclusively.
        timed("lock", lock.lock()).await.0.unwrap();
        let (result, took) = timed("unlock_shared", lock.unlock_shared()).await;
        assert_not_held(
            &result,
            key,
            LockMode::Shared,
            "unlock_shared holding exclusive",
        );
        note("unlock_shared() holding only exclusive", &result, took);
        assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (1, 0));
        assert!(timed("is_held", lock.is_held()).await.0.unwrap());
        let holders = support::holders_with_mode(key).await;
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(holders[0].1, "ExclusiveLock", "{holders:?}");
        assert!(
            !support::free_for_another_session(key).await,
            "the exclusive level still keeps others out"
        );
        timed("unlock", lock.unlock()).await.0.unwrap();
        assert_no_holder(key).await;

        // Shared held, exclusive released: NotHeld { Exclusive }, and still held shared.
        timed("lock_shared", lock.lock_shared()).await.0.unwrap();
        let (result, took) = timed("unlock", lock.unlock()).await;
        assert_not_held(&result, key, LockMode::Exclusive, "unlock holding shared");
        note("unlock() holding only shared", &result, took);
        assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (0, 1));
        let holders = support::holders_with_mode(key).await;
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(holders[0].1, "ShareLock", "{holders:?}");
        assert!(!support::free_for_another_session(key).await);
        timed("unlock_shared", lock.unlock_shared())
            .await
            .0
            .unwrap();

        timed("close", lock.close()).await.0.unwrap();
        assert_no_holder(key).await;
        pool.close().await;
    });
}

#[test]
fn every_operation_after_close_is_closed_and_closing_twice_is_ok() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("misuse/after_close");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        // Closed while holding levels of both modes: close releases them.
        timed("lock", lock.lock()).await.0.unwrap();
        timed("lock_shared", lock.lock_shared()).await.0.unwrap();
        let (result, took) = timed("close", lock.close()).await;
        result.expect("close holding levels");
        note("close() holding two levels", &"Ok(())", took);
        assert!(lock.is_closed());
        assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (0, 0));
        assert_no_holder(key).await;

        let second = Duration::from_secs(1);
        let (r, took) = timed("lock", lock.lock()).await;
        assert_closed(&r, "lock");
        note("lock() after close", &r, took);
        assert_closed(
            &timed("lock_shared", lock.lock_shared()).await.0,
            "lock_shared",
        );
        assert_closed(&timed("try_lock", lock.try_lock()).await.0, "try_lock");
        assert_closed(
            &timed("try_lock_shared", lock.try_lock_shared()).await.0,
            "try_lock_shared",
        );
        assert_closed(
            &timed("try_lock_for", lock.try_lock_for(second)).await.0,
            "try_lock_for",
        );
        assert_closed(
            &timed("try_lock_shared_for", lock.try_lock_shared_for(second))
                .await
                .0,
            "try_lock_shared_for",
        );
        assert_closed(
            &timed("try_lock_for(0)", lock.try_lock_for(Duration::ZERO))
                .await
                .0,
            "try_lock_for(0)",
        );
        assert_closed(&timed("unlock", lock.unlock()).await.0, "unlock");
        assert_closed(
            &timed("unlock_shared", lock.unlock_shared()).await.0,
            "unlock_shared",
        );
        assert_closed(&timed("is_held", lock.is_held()).await.0, "is_held");
        let (lost, took) = timed("lost", lock.lost()).await;
        assert!(
            matches!(lost, Error::Closed),
            "lost() after close: {lost:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "lost() on a closed lock resolves at once"
        );
        // Through the trait object as well.
        {
            let as_trait: &mut dyn pglock::DistributedLock = &mut lock;
            assert_closed(
                &timed("dyn try_lock", as_trait.try_lock()).await.0,
                "dyn try_lock",
            );
        }

        let (again, took) = timed("close", lock.close()).await;
        again.expect("closing twice is Ok");
        note("close() a second time", &"Ok(())", took);
        assert!(timed("close", lock.close()).await.0.is_ok(), "and a third");
        assert!(lock.is_closed());
        assert_no_holder(key).await;

        // A lock closed without ever running a statement.
        let mut unused = AdvisoryLock::new(&pool, key).await.unwrap();
        timed("close", unused.close()).await.0.unwrap();
        assert_closed(&timed("try_lock", unused.try_lock()).await.0, "try_lock");
        timed("close", unused.close()).await.0.unwrap();
        assert_no_holder(key).await;
        pool.close().await;
    });
}

#[test]
fn a_closed_pool_refuses_new_locks_at_once_with_pool_closed() {
    rt::run(async {
        let pool = support::pool_with(2).await;
        let key = support::key("misuse/closed_pool");
        timed("pool close", pool.close()).await;
        let (result, took) = timed("AdvisoryLock::new", AdvisoryLock::new(&pool, key)).await;
        note("AdvisoryLock::new on a closed pool", &result, took);
        match &result {
            Err(Error::Database(sqlx::Error::PoolClosed)) => {}
            other => panic!("AdvisoryLock::new on a closed pool: {other:?}"),
        }
        assert!(took < Duration::from_secs(1), "refused at once: {took:?}");
        assert_no_holder(key).await;
    });
}

#[test]
fn a_lock_keeps_working_on_its_own_connection_after_its_pool_is_closed() {
    rt::run(async {
        let pool = support::pool_with(2).await;
        let key = support::key("misuse/pool_closed_under_lock");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        timed("lock", lock.lock()).await.0.unwrap();

        // `close()` marks the pool closed at once; its future finishes when every
        // connection is back, so it is polled only at the end.
        let closing = pool.close();
        assert!(pool.is_closed());
        let (result, took) = timed("AdvisoryLock::new", AdvisoryLock::new(&pool, key)).await;
        assert!(
            matches!(result, Err(Error::Database(sqlx::Error::PoolClosed))),
            "{result:?}"
        );
        assert!(took < Duration::from_secs(1));

        // The lock owns its connection: it keeps working.
        let (result, took) = timed("unlock", lock.unlock()).await;
        result.expect("unlock on the lock's own connection after the pool closed");
        note("unlock() after the pool closed", &"Ok(())", took);
        assert!(!timed("is_held", lock.is_held()).await.0.unwrap());
        assert!(timed("try_lock", lock.try_lock()).await.0.unwrap());
        assert_eq!(support::holders(key).await.len(), 1);
        let (result, took) = timed("close", lock.close()).await;
        result.expect("close after the pool closed");
        note("close() after the pool closed", &"Ok(())", took);
        assert_no_holder(key).await;
        // With the lock's connection back, the pool's close finishes.
        let (_, took) = timed("the pool's close", closing).await;
        note("pool.close() finished after the lock closed", &"()", took);
        assert_eq!(pool.size(), 0, "the pool closed the returned connection");
    });
}

#[test]
fn an_unreachable_server_fails_within_the_acquire_timeout() {
    rt::run(async {
        // Nothing listens on port 1: every connection attempt is refused.
        let url = "postgres://postgres@127.0.0.1:1/postgres";
        let limit = Duration::from_secs(2);
        let margin = Duration::from_millis(1500);
        let key = support::key("misuse/unreachable");

        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(limit)
            .connect_lazy(url)
            .expect("a lazy pool needs no server");
        let (result, took) = timed("AdvisoryLock::new", AdvisoryLock::new(&pool, key)).await;
        note("AdvisoryLock::new to 127.0.0.1:1", &result, took);
        match &result {
            Err(Error::Database(err)) => assert!(!err.to_string().is_empty()),
            other => panic!("a lock on an unreachable server: {other:?}"),
        }
        assert!(
            took <= limit + margin,
            "failed within the timeout: {took:?}"
        );

        // Connecting eagerly fails the same way.
        let (result, took) = timed(
            "PgPoolOptions::connect",
            PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(limit)
                .connect(url),
        )
        .await;
        note(
            "PgPoolOptions::connect to 127.0.0.1:1",
            &result.as_ref().map(|_| "a pool"),
            took,
        );
        assert!(result.is_err(), "no pool for an unreachable server");
        assert!(
            took <= limit + margin,
            "failed within the timeout: {took:?}"
        );

        // And a lock on a single connection to it: the error comes from connecting.
        let options: PgConnectOptions = url.parse().unwrap();
        let (result, took) = timed("connect", sqlx::PgConnection::connect_with(&options)).await;
        note(
            "PgConnection::connect to 127.0.0.1:1",
            &result.as_ref().map(|_| "a connection"),
            took,
        );
        assert!(result.is_err());
        assert!(took <= limit + margin);
        timed("pool close", pool.close()).await;
    });
}

#[test]
fn wrong_credentials_are_a_database_error_that_does_not_show_the_password() {
    rt::run(async {
        let cluster = PrivateCluster::start(&["password_encryption = 'scram-sha-256'"]);
        let right = "Right-Horse-Battery-7731";
        let wrong = "Wrong-Staple-Pw-4412";
        // A fixed statement of the test's own: no input reaches it.
        support::add_password_role(
            &cluster,
            "pwuser",
            "CREATE ROLE pwuser LOGIN PASSWORD 'Right-Horse-Battery-7731'; \
             GRANT CONNECT ON DATABASE postgres TO pwuser",
        )
        .await;
        let port = cluster.port();
        let url_with =
            |password: &str| format!("postgres://pwuser:{password}@127.0.0.1:{port}/postgres");
        let key = support::key("misuse/wrong_credentials");

        // The reload takes effect for new connections shortly after pg_ctl returns.
        support::eventually(
            Duration::from_secs(10),
            "pwuser needs a password now",
            || async {
                let options: PgConnectOptions =
                    format!("postgres://pwuser@127.0.0.1:{port}/postgres")
                        .parse()
                        .unwrap();
                sqlx::PgConnection::connect_with(&options).await.is_err()
            },
        )
        .await;

        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&url_with(wrong))
            .unwrap();
        let (result, took) = timed("AdvisoryLock::new", AdvisoryLock::new(&pool, key)).await;
        note("AdvisoryLock::new with a wrong password", &result, took);
        let err = match result {
            Err(err @ Error::Database(_)) => err,
            other => panic!("a lock with a wrong password: {other:?}"),
        };
        let display = err.to_string();
        let debug = format!("{err:?}");
        for (shown, what) in [(&display, "Display"), (&debug, "Debug")] {
            for secret in [wrong, right] {
                assert!(
                    !shown.contains(secret),
                    "the error's {what} shows a password: {shown}"
                );
            }
        }
        let code = match &err {
            Error::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        assert_eq!(
            code.as_deref(),
            Some("28P01"),
            "invalid_password, said plainly: {display}"
        );
        assert!(took < Duration::from_secs(3), "refused promptly: {took:?}");
        timed("pool close", pool.close()).await;

        // The right password works, so the refusal above was about the password.
        let pool = support::pool_at(&url_with(right), 2).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(timed("try_lock", lock.try_lock()).await.0.unwrap());
        timed("close", lock.close()).await.0.unwrap();
        timed("pool close", pool.close()).await;
        assert!(
            support::holders_with_mode_at(&cluster.url(), key)
                .await
                .is_empty(),
            "no lock left behind"
        );
    });
}

#[test]
fn an_exhausted_pool_times_out_with_pool_timed_out_and_recovers_when_a_lock_closes() {
    rt::run(async {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(1))
            .connect(&support::database_url())
            .await
            .expect("connect");
        let keys = [
            support::key("misuse/exhausted/1"),
            support::key("misuse/exhausted/2"),
            support::key("misuse/exhausted/3"),
        ];
        let mut first = AdvisoryLock::new(&pool, keys[0]).await.unwrap();
        let mut second = AdvisoryLock::new(&pool, keys[1]).await.unwrap();
        assert!(timed("try_lock", first.try_lock()).await.0.unwrap());
        assert!(timed("try_lock", second.try_lock()).await.0.unwrap());

        let (result, took) = timed("AdvisoryLock::new", AdvisoryLock::new(&pool, keys[2])).await;
        note(
            "AdvisoryLock::new on an exhausted pool (max 2, acquire 1 s)",
            &result,
            took,
        );
        match &result {
            Err(Error::Database(sqlx::Error::PoolTimedOut)) => {}
            other => panic!("a third lock on a pool of two: {other:?}"),
        }
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "after about the acquire timeout: {took:?}"
        );
        // The held locks are untouched.
        assert!(timed("is_held", first.is_held()).await.0.unwrap());
        assert!(timed("is_held", second.is_held()).await.0.unwrap());

        // One lock closes: its connection goes back, and the third lock gets it.
        timed("close", first.close()).await.0.unwrap();
        let (result, took) = timed("AdvisoryLock::new", AdvisoryLock::new(&pool, keys[2])).await;
        let mut third = result.expect("a connection is free again");
        note("AdvisoryLock::new after one lock closed", &"Ok(lock)", took);
        assert!(timed("try_lock", third.try_lock()).await.0.unwrap());
        assert!(support::free_for_another_session(keys[0]).await);

        timed("close", second.close()).await.0.unwrap();
        timed("close", third.close()).await.0.unwrap();
        for key in keys {
            assert_no_holder(key).await;
        }
        timed("pool close", pool.close()).await;
    });
}

//! Nothing pglock prints shows a password (issue 7, part b).
//!
//! `Debug` and `Display` of locks (`AdvisoryLock`, its guard, `MemoryLock`),
//! `LockOptions`, every `Error` variant (with `Database` errors from failed connections to
//! URLs that carry a password) and the pool's options never show the password.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use pglock::{AdvisoryLock, Error, LockKey, LockMode, LockOptions};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::cluster::PrivateCluster;
use support::rt;

const PASSWORD: &str = "s3cr3t-pw";

fn assert_hides_password(what: &str, shown: &str) {
    assert!(
        !shown.contains(PASSWORD),
        "{what} shows the password: {shown}"
    );
    assert!(
        !shown.contains("s3cr3t"),
        "{what} shows part of the password: {shown}"
    );
}

fn assert_error_hides_password(what: &str, err: &Error) {
    assert_hides_password(&format!("{what} (Display)"), &err.to_string());
    assert_hides_password(&format!("{what} (Debug)"), &format!("{err:?}"));
    assert_hides_password(&format!("{what} (alternate Debug)"), &format!("{err:#?}"));
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        assert_hides_password(&format!("{what} (source)"), &inner.to_string());
        source = inner.source();
    }
}

/// `postgres://user:s3cr3t-pw@host:port/db`
fn with_password(user: &str, host_port: &str, db: &str) -> String {
    format!("postgres://{user}:{PASSWORD}@{host_port}/{db}")
}

#[test]
fn errors_from_connections_with_a_password_never_show_it() {
    rt::run(async {
        let unreachable = with_password("user", "127.0.0.1:1", "db");
        let mut errors: Vec<(String, Error)> = Vec::new();

        // A pool to a closed port: the lock gets the pool's error.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy(&unreachable)
            .expect("a lazy pool");
        assert_hides_password("Pool (Debug)", &format!("{pool:?}"));
        let result = rt::timeout(
            Duration::from_secs(10),
            AdvisoryLock::new(&pool, LockKey::BigInt(1)),
        )
        .await
        .expect("bounded");
        errors.push((
            "AdvisoryLock::new on a pool to a closed port".into(),
            result.expect_err("no server"),
        ));
        pool.close().await;

        // Eager pool and single connection to the closed port.
        let result = rt::timeout(
            Duration::from_secs(10),
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(1))
                .connect(&unreachable),
        )
        .await
        .expect("bounded");
        errors.push((
            "PgPool::connect".into(),
            Error::from(result.expect_err("no server")),
        ));
        let options: PgConnectOptions = unreachable.parse().expect("the URL parses");
        let result = rt::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect_with(&options),
        )
        .await
        .expect("bounded");
        errors.push((
            "PgConnection::connect".into(),
            Error::from(result.expect_err("no server")),
        ));
        let result = rt::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect(&unreachable),
        )
        .await
        .expect("bounded");
        errors.push((
            "PgConnection::connect(url)".into(),
            Error::from(result.expect_err("no server")),
        ));

        // URLs that do not parse.
        for bad in [
            with_password("user", "127.0.0.1:99999", "db"),
            format!("postgres://user:{PASSWORD}@127.0.0.1:5432/db?sslmode=sometimes"),
            format!("postgres://user:{PASSWORD}@[::1:5432/db"),
        ] {
            if let Err(err) = bad.parse::<PgConnectOptions>() {
                errors.push((
                    format!("parse of a bad URL ({})", bad.replace(PASSWORD, "***")),
                    Error::from(err),
                ));
            }
        }

        // A server that asks for the password, given the wrong one.
        let cluster = PrivateCluster::start(&["password_encryption = 'scram-sha-256'"]);
        support::add_password_role(
            &cluster,
            "pwuser",
            "CREATE ROLE pwuser LOGIN PASSWORD 'another-right-one'",
        )
        .await;
        let port = cluster.port();
        let wrong = with_password("pwuser", &format!("127.0.0.1:{port}"), "postgres");
        let refused = support::eventually(
            Duration::from_secs(10),
            "pwuser needs its password",
            || async {
                let options: PgConnectOptions = wrong.parse().unwrap();
                sqlx::PgConnection::connect_with(&options).await.is_err()
            },
        )
        .await;
        let _ = refused;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&wrong)
            .unwrap();
        let result = rt::timeout(
            Duration::from_secs(10),
            AdvisoryLock::new(&pool, LockKey::BigInt(2)),
        )
        .await
        .expect("bounded");
        errors.push((
            "AdvisoryLock::new with a wrong password".into(),
            result.expect_err("wrong password"),
        ));
        pool.close().await;

        for (what, err) in &errors {
            eprintln!("[{}] {what}: {err}", rt::NAME);
            assert_error_hides_password(what, err);
        }
        assert!(errors.len() >= 6, "{} errors checked", errors.len());
    });
}

#[test]
fn locks_options_pools_and_every_error_variant_never_show_the_password() {
    rt::run(async {
        // A trust-auth server ignores the password, so a URL with one connects: a real lock
        // on a pool whose URL carries a password.
        let cluster = PrivateCluster::start(&[]);
        let port = cluster.port();
        let url = with_password("postgres", &format!("127.0.0.1:{port}"), "postgres");
        let pool_options = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10));
        assert_hides_password("PgPoolOptions (Debug)", &format!("{pool_options:?}"));
        let pool = pool_options
            .connect(&url)
            .await
            .expect("connect to the private cluster");
        assert_hides_password("PgPool (Debug)", &format!("{pool:?}"));
        let connect_options = pool.connect_options();
        let options_debug = format!("{connect_options:?}");
        if options_debug.contains(PASSWORD) {
            // sqlx's own type, outside pglock: reported, not failed on.
            eprintln!(
                "[{}] note: sqlx's PgConnectOptions Debug (pool.connect_options()) shows the \
                 password; pglock never formats it",
                rt::NAME
            );
        }

        let key = LockKey::from_name("security/debug");
        let options = LockOptions::new().application_name("billing-worker");
        assert_hides_password("LockOptions (Debug)", &format!("{options:?}"));
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(options);
        assert_hides_password("AdvisoryLock (Debug, fresh)", &format!("{lock:?}"));
        assert!(lock.try_lock().await.unwrap());
        assert_hides_password("AdvisoryLock (Debug, holding)", &format!("{lock:#?}"));
        lock.unlock().await.unwrap();
        {
            let guard = lock.lock_guard().await.unwrap();
            assert_hides_password("AdvisoryLockGuard (Debug)", &format!("{guard:?}"));
            guard.release().await.unwrap();
        }
        // A lock on a borrowed connection from the same URL.
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        {
            let mut borrowed = AdvisoryLock::with_connection(&mut conn, key);
            assert!(borrowed.try_lock_shared().await.unwrap());
            assert_hides_password(
                "AdvisoryLock<&mut PgConnection> (Debug)",
                &format!("{borrowed:?}"),
            );
            borrowed.close().await.unwrap();
        }
        conn.close().await.unwrap();
        lock.close().await.unwrap();
        assert_hides_password("AdvisoryLock (Debug, closed)", &format!("{lock:?}"));

        let locks = pglock::memory::MemoryLocks::new();
        let mut memory = locks.lock(key);
        assert!(memory.try_lock().await.unwrap());
        assert_hides_password("MemoryLock (Debug)", &format!("{memory:?}"));
        assert_hides_password("MemoryLocks (Debug)", &format!("{locks:?}"));
        memory.close().await.unwrap();

        let client = pglock::LockClient::with_options(
            &pool,
            pglock::ClientOptions::new().lock_options(LockOptions::new()),
        );
        let mut shared_lock = client.lock(key);
        assert!(shared_lock.try_lock().await.unwrap());
        assert_hides_password("LockClient (Debug)", &format!("{client:#?}"));
        assert_hides_password("ClientLock (Debug)", &format!("{shared_lock:#?}"));
        shared_lock.unlock().await.unwrap();
        let set = client.try_lock_all([key]).await.unwrap().expect("free");
        assert_hides_password("LockSet (Debug)", &format!("{set:#?}"));
        set.release().await.unwrap();
        shared_lock.close().await.unwrap();
        drop((shared_lock, client)); // gives its lane back to the pool

        // Every variant a caller can meet, built by hand, plus Database errors of every
        // kind sqlx returns for a connection attempt with this URL.
        let pair = LockKey::IntPair(1, 2);
        let mut variants = vec![
            Error::NotHeld {
                key,
                mode: LockMode::Shared,
            },
            Error::NotHeld {
                key: pair,
                mode: LockMode::Exclusive,
            },
            Error::Closed,
            Error::LockLost { key },
            Error::Disconnected { key },
            Error::Interrupted { key: pair },
            Error::Unresponsive {
                key,
                after: Duration::from_secs(30),
            },
            Error::StaleToken {
                key,
                token: 3,
                current: 4,
            },
            Error::SessionNotPinned {
                key,
                first_pid: Some(10),
                pid: Some(11),
            },
            Error::Deadlock { key },
            Error::TooManyLocks { key },
            Error::Database(sqlx::Error::PoolClosed),
            Error::Database(sqlx::Error::PoolTimedOut),
            Error::Database(sqlx::Error::RowNotFound),
            Error::Database(sqlx::Error::WorkerCrashed),
            Error::Database(sqlx::Error::Protocol(format!(
                "unexpected message from {}",
                url.replace(PASSWORD, "***")
            ))),
        ];
        let closed_pool = PgPoolOptions::new().connect_lazy(&url).unwrap();
        closed_pool.close().await;
        variants.push(
            AdvisoryLock::new(&closed_pool, key)
                .await
                .expect_err("closed pool"),
        );
        for err in &variants {
            assert!(!err.to_string().is_empty(), "{err:?}");
            assert_error_hides_password(&format!("{err:?}"), err);
        }
        // Every variant is covered (a new one should be added above).
        let names: BTreeSet<String> = variants
            .iter()
            .map(|e| {
                format!("{e:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        for expected in [
            "NotHeld",
            "Closed",
            "LockLost",
            "Disconnected",
            "Interrupted",
            "Unresponsive",
            "StaleToken",
            "SessionNotPinned",
            "Deadlock",
            "TooManyLocks",
            "Database",
        ] {
            assert!(
                names.contains(expected),
                "variant {expected} checked: {names:?}"
            );
        }
        pool.close().await;
    });
}

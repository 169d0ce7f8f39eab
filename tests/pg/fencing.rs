//! Fencing tokens end to end: `pglock::migrate` on fresh databases, tokens that grow with
//! each acquisition, `try_lock_fenced` that uses up nothing, the paused-holder scenario
//! refused by `fencing::check`, `check` holding back the next holder's token until the
//! checked write commits, acquisitions whose token upsert fails leaving no level behind,
//! the one-statement acquisition counted in `pg_stat_statements`, and the `fencing`
//! example run as a process.
//!
//! Every test works in a database of its own (`pglock_fence_<pid>_<n>` on the test
//! server), created for it and dropped when it ends, pass or fail, so tests run in
//! parallel and each starts from a known schema.
#![cfg(feature = "migrate")]

use crate::support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pglock::fencing::{self, FencingToken};
use pglock::{AdvisoryLock, Error, LockKey};
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use support::WAIT;
use support::cluster::PrivateCluster;
use support::only_holder;
use support::rt;
use support::terminate;

/// How long the `fencing` example may run before the test kills it and fails.
const EXAMPLE_LIMIT: Duration = Duration::from_secs(60);

/// The versions of pglock's migrations, in order (the files in `migrations/`).
const VERSIONS: [i64; 2] = [20261126000001, 20261126000002];

/// A database of one test's own on the test server. Dropping it drops the database
/// (after ending every session on it), also when the test fails.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// A new, empty database: no pglock schema.
    async fn create() -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("pglock_fence_{}_{n}", std::process::id());
        let mut conn = support::connect().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("create database {name}: {err}"));
        let _ = conn.close().await;
        let url = support::url_for_database(&name);
        TestDb { name, url }
    }

    /// A new database with pglock's migrations applied, and a pool on it.
    async fn migrated() -> (TestDb, PgPool) {
        let db = TestDb::create().await;
        let pool = db.pool().await;
        pglock::migrate(&pool).await.expect("pglock::migrate");
        (db, pool)
    }

    async fn pool(&self) -> PgPool {
        support::pool_at(&self.url, 8).await
    }

    async fn connect(&self) -> PgConnection {
        support::connect_at(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // This runs inside the test's runtime (or while it unwinds): drop the database
        // from a thread with a runtime of its own.
        let name = self.name.clone();
        let dropped =
            std::thread::spawn(move || rt::run(async move { support::drop_database(&name).await }))
                .join();
        if dropped.is_err() {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// The token row of `key` in `pglock_fencing_tokens` (None: no row).
async fn stored_token(pool: &PgPool, key: LockKey) -> Option<i64> {
    sqlx::query_scalar("SELECT token FROM pglock_fencing_tokens WHERE lock_key = $1")
        .bind(key.to_string())
        .fetch_optional(pool)
        .await
        .expect("read pglock_fencing_tokens")
}

/// Whether another session on `db` can take `key` right now (it lets go at once).
async fn free_in(db: &TestDb, key: LockKey) -> bool {
    let mut conn = db.connect().await;
    let took = support::try_lock_on(&mut conn, key).await;
    if took {
        assert!(support::unlock_on(&mut conn, key).await);
    }
    let _ = conn.close().await;
    took
}

#[test]
fn migrate_applies_both_migrations_once_and_is_idempotent() {
    rt::run(async {
        let db = TestDb::create().await;
        let pool = db.pool().await;

        let embedded: Vec<i64> = pglock::migrate::migrator()
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(embedded, VERSIONS, "the migrator embeds both migrations");
        let mut on_disk: Vec<i64> =
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
                .expect("read migrations/")
                .filter_map(|entry| {
                    let name = entry.ok()?.file_name().into_string().ok()?;
                    name.strip_suffix(".sql")?.split('_').next()?.parse().ok()
                })
                .collect();
        on_disk.sort();
        assert_eq!(
            on_disk, VERSIONS,
            "migrations/ holds the embedded migrations"
        );

        pglock::migrate(&pool).await.expect("first migrate");
        pglock::migrate(&pool)
            .await
            .expect("second migrate is a no-op");

        let applied: Vec<(i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, success FROM {} ORDER BY version",
            pglock::migrate::MIGRATIONS_TABLE
        )))
        .fetch_all(&pool)
        .await
        .expect("read _pglock_migrations");
        assert_eq!(pglock::migrate::MIGRATIONS_TABLE, "_pglock_migrations");
        assert_eq!(applied, VERSIONS.map(|v| (v, true)).to_vec());

        let (sqlx_table, tokens_table, comment): (bool, bool, Option<String>) = sqlx::query_as(
            "SELECT to_regclass('_sqlx_migrations') IS NOT NULL, \
                    to_regclass('pglock_fencing_tokens') IS NOT NULL, \
                    obj_description(to_regclass('pglock_fencing_tokens'), 'pg_class')",
        )
        .fetch_one(&pool)
        .await
        .expect("look at the schema");
        assert!(!sqlx_table, "pglock must not create _sqlx_migrations");
        assert!(tokens_table, "pglock_fencing_tokens exists");
        assert!(
            comment.is_some_and(|c| c.contains("pglock fencing tokens")),
            "the second migration commented the table"
        );
        pool.close().await;
    });
}

#[test]
fn four_concurrent_migrate_calls_on_a_fresh_database_all_succeed() {
    rt::run(async {
        let db = TestDb::create().await;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            // A pool each, as four replicas starting at once would have.
            let pool = db.pool().await;
            tasks.push(rt::spawn(async move {
                let result = pglock::migrate(&pool).await;
                pool.close().await;
                result
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let result = rt::timeout(WAIT * 3, task)
                .await
                .unwrap_or_else(|| panic!("migrate call {i} did not finish"));
            assert!(result.is_ok(), "migrate call {i} failed: {result:?}");
        }

        let pool = db.pool().await;
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _pglock_migrations ORDER BY version")
                .fetch_all(&pool)
                .await
                .expect("read _pglock_migrations");
        assert_eq!(versions, VERSIONS, "each migration recorded exactly once");
        let sqlx_table: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(!sqlx_table);
        pool.close().await;
    });
}

#[test]
fn tokens_grow_by_one_with_each_acquisition_and_per_key() {
    rt::run(async {
        let (_db, pool) = TestDb::migrated().await;
        let key = support::key("tokens_grow_by_one_with_each_acquisition_and_per_key");
        let other = support::key("tokens_grow_by_one_with_each_acquisition_and_per_key/other");
        let pair = support::pair_key("tokens_grow_by_one_with_each_acquisition_and_per_key");
        let mut a = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut b = AdvisoryLock::new(&pool, key).await.unwrap();

        assert_eq!(stored_token(&pool, key).await, None, "no row before");
        assert_eq!(a.lock_fenced().await.unwrap(), FencingToken(1));
        assert_eq!(a.exclusive_levels(), 1);
        assert_eq!(
            support::holders(key).await.len(),
            1,
            "lock_fenced holds the key"
        );
        assert_eq!(stored_token(&pool, key).await, Some(1));
        a.unlock().await.unwrap();

        assert_eq!(b.lock_fenced().await.unwrap(), FencingToken(2));
        b.unlock().await.unwrap();
        assert_eq!(a.lock_fenced().await.unwrap().get(), 3);
        a.unlock().await.unwrap();
        assert_eq!(b.lock_fenced().await.unwrap(), FencingToken(4));
        b.unlock().await.unwrap();
        assert_eq!(stored_token(&pool, key).await, Some(4));

        // Another key counts on its own.
        let mut c = AdvisoryLock::new(&pool, other).await.unwrap();
        assert_eq!(c.lock_fenced().await.unwrap(), FencingToken(1));
        c.unlock().await.unwrap();
        assert_eq!(stored_token(&pool, key).await, Some(4), "untouched");

        // Int-pair keys: their own rows, by their Display form.
        let mut p = AdvisoryLock::new(&pool, pair).await.unwrap();
        let mut q = AdvisoryLock::new(&pool, pair).await.unwrap();
        assert_eq!(p.lock_fenced().await.unwrap(), FencingToken(1));
        assert_eq!(support::holders(pair).await.len(), 1);
        p.unlock().await.unwrap();
        assert_eq!(q.lock_fenced().await.unwrap(), FencingToken(2));
        q.unlock().await.unwrap();
        assert_eq!(stored_token(&pool, pair).await, Some(2));
        assert!(pair.to_string().contains(','));

        for lock in [&mut a, &mut b, &mut c, &mut p, &mut q] {
            lock.close().await.unwrap();
        }
        pool.close().await;
    });
}

#[test]
fn a_waiting_lock_fenced_takes_its_token_only_when_granted() {
    rt::run(async {
        let (_db, pool) = TestDb::migrated().await;
        let key = support::key("a_waiting_lock_fenced_takes_its_token_only_when_granted");
        let mut a = AdvisoryLock::new(&pool, key).await.unwrap();
        let mut b = AdvisoryLock::new(&pool, key).await.unwrap();

        assert_eq!(a.lock_fenced().await.unwrap(), FencingToken(1));
        let waiter = rt::spawn(async move {
            let token = b.lock_fenced().await;
            (b, token)
        });
        support::eventually(WAIT, "b waits for the key", || async {
            support::waiters(key).await.len() == 1
        })
        .await;
        rt::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            stored_token(&pool, key).await,
            Some(1),
            "a waiter has not bumped the token"
        );

        a.unlock().await.unwrap();
        let (mut b, token) = rt::timeout(WAIT, waiter)
            .await
            .expect("b is granted once a unlocks");
        assert_eq!(token.unwrap(), FencingToken(2));
        b.unlock().await.unwrap();
        a.close().await.unwrap();
        b.close().await.unwrap();
        pool.close().await;
    });
}

#[test]
fn try_lock_fenced_returns_none_when_held_elsewhere_and_uses_no_token() {
    rt::run(async {
        let (db, pool) = TestDb::migrated().await;
        for key in [
            support::key("try_lock_fenced_returns_none_when_held_elsewhere"),
            support::pair_key("try_lock_fenced_returns_none_when_held_elsewhere"),
        ] {
            let mut a = AdvisoryLock::new(&pool, key).await.unwrap();
            let mut b = AdvisoryLock::new(&pool, key).await.unwrap();

            assert_eq!(a.try_lock_fenced().await.unwrap(), Some(FencingToken(1)));
            for _ in 0..3 {
                assert_eq!(b.try_lock_fenced().await.unwrap(), None, "{key} is held");
            }
            assert_eq!(b.exclusive_levels(), 0);
            assert_eq!(stored_token(&pool, key).await, Some(1), "no token used up");
            a.unlock().await.unwrap();

            assert_eq!(
                b.try_lock_fenced().await.unwrap(),
                Some(FencingToken(2)),
                "the next acquisition gets the next number, no gap"
            );
            b.unlock().await.unwrap();

            // Held by a session outside pglock, shared: still None, still no token.
            let mut other = db.connect().await;
            assert!(support::try_lock_shared_on(&mut other, key).await);
            assert_eq!(a.try_lock_fenced().await.unwrap(), None);
            assert_eq!(stored_token(&pool, key).await, Some(2));
            assert!(support::unlock_shared_on(&mut other, key).await);
            let _ = other.close().await;

            assert_eq!(a.lock_fenced().await.unwrap(), FencingToken(3));
            a.unlock().await.unwrap();
            a.close().await.unwrap();
            b.close().await.unwrap();
        }
        pool.close().await;
    });
}

#[test]
fn a_paused_holder_is_refused_by_check_after_a_new_holder_wrote() {
    rt::run(async {
        let (_db, pool) = TestDb::migrated().await;
        let key = support::key("a_paused_holder_is_refused_by_check_after_a_new_holder_wrote");
        sqlx::raw_sql(
            "CREATE TABLE invoices (id int PRIMARY KEY, status text NOT NULL, \
             written_by text, token bigint); \
             INSERT INTO invoices VALUES (42, 'pending', NULL, NULL)",
        )
        .execute(&pool)
        .await
        .expect("create the protected table");

        // A acquires, and gets token t.
        let mut a = AdvisoryLock::new(&pool, key).await.unwrap();
        let t = a.lock_fenced().await.unwrap();
        assert_eq!(t, FencingToken(1));
        let a_pid = only_holder(key).await;

        // A "pauses": its session dies, and the server frees the key.
        terminate(a_pid).await;

        // B acquires (token t+1) and writes through check.
        let mut b = AdvisoryLock::new(&pool, key).await.unwrap();
        let t_b = rt::timeout(WAIT, b.lock_fenced())
            .await
            .expect("b gets the key once a's session is gone")
            .unwrap();
        assert_eq!(t_b.get(), t.get() + 1);
        assert_ne!(only_holder(key).await, a_pid);
        let mut tx = pool.begin().await.unwrap();
        fencing::check(&mut tx, key, t_b)
            .await
            .expect("b's token is current");
        sqlx::query(
            "UPDATE invoices SET status = 'sent', written_by = 'B', token = $1 WHERE id = 42",
        )
        .bind(t_b.get())
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();

        // A wakes and writes with its old token: refused, and nothing of it is committed.
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "UPDATE invoices SET status = 'cancelled', written_by = 'A', token = $1 WHERE id = 42",
        )
        .bind(t.get())
        .execute(&mut *tx)
        .await
        .unwrap();
        let refused = fencing::check(&mut tx, key, t).await;
        match &refused {
            Err(Error::StaleToken {
                key: k,
                token,
                current,
            }) => {
                assert_eq!((*k, *token, *current), (key, t.get(), t.get() + 1));
            }
            other => panic!("expected StaleToken for a's write, got {other:?}"),
        }
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("stale"), "{message}");
        assert!(message.contains(&key.to_string()), "{message}");
        drop(tx); // rolls back

        let rows: Vec<(String, Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT status, written_by, token FROM invoices")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            rows,
            vec![("sent".to_owned(), Some("B".to_owned()), Some(t_b.get()))],
            "only b's write is in the table"
        );

        // A, when it asks, learns that it lost the lock.
        let lost = a.is_held().await;
        assert!(
            matches!(lost, Err(Error::LockLost { key: k }) if k == key),
            "a's lock reports the loss: {lost:?}"
        );
        b.unlock().await.unwrap();
        b.close().await.unwrap();
        let _ = a.close().await;
        pool.close().await;
    });
}

#[test]
fn check_refuses_a_token_for_a_key_that_never_issued_one() {
    rt::run(async {
        let (_db, pool) = TestDb::migrated().await;
        let key = support::key("check_refuses_a_token_for_a_key_that_never_issued_one");
        let mut tx = pool.begin().await.unwrap();
        let refused = fencing::check(&mut tx, key, FencingToken(1)).await;
        assert!(
            matches!(
                refused,
                Err(Error::StaleToken {
                    token: 1,
                    current: 0,
                    ..
                })
            ),
            "{refused:?}"
        );
        drop(tx);
        pool.close().await;
    });
}

#[test]
fn check_holds_back_a_new_holders_token_until_the_checking_transaction_commits() {
    rt::run(async {
        let (_db, pool) = TestDb::migrated().await;
        let key = support::key("check_holds_back_a_new_holders_token_until_the_checking_tx");
        let mut a = AdvisoryLock::new(&pool, key).await.unwrap();
        let t = a.lock_fenced().await.unwrap();
        a.unlock().await.unwrap();

        // A write checked with the current token, not yet committed.
        let mut tx = pool.begin().await.unwrap();
        fencing::check(&mut tx, key, t).await.expect("t is current");

        // B acquires from another task: it gets the key, but not its token, until then.
        let committed = Arc::new(AtomicBool::new(false));
        let returned = Arc::new(AtomicBool::new(false));
        let mut b = AdvisoryLock::new(&pool, key).await.unwrap();
        let task = {
            let (committed, returned) = (committed.clone(), returned.clone());
            rt::spawn(async move {
                let token = b.lock_fenced().await;
                let after_commit = committed.load(Ordering::SeqCst);
                returned.store(true, Ordering::SeqCst);
                (b, token, after_commit, Instant::now())
            })
        };
        support::eventually(WAIT, "b holds the advisory lock", || async {
            support::holders(key).await.len() == 1
        })
        .await;
        let b_pid = only_holder(key).await;
        let pool_ref = &pool;
        support::eventually(WAIT, "b waits on the token row's lock", || async move {
            let wait: Option<String> =
                sqlx::query_scalar("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1")
                    .bind(b_pid)
                    .fetch_one(pool_ref)
                    .await
                    .unwrap();
            wait.as_deref() == Some("Lock")
        })
        .await;
        rt::sleep(Duration::from_millis(500)).await;
        assert!(
            !returned.load(Ordering::SeqCst),
            "lock_fenced returned while the checked write was not committed"
        );

        let committed_at = Instant::now();
        committed.store(true, Ordering::SeqCst);
        tx.commit().await.unwrap();
        let (mut b, token, after_commit, returned_at) = rt::timeout(WAIT, task)
            .await
            .expect("b's lock_fenced returns once the checked write commits");
        assert_eq!(token.unwrap().get(), t.get() + 1);
        assert!(after_commit, "b's token came after the commit");
        assert!(returned_at >= committed_at);
        assert_eq!(stored_token(&pool, key).await, Some(t.get() + 1));

        b.unlock().await.unwrap();
        b.close().await.unwrap();
        a.close().await.unwrap();
        pool.close().await;
    });
}

#[test]
fn lock_fenced_without_the_token_table_fails_and_holds_no_level() {
    rt::run(async {
        let db = TestDb::create().await; // no migrations
        let pool = db.pool().await;
        for key in [
            support::key("lock_fenced_without_the_token_table_fails"),
            support::pair_key("lock_fenced_without_the_token_table_fails"),
        ] {
            let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
            let failed = lock.lock_fenced().await;
            match &failed {
                Err(Error::Database(err)) => {
                    assert!(err.to_string().contains("pglock_fencing_tokens"), "{err}")
                }
                other => panic!("expected a database error, got {other:?}"),
            }
            assert_eq!(lock.exclusive_levels(), 0);
            assert_eq!(support::holders(key).await, Vec::<i32>::new());
            assert!(free_in(&db, key).await, "another session can take {key}");

            let failed = lock.try_lock_fenced().await;
            assert!(matches!(failed, Err(Error::Database(_))), "{failed:?}");
            assert_eq!(lock.exclusive_levels(), 0);
            assert_eq!(support::holders(key).await, Vec::<i32>::new());
            assert!(free_in(&db, key).await);

            // The lock is still usable.
            lock.lock().await.unwrap();
            lock.unlock().await.unwrap();
            lock.close().await.unwrap();
        }
        pool.close().await;
    });
}

/// Sets `key`'s token to `i64::MAX`, so the next increment fails after the grant.
async fn exhaust_token(pool: &PgPool, key: LockKey) {
    sqlx::query(
        "INSERT INTO pglock_fencing_tokens (lock_key, token) VALUES ($1, 9223372036854775807) \
         ON CONFLICT (lock_key) DO UPDATE SET token = EXCLUDED.token",
    )
    .bind(key.to_string())
    .execute(pool)
    .await
    .expect("set the token to i64::MAX");
}

#[test]
fn lock_fenced_whose_token_upsert_fails_after_the_grant_holds_no_level() {
    rt::run(async {
        let (db, pool) = TestDb::migrated().await;
        for key in [
            support::key("lock_fenced_whose_token_upsert_fails"),
            support::pair_key("lock_fenced_whose_token_upsert_fails"),
        ] {
            exhaust_token(&pool, key).await;
            let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

            // The acquisition runs, then `token + 1` overflows: bigint out of range.
            let failed = lock.lock_fenced().await;
            assert!(
                matches!(&failed, Err(Error::Database(err)) if err.to_string().contains("out of range")),
                "{failed:?}"
            );
            assert_eq!(lock.exclusive_levels(), 0);
            assert_eq!(
                support::holders(key).await,
                Vec::<i32>::new(),
                "the granted level was undone"
            );
            assert!(free_in(&db, key).await, "another session can take {key}");

            let failed = lock.try_lock_fenced().await;
            assert!(matches!(failed, Err(Error::Database(_))), "{failed:?}");
            assert_eq!(lock.exclusive_levels(), 0);
            assert_eq!(support::holders(key).await, Vec::<i32>::new());
            assert!(free_in(&db, key).await);
            assert_eq!(stored_token(&pool, key).await, Some(i64::MAX));
            lock.close().await.unwrap();
        }
        pool.close().await;
    });
}

#[test]
fn a_failed_lock_fenced_on_a_held_lock_ends_the_session_and_leaks_nothing() {
    rt::run(async {
        let (db, pool) = TestDb::migrated().await;
        let key = support::key("a_failed_lock_fenced_on_a_held_lock_leaves_exactly_the_levels");
        exhaust_token(&pool, key).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        lock.lock().await.unwrap();

        // The statement takes a second level, then fails on the overflow. With a level
        // held before, pg_locks cannot tell one level from two, so the lock ends its
        // session (the server frees both) and reports the loss instead of guessing.
        let failed = lock.lock_fenced().await;
        assert!(matches!(failed, Err(Error::LockLost { .. })), "{failed:?}");
        assert_eq!(lock.exclusive_levels(), 0);
        support::eventually(Duration::from_secs(2), "key free", || async {
            free_in(&db, key).await
        })
        .await;

        // The level taken before is lost: the unlock that pairs with it says so. The lock
        // reconnects and works; close hands back a clean session.
        let unlocked = lock.unlock().await;
        assert!(
            matches!(unlocked, Err(Error::LockLost { .. })),
            "{unlocked:?}"
        );
        assert!(lock.try_lock().await.unwrap());
        lock.close().await.unwrap();
        assert!(free_in(&db, key).await);
        let idle_with_locks: Vec<(i32, i64)> = support::advisory_locks_of_idle(&pool)
            .await
            .into_iter()
            .filter(|&(_, locks)| locks > 0)
            .collect();
        pool.close().await;
        assert!(
            idle_with_locks.is_empty(),
            "idle pool connections holding advisory locks (pid, count): {idle_with_locks:?}"
        );
    });
}

#[test]
fn lock_fenced_takes_the_key_and_its_token_in_one_statement() {
    let cluster = PrivateCluster::start(&[]);
    rt::run(async move {
        let url = cluster.url();
        let mut observer = support::connect_at(&url).await;
        sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut observer)
            .await
            .expect("create pg_stat_statements");
        let pool = support::pool_at(&url, 4).await;
        pglock::migrate(&pool).await.expect("pglock::migrate");
        let key = support::key("lock_fenced_takes_the_key_and_its_token_in_one_statement");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        // Warm-up: the session's configuration, statement preparation.
        lock.lock_fenced().await.unwrap();
        lock.unlock().await.unwrap();
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut observer)
            .await
            .expect("reset pg_stat_statements");

        for i in 0..10 {
            assert_eq!(lock.lock_fenced().await.unwrap().get(), i + 2);
            lock.unlock().await.unwrap();
        }

        let statements: Vec<(String, i64)> = sqlx::query_as(
            "SELECT query, calls FROM pg_stat_statements \
             WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC, query",
        )
        .fetch_all(&mut observer)
        .await
        .expect("read pg_stat_statements");
        let calls = |needle: &str| -> i64 {
            statements
                .iter()
                .filter(|(query, _)| query.contains(needle))
                .map(|(_, calls)| calls)
                .sum()
        };
        let total: i64 = statements.iter().map(|(_, calls)| calls).sum();
        eprintln!("statements after 10 lock_fenced + unlock pairs: {statements:#?}");
        assert_eq!(calls("pglock_fencing_tokens"), 10, "{statements:#?}");
        assert_eq!(calls("pg_advisory_unlock"), 10, "{statements:#?}");
        assert_eq!(total, 20, "exactly one statement per call: {statements:#?}");
        let fenced = statements
            .iter()
            .find(|(query, _)| query.contains("pglock_fencing_tokens"))
            .map(|(query, _)| query.as_str())
            .unwrap_or_default();
        assert!(
            fenced.contains("pg_advisory_lock("),
            "the token statement is also the acquisition: {fenced}"
        );

        lock.close().await.unwrap();
        pool.close().await;
        let _ = observer.close().await;
        cluster.pg_ctl(&["stop", "-m", "fast"]);
    });
}

#[test]
fn fencing_example_runs_the_pause_scenario_and_exits_0() {
    rt::run(async {
        let url = support::database_url();
        let bin = support::examples::example("fencing");
        let output = run_with_limit(Command::new(&bin).env("DATABASE_URL", &url), EXAMPLE_LIMIT);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "the fencing example exited with {}:\n{stdout}\n{stderr}",
            output.status
        );
        assert!(
            stdout.to_lowercase().contains("stale"),
            "the example's output mentions the stale write:\n{stdout}"
        );
    });
}

/// Runs `cmd` to completion, killing it (and failing) after `limit`.
fn run_with_limit(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("could not start {cmd:?}: {err}"));
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}:\n{}",
                String::from_utf8_lossy(&stdout.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

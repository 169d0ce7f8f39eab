//! A hot standby refuses locks (issue 11, part 3).
//!
//! Advisory locks work on a server in recovery, but they are local to it (not
//! WAL-logged): a lock taken on a standby excludes no session on the primary or on
//! another standby. So pglock refuses there with `Error::StandbyServer`, and takes
//! nothing. These tests run against a real streaming standby: a private primary, and a
//! standby built from it with `pg_basebackup -R` over loopback
//! (`support::cluster::Standby`). One pair serves the whole binary; the promotion test
//! has a pair of its own.
//!
//! - The premise, with raw SQL: the standby streams from the primary, and a key held on
//!   the primary is free on the standby.
//! - Every `AdvisoryLock` acquisition (owned and borrowed connections; exclusive and
//!   shared; blocking, try and timed; fenced; guards) and every run-under-lock helper is
//!   refused with `StandbyServer { key }`, again on a second try, and the standby's
//!   `pg_locks` (read from another session) shows nothing taken.
//! - Every `pglock::xact` acquisition is refused in its own statement, without waiting
//!   behind a holder, and the caller's transaction stays usable with its settings.
//! - `pglock run` against the standby exits 2, names the standby, and never runs the
//!   command (feature `cli`).
//! - Once the standby is promoted, new locks on it work and `close` releases them.

use crate::support;

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, Error, LockConnection, LockKey, xact};
use sqlx::{Connection, PgPool, Postgres, Transaction};
use support::cluster::{PrivateCluster, Standby};
use support::rt;

/// The bound on every single call: an answer, never a hang.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// The bound timed acquisitions are given where nothing holds the key.
const TIMED_WAIT: Duration = Duration::from_millis(500);

/// Behind a holder on the standby, a blocking or 10 s timed acquisition must be refused
/// within this: it was not sent to wait.
const AT_ONCE: Duration = Duration::from_secs(3);

/// The wait a timed acquisition behind a holder is given; far longer than [`AT_ONCE`].
const LONG_WAIT: Duration = Duration::from_secs(10);

/// The primary and standby this binary's tests share (all but promotion, which changes
/// its standby for good).
struct Pair {
    primary: PrivateCluster,
    standby: Standby,
}

/// The shared pair, built on first use; tests only read from it, and take nothing on
/// the standby (that is what they check).
fn shared() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let (pair, primary_took, standby_took) = build_pair();
        eprintln!(
            "standby: primary started in {primary_took:?}, standby built and in recovery in \
             {standby_took:?}"
        );
        pair
    })
}

/// A new primary and a standby streaming from it, with how long each took.
fn build_pair() -> (Pair, Duration, Duration) {
    let start = Instant::now();
    let primary = PrivateCluster::start(&[]);
    let primary_took = start.elapsed();
    let start = Instant::now();
    let standby = primary.start_standby();
    let standby_took = start.elapsed();
    (Pair { primary, standby }, primary_took, standby_took)
}

/// `future`, failing the test if it takes longer than [`CALL_LIMIT`].
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    bounded_by(CALL_LIMIT, what, future).await
}

/// `future`, failing the test if it takes longer than `limit`.
async fn bounded_by<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    support::bounded(limit, what, future).await
}

/// Fails unless `result` is `Err(StandbyServer)` for `key`.
fn assert_refused<T: std::fmt::Debug>(result: &pglock::Result<T>, key: LockKey, what: &str) {
    match result {
        Err(Error::StandbyServer { key: refused }) => assert_eq!(*refused, key, "{what}"),
        other => panic!(
            "{what} on a standby: expected Err(StandbyServer {{ key: {key} }}), got {other:?}"
        ),
    }
}

/// `pg_is_in_recovery()` at `url`, from a new session.
async fn in_recovery(url: &str) -> bool {
    let mut conn = support::connect_at(url).await;
    let recovering = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await
        .expect("pg_is_in_recovery()");
    let _ = conn.close().await;
    recovering
}

/// Fails if the standby's `pg_locks` shows any advisory lock on `key`.
async fn assert_nothing_taken(url: &str, key: LockKey, what: &str) {
    let rows = support::advisory_locks_on_key_at(url, key).await;
    assert!(
        rows.is_empty(),
        "{what}: the standby's pg_locks shows advisory locks on {key}: {rows:?}"
    );
}

/// Every idle connection of `pool` (at `url`) is back and holds no advisory lock.
async fn assert_pool_holds_nothing(pool: &PgPool, url: &str) {
    support::settled(pool, CALL_LIMIT).await;
    let mut conns = Vec::new();
    for _ in 0..pool.num_idle() {
        let mut conn = pool.acquire().await.expect("acquire");
        let pid = support::backend_pid(&mut conn).await;
        assert_eq!(
            support::advisory_locks_of_pid_at(url, pid).await,
            0,
            "pool connection (pid {pid}) holds an advisory lock"
        );
        conns.push(conn);
    }
}

/// Each way `AdvisoryLock` acquires.
#[derive(Debug, Clone, Copy)]
enum Acquisition {
    Lock,
    LockShared,
    TryLock,
    TryLockShared,
    TryLockFor,
    TryLockSharedFor,
    LockFenced,
    TryLockFenced,
    LockGuard,
    LockSharedGuard,
    TryLockGuard,
    TryLockSharedGuard,
    TryLockGuardFor,
    TryLockSharedGuardFor,
}

const EVERY_ACQUISITION: [Acquisition; 14] = [
    Acquisition::Lock,
    Acquisition::LockShared,
    Acquisition::TryLock,
    Acquisition::TryLockShared,
    Acquisition::TryLockFor,
    Acquisition::TryLockSharedFor,
    Acquisition::LockFenced,
    Acquisition::TryLockFenced,
    Acquisition::LockGuard,
    Acquisition::LockSharedGuard,
    Acquisition::TryLockGuard,
    Acquisition::TryLockSharedGuard,
    Acquisition::TryLockGuardFor,
    Acquisition::TryLockSharedGuardFor,
];

/// Runs one acquisition on `lock`; `Ok` says what it returned (a guard is dropped at
/// once, which releases its level before the lock's next operation).
async fn attempt<C: LockConnection>(
    lock: &mut AdvisoryLock<C>,
    how: Acquisition,
) -> pglock::Result<String> {
    use Acquisition::*;
    Ok(match how {
        Lock => format!("{:?}", lock.lock().await?),
        LockShared => format!("{:?}", lock.lock_shared().await?),
        TryLock => format!("{}", lock.try_lock().await?),
        TryLockShared => format!("{}", lock.try_lock_shared().await?),
        TryLockFor => format!("{}", lock.try_lock_for(TIMED_WAIT).await?),
        TryLockSharedFor => format!("{}", lock.try_lock_shared_for(TIMED_WAIT).await?),
        LockFenced => format!("token {}", lock.lock_fenced().await?),
        TryLockFenced => format!("{:?}", lock.try_lock_fenced().await?),
        LockGuard => format!("{:?}", lock.lock_guard().await?),
        LockSharedGuard => format!("{:?}", lock.lock_shared_guard().await?),
        TryLockGuard => format!("{:?}", lock.try_lock_guard().await?),
        TryLockSharedGuard => format!("{:?}", lock.try_lock_shared_guard().await?),
        TryLockGuardFor => format!("{:?}", lock.try_lock_guard_for(TIMED_WAIT).await?),
        TryLockSharedGuardFor => {
            format!("{:?}", lock.try_lock_shared_guard_for(TIMED_WAIT).await?)
        }
    })
}

/// `how` on `lock`, twice (the first call meets a new session, the second one a session
/// already found to be a standby): refused both times, holding no level.
async fn assert_acquisition_refused<C: LockConnection>(
    lock: &mut AdvisoryLock<C>,
    how: Acquisition,
    url: &str,
) {
    let key = lock.key();
    for attempt_no in 1..=2 {
        let what = format!("{how:?} (attempt {attempt_no})");
        let result = bounded(&what, attempt(lock, how)).await;
        assert_refused(&result, key, &what);
        assert_eq!(
            (lock.exclusive_levels(), lock.shared_levels()),
            (0, 0),
            "{what}: the lock counts levels"
        );
        assert_nothing_taken(url, key, &what).await;
    }
}

// ---------------------------------------------------------------------------------------
// The premise

#[test]
fn the_standby_streams_from_the_primary_and_is_in_recovery() {
    let pair = shared();
    let (primary, standby) = (pair.primary.url(), pair.standby.url());
    rt::run(async move {
        assert!(in_recovery(&standby).await, "the standby is in recovery");
        assert!(!in_recovery(&primary).await, "the primary is not");

        // A table created on the primary shows up on the standby: it streams.
        let table = support::unique_table("standby_streams");
        let mut on_primary = support::connect_at(&primary).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (id int)"
        )))
        .execute(&mut on_primary)
        .await
        .expect("create a table on the primary");
        let took = support::eventually(CALL_LIMIT, "the table reaches the standby", || {
            let (standby, table) = (standby.clone(), table.clone());
            async move {
                let mut conn = support::connect_at(&standby).await;
                let found: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                    .bind(&table)
                    .fetch_one(&mut conn)
                    .await
                    .expect("to_regclass on the standby");
                let _ = conn.close().await;
                found
            }
        })
        .await;
        eprintln!("standby: a table created on the primary reached the standby in {took:?}");

        // And the standby refuses writes, as a server in recovery does.
        let mut on_standby = support::connect_at(&standby).await;
        let write = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} VALUES (1)"
        )))
        .execute(&mut on_standby)
        .await;
        assert!(write.is_err(), "a write on the standby: {write:?}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
            .execute(&mut on_primary)
            .await
            .expect("drop the table on the primary");
        let _ = on_primary.close().await;
        let _ = on_standby.close().await;
    });
}

#[test]
fn a_raw_advisory_lock_on_the_standby_excludes_no_one_on_the_primary() {
    let pair = shared();
    let (primary, standby) = (pair.primary.url(), pair.standby.url());
    rt::run(async move {
        // Why pglock refuses: with raw SQL, both servers grant the "exclusive" key at once.
        let key = support::key("standby/raw_premise");
        let mut on_primary = support::connect_at(&primary).await;
        let mut on_standby = support::connect_at(&standby).await;
        assert!(support::try_lock_on(&mut on_primary, key).await);
        assert!(
            support::try_lock_on(&mut on_standby, key).await,
            "the standby grants a key the primary's session holds"
        );
        let standby_pid = support::backend_pid(&mut on_standby).await;
        assert_eq!(
            support::holders_with_mode_at(&standby, key).await,
            vec![(standby_pid, "ExclusiveLock".to_owned())],
            "the standby's pg_locks shows only its own holder"
        );
        assert!(support::unlock_on(&mut on_standby, key).await);
        assert!(support::unlock_on(&mut on_primary, key).await);
        let _ = on_standby.close().await;
        let _ = on_primary.close().await;
    });
}

// ---------------------------------------------------------------------------------------
// AdvisoryLock

#[test]
fn every_acquisition_of_an_owned_lock_on_a_standby_is_refused_and_takes_nothing() {
    let standby = shared().standby.url();
    rt::run(async move {
        let pool = support::pool_at(&standby, 4).await;
        for how in EVERY_ACQUISITION {
            let key = support::key(&format!("standby/owned/{how:?}"));
            let mut lock = bounded("AdvisoryLock::new", AdvisoryLock::new(&pool, key))
                .await
                .expect("a lock on a standby pool is created (acquisitions are refused)");
            assert_acquisition_refused(&mut lock, how, &standby).await;
            bounded("close", lock.close())
                .await
                .unwrap_or_else(|err| panic!("{how:?}: close after the refusal: {err}"));
            assert_nothing_taken(&standby, key, &format!("{how:?} after close")).await;
        }
        assert_pool_holds_nothing(&pool, &standby).await;
        pool.close().await;
    });
}

/// A pool connection that already ran statements may have been set up by an earlier lock,
/// so its first statement is the small `FIRST_CONFIGURED`: it refuses the standby too.
#[test]
fn an_owned_connection_that_ran_statements_before_is_refused_on_a_standby() {
    let standby = shared().standby.url();
    rt::run(async move {
        let pool = support::pool_at(&standby, 4).await;
        for how in [
            Acquisition::Lock,
            Acquisition::TryLockShared,
            Acquisition::TryLockFor,
        ] {
            let key = support::key(&format!("standby/used-owned/{how:?}"));
            let mut conn = pool.acquire().await.expect("acquire");
            support::backend_pid(&mut conn).await; // a statement sqlx caches
            let mut lock = AdvisoryLock::with_connection(conn, key);
            let result = bounded("the first acquisition", attempt(&mut lock, how)).await;
            assert_refused(&result, key, &format!("{how:?}"));
            assert_nothing_taken(&standby, key, &format!("{how:?}")).await;
            bounded("close", lock.close())
                .await
                .unwrap_or_else(|err| panic!("{how:?}: close after the refusal: {err}"));
        }
        assert_pool_holds_nothing(&pool, &standby).await;
        pool.close().await;
    });
}

#[test]
fn every_acquisition_of_a_borrowed_lock_on_a_standby_is_refused_and_takes_nothing() {
    let standby = shared().standby.url();
    rt::run(async move {
        let mut conn = support::connect_at(&standby).await;
        let pid = support::backend_pid(&mut conn).await;
        for how in EVERY_ACQUISITION {
            // Int-pair keys here, bigint keys for owned locks: both statement shapes.
            let key = support::pair_key(&format!("standby/borrowed/{how:?}"));
            let mut lock = AdvisoryLock::with_connection(&mut conn, key);
            assert_acquisition_refused(&mut lock, how, &standby).await;
            bounded("close", lock.close())
                .await
                .unwrap_or_else(|err| panic!("{how:?}: close after the refusal: {err}"));
            assert_eq!(
                support::advisory_locks_of_pid_at(&standby, pid).await,
                0,
                "{how:?}: the borrowed session holds an advisory lock"
            );
        }
        // The caller's connection is still the caller's, and usable.
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .expect("the borrowed connection works after the refusals");
        assert_eq!(one, 1);
        let _ = conn.close().await;
    });
}

#[test]
fn a_blocking_lock_on_a_standby_is_refused_at_once_even_while_a_session_there_holds_the_key() {
    let standby = shared().standby.url();
    rt::run(async move {
        let key = support::key("standby/blocking_behind_holder");
        // A raw holder on the standby itself: an acquisition that reached the server
        // would wait behind it.
        let mut holder = support::connect_at(&standby).await;
        assert!(support::try_lock_on(&mut holder, key).await);
        let holder_pid = support::backend_pid(&mut holder).await;
        let pool = support::pool_at(&standby, 2).await;
        for how in [
            Acquisition::Lock,
            Acquisition::LockShared,
            Acquisition::LockFenced,
        ] {
            let mut lock = AdvisoryLock::new(&pool, key).await.expect("new");
            let what = format!("{how:?} behind a holder");
            let start = Instant::now();
            let result = bounded_by(AT_ONCE, &what, attempt(&mut lock, how)).await;
            assert_refused(&result, key, &what);
            eprintln!(
                "standby: AdvisoryLock {what} refused in {:?}",
                start.elapsed()
            );
            bounded("close", lock.close()).await.expect("close");
        }
        let mut lock = AdvisoryLock::new(&pool, key).await.expect("new");
        let what = "try_lock_for(10 s) behind a holder";
        let start = Instant::now();
        let result = bounded_by(AT_ONCE, what, lock.try_lock_for(LONG_WAIT)).await;
        assert_refused(&result, key, what);
        eprintln!(
            "standby: AdvisoryLock {what} refused in {:?}",
            start.elapsed()
        );
        let what = "try_lock_shared_for(10 s) behind a holder";
        let result = bounded_by(AT_ONCE, what, lock.try_lock_shared_for(LONG_WAIT)).await;
        assert_refused(&result, key, what);
        bounded("close", lock.close()).await.expect("close");
        assert_eq!(
            support::advisory_locks_on_key_at(&standby, key).await,
            vec![(holder_pid, "ExclusiveLock".to_owned(), true)],
            "only the raw holder, and no waiter, on the standby"
        );
        assert!(support::unlock_on(&mut holder, key).await);
        let _ = holder.close().await;
        assert_pool_holds_nothing(&pool, &standby).await;
        pool.close().await;
    });
}

#[test]
fn run_under_lock_on_a_standby_is_refused_and_never_runs_the_work() {
    let standby = shared().standby.url();
    rt::run(async move {
        let pool = support::pool_at(&standby, 2).await;
        let ran = std::sync::atomic::AtomicBool::new(false);
        let work = || async { ran.store(true, std::sync::atomic::Ordering::SeqCst) };

        let key = support::key("standby/with_lock");
        let result = bounded("with_lock", pglock::with_lock(&pool, key, work)).await;
        assert_refused(&result, key, "with_lock");
        let key = support::key("standby/with_lock_shared");
        let result = bounded(
            "with_lock_shared",
            pglock::with_lock_shared(&pool, key, work),
        )
        .await;
        assert_refused(&result, key, "with_lock_shared");
        let key = support::key("standby/try_with_lock");
        let result = bounded("try_with_lock", pglock::try_with_lock(&pool, key, work)).await;
        assert_refused(&result, key, "try_with_lock");
        let key = support::key("standby/with_lock_for");
        let result = bounded(
            "with_lock_for",
            pglock::with_lock_for(&pool, key, TIMED_WAIT, work),
        )
        .await;
        assert_refused(&result, key, "with_lock_for");

        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "the work ran without a lock"
        );
        assert_pool_holds_nothing(&pool, &standby).await;
        pool.close().await;
    });
}

// ---------------------------------------------------------------------------------------
// pglock::xact

/// Each `pglock::xact` acquisition.
#[derive(Debug, Clone, Copy)]
enum XactAcquisition {
    Lock,
    LockShared,
    TryLock,
    TryLockShared,
    TryLockFor,
    TryLockSharedFor,
}

const EVERY_XACT_ACQUISITION: [XactAcquisition; 6] = [
    XactAcquisition::Lock,
    XactAcquisition::LockShared,
    XactAcquisition::TryLock,
    XactAcquisition::TryLockShared,
    XactAcquisition::TryLockFor,
    XactAcquisition::TryLockSharedFor,
];

async fn xact_attempt(
    tx: &mut Transaction<'_, Postgres>,
    key: LockKey,
    how: XactAcquisition,
) -> pglock::Result<String> {
    use XactAcquisition::*;
    Ok(match how {
        Lock => format!("{:?}", xact::lock(tx, key).await?),
        LockShared => format!("{:?}", xact::lock_shared(tx, key).await?),
        TryLock => format!("{}", xact::try_lock(tx, key).await?),
        TryLockShared => format!("{}", xact::try_lock_shared(tx, key).await?),
        TryLockFor => format!("{}", xact::try_lock_for(tx, key, TIMED_WAIT).await?),
        TryLockSharedFor => format!("{}", xact::try_lock_shared_for(tx, key, TIMED_WAIT).await?),
    })
}

/// `SELECT 1` in the transaction, and its `lock_timeout` and `statement_timeout`.
async fn usable_with_settings(tx: &mut Transaction<'_, Postgres>) -> (String, String) {
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut **tx)
        .await
        .expect("SELECT 1: the transaction is usable");
    assert_eq!(one, 1);
    (
        support::show(tx, "lock_timeout").await,
        support::show(tx, "statement_timeout").await,
    )
}

#[test]
fn every_xact_acquisition_on_a_standby_is_refused_and_the_transaction_stays_usable() {
    let standby = shared().standby.url();
    rt::run(async move {
        let pool = support::pool_at(&standby, 2).await;
        let mut tx = pool.begin().await.expect("begin on the standby");
        let pid = support::backend_pid(&mut tx).await;
        // A statement_timeout a timed wait would lift for itself, to see it put back.
        sqlx::query("SET LOCAL statement_timeout = '1s'")
            .execute(&mut *tx)
            .await
            .expect("SET LOCAL statement_timeout");
        let settings = usable_with_settings(&mut tx).await;
        for how in EVERY_XACT_ACQUISITION {
            for key in [
                support::key(&format!("standby/xact/{how:?}")),
                support::pair_key(&format!("standby/xact/{how:?}")),
            ] {
                let what = format!("xact {how:?} on {key}");
                let result = bounded(&what, xact_attempt(&mut tx, key, how)).await;
                assert_refused(&result, key, &what);
                assert_eq!(
                    usable_with_settings(&mut tx).await,
                    settings,
                    "{what}: the transaction's settings"
                );
                assert_nothing_taken(&standby, key, &what).await;
                assert_eq!(
                    support::advisory_locks_of_pid_at(&standby, pid).await,
                    0,
                    "{what}: the transaction's session holds an advisory lock"
                );
            }
        }
        tx.commit().await.expect("commit after the refusals");
        assert_pool_holds_nothing(&pool, &standby).await;
        pool.close().await;
    });
}

#[test]
fn a_blocking_xact_lock_on_a_standby_is_refused_at_once_even_while_a_session_there_holds_the_key() {
    let standby = shared().standby.url();
    rt::run(async move {
        let key = support::key("standby/xact_blocking_behind_holder");
        // A raw holder on the standby itself: an acquisition that reached the server
        // would wait behind it.
        let mut holder = support::connect_at(&standby).await;
        assert!(support::try_lock_on(&mut holder, key).await);
        let holder_pid = support::backend_pid(&mut holder).await;
        let pool = support::pool_at(&standby, 2).await;
        let mut tx = pool.begin().await.expect("begin on the standby");
        let pid = support::backend_pid(&mut tx).await;
        let settings = usable_with_settings(&mut tx).await;
        for how in [XactAcquisition::Lock, XactAcquisition::LockShared] {
            let what = format!("xact {how:?} behind a holder");
            let start = Instant::now();
            let result = bounded_by(AT_ONCE, &what, xact_attempt(&mut tx, key, how)).await;
            assert_refused(&result, key, &what);
            eprintln!("standby: {what} refused in {:?}", start.elapsed());
        }
        let what = "xact try_lock_for(10 s) behind a holder";
        let start = Instant::now();
        let result = bounded_by(AT_ONCE, what, xact::try_lock_for(&mut tx, key, LONG_WAIT)).await;
        assert_refused(&result, key, what);
        eprintln!("standby: {what} refused in {:?}", start.elapsed());
        let what = "xact try_lock_shared_for(10 s) behind a holder";
        let result = bounded_by(
            AT_ONCE,
            what,
            xact::try_lock_shared_for(&mut tx, key, LONG_WAIT),
        )
        .await;
        assert_refused(&result, key, what);
        assert_eq!(support::advisory_locks_of_pid_at(&standby, pid).await, 0);
        assert_eq!(
            support::advisory_locks_on_key_at(&standby, key).await,
            vec![(holder_pid, "ExclusiveLock".to_owned(), true)],
            "only the raw holder, and no waiter, on the standby"
        );
        assert_eq!(usable_with_settings(&mut tx).await, settings);
        tx.rollback().await.expect("rollback");
        assert!(support::unlock_on(&mut holder, key).await);
        let _ = holder.close().await;
        pool.close().await;
    });
}

#[test]
fn the_standby_refusal_names_the_standby_and_says_to_point_the_url_at_the_primary() {
    let standby = shared().standby.url();
    rt::run(async move {
        let pool = support::pool_at(&standby, 1).await;
        let key = support::key("standby/message");
        let mut tx = pool.begin().await.expect("begin on the standby");
        let err = bounded("xact try_lock", xact::try_lock(&mut tx, key))
            .await
            .expect_err("refused on a standby");
        assert_refused(&Err::<(), _>(err), key, "xact try_lock");
        let message = Error::StandbyServer { key }.to_string();
        for needed in [
            "hot standby",
            "in recovery",
            "not taken",
            "point the database URL at the primary",
            &key.to_string(),
        ] {
            assert!(message.contains(needed), "{needed:?} is not in: {message}");
        }
        tx.rollback().await.expect("rollback");
        pool.close().await;
    });
}

// ---------------------------------------------------------------------------------------
// The CLI

#[cfg(feature = "cli")]
#[test]
fn pglock_run_against_a_standby_exits_2_naming_the_standby_and_never_runs_the_command() {
    use std::process::{Command, Stdio};

    let standby = shared().standby.url();
    rt::run(async move {
        let key = support::key("standby/cli");
        let scratch = support::scratch_dir("pglock-standby-cli");
        let (marker, stdout, stderr) = (
            scratch.join("ran"),
            scratch.join("stdout"),
            scratch.join("stderr"),
        );
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pglock"))
            .args(["run", "--database-url", &standby, &key.to_string(), "--"])
            .arg("touch")
            .arg(&marker)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("create the stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("create the stderr file"))
            .spawn()
            .expect("start pglock");
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll pglock") {
                break status;
            }
            if start.elapsed() > CALL_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pglock run against the standby did not exit within {CALL_LIMIT:?}; \
                     stderr: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            rt::sleep(Duration::from_millis(20)).await;
        };
        let took = start.elapsed();
        let err = std::fs::read_to_string(&stderr).unwrap_or_default();
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        let ran = marker.exists();
        let _ = std::fs::remove_dir_all(&scratch);
        eprintln!("standby: pglock run exited {status} in {took:?}: {err}");
        assert_eq!(status.code(), Some(2), "stdout: {out}\nstderr: {err}");
        assert!(!ran, "the command ran although no lock was taken");
        assert!(err.contains("hot standby"), "stderr: {err}");
        assert!(
            err.contains("point the database URL at the primary"),
            "stderr: {err}"
        );
        assert_nothing_taken(&standby, key, "pglock run").await;
    });
}

// ---------------------------------------------------------------------------------------
// Promotion

#[test]
fn after_promotion_new_locks_on_the_former_standby_work_and_close_releases_them() {
    // A pair of its own: promotion ends the standby for good.
    let (pair, _, standby_took) = build_pair();
    eprintln!("standby: promotion pair built in {standby_took:?}");
    let pair = std::sync::Arc::new(pair);
    rt::run(async move {
        let url = pair.standby.url();
        let key = support::key("standby/promotion");

        // While it is a standby, locks are refused there.
        let pool = support::pool_at(&url, 2).await;
        let mut tx = pool.begin().await.expect("begin on the standby");
        let result = bounded("xact try_lock", xact::try_lock(&mut tx, key)).await;
        assert_refused(&result, key, "xact try_lock before promotion");
        tx.rollback().await.expect("rollback");
        pool.close().await;

        let promoting = std::sync::Arc::clone(&pair);
        let took = support::off_thread("promotion", Duration::from_secs(90), move || {
            promoting.standby.promote()
        })
        .await;
        eprintln!("standby: promoted (out of recovery) in {took:?}");
        assert!(
            !in_recovery(&url).await,
            "the promoted server is out of recovery"
        );

        // A new pool on the promoted server: locks work, and are real ones.
        let pool = support::pool_at(&url, 4).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.expect("new");
        assert!(
            bounded("try_lock", lock.try_lock())
                .await
                .expect("try_lock after promotion")
        );
        let holders = support::holders_with_mode_at(&url, key).await;
        assert_eq!(holders.len(), 1, "one holder in pg_locks: {holders:?}");
        assert_eq!(holders[0].1, "ExclusiveLock");
        let mut other = support::connect_at(&url).await;
        assert!(
            !support::try_lock_on(&mut other, key).await,
            "another session on the promoted server is excluded"
        );
        bounded("close", lock.close()).await.expect("close");
        assert!(
            support::holders_with_mode_at(&url, key).await.is_empty(),
            "close released the key"
        );
        assert!(
            support::try_lock_on(&mut other, key).await,
            "free after close"
        );
        assert!(support::unlock_on(&mut other, key).await);

        // Transaction-scoped locks work there too.
        let mut tx = pool.begin().await.expect("begin");
        assert!(
            bounded("xact try_lock", xact::try_lock(&mut tx, key))
                .await
                .expect("xact try_lock after promotion")
        );
        assert!(
            !support::try_lock_on(&mut other, key).await,
            "held by the transaction"
        );
        tx.commit().await.expect("commit");
        assert!(
            support::try_lock_on(&mut other, key).await,
            "free after commit"
        );
        assert!(support::unlock_on(&mut other, key).await);
        let _ = other.close().await;
        assert_pool_holds_nothing(&pool, &url).await;
        pool.close().await;
    });
}

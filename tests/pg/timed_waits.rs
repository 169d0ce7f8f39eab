//! Timed waits: `try_lock_for` and `try_lock_shared_for`, on `AdvisoryLock` itself and
//! through `Box<dyn DistributedLock>`. They must give up on time (the server keeps the
//! bound), succeed soon after a release inside the window, survive a short session
//! `statement_timeout`, leave the session's own timeouts as they were, and cost one
//! statement per attempt (plus one race check after a time-out). The bounds every
//! `DistributedLock` keeps are in `tests/conformance/suite.rs`.

use crate::support;

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, DistributedLock, LockKey, LockMode};
use sqlx::{Connection, PgConnection, PgPool};
use support::WAIT;
use support::cluster::PrivateCluster;
use support::only_holder;
use support::rt;

/// How late past its bound a timed wait that gives up may return.
const GIVE_UP_SLACK: Duration = Duration::from_millis(250);
/// How soon after the holder's release a waiting timed call must return `Ok(true)`.
const GRANT_SLACK: Duration = Duration::from_millis(250);
/// Which API a timed attempt goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Inherent,
    Boxed,
}

/// A lock reached either through `AdvisoryLock`'s own methods or a `Box<dyn DistributedLock>`.
#[allow(clippy::large_enum_variant)] // a handful per test
enum Subject {
    Inherent(AdvisoryLock),
    Boxed(Box<dyn DistributedLock>),
}

impl Subject {
    async fn new(pool: &PgPool, key: LockKey, via: Via) -> Subject {
        let lock = AdvisoryLock::new(pool, key)
            .await
            .expect("AdvisoryLock::new");
        match via {
            Via::Inherent => Subject::Inherent(lock),
            Via::Boxed => Subject::Boxed(Box::new(lock)),
        }
    }

    async fn try_for(&mut self, mode: LockMode, wait: Duration) -> pglock::Result<bool> {
        match (self, mode) {
            (Subject::Inherent(lock), LockMode::Exclusive) => lock.try_lock_for(wait).await,
            (Subject::Inherent(lock), LockMode::Shared) => lock.try_lock_shared_for(wait).await,
            (Subject::Boxed(lock), LockMode::Exclusive) => lock.try_lock_for(wait).await,
            (Subject::Boxed(lock), LockMode::Shared) => lock.try_lock_shared_for(wait).await,
        }
    }

    /// A timed attempt and how long it took.
    async fn timed(&mut self, mode: LockMode, wait: Duration) -> (pglock::Result<bool>, Duration) {
        let start = Instant::now();
        let result = self.try_for(mode, wait).await;
        (result, start.elapsed())
    }

    async fn unlock(&mut self, mode: LockMode) {
        let result = match (self, mode) {
            (Subject::Inherent(lock), LockMode::Exclusive) => lock.unlock().await,
            (Subject::Inherent(lock), LockMode::Shared) => lock.unlock_shared().await,
            (Subject::Boxed(lock), LockMode::Exclusive) => lock.unlock().await,
            (Subject::Boxed(lock), LockMode::Shared) => lock.unlock_shared().await,
        };
        result.expect("unlock a level the lock holds");
    }

    async fn is_held(&mut self) -> bool {
        match self {
            Subject::Inherent(lock) => lock.is_held().await,
            Subject::Boxed(lock) => lock.is_held().await,
        }
        .expect("is_held")
    }

    async fn close(mut self) {
        match &mut self {
            Subject::Inherent(lock) => lock.close().await,
            Subject::Boxed(lock) => lock.close().await,
        }
        .expect("close");
    }
}

/// A session outside pglock that holds `key` in `mode`.
async fn held_by_another_session(key: LockKey, mode: LockMode) -> PgConnection {
    let mut conn = support::connect().await;
    let took = match mode {
        LockMode::Exclusive => support::try_lock_on(&mut conn, key).await,
        LockMode::Shared => support::try_lock_shared_on(&mut conn, key).await,
    };
    assert!(took, "the holder session takes the free key {key}");
    conn
}

/// Releases what [`held_by_another_session`] took.
async fn release(conn: &mut PgConnection, key: LockKey, mode: LockMode) {
    let released = match mode {
        LockMode::Exclusive => support::unlock_on(conn, key).await,
        LockMode::Shared => support::unlock_shared_on(conn, key).await,
    };
    assert!(released, "the holder session releases {key}");
}

fn assert_gave_up_in_time(
    what: &str,
    result: pglock::Result<bool>,
    took: Duration,
    wait: Duration,
) {
    assert!(
        matches!(result, Ok(false)),
        "{what}: a held key must time out with Ok(false), got {result:?}"
    );
    assert!(
        took >= wait,
        "{what}: gave up after {took:?}, before its bound {wait:?}"
    );
    assert!(
        took <= wait + GIVE_UP_SLACK,
        "{what}: gave up after {took:?}, later than {wait:?} + {GIVE_UP_SLACK:?}"
    );
    eprintln!("[{}] {what}: gave up after {took:?}", rt::NAME);
}

/// Every timed attempt in `cases` on a key another session holds exclusively gives up
/// within `[wait, wait + GIVE_UP_SLACK]`, and takes nothing.
async fn gives_up_within_bound(test: &str, cases: Vec<(Via, LockMode, Duration)>) {
    let pool = support::pool_with(4).await;
    let key = support::key(test);
    let mut holder = held_by_another_session(key, LockMode::Exclusive).await;
    let holder_pid = support::backend_pid(&mut holder).await;
    for (via, mode, wait) in cases {
        let mut lock = Subject::new(&pool, key, via).await;
        let (result, took) = lock.timed(mode, wait).await;
        assert_gave_up_in_time(&format!("{via:?} {mode} {wait:?}"), result, took, wait);
        assert!(
            !lock.is_held().await,
            "{via:?} {mode}: a timed-out wait holds nothing"
        );
        assert_eq!(support::holders(key).await, vec![holder_pid]);
        assert!(support::waiters(key).await.is_empty(), "nobody still waits");
        lock.close().await;
    }
    release(&mut holder, key, LockMode::Exclusive).await;
    holder.close().await.unwrap();
}

#[test]
fn timed_waits_of_100ms_give_up_within_the_bound_while_another_session_holds_the_key() {
    let wait = Duration::from_millis(100);
    rt::run(Box::pin(gives_up_within_bound(
        "timed_waits_of_100ms_give_up_within_the_bound",
        vec![
            (Via::Inherent, LockMode::Exclusive, wait),
            (Via::Inherent, LockMode::Shared, wait),
            (Via::Boxed, LockMode::Exclusive, wait),
            (Via::Boxed, LockMode::Shared, wait),
        ],
    )));
}

#[test]
fn timed_waits_of_1s_give_up_within_the_bound_while_another_session_holds_the_key() {
    let wait = Duration::from_secs(1);
    rt::run(Box::pin(gives_up_within_bound(
        "timed_waits_of_1s_give_up_within_the_bound",
        vec![
            (Via::Inherent, LockMode::Exclusive, wait),
            (Via::Boxed, LockMode::Shared, wait),
        ],
    )));
}

/// A 2 s timed wait in `mode` while another session holds the key exclusively; the holder
/// releases ~200 ms in (once `pg_locks` shows the wait). The call must return `Ok(true)`
/// soon after the release.
async fn succeeds_after_release_inside_window(test: &str, via: Via, mode: LockMode) {
    let pool = support::pool_with(4).await;
    let key = support::key(test);
    let mut holder = held_by_another_session(key, LockMode::Exclusive).await;
    let mut lock = Subject::new(&pool, key, via).await;
    let wait = Duration::from_secs(2);
    let start = Instant::now();

    let waiter = async {
        let result = lock.try_for(mode, wait).await;
        (result, Instant::now())
    };
    let releaser = async {
        support::eventually(WAIT, "the timed wait shows in pg_locks", || async {
            !support::waiters(key).await.is_empty()
        })
        .await;
        let release_at = Duration::from_millis(200);
        if let Some(rest) = release_at.checked_sub(start.elapsed()) {
            rt::sleep(rest).await; // scenario timing, not synchronisation
        }
        release(&mut holder, key, LockMode::Exclusive).await;
        Instant::now()
    };
    let ((result, returned), released) = futures_lite::future::zip(waiter, releaser).await;
    assert!(
        matches!(result, Ok(true)),
        "{via:?} {mode}: released inside the window, got {result:?}"
    );
    let after_release = returned.saturating_duration_since(released);
    let total = returned - start;
    eprintln!(
        "[{}] {via:?} {mode}: granted {after_release:?} after the release ({total:?} in all)",
        rt::NAME
    );
    assert!(
        after_release <= GRANT_SLACK,
        "{via:?} {mode}: returned {after_release:?} after the release"
    );
    assert!(
        total < Duration::from_secs(1),
        "{via:?} {mode}: took {total:?} of a 2 s window"
    );
    only_holder(key).await;
    assert!(lock.is_held().await);
    lock.unlock(mode).await;
    assert!(support::holders(key).await.is_empty());
    lock.close().await;
    holder.close().await.unwrap();
}

#[test]
fn timed_exclusive_wait_succeeds_soon_after_the_holder_releases_inside_the_window() {
    rt::run(Box::pin(succeeds_after_release_inside_window(
        "timed_exclusive_wait_succeeds_soon_after_release",
        Via::Inherent,
        LockMode::Exclusive,
    )));
}

#[test]
fn timed_shared_wait_through_dyn_succeeds_soon_after_the_holder_releases_inside_the_window() {
    rt::run(Box::pin(succeeds_after_release_inside_window(
        "timed_shared_wait_through_dyn_succeeds_soon_after_release",
        Via::Boxed,
        LockMode::Shared,
    )));
}

#[test]
fn exclusive_holder_blocks_timed_exclusive_and_timed_shared_waits() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("exclusive_holder_blocks_timed_exclusive_and_timed_shared");
        let mut holder = held_by_another_session(key, LockMode::Exclusive).await;
        let holder_pid = support::backend_pid(&mut holder).await;
        let wait = Duration::from_millis(300);
        for via in [Via::Inherent, Via::Boxed] {
            let mut lock = Subject::new(&pool, key, via).await;
            for mode in [LockMode::Exclusive, LockMode::Shared] {
                let (result, took) = lock.timed(mode, wait).await;
                assert_gave_up_in_time(
                    &format!("exclusive held, {via:?} timed {mode}"),
                    result,
                    took,
                    wait,
                );
            }
            assert_eq!(support::holders(key).await, vec![holder_pid]);
            lock.close().await;
        }
        release(&mut holder, key, LockMode::Exclusive).await;
        holder.close().await.unwrap();
    }));
}

#[test]
fn shared_holder_blocks_timed_exclusive_but_timed_shared_succeeds_at_once() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("shared_holder_blocks_timed_exclusive_but_timed_shared");
        let mut holder = held_by_another_session(key, LockMode::Shared).await;
        let holder_pid = support::backend_pid(&mut holder).await;
        for via in [Via::Inherent, Via::Boxed] {
            let mut lock = Subject::new(&pool, key, via).await;
            let wait = Duration::from_millis(300);
            let (result, took) = lock.timed(LockMode::Exclusive, wait).await;
            assert_gave_up_in_time(
                &format!("shared held, {via:?} timed exclusive"),
                result,
                took,
                wait,
            );

            let (result, took) = lock.timed(LockMode::Shared, Duration::from_secs(2)).await;
            assert!(
                matches!(result, Ok(true)),
                "{via:?}: shared with shared: {result:?}"
            );
            assert!(
                took < GRANT_SLACK,
                "{via:?}: shared with shared took {took:?}"
            );
            eprintln!(
                "[{}] shared held, {via:?} timed shared granted in {took:?}",
                rt::NAME
            );
            let holders = support::holders_with_mode(key).await;
            assert_eq!(holders.len(), 2, "two shared holders: {holders:?}");
            assert!(
                holders.iter().all(|(_, mode)| mode == "ShareLock"),
                "{holders:?}"
            );
            lock.unlock(LockMode::Shared).await;
            assert_eq!(support::holders(key).await, vec![holder_pid]);
            lock.close().await;
        }
        release(&mut holder, key, LockMode::Shared).await;
        holder.close().await.unwrap();
    }));
}

/// A borrowed connection whose session sets `statement_timeout` to 50 ms.
async fn connection_with_statement_timeout_50ms() -> PgConnection {
    let mut conn = support::connect().await;
    sqlx::query("SET statement_timeout = 50")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(support::show(&mut conn, "statement_timeout").await, "50ms");
    conn
}

#[test]
fn session_statement_timeout_of_50ms_does_not_cut_a_one_second_wait_short() {
    rt::run(Box::pin(async {
        let key = support::key("session_statement_timeout_of_50ms_does_not_cut_a_wait");
        let mut holder = held_by_another_session(key, LockMode::Exclusive).await;
        let mut conn = connection_with_statement_timeout_50ms().await;
        let wait = Duration::from_secs(1);
        {
            let mut lock = AdvisoryLock::with_connection(&mut conn, key);
            let start = Instant::now();
            let result = lock.try_lock_for(wait).await;
            assert_gave_up_in_time(
                "statement_timeout 50ms, 1 s wait",
                result,
                start.elapsed(),
                wait,
            );
            assert_eq!(lock.exclusive_levels(), 0);

            // Released 300 ms in: granted, not cut off at 50 ms.
            let start = Instant::now();
            let waiter = async {
                let result = lock.try_lock_for(wait).await;
                (result, start.elapsed())
            };
            let releaser = async {
                support::eventually(WAIT, "the timed wait shows in pg_locks", || async {
                    !support::waiters(key).await.is_empty()
                })
                .await;
                if let Some(rest) = Duration::from_millis(300).checked_sub(start.elapsed()) {
                    rt::sleep(rest).await; // scenario timing, not synchronisation
                }
                release(&mut holder, key, LockMode::Exclusive).await;
                start.elapsed()
            };
            let ((result, took), released) = futures_lite::future::zip(waiter, releaser).await;
            assert!(matches!(result, Ok(true)), "released at 300 ms: {result:?}");
            assert!(
                took <= released + GRANT_SLACK,
                "granted at {took:?}, released at {released:?}"
            );
            eprintln!(
                "[{}] statement_timeout 50ms: released at {released:?}, granted at {took:?}",
                rt::NAME
            );
            assert_eq!(lock.exclusive_levels(), 1);
            lock.unlock().await.unwrap();
            lock.close().await.unwrap();
        }
        assert_eq!(support::show(&mut conn, "statement_timeout").await, "50ms");
        assert!(support::holders(key).await.is_empty());
        conn.close().await.unwrap();
        holder.close().await.unwrap();
    }));
}

#[test]
fn session_lock_timeout_and_statement_timeout_read_the_same_after_timed_waits() {
    rt::run(Box::pin(async {
        let key = support::key("session_lock_timeout_and_statement_timeout_read_the_same");
        let mut holder = held_by_another_session(key, LockMode::Exclusive).await;
        let mut conn = support::connect().await;
        for (lock_timeout, statement_timeout) in [("7s", "50ms"), ("7s", "0"), ("1min", "5min")] {
            for (name, value) in [
                ("lock_timeout", lock_timeout),
                ("statement_timeout", statement_timeout),
            ] {
                sqlx::query("SELECT set_config($1, $2, false)")
                    .bind(name)
                    .bind(value)
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            let before = (
                support::show(&mut conn, "lock_timeout").await,
                support::show(&mut conn, "statement_timeout").await,
            );
            assert_eq!(
                before,
                (lock_timeout.to_owned(), statement_timeout.to_owned())
            );

            // A time-out.
            {
                let mut lock = AdvisoryLock::with_connection(&mut conn, key);
                let wait = Duration::from_millis(200);
                let start = Instant::now();
                let result = lock.try_lock_for(wait).await;
                assert_gave_up_in_time(
                    &format!("lock_timeout {lock_timeout}, statement_timeout {statement_timeout}"),
                    result,
                    start.elapsed(),
                    wait,
                );
                let result = lock.try_lock_shared_for(wait).await;
                assert!(matches!(result, Ok(false)), "{result:?}");
                lock.close().await.unwrap();
            }
            let after = (
                support::show(&mut conn, "lock_timeout").await,
                support::show(&mut conn, "statement_timeout").await,
            );
            assert_eq!(after, before, "after a time-out");

            // A success (the holder steps aside, then takes the key back).
            release(&mut holder, key, LockMode::Exclusive).await;
            {
                let mut lock = AdvisoryLock::with_connection(&mut conn, key);
                assert!(lock.try_lock_for(Duration::from_millis(200)).await.unwrap());
                assert!(
                    lock.try_lock_shared_for(Duration::from_secs(2))
                        .await
                        .unwrap()
                );
                lock.unlock().await.unwrap();
                lock.unlock_shared().await.unwrap();
                lock.close().await.unwrap();
            }
            let after = (
                support::show(&mut conn, "lock_timeout").await,
                support::show(&mut conn, "statement_timeout").await,
            );
            assert_eq!(after, before, "after a success");
            assert!(support::try_lock_on(&mut holder, key).await);
        }
        release(&mut holder, key, LockMode::Exclusive).await;
        conn.close().await.unwrap();
        holder.close().await.unwrap();
    }));
}

#[test]
fn after_a_timeout_the_lock_holds_no_level_and_its_next_call_works() {
    rt::run(Box::pin(async {
        let pool = support::pool_with(4).await;
        let key = support::key("after_a_timeout_the_lock_holds_no_level");
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        // Learn the lock's backend pid.
        assert!(lock.try_lock().await.unwrap());
        let lock_pid = only_holder(key).await;
        lock.unlock().await.unwrap();

        let mut holder = held_by_another_session(key, LockMode::Exclusive).await;
        let holder_pid = support::backend_pid(&mut holder).await;
        for mode in [LockMode::Exclusive, LockMode::Shared] {
            let result = match mode {
                LockMode::Exclusive => lock.try_lock_for(Duration::from_millis(100)).await,
                LockMode::Shared => lock.try_lock_shared_for(Duration::from_millis(100)).await,
            };
            assert!(matches!(result, Ok(false)), "{mode}: {result:?}");
            assert_eq!((lock.exclusive_levels(), lock.shared_levels()), (0, 0));
            assert_eq!(
                support::advisory_locks_of(lock_pid).await,
                0,
                "{mode}: after a time-out the lock's session holds and awaits nothing"
            );
            assert_eq!(support::holders(key).await, vec![holder_pid]);
            assert!(support::waiters(key).await.is_empty());
            assert!(!lock.is_held().await.unwrap(), "next call works: is_held");
            assert!(!lock.try_lock().await.unwrap(), "next call works: try_lock");
        }
        release(&mut holder, key, LockMode::Exclusive).await;
        assert!(lock.try_lock_for(Duration::from_secs(1)).await.unwrap());
        assert_eq!(
            support::holders(key).await,
            vec![lock_pid],
            "same session as before"
        );
        lock.unlock().await.unwrap();
        lock.close().await.unwrap();
        holder.close().await.unwrap();
    }));
}

/// Statement counts of one role, from `pg_stat_statements`, by what the statement does.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counted {
    /// Timed waits (`pg_advisory_lock*` with the `lock_timeout` set_config).
    timed: i64,
    /// Look-ups in `pg_locks` (the race check after a time-out).
    pg_locks: i64,
    /// Every statement of the role.
    total: i64,
}

async fn pg_stat_statements_of(url: &str, role: &str) -> Counted {
    let mut admin = support::connect_at(url).await;
    // pg_stat_statements normalises constants ('lock_timeout' becomes $n), so the timed
    // statement is recognised by its functions rather than by the setting's name.
    let (timed, pg_locks, total): (i64, i64, i64) = sqlx::query_as(
        "SELECT \
           coalesce(sum(calls) FILTER (WHERE query LIKE '%pg_advisory%' \
                                         AND query LIKE '%set_config%'), 0)::int8, \
           coalesce(sum(calls) FILTER (WHERE query LIKE '%pg_locks%'), 0)::int8, \
           coalesce(sum(calls), 0)::int8 \
         FROM pg_stat_statements WHERE userid = $1::regrole",
    )
    .bind(role)
    .fetch_one(&mut admin)
    .await
    .expect("read pg_stat_statements");
    let _ = admin.close().await;
    Counted {
        timed,
        pg_locks,
        total,
    }
}

/// Statements the backend `pid` was sent (`log_statement = 'all'`), from the server log
/// past `offset`: failed ones included, which `pg_stat_statements` does not record.
fn logged_statements(log: &std::path::Path, offset: u64, pid: i32) -> Vec<String> {
    let mut file = std::fs::File::open(log).expect("open the server log");
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    let prefix = format!("{pid} LOG:  ");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter(|rest| rest.starts_with("execute ") || rest.starts_with("statement: "))
        .map(str::to_owned)
        .collect()
}

fn log_len(log: &std::path::Path) -> u64 {
    std::fs::metadata(log).expect("the server log").len()
}

/// A lock holding nothing: one statement per timed attempt, and one `pg_locks` race
/// check after each time-out; nothing else. Counted in the server's statement log for
/// the lock's backend (every statement sent, failed ones included).
#[test]
fn a_timed_attempt_by_a_lock_holding_nothing_is_one_statement_plus_one_race_check() {
    rt::run(Box::pin(async {
        let cluster = PrivateCluster::start(&["log_statement = 'all'", "log_line_prefix = '%p '"]);
        let url = cluster.url();
        let log = cluster.log_file();
        let pool = support::pool_at(&url, 2).await;
        let key = support::key("a_timed_attempt_by_a_lock_holding_nothing");
        let mut holder = support::connect_at(&url).await;
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(pglock::LockOptions::new().application_name("pglock-timed"));
        // Warm-up: the session's first statement, and sqlx's preparation.
        assert!(lock.try_lock_for(Duration::from_secs(1)).await.unwrap());
        lock.unlock().await.unwrap();
        assert!(support::try_lock_on(&mut holder, key).await);
        assert!(!lock.try_lock_for(Duration::from_millis(20)).await.unwrap());
        let lock_pid = support::backend_pid_of_application(&url, "pglock-timed").await;

        let offset = log_len(&log);
        for _ in 0..5 {
            assert!(!lock.try_lock_for(Duration::from_millis(20)).await.unwrap());
        }
        let logged = logged_statements(&log, offset, lock_pid);
        let timed = logged
            .iter()
            .filter(|s| s.contains("pg_advisory") && s.contains("lock_timeout"))
            .count();
        let race = logged.iter().filter(|s| s.contains("pg_locks")).count();
        assert_eq!((timed, race, logged.len()), (5, 5, 10), "{logged:#?}");

        // An uncontended success is exactly one statement, the timed one.
        assert!(support::unlock_on(&mut holder, key).await);
        let offset = log_len(&log);
        assert!(lock.try_lock_for(Duration::from_secs(1)).await.unwrap());
        let logged = logged_statements(&log, offset, lock_pid);
        assert_eq!(logged.len(), 1, "one statement: {logged:#?}");
        assert!(logged[0].contains("lock_timeout"), "{logged:#?}");
        lock.close().await.unwrap();
        pool.close().await;
        holder.close().await.unwrap();
    }));
}

/// A lock that holds a level tries before each timed wait (to tell a session found gone
/// from one lost while waiting): a wait the try satisfies is that one statement; one it
/// does not then waits, and after a time-out checks `pg_locks` for a grant that raced
/// it; nothing else. Counted on a private server in two ways: `pg_stat_statements` for
/// the lock's role (it records successful statements only; a timed-out wait fails with
/// 55P03) and the server's statement log for the lock's backend (every statement sent).
#[test]
fn a_timed_attempt_by_a_holder_is_a_try_then_a_wait_and_a_race_check_after_a_timeout() {
    rt::run(Box::pin(async {
        let cluster = PrivateCluster::start(&["log_statement = 'all'", "log_line_prefix = '%p '"]);
        let url = cluster.url();
        let log = cluster.log_file();
        let mut admin = support::connect_at(&url).await;
        for statement in [
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
            "CREATE ROLE pglock_rt LOGIN",
        ] {
            sqlx::query(statement).execute(&mut admin).await.unwrap();
        }
        let role = "pglock_rt";
        let pool = support::pool_at(&url.replacen("postgres@", &format!("{role}@"), 1), 2).await;
        let key = support::key("each_timed_attempt_is_one_statement");
        let mut holder = support::connect_at(&url).await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();

        // Warm-up: the session's one-time set-up (hygiene settings, reading its
        // statement_timeout) and sqlx's statement preparation happen here.
        assert!(support::try_lock_shared_on(&mut holder, key).await);
        assert!(
            lock.try_lock_shared_for(Duration::from_secs(1))
                .await
                .unwrap()
        );
        assert!(!lock.try_lock_for(Duration::from_millis(20)).await.unwrap());
        let lock_pid =
            sqlx::query_scalar::<_, i32>("SELECT pid FROM pg_stat_activity WHERE usename = $1")
                .bind(role)
                .fetch_one(&mut admin)
                .await
                .unwrap();

        // The holder keeps its shared level: timed shared waits are granted at once (and
        // stack), timed exclusive waits time out.
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut admin)
            .await
            .unwrap();
        let offset = log_len(&log);
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let (mut granted, mut timed_out) = (0_i64, 0_i64);
        for i in 0..20 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng.is_multiple_of(2) || i == 0 {
                assert!(
                    lock.try_lock_shared_for(Duration::from_secs(1))
                        .await
                        .unwrap()
                );
                granted += 1;
            } else {
                assert!(!lock.try_lock_for(Duration::from_millis(20)).await.unwrap());
                timed_out += 1;
            }
        }
        assert!(
            granted > 0 && timed_out > 0,
            "{granted} granted, {timed_out} timed out"
        );
        assert_eq!(lock.shared_levels() as i64, granted + 1);
        // The lock holds a level, so each attempt tries first (to tell a session found
        // gone from one lost while waiting): a shared wait is granted by that try; an
        // exclusive one then waits (a timed statement that fails, which
        // pg_stat_statements does not record) and checks for a grant that raced it.
        let expected = Counted {
            timed: 0,
            pg_locks: timed_out,
            total: granted + 2 * timed_out,
        };
        // pg_stat_statements records a statement as it finishes on the server, which may
        // be just after the client has its answer.
        support::eventually(
            Duration::from_secs(2),
            "pg_stat_statements shows the attempts",
            || async { pg_stat_statements_of(&url, role).await.total >= expected.total },
        )
        .await;
        let counted = pg_stat_statements_of(&url, role).await;
        assert_eq!(
            counted, expected,
            "pg_stat_statements after {granted} granted and {timed_out} timed-out attempts"
        );
        let logged = logged_statements(&log, offset, lock_pid);
        let timed_logged = logged
            .iter()
            .filter(|s| s.contains("pg_advisory") && s.contains("lock_timeout"))
            .count() as i64;
        let race_logged = logged.iter().filter(|s| s.contains("pg_locks")).count() as i64;
        assert_eq!(
            (timed_logged, race_logged, logged.len() as i64),
            (timed_out, timed_out, granted + 3 * timed_out),
            "statements sent by the lock's session: {logged:#?}"
        );
        eprintln!(
            "[{}] 20 timed attempts ({granted} granted, {timed_out} timed out): {} statements \
             sent ({timed_logged} timed waits, {race_logged} race checks); \
             pg_stat_statements: {counted:?}",
            rt::NAME,
            logged.len()
        );

        // An uncontended success is exactly one statement (the try).
        assert!(support::unlock_shared_on(&mut holder, key).await);
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut admin)
            .await
            .unwrap();
        let offset = log_len(&log);
        assert!(lock.try_lock_for(Duration::from_secs(1)).await.unwrap());
        let expected = Counted {
            timed: 0,
            pg_locks: 0,
            total: 1,
        };
        support::eventually(
            Duration::from_secs(2),
            "pg_stat_statements shows the attempt",
            || async { pg_stat_statements_of(&url, role).await.total >= 1 },
        )
        .await;
        assert_eq!(pg_stat_statements_of(&url, role).await, expected);
        let logged = logged_statements(&log, offset, lock_pid);
        assert_eq!(logged.len(), 1, "one statement: {logged:#?}");

        lock.close().await.unwrap();
        pool.close().await;
        holder.close().await.unwrap();
        admin.close().await.unwrap();
    }));
}

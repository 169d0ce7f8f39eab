//! An owned session's set-up. The first lock on a pool's session sets it up (the big
//! first statement, `FIRST`), and marks it; a later lock on the same session (the pool
//! hands it out again) starts with the small `FIRST_CONFIGURED` instead, one statement as
//! before. A session whose settings were reset by its owner, or put back by `close`
//! (idle timeouts the pool chose), is set up again before its lock is taken.
//!
//! Statements are counted by the server (`pg_stat_statements`, on a private cluster), and
//! told apart by words its normalised text keeps: `FIRST` reads settings with
//! `coalesce(`, `FIRST_CONFIGURED` checks its mark with `IS DISTINCT FROM`, the restore
//! reads its stash as `::text[]`, and the unlock is `pg_advisory_unlock(`.

use crate::support;

use std::time::Duration;

use pglock::{AdvisoryLock, LockKey};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection};
use support::WAIT;
use support::cluster::PrivateCluster;
use support::rt;
use support::statements::Observer;

const FIRST: &str = "coalesce(";
const FIRST_CONFIGURED: &str = "IS DISTINCT FROM";
const RESTORE: &str = "::text[]";
const UNLOCK: &str = "pg_advisory_unlock(";

/// Calls of the statements whose text contains `word`, from [`Observer::statements`].
fn calls(seen: &[String], word: &str) -> i64 {
    seen.iter()
        .filter(|s| s.contains(word))
        .map(|s| {
            let (n, _) = s.split_once('×').expect("\"<calls>× <text>\"");
            n.parse::<i64>().expect("a count")
        })
        .sum()
}

/// `new` + `try_lock` + `unlock` + `close` on `pool`: a lock's whole life. Returns the
/// server session the lock held `key` on, as `pg_locks` shows it while held.
async fn cycle(url: &str, pool: &PgPool, key: LockKey) -> i32 {
    let mut lock = AdvisoryLock::new(pool, key).await.unwrap();
    assert!(lock.try_lock().await.unwrap(), "the key is free");
    let holders = support::holders_with_mode_at(url, key).await;
    let (pid, mode) = support::only(holders);
    assert_eq!(mode, "ExclusiveLock");
    lock.unlock().await.unwrap();
    assert!(
        support::holders_with_mode_at(url, key).await.is_empty(),
        "unlocked once, free"
    );
    lock.close().await.unwrap();
    pid
}

/// `current_setting(name)` on the pool's one session, from outside pglock.
async fn setting(pool: &PgPool, name: &str) -> String {
    let mut conn = pool.acquire().await.unwrap();
    let value = support::show(&mut conn, name).await;
    drop(conn);
    support::settled(pool, WAIT).await;
    value
}

/// The default options' keepalive probes (idle, interval, count), as a TCP session
/// shows them once set.
const PROBES: [&str; 3] = ["10", "5", "3"];

/// The pool's one session's keepalive probes (idle, interval, count).
async fn probes(pool: &PgPool) -> [String; 3] {
    [
        setting(pool, "tcp_keepalives_idle").await,
        setting(pool, "tcp_keepalives_interval").await,
        setting(pool, "tcp_keepalives_count").await,
    ]
}

fn seconds(setting: &str) -> u64 {
    setting.parse().expect("a keepalive setting in seconds")
}

async fn one_connection_pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(WAIT)
        .connect_with(options)
        .await
        .unwrap()
}

#[test]
fn a_pooled_session_is_set_up_by_its_first_lock_and_the_next_lock_sends_one_small_statement() {
    let cluster = PrivateCluster::start(&[]);
    let url = cluster.url();
    rt::run(async move {
        let mut observer = Observer::connect(&url).await;
        let pool = one_connection_pool(observer.options()).await;
        let key = support::key("setup/set_up_once");

        observer.reset().await;
        let pid = cycle(&url, &pool, key).await;
        let (total, seen) = observer.statements().await;
        assert_eq!(
            (calls(&seen, FIRST), total),
            (1, 2),
            "set up, then unlock: {seen:?}"
        );
        assert_eq!(probes(&pool).await, PROBES, "keepalive probes on");

        observer.reset().await;
        assert_eq!(cycle(&url, &pool, key).await, pid, "the same session again");
        let (total, seen) = observer.statements().await;
        assert_eq!(
            (calls(&seen, FIRST_CONFIGURED), calls(&seen, UNLOCK), total),
            (1, 1, 2),
            "the small first statement, then unlock: {seen:?}"
        );

        // A shared first acquisition takes the shared level.
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(lock.try_lock_shared().await.unwrap());
        let holders = support::holders_with_mode_at(&url, key).await;
        assert_eq!(holders, vec![(pid, "ShareLock".to_owned())]);
        lock.close().await.unwrap();
        assert!(support::holders_with_mode_at(&url, key).await.is_empty());
        pool.close().await;
        observer.close().await;
    });
}

#[test]
fn a_session_whose_settings_its_owner_reset_is_set_up_again_before_its_lock_is_taken() {
    let cluster = PrivateCluster::start(&[]);
    let url = cluster.url();
    rt::run(async move {
        let mut observer = Observer::connect(&url).await;
        let pool = one_connection_pool(observer.options()).await;
        let key = support::key("setup/reset_all");
        let pid = cycle(&url, &pool, key).await;

        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("RESET ALL").execute(&mut *conn).await.unwrap();
        let idle = support::show(&mut conn, "tcp_keepalives_idle").await;
        assert!(seconds(&idle) > 10, "the kernel's idle time: {idle}");
        drop(conn);
        support::settled(&pool, WAIT).await;

        observer.reset().await;
        // The key is taken once, by FIRST: `cycle` unlocks once and finds it free.
        assert_eq!(cycle(&url, &pool, key).await, pid);
        let (total, seen) = observer.statements().await;
        assert_eq!(
            (calls(&seen, FIRST_CONFIGURED), calls(&seen, FIRST), total),
            (1, 1, 3),
            "the small statement finds no mark and tries nothing; FIRST sets up and \
             tries: {seen:?}"
        );
        assert_eq!(probes(&pool).await, PROBES, "probes on again");
        pool.close().await;
        observer.close().await;
    });
}

/// `close` puts back the idle timeouts the pool chose and takes the mark off, so the next
/// lock turns them off again: its lock outlives an idle `idle_session_timeout`.
#[test]
fn a_session_whose_idle_timeout_close_put_back_has_it_turned_off_again_by_the_next_lock() {
    let cluster = PrivateCluster::start(&[]);
    let url = cluster.url();
    rt::run(async move {
        let mut observer = Observer::connect(&url).await;
        let idle = Duration::from_secs(2);
        let options = observer.options().options([("idle_session_timeout", "2s")]);
        let pool = one_connection_pool(options).await;
        let key = support::key("setup/idle_timeout");
        let pid = cycle(&url, &pool, key).await;
        assert_eq!(
            setting(&pool, "idle_session_timeout").await,
            "2s",
            "put back"
        );

        observer.reset().await;
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(lock.try_lock().await.unwrap());
        let (total, seen) = observer.statements().await;
        assert_eq!(
            (calls(&seen, FIRST_CONFIGURED), calls(&seen, FIRST), total),
            (1, 1, 2),
            "no mark after the restore: set up again: {seen:?}"
        );
        rt::sleep(idle + Duration::from_secs(1)).await;
        assert_eq!(
            support::holders_with_mode_at(&url, key).await,
            vec![(pid, "ExclusiveLock".to_owned())],
            "held past the pool's idle_session_timeout"
        );
        observer.reset().await;
        lock.unlock().await.unwrap();
        lock.close().await.unwrap();
        let (_, seen) = observer.statements().await;
        assert_eq!(calls(&seen, RESTORE), 1, "put back again: {seen:?}");
        assert_eq!(setting(&pool, "idle_session_timeout").await, "2s");
        pool.close().await;
        observer.close().await;
    });
}

/// A connection that ran statements of its owner's before it was given to a lock (sqlx
/// has statements cached on it) may or may not be set up: the lock asks with the small
/// statement, then sets it up.
#[test]
fn an_owned_connection_that_ran_statements_before_is_set_up_once() {
    let cluster = PrivateCluster::start(&[]);
    let url = cluster.url();
    rt::run(async move {
        let mut observer = Observer::connect(&url).await;
        let key = support::key("setup/owned_connection");
        let mut conn: PgConnection = observer.options().connect().await.unwrap();
        let pid = support::backend_pid(&mut conn).await; // a statement sqlx caches
        observer.reset().await;
        let mut lock = AdvisoryLock::with_connection(conn, key);
        assert!(lock.try_lock().await.unwrap());
        assert_eq!(
            support::holders_with_mode_at(&url, key).await,
            vec![(pid, "ExclusiveLock".to_owned())]
        );
        assert!(lock.try_lock().await.unwrap(), "stacks");
        lock.unlock().await.unwrap();
        lock.unlock().await.unwrap();
        assert!(support::holders_with_mode_at(&url, key).await.is_empty());
        let (_, seen) = observer.statements().await;
        assert_eq!(
            (calls(&seen, FIRST_CONFIGURED), calls(&seen, FIRST)),
            (1, 1),
            "{seen:?}"
        );
        lock.close().await.unwrap();
        observer.close().await;
    });
}

/// Keepalive probes: over TCP the session shows the kernel's values (2 hours idle) when
/// nothing set them; the lock makes looser ones as tight as its own and leaves tighter
/// ones (the pool's here) as they are.
#[test]
fn keepalive_probes_looser_than_the_locks_are_tightened_and_tighter_ones_left_alone() {
    let cluster = PrivateCluster::start(&[]);
    let url = cluster.url();
    rt::run(async move {
        let observer = Observer::connect(&url).await;
        let options = observer
            .options()
            .options([("tcp_keepalives_idle", "4"), ("tcp_keepalives_count", "2")]);
        let pool = one_connection_pool(options).await;
        let [idle, interval, count] = probes(&pool).await;
        assert_eq!((idle.as_str(), count.as_str()), ("4", "2"), "the pool's");
        assert!(seconds(&interval) > 5, "the kernel's interval: {interval}");
        cycle(&url, &pool, support::key("setup/keepalives")).await;
        assert_eq!(probes(&pool).await, ["4", "5", "2"]);
        pool.close().await;
        observer.close().await;
    });
}

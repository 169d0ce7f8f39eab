//! `LockClient` (issue 14): many locks over a few sessions, proven from outside.
//!
//! Every claim is checked where it can be seen from another session: `pg_locks` (which
//! backends hold or wait for a key, how many distinct backends hold thousands of keys),
//! `pg_stat_statements` on a private cluster (how many statements an all-or-nothing set
//! costs), `pg_terminate_backend` on one lane's backend, and a hot standby.
//!
//! - Locks of one client decide conflicts among themselves as separate sessions would;
//!   the server sees one holder for all of them.
//! - 2,000 locks on distinct keys ride on at most `max_sessions` backends and all go back.
//! - `try_lock_all`: all or nothing, in one statement; `release` in one more.
//! - A terminated lane takes only its own keys, reported under the loss rules; the
//!   other lanes keep theirs, and the lane opens again on demand.
//! - Futures dropped at random moments leave the server matching the locks' record.
//! - Dropped locks and sets are released by the driver, or by the next operation.
//! - Waits run on sessions of their own, never stalling a lane; a granted wait's session
//!   serves as an extra lane until it holds nothing.
//! - `try_lock_all_for` never deadlocks and leaves nothing behind when it times out.
//! - A hot standby is refused, and nothing is taken there.

use crate::support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_lite::future;
use pglock::{ClientLock, ClientOptions, Error, LockClient, LockKey, LockOptions};
use sqlx::{Connection, PgConnection};
use support::XorShift;
use support::assert_lock_lost;
use support::cluster::PrivateCluster;
use support::lanes;
use support::proxy::Proxy;
use support::rt;
use support::statements::Observer;

/// The bound on waits that should simply end.
const LIMIT: Duration = Duration::from_secs(10);

/// How soon something the client gave up must be gone from the server.
const FREED_WITHIN: Duration = Duration::from_secs(2);

/// A call that must answer promptly (a round trip on an idle lane, with scheduling slack
/// on a shared 2-core machine).
const PROMPT: Duration = Duration::from_millis(500);

/// Prints how long a test took, for the report in RELIABILITY.md.
struct Timed(&'static str, Instant);

impl Timed {
    fn start(name: &'static str) -> Timed {
        Timed(name, Instant::now())
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        eprintln!("[{}] {}: {:?}", rt::NAME, self.0, self.1.elapsed());
    }
}

fn assert_not_held<T: std::fmt::Debug>(result: pglock::Result<T>, what: &str) {
    assert!(
        matches!(result, Err(Error::NotHeld { .. })),
        "{what}: expected Err(NotHeld), got {result:?}"
    );
}

/// `future`, failing the test if it takes longer than `limit`.
async fn within<F: std::future::Future>(limit: Duration, what: &str, future: F) -> F::Output {
    rt::timeout(limit, future)
        .await
        .unwrap_or_else(|| panic!("{what}: no answer within {limit:?}"))
}

/// Spawns the client's driver on the test's runtime. Keep the handle for as long as the
/// driver should run: dropping it detaches the task on Tokio and async-std (it ends by
/// itself once the client and its locks are dropped) but cancels it on smol.
#[must_use = "dropping the handle cancels the driver on smol"]
fn spawn_driver(client: &LockClient) -> rt::Task<()> {
    rt::spawn(client.driver())
}

/// The granted rows on `key` as `(pid, exclusive)`.
async fn holders_of(key: LockKey) -> Vec<(i32, bool)> {
    lanes::rows(&[key])
        .await
        .into_iter()
        .filter(|r| r.granted)
        .map(|r| (r.pid, r.exclusive))
        .collect()
}

/// The one backend holding `key` (failing the test unless exactly one does).
async fn the_holder(key: LockKey) -> i32 {
    let pids: BTreeSet<i32> = holders_of(key).await.into_iter().map(|(p, _)| p).collect();
    assert_eq!(pids.len(), 1, "exactly one backend holds {key}: {pids:?}");
    *pids.first().expect("one pid")
}

/// A plain session (outside pglock) holding `key` exclusively, and its backend pid.
async fn plain_holder(key: LockKey) -> (PgConnection, i32) {
    let mut conn = support::connect().await;
    assert!(
        support::try_lock_on(&mut conn, key).await,
        "plain takes {key}"
    );
    let pid = support::backend_pid(&mut conn).await;
    (conn, pid)
}

// ---------------------------------------------------------------------------------------
// Conflicts between a client's own locks.

#[test]
fn two_locks_of_one_client_exclude_each_other_shared_ones_coexist_and_a_queued_writer_blocks_later_readers()
 {
    let _t = Timed::start("local conflicts");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::new(&pool);
        let key = support::key("client/local-conflicts");
        let mut a = client.lock(key);
        let mut b = client.lock(key);

        assert!(a.try_lock().await.unwrap());
        assert!(!b.try_lock().await.unwrap(), "a holds it exclusively");
        assert!(
            !b.try_lock_shared().await.unwrap(),
            "exclusive excludes shared"
        );
        assert!(
            !within(
                LIMIT,
                "b.try_lock_for",
                b.try_lock_for(Duration::from_millis(100))
            )
            .await
            .unwrap(),
            "a timed wait behind a gives up"
        );
        assert_eq!(
            holders_of(key).await.len(),
            1,
            "one server holder: a's lane"
        );
        assert!(a.try_lock().await.unwrap(), "a's own level stacks");
        a.unlock().await.unwrap();
        assert!(!b.try_lock().await.unwrap(), "one level of a's is left");
        a.unlock().await.unwrap();
        assert!(b.try_lock().await.unwrap(), "free once a released both");
        assert!(!a.try_lock().await.unwrap(), "now b holds it");
        b.unlock().await.unwrap();
        assert!(support::free_for_another_session(key).await);

        // Shared: both hold, one server level between them.
        assert!(a.try_lock_shared().await.unwrap());
        assert!(b.try_lock_shared().await.unwrap(), "shared with shared");
        assert_eq!(client.holders(key), 2);
        assert_eq!(
            holders_of(key).await,
            vec![(the_holder(key).await, false)],
            "the server sees one shared holder for both"
        );

        // A queued writer: c waits (locally) behind the readers, and a later reader d
        // queues behind c instead of joining the readers.
        let mut c = client.lock(key);
        let c_task = rt::spawn(async move {
            c.lock().await.unwrap();
            c
        });
        support::eventually(LIMIT, "c queued locally", || async {
            client.waiters(key) == 1
        })
        .await;
        let mut d = client.lock(key);
        assert!(
            !d.try_lock_shared().await.unwrap(),
            "a queued writer makes a later reader's try fail"
        );
        let d_task = rt::spawn(async move {
            d.lock_shared().await.unwrap();
            d
        });
        support::eventually(LIMIT, "d queued behind c", || async {
            client.waiters(key) == 2
        })
        .await;
        assert!(
            lanes::waiter_pids(&[key]).await.is_empty(),
            "local waits queue in the client, not on the server"
        );
        assert_eq!(
            holders_of(key).await.len(),
            1,
            "still one server holder (shared)"
        );
        assert_eq!(client.sessions(), 1, "one lane, no waiting session");

        a.unlock_shared().await.unwrap();
        rt::sleep(Duration::from_millis(50)).await;
        assert_eq!(client.waiters(key), 2, "b still holds shared: c waits");
        b.unlock_shared().await.unwrap();
        let mut c = within(LIMIT, "c granted", c_task).await;
        assert_eq!(
            holders_of(key).await,
            vec![(the_holder(key).await, true)],
            "c holds it exclusively on the server"
        );
        assert_eq!(client.waiters(key), 1, "d waits behind c");
        c.unlock().await.unwrap();
        let mut d = within(LIMIT, "d granted after c", d_task).await;
        assert_eq!(holders_of(key).await.len(), 1);
        assert!(!holders_of(key).await[0].1, "d holds shared");
        d.close().await.unwrap();
        for lock in [&mut a, &mut b, &mut c] {
            lock.close().await.unwrap();
        }
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
    });
}

#[test]
fn locks_sharing_one_servers_answer_all_get_it_even_when_one_of_them_gives_up() {
    let _t = Timed::start("shared answers");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::new(&pool);
        let _driver = spawn_driver(&client);
        let key = support::key("client/shared-answers");
        // Eight shared tries side by side: the first sends the try, the others join it.
        let mut readers: Vec<ClientLock> = (0..8).map(|_| client.lock(key)).collect();
        let tried = within(
            LIMIT,
            "eight shared tries side by side",
            lanes::join_all(readers.iter_mut().map(|r| r.try_lock_shared()).collect()),
        )
        .await;
        assert!(tried.iter().all(|t| matches!(t, Ok(true))), "{tried:?}");
        assert_eq!(client.holders(key), 8);
        assert_eq!(holders_of(key).await.len(), 1, "one server level for all");
        for r in &mut readers {
            r.unlock_shared().await.unwrap();
        }
        support::eventually(FREED_WITHIN, "released", || async {
            support::holders(key).await.is_empty()
        })
        .await;

        // The lock whose try the others joined gives up at once: they still get the answer.
        let (first, rest) = readers.split_at_mut(1);
        let quitter = async {
            let dropped = rt::timeout(Duration::ZERO, first[0].try_lock_shared()).await;
            assert!(dropped.is_none() || matches!(dropped, Some(Ok(true))));
        };
        let joined = lanes::join_all(rest.iter_mut().map(|r| r.try_lock_shared()).collect());
        let ((), tried) = within(
            LIMIT,
            "tries that joined a dropped one",
            future::zip(quitter, joined),
        )
        .await;
        assert!(tried.iter().all(|t| matches!(t, Ok(true))), "{tried:?}");
        for r in readers.iter_mut() {
            r.close().await.unwrap();
        }
        support::eventually(FREED_WITHIN, "released", || async {
            support::holders(key).await.is_empty()
        })
        .await;
    });
}

#[test]
fn lost_futures_of_many_locks_on_one_lane_share_its_check_and_resolve_only_on_a_loss() {
    let _t = Timed::start("shared loss checks");
    rt::run(async {
        let pool = support::pool().await;
        let interval = Duration::from_millis(100);
        let check_timeout = Duration::from_millis(500);
        let client = LockClient::with_options(
            &pool,
            ClientOptions::new().max_sessions(1).lock_options(
                LockOptions::new()
                    .lost_check_interval(interval)
                    .check_timeout(check_timeout),
            ),
        );
        let keys = lanes::keys("client/shared-loss-checks", 4);
        let mut locks: Vec<ClientLock> = keys.iter().map(|k| client.lock(*k)).collect();
        for lock in &mut locks {
            lock.lock().await.unwrap();
        }
        let lane = the_holder(keys[0]).await;
        // Several check intervals and check timeouts: nothing is lost, nothing resolves.
        let watch = 4 * (interval + check_timeout);
        let watched = rt::timeout(
            watch,
            lanes::join_all(locks.iter_mut().map(|l| l.lost()).collect()),
        )
        .await;
        assert!(
            watched.is_none(),
            "lost() resolved without a loss: {watched:?}"
        );
        for lock in &mut locks {
            assert!(lock.is_held().await.unwrap(), "still held");
        }
        assert_eq!(the_holder(keys[3]).await, lane, "on the same session");
        // A real loss: every one of them resolves.
        let started = Instant::now();
        let (lost, ()) = future::zip(
            within(
                LIMIT,
                "every lost() resolves",
                lanes::join_all(locks.iter_mut().map(|l| l.lost()).collect()),
            ),
            async {
                rt::sleep(Duration::from_millis(50)).await;
                support::terminate(lane).await;
            },
        )
        .await;
        for (error, key) in lost.iter().zip(&keys) {
            assert!(
                matches!(error, Error::LockLost { key: k } if k == key),
                "{key}: {error:?}"
            );
        }
        eprintln!(
            "[{}] shared loss checks: 4 lost() quiet for {watch:?}; all resolved {:?} after \
             the lane was terminated",
            rt::NAME,
            started.elapsed()
        );
        for (lock, key) in locks.iter_mut().zip(&keys) {
            assert_lock_lost(lock.close().await, *key, "close");
        }
    });
}

// ---------------------------------------------------------------------------------------
// Thousands of locks on a few sessions.

#[test]
fn two_thousand_locks_on_distinct_keys_ride_on_at_most_four_backends_and_all_go_back() {
    let _t = Timed::start("2,000 locks");
    rt::run(async {
        const N: usize = 2_000;
        let pool = support::pool().await;
        let idle = Duration::from_millis(500);
        let client = LockClient::with_options(
            &pool,
            ClientOptions::new().max_sessions(4).idle_timeout(idle),
        );
        let _driver = spawn_driver(&client);
        let keys = lanes::keys("client/two-thousand", N);
        let mut locks: Vec<ClientLock> = keys.iter().map(|k| client.lock(*k)).collect();

        let started = Instant::now();
        let taken = within(
            Duration::from_secs(60),
            "2,000 tries",
            lanes::join_all(locks.iter_mut().map(|l| l.try_lock()).collect()),
        )
        .await;
        let took = started.elapsed();
        assert!(
            taken.iter().all(|t| matches!(t, Ok(true))),
            "every try took"
        );
        assert!(client.sessions() <= 4, "sessions(): {}", client.sessions());

        let rows = lanes::rows(&keys).await;
        let held: BTreeSet<LockKey> = rows.iter().filter(|r| r.granted).map(|r| r.key).collect();
        let pids: BTreeSet<i32> = rows.iter().map(|r| r.pid).collect();
        assert_eq!(held.len(), N, "every key held on the server");
        assert!(rows.iter().all(|r| r.granted && r.exclusive));
        assert!(
            (1..=4).contains(&pids.len()),
            "held by {} backends: {pids:?}",
            pids.len()
        );
        // Sequentially, as one task would: each try is a round trip of its own.
        let more = lanes::keys("client/two-thousand-more", 200);
        let mut sequential: Vec<ClientLock> = more.iter().map(|k| client.lock(*k)).collect();
        let started_seq = Instant::now();
        for lock in &mut sequential {
            assert!(lock.try_lock().await.unwrap());
        }
        let took_seq = started_seq.elapsed();
        drop(sequential); // released by the driver

        let started_close = Instant::now();
        let closed = within(
            Duration::from_secs(60),
            "2,000 closes",
            lanes::join_all(locks.iter_mut().map(|l| l.close()).collect()),
        )
        .await;
        let took_close = started_close.elapsed();
        assert!(closed.iter().all(Result::is_ok), "every close");
        let mut all = keys.clone();
        all.extend(&more);
        support::eventually(FREED_WITHIN, "nothing held once all are closed", || async {
            lanes::untouched(&all).await
        })
        .await;
        let back = Instant::now();
        support::eventually(
            idle + FREED_WITHIN,
            "idle lanes go back to the pool",
            || async { client.sessions() == 0 },
        )
        .await;
        let back_after = back.elapsed();
        support::settled(&pool, LIMIT).await;
        for (pid, n) in support::advisory_locks_of_idle(&pool).await {
            assert_eq!(n, 0, "pool connection {pid} holds nothing");
        }
        eprintln!(
            "[{}] {N} locks: taken side by side in {took:?} on {} backends ({pids:?}); 200 more \
             one after another in {took_seq:?}; closed in {took_close:?}; lanes back {back_after:?} \
             after (idle timeout {idle:?})",
            rt::NAME,
            pids.len()
        );
    });
}

// ---------------------------------------------------------------------------------------
// All or nothing.

#[test]
fn try_lock_all_takes_none_while_one_key_is_held_elsewhere_and_all_once_free() {
    let _t = Timed::start("try_lock_all");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::new(&pool);
        let keys = lanes::keys("client/try-lock-all", 6);
        let (mut plain, plain_pid) = plain_holder(keys[3]).await;

        let set = within(LIMIT, "try_lock_all", client.try_lock_all(keys.clone()))
            .await
            .unwrap();
        assert!(set.is_none(), "one key is held elsewhere: none taken");
        let rows = lanes::rows(&keys).await;
        assert_eq!(
            rows,
            vec![lanes::Row {
                key: keys[3],
                pid: plain_pid,
                exclusive: true,
                granted: true
            }],
            "only the plain session's key is held"
        );
        assert!(keys.iter().all(|k| client.holders(*k) == 0));
        let shared = client.try_lock_all_shared(keys.clone()).await.unwrap();
        assert!(shared.is_none(), "shared: refused too (exclusive holder)");
        assert_eq!(lanes::rows(&keys).await.len(), 1);

        assert!(support::unlock_on(&mut plain, keys[3]).await);
        let set = within(LIMIT, "try_lock_all", client.try_lock_all(keys.clone()))
            .await
            .unwrap()
            .expect("all free: all taken");
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(set.keys(), sorted);
        assert_eq!(set.len(), keys.len());
        let held = lanes::held(&keys).await;
        assert_eq!(held.len(), keys.len(), "every key held");
        let pids: BTreeSet<i32> = held.values().flatten().copied().collect();
        assert_eq!(pids.len(), 1, "on one lane: {pids:?}");
        assert!(!support::try_lock_on(&mut plain, keys[0]).await);
        let mut other = client.lock(keys[1]);
        assert!(!other.try_lock().await.unwrap(), "the set's key, locally");
        within(LIMIT, "release", set.release()).await.unwrap();
        assert!(keys.iter().all(|k| client.holders(*k) == 0));
        let left = lanes::rows(&keys).await;
        assert!(left.is_empty(), "released: {left:?}");
        assert!(other.try_lock().await.unwrap());
        other.close().await.unwrap();
        let _ = plain.close().await;
    });
}

/// Int-pair keys among `bigint` ones (the other tests' keys are all `bigint`): the
/// statement's per-key choice between the key spaces.
#[test]
fn try_lock_all_of_int_pair_and_bigint_keys_takes_none_while_one_is_held_and_all_once_free() {
    let _t = Timed::start("try_lock_all, both key spaces");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::new(&pool);
        let keys = vec![
            support::key("client/try-lock-all-mixed/0"),
            support::pair_key("client/try-lock-all-mixed/1"),
            support::pair_key("client/try-lock-all-mixed/2"),
        ];
        let (mut plain, plain_pid) = plain_holder(keys[2]).await;
        let set = within(LIMIT, "try_lock_all", client.try_lock_all(keys.clone()))
            .await
            .unwrap();
        assert!(
            set.is_none(),
            "an int-pair key is held elsewhere: none taken"
        );
        let rows = lanes::rows(&keys).await;
        assert_eq!(
            rows.iter().map(|r| (r.key, r.pid)).collect::<Vec<_>>(),
            vec![(keys[2], plain_pid)],
            "only the plain session's key is held"
        );

        assert!(support::unlock_on(&mut plain, keys[2]).await);
        let set = within(
            LIMIT,
            "try_lock_all_shared",
            client.try_lock_all_shared(keys.clone()),
        )
        .await
        .unwrap()
        .expect("all free: all taken");
        let held = lanes::rows(&keys).await;
        assert_eq!(held.len(), keys.len(), "every key held: {held:?}");
        assert!(
            held.iter().all(|r| r.granted && !r.exclusive),
            "shared: {held:?}"
        );
        within(LIMIT, "release", set.release()).await.unwrap();
        assert!(lanes::rows(&keys).await.is_empty(), "released");
        let _ = plain.close().await;
    });
}

#[test]
fn try_lock_all_is_one_statement_release_one_more_and_closing_both_modes_of_a_key_one() {
    let _t = Timed::start("try_lock_all statements");
    let cluster = support::cluster::PrivateCluster::start(&[]);
    let url = cluster.url();
    rt::run(async move {
        let mut observer = Observer::connect(&url).await;
        let pool = observer.pool(8).await;
        let client = LockClient::new(&pool);
        let keys = lanes::keys("client/one-statement", 10);
        // Warm up: the set's lane opens (its first statement sets the session up).
        let warm = client.try_lock_all(keys.clone()).await.unwrap().unwrap();
        warm.release().await.unwrap();

        observer.reset().await;
        let set = client.try_lock_all(keys.clone()).await.unwrap().unwrap();
        let (calls, seen) = observer.statements().await;
        assert_eq!(calls, 1, "try_lock_all of 10 keys: {seen:?}");
        assert!(seen[0].contains("WITH tried AS MATERIALIZED"), "{seen:?}");
        assert_eq!(
            lanes::rows_at(&url, &keys).await.len(),
            keys.len(),
            "every key held"
        );

        observer.reset().await;
        set.release().await.unwrap();
        let (calls, seen) = observer.statements().await;
        assert_eq!(calls, 1, "release of 10 keys: {seen:?}");
        assert!(lanes::rows_at(&url, &keys).await.is_empty(), "released");

        // Refused: still one statement, and nothing left behind.
        let mut plain = support::connect_at(&url).await;
        assert!(support::try_lock_on(&mut plain, keys[7]).await);
        observer.reset().await;
        assert!(client.try_lock_all(keys.clone()).await.unwrap().is_none());
        let (calls, seen) = observer.statements().await;
        assert_eq!(calls, 1, "a refused try_lock_all: {seen:?}");
        assert_eq!(lanes::rows_at(&url, &keys).await.len(), 1);
        let _ = plain.close().await;

        // A lock holding both modes of a key closes in one statement: releases of the two
        // modes commute on one session, so they share a batch.
        let mut both = client.lock(keys[0]);
        assert!(both.try_lock().await.unwrap());
        assert!(both.try_lock_shared().await.unwrap());
        assert_eq!(lanes::rows_at(&url, &keys[..1]).await.len(), 2);
        observer.reset().await;
        both.close().await.unwrap();
        let (calls, seen) = observer.statements().await;
        assert_eq!(calls, 1, "close of a lock in both modes: {seen:?}");
        assert!(
            lanes::rows_at(&url, &keys[..1]).await.is_empty(),
            "released"
        );
        eprintln!(
            "[{}] pg_stat_statements: try_lock_all 1, release 1, close of both modes 1",
            rt::NAME
        );
    });
}

// ---------------------------------------------------------------------------------------
// A lane's session ends.

/// Options for the loss tests: a short liveness interval, so `lost()` answers quickly.
fn quick_loss() -> ClientOptions {
    ClientOptions::new().max_sessions(4).lock_options(
        LockOptions::new()
            .lost_check_interval(Duration::from_millis(100))
            .check_timeout(Duration::from_secs(2)),
    )
}

#[test]
fn a_terminated_lane_loses_only_its_own_keys_reported_under_the_loss_rules_and_opens_again() {
    let _t = Timed::start("terminated lane");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::with_options(&pool, quick_loss());
        // Three keys on lane 0, one on each other lane.
        let doomed = lanes::keys_on_lane("client/terminated-lane", 0, 4, 4);
        let kept: Vec<LockKey> = (1..4)
            .map(|lane| lanes::keys_on_lane("client/terminated-lane", lane, 4, 1)[0])
            .collect();
        // On lane 0: x holds exclusive twice, s1 and s2 share a shared level, b holds both
        // modes; doomed[3] stays free for the new acquisition at the end.
        let mut x = client.lock(doomed[0]);
        x.lock().await.unwrap();
        x.lock().await.unwrap();
        let mut s1 = client.lock(doomed[1]);
        let mut s2 = client.lock(doomed[1]);
        s1.lock_shared().await.unwrap();
        s2.lock_shared().await.unwrap();
        let mut b = client.lock(doomed[2]);
        b.lock_shared().await.unwrap();
        b.lock().await.unwrap();
        let mut others = Vec::new();
        for key in &kept {
            let mut lock = client.lock(*key);
            lock.lock().await.unwrap();
            others.push(lock);
        }
        // The copy of the client's spreading is right: one backend per lane.
        let lane0 = the_holder(doomed[0]).await;
        assert_eq!(the_holder(doomed[1]).await, lane0);
        assert_eq!(the_holder(doomed[2]).await, lane0);
        let mut other_pids = BTreeSet::new();
        for key in &kept {
            other_pids.insert(the_holder(*key).await);
        }
        assert_eq!(other_pids.len(), 3, "three other lanes");
        assert!(!other_pids.contains(&lane0));
        assert_eq!(client.sessions(), 4);

        let killed = Instant::now();
        support::terminate(lane0).await;
        // lost() finds it first (its lane's liveness check).
        let lost = within(LIMIT, "x.lost()", x.lost()).await;
        assert!(
            matches!(lost, Error::LockLost { key } if key == doomed[0]),
            "lost(): {lost:?}"
        );
        let noticed = killed.elapsed();

        // x: two lost exclusive levels.
        assert_lock_lost(x.is_held().await, doomed[0], "x.is_held");
        assert_lock_lost(x.unlock().await, doomed[0], "x: first lost level");
        assert_lock_lost(x.is_held().await, doomed[0], "x: one level unaccounted");
        assert_lock_lost(x.unlock().await, doomed[0], "x: second lost level");
        assert_not_held(x.unlock().await, "x: nothing left");
        assert!(!x.is_held().await.unwrap());
        // s1 and s2 each lost their share of the shared level.
        assert_lock_lost(s1.unlock_shared().await, doomed[1], "s1");
        assert_lock_lost(s2.close().await, doomed[1], "s2.close");
        s2.close().await.unwrap();
        assert!(matches!(s2.is_held().await, Err(Error::Closed)));
        // b lost both modes; close reports it and accounts for both.
        assert_lock_lost(b.is_held().await, doomed[2], "b.is_held");
        assert_lock_lost(b.close().await, doomed[2], "b.close");
        b.close().await.unwrap();

        // The other lanes still hold theirs, on the same backends.
        for (lock, key) in others.iter_mut().zip(&kept) {
            assert!(lock.is_held().await.unwrap(), "{key} still held");
            let pid = the_holder(*key).await;
            assert!(other_pids.contains(&pid), "{key} on its old lane");
        }
        assert!(
            lanes::holder_pids(&doomed).await.is_empty(),
            "lane 0's keys are free"
        );

        // The lane opens again on demand.
        let mut fresh = client.lock(doomed[3]);
        assert!(
            fresh.try_lock().await.unwrap(),
            "a new acquisition on lane 0"
        );
        let new_lane0 = the_holder(doomed[3]).await;
        assert_ne!(new_lane0, lane0, "on a new session");
        assert!(x.try_lock().await.unwrap(), "x works again");
        assert_eq!(the_holder(doomed[0]).await, new_lane0);
        assert!(x.is_held().await.unwrap());
        x.unlock().await.unwrap();
        assert!(s1.try_lock().await.unwrap(), "s1 works again");
        s1.close().await.unwrap();
        fresh.close().await.unwrap();
        x.close().await.unwrap();
        for mut lock in others {
            lock.close().await.unwrap();
        }
        let mut all = doomed.clone();
        all.extend(&kept);
        assert!(lanes::untouched(&all).await);
        eprintln!(
            "[{}] terminated lane: lost() reported {noticed:?} after pg_terminate_backend",
            rt::NAME
        );
    });
}

#[test]
fn a_request_in_flight_when_its_lane_is_lost_gives_back_nothing_of_a_later_locks_level() {
    let _t = Timed::start("request across a lane loss");
    rt::run(async {
        // Answers arrive 25 ms late: a request polled once stays in flight.
        let pool = lanes::delayed_pool(4, Duration::from_millis(25)).await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(1));
        let key = support::key("client/request-across-a-lane-loss");
        let mut x = client.lock(key);
        x.lock().await.unwrap();
        let lane = the_holder(key).await;

        // x asks for the shared level too; the lane's session ends while that is in flight.
        let mut asking = Box::pin(x.try_lock_shared());
        let mut killer = support::connect().await;
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(lane)
            .fetch_one(&mut killer)
            .await
            .unwrap();
        assert!(ended);
        assert!(
            future::poll_once(asking.as_mut()).await.is_none(),
            "the request is in flight"
        );
        // Another call finds the lane gone: x's levels are lost, its request answered.
        within(LIMIT, "check_sessions", client.check_sessions())
            .await
            .unwrap();
        // Another lock takes the key shared, on the lane's new session.
        let mut y = client.lock(key);
        assert!(
            within(LIMIT, "y.try_lock_shared", y.try_lock_shared())
                .await
                .unwrap()
        );
        let new_lane = the_holder(key).await;
        assert_ne!(new_lane, lane);
        // Only now does x's request go: it must not take y's share with it.
        drop(asking);
        assert!(y.is_held().await.unwrap());
        rt::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            holders_of(key).await,
            vec![(new_lane, false)],
            "y's shared level is still held on the server"
        );
        assert_lock_lost(x.close().await, key, "x.close");
        y.unlock_shared().await.unwrap();
        assert!(lanes::untouched(&[key]).await);
        let _ = killer.close().await;
    });
}

#[test]
fn a_try_sent_after_its_lane_died_while_a_level_nobody_holds_is_given_back_is_not_a_loss() {
    let _t = Timed::start("try beside an orphan release");
    rt::run(async {
        // Answers arrive 100 ms late (and the end of a terminated session 100 ms after).
        let delay = Duration::from_millis(100);
        let pool = lanes::delayed_pool(4, delay).await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(1));
        let key = support::key("client/try-beside-an-orphan-release");
        let mut warm = client.lock(support::key("client/try-beside-an-orphan-release/warm"));
        assert!(warm.try_lock().await.unwrap()); // the lane is open
        warm.unlock().await.unwrap();

        // x's try goes out, and x gives up on it: its grant will be nobody's.
        let mut x = client.lock(key);
        let mut x_try = Box::pin(x.try_lock());
        let sent = Instant::now();
        assert!(future::poll_once(x_try.as_mut()).await.is_none());
        drop(x_try);
        // y asks for the shared level: queued behind x's try on the lane.
        let mut y = client.lock(key);
        let mut y_try = Box::pin(y.try_lock_shared());
        assert!(future::poll_once(y_try.as_mut()).await.is_none());
        // The lane's session ends (x's grant already taken there, its answer on the way).
        let lane = the_holder(key).await;
        let mut killer = support::connect().await;
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(lane)
            .fetch_one(&mut killer)
            .await
            .unwrap();
        assert!(ended);
        // x's answer has arrived, the session's end not yet: y's poll lands the grant
        // (nobody wants it: its release is queued) and sends y's try on the dead session.
        rt::sleep((delay + delay / 2).saturating_sub(sent.elapsed())).await;
        assert!(
            sent.elapsed() < 2 * delay,
            "the test fell behind its schedule"
        );
        assert!(future::poll_once(y_try.as_mut()).await.is_none());
        // y held nothing: its try runs again on a new session.
        let tried = within(LIMIT, "y's try", y_try).await;
        assert!(matches!(tried, Ok(true)), "y.try_lock_shared(): {tried:?}");
        let new_lane = the_holder(key).await;
        assert_ne!(new_lane, lane);
        assert_eq!(
            holders_of(key).await,
            vec![(new_lane, false)],
            "only y's level"
        );
        assert!(y.is_held().await.unwrap());
        assert!(!x.is_held().await.unwrap(), "x holds nothing, lost nothing");
        y.close().await.unwrap();
        x.close().await.unwrap();
        assert!(lanes::untouched(&[key]).await);
        let _ = killer.close().await;
    });
}

#[test]
fn the_first_try_on_a_terminated_lane_runs_again_on_a_new_session_and_the_holder_still_learns_its_loss()
 {
    let _t = Timed::start("try on a dead lane");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(1));
        let keys = lanes::keys("client/try-on-dead-lane", 3);
        let mut holder = client.lock(keys[0]);
        holder.lock().await.unwrap();
        let lane = the_holder(keys[0]).await;
        support::terminate(lane).await;

        // Nothing has looked at the lane since: this try is the first statement on it.
        let mut newcomer = client.lock(keys[1]);
        let tried = within(LIMIT, "newcomer.try_lock", newcomer.try_lock()).await;
        assert!(
            matches!(tried, Ok(true)),
            "a lock holding nothing tries again on a new session, as AdvisoryLock does: \
             {tried:?}"
        );
        let pid = the_holder(keys[1]).await;
        assert_ne!(pid, lane);
        // The lock that held a level on the old session still learns of its loss.
        assert_lock_lost(holder.is_held().await, keys[0], "holder.is_held");
        assert_lock_lost(holder.unlock().await, keys[0], "holder.unlock");
        assert!(holder.try_lock().await.unwrap());
        assert_eq!(the_holder(keys[0]).await, pid, "the one lane, reopened");
        holder.close().await.unwrap();
        newcomer.close().await.unwrap();

        // The same for a lock waiting to be tried on the lane, and for a set.
        let mut a = client.lock(keys[2]);
        a.lock().await.unwrap();
        support::terminate(pid).await;
        let set = within(
            LIMIT,
            "try_lock_all",
            client.try_lock_all(keys[..2].to_vec()),
        )
        .await
        .expect("a set tries again on a new session")
        .expect("both keys free");
        set.release().await.unwrap();
        assert_lock_lost(a.close().await, keys[2], "a.close");
        assert!(lanes::untouched(&keys).await);
    });
}

#[test]
fn tries_queued_behind_a_statement_on_a_terminated_lane_run_on_its_next_session() {
    let _t = Timed::start("tries queued on a dead lane");
    rt::run(async {
        // Answers arrive 25 ms late: a try polled once stays in flight, and the tries
        // polled after it queue behind it.
        let pool = lanes::delayed_pool(4, Duration::from_millis(25)).await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(1));
        let keys = lanes::keys("client/tries-queued-on-a-dead-lane", 4);
        let mut opener = client.lock(keys[3]);
        assert!(opener.try_lock().await.unwrap());
        let lane = the_holder(keys[3]).await;
        opener.unlock().await.unwrap();
        support::terminate(lane).await;

        let mut locks: Vec<ClientLock> = keys[..3].iter().map(|k| client.lock(*k)).collect();
        let mut tries: Vec<_> = locks.iter_mut().map(|l| Box::pin(l.try_lock())).collect();
        for attempt in &mut tries {
            assert!(
                future::poll_once(attempt.as_mut()).await.is_none(),
                "the first try is in flight on the dead lane, the others queue behind it"
            );
        }
        for (i, attempt) in tries.into_iter().enumerate() {
            let tried = within(LIMIT, "try_lock", attempt).await;
            assert!(
                matches!(tried, Ok(true)),
                "try {i} runs again on the lane's next session instead of failing: {tried:?}"
            );
        }
        let holders = lanes::holder_pids(&keys[..3]).await;
        assert_eq!(holders.len(), 1, "all on the one lane: {holders:?}");
        assert!(!holders.contains(&lane), "on a new session");
        for lock in &mut locks {
            lock.close().await.unwrap();
        }
        opener.close().await.unwrap();
        assert!(lanes::untouched(&keys).await);
    });
}

/// With a tiny lock table filled up but for a few entries, five tries that share one
/// statement take what fits and fail with `TooManyLocks` for the rest. The statement fails
/// part-way and the locks it took stay taken: the client mends its record from what the
/// lane's session holds (`LANE_HOLDINGS`), so exactly the locks told `Ok(true)` hold
/// their keys on the server, and the others hold nothing and work once there is room.
#[test]
fn a_batch_that_fills_the_lock_table_part_way_grants_exactly_what_the_server_took() {
    let _t = Timed::start("batch on a full lock table");
    rt::run(async {
        let cluster =
            PrivateCluster::start(&["max_locks_per_transaction = 10", "max_connections = 10"]);
        let url = cluster.url();
        // Answers arrive 25 ms late, so that tries polled behind a statement in flight
        // queue up and go out together.
        let pool = lanes::delayed_pool_at(&url, 3, Duration::from_millis(25)).await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(1));
        let keys = lanes::keys("client/batch-on-a-full-lock-table", 6);
        let mut opener = client.lock(keys[5]);
        assert!(opener.try_lock().await.unwrap());

        // Fill the table, then free two entries.
        let mut observer = support::connect_at(&url).await;
        let mut filler = support::connect_at(&url).await;
        let filled = sqlx::query(
            "SELECT pg_advisory_lock(-k) FROM generate_series(1::int8, 1000000::int8) AS k",
        )
        .execute(&mut filler)
        .await;
        assert!(
            matches!(&filled, Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("53200")),
            "the filler fills the table: {filled:?}"
        );
        let freed: (bool, bool) =
            sqlx::query_as("SELECT pg_advisory_unlock(-1::int8), pg_advisory_unlock(-2::int8)")
                .fetch_one(&mut filler)
                .await
                .unwrap();
        assert_eq!(freed, (true, true));

        let mut locks: Vec<ClientLock> = keys[..5].iter().map(|k| client.lock(*k)).collect();
        let mut check = Box::pin(client.check_sessions());
        assert!(
            future::poll_once(check.as_mut()).await.is_none(),
            "in flight"
        );
        let mut tries: Vec<_> = locks.iter_mut().map(|l| Box::pin(l.try_lock())).collect();
        for attempt in &mut tries {
            assert!(
                future::poll_once(attempt.as_mut()).await.is_none(),
                "queued"
            );
        }
        within(LIMIT, "check_sessions", check).await.unwrap();
        let mut granted = BTreeSet::new();
        let mut refused = 0;
        for (i, attempt) in tries.into_iter().enumerate() {
            match within(LIMIT, "try_lock", attempt).await {
                Ok(true) => {
                    granted.insert(keys[i]);
                }
                Err(Error::TooManyLocks { key }) => {
                    assert_eq!(key, keys[i], "the error names the lock's own key");
                    refused += 1;
                }
                other => panic!("try {i} with a nearly full lock table: {other:?}"),
            }
        }
        eprintln!(
            "[{}] {} of 5 tries fitted in the lock table",
            rt::NAME,
            granted.len()
        );
        assert!(refused > 0, "the table had no room for all five");
        assert!(!granted.is_empty(), "two entries were free");
        let on_server: BTreeSet<LockKey> = lanes::rows_on(&mut observer, &keys[..5])
            .await
            .into_iter()
            .filter(|row| row.granted)
            .map(|row| row.key)
            .collect();
        assert_eq!(
            on_server, granted,
            "the server holds exactly what was granted"
        );
        for (i, lock) in locks.iter_mut().enumerate() {
            assert_eq!(lock.is_held().await.unwrap(), granted.contains(&keys[i]));
        }

        // Once there is room, the refused locks take their keys.
        filler.close().await.unwrap();
        let start = Instant::now();
        while !lanes::rows_on(&mut observer, &[LockKey::BigInt(-3)])
            .await
            .is_empty()
        {
            assert!(start.elapsed() < LIMIT, "the filler's locks are not freed");
            rt::sleep(Duration::from_millis(20)).await;
        }
        for lock in &mut locks {
            if !lock.is_held().await.unwrap() {
                assert!(within(LIMIT, "try_lock", lock.try_lock()).await.unwrap());
            }
        }
        for lock in &mut locks {
            lock.close().await.unwrap();
        }
        opener.close().await.unwrap();
        assert!(lanes::rows_on(&mut observer, &keys).await.is_empty());
        observer.close().await.unwrap();
        drop((locks, opener, client));
        within(LIMIT, "pool.close", pool.close()).await;
    });
}

#[test]
fn dropping_the_client_and_its_locks_gives_every_session_back_so_the_pool_closes() {
    let _t = Timed::start("client shutdown");
    rt::run(async {
        let pool = support::pool_with(8).await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(4));
        let keys = lanes::keys("client/shutdown", 32);
        let mut locks: Vec<ClientLock> = keys.iter().map(|k| client.lock(*k)).collect();
        for lock in &mut locks {
            assert!(within(LIMIT, "try_lock", lock.try_lock()).await.unwrap());
        }
        let clone = client.clone();
        assert!(clone.sessions() > 1, "the keys spread over lanes");
        drop((locks, client, clone));
        within(LIMIT, "pool.close", pool.close()).await;
        // The sessions went back to a closed pool, which ends them, and their locks.
        support::eventually(FREED_WITHIN, "the keys are free", || {
            lanes::untouched(&keys)
        })
        .await;
    });
}

// ---------------------------------------------------------------------------------------
// Dropped locks and sets.

#[test]
fn with_the_driver_dropped_locks_and_a_dropped_set_are_free_for_another_session_within_a_second() {
    let _t = Timed::start("driver frees drops");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::new(&pool);
        let _driver = spawn_driver(&client);
        let keys = lanes::keys("client/driver-frees", 8);
        let mut a = client.lock(keys[0]);
        a.lock().await.unwrap();
        a.lock().await.unwrap(); // stacked
        let mut b1 = client.lock(keys[1]);
        let mut b2 = client.lock(keys[1]);
        b1.lock_shared().await.unwrap();
        b2.lock_shared().await.unwrap();
        let mut c = client.lock(keys[2]);
        c.lock_shared().await.unwrap();
        c.lock().await.unwrap(); // both modes
        let set = client
            .try_lock_all(keys[3..].to_vec())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lanes::held(&keys).await.len(), keys.len());

        let dropped = Instant::now();
        drop((a, b1, b2, c, set));
        // No further call through the client: only the driver can send the releases.
        let took = support::eventually(
            Duration::from_secs(1),
            "every dropped key free for another session",
            || async { lanes::holder_pids(&keys).await.is_empty() },
        )
        .await;
        for key in &keys {
            assert!(support::free_for_another_session(*key).await, "{key}");
        }
        eprintln!(
            "[{}] driver: 8 dropped keys free after {took:?} ({:?} since the drop)",
            rt::NAME,
            dropped.elapsed()
        );
    });
}

#[test]
fn without_the_driver_check_sessions_returns_once_a_grant_nobody_wants_is_released() {
    let _t = Timed::start("no driver, unwanted grant");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(1));
        let key = support::key("client/no-driver/unwanted-grant");
        // A try given up while its lane is still opening: it stays queued, and goes out
        // with check_sessions' check in the lane's first statement. Its grant, which
        // nobody wants, queues a release only when that statement's answer lands.
        let mut given_up = client.lock(key);
        let answered = future::poll_once(Box::pin(given_up.try_lock())).await;
        assert!(
            answered.is_none(),
            "the lane is still opening: {answered:?}"
        );
        drop(given_up);
        within(LIMIT, "check_sessions", client.check_sessions())
            .await
            .unwrap();
        assert!(
            holders_of(key).await.is_empty(),
            "released by the time check_sessions returns: {:?}",
            holders_of(key).await
        );
        assert!(support::free_for_another_session(key).await);
    });
}

#[test]
fn without_the_driver_a_dropped_lock_stays_held_until_the_next_operation_through_the_client() {
    let _t = Timed::start("no driver");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(2));
        let on0 = lanes::keys_on_lane("client/no-driver", 0, 2, 3);
        let on1 = lanes::keys_on_lane("client/no-driver", 1, 2, 2);

        // A dropped lock, then a try on the same lane: the release goes out with it.
        let mut a = client.lock(on0[0]);
        a.lock().await.unwrap();
        let lane0 = the_holder(on0[0]).await;
        drop(a);
        rt::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            lanes::holder_pids(&on0[..1]).await,
            BTreeSet::from([lane0]),
            "nothing drives the lanes: the dropped lock's level is still held"
        );
        let mut next = client.lock(on0[1]);
        assert!(next.try_lock().await.unwrap());
        assert_eq!(the_holder(on0[1]).await, lane0, "the same lane");
        support::eventually(FREED_WITHIN, "released with the next operation", || async {
            lanes::holder_pids(&on0[..1]).await.is_empty()
        })
        .await;
        next.close().await.unwrap();

        // A dropped lock and a dropped set, then an operation on the *other* lane: every
        // operation drives every lane.
        let mut b = client.lock(on0[2]);
        b.lock_shared().await.unwrap();
        let set = client
            .try_lock_all([on0[0], on0[1]])
            .await
            .unwrap()
            .unwrap();
        drop((b, set));
        rt::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            lanes::holder_pids(&on0).await,
            BTreeSet::from([lane0]),
            "still held without an operation"
        );
        let mut other = client.lock(on1[0]);
        assert!(other.try_lock().await.unwrap());
        assert_ne!(the_holder(on1[0]).await, lane0, "another lane");
        support::eventually(
            FREED_WITHIN,
            "released with an operation on another lane",
            || async { lanes::holder_pids(&on0).await.is_empty() },
        )
        .await;

        // A dropped lock, then check_sessions(): it drives the lanes too.
        drop(other);
        rt::sleep(Duration::from_millis(100)).await;
        assert!(!lanes::holder_pids(&on1[..1]).await.is_empty());
        client.check_sessions().await.unwrap();
        assert!(
            lanes::holder_pids(&on1[..1]).await.is_empty(),
            "released by the time check_sessions returns"
        );

        // A try given up in flight (or, if it was answered within its first poll, a lock
        // dropped holding it): check_sessions also sends the release its grant queues.
        let mut given_up = client.lock(on1[1]);
        let answered = future::poll_once(Box::pin(given_up.try_lock())).await;
        assert!(matches!(answered, None | Some(Ok(true))), "{answered:?}");
        drop(given_up);
        client.check_sessions().await.unwrap();
        assert!(
            lanes::holder_pids(&on1[1..2]).await.is_empty(),
            "the unwanted grant is released by the time check_sessions returns"
        );
        let mut all = on0.clone();
        all.extend(&on1);
        assert!(lanes::untouched(&all).await);
    });
}

// ---------------------------------------------------------------------------------------
// Waits.

#[test]
fn a_wait_runs_on_a_session_of_its_own_lanes_keep_answering_and_a_granted_wait_serves_as_an_extra_lane()
 {
    let _t = Timed::start("waits");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(2));
        let _driver = spawn_driver(&client);
        let key = support::key("client/waits/held");
        let mut busy = lanes::keys_on_lane("client/waits/busy", 0, 2, 2);
        busy.extend(lanes::keys_on_lane("client/waits/busy", 1, 2, 2));
        let (mut plain, plain_pid) = plain_holder(key).await;
        let mut workers: Vec<ClientLock> = busy.iter().map(|k| client.lock(*k)).collect();
        for w in &mut workers {
            assert!(w.try_lock().await.unwrap());
            w.unlock().await.unwrap();
        }
        let lane_sessions = client.sessions();
        assert_eq!(lane_sessions, 2, "both lanes open");

        // 1. A wait, given up.
        let mut waiter = client.lock(key);
        let mut slowest = Duration::ZERO;
        let checks = async {
            support::eventually(LIMIT, "the wait shows in pg_locks", || async {
                !support::waiters(key).await.is_empty()
            })
            .await;
            assert_eq!(
                client.sessions(),
                lane_sessions + 1,
                "one session for the wait"
            );
            let waiting_pid = support::waiters(key).await[0];
            assert_ne!(waiting_pid, plain_pid);
            // The lanes keep answering while the wait blocks its own session.
            for round in 0..20 {
                for w in &mut workers {
                    let start = Instant::now();
                    assert!(
                        within(PROMPT, "a try on a lane", w.try_lock())
                            .await
                            .unwrap()
                    );
                    within(PROMPT, "an unlock on a lane", w.unlock())
                        .await
                        .unwrap();
                    slowest = slowest.max(start.elapsed());
                }
                assert!(
                    !lanes::holder_pids(&busy).await.contains(&waiting_pid),
                    "round {round}: no lane statement on the waiting session"
                );
            }
            waiting_pid
        };
        let raced = future::or(
            async {
                let waited = waiter.lock().await;
                panic!("the wait ended while the key was held: {waited:?}")
            },
            checks,
        )
        .await;
        let waiting_pid = raced;
        // The wait's future is dropped: its session ends, nothing else.
        let gone =
            support::eventually(FREED_WITHIN, "the dropped wait leaves pg_locks", || async {
                support::waiters(key).await.is_empty()
            })
            .await;
        assert_eq!(
            holders_of(key).await,
            vec![(plain_pid, true)],
            "the holder is unaffected"
        );
        assert_eq!(
            client.sessions(),
            lane_sessions,
            "the waiting session is gone"
        );
        assert!(
            !support::backend_alive(waiting_pid).await,
            "ended, not returned"
        );
        for w in &mut workers {
            assert!(w.try_lock().await.unwrap(), "the lanes are unaffected");
            w.unlock().await.unwrap();
        }

        // 2. A wait, granted: its session keeps the level and serves as an extra lane.
        let waiting = rt::spawn(async move {
            waiter.lock().await.unwrap();
            waiter
        });
        support::eventually(LIMIT, "the second wait shows in pg_locks", || async {
            !support::waiters(key).await.is_empty()
        })
        .await;
        let extra_pid = support::waiters(key).await[0];
        assert!(support::unlock_on(&mut plain, key).await);
        let mut waiter = within(LIMIT, "the wait is granted", waiting).await;
        assert_eq!(
            holders_of(key).await,
            vec![(extra_pid, true)],
            "held by the waiting session"
        );
        assert_eq!(
            client.sessions(),
            lane_sessions + 1,
            "the waiting session stays"
        );
        // Its key's other mode goes to the same session: it is the key's lane now.
        assert!(waiter.try_lock_shared().await.unwrap());
        assert_eq!(
            holders_of(key).await,
            vec![(extra_pid, false), (extra_pid, true)],
            "both modes on the extra lane"
        );
        let mut other = client.lock(key);
        assert!(
            !other.try_lock_shared().await.unwrap(),
            "the waiter holds it exclusively"
        );
        assert!(waiter.is_held().await.unwrap());
        waiter.unlock_shared().await.unwrap();
        assert_eq!(client.sessions(), lane_sessions + 1, "one level left on it");
        waiter.unlock().await.unwrap();
        let back = support::eventually(LIMIT, "the extra lane goes back", || async {
            client.sessions() == lane_sessions
        })
        .await;
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        assert!(
            support::backend_alive(extra_pid).await,
            "back to the pool, not closed"
        );
        assert_eq!(support::advisory_locks_of(extra_pid).await, 0);
        assert!(other.try_lock_shared().await.unwrap());
        other.close().await.unwrap();
        waiter.close().await.unwrap();
        eprintln!(
            "[{}] waits: lane operations during a wait at most {slowest:?}; the dropped wait \
             left pg_locks after {gone:?}; the extra lane went back {back:?} after the unlock",
            rt::NAME
        );
        let _ = plain.close().await;
    });
}

#[test]
fn a_try_for_a_key_another_lock_of_the_client_waits_for_answers_at_once_and_a_timed_one_within_its_bound()
 {
    let _t = Timed::start("tries beside a wait");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::new(&pool);
        let _driver = spawn_driver(&client);
        let key = support::key("client/beside-a-wait");
        let (mut plain, plain_pid) = plain_holder(key).await;
        // A shared wait on a session of its own, behind the plain exclusive holder: the
        // client's other locks may take the shared mode locally, but not on the server.
        let mut waiter = client.lock(key);
        let mut other = client.lock(key);
        let checks = async {
            support::eventually(LIMIT, "the wait shows in pg_locks", || async {
                !support::waiters(key).await.is_empty()
            })
            .await;
            let start = Instant::now();
            let tried = within(
                PROMPT,
                "a shared try beside the wait",
                other.try_lock_shared(),
            );
            assert!(!tried.await.unwrap(), "refused: the key is held elsewhere");
            let tried = start.elapsed();
            let bound = Duration::from_millis(300);
            let start = Instant::now();
            let timed = within(
                bound + PROMPT,
                "a timed shared try beside the wait",
                other.try_lock_shared_for(bound),
            );
            assert!(!timed.await.unwrap(), "refused when its time is up");
            let timed = start.elapsed();
            assert!(timed >= bound, "waited its whole bound: {timed:?}");
            // All-or-nothing sets with the key: the same answers.
            let set = within(
                PROMPT,
                "a shared set beside the wait",
                client.try_lock_all_shared([key]),
            );
            assert!(set.await.unwrap().is_none(), "a shared set is refused");
            let start = Instant::now();
            let set = within(
                bound + PROMPT,
                "a timed shared set beside the wait",
                client.try_lock_all_shared_for([key], bound),
            );
            assert!(
                set.await.unwrap().is_none(),
                "a timed shared set is refused"
            );
            assert!(start.elapsed() >= bound, "the set waited its whole bound");
            assert_eq!(
                holders_of(key).await,
                vec![(plain_pid, true)],
                "only the plain session holds it"
            );
            (tried, timed)
        };
        let (tried, timed) = future::or(
            async {
                let waited = waiter.lock_shared().await;
                panic!("the wait ended while the key was held: {waited:?}")
            },
            checks,
        )
        .await;
        // The dropped wait took nothing; both locks work once the key is free.
        assert!(support::unlock_on(&mut plain, key).await);
        assert!(
            within(LIMIT, "a shared try", other.try_lock_shared())
                .await
                .unwrap()
        );
        assert!(
            within(LIMIT, "a shared wait", waiter.lock_shared())
                .await
                .is_ok()
        );
        assert_eq!(holders_of(key).await.len(), 1, "one server level for both");
        other.close().await.unwrap();
        waiter.close().await.unwrap();
        support::eventually(FREED_WITHIN, "the key is free", || async {
            support::free_for_another_session(key).await
        })
        .await;
        eprintln!(
            "[{}] beside a wait: a try answered in {tried:?}, a 300 ms timed try in {timed:?}",
            rt::NAME
        );
        let _ = plain.close().await;
    });
}

/// Runs `acquisition` (a shared one, of `key`) so that it is granted locally and then
/// loses that level with its lane before its task runs again: another lock's shared level
/// is the client's on the key's lane, a writer queues behind it and the acquisition
/// behind the writer (queued writers block later readers); the writer gives up, which
/// grants the acquisition locally, and the lane's loss is found before it is polled.
async fn granted_locally_then_lost<F: std::future::Future>(
    client: &LockClient,
    key: LockKey,
    acquisition: F,
) -> F::Output {
    let mut b = client.lock(key);
    assert!(b.try_lock_shared().await.unwrap());
    let lane = the_holder(key).await;
    let mut w = client.lock(key);
    let mut writer = Box::pin(w.lock());
    assert!(future::poll_once(&mut writer).await.is_none(), "w queues");
    let mut acquisition = Box::pin(acquisition);
    let polled = future::poll_once(&mut acquisition).await;
    assert!(polled.is_none(), "the acquisition queues behind w");
    drop(writer);
    support::terminate(lane).await;
    let held = within(LIMIT, "b learns its loss", b.is_held()).await;
    assert_lock_lost(held, key, "b learns its loss");
    let outcome = within(LIMIT, "the acquisition runs again", acquisition).await;
    let _ = b.close().await;
    w.close().await.unwrap();
    outcome
}

#[test]
fn a_local_grant_lost_with_its_lane_before_it_is_backed_is_taken_again_and_leaves_nothing_behind() {
    let _t = Timed::start("grant lost before it is backed");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::new(&pool);
        let key = support::key("client/grant-lost-before-backed");
        let mut a = client.lock(key);
        let granted = granted_locally_then_lost(&client, key, a.lock_shared()).await;
        // The lost local grant was never the caller's: the acquisition starts again, and
        // its level is on the server, the only one there.
        assert!(granted.is_ok(), "granted on a new session: {granted:?}");
        let holder = the_holder(key).await;
        assert_eq!(holders_of(key).await, vec![(holder, false)]);
        assert!(within(LIMIT, "a is held", a.is_held()).await.unwrap());
        within(LIMIT, "a's unlock", a.unlock_shared())
            .await
            .unwrap();
        support::eventually(FREED_WITHIN, "nothing held once a lets go", || async {
            holders_of(key).await.is_empty()
        })
        .await;
        assert!(within(LIMIT, "a again", a.try_lock()).await.unwrap());
        a.close().await.unwrap();

        // A set whose member is granted locally and lost likewise: taken again, whole.
        let key = support::key("client/set-member-lost-before-backed");
        let taken = client.try_lock_all_shared_for([key], LIMIT);
        let taken = granted_locally_then_lost(&client, key, taken).await;
        let set = taken.unwrap().expect("the set is taken again");
        let holder = the_holder(key).await;
        assert_eq!(holders_of(key).await, vec![(holder, false)]);
        within(LIMIT, "the set's release", set.release())
            .await
            .unwrap();
        support::eventually(
            FREED_WITHIN,
            "nothing held once the set lets go",
            || async { holders_of(key).await.is_empty() },
        )
        .await;
        assert!(support::free_for_another_session(key).await);
    });
}

/// Polls `request` once (its try goes out, and the silent proxy holds the answer back,
/// so that the request cannot read it within that poll), lets the client read the
/// server's refusal without `request` seeing it, then terminates `lane` and lets the
/// client find the loss: `request` asks again only when it is polled next.
async fn refused_then_lane_lost<F: std::future::Future + Unpin>(
    proxy: &Proxy,
    client: &LockClient,
    request: &mut F,
    lane: i32,
) {
    proxy.blackhole(true);
    let polled = future::poll_once(&mut *request).await;
    proxy.blackhole(false);
    assert!(polled.is_none(), "the request's try is on its way");
    within(LIMIT, "the try is answered", client.check_sessions())
        .await
        .unwrap();
    support::terminate(lane).await;
    within(LIMIT, "the loss is found", client.check_sessions())
        .await
        .unwrap();
}

#[test]
fn a_request_refused_while_its_local_levels_go_with_their_lane_starts_again_and_leaves_nothing_behind()
 {
    let _t = Timed::start("request refused while its levels go");
    rt::run(async {
        let proxy = Proxy::start();
        let pool = proxy.pool(8, LIMIT).await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(1));
        let key = support::key("client/upgrade-lost-while-refused");
        // A plain session shares the key, so the server refuses the client's upgrade.
        let mut plain = support::connect().await;
        assert!(support::try_lock_shared_on(&mut plain, key).await);
        let plain_pid = support::backend_pid(&mut plain).await;
        let mut a = client.lock(key);
        assert!(
            within(LIMIT, "a shares the key", a.try_lock_shared())
                .await
                .unwrap()
        );
        let lane = holders_of(key)
            .await
            .into_iter()
            .map(|(pid, _)| pid)
            .find(|&pid| pid != plain_pid)
            .expect("the lane holds the key");

        // The upgrade is granted locally (a lock never conflicts with itself) and its try
        // is refused; before the lock reads that answer, its lane is terminated and the
        // loss found: its shared level and the local grant of the upgrade are lost.
        let mut upgrade = Box::pin(a.lock());
        refused_then_lane_lost(&proxy, &client, &mut upgrade, lane).await;
        assert!(support::unlock_shared_on(&mut plain, key).await);

        // The lost grant was never the caller's: the upgrade starts again and takes the
        // key afresh (it used to back the lost grant with a server level nobody could
        // release: a's unlock answered LockLost and the key stayed held for good).
        within(LIMIT, "the upgrade", upgrade).await.unwrap();
        let holder = the_holder(key).await;
        assert_ne!(holder, lane);
        assert_eq!(holders_of(key).await, vec![(holder, true)]);
        // The shared level's loss is still a's to hear of, once.
        assert_lock_lost(a.is_held().await, key, "a's shared level was lost");
        assert_lock_lost(a.unlock_shared().await, key, "accounted for");
        assert!(
            within(LIMIT, "a holds the upgrade", a.is_held())
                .await
                .unwrap()
        );
        within(LIMIT, "a's unlock", a.unlock()).await.unwrap();
        support::eventually(FREED_WITHIN, "nothing held once a lets go", || async {
            holders_of(key).await.is_empty()
        })
        .await;
        a.close().await.unwrap();
        assert!(support::free_for_another_session(key).await);

        // A set likewise: its member shares another lock's level, its other key is
        // refused; the lane goes with that level before the set reads the refusal. The set
        // starts again and is handed out whole (it used to wait for the refused key alone
        // and hand out a set whose shared member was already lost).
        let keys = lanes::keys("client/set-member-lost-while-refused", 2);
        let mut b = client.lock(keys[0]);
        assert!(
            within(LIMIT, "b shares", b.try_lock_shared())
                .await
                .unwrap()
        );
        let lane = the_holder(keys[0]).await;
        let (mut plain, _) = plain_holder(keys[1]).await;
        let mut taking = Box::pin(client.try_lock_all_shared_for(keys.clone(), LIMIT));
        refused_then_lane_lost(&proxy, &client, &mut taking, lane).await;
        assert!(support::unlock_on(&mut plain, keys[1]).await);
        let set = within(LIMIT, "the set", taking)
            .await
            .unwrap()
            .expect("the set is taken again");
        for key in &keys {
            let holder = the_holder(*key).await;
            assert_ne!(holder, lane);
            assert_eq!(holders_of(*key).await, vec![(holder, false)]);
        }
        within(LIMIT, "the set's release", set.release())
            .await
            .unwrap();
        assert_lock_lost(b.close().await, keys[0], "b's level was lost");
        support::eventually(
            FREED_WITHIN,
            "nothing held once the set lets go",
            || async { lanes::untouched(&keys).await },
        )
        .await;
    });
}

#[test]
fn a_wait_for_a_key_of_a_lane_that_is_terminated_meanwhile_loses_nothing_and_is_granted() {
    let _t = Timed::start("wait across a lane loss");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(1));
        let keys = lanes::keys("client/wait-lane-loss", 2);
        let mut holder = client.lock(keys[0]);
        holder.lock().await.unwrap();
        let lane = the_holder(keys[0]).await;
        let (mut plain, _) = plain_holder(keys[1]).await;
        let mut waiter = client.lock(keys[1]);
        let waiting = rt::spawn(async move {
            let waited = waiter.lock().await;
            (waiter, waited)
        });
        support::eventually(LIMIT, "the wait shows in pg_locks", || async {
            !support::waiters(keys[1]).await.is_empty()
        })
        .await;
        // The lane dies while the wait (on its own session) goes on.
        support::terminate(lane).await;
        client.check_sessions().await.unwrap();
        assert_lock_lost(holder.is_held().await, keys[0], "the lane's holder");
        assert!(support::unlock_on(&mut plain, keys[1]).await);
        let (mut waiter, waited) = within(LIMIT, "the wait ends", waiting).await;
        waited.expect("granted: the wait's session never was the lane's");
        assert!(
            waiter.is_held().await.unwrap(),
            "a granted wait holds its level"
        );
        let pid = the_holder(keys[1]).await;
        assert_ne!(pid, lane);
        let mut other = client.lock(keys[1]);
        assert!(
            !other.try_lock().await.unwrap(),
            "and excludes the client's other locks"
        );
        waiter.unlock().await.unwrap();
        assert!(other.try_lock().await.unwrap());
        other.close().await.unwrap();
        waiter.close().await.unwrap();
        assert_lock_lost(holder.close().await, keys[0], "holder.close");
        assert!(lanes::untouched(&keys).await);
        let _ = plain.close().await;
    });
}

// ---------------------------------------------------------------------------------------
// Waiting for sets.

#[test]
fn try_lock_all_for_in_opposite_orders_by_two_clients_never_deadlocks() {
    let _t = Timed::start("sets in opposite orders");
    rt::run(async {
        const ROUNDS: usize = 25;
        let pool1 = support::pool().await;
        let pool2 = support::pool().await;
        let c1 = LockClient::new(&pool1);
        let c2 = LockClient::new(&pool2);
        let _drivers = (spawn_driver(&c1), spawn_driver(&c2));
        let keys = lanes::keys("client/opposite-orders", 5);
        let forward: Vec<LockKey> = keys[..4].to_vec();
        let backward: Vec<LockKey> = keys[1..].iter().rev().copied().collect();
        let started = Instant::now();
        let run = |client: LockClient, set: Vec<LockKey>, seed: u64| async move {
            let mut rng = XorShift::new(seed);
            let mut longest = Duration::ZERO;
            for round in 0..ROUNDS {
                let asked = Instant::now();
                let taken = client
                    .try_lock_all_for(set.clone(), Duration::from_secs(20))
                    .await
                    .unwrap_or_else(|err| panic!("round {round}: {err}"))
                    .unwrap_or_else(|| panic!("round {round}: not taken within 20 s"));
                longest = longest.max(asked.elapsed());
                rt::sleep(rng.millis(0, 5)).await;
                taken.release().await.unwrap();
            }
            longest
        };
        let (l1, l2) = within(
            Duration::from_secs(60),
            "both clients get their sets every round",
            future::zip(
                rt::spawn(run(c1.clone(), forward, 1)),
                rt::spawn(run(c2.clone(), backward, 2)),
            ),
        )
        .await;
        assert!(lanes::untouched(&keys).await, "nothing left behind");
        eprintln!(
            "[{}] opposite orders: {ROUNDS} sets each in {:?}; longest wait for a set {:?}",
            rt::NAME,
            started.elapsed(),
            l1.max(l2)
        );
    });
}

#[test]
fn a_timed_out_try_lock_all_for_leaves_nothing_held_anywhere() {
    let _t = Timed::start("timed-out set");
    rt::run(async {
        let pool = support::pool().await;
        let client = LockClient::new(&pool);
        let _driver = spawn_driver(&client);
        let keys = lanes::keys("client/timed-out-set", 4);
        let mut sorted = keys.clone();
        sorted.sort();
        // The last key in the order the wait takes them: the others are taken first.
        let (mut plain, plain_pid) = plain_holder(sorted[3]).await;
        let asked = Instant::now();
        let set = within(
            LIMIT,
            "try_lock_all_for",
            client.try_lock_all_for(keys.clone(), Duration::from_millis(400)),
        )
        .await
        .unwrap();
        let waited = asked.elapsed();
        assert!(set.is_none(), "timed out");
        support::assert_between(
            waited,
            Duration::from_millis(400),
            Duration::from_secs(3),
            "try_lock_all_for(400 ms)",
        );
        support::eventually(
            FREED_WITHIN,
            "only the plain session holds a key",
            || async {
                lanes::rows(&keys).await
                    == vec![lanes::Row {
                        key: sorted[3],
                        pid: plain_pid,
                        exclusive: true,
                        granted: true,
                    }]
            },
        )
        .await;
        assert!(keys.iter().all(|k| client.holders(*k) == 0));
        support::eventually(LIMIT, "no waiting session left", || async {
            client.sessions() <= 4
        })
        .await;
        for key in &sorted[..3] {
            assert!(support::free_for_another_session(*key).await);
        }
        // Shared too, and a dropped one: the same.
        let shared = client
            .try_lock_all_shared_for(keys.clone(), Duration::from_millis(200))
            .await
            .unwrap();
        assert!(shared.is_none());
        let dropped = rt::timeout(
            Duration::from_millis(200),
            client.try_lock_all_for(keys.clone(), Duration::from_secs(5)),
        )
        .await;
        assert!(dropped.is_none(), "given up by the caller");
        support::eventually(FREED_WITHIN, "still only the plain session", || async {
            lanes::rows(&keys).await.len() == 1
        })
        .await;
        // Released in time: taken.
        let taking = client.try_lock_all_for(keys.clone(), Duration::from_secs(5));
        let releasing = async {
            rt::sleep(Duration::from_millis(100)).await;
            assert!(support::unlock_on(&mut plain, sorted[3]).await);
        };
        let (set, ()) = future::zip(taking, releasing).await;
        let set = set.unwrap().expect("taken once released");
        assert_eq!(lanes::held(&keys).await.len(), 4);
        set.release().await.unwrap();
        support::eventually(FREED_WITHIN, "all released", || async {
            lanes::untouched(&keys).await
        })
        .await;
        let _ = plain.close().await;
        eprintln!("[{}] timed-out set: gave up after {waited:?}", rt::NAME);
    });
}

// ---------------------------------------------------------------------------------------
// Hot standby.

#[test]
fn a_client_on_a_hot_standby_refuses_with_standby_server_and_takes_nothing() {
    let _t = Timed::start("standby");
    let primary = support::cluster::PrivateCluster::start(&[]);
    let standby = primary.start_standby();
    let url = standby.url();
    rt::run(async move {
        let pool = support::pool_at(&url, 8).await;
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(in_recovery, "the standby is in recovery");
        let client = LockClient::new(&pool);
        let _driver = spawn_driver(&client);
        let keys = lanes::keys("client/standby", 3);
        let refused = |result: pglock::Result<bool>, what: &str| match result {
            Err(Error::StandbyServer { key }) => assert!(keys.contains(&key), "{what}"),
            other => panic!("{what}: expected Err(StandbyServer), got {other:?}"),
        };
        for _ in 0..2 {
            let mut lock = client.lock(keys[0]);
            refused(within(LIMIT, "try_lock", lock.try_lock()).await, "try_lock");
            refused(
                within(LIMIT, "try_lock_shared", lock.try_lock_shared()).await,
                "try_lock_shared",
            );
            refused(
                within(LIMIT, "lock", lock.lock()).await.map(|()| true),
                "lock",
            );
            refused(
                within(LIMIT, "lock_shared", lock.lock_shared())
                    .await
                    .map(|()| true),
                "lock_shared",
            );
            refused(
                within(
                    LIMIT,
                    "try_lock_for",
                    lock.try_lock_for(Duration::from_secs(5)),
                )
                .await,
                "try_lock_for",
            );
            assert!(!lock.is_held().await.unwrap(), "nothing counted");
            lock.close().await.unwrap();
            for (what, result) in [
                ("try_lock_all", client.try_lock_all(keys.clone()).await),
                (
                    "try_lock_all_shared",
                    client.try_lock_all_shared(keys.clone()).await,
                ),
                (
                    "try_lock_all_for",
                    client
                        .try_lock_all_for(keys.clone(), Duration::from_secs(5))
                        .await,
                ),
            ] {
                refused(result.map(|set| set.is_some()), what);
            }
            assert!(keys.iter().all(|k| client.holders(*k) == 0));
        }
        assert!(
            lanes::rows_at(&url, &keys).await.is_empty(),
            "nothing taken on the standby"
        );
        assert_eq!(client.sessions(), 0, "no lane kept on the standby");
    });
}

// ---------------------------------------------------------------------------------------
// Futures dropped at random moments.

/// What a lock of the cancellation test does in one round.
#[derive(Debug, Clone, Copy)]
enum Step {
    Lock,
    LockShared,
    TryLock,
    TryLockShared,
    TryLockFor(Duration),
    Unlock,
    UnlockShared,
    IsHeld,
}

/// Whether the levels the locks say they hold agree with `pg_locks`: for each key, held
/// on the server by the client (not by `outside`) in a mode iff some lock holds that mode.
async fn server_matches(
    keys: &[LockKey],
    model: &[(LockKey, u32, u32)],
    outside: i32,
) -> Result<(), String> {
    let rows = lanes::rows(keys).await;
    for key in keys {
        let want_ex = model.iter().any(|(k, ex, _)| k == key && *ex > 0);
        let want_sh = model.iter().any(|(k, _, sh)| k == key && *sh > 0);
        let ours = |exclusive: bool| {
            rows.iter()
                .filter(|r| r.key == *key && r.pid != outside && r.exclusive == exclusive)
                .collect::<Vec<_>>()
        };
        let (ex, sh) = (ours(true), ours(false));
        if ex.iter().chain(&sh).any(|r| !r.granted) {
            return Err(format!("{key}: a wait is left on the server: {rows:?}"));
        }
        if (!ex.is_empty(), !sh.is_empty()) != (want_ex, want_sh) || ex.len() > 1 || sh.len() > 1 {
            return Err(format!(
                "{key}: the locks hold exclusive {want_ex}, shared {want_sh}; the server shows \
                 {rows:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn futures_dropped_at_random_moments_leave_the_server_matching_what_the_locks_hold() {
    let _t = Timed::start("random cancellations");
    rt::run(async {
        const ROUNDS: usize = 200;
        const LOCKS: usize = 8;
        let pool = support::pool().await;
        let client = LockClient::with_options(&pool, ClientOptions::new().max_sessions(2));
        let _driver = spawn_driver(&client);
        let keys = lanes::keys("client/random-cancellations", 3);
        let (mut outside, outside_pid) = plain_holder(keys[0]).await;
        let mut outside_holds = true;
        let mut locks: Vec<ClientLock> = (0..LOCKS).map(|i| client.lock(keys[i % 3])).collect();
        // Levels per lock (exclusive, shared), as the test counts them.
        let mut levels = [(0_u32, 0_u32); LOCKS];
        let seed = std::env::var("PGLOCK_CLIENT_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x0c11_e47d_cafe_u64);
        let mut rng = XorShift::new(seed);
        let (mut cancelled, mut granted, mut refused, mut deadlocks) = (0, 0, 0, 0);
        let mut checks = Duration::ZERO;

        for round in 1..=ROUNDS {
            if rng.below(4) == 0 {
                if outside_holds {
                    assert!(support::unlock_on(&mut outside, keys[0]).await);
                }
                outside_holds = !outside_holds && support::try_lock_on(&mut outside, keys[0]).await;
            }
            let plan: Vec<(Step, Option<Duration>)> = (0..LOCKS)
                .map(|i| {
                    let (ex, sh) = levels[i];
                    let step = match rng.below(10) {
                        0 => Step::Lock,
                        1 => Step::LockShared,
                        2 => Step::TryLock,
                        3 => Step::TryLockShared,
                        4 => Step::TryLockFor(rng.millis(0, 10)),
                        5 | 6 if ex > 0 => Step::Unlock,
                        5 | 6 if sh > 0 => Step::UnlockShared,
                        7 if sh > 0 => Step::UnlockShared,
                        8 => Step::IsHeld,
                        _ if ex > 0 && ex + sh > 2 => Step::Unlock,
                        _ if sh > 2 => Step::UnlockShared,
                        _ => Step::TryLockShared,
                    };
                    // Most calls are dropped after a few ms: before they send, in flight,
                    // waiting, or as the answer lands.
                    // (A blocking wait always is: what it waits for may stay held.)
                    let blocking = matches!(step, Step::Lock | Step::LockShared);
                    let cancel = (blocking || rng.below(5) != 0).then(|| rng.millis(0, 8));
                    (step, cancel)
                })
                .collect();
            let calls = locks
                .iter_mut()
                .zip(&plan)
                .map(|(lock, &(step, cancel))| async move {
                    let call = async {
                        match step {
                            Step::Lock => lock.lock().await.map(|()| Some(true)),
                            Step::LockShared => lock.lock_shared().await.map(|()| Some(true)),
                            Step::TryLock => lock.try_lock().await.map(Some),
                            Step::TryLockShared => lock.try_lock_shared().await.map(Some),
                            Step::TryLockFor(t) => lock.try_lock_for(t).await.map(Some),
                            Step::Unlock => lock.unlock().await.map(|()| None),
                            Step::UnlockShared => lock.unlock_shared().await.map(|()| None),
                            Step::IsHeld => lock.is_held().await.map(Some),
                        }
                    };
                    match cancel {
                        Some(after) => rt::timeout(after, call).await,
                        None => Some(
                            within(LIMIT, &format!("round {round}: uncancelled {step:?}"), call)
                                .await,
                        ),
                    }
                });
            let outcomes = within(LIMIT, "a round", lanes::join_all(calls.collect())).await;
            for (i, ((step, _), outcome)) in plan.iter().zip(outcomes).enumerate() {
                let what = format!("round {round}, lock {i} ({:?}), {step:?}", keys[i % 3]);
                let (ex, sh) = &mut levels[i];
                match (step, outcome) {
                    // A dropped acquisition takes nothing; a dropped unlock has given its
                    // level back (at its first poll).
                    (Step::Unlock, None) if *ex > 0 => *ex -= 1,
                    (Step::UnlockShared, None) if *sh > 0 => *sh -= 1,
                    (_, None) => cancelled += 1,
                    (Step::Lock | Step::TryLock | Step::TryLockFor(_), Some(Ok(Some(true)))) => {
                        *ex += 1;
                        granted += 1;
                    }
                    (Step::LockShared | Step::TryLockShared, Some(Ok(Some(true)))) => {
                        *sh += 1;
                        granted += 1;
                    }
                    (Step::TryLock | Step::TryLockShared | Step::TryLockFor(_), Some(Ok(_))) => {
                        refused += 1
                    }
                    (Step::Unlock, Some(Ok(None))) => *ex -= 1,
                    (Step::UnlockShared, Some(Ok(None))) => *sh -= 1,
                    (Step::Unlock, Some(Err(Error::NotHeld { .. }))) if *ex == 0 => {}
                    (Step::UnlockShared, Some(Err(Error::NotHeld { .. }))) if *sh == 0 => {}
                    (Step::IsHeld, Some(Ok(Some(held)))) => {
                        assert_eq!(held, *ex + *sh > 0, "{what}: is_held")
                    }
                    (
                        Step::Lock | Step::LockShared | Step::TryLockFor(_),
                        Some(Err(Error::Deadlock { .. })),
                    ) => deadlocks += 1,
                    (_, other) => panic!("{what}: {other:?} (levels {ex}/{sh})"),
                }
            }
            // Mutual exclusion among the client's own locks, as the test counts levels.
            for (k, key) in keys.iter().enumerate() {
                let on: Vec<(u32, u32)> = (k..LOCKS).step_by(3).map(|i| levels[i]).collect();
                let writers = on.iter().filter(|(ex, _)| *ex > 0).count();
                assert!(
                    writers == 0
                        || (writers == 1 && on.iter().filter(|l| **l != (0, 0)).count() == 1),
                    "round {round}: key {key}: an exclusive holder has company: {on:?}"
                );
                assert_eq!(
                    client.holders(*key),
                    on.iter().filter(|l| **l != (0, 0)).count(),
                    "round {round}: the client's record of holders on key {key}"
                );
            }
            if round % 20 == 0 || round == ROUNDS {
                let model: Vec<(LockKey, u32, u32)> = (0..LOCKS)
                    .map(|i| (keys[i % 3], levels[i].0, levels[i].1))
                    .collect();
                let start = Instant::now();
                let mut last = Ok(());
                while start.elapsed() < FREED_WITHIN {
                    last = server_matches(&keys, &model, outside_pid).await;
                    if last.is_ok() {
                        break;
                    }
                    rt::sleep(Duration::from_millis(20)).await;
                }
                last.unwrap_or_else(|err| panic!("round {round}: {err}"));
                checks = checks.max(start.elapsed());
                for (i, lock) in locks.iter_mut().enumerate() {
                    let held = within(LIMIT, "is_held", lock.is_held()).await;
                    assert_eq!(
                        held.unwrap_or_else(|err| panic!("round {round}, lock {i}: {err}")),
                        levels[i] != (0, 0),
                        "round {round}, lock {i}: no lock lost anything"
                    );
                }
            }
        }
        for lock in &mut locks {
            lock.close().await.unwrap();
        }
        if outside_holds {
            assert!(support::unlock_on(&mut outside, keys[0]).await);
        }
        support::eventually(FREED_WITHIN, "nothing held at the end", || async {
            lanes::untouched(&keys).await
        })
        .await;
        let _ = outside.close().await;
        eprintln!(
            "[{}] random cancellations (seed {seed:#x}): {ROUNDS} rounds × {LOCKS} locks: {cancelled} dropped \
             acquisitions, {granted} granted, {refused} refused, {deadlocks} local deadlocks; \
             the server matched the locks within {checks:?} at every check",
            rt::NAME
        );
    });
}

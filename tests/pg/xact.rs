//! Transaction-scoped advisory locks (`pglock::xact`): held until the transaction ends,
//! and every acquisition fenced by a savepoint, so a failed or timed-out one leaves the
//! caller's transaction usable with its settings as they were. Checked from outside:
//! `pg_locks`, and other sessions and transactions trying the key.

use crate::support;

use std::time::{Duration, Instant};

use futures_lite::future::zip;
use pglock::{Error, LockKey, xact};
// Table names below are our own (`support::unique_table`), never input.
use sqlx::{AssertSqlSafe, Connection, Postgres, Transaction};
use support::WAIT;
use support::assert_pool_holds_no_advisory_lock;
use support::rt;

/// `SELECT 1` in the transaction: it is usable (not aborted).
async fn select_one(tx: &mut Transaction<'_, Postgres>) {
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut **tx)
        .await
        .expect("SELECT 1 in the transaction");
    assert_eq!(one, 1);
}

#[test]
fn xact_lock_holds_the_key_until_commit() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("xact_lock_holds_the_key_until_commit");
        let mut tx = pool.begin().await.unwrap();
        let pid = support::backend_pid(&mut tx).await;

        xact::lock(&mut tx, key).await.unwrap();
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![(pid, "ExclusiveLock".to_owned())]
        );
        assert!(!support::free_for_another_session(key).await);
        select_one(&mut tx).await;
        assert!(
            !support::free_for_another_session(key).await,
            "held past a statement"
        );

        tx.commit().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn xact_lock_is_released_by_rollback() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("xact_lock_is_released_by_rollback");
        let mut tx = pool.begin().await.unwrap();
        let pid = support::backend_pid(&mut tx).await;

        xact::lock(&mut tx, key).await.unwrap();
        assert_eq!(support::holders(key).await, vec![pid]);
        assert!(!support::free_for_another_session(key).await);

        tx.rollback().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn xact_lock_is_released_when_the_transaction_is_dropped() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("xact_lock_is_released_when_the_transaction_is_dropped");
        let mut tx = pool.begin().await.unwrap();
        let pid = support::backend_pid(&mut tx).await;

        xact::lock(&mut tx, key).await.unwrap();
        assert_eq!(support::holders(key).await, vec![pid]);
        assert!(!support::free_for_another_session(key).await);

        drop(tx);
        support::freed_within(Duration::from_secs(1), key, "the transaction was dropped").await;
        assert!(support::holders(key).await.is_empty());
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn two_transactions_share_the_key_and_keep_an_exclusive_try_out_until_both_commit() {
    rt::run(async {
        let pool = support::pool_with(6).await;
        let key = support::key("two_transactions_share_the_key");
        let mut first = pool.begin().await.unwrap();
        let mut second = pool.begin().await.unwrap();
        let mut third = pool.begin().await.unwrap();
        let third_pid = support::backend_pid(&mut third).await;

        xact::lock_shared(&mut first, key).await.unwrap();
        xact::lock_shared(&mut second, key).await.unwrap();
        let holders = support::holders_with_mode(key).await;
        assert_eq!(
            holders.len(),
            2,
            "two transactions hold the key: {holders:?}"
        );
        assert!(holders.iter().all(|(_, mode)| mode == "ShareLock"));
        assert!(!holders.iter().any(|(pid, _)| *pid == third_pid));

        assert!(!xact::try_lock(&mut third, key).await.unwrap());
        let start = Instant::now();
        assert!(
            !xact::try_lock_for(&mut third, key, Duration::from_millis(100))
                .await
                .unwrap()
        );
        support::assert_between(
            start.elapsed(),
            Duration::from_millis(100),
            Duration::from_millis(350),
            "xact::try_lock_for(100ms) against two shared holders",
        );
        // A shared try from the third joins them (and is held to its end).
        assert!(xact::try_lock_shared(&mut third, key).await.unwrap());
        assert_eq!(support::holders(key).await.len(), 3);
        third.rollback().await.unwrap();
        let mut third = pool.begin().await.unwrap();
        let third_pid = support::backend_pid(&mut third).await;

        first.commit().await.unwrap();
        assert_eq!(support::holders(key).await.len(), 1);
        assert!(
            !xact::try_lock(&mut third, key).await.unwrap(),
            "one shared holder is left"
        );

        second.commit().await.unwrap();
        assert!(xact::try_lock(&mut third, key).await.unwrap());
        assert_eq!(
            support::holders_with_mode(key).await,
            vec![(third_pid, "ExclusiveLock".to_owned())]
        );
        assert!(!support::free_for_another_session(key).await);
        third.commit().await.unwrap();
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn xact_try_lock_fails_against_a_session_lock_and_leaves_the_transaction_usable() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("xact_try_lock_fails_against_a_session_lock");
        let (mut other, other_pid) = support::held_elsewhere(key).await;
        let mut tx = pool.begin().await.unwrap();

        assert!(!xact::try_lock(&mut tx, key).await.unwrap());
        assert!(!xact::try_lock_shared(&mut tx, key).await.unwrap());
        select_one(&mut tx).await;
        assert_eq!(support::holders(key).await, vec![other_pid]);
        tx.commit().await.unwrap();

        assert!(support::unlock_on(&mut other, key).await);
        let _ = other.close().await;
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn xact_try_lock_for_times_out_in_time_and_leaves_the_transaction_and_its_settings_intact() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("xact_try_lock_for_times_out_in_time");
        let table = support::unique_table("pglock_xact_try_for");
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, note text)"
        )))
        .execute(&pool)
        .await
        .unwrap();
        let (mut other, other_pid) = support::held_elsewhere(key).await;

        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SET LOCAL lock_timeout = '7s'")
            .execute(&mut *tx)
            .await
            .unwrap();
        let lock_timeout = support::show(&mut tx, "lock_timeout").await;
        let statement_timeout = support::show(&mut tx, "statement_timeout").await;
        assert_eq!(lock_timeout, "7s");

        let start = Instant::now();
        let acquired = xact::try_lock_for(&mut tx, key, Duration::from_millis(100)).await;
        let elapsed = start.elapsed();
        assert!(
            matches!(acquired, Ok(false)),
            "xact::try_lock_for(100ms) while held elsewhere: {acquired:?}"
        );
        support::assert_between(
            elapsed,
            Duration::from_millis(100),
            Duration::from_millis(350),
            "xact::try_lock_for(100ms) while held elsewhere",
        );
        eprintln!(
            "[{}] xact::try_lock_for(100ms) gave up after {elapsed:?}",
            rt::NAME
        );

        select_one(&mut tx).await;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (id, note) VALUES (1, 'after the timeout')"
        )))
        .execute(&mut *tx)
        .await
        .expect("INSERT in the transaction after the timed-out wait");
        assert_eq!(support::show(&mut tx, "lock_timeout").await, lock_timeout);
        assert_eq!(
            support::show(&mut tx, "statement_timeout").await,
            statement_timeout
        );
        assert_eq!(support::holders(key).await, vec![other_pid]);
        tx.commit().await.unwrap();

        let mut look = support::connect().await;
        let note: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT note FROM {table} WHERE id = 1"
        )))
        .fetch_one(&mut look)
        .await
        .expect("the committed row is there");
        assert_eq!(note, "after the timeout");
        sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
            .execute(&mut look)
            .await
            .unwrap();
        let _ = look.close().await;

        assert!(support::unlock_on(&mut other, key).await);
        let _ = other.close().await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn xact_try_lock_for_succeeds_when_the_holder_releases_inside_the_window() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("xact_try_lock_for_succeeds_when_the_holder_releases");
        let (mut other, _) = support::held_elsewhere(key).await;
        let mut tx = pool.begin().await.unwrap();
        let pid = support::backend_pid(&mut tx).await;
        let release_after = Duration::from_millis(200);

        let start = Instant::now();
        let holder = async {
            rt::sleep(release_after).await;
            assert!(support::unlock_on(&mut other, key).await);
        };
        let (acquired, ()) = rt::timeout(
            WAIT,
            zip(
                xact::try_lock_for(&mut tx, key, Duration::from_secs(3)),
                holder,
            ),
        )
        .await
        .expect("the wait and the holder finish");
        let elapsed = start.elapsed();
        assert!(acquired.unwrap(), "granted inside the window");
        assert!(
            elapsed >= release_after && elapsed < Duration::from_secs(3),
            "granted after {elapsed:?}: not after the release at {release_after:?}, or not \
             inside the window"
        );
        eprintln!(
            "[{}] xact::try_lock_for(3s) granted {:?} after the release",
            rt::NAME,
            elapsed - release_after
        );
        assert_eq!(support::holders(key).await, vec![pid]);
        assert!(!support::try_lock_on(&mut other, key).await);

        tx.commit().await.unwrap();
        support::take_then_close(other, key).await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn a_short_local_statement_timeout_does_not_cut_a_longer_xact_try_lock_for() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("a_short_local_statement_timeout_does_not_cut");
        let (mut other, other_pid) = support::held_elsewhere(key).await;
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SET LOCAL statement_timeout = 50")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(support::show(&mut tx, "statement_timeout").await, "50ms");

        let start = Instant::now();
        let acquired = xact::try_lock_for(&mut tx, key, Duration::from_secs(1)).await;
        let elapsed = start.elapsed();
        assert!(
            matches!(acquired, Ok(false)),
            "a 1 s wait under statement_timeout = 50ms: {acquired:?} after {elapsed:?}"
        );
        support::assert_between(
            elapsed,
            Duration::from_secs(1),
            Duration::from_millis(1250),
            "xact::try_lock_for(1s) under statement_timeout = 50ms",
        );
        eprintln!(
            "[{}] xact::try_lock_for(1s) under statement_timeout=50ms gave up after {elapsed:?}",
            rt::NAME
        );
        assert_eq!(support::show(&mut tx, "statement_timeout").await, "50ms");
        select_one(&mut tx).await;
        assert_eq!(support::holders(key).await, vec![other_pid]);
        tx.commit().await.unwrap();

        assert!(support::unlock_on(&mut other, key).await);
        let _ = other.close().await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn xact_try_lock_for_granted_under_a_short_statement_timeout_keeps_the_transactions_timeouts() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::key("xact_try_lock_for_granted_under_a_short_statement_timeout");
        let (mut other, _) = support::held_elsewhere(key).await;
        let mut tx = pool.begin().await.unwrap();
        let pid = support::backend_pid(&mut tx).await;
        sqlx::query("SET LOCAL lock_timeout = '7s'")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("SET LOCAL statement_timeout = 50")
            .execute(&mut *tx)
            .await
            .unwrap();
        // The holder lets go well after 50 ms: the wait must outlast the statement_timeout.
        let release_after = Duration::from_millis(300);

        let start = Instant::now();
        let holder = async {
            rt::sleep(release_after).await;
            assert!(support::unlock_on(&mut other, key).await);
        };
        let (acquired, ()) = rt::timeout(
            WAIT,
            zip(
                xact::try_lock_for(&mut tx, key, Duration::from_secs(2)),
                holder,
            ),
        )
        .await
        .expect("the wait and the holder finish");
        let elapsed = start.elapsed();
        assert!(
            matches!(acquired, Ok(true)),
            "granted after the release under statement_timeout = 50ms: {acquired:?} after \
             {elapsed:?}"
        );
        assert!(elapsed >= release_after && elapsed < Duration::from_secs(2));
        assert_eq!(support::show(&mut tx, "statement_timeout").await, "50ms");
        assert_eq!(support::show(&mut tx, "lock_timeout").await, "7s");
        assert_eq!(support::holders(key).await, vec![pid]);
        select_one(&mut tx).await;
        assert!(!support::try_lock_on(&mut other, key).await);

        tx.commit().await.unwrap();
        support::take_then_close(other, key).await;
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

/// One side of the deadlock: `tx` holds `own` and now waits for `wanted`. The side that
/// PostgreSQL picks as the victim checks its transaction still works and that it still
/// holds `own`, then commits (which lets the other side through).
async fn wait_for_second_key(
    mut tx: Transaction<'static, Postgres>,
    own: LockKey,
    wanted: LockKey,
    pid: i32,
) -> (pglock::Result<()>, Option<Transaction<'static, Postgres>>) {
    let result = xact::lock(&mut tx, wanted).await;
    if let Err(Error::Deadlock { .. }) = result {
        select_one(&mut tx).await;
        assert_eq!(
            support::holders(own).await,
            vec![pid],
            "the victim still holds its first key: only the failed acquisition was undone"
        );
        assert_eq!(
            support::waiters(own).await.len(),
            1,
            "the other side waits for it"
        );
        tx.commit()
            .await
            .expect("the victim's transaction commits after the deadlock");
        return (result, None);
    }
    (result, Some(tx))
}

#[test]
fn a_deadlock_between_transactions_fails_one_acquisition_and_leaves_its_transaction_usable() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let first_key = support::key("a_deadlock_between_transactions/first");
        let second_key = support::key("a_deadlock_between_transactions/second");
        let mut a = pool.begin().await.unwrap();
        let mut b = pool.begin().await.unwrap();
        let a_pid = support::backend_pid(&mut a).await;
        let b_pid = support::backend_pid(&mut b).await;
        xact::lock(&mut a, first_key).await.unwrap();
        xact::lock(&mut b, second_key).await.unwrap();

        let start = Instant::now();
        // Boxed: the test future stays small (async-std's block_on copies it on a 2 MiB
        // test-thread stack).
        let ((a_result, a_tx), (b_result, b_tx)) = rt::timeout(
            WAIT,
            Box::pin(zip(
                wait_for_second_key(a, first_key, second_key, a_pid),
                wait_for_second_key(b, second_key, first_key, b_pid),
            )),
        )
        .await
        .expect("the deadlock is broken and both sides finish");
        let elapsed = start.elapsed();
        eprintln!(
            "[{}] deadlock broken and resolved in {elapsed:?}: a {a_result:?}, b {b_result:?}",
            rt::NAME
        );

        let (winner_tx, winner_pid) = match (&a_result, &b_result) {
            (Ok(()), Err(Error::Deadlock { key })) => {
                assert_eq!(*key, first_key, "b was waiting for the first key");
                (a_tx.expect("a's transaction"), a_pid)
            }
            (Err(Error::Deadlock { key }), Ok(())) => {
                assert_eq!(*key, second_key, "a was waiting for the second key");
                (b_tx.expect("b's transaction"), b_pid)
            }
            other => panic!("expected exactly one Error::Deadlock, got {other:?}"),
        };
        // The winner holds both keys now.
        assert_eq!(support::holders(first_key).await, vec![winner_pid]);
        assert_eq!(support::holders(second_key).await, vec![winner_pid]);
        let mut winner_tx = winner_tx;
        select_one(&mut winner_tx).await;
        winner_tx.commit().await.unwrap();

        assert!(support::free_for_another_session(first_key).await);
        assert!(support::free_for_another_session(second_key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

#[test]
fn xact_locks_work_with_int_pair_keys() {
    rt::run(async {
        let pool = support::pool_with(4).await;
        let key = support::pair_key("xact_locks_work_with_int_pair_keys");
        assert!(matches!(key, LockKey::IntPair(..)));
        let mut first = pool.begin().await.unwrap();
        let mut second = pool.begin().await.unwrap();
        let first_pid = support::backend_pid(&mut first).await;
        let second_pid = support::backend_pid(&mut second).await;

        xact::lock(&mut first, key).await.unwrap();
        assert_eq!(
            support::holders_by_server_arithmetic(key).await,
            vec![first_pid]
        );
        assert!(!support::free_for_another_session(key).await);
        assert!(!xact::try_lock(&mut second, key).await.unwrap());
        assert!(!xact::try_lock_shared(&mut second, key).await.unwrap());
        let start = Instant::now();
        assert!(
            !xact::try_lock_shared_for(&mut second, key, Duration::from_millis(100))
                .await
                .unwrap()
        );
        support::assert_between(
            start.elapsed(),
            Duration::from_millis(100),
            Duration::from_millis(350),
            "xact::try_lock_shared_for(100ms) on an int-pair key held exclusively",
        );
        select_one(&mut second).await;
        first.commit().await.unwrap();

        assert!(
            xact::try_lock_shared_for(&mut second, key, Duration::from_millis(100))
                .await
                .unwrap()
        );
        xact::lock_shared(&mut second, key).await.unwrap();
        assert_eq!(
            support::holders_by_server_arithmetic(key).await,
            vec![second_pid]
        );
        assert!(!support::free_for_another_session(key).await);
        second.commit().await.unwrap();

        let mut third = pool.begin().await.unwrap();
        assert!(
            xact::try_lock_for(&mut third, key, Duration::from_millis(100))
                .await
                .unwrap()
        );
        assert!(xact::try_lock(&mut third, key).await.unwrap(), "stacks");
        assert!(!support::free_for_another_session(key).await);
        third.rollback().await.unwrap();
        assert!(support::holders_by_server_arithmetic(key).await.is_empty());
        assert!(support::free_for_another_session(key).await);
        assert_pool_holds_no_advisory_lock(&pool).await;
    });
}

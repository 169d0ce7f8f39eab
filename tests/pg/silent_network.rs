//! A silent network: the proxy between the lock and the server stops forwarding in both
//! directions but keeps every socket open, so neither side sees an error, a reset or an
//! end-of-file. Only a clock can tell. With `operation_timeout(2 s)` every bounded
//! operation must give up on time, with an error that says what happened:
//! `Err(Unresponsive)` when the lock held nothing, `Err(LockLost)` when it held a level.
//! Afterwards the lock must not hang (its next call fails fast, bounded by the pool's
//! `acquire_timeout`, while the network is still silent) and must work again once the
//! network heals. `lost()` must notice within `lost_check_interval + check_timeout`.
//!
//! The server knows nothing of the silence either: a session that held a level keeps it
//! on the server until the network heals (or TCP keepalive gives up, hours by default),
//! although the client has been told `LockLost`. The tests assert that too, since it is
//! what a caller must expect: `LockLost` means "stop the work", not "the key is free".

use crate::support;

use std::time::{Duration, Instant};

use pglock::{AdvisoryLock, Error, LockOptions};
use sqlx::PgPool;
use support::proxy::Proxy;
use support::rt;

/// The operation timeout under test.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The pool's bound on opening a connection (which a silent network never finishes).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often `lost()` checks, and how long one check may take.
const LOST_CHECK_INTERVAL: Duration = Duration::from_millis(200);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How late past its bound a give-up may come (scheduling, the timer thread, CI noise).
const MARGIN: Duration = Duration::from_millis(750);
/// How early: the bound is kept by a timer, so never before it (minus clock granularity).
const EARLY: Duration = Duration::from_millis(20);
/// The timed wait under test.
const WAIT: Duration = Duration::from_millis(500);
/// Bound on things that should simply happen (the healed network freeing a session).
const SETTLE: Duration = Duration::from_secs(10);

fn options() -> LockOptions {
    LockOptions::new()
        .application_name("pglock-silent-network")
        .operation_timeout(OP_TIMEOUT)
        .lost_check_interval(LOST_CHECK_INTERVAL)
        .check_timeout(CHECK_TIMEOUT)
}

/// A proxy of its own (so cases can run side by side) and a pool through it.
async fn network() -> (Proxy, PgPool) {
    let proxy = Proxy::start();
    let pool = proxy.pool(4, ACQUIRE_TIMEOUT).await;
    (proxy, pool)
}

/// The operations that must give up on a silent network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    TryLock,
    Unlock,
    IsHeld,
    Close,
    TryLockFor,
}

impl Op {
    /// The longest the operation may take before it must have given up: one statement's
    /// operation timeout, or for a timed wait its own timeout plus that.
    /// How long the operation may take on a silent network. A timed wait gets its wait
    /// on top, unless the lock holds a level: then it tries first (to tell a session found
    /// gone from one lost while waiting), and that try is what goes unanswered.
    fn bound(self, held: bool) -> Duration {
        match self {
            Op::TryLockFor if !held => WAIT + OP_TIMEOUT,
            _ => OP_TIMEOUT,
        }
    }

    async fn run(self, lock: &mut AdvisoryLock) -> pglock::Result<()> {
        match self {
            Op::TryLock => lock.try_lock().await.map(drop),
            Op::Unlock => lock.unlock().await,
            Op::IsHeld => lock.is_held().await.map(drop),
            Op::Close => lock.close().await,
            Op::TryLockFor => lock.try_lock_for(WAIT).await.map(drop),
        }
    }
}

/// What one case measured.
#[derive(Debug)]
struct GiveUp {
    op: Op,
    held: bool,
    /// From the network going silent to the operation's error.
    gave_up_after: Duration,
    /// The next call, still on the silent network.
    next_call_after: Duration,
}

/// One operation on a silent network, with (`held`) or without a level held: it must
/// give up within its bound with the right error, the next call must not hang, and the
/// lock must work again after the network heals.
async fn give_up_case(op: Op, held: bool) -> GiveUp {
    let (proxy, pool) = network().await;
    let key = support::key(&format!("silent/{op:?}/{held}"));
    let mut lock = AdvisoryLock::new(&pool, key)
        .await
        .expect("AdvisoryLock::new through the proxy")
        .with_options(options());

    // Warm up the session (configured, statement_timeout known) so that under silence
    // the operation's own statement is what goes unanswered.
    assert!(lock.try_lock_for(Duration::from_millis(10)).await.unwrap());
    if !held {
        lock.unlock().await.unwrap();
    }
    let holder = support::holders(key).await;
    assert_eq!(
        holder.len(),
        usize::from(held),
        "{op:?}: holders {holder:?}"
    );

    proxy.blackhole(true);
    let start = Instant::now();
    let result = rt::timeout(op.bound(held) + MARGIN * 4, op.run(&mut lock))
        .await
        .unwrap_or_else(|| panic!("{op:?} (held: {held}) hung on a silent network"));
    let gave_up_after = start.elapsed();
    // `close` with nothing held sends only the restore of the application_name these
    // locks set: bounded by the operation timeout like any statement, and `Ok` even
    // unanswered (the connection is then closed rather than returned unrestored).
    let close_restores = op == Op::Close && !held;
    match (held, &result) {
        (false, Ok(())) if close_restores => {}
        (false, Err(Error::Unresponsive { key: k, after })) => {
            assert_eq!(*k, key);
            assert_eq!(*after, op.bound(held), "{op:?}: the bound it reports");
        }
        (true, Err(Error::LockLost { key: k })) => assert_eq!(*k, key),
        _ => panic!(
            "{op:?} on a silent network with a level held: {held}: expected {}, got {result:?}",
            if held {
                "Err(LockLost)"
            } else {
                "Err(Unresponsive)"
            }
        ),
    }
    let (low, high) = (
        op.bound(held).saturating_sub(EARLY),
        op.bound(held) + MARGIN,
    );
    assert!(
        gave_up_after >= low && gave_up_after <= high,
        "{op:?} (held: {held}) gave up after {gave_up_after:?}; bound {:?}",
        op.bound(held)
    );
    assert_eq!(
        lock.exclusive_levels(),
        0,
        "{op:?}: the lost level is forgotten"
    );

    // The server was told nothing: a held level is still the old session's.
    assert_eq!(
        support::holders(key).await,
        holder,
        "{op:?}: the server still sees the silent session as before"
    );

    // The next call, still on the silent network, must not hang either.
    let start = Instant::now();
    let next = rt::timeout(ACQUIRE_TIMEOUT + OP_TIMEOUT + MARGIN * 4, lock.is_held())
        .await
        .unwrap_or_else(|| panic!("{op:?}: the call after giving up hung"));
    let next_call_after = start.elapsed();
    // A lost level that no unlock accounted for stays reported (the operation that gave
    // up reported it; an unlock accounted for it).
    let unaccounted = held && !matches!(op, Op::Unlock | Op::Close);
    match (op, &next) {
        (Op::Close, Err(Error::Closed)) => {}
        (_, Err(Error::LockLost { key: k })) if unaccounted && *k == key => {}
        // A new session: the pool cannot open one on a silent network within its
        // acquire timeout.
        (_, Err(Error::Database(sqlx::Error::PoolTimedOut))) => {}
        _ => panic!("{op:?}: the call after giving up, still silent: {next:?}"),
    }
    assert!(
        next_call_after <= ACQUIRE_TIMEOUT + MARGIN,
        "{op:?}: the next call took {next_call_after:?}"
    );

    // The network heals: the old session ends (its client left long ago), and the lock
    // works again on a new session.
    proxy.blackhole(false);
    support::eventually(
        SETTLE,
        "the healed network frees the old session",
        || async { support::holders(key).await.is_empty() },
    )
    .await;
    if op == Op::Close {
        assert!(matches!(lock.try_lock().await, Err(Error::Closed)));
        let mut lock = AdvisoryLock::new(&pool, key).await.unwrap();
        assert!(lock.try_lock().await.unwrap());
        lock.close().await.unwrap();
    } else {
        assert!(
            lock.try_lock()
                .await
                .expect("a new session after the network healed"),
            "{op:?}: try_lock after healing"
        );
        assert_eq!(support::holders(key).await.len(), 1);
        let closed = lock.close().await;
        match unaccounted {
            true => assert!(
                matches!(closed, Err(Error::LockLost { key: k }) if k == key),
                "{op:?}: close with the lost level unaccounted for: {closed:?}"
            ),
            false => closed.unwrap(),
        }
    }
    assert!(support::holders(key).await.is_empty());
    pool.close().await;
    drop(proxy);
    GiveUp {
        op,
        held,
        gave_up_after,
        next_call_after,
    }
}

/// Runs the case without and with a level held, side by side (each on its own proxy).
fn both_cases(op: Op) {
    rt::run(async move {
        let (nothing, level) =
            futures_lite::future::zip(give_up_case(op, false), give_up_case(op, true)).await;
        for case in [nothing, level] {
            println!(
                "[{}] {:?} held={}: gave up after {:?} (bound {:?}); next call failed fast after {:?}",
                rt::NAME,
                case.op,
                case.held,
                case.gave_up_after,
                case.op.bound(case.held),
                case.next_call_after,
            );
        }
    });
}

#[test]
fn try_lock_gives_up_on_a_silent_network() {
    both_cases(Op::TryLock);
}

#[test]
fn is_held_gives_up_on_a_silent_network() {
    both_cases(Op::IsHeld);
}

#[test]
fn close_gives_up_on_a_silent_network() {
    both_cases(Op::Close);
}

#[test]
fn try_lock_for_gives_up_on_a_silent_network_after_its_wait_plus_the_operation_timeout() {
    both_cases(Op::TryLockFor);
}

/// `unlock` with a level held gives up with `LockLost`. With nothing held it sends no
/// statement at all (`NotHeld` comes from the lock's own record), so silence cannot
/// delay it.
#[test]
fn unlock_gives_up_on_a_silent_network_and_without_a_level_needs_no_network() {
    rt::run(async {
        let (proxy, pool) = network().await;
        let key = support::key("silent/unlock-not-held");
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(options());
        assert!(!lock.is_held().await.unwrap());
        proxy.blackhole(true);
        let start = Instant::now();
        let result = rt::timeout(OP_TIMEOUT, lock.unlock())
            .await
            .expect("unlock hung");
        assert!(
            matches!(result, Err(Error::NotHeld { .. })),
            "unlock with nothing held: {result:?}"
        );
        assert!(start.elapsed() < Duration::from_millis(200));
        proxy.blackhole(false);
        lock.close().await.unwrap();
        pool.close().await;

        let case = give_up_case(Op::Unlock, true).await;
        println!(
            "[{}] Unlock held=true: gave up after {:?} (bound {:?}); next call failed fast after {:?}",
            rt::NAME,
            case.gave_up_after,
            case.op.bound(case.held),
            case.next_call_after
        );
    });
}

/// `lost()` on a silent network: the check goes unanswered, and after `check_timeout` the
/// lock takes the session for gone: `LockLost`, within one interval plus the check
/// timeout of the silence beginning.
#[test]
fn lost_resolves_with_lock_lost_on_a_silent_network() {
    rt::run(async {
        let (proxy, pool) = network().await;
        let key = support::key("silent/lost");
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(options());
        lock.lock().await.unwrap();
        let pid = support::holders(key).await;
        assert_eq!(pid.len(), 1);

        proxy.blackhole(true);
        let start = Instant::now();
        let bound = LOST_CHECK_INTERVAL + CHECK_TIMEOUT;
        let lost = rt::timeout(bound + MARGIN * 4, lock.lost())
            .await
            .expect("lost() did not resolve on a silent network");
        let noticed = start.elapsed();
        assert!(
            matches!(lost, Error::LockLost { key: k } if k == key),
            "lost() on a silent network: {lost:?}"
        );
        assert!(
            noticed + EARLY >= bound && noticed <= bound + MARGIN,
            "lost() noticed after {noticed:?}; bound {bound:?}"
        );
        assert_eq!(lock.exclusive_levels(), 0);
        println!(
            "[{}] lost() on a silent network: LockLost after {noticed:?} (interval {:?} + check timeout {:?})",
            rt::NAME,
            LOST_CHECK_INTERVAL,
            CHECK_TIMEOUT
        );
        // The loss was reported (by lost()); the next acquisition looks for a new session
        // and, the network still silent, fails fast.
        let start = Instant::now();
        let next = rt::timeout(ACQUIRE_TIMEOUT + MARGIN * 4, lock.try_lock())
            .await
            .expect("the call after lost() hung");
        assert!(
            matches!(next, Err(Error::Database(sqlx::Error::PoolTimedOut))),
            "the call after lost(), still silent: {next:?}"
        );
        assert!(start.elapsed() <= ACQUIRE_TIMEOUT + MARGIN);
        // The server never heard of any of it.
        assert_eq!(support::holders(key).await, pid);

        proxy.blackhole(false);
        support::eventually(
            SETTLE,
            "the healed network frees the old session",
            || async { support::holders(key).await.is_empty() },
        )
        .await;
        assert!(lock.try_lock().await.unwrap(), "works again after healing");
        lock.unlock().await.unwrap();
        let lost = lock.unlock().await;
        assert!(
            matches!(lost, Err(Error::LockLost { key: k }) if k == key),
            "the unlock of the level lost on the silent network: {lost:?}"
        );
        lock.close().await.unwrap();
        pool.close().await;
    });
}

/// What an unbounded `lock()` does on a silent network: it waits. It has no operation
/// timeout by design (a wait for a lock may rightly last hours), and silence looks
/// exactly like a long wait: no error, no end-of-file, just no answer. Here a waiter is
/// queued on the server behind a holder when the network goes silent; 3 s later its
/// `lock()` is still pending (and would stay so until the network heals or the caller
/// gives up). Bound such waits with `try_lock_for`, or race `lock()` against a timeout
/// of the caller's and drop it, which ends the session (shown below).
///
/// The holder, meanwhile, is not left guessing: its `lost()` check goes unanswered and
/// resolves with `LockLost` within `lost_check_interval + check_timeout`. The server,
/// told nothing, keeps the holder's level and the waiter's place in the queue until the
/// network heals: `LockLost` means "stop the work", not "the key is free".
#[test]
fn blocking_lock_waits_on_a_silent_network_while_the_holders_lost_catches_the_loss() {
    rt::run(async {
        let (proxy, pool) = network().await;
        let key = support::key("silent/blocking");
        let mut holder = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(options());
        let mut waiter = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(options());
        holder.lock().await.unwrap();
        let holder_pid = support::holders(key).await;
        assert_eq!(holder_pid.len(), 1);
        assert!(!waiter.is_held().await.unwrap());

        // Queue the waiter on the server, and keep its future to poll on (boxed, so that
        // dropping it below really drops the wait).
        let mut waiting = Box::pin(waiter.lock());
        let queued = futures_lite::future::or(
            async {
                let _ = waiting.as_mut().await;
                false
            },
            async {
                support::eventually(SETTLE, "the waiter is queued", || async {
                    support::waiters(key).await.len() == 1
                })
                .await;
                true
            },
        )
        .await;
        assert!(queued, "lock() returned while another session held the key");
        let waiter_pid = support::waiters(key).await;

        proxy.blackhole(true);
        let silence = Instant::now();
        let lost_bound = LOST_CHECK_INTERVAL + CHECK_TIMEOUT;
        let (still_waiting, lost) = futures_lite::future::zip(
            rt::timeout(Duration::from_secs(3), waiting.as_mut()),
            async {
                let lost = rt::timeout(lost_bound + MARGIN * 4, holder.lost()).await;
                (lost, silence.elapsed())
            },
        )
        .await;
        let waited = silence.elapsed();
        assert!(
            still_waiting.is_none(),
            "lock() on a silent network returned: {still_waiting:?}"
        );
        let (lost, noticed) = lost;
        let lost = lost.expect("the holder's lost() did not resolve on a silent network");
        assert!(
            matches!(lost, Error::LockLost { key: k } if k == key),
            "{lost:?}"
        );
        assert!(
            noticed <= lost_bound + MARGIN,
            "lost() noticed after {noticed:?}"
        );
        println!(
            "[{}] blocking lock() on a silent network: still pending after {waited:?}; \
             the holder's lost() reported LockLost after {noticed:?}",
            rt::NAME
        );

        // The server knows nothing: the holder's level and the waiter's place stay.
        assert_eq!(support::holders(key).await, holder_pid);
        assert_eq!(support::waiters(key).await, waiter_pid);

        // Giving up on the wait ends the waiter's session (client side; the server hears
        // of it when the network heals).
        drop(waiting);
        proxy.blackhole(false);
        support::eventually(SETTLE, "the healed network frees both sessions", || async {
            support::holders(key).await.is_empty() && support::waiters(key).await.is_empty()
        })
        .await;

        // Both locks work again, on new sessions.
        assert!(holder.try_lock().await.unwrap());
        assert!(!waiter.try_lock().await.unwrap());
        let closed = holder.close().await;
        assert!(
            matches!(closed, Err(Error::LockLost { key: k }) if k == key),
            "the holder's lost level, never unlocked, is reported at close: {closed:?}"
        );
        assert!(waiter.try_lock().await.unwrap());
        waiter.close().await.unwrap();
        assert!(support::holders(key).await.is_empty());
        pool.close().await;
    });
}

/// The proxy itself: a silent proxy really is silent (a query through it gets no
/// answer), forwards again when healed, and a cut ends the connection at once.
#[test]
fn the_proxy_silences_heals_and_cuts() {
    rt::run(async {
        let proxy = Proxy::start();
        let mut conn = support::connect_at(&proxy.url()).await;
        assert_eq!(proxy.connections(), 1);
        let pid = support::backend_pid(&mut conn).await;
        proxy.blackhole(true);
        let mut query = Box::pin(sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut conn));
        assert!(
            rt::timeout(Duration::from_millis(500), query.as_mut())
                .await
                .is_none(),
            "a query through a silent proxy was answered"
        );
        proxy.blackhole(false);
        let one = rt::timeout(Duration::from_secs(5), query.as_mut())
            .await
            .expect("the held query is answered once the proxy heals")
            .unwrap();
        assert_eq!(one, 1);
        drop(query);
        assert_eq!(proxy.cut_all(), 1);
        let after_cut = sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&mut conn)
            .await;
        assert!(
            after_cut.is_err(),
            "a query on a cut connection: {after_cut:?}"
        );
        support::eventually(SETTLE, "the cut backend ends", || async {
            !support::backend_alive(pid).await
        })
        .await;
        assert_eq!(proxy.connections(), 0);
        assert_eq!(proxy.cuts(), 1);
    });
}

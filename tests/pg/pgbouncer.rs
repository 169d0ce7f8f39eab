//! Behind PgBouncer in transaction-pooling mode (issue 7, part 6).
//!
//! Each test starts its own PgBouncer (`support/pgbouncer.rs`) in front of the test server:
//! `pool_mode = transaction`, `server_round_robin = 1`, `default_pool_size = 4`,
//! `min_pool_size = 2`, and, on PgBouncer 1.21+, `max_prepared_statements = 100`. The
//! `pgbouncer` binary is an optional tool: without it each test prints (once) that the
//! suite did not run and how to make it run, and passes; with
//! `PGLOCK_REQUIRE_PGBOUNCER=1` (set by `.ci/run`, which installs it) a missing binary
//! fails the suite.
//!
//! A session lock cannot work there: every transaction (every autocommit statement) may
//! run on another server session. `AdvisoryLock` reads `pg_backend_pid()` with every
//! statement and refuses with [`Error::SessionNotPinned`], pointing to `pglock::xact`,
//! whose transaction-scoped locks live and die within one server session and do work.
//!
//! # Findings (PgBouncer 1.18, Debian 12's package; details in the report of issue 7)
//!
//! - Detection is opportunistic: it needs two statements of the lock to *succeed* on two
//!   different server sessions. With round-robin server selection and two warm server
//!   connections, on PgBouncer 1.21+ (prepared statements tracked) that is the first
//!   acquisition after the session set-up statement.
//! - PgBouncer before 1.21 does not track prepared statements. sqlx prepares every
//!   statement with binds as a *named* statement (`sqlx_s_N`, even with
//!   `statement_cache_capacity(0)`) in one round trip (Parse/Describe/Sync) and binds it
//!   in the next: each may land on another server session. A statement then only ever
//!   succeeds on the server session that prepared it, so the lock's operations fail with
//!   plain database errors, `26000 prepared statement "sqlx_s_N" does not exist`, or
//!   `42P05 ... already exists` (left on a server session by an earlier client), or
//!   `08P01 bind message supplies N parameters, but prepared statement requires M` (a
//!   *different* statement of the same name). These come first, and none points to
//!   `pglock::xact`; detection by backend pid comes later or, in some runs, not within
//!   30 operations. `session_lock_through_transaction_pooling_...` fails there on
//!   purpose: the lock should take 26000/42P05 on its own statements for what they mean.
//! - The pid check runs after the statement: the statement that reveals the proxy has
//!   already run on the other server session. If it was an acquisition, that server
//!   session keeps the level (checked by `the_statement_that_reveals_the_proxy_...`),
//!   and so does the first server session with any level the lock took there before.
//!   Ending the lock's client connection does not end PgBouncer's server connections
//!   (transaction mode runs no reset query unless `server_reset_query_always` is set),
//!   so those levels stay until PgBouncer closes that server connection
//!   (`server_idle_timeout`, `server_lifetime`): the key is blocked for everyone else.
//! - Transaction-scoped locks work through PgBouncer: one transaction, one server session.
//!   Before PgBouncer 1.21 that needs sqlx's named statements not to outlive the
//!   transaction: `statement_cache_capacity(0)` on the client, and
//!   `server_reset_query = DEALLOCATE ALL` with `server_reset_query_always = 1`. With the
//!   default statement cache, `xact::try_lock` fails with `26000 prepared statement
//!   "sqlx_s_1" does not exist` for good once a client connection's transaction lands on
//!   another server session (the statement was prepared on the first one). Sending the
//!   `xact` statements as unnamed statements (sqlx `.persistent(false)`: Parse and Bind
//!   then happen inside the one transaction) would make them work on any PgBouncer.

use crate::support;
use crate::support::pgbouncer as bouncer;

use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bouncer::PgBouncer;
use pglock::{AdvisoryLock, Error, LockKey, xact};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use support::rt;

/// The bound on every single operation: an answer (any answer), never a hang.
const OP_LIMIT: Duration = Duration::from_secs(20);

/// Operations a session lock may try before the proxy must have been noticed.
const MAX_OPS: usize = 30;

/// `future`, failing the test if it takes longer than [`OP_LIMIT`].
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    support::bounded(OP_LIMIT, what, future).await
}

/// A pool of client connections to PgBouncer.
async fn pool_through(bouncer: &PgBouncer, statement_cache: bool) -> PgPool {
    let mut options = PgConnectOptions::from_str(&bouncer.url()).expect("the PgBouncer URL parses");
    if !statement_cache {
        options = options.statement_cache_capacity(0);
    }
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "cannot connect through PgBouncer ({err}); its log:\n{}",
                bouncer.log()
            )
        })
}

/// Makes PgBouncer open two server connections (two transactions at once), so that with
/// round-robin selection one client's consecutive transactions alternate between them.
/// Returns their backend pids.
async fn warm_two_server_sessions(pool: &PgPool) -> (i32, i32) {
    let mut first = bounded("BEGIN", pool.begin()).await.expect("BEGIN");
    let mut second = bounded("BEGIN", pool.begin()).await.expect("BEGIN");
    let pids = (
        bounded("pid", pid_in(&mut first)).await,
        bounded("pid", pid_in(&mut second)).await,
    );
    bounded("COMMIT", first.commit()).await.expect("COMMIT");
    bounded("COMMIT", second.commit()).await.expect("COMMIT");
    assert_ne!(
        pids.0, pids.1,
        "two open transactions through PgBouncer run on two server sessions"
    );
    pids
}

/// `pg_backend_pid()` in a transaction, as an unnamed statement (no bind parameters: the
/// simple query protocol, which every PgBouncer version passes through).
async fn pid_in(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> i32 {
    use sqlx::Row;
    let row = sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(&mut **tx)
        .await
        .expect("pg_backend_pid() in the transaction");
    row.try_get(0).expect("an int4 pid")
}

/// Database errors that a session lock meets behind PgBouncer before 1.21 (see the module
/// docs): sqlx's prepared statements land on other server sessions than their binds.
fn prepared_statement_mixup(err: &Error) -> bool {
    match err {
        Error::Database(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("26000" | "42P05" | "08P01"))
        }
        _ => false,
    }
}

/// How a run of operations handles the errors PgBouncer < 1.21 causes before detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BeforeDetection {
    /// Any error but `NotHeld` from an unlock must be the detection itself.
    Strict,
    /// As `Strict`, but a run whose every operation succeeded (each answered from the
    /// lock's own server session: the proxy never moved it) ends with `None`.
    StrictOrPinned,
    /// Prepared-statement mix-ups are noted and the run goes on.
    TolerateMixups,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    TryLock,
    TryLockShared,
    IsHeld,
    Unlock,
}

impl Op {
    async fn run(self, lock: &mut AdvisoryLock) -> pglock::Result<String> {
        match self {
            Op::TryLock => lock.try_lock().await.map(|got| format!("Ok({got})")),
            Op::TryLockShared => lock.try_lock_shared().await.map(|got| format!("Ok({got})")),
            Op::IsHeld => lock.is_held().await.map(|held| format!("Ok({held})")),
            Op::Unlock => lock.unlock().await.map(|()| "Ok(())".to_owned()),
        }
    }
}

/// What happened until the lock noticed the proxy.
struct Detection {
    /// 1-based number of the operation that returned `SessionNotPinned`.
    op_number: usize,
    op: Op,
    error: Error,
    /// Every operation before it, with its result.
    before: Vec<(Op, String)>,
}

/// Runs `ops` in a cycle on `lock` until one returns `SessionNotPinned` (at most
/// [`MAX_OPS`]), checking that every other result is one a caller could expect. `None`
/// if no operation did (only allowed with [`BeforeDetection::TolerateMixups`]).
async fn run_until_detected(
    lock: &mut AdvisoryLock,
    ops: &[Op],
    mode: BeforeDetection,
    version: (u32, u32),
) -> Option<Detection> {
    let mut before = Vec::new();
    for (n, op) in ops.iter().copied().cycle().take(MAX_OPS).enumerate() {
        let result = bounded(&format!("{op:?}"), op.run(lock)).await;
        match result {
            Err(error @ Error::SessionNotPinned { .. }) => {
                return Some(Detection {
                    op_number: n + 1,
                    op,
                    error,
                    before,
                });
            }
            Ok(outcome) => before.push((op, outcome)),
            // unlock with nothing held: the lock's own record, before any statement.
            Err(err @ Error::NotHeld { .. }) if op == Op::Unlock => {
                before.push((op, format!("Err({err:?})")))
            }
            Err(err) if prepared_statement_mixup(&err) => match mode {
                BeforeDetection::TolerateMixups => before.push((op, format!("Err({err})"))),
                BeforeDetection::Strict | BeforeDetection::StrictOrPinned => panic!(
                    "library bug: behind PgBouncer {version:?} in transaction mode, operation \
                     {} ({op:?}) of a session lock failed with a plain database error that \
                     does not point to pglock::xact:\n  {err}\n  ({err:?})\nThe lock's own \
                     prepared statement was missing on (26000), or clashed with another on \
                     (42P05, 08P01), the server session its bind landed on: PgBouncer < 1.21 \
                     moved the connection between server sessions. The lock should report \
                     that as Error::SessionNotPinned (or an error of the same advice).\n\
                     Operations before it: {before:?}",
                    n + 1
                ),
            },
            Err(err) => panic!(
                "operation {} ({op:?}) through PgBouncer failed with an unexpected error: \
                 {err:?}\n({err})\nbefore it: {before:#?}",
                n + 1
            ),
        }
    }
    match mode {
        BeforeDetection::TolerateMixups | BeforeDetection::StrictOrPinned => None,
        BeforeDetection::Strict => panic!(
            "{MAX_OPS} operations of a session lock through PgBouncer {version:?} in \
             transaction mode without Error::SessionNotPinned: {before:?}"
        ),
    }
}

/// The findings after a detection, printed for the report.
async fn report(
    test: &str,
    bouncer: &PgBouncer,
    key: LockKey,
    detection: &Detection,
    elapsed: Duration,
) {
    let holders = support::holders_with_mode(key).await;
    eprintln!(
        "[{}] {test}: PgBouncer {:?}: op #{} ({:?}) returned {:?} after {elapsed:?}; \
         before it: {:?}; holders of the key afterwards (server sessions of PgBouncer): {holders:?}",
        rt::NAME,
        bouncer.version(),
        detection.op_number,
        detection.op,
        detection.error,
        detection.before,
    );
}

/// try_lock / is_held / unlock through PgBouncer: within a few operations one returns
/// `SessionNotPinned`, whose message points to the transaction-scoped locks; the lock
/// stays refused afterwards, and closing it works.
#[test]
fn session_lock_through_transaction_pooling_is_refused_with_session_not_pinned_pointing_to_xact() {
    if bouncer::required().is_none() {
        return;
    }
    rt::run(async {
        let bouncer = PgBouncer::transaction_pooling(&support::database_url(), &[]);
        let pool = pool_through(&bouncer, true).await;
        let servers = warm_two_server_sessions(&pool).await;
        let key = support::key("pgbouncer/session_lock_refused");

        // PgBouncer sometimes keeps one client on one server session for a while: then
        // every statement runs pinned (checked: each answered from the lock's session),
        // nothing is wrong yet, and a fresh lock tries again (three in all).
        let mut attempt = 0;
        let (mut lock, detection, elapsed) = loop {
            attempt += 1;
            let start = Instant::now();
            let mut lock = bounded("AdvisoryLock::new", AdvisoryLock::new(&pool, key))
                .await
                .expect("a lock through PgBouncer");
            let mode = match attempt {
                3 => BeforeDetection::Strict,
                _ => BeforeDetection::StrictOrPinned,
            };
            let ops = [Op::TryLock, Op::IsHeld, Op::Unlock];
            match run_until_detected(&mut lock, &ops, mode, bouncer.version()).await {
                Some(detection) => break (lock, detection, start.elapsed()),
                None => {
                    bounded("close", lock.close())
                        .await
                        .expect("close a pinned lock");
                    warm_two_server_sessions(&pool).await;
                }
            }
        };
        report("session_lock_refused", &bouncer, key, &detection, elapsed).await;

        let Error::SessionNotPinned {
            key: reported_key,
            first_pid,
            pid,
        } = &detection.error
        else {
            unreachable!()
        };
        assert_eq!(*reported_key, key);
        // Seen as two backend pids, or (PgBouncer < 1.21) as a prepared statement missing
        // on the server session the connection was moved to: then there is no second pid.
        if let (Some(first_pid), Some(pid)) = (*first_pid, *pid) {
            assert_ne!(first_pid, pid, "two different server sessions");
            for server in [first_pid, pid] {
                assert!(
                    support::backend_alive(server).await,
                    "{server} is one of PgBouncer's server sessions (warmed up: \
                     {servers:?}), still open"
                );
            }
        }
        let message = detection.error.to_string();
        for words in ["pglock::xact", "transaction-scoped", "PgBouncer", "pooling"] {
            assert!(
                message.contains(words),
                "the message points to transaction-scoped locks ({words:?}): {message}"
            );
        }
        assert!(
            elapsed < Duration::from_secs(10),
            "noticed quickly: {elapsed:?}"
        );

        // Refused for good: every later operation says the same, at once.
        for op in [Op::TryLock, Op::IsHeld, Op::Unlock, Op::TryLockShared] {
            let again = Instant::now();
            match bounded(&format!("{op:?} after detection"), op.run(&mut lock)).await {
                Err(Error::SessionNotPinned { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{op:?} after SessionNotPinned: {other:?}"),
            }
            assert!(
                again.elapsed() < Duration::from_secs(1),
                "{op:?} refused at once"
            );
        }
        match bounded("lock_shared", lock.lock_shared()).await {
            Err(Error::SessionNotPinned { .. }) => {}
            other => panic!("lock_shared after SessionNotPinned: {other:?}"),
        }
        // A level taken before the proxy showed stays on its server session, out of the
        // lock's hands: `close` says why once more (and closes all the same); with no
        // level taken, it is Ok.
        match bounded("close", lock.close()).await {
            Ok(()) | Err(Error::SessionNotPinned { .. }) => {}
            other => panic!("close after detection: {other:?}"),
        }
        assert!(lock.is_closed());
        match bounded("try_lock after close", lock.try_lock()).await {
            Err(Error::Closed) => {}
            other => panic!("try_lock after close: {other:?}"),
        }
        bounded("pool close", pool.close()).await;
    });
}

/// The statement that reveals the proxy ran on a server session the lock does not own:
/// if it takes a level there, that level stays on PgBouncer's server connection after the
/// lock gives up (the key is blocked for every other client until PgBouncer closes that
/// connection). An acquisition must not act on a server session other than the one the
/// lock recorded.
#[test]
fn the_statement_that_reveals_the_proxy_takes_no_level_on_the_other_server_session() {
    if bouncer::required().is_none() {
        return;
    }
    rt::run(async {
        let bouncer = PgBouncer::transaction_pooling(&support::database_url(), &[]);
        let pool = pool_through(&bouncer, true).await;
        warm_two_server_sessions(&pool).await;
        let key = support::key("pgbouncer/no_level_on_the_other_session");

        let start = Instant::now();
        let mut lock = bounded("AdvisoryLock::new", AdvisoryLock::new(&pool, key))
            .await
            .expect("a lock through PgBouncer");
        // Only shared acquisitions: each succeeds wherever it runs, so the statement that
        // reveals the proxy is always one that can take a level.
        // Before PgBouncer 1.21, prepared-statement errors come first (and are the other
        // test's business); this one is about the statement that reveals the proxy.
        let detection = run_until_detected(
            &mut lock,
            &[Op::TryLockShared],
            BeforeDetection::TolerateMixups,
            bouncer.version(),
        )
        .await;
        let elapsed = start.elapsed();
        let Some(detection) = detection else {
            assert!(
                !bouncer.tracks_prepared_statements(),
                "PgBouncer {:?} tracks prepared statements: the proxy must be noticed",
                bouncer.version()
            );
            eprintln!(
                "[{}] PgBouncer {:?}: no statement of the lock succeeded on a second server \
                 session within {MAX_OPS} operations (prepared-statement errors only); \
                 nothing to check in this run. Holders: {:?}",
                rt::NAME,
                bouncer.version(),
                support::holders_with_mode(key).await
            );
            let _ = bounded("close", lock.close()).await;
            return;
        };
        report(
            "no_level_on_the_other_session",
            &bouncer,
            key,
            &detection,
            elapsed,
        )
        .await;
        let Error::SessionNotPinned { first_pid, pid, .. } = detection.error else {
            unreachable!()
        };
        // The level taken on the first server session is out of the lock's hands now:
        // `close` reports it lost (and closes all the same).
        match bounded("close", lock.close()).await {
            Ok(()) | Err(Error::LockLost { .. }) => {}
            other => panic!("close after detection: {other:?}"),
        }
        bounded("pool close", pool.close()).await;

        let holders = support::holders_with_mode(key).await;
        let on_first: Vec<_> = holders
            .iter()
            .filter(|(p, _)| Some(*p) == first_pid)
            .collect();
        if !on_first.is_empty() {
            // Levels the lock took on its first server session before it noticed stay
            // there too; no statement can be sent to that server session on purpose.
            eprintln!(
                "[{}] finding: levels taken on the first server session (pid {first_pid:?}) \
                 before detection stay on PgBouncer's server connection: {on_first:?}",
                rt::NAME
            );
        }
        // Every other server session: the statement that revealed the proxy (guarded by
        // the recorded pid) must have taken nothing anywhere but on the first one.
        let on_other: Vec<_> = holders
            .iter()
            .filter(|(p, _)| Some(*p) != first_pid)
            .collect();
        assert!(
            on_other.is_empty(),
            "library bug: the statement that returned SessionNotPinned (op #{} {:?}) took a \
             level on server session {pid:?}, which the lock never owned; it stays on \
             PgBouncer's server connection, blocking the key for everyone: {on_other:?} \
             (all holders: {holders:?})",
            detection.op_number,
            detection.op,
        );
        // PgBouncer stops here (its server connections end, and their levels with them).
        drop(bouncer);
    });
}

/// PgBouncer's settings and the client's statement cache that let sqlx run statements
/// with binds inside transactions through this PgBouncer (see the module docs).
fn transaction_setup(url: &str) -> (PgBouncer, bool) {
    let probe = bouncer::version(&bouncer::binary());
    if probe >= (1, 21) {
        (PgBouncer::transaction_pooling(url, &[]), true)
    } else {
        (
            PgBouncer::transaction_pooling(
                url,
                &[
                    "server_reset_query = DEALLOCATE ALL",
                    "server_reset_query_always = 1",
                ],
            ),
            false,
        )
    }
}

/// `pglock::xact` through PgBouncer: a transaction's lock is held until it commits (other
/// sessions, through PgBouncer or direct, cannot take the key meanwhile) and is free
/// right after; timed and blocking acquisitions work too. Several rounds, with the
/// server sessions rotating.
#[test]
fn transaction_scoped_locks_work_through_transaction_pooling() {
    if bouncer::required().is_none() {
        return;
    }
    rt::run(async {
        let (bouncer, statement_cache) = transaction_setup(&support::database_url());
        let pool = pool_through(&bouncer, statement_cache).await;
        let servers = warm_two_server_sessions(&pool).await;
        let key = support::key("pgbouncer/xact");
        // Dedicated client connections: the holder's, the other session's, and two that
        // pin server sessions so that the holder's next transaction must take another one
        // (the same client statements, prepared once, then run on a new server session).
        let mut holder_conn = bounded("acquire", pool.acquire()).await.expect("acquire");
        let mut other_conn = bounded("acquire", pool.acquire()).await.expect("acquire");
        let mut pin_a = bounded("acquire", pool.acquire()).await.expect("acquire");
        let mut pin_b = bounded("acquire", pool.acquire()).await.expect("acquire");
        let mut holder_pids = std::collections::BTreeSet::new();
        let mut server_pids = std::collections::BTreeSet::from([servers.0, servers.1]);

        for round in 0..4 {
            let mut pins = Vec::new();
            if round % 2 == 1 {
                for pin in [&mut pin_a, &mut pin_b] {
                    let mut tx = bounded("BEGIN", pin.begin()).await.expect("BEGIN");
                    server_pids.insert(bounded("pid", pid_in(&mut tx)).await);
                    pins.push(tx);
                }
            }
            let mut holder = bounded("BEGIN", holder_conn.begin()).await.expect("BEGIN");
            let holder_pid = bounded("pid", pid_in(&mut holder)).await;
            for tx in pins {
                bounded("COMMIT", tx.commit()).await.expect("COMMIT");
            }
            assert!(
                bounded("xact::try_lock", xact::try_lock(&mut holder, key))
                    .await
                    .expect("xact::try_lock through PgBouncer"),
                "round {round}: the key is free"
            );
            holder_pids.insert(holder_pid);
            server_pids.insert(holder_pid);
            assert_eq!(
                support::holders(key).await,
                vec![holder_pid],
                "round {round}: the transaction's server session holds the key"
            );

            // Another client of PgBouncer, in its own transaction, cannot take it.
            let mut other = bounded("BEGIN", other_conn.begin()).await.expect("BEGIN");
            let other_pid = bounded("pid", pid_in(&mut other)).await;
            assert_ne!(
                other_pid, holder_pid,
                "two transactions, two server sessions"
            );
            assert!(
                !bounded("xact::try_lock", xact::try_lock(&mut other, key))
                    .await
                    .expect("xact::try_lock on the other transaction"),
                "round {round}: held by the first transaction"
            );
            assert!(
                !bounded(
                    "xact::try_lock_shared",
                    xact::try_lock_shared(&mut other, key)
                )
                .await
                .expect("xact::try_lock_shared"),
                "round {round}: no shared level beside an exclusive one"
            );
            let waited = Instant::now();
            assert!(
                !bounded(
                    "xact::try_lock_for",
                    xact::try_lock_for(&mut other, key, Duration::from_millis(300))
                )
                .await
                .expect("xact::try_lock_for times out cleanly"),
                "round {round}: a timed wait gives up"
            );
            let waited = waited.elapsed();
            assert!(
                waited >= Duration::from_millis(280) && waited < Duration::from_secs(5),
                "round {round}: the timed wait took {waited:?}"
            );
            // A session straight to the server cannot take it either.
            assert!(
                !support::free_for_another_session(key).await,
                "round {round}: held, seen from a direct session"
            );

            // The other transaction is still usable (the failed wait rolled back to its
            // savepoint) and on the same server session.
            assert_eq!(bounded("pid", pid_in(&mut other)).await, other_pid);

            // Blocking acquisition in the other transaction, granted at the commit.
            let committed = Instant::now();
            let waiter = async {
                bounded("xact::lock", xact::lock(&mut other, key))
                    .await
                    .expect("xact::lock through PgBouncer");
                committed.elapsed()
            };
            let releaser = async {
                support::eventually(
                    Duration::from_secs(10),
                    "the other transaction waits for the key",
                    || async { support::waiters(key).await == vec![other_pid] },
                )
                .await;
                bounded("COMMIT", holder.commit()).await.expect("COMMIT");
            };
            let (granted_after, ()) = futures_lite::future::zip(waiter, releaser).await;
            assert_eq!(
                support::holders(key).await,
                vec![other_pid],
                "round {round}: granted to the waiting transaction after {granted_after:?}"
            );
            bounded("ROLLBACK", other.rollback())
                .await
                .expect("ROLLBACK");
            assert!(
                support::holders(key).await.is_empty(),
                "round {round}: free after both transactions ended"
            );
            assert!(support::free_for_another_session(key).await);
        }
        eprintln!(
            "[{}] xact through PgBouncer {:?} (statement cache {}): the holder's transactions \
             ran on server sessions {holder_pids:?}; all used: {server_pids:?}",
            rt::NAME,
            bouncer.version(),
            if statement_cache { "on" } else { "off" },
        );
        assert!(
            holder_pids.len() >= 2,
            "the holder's client connection moved between server sessions: {holder_pids:?}"
        );
        for conn in [holder_conn, other_conn, pin_a, pin_b] {
            drop(conn);
        }
        bounded("pool close", pool.close()).await;
    });
}

/// A `LockClient`'s lanes are sessions like an `AdvisoryLock`'s: through PgBouncer in
/// transaction mode its locks are refused with `SessionNotPinned` within a few
/// operations, and the client's own record never claims a level it does not hold where
/// its lane's statements ran.
#[test]
fn lock_client_through_transaction_pooling_is_refused_with_session_not_pinned() {
    if bouncer::required().is_none() {
        return;
    }
    rt::run(async {
        let bouncer = PgBouncer::transaction_pooling(&support::database_url(), &[]);
        let pool = pool_through(&bouncer, true).await;
        warm_two_server_sessions(&pool).await;
        let client = pglock::LockClient::new(&pool);
        let mut refused = None;
        let mut results = Vec::new();
        for n in 0..MAX_OPS {
            let key = support::key(&format!("pgbouncer/client/{n}"));
            let mut lock = client.lock(key);
            match bounded("ClientLock::try_lock", lock.try_lock()).await {
                Err(err @ Error::SessionNotPinned { .. }) => {
                    refused = Some((n, err));
                    break;
                }
                Ok(true) => match bounded("ClientLock::unlock", lock.unlock()).await {
                    Err(err @ Error::SessionNotPinned { .. }) => {
                        refused = Some((n, err));
                        break;
                    }
                    other => results.push(format!("try_lock Ok(true), unlock {other:?}")),
                },
                Err(err) if prepared_statement_mixup(&err) => results.push(format!("{err}")),
                other => {
                    panic!("LockClient through PgBouncer, op {n}: {other:?}; before: {results:?}")
                }
            }
        }
        let (n, err) = refused.unwrap_or_else(|| {
            panic!("{MAX_OPS} operations of a LockClient through PgBouncer without SessionNotPinned: {results:?}")
        });
        println!(
            "[{}] LockClient through PgBouncer: refused at operation {} ({err})",
            rt::NAME,
            n + 1
        );
        assert!(err.to_string().contains("pglock::xact"), "{err}");
        drop(client);
        bounded("pool close", pool.close()).await;
    });
}

/// When the suite runs, PgBouncer answers `--version`; when it is required
/// (`PGLOCK_REQUIRE_PGBOUNCER=1`), a missing binary fails here with the package to install.
#[test]
fn pgbouncer_is_installed_when_the_suite_runs() {
    let Some(binary) = bouncer::required() else {
        return;
    };
    let version = bouncer::version(&binary);
    assert!(
        version >= (1, 0),
        "{}: version {version:?}",
        binary.display()
    );
}

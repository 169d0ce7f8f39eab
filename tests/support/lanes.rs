//! Looking at a `LockClient` from outside: which lane a key goes to, what `pg_locks` shows
//! for many keys at once, which backends hold them, and ending one of them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use pglock::LockKey;
use sqlx::Connection;

use super::{connect_at, database_url};

/// The lane of `lanes` a key the client does not hold yet goes to: the client's own
/// spreading (`lane_for` in `src/client/table.rs`), copied so that a test can pick keys
/// that share a lane or do not. Tests that rely on it check it against `pg_locks` (keys
/// of one lane are held by one backend).
pub fn lane_of(key: LockKey, lanes: usize) -> usize {
    let hash = match key {
        LockKey::BigInt(k) => k as u64,
        LockKey::IntPair(a, b) => ((a as u64) << 32) ^ (b as u32 as u64),
    };
    (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % lanes
}

/// `n` keys no other test uses.
pub fn keys(test: &str, n: usize) -> Vec<LockKey> {
    (0..n).map(|i| super::key(&format!("{test}/{i}"))).collect()
}

/// `n` keys no other test uses that all go to lane `lane` of `lanes`.
pub fn keys_on_lane(test: &str, lane: usize, lanes: usize, n: usize) -> Vec<LockKey> {
    (0..)
        .map(|i| super::key(&format!("{test}/lane-{lane}/{i}")))
        .filter(|key| lane_of(*key, lanes) == lane)
        .take(n)
        .collect()
}

/// One advisory row of `pg_locks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub key: LockKey,
    pub pid: i32,
    pub exclusive: bool,
    pub granted: bool,
}

/// Every advisory row of `pg_locks` on the test database for one of `keys`.
pub async fn rows(keys: &[LockKey]) -> Vec<Row> {
    rows_at(&database_url(), keys).await
}

/// Every advisory row of `pg_locks` at `url` for one of `keys`.
pub async fn rows_at(url: &str, keys: &[LockKey]) -> Vec<Row> {
    let mut conn = connect_at(url).await;
    let rows = rows_on(&mut conn, keys).await;
    let _ = conn.close().await;
    rows
}

/// Every advisory row of `pg_locks` for one of `keys`, read on `conn` (a session opened
/// beforehand: with a full lock table, a new one may fail to start).
pub async fn rows_on(conn: &mut sqlx::PgConnection, keys: &[LockKey]) -> Vec<Row> {
    let wanted: BTreeSet<LockKey> = keys.iter().copied().collect();
    let all: Vec<(i64, i64, i16, i32, bool, bool)> = sqlx::query_as(
        "SELECT classid::int8, objid::int8, objsubid, pid, mode = 'ExclusiveLock', granted \
         FROM pg_locks WHERE locktype = 'advisory'",
    )
    .fetch_all(conn)
    .await
    .expect("query pg_locks");
    let mut rows: Vec<Row> = all
        .into_iter()
        .filter_map(|(classid, objid, objsubid, pid, exclusive, granted)| {
            let key = LockKey::from_pg_locks_ids(
                u32::try_from(classid).ok()?,
                u32::try_from(objid).ok()?,
                objsubid,
            )?;
            wanted.contains(&key).then_some(Row {
                key,
                pid,
                exclusive,
                granted,
            })
        })
        .collect();
    rows.sort();
    rows
}

/// The keys of `keys` some session holds (granted), with the backends holding each.
pub async fn held(keys: &[LockKey]) -> BTreeMap<LockKey, BTreeSet<i32>> {
    let mut held: BTreeMap<LockKey, BTreeSet<i32>> = BTreeMap::new();
    for row in rows(keys).await.into_iter().filter(|r| r.granted) {
        held.entry(row.key).or_default().insert(row.pid);
    }
    held
}

/// The backends that hold one of `keys`.
pub async fn holder_pids(keys: &[LockKey]) -> BTreeSet<i32> {
    rows(keys)
        .await
        .into_iter()
        .filter(|r| r.granted)
        .map(|r| r.pid)
        .collect()
}

/// The backends that wait for one of `keys`.
pub async fn waiter_pids(keys: &[LockKey]) -> BTreeSet<i32> {
    rows(keys)
        .await
        .into_iter()
        .filter(|r| !r.granted)
        .map(|r| r.pid)
        .collect()
}

/// Whether nobody holds or waits for any of `keys`.
pub async fn untouched(keys: &[LockKey]) -> bool {
    rows(keys).await.is_empty()
}

/// Every future, polled side by side on this task; their outputs in order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        match pending {
            true => Poll::Pending,
            false => Poll::Ready(()),
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

/// A pool of at most `max` connections whose server-to-client traffic goes through a
/// loopback proxy that holds every chunk back for `delay`: an answer (or the end of a
/// terminated session) never arrives within the poll that sent the statement, so a test
/// can poll a future once and know it is still in flight.
pub async fn delayed_pool(max: u32, delay: Duration) -> sqlx::PgPool {
    delayed_pool_at(&database_url(), max, delay).await
}

/// [`delayed_pool`] to the database at `url`.
pub async fn delayed_pool_at(url: &str, max: u32, delay: Duration) -> sqlx::PgPool {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};

    fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
        std::thread::spawn(move || {
            let mut buf = vec![0_u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        std::thread::sleep(delay);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            std::thread::sleep(delay);
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        });
    }

    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("the URL parses");
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let port = listener.local_addr().expect("the proxy's address").port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (Ok(client_reader), Ok(server_writer)) = (client.try_clone(), server.try_clone())
            else {
                continue;
            };
            pump(client_reader, server_writer, Duration::ZERO);
            pump(server, client, delay);
        }
    });
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(20))
        .connect_with(sqlx::ConnectOptions::disable_statement_logging(
            options.host("127.0.0.1").port(port),
        ))
        .await
        .expect("connect through the delaying proxy")
}

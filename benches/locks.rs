//! pglock against its baselines, in the same run and on the same server: raw sqlx
//! statements, sqlx's own `PgAdvisoryLock`, and the pool's own cost.
//!
//! `cargo bench --bench locks` (or `cargo bench`). The database is `DATABASE_URL` when
//! set, otherwise a private throwaway cluster (see `support`). Per-operation costs run
//! every contender on ONE shared `PgConnection`: two connections' round trips can
//! differ several times over on a small machine, which would swamp the differences
//! measured here. Every timed loop runs on one current-thread Tokio runtime, inside
//! `iter_custom`, after one untimed warm-up round (so statement caches are warm and a
//! lock's once-per-session reads are done). See BENCHMARKS.md for results.

mod support;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use pglock::memory::MemoryLocks;
use pglock::{AdvisoryLock, LockKey};
use sqlx::postgres::{PgAdvisoryLock, PgAdvisoryLockKey, PgPool, PgPoolOptions};
use sqlx::{Connection, Either, PgConnection};
use tokio::runtime::Runtime;

use support::raw::{self, WAIT};
use support::workloads::{self, Contender};

/// Handoffs timed per iteration in `contended_handoff`.
const HANDOFFS: u64 = 200;
/// Sessions in the `readers` group.
const READERS: usize = 8;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the Tokio runtime");
    let url = support::database_url();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();

    uncontended(&mut c, &rt, &url);
    contended_handoff(&mut c, &rt, &url);
    readers(&mut c, &rt, &url);
    memory(&mut c, &rt);
    lifecycle(&mut c, &rt, &url);

    c.final_summary();
}

/// The time of `iters` rounds of `round` on the bench runtime, after optional setup
/// (untimed) and one untimed warm-up round.
macro_rules! timed {
    ($rt:expr, $iters:expr, [$(let mut $name:ident = $init:expr;)?], $round:block) => {
        $rt.block_on(async {
            $(let mut $name = $init;)?
            $round;
            let start = Instant::now();
            for _ in 0..$iters {
                $round;
            }
            start.elapsed()
        })
    };
}

// ---------------------------------------------------------------------------------------
// 1. uncontended: one operation pair on a free key, every contender on one connection
// ---------------------------------------------------------------------------------------

fn uncontended(c: &mut Criterion, rt: &Runtime, url: &str) {
    let mut conn = rt
        .block_on(PgConnection::connect(url))
        .expect("connect to the bench database");
    let conn = &mut conn;
    let key = LockKey::from_name("pglock-bench/uncontended");
    let k = raw::big(key);
    let sqlx_lock = PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(k));

    let mut group = c.benchmark_group("uncontended");
    group.sample_size(30);

    // try_lock + unlock
    group.bench_function(BenchmarkId::new("pglock", "try_lock+unlock"), |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [let mut lock = AdvisoryLock::with_connection(&mut *conn, key);], {
                assert!(lock.try_lock().await.unwrap());
                lock.unlock().await.unwrap();
            })
        })
    });
    group.bench_function(BenchmarkId::new("raw_sqlx", "try_lock+unlock"), |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [], {
                assert!(raw::try_lock(conn, k).await);
                raw::unlock(conn, k).await;
            })
        })
    });
    group.bench_function(
        BenchmarkId::new("sqlx_pg_advisory_lock", "try_lock+unlock"),
        |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, [], {
                    match sqlx_lock.try_acquire(&mut *conn).await.unwrap() {
                        Either::Left(guard) => {
                            guard.release_now().await.unwrap();
                        }
                        Either::Right(_) => panic!("free key not acquired"),
                    }
                })
            })
        },
    );

    // lock + unlock
    group.bench_function(BenchmarkId::new("pglock", "lock+unlock"), |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [let mut lock = AdvisoryLock::with_connection(&mut *conn, key);], {
                lock.lock().await.unwrap();
                lock.unlock().await.unwrap();
            })
        })
    });
    group.bench_function(BenchmarkId::new("raw_sqlx", "lock+unlock"), |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [], {
                raw::lock(conn, k).await;
                raw::unlock(conn, k).await;
            })
        })
    });
    group.bench_function(
        BenchmarkId::new("sqlx_pg_advisory_lock", "lock+unlock"),
        |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, [], {
                    let guard = sqlx_lock.acquire(&mut *conn).await.unwrap();
                    guard.release_now().await.unwrap();
                })
            })
        },
    );

    // try_lock_shared + unlock_shared (sqlx's PgAdvisoryLock has no shared mode)
    group.bench_function(
        BenchmarkId::new("pglock", "try_lock_shared+unlock_shared"),
        |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, [let mut lock = AdvisoryLock::with_connection(&mut *conn, key);], {
                    assert!(lock.try_lock_shared().await.unwrap());
                    lock.unlock_shared().await.unwrap();
                })
            })
        },
    );
    group.bench_function(
        BenchmarkId::new("raw_sqlx", "try_lock_shared+unlock_shared"),
        |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, [], {
                    assert!(raw::try_lock_shared(conn, k).await);
                    raw::unlock_shared(conn, k).await;
                })
            })
        },
    );

    // try_lock_for(1s) + unlock: granted at once (sqlx's PgAdvisoryLock has no timed wait)
    group.bench_function(BenchmarkId::new("pglock", "try_lock_for+unlock"), |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [let mut lock = AdvisoryLock::with_connection(&mut *conn, key);], {
                assert!(lock.try_lock_for(WAIT).await.unwrap());
                lock.unlock().await.unwrap();
            })
        })
    });
    group.bench_function(BenchmarkId::new("raw_sqlx", "try_lock_for+unlock"), |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [], {
                raw::try_lock_for(conn, k).await;
                raw::unlock(conn, k).await;
            })
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------
// 2. contended_handoff: N sessions taking turns on one key with blocking lock/unlock
// ---------------------------------------------------------------------------------------

fn contended_handoff(c: &mut Criterion, rt: &Runtime, url: &str) {
    let key = LockKey::from_name("pglock-bench/handoff");
    let mut group = c.benchmark_group("contended_handoff");
    group
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(HANDOFFS));
    for n in [2usize, 8, 32] {
        // The same N sessions for both contenders.
        let mut conns = rt.block_on(workloads::connections(url, n));
        for (name, who) in [("pglock", Contender::Pglock), ("raw_sqlx", Contender::Raw)] {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        workloads::handoff_run(&mut conns, key, HANDOFFS, who).await; // warm-up
                        let handoffs = iters * HANDOFFS;
                        workloads::handoff_run(&mut conns, key, handoffs, who)
                            .await
                            .0
                    })
                })
            });
        }
        rt.block_on(workloads::close(conns));
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------
// 3. readers: N sessions taking and releasing the shared lock at once; memory
// ---------------------------------------------------------------------------------------

fn readers(c: &mut Criterion, rt: &Runtime, url: &str) {
    let key = LockKey::from_name("pglock-bench/readers");
    let mut conns = rt.block_on(workloads::connections(url, READERS));
    let mut group = c.benchmark_group("readers");
    // One iteration: every session takes and releases the shared lock once.
    group.throughput(Throughput::Elements(READERS as u64));
    for (name, who) in [("pglock", Contender::Pglock), ("raw_sqlx", Contender::Raw)] {
        group.bench_with_input(BenchmarkId::new(name, READERS), &READERS, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    workloads::readers_run(&mut conns, key, 1, who).await; // warm-up
                    workloads::readers_run(&mut conns, key, iters, who).await
                })
            })
        });
    }
    group.finish();
    rt.block_on(workloads::close(conns));
}

fn memory(c: &mut Criterion, rt: &Runtime) {
    let locks = MemoryLocks::new();
    let mut lock = locks.lock("pglock-bench/memory");
    let mut group = c.benchmark_group("memory");
    group.bench_function("try_lock+unlock", |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [], {
                assert!(lock.try_lock().await.unwrap());
                lock.unlock().await.unwrap();
            })
        })
    });
    group.bench_function("lock+unlock", |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [], {
                lock.lock().await.unwrap();
                lock.unlock().await.unwrap();
            })
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------
// 4. lifecycle: a lock's own connection from a warm pool, against the pool alone
// ---------------------------------------------------------------------------------------

fn lifecycle(c: &mut Criterion, rt: &Runtime, url: &str) {
    // One connection: every cycle waits for the previous one's return to the pool (a
    // PoolConnection goes back in a spawned task), so the pool never opens another.
    let pool: PgPool = rt
        .block_on(PgPoolOptions::new().max_connections(1).connect(url))
        .expect("connect to the bench database");
    rt.block_on(async { drop(pool.acquire().await.unwrap()) });
    let key = LockKey::from_name("pglock-bench/lifecycle");
    let k = raw::big(key);
    let pool = &pool;

    let mut group = c.benchmark_group("lifecycle");
    group.bench_function(BenchmarkId::new("pglock", "new+close"), |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [], {
                let mut lock = AdvisoryLock::new(pool, key).await.unwrap();
                lock.close().await.unwrap();
            })
        })
    });
    group.bench_function(BenchmarkId::new("pool", "acquire+drop"), |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, [], {
                drop(pool.acquire().await.unwrap());
            })
        })
    });
    group.bench_function(
        BenchmarkId::new("pglock", "new+try_lock+unlock+close"),
        |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, [], {
                    let mut lock = AdvisoryLock::new(pool, key).await.unwrap();
                    assert!(lock.try_lock().await.unwrap());
                    lock.unlock().await.unwrap();
                    lock.close().await.unwrap();
                })
            })
        },
    );
    group.bench_function(
        BenchmarkId::new("raw_sqlx", "acquire+try_lock+unlock+drop"),
        |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, [], {
                    let mut conn = pool.acquire().await.unwrap();
                    assert!(raw::try_lock(&mut conn, k).await);
                    raw::unlock(&mut conn, k).await;
                    drop(conn);
                })
            })
        },
    );
    group.finish();
}

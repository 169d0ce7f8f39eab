//! Differential test: the same seeded random operation sequences against `MemoryLocks`
//! and PostgreSQL, comparing every result, every queued wait that ended (and in which
//! step), and the holders and waiters seen from outside after every step.
//!
//! Steps are deterministic: a wait runs in a task of its own, and the next step starts
//! only once every pending wait shows as a waiter (or has ended); after each step the
//! waits that ended are recorded. PostgreSQL's sessions run with `deadlock_timeout =
//! 100ms` (a session setting, `SET` by the test's pool; the server is untouched), and some
//! timed waits run longer than that, so its timed deadlock check gets every chance to find
//! something `MemoryLocks` does not model. On a difference the test prints the seed and
//! the shortest failing sequence it can find by removing steps.
//!
//! `PGLOCK_DIFFERENTIAL_SEED` and `PGLOCK_DIFFERENTIAL_SEQUENCES` run other sequences.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future;
use pglock::memory::MemoryLocks;
use pglock::{DistributedLock, Error, LockKey, LockMode, LockProvider};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor, PgConnection};

use crate::support::{self, rt};

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const SEQUENCES: u64 = 300;
/// How long a step may take to settle before that counts as a difference.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// Runs of both providers the shrinking may spend.
const SHRINK_RUNS: usize = 150;

#[test]
fn memory_locks_match_postgres_on_random_sequences() {
    rt::run(check_random_sequences());
}

async fn check_random_sequences() {
    let seed = env_or("PGLOCK_DIFFERENTIAL_SEED", SEED);
    let count = env_or("PGLOCK_DIFFERENTIAL_SEQUENCES", SEQUENCES);
    let pool = postgres_pool().await;
    let mut observer = support::connect().await;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut tally = Tally::default();
    for n in 0..count {
        let sequence = Sequence::random(&mut rng);
        tally.steps += sequence.steps.len();
        let difference = match compare(&pool, &mut observer, &sequence).await {
            Ok(trace) => {
                tally.count(&trace);
                continue;
            }
            Err(difference) => difference,
        };
        let shortest = shrink(&pool, &mut observer, sequence.clone()).await;
        let difference = compare(&pool, &mut observer, &shortest)
            .await
            .err()
            .unwrap_or(difference);
        panic!(
            "MemoryLocks and PostgreSQL differ on sequence {n} of seed {seed:#x} \
                 (PGLOCK_DIFFERENTIAL_SEED={seed}).\nShortest failing sequence found:\n\
                 {shortest}\n{difference}"
        );
    }
    eprintln!(
        "differential: {count} sequences, the same on both providers, in {:?} on {}: {tally}",
        started.elapsed(),
        rt::NAME
    );
}

/// What the sequences exercised, to show that they reach the interesting cases.
#[derive(Default)]
struct Tally {
    steps: usize,
    refused: usize,
    ended_by_others: usize,
    deadlocks: usize,
    skipped: usize,
}

impl Tally {
    fn count(&mut self, trace: &[String]) {
        for line in trace {
            let (step, ended) = line.split_once("; ended [").unwrap_or((line, ""));
            self.refused += step.ends_with("-> Ok(false)") as usize;
            self.deadlocks += line.matches("Deadlock").count();
            self.skipped += line.contains("skipped") as usize;
            self.ended_by_others += ended.split(']').next().unwrap_or("").matches("->").count();
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} steps, {} tries or timed waits refused, {} waits ended in a later step, \
             {} deadlocks, {} skipped",
            self.steps, self.refused, self.ended_by_others, self.deadlocks, self.skipped
        )
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The test's pool: every session it opens gets a short `deadlock_timeout`.
async fn postgres_pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(12)
        .acquire_timeout(Duration::from_secs(20))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET deadlock_timeout = '100ms'").await?;
                Ok(())
            })
        })
        .connect(&support::database_url())
        .await
        .unwrap_or_else(|err| panic!("cannot reach the test database: {err}"))
}

/// A tiny deterministic generator (SplitMix64), so a seed names a run forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Shared `shared_percent` times in a hundred.
    fn mode(&mut self, shared_percent: usize) -> LockMode {
        match self.below(100) < shared_percent {
            true => LockMode::Shared,
            false => LockMode::Exclusive,
        }
    }
}

/// How often, in a hundred, an operation is for the shared mode.
#[derive(Clone, Copy)]
struct Shares {
    tries: usize,
    waits: usize,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Try(LockMode),
    /// `try_lock_for(ZERO)`.
    TryZero(LockMode),
    /// A timed wait the step waits for; some are longer than `deadlock_timeout`.
    Timed(LockMode, Duration),
    /// A blocking wait in a task of its own.
    Wait(LockMode),
    /// A long timed wait in a task of its own (it ends before its timeout).
    WaitFor(LockMode),
    Unlock(LockMode),
    IsHeld,
    /// Close, then go on with a new session on the same key.
    Close,
}

impl Op {
    /// `shared` is how often, in a hundred, tries and unlocks are for the shared mode,
    /// and waits.
    fn random(rng: &mut Rng, shared: Shares) -> Op {
        let mode = rng.mode(shared.tries);
        let wait_mode = rng.mode(shared.waits);
        match rng.below(100) {
            0..28 => Op::Try(mode),
            28..33 => Op::TryZero(mode),
            33..43 => Op::Timed(
                wait_mode,
                [30, 150][rng.below(2)] * Duration::from_millis(1),
            ),
            43..58 => Op::Wait(wait_mode),
            58..63 => Op::WaitFor(wait_mode),
            63..86 => Op::Unlock(mode),
            86..92 => Op::IsHeld,
            _ => Op::Close,
        }
    }
}

fn suffix(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "",
        LockMode::Shared => "_shared",
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Try(m) => write!(f, "try_lock{}()", suffix(m)),
            Op::TryZero(m) => write!(f, "try_lock{}_for(0)", suffix(m)),
            Op::Timed(m, t) => write!(f, "try_lock{}_for({t:?})", suffix(m)),
            Op::Wait(m) => write!(f, "lock{}() in a task", suffix(m)),
            Op::WaitFor(m) => write!(f, "try_lock{}_for(10s) in a task", suffix(m)),
            Op::Unlock(m) => write!(f, "unlock{}()", suffix(m)),
            Op::IsHeld => write!(f, "is_held()"),
            Op::Close => write!(f, "close(), then a new session"),
        }
    }
}

#[derive(Clone, Debug)]
struct Step {
    session: usize,
    op: Op,
}

/// Sessions `0..sessions`, session `s` on key `s % keys`.
#[derive(Clone, Debug)]
struct Sequence {
    sessions: usize,
    keys: usize,
    steps: Vec<Step>,
}

impl Sequence {
    fn random(rng: &mut Rng) -> Sequence {
        let sessions = 2 + rng.below(3);
        // Two keys only with four sessions: two on each.
        let keys = if sessions == 4 { 1 + rng.below(2) } else { 1 };
        // Mostly shared, mostly exclusive, or even, for tries and waits apart: each mix
        // reaches other queue shapes (mostly shared tries and exclusive waits: upgrades).
        let shared = Shares {
            tries: [25, 50, 75][rng.below(3)],
            waits: [25, 50, 75][rng.below(3)],
        };
        let steps = (0..8 + rng.below(12))
            .map(|_| Step {
                session: rng.below(sessions),
                op: Op::random(rng, shared),
            })
            .collect();
        Sequence {
            sessions,
            keys,
            steps,
        }
    }
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  {} sessions on {} key(s):", self.sessions, self.keys)?;
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "  {i}: s{} {}", step.session, step.op)?;
        }
        Ok(())
    }
}

/// What each provider did, step by step, where they first part.
struct Difference {
    memory: Vec<String>,
    postgres: Vec<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = (0..)
            .find(|&i| self.memory.get(i) != self.postgres.get(i))
            .unwrap_or(0);
        writeln!(f, "First difference at line {first}.")?;
        for (name, trace) in [
            ("MemoryLocks", &self.memory),
            ("PostgreSQL", &self.postgres),
        ] {
            writeln!(f, "{name}:")?;
            for line in trace {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

/// Runs `sequence` on both providers at once, on keys of their own: the trace both
/// agree on, or where they differ.
async fn compare(
    pool: &PgPool,
    observer: &mut PgConnection,
    sequence: &Sequence,
) -> Result<Vec<String>, Difference> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let keys: Vec<LockKey> = (0..sequence.keys)
        .map(|k| support::key(&format!("differential/{run}/{k}")))
        .collect();
    let locks = MemoryLocks::new();
    let memory = Target {
        provider: Arc::new(locks.clone()),
        observer: Observer::Memory(locks),
        keys: keys.clone(),
    };
    let postgres = Target {
        provider: Arc::new(pool.clone()),
        observer: Observer::Postgres(observer),
        keys,
    };
    let (memory, postgres) =
        future::zip(memory.execute(sequence), postgres.execute(sequence)).await;
    match memory == postgres {
        true => Ok(memory),
        false => Err(Difference { memory, postgres }),
    }
}

/// The shortest sequence found, by removing one step at a time, that still differs.
async fn shrink(pool: &PgPool, observer: &mut PgConnection, mut sequence: Sequence) -> Sequence {
    let mut runs = 0;
    'smaller: while runs < SHRINK_RUNS {
        for i in 0..sequence.steps.len() {
            let mut candidate = sequence.clone();
            candidate.steps.remove(i);
            runs += 1;
            if compare(pool, observer, &candidate).await.is_err() {
                sequence = candidate;
                continue 'smaller;
            }
            if runs >= SHRINK_RUNS {
                break 'smaller;
            }
        }
        break;
    }
    sequence
}

struct Target<'a> {
    provider: Arc<dyn LockProvider>,
    observer: Observer<'a>,
    keys: Vec<LockKey>,
}

enum Observer<'a> {
    /// `pg_locks`, from a session of its own.
    Postgres(&'a mut PgConnection),
    Memory(MemoryLocks),
}

type Lock = Box<dyn DistributedLock>;

enum Slot {
    Idle(Lock),
    /// A wait in a task; the task hands the lock back with the outcome.
    Busy(rt::Task<(Lock, String)>),
    Closed,
}

impl Target<'_> {
    fn key_of(&self, session: usize) -> LockKey {
        self.keys[session % self.keys.len()]
    }

    /// The trace: one line per step, then one per closing session.
    async fn execute(mut self, sequence: &Sequence) -> Vec<String> {
        let mut slots = Vec::new();
        for s in 0..sequence.sessions {
            slots.push(Slot::Idle(self.new_lock(s).await));
        }
        let mut trace = Vec::new();
        for (i, step) in sequence.steps.iter().enumerate() {
            let outcome = self.perform(&mut slots, step).await;
            let settled = self.settle(&mut slots).await;
            trace.push(format!(
                "{i}: s{} {} -> {outcome}{settled}",
                step.session, step.op
            ));
        }
        // Close every session as soon as it is idle, so that every wait ends.
        while let Some((s, mut lock)) = take_idle(&mut slots) {
            let closed = show(&lock.close().await);
            let settled = self.settle(&mut slots).await;
            trace.push(format!("end: s{s} close() -> {closed}{settled}"));
        }
        if slots.iter().any(|slot| matches!(slot, Slot::Busy(_))) {
            trace.push("end: waits still pending with no session left to release".into());
        }
        trace
    }

    async fn new_lock(&self, session: usize) -> Lock {
        self.provider
            .new_lock(self.key_of(session))
            .await
            .expect("new_lock")
    }

    async fn perform(&mut self, slots: &mut [Slot], step: &Step) -> String {
        let slot = &mut slots[step.session];
        let Slot::Idle(lock) = slot else {
            return "skipped: the session is waiting".into();
        };
        match step.op {
            Op::Try(LockMode::Exclusive) => show(&lock.try_lock().await),
            Op::Try(LockMode::Shared) => show(&lock.try_lock_shared().await),
            Op::TryZero(mode) => show(&timed(lock.as_mut(), mode, Duration::ZERO).await),
            Op::Timed(mode, limit) => show(&timed(lock.as_mut(), mode, limit).await),
            Op::Unlock(LockMode::Exclusive) => show(&lock.unlock().await),
            Op::Unlock(LockMode::Shared) => show(&lock.unlock_shared().await),
            Op::IsHeld => show(&lock.is_held().await),
            Op::Close => {
                let closed = show(&lock.close().await);
                *lock = self.new_lock(step.session).await;
                closed
            }
            Op::Wait(mode) | Op::WaitFor(mode) => {
                let Slot::Idle(mut lock) = std::mem::replace(slot, Slot::Closed) else {
                    unreachable!()
                };
                let op = step.op;
                *slot = Slot::Busy(rt::spawn(async move {
                    let outcome = match op {
                        Op::WaitFor(_) => {
                            show(&timed(lock.as_mut(), mode, Duration::from_secs(10)).await)
                        }
                        _ => show(&wait(lock.as_mut(), mode).await),
                    };
                    (lock, outcome)
                }));
                "started".into()
            }
        }
    }

    /// Waits until every pending wait is queued or has ended, and says which ended (in
    /// session order: waits ending in one step end together) and what is held and queued.
    async fn settle(&mut self, slots: &mut [Slot]) -> String {
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut ended = Vec::new();
        loop {
            for (s, slot) in slots.iter_mut().enumerate() {
                if let Slot::Busy(task) = slot
                    && let Some((lock, outcome)) = future::poll_once(task).await
                {
                    ended.push(format!("s{s} -> {outcome}"));
                    *slot = Slot::Idle(lock);
                }
            }
            let mut counts = Vec::new();
            let mut settled = true;
            for (k, key) in self.keys.clone().into_iter().enumerate() {
                let (holders, waiters) = self.observe(key).await;
                let pending = slots
                    .iter()
                    .enumerate()
                    .filter(|(s, slot)| s % self.keys.len() == k && matches!(slot, Slot::Busy(_)))
                    .count();
                settled &= waiters == pending;
                counts.push(format!("k{k}: {holders} holding, {waiters} waiting"));
            }
            if settled || Instant::now() > deadline {
                if !settled {
                    ended.push("(did not settle)".into());
                }
                ended.sort();
                return format!("; ended [{}]; {}", ended.join(", "), counts.join("; "));
            }
            rt::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Sessions holding `key`, and requests waiting for it.
    async fn observe(&mut self, key: LockKey) -> (usize, usize) {
        match &mut self.observer {
            Observer::Memory(locks) => (locks.holders(key), locks.waiters(key)),
            Observer::Postgres(conn) => {
                let (classid, objid, objsubid) = key.pg_locks_ids();
                let (holders, waiters): (i64, i64) = sqlx::query_as(
                    "SELECT count(DISTINCT pid) FILTER (WHERE granted), \
                     count(*) FILTER (WHERE NOT granted) FROM pg_locks \
                     WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 \
                     AND objsubid = $3",
                )
                .bind(sqlx::postgres::types::Oid(classid))
                .bind(sqlx::postgres::types::Oid(objid))
                .bind(objsubid)
                .fetch_one(&mut **conn)
                .await
                .expect("query pg_locks");
                (holders as usize, waiters as usize)
            }
        }
    }
}

/// Some idle session, closed in its slot, and its lock.
fn take_idle(slots: &mut [Slot]) -> Option<(usize, Lock)> {
    let s = slots
        .iter()
        .position(|slot| matches!(slot, Slot::Idle(_)))?;
    match std::mem::replace(&mut slots[s], Slot::Closed) {
        Slot::Idle(lock) => Some((s, lock)),
        _ => None,
    }
}

async fn timed(
    lock: &mut dyn DistributedLock,
    mode: LockMode,
    limit: Duration,
) -> pglock::Result<bool> {
    match mode {
        LockMode::Exclusive => lock.try_lock_for(limit).await,
        LockMode::Shared => lock.try_lock_shared_for(limit).await,
    }
}

async fn wait(lock: &mut dyn DistributedLock, mode: LockMode) -> pglock::Result<()> {
    match mode {
        LockMode::Exclusive => lock.lock().await,
        LockMode::Shared => lock.lock_shared().await,
    }
}

/// A result as the trace shows it: what a caller can tell apart.
fn show<T: fmt::Debug>(result: &pglock::Result<T>) -> String {
    match result {
        Ok(value) => format!("Ok({value:?})"),
        Err(Error::NotHeld { mode, .. }) => format!("NotHeld({mode})"),
        Err(Error::Deadlock { .. }) => "Deadlock".into(),
        Err(Error::LockLost { .. }) => "LockLost".into(),
        Err(Error::Closed) => "Closed".into(),
        Err(err) => format!("Err({err})"),
    }
}

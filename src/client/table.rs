//! The client's shared state: which keys it holds on the server and where, and the
//! lanes that carry its statements, with their batching.
//!
//! Everything here lives under one mutex. A task waiting for an operation *drives* the
//! lanes while it waits: it polls the statement in flight, applies its answer, and sends
//! what queued up meanwhile as the lane's next statement ([`sql::LANE_BATCH`]). The
//! statement's future belongs to the lane, not to the task, so a task that gives up
//! costs nothing: whoever polls next reads the answer, and a grant nobody wants any more
//! is released in the next statement.
//!
//! Who is woken: a lane's statement is polled with the waker of the task that drove it
//! last, so that task is woken when the answer comes; an answer wakes only the tasks that
//! wait for that operation ([`Table::watch`]). A task that stops waiting while a lane is
//! busy hands the driving over to one other waiting task ([`Wakers::leave`]). Tasks that
//! want to hear of any change (the driver, a set waiting for a key in transition) listen
//! to every landing. Waking every waiting task at every landing instead cost a quarter
//! of the throughput with 64 tasks on one CPU (2.2× the baseline against 2.85×,
//! `cargo bench --bench client throughput`, BENCHMARKS.md).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use fnv::FnvHashMap;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgPool, Postgres};

use crate::levels::Levels;
use crate::memory::MemoryLocks;
use crate::session::{self, Effect, Session};
use crate::sql::{self, add};
use crate::{Error, LockKey, LockMode, LockOptions, Result, trace};

/// A lane's session: a pool connection the client owns, shared by many locks.
pub(super) type LaneSession = Session<PoolConnection<Postgres>>;

/// How many fixed lanes may have a statement on the wire before a new key joins one of
/// them instead of starting another: two keep the client and the server busy at once (one
/// lane's answers are read while the other's statement runs); more only split the same
/// operations into smaller batches, each costing the server a statement.
const IN_FLIGHT: usize = 2;

/// The id of an operation a lane carries.
pub(super) type OpId = u64;

/// An index into [`Table::lanes`].
pub(super) type LaneId = usize;

/// What one operation on a lane does.
#[derive(Debug, Clone)]
pub(super) enum OpKind {
    /// `pg_try_advisory_lock*`: one level of the mode, if free now.
    Try(LockMode),
    /// `pg_advisory_unlock*`: the lane's one level of the mode.
    Unlock(LockMode),
    /// Whether the lane's session is alive (any statement that is answered says so).
    Alive,
    /// Every key or none ([`sql::TRY_LOCK_ALL`]): a statement of its own.
    TryAll { keys: Vec<LockKey>, shared: bool },
}

struct Op {
    kind: OpKind,
    key: LockKey,
    lane: LaneId,
    /// `Some` once answered, until the task that asked collects it.
    outcome: Option<Result<bool>>,
    /// The task that asked is gone: apply the outcome, then forget the operation.
    abandoned: bool,
    /// A try sent once already on a session found gone: not sent again.
    retried: bool,
    /// How many tasks will collect the outcome: the one that asked, and every lock that
    /// joined it (a shared try, a wait, a liveness check). Each gets the answer.
    waiters: u32,
    /// The tasks to wake when the answer comes.
    wakers: Vec<Waker>,
}

/// Where a key's server levels of one mode stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Not held for this client.
    Free,
    /// A try is on its way (joined by every local lock that shares the outcome).
    Acquiring(OpId),
    /// Held on the key's lane: one level, however many local locks share it.
    Held,
    /// An unlock is on its way; `then`, a try queued behind it on the same lane.
    Releasing { unlock: OpId, then: Option<OpId> },
    /// A local lock waits for the mode on a session of its own; `op` answers the locks
    /// that share its outcome.
    Waiting(OpId),
}

/// One mode of one key: how many of the client's locks hold it, and the server's level.
#[derive(Debug, Clone, Copy)]
struct ModeBacking {
    holders: u32,
    server: Server,
}

/// A key the client holds (or is taking, or giving back) on the server.
struct Backing {
    lane: LaneId,
    modes: [ModeBacking; 2],
}

impl Backing {
    fn new(lane: LaneId) -> Backing {
        let free = ModeBacking {
            holders: 0,
            server: Server::Free,
        };
        Backing {
            lane,
            modes: [free, free],
        }
    }

    fn mode(&mut self, mode: LockMode) -> &mut ModeBacking {
        &mut self.modes[index(mode)]
    }

    fn is_free(&self) -> bool {
        self.modes
            .iter()
            .all(|m| m.holders == 0 && m.server == Server::Free)
    }
}

fn index(mode: LockMode) -> usize {
    match mode {
        LockMode::Exclusive => 0,
        LockMode::Shared => 1,
    }
}

/// The statement a lane has on the wire, owning the lane's session while it runs.
type LaneFuture = Pin<Box<dyn Future<Output = Landed> + Send>>;

/// What a lane's statement brings back: the session (if it is still usable), the
/// answer of each operation sent, in order, and after a statement that failed on a live
/// session, the levels the session holds now.
struct Landed {
    session: Option<LaneSession>,
    answers: Result<Vec<Result<bool>>>,
    holdings: Option<Vec<(LockKey, LockMode)>>,
}

enum Io {
    /// No session yet, or it was lost or given back: opened again on demand.
    Closed,
    Idle(Box<LaneSession>),
    Busy(LaneFuture),
}

/// A session shared by many locks, and the operations queued for it.
struct Lane {
    io: Io,
    queue: VecDeque<OpId>,
    sent: Vec<OpId>,
    /// A waiting session whose wait was granted: given back to the pool once it holds
    /// nothing.
    extra: bool,
    /// Server levels held on this lane, one per key and mode.
    levels: usize,
    /// When the session last answered (a liveness check or any other statement).
    last_answer: Option<Instant>,
    last_busy: Instant,
}

impl Lane {
    fn new(extra: bool) -> Lane {
        Lane {
            io: Io::Closed,
            queue: VecDeque::new(),
            sent: Vec::new(),
            extra,
            levels: 0,
            last_answer: None,
            last_busy: Instant::now(),
        }
    }

    fn has_session(&self) -> bool {
        !matches!(self.io, Io::Closed)
    }
}

/// The tasks that can drive the lanes, and who is woken when.
#[derive(Default)]
pub(super) struct Wakers {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// Tasks waiting for an operation, by ticket: each is woken by its own answer, and
    /// one of them when another leaves the lanes busy.
    waiting: FnvHashMap<u64, Waker>,
    next_ticket: u64,
    /// Tasks woken at every change: the driver, and sets waiting for a key in transition.
    listeners: Vec<Waker>,
}

impl Wakers {
    /// Records the waker of a task that waits for an operation, under its ticket.
    pub(super) fn wait(&self, ticket: &mut Option<u64>, waker: &Waker) {
        let mut registry = lock(&self.inner);
        let id = match *ticket {
            Some(id) => id,
            None => {
                registry.next_ticket += 1;
                registry.next_ticket
            }
        };
        *ticket = Some(id);
        match registry.waiting.get(&id) {
            Some(known) if known.will_wake(waker) => {}
            _ => {
                registry.waiting.insert(id, waker.clone());
            }
        }
    }

    /// A waiting task is done or gone. If lanes are still `busy`, it may have been the
    /// one polling them: one other waiting task (and every listener) takes over.
    pub(super) fn leave(&self, ticket: Option<u64>, busy: bool) {
        let mut registry = lock(&self.inner);
        if let Some(id) = ticket {
            registry.waiting.remove(&id);
        }
        if busy {
            Self::hand_over(registry);
        }
    }

    /// Something changed that a task must act on (a release queued by a drop, a wait
    /// ended): every listener and one waiting task look at the lanes again.
    pub(super) fn nudge(&self) {
        Self::hand_over(lock(&self.inner));
    }

    fn hand_over(mut registry: MutexGuard<'_, Registry>) {
        let one = registry.waiting.values().next().cloned();
        let listeners = std::mem::take(&mut registry.listeners);
        drop(registry);
        one.into_iter().chain(listeners).for_each(Waker::wake);
    }

    /// Records a task to wake at the next change.
    pub(super) fn listen(&self, waker: &Waker) {
        let mut registry = lock(&self.inner);
        if !registry.listeners.iter().any(|w| w.will_wake(waker)) {
            registry.listeners.push(waker.clone());
        }
    }

    /// Wakes every listener (a lane's statement landed, or the client is gone).
    pub(super) fn wake_listeners(&self) {
        let listeners = std::mem::take(&mut lock(&self.inner).listeners);
        listeners.into_iter().for_each(Waker::wake);
    }
}

/// A poisoned mutex only means a task panicked mid-update; the counts are still the best
/// record there is, and releasing locks matters more.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a lock whose try was refused does next.
pub(super) enum WaitStart {
    /// The level is held for the client now: share it.
    Shared,
    /// Another try for it is on its way: share its outcome.
    Join(OpId),
    /// Another lock waits for it on a session of its own: share its outcome, for no
    /// longer than the caller may wait.
    JoinWait(OpId),
    /// Wait on a session of its own, answering `op` for those that join.
    Start(OpId),
}

/// Where the keys of an all-or-nothing request stand on the server.
pub(super) enum Settled {
    /// Free, or held for the client: the request may go out.
    Yes,
    /// A try or a release is on its way: settled within a round trip.
    InTransition,
    /// Another lock of the client waits for one of them on a session of its own (which
    /// may last forever): a conflict on the server.
    WaitedFor,
}

/// What a local lock's request for a server level comes to.
pub(super) enum Backed {
    /// The client holds the mode already: shared, no round trip.
    Shared,
    /// Wait for this operation's answer (a try on its way: one round trip).
    Pending(OpId),
    /// Another lock of the client waits for the mode on a session of its own: share its
    /// outcome, for no longer than the caller may wait (the wait may last forever).
    Waiting(OpId),
    /// Another lock of the client waits for the mode, and the caller may not wait:
    /// refused, as the server would refuse it now (a waiter means a conflict there).
    Refused,
}

/// The client's record of the server, and its lanes.
pub(super) struct Table {
    /// By key: keys are the caller's, so a seeded hasher.
    keys: HashMap<LockKey, Backing, foldhash::fast::RandomState>,
    lanes: Vec<Lane>,
    /// By id: ids are the client's own counter, so FNV (no flooding to defend against).
    ops: FnvHashMap<OpId, Op>,
    next_op: OpId,
    fixed: usize,
    /// Waiting sessions (taken from the pool for a wait) right now.
    pub(super) waiting: usize,
}

impl Table {
    pub(super) fn new(fixed: usize) -> Table {
        Table {
            keys: HashMap::default(),
            lanes: (0..fixed).map(|_| Lane::new(false)).collect(),
            ops: FnvHashMap::default(),
            next_op: 0,
            fixed,
            waiting: 0,
        }
    }

    /// How many server sessions the client holds: lanes with a session, and waits.
    pub(super) fn sessions(&self) -> usize {
        self.lanes.iter().filter(|l| l.has_session()).count() + self.waiting
    }

    /// The lane a key's levels live on, or the one a new key goes to: its own by its
    /// hash (so that keys spread over the lanes), unless [`IN_FLIGHT`] lanes have a
    /// statement on the wire and its own has none. Then it joins the busy lane with the
    /// shortest queue, and goes out in that lane's next statement: under load, batches
    /// grow instead of statements multiplying (see the module docs).
    fn lane_for(&self, key: LockKey) -> LaneId {
        if let Some(backing) = self.keys.get(&key) {
            return backing.lane;
        }
        let hash = match key {
            LockKey::BigInt(k) => k as u64,
            LockKey::IntPair(a, b) => ((a as u64) << 32) ^ (b as u32 as u64),
        };
        let own = (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % self.fixed;
        let busy = |lane: &LaneId| matches!(self.lanes[*lane].io, Io::Busy(_));
        if busy(&own) || (0..self.fixed).filter(busy).count() < IN_FLIGHT {
            return own;
        }
        (0..self.fixed)
            .filter(busy)
            .min_by_key(|&lane| self.lanes[lane].queue.len())
            .unwrap_or(own)
    }

    /// Whether the client holds `mode` of `key` on the server through another lock's
    /// level, in the other mode on some lane, or is taking or giving it back.
    pub(super) fn holds_other_mode(&self, key: LockKey, mode: LockMode) -> bool {
        let other = match mode {
            LockMode::Exclusive => LockMode::Shared,
            LockMode::Shared => LockMode::Exclusive,
        };
        self.keys
            .get(&key)
            .is_some_and(|b| b.modes[index(other)].server != Server::Free)
    }

    /// Records a new operation (not queued anywhere yet) that `waiters` tasks will collect.
    fn record(&mut self, kind: OpKind, key: LockKey, lane: LaneId, waiters: u32) -> OpId {
        self.next_op += 1;
        let id = self.next_op;
        let op = Op {
            kind,
            key,
            lane,
            outcome: None,
            abandoned: false,
            retried: false,
            waiters,
            wakers: Vec::new(),
        };
        self.ops.insert(id, op);
        id
    }

    /// Queues a new operation on `lane`, for the task that asks.
    fn push(&mut self, kind: OpKind, key: LockKey, lane: LaneId) -> OpId {
        let id = self.record(kind, key, lane, 1);
        self.lanes[lane].queue.push_back(id);
        id
    }

    /// A local lock that now holds `mode` of `key` locally asks for the server level: it
    /// shares the client's level, joins a try (or, if it `may_wait`, a wait) on its way,
    /// or sends a try.
    pub(super) fn back(&mut self, key: LockKey, mode: LockMode, may_wait: bool) -> Backed {
        let lane = self.lane_for(key);
        let backing = self.keys.entry(key).or_insert_with(|| Backing::new(lane));
        let m = backing.mode(mode);
        m.holders += 1;
        match m.server {
            Server::Held => Backed::Shared,
            Server::Acquiring(op) => Backed::Pending(self.join(op)),
            Server::Waiting(op) if may_wait => Backed::Waiting(self.join(op)),
            Server::Waiting(_) => Backed::Refused,
            Server::Releasing { then: Some(op), .. } => Backed::Pending(self.join(op)),
            Server::Releasing { unlock, then: None } => {
                // Behind the release on the same lane: the server sees them in order.
                let op = self.push(OpKind::Try(mode), key, lane);
                self.set(
                    key,
                    mode,
                    Server::Releasing {
                        unlock,
                        then: Some(op),
                    },
                );
                Backed::Pending(op)
            }
            Server::Free => {
                let op = self.push(OpKind::Try(mode), key, lane);
                self.set(key, mode, Server::Acquiring(op));
                Backed::Pending(op)
            }
        }
    }

    fn set(&mut self, key: LockKey, mode: LockMode, server: Server) {
        if let Some(backing) = self.keys.get_mut(&key) {
            backing.mode(mode).server = server;
        }
    }

    /// A local lock whose try was refused will wait for `mode` of `key` on a session of
    /// its own: `Start` it (the locks that join meanwhile share its outcome), unless
    /// another try or wait is already on its way (`Join` it) or the level is held now.
    pub(super) fn wait_begin(&mut self, key: LockKey, mode: LockMode) -> WaitStart {
        let lane = self.lane_for(key);
        let backing = self.keys.entry(key).or_insert_with(|| Backing::new(lane));
        match backing.mode(mode).server {
            Server::Held => WaitStart::Shared,
            Server::Acquiring(op) => WaitStart::Join(self.join(op)),
            Server::Waiting(op) => WaitStart::JoinWait(self.join(op)),
            Server::Releasing { then: Some(op), .. } => WaitStart::Join(self.join(op)),
            Server::Releasing { then: None, .. } | Server::Free => {
                // The waiting lock has its own answer; only joiners collect.
                let op = self.record(OpKind::Alive, key, lane, 0);
                self.set(key, mode, Server::Waiting(op));
                WaitStart::Start(op)
            }
        }
    }

    /// The wait `op` ended: granted on `session` (which becomes an extra lane for the
    /// key), or not. The locks that joined it get `Ok(true)`, or `Ok(false)` to try on
    /// their own.
    pub(super) fn wait_end(
        &mut self,
        key: LockKey,
        mode: LockMode,
        op: OpId,
        session: Option<LaneSession>,
    ) {
        let waiting = self
            .keys
            .get(&key)
            .is_some_and(|b| b.modes[index(mode)].server == Server::Waiting(op));
        let granted = session.is_some();
        match (waiting, session) {
            (true, Some(session)) => self.adopt(key, mode, session),
            (true, None) => {
                self.set(key, mode, Server::Free);
                self.forget_if_free(key);
            }
            // Nobody was waiting for it any more: give the session back as it is.
            (false, Some(session)) => drop(session),
            (false, None) => {}
        }
        self.answer_joiners(op, granted);
    }

    /// Queues the release of the client's level of `mode` of `key` on `lane`.
    fn queue_release(&mut self, key: LockKey, mode: LockMode, lane: LaneId) -> OpId {
        let unlock = self.push(OpKind::Unlock(mode), key, lane);
        self.set(key, mode, Server::Releasing { unlock, then: None });
        unlock
    }

    /// Answers the locks that joined the wait `op`, or forgets it if none did.
    fn answer_joiners(&mut self, op: OpId, granted: bool) {
        match self.ops.get(&op) {
            Some(entry) if entry.waiters > 0 => self.answer(op, Ok(granted)),
            Some(_) => {
                self.ops.remove(&op);
            }
            None => {}
        }
    }

    /// A local lock gives up its share of `mode` of `key` (an unlock of its last level, or
    /// a request whose try failed). The last one out releases the server level: returns
    /// that operation, to wait for if the caller wants to.
    pub(super) fn unback(&mut self, key: LockKey, mode: LockMode) -> Option<OpId> {
        let lane = self.keys.get(&key)?.lane;
        let backing = self.keys.get_mut(&key)?;
        let m = backing.mode(mode);
        m.holders = m.holders.saturating_sub(1);
        if m.holders > 0 || m.server != Server::Held {
            self.forget_if_free(key);
            return None;
        }
        Some(self.queue_release(key, mode, lane))
    }

    /// Records the levels a granted waiting session holds (one of `mode` on each of
    /// `keys`), and makes the session an extra lane for them. The waiting locks are
    /// already counted as holders.
    fn adopt_all(&mut self, keys: &[LockKey], mode: LockMode, session: LaneSession) {
        let mut lane = Lane::new(true);
        lane.io = Io::Idle(Box::new(session));
        lane.levels = keys.len();
        lane.last_answer = Some(Instant::now());
        let reusable = (self.fixed..self.lanes.len()).find(|&id| {
            let l = &self.lanes[id];
            !l.has_session() && l.queue.is_empty() && l.sent.is_empty()
        });
        let id = match reusable {
            Some(id) => {
                self.lanes[id] = lane;
                id
            }
            None => {
                self.lanes.push(lane);
                self.lanes.len() - 1
            }
        };
        for key in keys {
            let backing = self.keys.entry(*key).or_insert_with(|| Backing::new(id));
            backing.lane = id;
            backing.mode(mode).server = Server::Held;
        }
    }

    fn adopt(&mut self, key: LockKey, mode: LockMode, session: LaneSession) {
        self.adopt_all(&[key], mode, session);
    }

    /// An all-or-nothing wait on a session of its own: marks `keys` as waited for, so
    /// that local locks wanting the same mode join its outcome. `None` if one of them is
    /// on its way somewhere already.
    pub(super) fn wait_all_begin(&mut self, keys: &[LockKey], mode: LockMode) -> Option<OpId> {
        if !keys.iter().all(|key| {
            self.keys
                .get(key)
                .is_none_or(|b| b.modes[index(mode)].server == Server::Free)
        }) {
            return None;
        }
        // Not on a lane's queue: the lane number is never used.
        let lane = self.fixed.min(self.lanes.len().saturating_sub(1));
        let first = keys.first().copied().unwrap_or(LockKey::BigInt(0));
        let op = self.record(OpKind::Alive, first, lane, 0);
        for key in keys {
            let lane = self.lane_for(*key);
            let backing = self.keys.entry(*key).or_insert_with(|| Backing::new(lane));
            backing.mode(mode).server = Server::Waiting(op);
        }
        Some(op)
    }

    /// The all-or-nothing wait `op` ended, granted on `session` or not.
    pub(super) fn wait_all_end(
        &mut self,
        keys: &[LockKey],
        mode: LockMode,
        op: OpId,
        session: Option<LaneSession>,
    ) {
        let granted = session.is_some();
        match session {
            Some(session) => self.adopt_all(keys, mode, session),
            None => {
                for key in keys {
                    if self
                        .keys
                        .get(key)
                        .is_some_and(|b| b.modes[index(mode)].server == Server::Waiting(op))
                    {
                        self.set(*key, mode, Server::Free);
                        self.forget_if_free(*key);
                    }
                }
            }
        }
        self.answer_joiners(op, granted);
    }

    /// Queues a liveness check on `key`'s lane unless the lane answered within
    /// `interval`: `None` then (it is alive), or the check to wait for. One check per
    /// lane and interval, shared by every `lost()` on it.
    pub(super) fn check_alive(&mut self, key: LockKey, interval: Duration) -> Option<OpId> {
        let lane = self.keys.get(&key)?.lane;
        if self.lanes[lane]
            .last_answer
            .is_some_and(|at| at.elapsed() < interval)
        {
            return None;
        }
        let pending = self.lanes[lane]
            .queue
            .iter()
            .chain(&self.lanes[lane].sent)
            .find(|id| matches!(self.ops.get(id), Some(op) if matches!(op.kind, OpKind::Alive)))
            .copied();
        Some(match pending {
            Some(op) => self.join(op),
            None => self.push(OpKind::Alive, key, lane),
        })
    }

    /// Every operation on a lane's queue or on the wire, joined by one more task that
    /// will collect its answer (abandoned ones included: their answer is kept for it).
    pub(super) fn join_pending(&mut self) -> Vec<OpId> {
        let pending: Vec<OpId> = self
            .lanes
            .iter()
            .flat_map(|lane| lane.queue.iter().chain(&lane.sent))
            .copied()
            .collect();
        pending.into_iter().map(|op| self.join(op)).collect()
    }

    /// Queues a liveness check on every lane that has a session.
    pub(super) fn check_lanes(&mut self) -> Vec<OpId> {
        let lanes: Vec<(LaneId, LockKey)> = (0..self.lanes.len())
            .filter(|&lane| self.lanes[lane].has_session())
            .map(|lane| {
                let key = self
                    .keys
                    .iter()
                    .find(|(_, b)| b.lane == lane)
                    .map_or(LockKey::BigInt(0), |(key, _)| *key);
                (lane, key)
            })
            .collect();
        lanes
            .into_iter()
            .map(|(lane, key)| self.push(OpKind::Alive, key, lane))
            .collect()
    }

    /// Queues an all-or-nothing try of `keys` (none held by the client on the server),
    /// on one lane.
    pub(super) fn try_all(&mut self, keys: Vec<LockKey>, shared: bool) -> OpId {
        let first = keys.first().copied().unwrap_or(LockKey::BigInt(0));
        let lane = self.lane_for(first);
        let mode = mode_of(shared);
        for key in &keys {
            let backing = self.keys.entry(*key).or_insert_with(|| Backing::new(lane));
            backing.lane = lane;
            backing.mode(mode).holders += 1;
        }
        let op = self.push(
            OpKind::TryAll {
                keys: keys.clone(),
                shared,
            },
            first,
            lane,
        );
        for key in keys {
            self.set(key, mode, Server::Acquiring(op));
        }
        op
    }

    /// Whether every key is free of the client's server levels in any transition, so
    /// that an all-or-nothing try may go to one lane for all of them.
    pub(super) fn settled(&self, keys: &[LockKey]) -> Settled {
        let servers = || {
            keys.iter()
                .filter_map(|key| self.keys.get(key))
                .flat_map(|b| b.modes.iter().map(|m| m.server))
        };
        if servers().any(|server| matches!(server, Server::Waiting(_))) {
            Settled::WaitedFor
        } else if servers().all(|server| matches!(server, Server::Free | Server::Held)) {
            Settled::Yes
        } else {
            Settled::InTransition
        }
    }

    /// A lock that still counts as a holder of `mode` of `key` (its try was refused)
    /// tries again: like [`back`](Self::back), without counting it twice.
    pub(super) fn retry(&mut self, key: LockKey, mode: LockMode, may_wait: bool) -> Backed {
        if let Some(backing) = self.keys.get_mut(&key) {
            let m = backing.mode(mode);
            m.holders = m.holders.saturating_sub(1);
        }
        self.back(key, mode, may_wait)
    }

    /// Ends the lane of `key` (its liveness check went unanswered too long): its levels
    /// are lost for every lock on it.
    pub(super) fn abort_lane(&mut self, key: LockKey, shared: &Shared) {
        let Some(lane) = self.keys.get(&key).map(|b| b.lane) else {
            return;
        };
        let sent = std::mem::take(&mut self.lanes[lane].sent);
        self.lanes[lane].io = Io::Closed; // drops the statement: its session is discarded
        let err = Error::Unresponsive {
            key,
            after: shared.options.get_check_timeout(),
        };
        for id in sent {
            let key = self.ops.get(&id).map_or(key, |op| op.key);
            self.settle(id, Err(copy_error(&err, key)));
        }
        self.lose_lane(lane, shared, &err);
    }

    /// Counts one more holder of the client's level of `mode` of `key` (held already).
    pub(super) fn share(&mut self, key: LockKey, mode: LockMode) {
        if let Some(backing) = self.keys.get_mut(&key) {
            backing.mode(mode).holders += 1;
        }
    }

    /// Whether the client holds `mode` of `key` on the server (another lock's share).
    pub(super) fn held_on_server(&self, key: LockKey, mode: LockMode) -> bool {
        self.keys
            .get(&key)
            .is_some_and(|b| b.modes[index(mode)].server == Server::Held)
    }

    /// One more task collects the outcome of `op` (still on its way).
    fn join(&mut self, op: OpId) -> OpId {
        if let Some(entry) = self.ops.get_mut(&op) {
            entry.waiters += 1;
            entry.abandoned = false;
        }
        op
    }

    /// Wakes `waker` when `op` is answered.
    pub(super) fn watch(&mut self, op: OpId, waker: &Waker) {
        if let Some(entry) = self.ops.get_mut(&op)
            && !entry.wakers.iter().any(|w| w.will_wake(waker))
        {
            entry.wakers.push(waker.clone());
        }
    }

    /// Records the answer of `op` and wakes the tasks waiting for it.
    fn answer(&mut self, op: OpId, outcome: Result<bool>) {
        if let Some(entry) = self.ops.get_mut(&op) {
            entry.outcome = Some(outcome);
            entry.wakers.drain(..).for_each(Waker::wake);
        }
    }

    /// Whether a lane has a statement on the wire or operations to send: someone must
    /// go on polling.
    pub(super) fn busy(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| matches!(l.io, Io::Busy(_)) || !l.queue.is_empty())
    }

    /// Takes the answer of `op`, once there is one: a copy while other tasks that joined
    /// it have yet to collect theirs.
    pub(super) fn take(&mut self, op: OpId) -> Option<Result<bool>> {
        let entry = self.ops.get_mut(&op)?;
        if entry.waiters > 1 {
            let copy = match entry.outcome.as_ref()? {
                Ok(value) => Ok(*value),
                Err(err) => Err(copy_error(err, entry.key)),
            };
            entry.waiters -= 1;
            return Some(copy);
        }
        let outcome = entry.outcome.take()?;
        self.ops.remove(&op);
        Some(outcome)
    }

    /// A task that waited for `op` is gone: once none is left, its answer, when it
    /// comes, is applied without them.
    pub(super) fn abandon(&mut self, op: OpId) {
        if let Some(entry) = self.ops.get_mut(&op) {
            entry.waiters = entry.waiters.saturating_sub(1);
            if entry.waiters > 0 {
                return;
            }
            match entry.outcome {
                Some(_) => {
                    self.ops.remove(&op);
                }
                None => entry.abandoned = true,
            }
        }
    }

    /// Moves every lane forward as far as it goes now: answers applied, queued
    /// operations sent, sessions opened. Statements still on the wire wake `waker`'s
    /// task when they land.
    ///
    /// Returns whether a lane's statement landed: the caller then wakes the listeners.
    /// A landing need not follow any wake: a statement can be answered within the
    /// poll that sent it, and a read can find an answer before the runtime's reactor has
    /// seen it (sqlx reads async-io sockets directly, and an answer read that way is
    /// never reported by the reactor at all).
    pub(super) fn drive(&mut self, shared: &Shared, waker: &Waker) -> bool {
        let mut cx = Context::from_waker(waker);
        let mut landed_any = false;
        for lane in 0..self.lanes.len() {
            loop {
                let queued = !self.lanes[lane].queue.is_empty();
                match &mut self.lanes[lane].io {
                    Io::Busy(future) => match future.as_mut().poll(&mut cx) {
                        Poll::Ready(landed) => {
                            self.land(lane, landed, shared);
                            landed_any = true;
                        }
                        Poll::Pending => break,
                    },
                    Io::Idle(_) if queued => self.send(lane),
                    Io::Closed if queued => self.open(lane, shared),
                    _ => break,
                }
            }
        }
        landed_any
    }

    /// Opens a lane's session: a pool connection, set up by its first statement.
    fn open(&mut self, lane: LaneId, shared: &Shared) {
        let pool = shared.pool.clone();
        let options = shared.options.clone();
        let key = self.lanes[lane]
            .queue
            .front()
            .and_then(|id| self.ops.get(id))
            .map_or(LockKey::BigInt(0), |op| op.key);
        self.lanes[lane].io = Io::Busy(Box::pin(async move {
            let opened: Result<LaneSession> = async {
                let conn = pool.acquire().await?;
                let mut session = Session::new(conn);
                session.set_options(options);
                session.first(key, None).await?;
                Ok(session)
            }
            .await;
            match opened {
                Ok(session) => Landed {
                    session: Some(session),
                    answers: Ok(Vec::new()),
                    holdings: None,
                },
                Err(err) => Landed {
                    session: None,
                    answers: Err(err),
                    holdings: None,
                },
            }
        }));
    }

    /// Sends what queued up on an idle lane as one statement: batchable operations on
    /// distinct keys together, an all-or-nothing try on its own.
    fn send(&mut self, lane: LaneId) {
        let Io::Idle(session) = std::mem::replace(&mut self.lanes[lane].io, Io::Closed) else {
            return;
        };
        let mut session = *session;
        let mut batch: Vec<(OpKind, LockKey)> = Vec::new();
        let mut sent: Vec<OpId> = Vec::new();
        let queue = &mut self.lanes[lane].queue;
        while let Some(&id) = queue.front() {
            let Some(op) = self.ops.get(&id) else {
                queue.pop_front();
                continue;
            };
            let alone = matches!(op.kind, OpKind::TryAll { .. });
            // Rows of a batch run in no promised order: two operations on one key and
            // mode (a release and the try queued behind it) go in separate statements.
            // Operations on the other mode commute: a session never conflicts with itself.
            let mode = op_mode(&op.kind);
            let repeats = mode.is_some()
                && batch
                    .iter()
                    .any(|(kind, key)| *key == op.key && op_mode(kind) == mode);
            if (alone && !batch.is_empty()) || repeats {
                break;
            }
            queue.pop_front();
            batch.push((op.kind.clone(), op.key));
            sent.push(id);
            if alone {
                break;
            }
        }
        // Releases first: in a statement that fails part-way (a full lock table), they
        // are the ones most likely done, and they make room for the tries.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| !matches!(batch[i].0, OpKind::Unlock(_)));
        let batch: Vec<(OpKind, LockKey)> = order.iter().map(|&i| batch[i].clone()).collect();
        self.lanes[lane].sent = order.iter().map(|&i| sent[i]).collect();
        self.lanes[lane].last_busy = Instant::now();
        self.lanes[lane].io = Io::Busy(Box::pin(async move {
            let key = batch.first().map_or(LockKey::BigInt(0), |(_, key)| *key);
            let answers = run(&mut session, &batch).await;
            // A statement refused on a live session may have taken or released levels
            // before it failed: read what the session holds, to mend the record.
            let holdings = match (&answers, session.is_ready()) {
                (Err(_), true) => session.holdings(key).await.ok(),
                _ => None,
            };
            let usable = session.is_ready() && (answers.is_ok() || holdings.is_some());
            Landed {
                session: usable.then_some(session),
                answers,
                holdings,
            }
        }));
    }

    /// Applies a lane's answer: outcomes to their operations, server levels to the
    /// record; a session that is gone takes every level on it with it.
    fn land(&mut self, lane: LaneId, landed: Landed, shared: &Shared) {
        let sent = std::mem::take(&mut self.lanes[lane].sent);
        let Landed {
            session,
            answers,
            holdings,
        } = landed;
        let session_lost = session.is_none();
        self.lanes[lane].io = match session {
            Some(session) => Io::Idle(Box::new(session)),
            None => Io::Closed,
        };
        self.lanes[lane].last_busy = Instant::now();
        match (answers, holdings) {
            (Ok(answers), _) => {
                self.lanes[lane].last_answer = Some(Instant::now());
                for (id, answer) in sent.into_iter().zip(answers) {
                    self.settle(id, answer);
                }
            }
            (Err(err), Some(holdings)) if !session_lost => {
                self.lanes[lane].last_answer = Some(Instant::now());
                for id in sent {
                    self.mend(id, &err, &holdings);
                }
            }
            (Err(err), _) => {
                self.lanes[lane].io = Io::Closed;
                // A try on a session found gone took nothing that survives: it runs once
                // more, on the lane's next session (as an AdvisoryLock's does).
                let again = session::found_gone(&err);
                let mut retry = Vec::new();
                for id in sent {
                    let Some(op) = self.ops.get(&id) else {
                        continue;
                    };
                    let key = op.key;
                    let try_again = again
                        && !op.retried
                        && matches!(op.kind, OpKind::Try(_) | OpKind::TryAll { .. });
                    // A release whose session is gone: its level went with it. Any other
                    // operation on a key whose levels the lane held: they are lost.
                    let unlock = matches!(op.kind, OpKind::Unlock(_));
                    let answer = match unlock || self.has_levels(key, lane) {
                        true => Error::LockLost { key },
                        false if try_again => {
                            retry.push(id);
                            continue;
                        }
                        false => copy_error(&err, key),
                    };
                    self.settle(id, Err(answer));
                }
                self.lose_lane(lane, shared, &err);
                for id in retry.into_iter().rev() {
                    if let Some(op) = self.ops.get_mut(&id) {
                        op.retried = true;
                    }
                    self.lanes[lane].queue.push_front(id);
                }
            }
        }
        if self.lanes[lane].extra
            && self.lanes[lane].levels == 0
            && self.lanes[lane].queue.is_empty()
        {
            self.retire(lane);
        }
    }

    /// Applies one operation's answer.
    fn settle(&mut self, id: OpId, answer: Result<bool>) {
        let Some(op) = self.ops.get(&id) else {
            return;
        };
        let (kind, key, lane, abandoned) = (op.kind.clone(), op.key, op.lane, op.abandoned);
        match &kind {
            OpKind::Try(mode) => {
                let granted = matches!(answer, Ok(true));
                self.after_try(key, *mode, lane, id, granted);
            }
            OpKind::Unlock(mode) => {
                let released = matches!(answer, Ok(true));
                if let Some(backing) = self.keys.get_mut(&key)
                    && let Server::Releasing { unlock, then } = backing.mode(*mode).server
                    && unlock == id
                {
                    self.lanes[lane].levels = self.lanes[lane].levels.saturating_sub(1);
                    let next = match then {
                        Some(op) => Server::Acquiring(op),
                        None => Server::Free,
                    };
                    self.set(key, *mode, next);
                    let _ = released;
                }
                self.forget_if_free(key);
            }
            OpKind::TryAll { keys, shared } => {
                let granted = matches!(answer, Ok(true));
                for key in keys {
                    self.after_try(*key, mode_of(*shared), lane, id, granted);
                }
            }
            OpKind::Alive => {}
        }
        match self.ops.get(&id) {
            Some(_) if abandoned => {
                self.ops.remove(&id);
            }
            Some(_) => self.answer(id, answer),
            None => {}
        }
    }

    /// Applies what a statement that failed part-way did, as the session's holdings show
    /// it: a try that took its level succeeded, the others failed with the statement's
    /// error; a release that did not happen is sent again.
    fn mend(&mut self, id: OpId, err: &Error, holdings: &[(LockKey, LockMode)]) {
        let Some(op) = self.ops.get(&id) else {
            return;
        };
        let (kind, key, lane) = (op.kind.clone(), op.key, op.lane);
        let holds = |key: LockKey, mode: LockMode| holdings.contains(&(key, mode));
        match kind {
            OpKind::Try(mode) => {
                let answer = match holds(key, mode) {
                    true => Ok(true),
                    false => Err(copy_error(err, key)),
                };
                self.settle(id, answer);
            }
            OpKind::Unlock(mode) if holds(key, mode) => {
                self.settle(id, Err(copy_error(err, key)));
                // Still held, and nobody wants it: release it in the next statement.
                self.queue_release(key, mode, lane);
            }
            OpKind::Unlock(_) | OpKind::Alive => self.settle(id, Ok(true)),
            OpKind::TryAll { keys, shared } => {
                let mode = mode_of(shared);
                // The levels it took stay held for the set, whose failure gives them back.
                for key in &keys {
                    self.after_try(*key, mode, lane, id, holds(*key, mode));
                }
                match self.ops.get(&id) {
                    Some(op) if op.abandoned => {
                        self.ops.remove(&id);
                    }
                    Some(_) => self.answer(id, Err(copy_error(err, key))),
                    None => {}
                }
            }
        }
    }

    /// The server's answer to a try of `mode` of `key`: held for every local lock that
    /// still wants it, or free again. A grant nobody wants any more is released at once.
    fn after_try(&mut self, key: LockKey, mode: LockMode, lane: LaneId, id: OpId, granted: bool) {
        let Some(backing) = self.keys.get_mut(&key) else {
            return;
        };
        let m = backing.mode(mode);
        if m.server != Server::Acquiring(id) {
            return;
        }
        match (granted, m.holders) {
            (true, 0) => {
                self.lanes[lane].levels += 1;
                self.queue_release(key, mode, lane);
            }
            (true, _) => {
                m.server = Server::Held;
                self.lanes[lane].levels += 1;
            }
            (false, _) => {
                m.server = Server::Free;
                self.forget_if_free(key);
            }
        }
    }

    fn forget_if_free(&mut self, key: LockKey) {
        if self.keys.get(&key).is_some_and(Backing::is_free) {
            self.keys.remove(&key);
        }
    }

    /// Whether locks of the client hold levels of `key` on `lane`. A level being given
    /// back is held by none of them (its last holder let go of it, or nobody wanted
    /// it): its loss costs the locks waiting to take the key again nothing.
    fn has_levels(&self, key: LockKey, lane: LaneId) -> bool {
        self.keys
            .get(&key)
            .is_some_and(|b| b.lane == lane && b.modes.iter().any(|m| m.server == Server::Held))
    }

    /// A lane's session is gone: every level on it is lost, for every local lock that
    /// held it; operations still queued for it fail, but for tries on keys that lost
    /// nothing, which stay queued for the lane's next session. Keys of the lane without levels on
    /// it (a try on its way, a wait on a session of its own) lose nothing.
    fn lose_lane(&mut self, lane: LaneId, shared: &Shared, err: &Error) {
        // Releases still queued: their levels went with the session. They are settled
        // first, so that a key that was only being given back does not count as held:
        // a lock whose try waits behind its release holds nothing there to lose.
        let queued: Vec<OpId> = self.lanes[lane].queue.drain(..).collect();
        let (releases, queued): (Vec<OpId>, Vec<OpId>) = queued.into_iter().partition(
            |id| matches!(self.ops.get(id), Some(op) if matches!(op.kind, OpKind::Unlock(_))),
        );
        for id in releases {
            if let Some(key) = self.ops.get(&id).map(|op| op.key) {
                self.settle(id, Err(Error::LockLost { key }));
            }
        }
        let keys: Vec<LockKey> = self
            .keys
            .keys()
            .filter(|key| self.has_levels(**key, lane))
            .copied()
            .collect();
        for key in &keys {
            if let Some(backing) = self.keys.remove(key) {
                let held =
                    |mode: LockMode| u32::from(backing.modes[index(mode)].server == Server::Held);
                let levels = Levels {
                    exclusive: held(LockMode::Exclusive),
                    shared: held(LockMode::Shared),
                };
                trace::lost(*key, levels, "its lane's session is gone");
            }
            shared.local.lose(*key);
        }
        self.lanes[lane].levels = 0;
        // A try that was still queued never reached the dead session: it goes on the
        // lane's next one, once (as a sent try found gone does), unless its key lost
        // levels here.
        let again = session::found_gone(err);
        for id in queued {
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            let key = op.key;
            let lost = keys.contains(&key);
            let is_try = matches!(op.kind, OpKind::Try(_) | OpKind::TryAll { .. });
            if again && is_try && !lost && !op.retried {
                op.retried = true;
                self.lanes[lane].queue.push_back(id);
                continue;
            }
            let answer = match lost {
                true => Error::LockLost { key },
                false => copy_error(err, key),
            };
            self.settle(id, Err(answer));
        }
    }

    /// Gives an extra lane's session back to the pool (restoring its settings without
    /// waiting, as a lock's `close` does).
    fn retire(&mut self, lane: LaneId) {
        if let Io::Idle(mut session) = std::mem::replace(&mut self.lanes[lane].io, Io::Closed) {
            self.lanes[lane].io = Io::Busy(Box::pin(async move {
                session.close(LockKey::BigInt(0), true).await;
                Landed {
                    session: None,
                    answers: Ok(Vec::new()),
                    holdings: None,
                }
            }));
        }
    }

    /// Gives back the sessions of fixed lanes that hold nothing and were idle for
    /// `idle`: the driver's housekeeping.
    pub(super) fn retire_idle(&mut self, idle: Duration) {
        for lane in 0..self.lanes.len() {
            let l = &self.lanes[lane];
            if matches!(l.io, Io::Idle(_))
                && l.levels == 0
                && l.queue.is_empty()
                && l.last_busy.elapsed() >= idle
            {
                self.retire(lane);
            }
        }
    }

    /// When the next lane becomes idle enough to give back, if any lane is waiting for it.
    pub(super) fn next_retirement(&self, idle: Duration) -> Option<Instant> {
        self.lanes
            .iter()
            .filter(|l| matches!(l.io, Io::Idle(_)) && l.levels == 0 && l.queue.is_empty())
            .map(|l| l.last_busy + idle)
            .min()
    }
}

/// The mode a try or a release is for.
fn op_mode(kind: &OpKind) -> Option<LockMode> {
    match kind {
        OpKind::Try(mode) | OpKind::Unlock(mode) => Some(*mode),
        OpKind::Alive | OpKind::TryAll { .. } => None,
    }
}

fn mode_of(shared: bool) -> LockMode {
    match shared {
        true => LockMode::Shared,
        false => LockMode::Exclusive,
    }
}

/// What a lane's tasks share: the pool, the options for lane sessions, and the local
/// lock space whose holders lose their levels with a lane.
pub(super) struct Shared {
    pub(super) pool: PgPool,
    pub(super) options: LockOptions,
    pub(super) local: MemoryLocks,
}

/// Runs one statement for a batch on a lane's session; an answer per operation.
async fn run(session: &mut LaneSession, batch: &[(OpKind, LockKey)]) -> Result<Vec<Result<bool>>> {
    let key = batch.first().map_or(LockKey::BigInt(0), |(_, key)| *key);
    if let [(OpKind::TryAll { keys, shared }, _)] = batch {
        let mut args = pid_args(session, key)?;
        add(&mut args, *shared)?;
        add_key_arrays(&mut args, keys)?;
        let all: bool = session
            .fetch(key, Effect::Write, sql::TRY_LOCK_ALL, args)
            .await?;
        return Ok(vec![Ok(all)]);
    }
    // A batch of one (a quiet client) goes as the plain statement: the arrays and
    // `unnest` of a batch cost more than the one operation they carry.
    if let [(kind, key)] = batch {
        let bound = Some(session.options().get_operation_timeout());
        let single = match kind {
            OpKind::Try(LockMode::Exclusive) => Some(sql::TRY_LOCK),
            OpKind::Try(LockMode::Shared) => Some(sql::TRY_LOCK_SHARED),
            OpKind::Unlock(LockMode::Exclusive) => Some(sql::UNLOCK),
            OpKind::Unlock(LockMode::Shared) => Some(sql::UNLOCK_SHARED),
            OpKind::Alive | OpKind::TryAll { .. } => None,
        };
        if let Some(sql) = single {
            let args = session.args_for(*key)?;
            let value: bool = session
                .fetch_pinned(*key, Effect::Write, sql.for_key(*key), args, bound)
                .await?;
            return Ok(vec![Ok(value)]);
        }
        if let OpKind::Alive = kind {
            session.check_alive(*key).await?;
            return Ok(vec![Ok(true)]);
        }
    }
    let mut args = pid_args(session, key)?;
    let kinds: Vec<i32> = batch
        .iter()
        .map(|(kind, _)| match kind {
            OpKind::Try(LockMode::Exclusive) => 1,
            OpKind::Try(LockMode::Shared) => 2,
            OpKind::Unlock(LockMode::Exclusive) => 3,
            OpKind::Unlock(LockMode::Shared) => 4,
            OpKind::Alive | OpKind::TryAll { .. } => 0,
        })
        .collect();
    add(&mut args, kinds)?;
    let keys: Vec<LockKey> = batch.iter().map(|(_, key)| *key).collect();
    add_key_arrays(&mut args, &keys)?;
    let rows: Vec<(i64, Option<bool>)> = session
        .fetch_numbered(key, Effect::Write, sql::LANE_BATCH, args)
        .await?;
    let mut answers: Vec<Result<bool>> = batch.iter().map(|_| Ok(true)).collect();
    for (number, value) in rows {
        let Some(slot) = usize::try_from(number - 1)
            .ok()
            .and_then(|i| answers.get_mut(i))
        else {
            continue;
        };
        *slot = match (&batch[(number - 1) as usize].0, value) {
            (OpKind::Alive, _) => Ok(true),
            (_, Some(value)) => Ok(value),
            (_, None) => Err(Error::Database(sqlx::Error::RowNotFound)),
        };
    }
    Ok(answers)
}

/// A fresh argument list with the lane's server session (`$1`) only.
fn pid_args(session: &LaneSession, key: LockKey) -> Result<PgArguments> {
    let pid = session.pid().ok_or(Error::Disconnected { key })?;
    let mut args = PgArguments::default();
    add(&mut args, pid)?;
    Ok(args)
}

/// Binds keys as the client statements take them: `pair[]`, `k1[]`, `k2[]`.
pub(super) fn add_key_arrays(args: &mut PgArguments, keys: &[LockKey]) -> Result<()> {
    let mut pair = Vec::with_capacity(keys.len());
    let mut k1 = Vec::with_capacity(keys.len());
    let mut k2 = Vec::with_capacity(keys.len());
    for key in keys {
        match *key {
            LockKey::BigInt(k) => {
                pair.push(false);
                k1.push(k);
                k2.push(0_i32);
            }
            LockKey::IntPair(a, b) => {
                pair.push(true);
                k1.push(i64::from(a));
                k2.push(b);
            }
        }
    }
    add(args, pair)?;
    add(args, k1)?;
    add(args, k2)
}

/// The error of a statement, for one of the operations it carried (`Error` is not
/// `Clone`: it holds sqlx's): typed errors keep their kind with the operation's key; a
/// session found gone is `Disconnected`; any other database error keeps its message.
pub(super) fn copy_error(err: &Error, key: LockKey) -> Error {
    match err {
        Error::NotHeld { mode, .. } => Error::NotHeld { key, mode: *mode },
        Error::Closed => Error::Closed,
        Error::LockLost { .. } => Error::LockLost { key },
        Error::Disconnected { .. } => Error::Disconnected { key },
        Error::Interrupted { .. } => Error::Interrupted { key },
        Error::Unresponsive { after, .. } => Error::Unresponsive { key, after: *after },
        Error::StaleToken { token, current, .. } => Error::StaleToken {
            key,
            token: *token,
            current: *current,
        },
        Error::SessionNotPinned { first_pid, pid, .. } => Error::SessionNotPinned {
            key,
            first_pid: *first_pid,
            pid: *pid,
        },
        Error::StandbyServer { .. } => Error::StandbyServer { key },
        Error::Deadlock { .. } => Error::Deadlock { key },
        Error::TooManyLocks { .. } => Error::TooManyLocks { key },
        Error::Database(db) if session::found_gone(err) => {
            let _ = db;
            Error::Disconnected { key }
        }
        Error::Database(db) => Error::Database(sqlx::Error::Protocol(format!(
            "a statement carrying this operation with others failed: {db}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts a statement "on the wire" of `lane` (one that never lands) and `queued`
    /// operations behind it.
    fn make_busy(table: &mut Table, lane: LaneId, queued: usize) {
        table.lanes[lane].io = Io::Busy(Box::pin(std::future::pending()));
        for _ in 0..queued {
            table.push(OpKind::Alive, LockKey::BigInt(0), lane);
        }
    }

    /// A key whose own lane (by its hash) among `lanes` is `lane`.
    fn key_of_lane(table: &Table, lane: LaneId) -> LockKey {
        (0..)
            .map(LockKey::BigInt)
            .find(|key| table.lane_for(*key) == lane)
            .unwrap_or(LockKey::BigInt(0))
    }

    #[test]
    fn a_new_key_goes_to_its_own_lane_until_two_lanes_are_busy_then_joins_the_shorter_queue() {
        let mut table = Table::new(4);
        let keys: Vec<LockKey> = (0..4).map(|lane| key_of_lane(&table, lane)).collect();
        // Idle lanes, or one busy: every key to its own lane.
        make_busy(&mut table, 0, 3);
        for (lane, key) in keys.iter().enumerate() {
            assert_eq!(table.lane_for(*key), lane);
        }
        // Two busy: a key whose own lane is idle joins the busy lane with the shorter
        // queue; a key whose own lane is busy stays on it.
        make_busy(&mut table, 1, 1);
        assert_eq!(table.lane_for(keys[2]), 1);
        assert_eq!(table.lane_for(keys[3]), 1);
        assert_eq!(table.lane_for(keys[0]), 0);
        assert_eq!(table.lane_for(keys[1]), 1);
        // A key the client holds stays where its levels are.
        table.keys.insert(keys[3], Backing::new(3));
        assert_eq!(table.lane_for(keys[3]), 3);
    }
}

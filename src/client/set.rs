//! [`LockSet`]: several keys taken all-or-nothing, released together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgArguments;

use super::Inner;
use super::table::{LaneSession, OpId, Settled, lock};
use crate::memory::MemoryLock;
use crate::session::{Effect, Session};
use crate::sql::{self, add};
use crate::{Error, LockKey, LockMode, Result, timer};

/// Keys taken together by [`LockClient::try_lock_all`](super::LockClient::try_lock_all)
/// and its variants: one level of one mode on each. Release them with
/// [`release`](Self::release) (one round trip per lane, all lanes at once); a dropped set
/// releases them as a dropped [`ClientLock`](super::ClientLock) does.
pub struct LockSet {
    inner: Arc<Inner>,
    mode: LockMode,
    /// One local session per key, in key order.
    members: Vec<(LockKey, MemoryLock)>,
}

impl LockSet {
    /// The keys, sorted.
    pub fn keys(&self) -> Vec<LockKey> {
        self.members.iter().map(|(key, _)| *key).collect()
    }

    /// The mode every key is held in.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the set holds no key (it was made from none).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Releases every key, in one round trip per lane (the lanes at once).
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if a key's level was lost meanwhile, or its lane was found gone
    /// as it released (the others are released all the same); a release that fails
    /// otherwise returns its lane's error, as a [`ClientLock`](super::ClientLock)'s
    /// ([Errors](super::ClientLock#errors)).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the releases to the lanes: they happen anyway.
    pub async fn release(mut self) -> Result<()> {
        let mut outcome = Ok(());
        let mut releases = Vec::new();
        for (key, member) in &mut self.members {
            match member.release(self.mode) {
                Ok(()) => releases.push(*key),
                Err(err) => outcome = Err(err),
            }
            member.end();
        }
        let ops: Vec<(LockKey, OpId)> = {
            let mut table = lock(&self.inner.table);
            releases
                .into_iter()
                .filter_map(|key| table.unback(key, self.mode).map(|op| (key, op)))
                .collect()
        };
        self.members.clear();
        for (key, op) in ops {
            match self.inner.complete(op).await {
                Ok(true) => {}
                Ok(false) => outcome = outcome.and(Err(Error::LockLost { key })),
                Err(err) => outcome = outcome.and(Err(err)),
            }
        }
        outcome
    }
}

impl Drop for LockSet {
    fn drop(&mut self) {
        if self.members.is_empty() {
            return;
        }
        let mut table = lock(&self.inner.table);
        for (key, member) in &mut self.members {
            if member.holds(self.mode)
                && let Some(op) = table.unback(*key, self.mode)
            {
                table.abandon(op);
            }
            member.end();
        }
        drop(table);
        self.inner.wakers.nudge();
    }
}

impl std::fmt::Debug for LockSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockSet")
            .field("mode", &self.mode)
            .field("keys", &self.keys())
            .finish()
    }
}

/// Takes every key or none; waits up to `timeout` if given.
pub(super) async fn acquire_all<I, K>(
    inner: &Arc<Inner>,
    keys: I,
    mode: LockMode,
    timeout: Option<Duration>,
) -> Result<Option<LockSet>>
where
    I: IntoIterator<Item = K>,
    K: Into<LockKey>,
{
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut keys: Vec<LockKey> = keys.into_iter().map(Into::into).collect();
    keys.sort();
    keys.dedup();
    loop {
        if let Attempt::Done(taken) = take_all(inner, &keys, mode, deadline).await? {
            return Ok(taken);
        }
    }
}

/// How one attempt at a set ended.
enum Attempt {
    Done(Option<LockSet>),
    /// A member's local grant went with a lane before the server's level was asked for:
    /// it was never the caller's, so it is forgotten silently and the set starts again.
    Again,
}

/// One attempt at taking `keys` (sorted, distinct): locally, then on the server.
async fn take_all(
    inner: &Arc<Inner>,
    keys: &[LockKey],
    mode: LockMode,
    deadline: Option<Instant>,
) -> Result<Attempt> {
    let mut set = Taking {
        inner: Arc::clone(inner),
        mode,
        members: Vec::new(),
        backed: Vec::new(),
    };
    // Locally, in key order (so that sets waiting for each other never deadlock): each
    // key a session of its own, as a ClientLock is.
    for key in keys {
        let mut member = inner.shared.local.lock(*key);
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let granted = match (left, mode) {
            (None, _) | (Some(Duration::ZERO), _) => member.try_now(mode)?,
            (Some(left), LockMode::Exclusive) => member.try_lock_for(left).await?,
            (Some(left), LockMode::Shared) => member.try_lock_shared_for(left).await?,
        };
        if !granted {
            return Ok(Attempt::Done(None));
        }
        set.members.push((*key, member));
    }
    // On the server: keys the client holds in this mode already are shared; the rest go
    // to one lane in one statement, every one or none.
    loop {
        let needed = {
            let mut table = lock(&inner.table);
            // A lane loss takes local levels under the table's lock: a member lost since
            // its local grant is never backed by a fresh server level.
            if !set.all_held() {
                return Ok(Attempt::Again);
            }
            let settled = table.settled(keys);
            let time_left = deadline.is_some_and(|d| d > Instant::now());
            if matches!(settled, Settled::WaitedFor) && !time_left {
                // Another lock waits for a key: the server would refuse it now.
                return Ok(Attempt::Done(None));
            }
            if !matches!(settled, Settled::Yes) {
                None
            } else {
                let mut needed = Vec::new();
                for key in keys {
                    if set.backed.contains(key) {
                        continue;
                    }
                    match table.held_on_server(*key, mode) {
                        true => {
                            table.share(*key, mode);
                            set.backed.push(*key);
                        }
                        false => needed.push(*key),
                    }
                }
                Some(needed)
            }
        };
        let Some(needed) = needed else {
            // A key in transition (a release on its way) or waited for: let the lanes
            // move on, for no longer than the set may wait.
            match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = timer::timeout(left, drive_once(inner)).await;
                }
                None => drive_once(inner).await,
            }
            continue;
        };
        if needed.is_empty() {
            return Ok(Attempt::Done(Some(set.keep())));
        }
        let op = lock(&inner.table).try_all(needed.clone(), mode == LockMode::Shared);
        set.backed.extend(&needed);
        if inner.complete(op).await? {
            return Ok(Attempt::Done(Some(set.keep())));
        }
        let Some(deadline) = deadline else {
            return Ok(Attempt::Done(None));
        };
        if deadline <= Instant::now() {
            return Ok(Attempt::Done(None));
        }
        // Wait for them on a session of its own, in key order (unless a member was lost
        // meanwhile, as above).
        let begun = {
            let mut table = lock(&inner.table);
            if !set.all_held() {
                return Ok(Attempt::Again);
            }
            table.wait_all_begin(&needed, mode)
        };
        let Some(op) = begun else {
            drive_once(inner).await;
            set.unback(&needed);
            continue;
        };
        let waited = wait_all(inner, &needed, mode, deadline, op).await;
        return match waited {
            Ok(true) => Ok(Attempt::Done(Some(set.keep()))),
            Ok(false) => Ok(Attempt::Done(None)),
            Err(err) => Err(err),
        };
    }
}

/// A set being taken: everything it holds is given back if it is not kept.
struct Taking {
    inner: Arc<Inner>,
    mode: LockMode,
    members: Vec<(LockKey, MemoryLock)>,
    /// Keys counted as holders of the client's server level.
    backed: Vec<LockKey>,
}

impl Taking {
    fn keep(mut self) -> LockSet {
        self.backed.clear();
        LockSet {
            inner: Arc::clone(&self.inner),
            mode: self.mode,
            members: std::mem::take(&mut self.members),
        }
    }

    /// Whether every member still holds its local level (a lane loss takes them).
    fn all_held(&self) -> bool {
        self.members
            .iter()
            .all(|(_, member)| member.holds(self.mode))
    }

    fn unback(&mut self, keys: &[LockKey]) {
        let mut table = lock(&self.inner.table);
        for key in keys {
            if let Some(at) = self.backed.iter().position(|k| k == key) {
                self.backed.remove(at);
                // A member whose level was lost lost its share of the server level with
                // it: the key's count now (if any) is other locks'.
                let lost = !self
                    .members
                    .iter()
                    .any(|(k, member)| k == key && member.holds(self.mode));
                if lost {
                    continue;
                }
                if let Some(op) = table.unback(*key, self.mode) {
                    table.abandon(op);
                }
            }
        }
    }
}

impl Drop for Taking {
    fn drop(&mut self) {
        // `unback` finds each key in `self.backed`: pass a copy, not the taken list.
        let backed = self.backed.clone();
        self.unback(&backed);
        for (_, member) in &mut self.members {
            member.end();
        }
        self.inner.wakers.nudge();
    }
}

/// Lets the lanes move on once: polls them, then yields until the next change.
async fn drive_once(inner: &Inner) {
    let mut polled = false;
    std::future::poll_fn(|cx| {
        if polled {
            // It may have been the one polling a lane that is still busy: hand over.
            if lock(&inner.table).busy() {
                inner.wakers.nudge();
            }
            return std::task::Poll::Ready(());
        }
        polled = true;
        inner.wakers.listen(cx.waker());
        let mut table = lock(&inner.table);
        let landed = inner.drive(&mut table, cx.waker());
        drop(table);
        inner.landed(landed);
        std::task::Poll::Pending
    })
    .await
}

/// Waits for every key in `keys` (sorted) on a session that holds nothing else, bounded
/// by `deadline` through the session's `statement_timeout`. Granted, the session becomes
/// an extra lane for them; otherwise it is ended (what it took goes with it).
async fn wait_all(
    inner: &Inner,
    keys: &[LockKey],
    mode: LockMode,
    deadline: Instant,
    op: OpId,
) -> Result<bool> {
    let mut guard = AllAlone {
        inner,
        keys,
        mode,
        op,
        counted: false,
        ended: false,
    };
    let key = keys.first().copied().unwrap_or(LockKey::BigInt(0));
    let conn = inner.shared.pool.acquire().await?;
    lock(&inner.table).waiting += 1;
    guard.counted = true;
    let mut session: LaneSession = Session::new(conn);
    session.set_options(inner.shared.options.clone());
    session.first(key, None).await?;
    let previous = session.statement_timeout_ms();
    let left = deadline.saturating_duration_since(Instant::now());
    let millis = sql::lock_timeout_millis(left);
    session.set_statement_timeout(key, millis).await?;
    let mut args = PgArguments::default();
    add(&mut args, session.pid().ok_or(Error::Disconnected { key })?)?;
    add(&mut args, mode == LockMode::Shared)?;
    super::table::add_key_arrays(&mut args, keys)?;
    let bound = left.saturating_add(inner.shared.options.get_operation_timeout());
    let all: Result<Option<bool>> = session
        .fetch_optional(key, Effect::Write, sql::LOCK_ALL, args, Some(bound))
        .await;
    // A session's locks outlive a failed statement: unless the wait was granted, what it
    // took before it ended goes with the session, which is closed rather than returned
    // to the pool (whatever the session's own drop would do with it).
    let granted = match all {
        Ok(all) => all == Some(true),
        // The statement timeout: the time is up.
        Err(Error::Database(err)) if crate::error::sqlstate(&err).as_deref() == Some("57014") => {
            false
        }
        Err(err) => {
            session.discard_on_drop();
            return Err(err);
        }
    };
    if !granted {
        session.discard_on_drop();
    } else if let Err(err) = session.set_statement_timeout(key, previous).await {
        session.discard_on_drop();
        return Err(err);
    }
    let session = granted.then_some(session);
    lock(&inner.table).wait_all_end(keys, mode, op, session);
    guard.ended = true;
    Ok(granted)
}

/// Keeps the client's record right if an all-or-nothing wait is dropped.
struct AllAlone<'a> {
    inner: &'a Inner,
    keys: &'a [LockKey],
    mode: LockMode,
    op: OpId,
    counted: bool,
    ended: bool,
}

impl Drop for AllAlone<'_> {
    fn drop(&mut self) {
        let mut table = lock(&self.inner.table);
        if self.counted {
            table.waiting = table.waiting.saturating_sub(1);
        }
        if !self.ended {
            table.wait_all_end(self.keys, self.mode, self.op, None);
        }
        drop(table);
        self.inner.wakers.nudge();
    }
}

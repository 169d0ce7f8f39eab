//! `pglock status`: who holds and who waits for advisory locks, as a table or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use pglock::LockKey;
use pglock::inspect::{self, LockInfo};
use serde::Serialize;

use crate::args::{Lock, StatusArgs};
use crate::database::{self, Database};
use crate::duration::human;
use crate::exit::{self, Fatal};

pub async fn status(url: Option<String>, args: StatusArgs) -> Result<u8, Fatal> {
    let lock = args
        .lock
        .as_deref()
        .map(|arg| Lock::parse(arg, args.how.name));
    let database = Database::from_args(url)?;
    let pool = database.connect().await?;
    let infos = match &lock {
        Some(lock) => inspect::locks_on(&pool, lock.key).await,
        None => inspect::locks(&pool).await,
    }
    .map_err(|err| Fatal(format!("cannot read pg_locks: {err}")))?;
    database::close(pool).await;
    let text = match (&lock, infos.is_empty(), args.json) {
        (_, _, true) => json_lines(&infos)?,
        (Some(lock), true, false) => format!("no holders or waiters for {lock}\n"),
        (None, true, false) => "no advisory locks\n".to_owned(),
        (_, false, false) => table(&infos),
    };
    exit::print(&text)
}

/// One row of `pglock status --json`.
#[derive(Debug, Serialize)]
struct JsonRow<'a> {
    /// As `LockKey` displays it; a string, since a bigint key exceeds what JSON numbers
    /// hold exactly in most readers (doubles).
    key: String,
    /// `bigint` or `int_pair`.
    key_space: &'static str,
    /// The key's two 32-bit parts as `pg_locks` shows them (`classid`, `objid`).
    classid: u32,
    objid: u32,
    mode: String,
    granted: bool,
    pid: i32,
    waiting_ms: Option<u64>,
    application_name: Option<&'a str>,
    client_addr: Option<&'a str>,
    query_age_ms: Option<u64>,
}

impl<'a> JsonRow<'a> {
    fn new(info: &'a LockInfo) -> JsonRow<'a> {
        let (classid, objid, _) = info.key.pg_locks_ids();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        JsonRow {
            key: info.key.to_string(),
            key_space: match info.key {
                LockKey::BigInt(_) => "bigint",
                LockKey::IntPair(..) => "int_pair",
            },
            classid,
            objid,
            mode: info.mode.to_string(),
            granted: info.granted,
            pid: info.pid,
            waiting_ms: info.waiting_for.filter(|_| !info.granted).map(millis),
            application_name: info.application_name.as_deref(),
            client_addr: info.client_addr.as_deref(),
            query_age_ms: info.query_age.map(millis),
        }
    }
}

/// `pglock status --json`: a JSON object per row, one per line.
fn json_lines(infos: &[LockInfo]) -> Result<String, Fatal> {
    let mut out = String::new();
    for info in infos {
        let line = serde_json::to_string(&JsonRow::new(info))
            .map_err(|err| Fatal(format!("cannot write JSON: {err}")))?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// The aligned table `pglock status` prints.
fn table(infos: &[LockInfo]) -> String {
    let header = [
        "KEY",
        "MODE",
        "STATE",
        "PID",
        "WAITING",
        "APPLICATION",
        "CLIENT",
        "QUERY AGE",
    ]
    .map(str::to_owned);
    let dash = || "-".to_owned();
    let rows: Vec<[String; 8]> = infos
        .iter()
        .map(|info| {
            [
                info.key.to_string(),
                info.mode.to_string(),
                if info.granted { "held" } else { "waiting" }.to_owned(),
                info.pid.to_string(),
                match (info.granted, info.waiting_for) {
                    (true, _) => dash(),
                    (false, Some(waited)) => human(waited),
                    (false, None) => "?".to_owned(),
                },
                info.application_name
                    .clone()
                    .filter(|name| !name.is_empty())
                    .unwrap_or_else(dash),
                // No client address: a Unix-socket connection.
                info.client_addr
                    .clone()
                    .unwrap_or_else(|| "local".to_owned()),
                info.query_age.map(human).unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<width$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

//! `pglock status`: who holds and who waits for advisory locks, as a table.

use std::fmt::Write as _;

use pglock::inspect::{self, LockInfo};

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
    let text = match (&lock, infos.is_empty()) {
        (Some(lock), true) => format!("no holders or waiters for {lock}\n"),
        (None, true) => "no advisory locks\n".to_owned(),
        (_, false) => table(&infos),
    };
    exit::print(&text)
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

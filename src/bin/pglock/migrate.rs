//! `pglock migrate`: pglock's schema, today the fencing-token table `run --fenced` needs.

use crate::database::{self, Database};
use crate::exit::{self, Fatal};

pub async fn migrate(url: Option<String>) -> Result<u8, Fatal> {
    let database = Database::from_args(url)?;
    let pool = database.connect().await?;
    let applied = pglock::migrate(&pool).await;
    database::close(pool).await;
    applied.map_err(|err| {
        Fatal(format!(
            "cannot apply pglock's migrations to the database at {}: {err}",
            database.shown
        ))
    })?;
    exit::print(&format!(
        "pglock's migrations are applied to {}: pglock_fencing_tokens is ready for --fenced\n",
        database.shown
    ))
}

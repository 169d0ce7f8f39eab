//! Statements a server ran, from `pg_stat_statements` on a private cluster (which
//! preloads it): how many statements a piece of pglock sends, counted by the server.
//!
//! Only the statements of one role are counted, [`COUNTED_ROLE`]: connect what is to be
//! counted with [`Observer::options`], and the test's own looks at the server (`pg_locks`
//! from another session, a setting read through the pool) stay out of the count.

use sqlx::PgConnection;
use sqlx::postgres::PgConnectOptions;

/// The role whose statements are counted.
pub const COUNTED_ROLE: &str = "pglock_counted";

/// A connection that reads and resets the cluster's statement counts.
pub struct Observer {
    conn: PgConnection,
    url: String,
}

impl Observer {
    /// Connects to the cluster at `url` and makes sure the extension and the counted role
    /// exist.
    pub async fn connect(url: &str) -> Observer {
        let mut conn = super::connect_at(url).await;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await
            .expect("create pg_stat_statements");
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(COUNTED_ROLE)
                .fetch_one(&mut conn)
                .await
                .expect("read pg_roles");
        if !exists {
            // A role name cannot be bound; this one is a constant of the test harness.
            sqlx::query("CREATE ROLE pglock_counted LOGIN")
                .execute(&mut conn)
                .await
                .expect("create the counted role");
        }
        Observer {
            conn,
            url: url.to_owned(),
        }
    }

    /// Connect options for the counted role, on the observed cluster.
    pub fn options(&self) -> PgConnectOptions {
        let options: PgConnectOptions = self.url.parse().expect("the URL parses");
        options.username(COUNTED_ROLE)
    }

    /// A pool of at most `max` connections of the counted role.
    pub async fn pool(&self, max: u32) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(super::WAIT)
            .connect_with(self.options())
            .await
            .expect("connect the counted pool")
    }

    /// Forgets every count so far.
    pub async fn reset(&mut self) {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut self.conn)
            .await
            .expect("pg_stat_statements_reset");
    }

    /// Calls of the counted role since the last reset, and each statement as
    /// `"<calls>× <normalised text>"`, to tell statements apart by their words.
    pub async fn statements(&mut self) -> (i64, Vec<String>) {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT query, calls FROM pg_stat_statements \
             WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = $1) ORDER BY query",
        )
        .bind(COUNTED_ROLE)
        .fetch_all(&mut self.conn)
        .await
        .expect("read pg_stat_statements");
        let calls = rows.iter().map(|(_, n)| n).sum();
        let seen = rows.into_iter().map(|(q, n)| format!("{n}× {q}")).collect();
        (calls, seen)
    }

    pub async fn close(self) {
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

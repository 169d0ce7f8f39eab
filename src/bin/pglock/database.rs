//! The database: which one (`--database-url` or `DATABASE_URL`), connecting to it, and
//! naming it in messages without its password.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::duration::human;
use crate::exit::Fatal;

/// The `application_name` of pglock's sessions.
pub const APPLICATION_NAME: &str = "pglock-cli";
/// How long pglock waits for a database connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The database to connect to, and how to name it without its password.
pub struct Database {
    options: PgConnectOptions,
    /// `user@host:port/db`, for messages.
    pub shown: String,
}

impl Database {
    /// The database `--database-url` names, else `DATABASE_URL`.
    pub fn from_args(url: Option<String>) -> Result<Database, Fatal> {
        let url = url
            .filter(|url| !url.is_empty())
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()))
            .ok_or_else(|| {
                Fatal(
                    "no database given: pass --database-url <URL> or set the DATABASE_URL \
                     environment variable (postgres://user:password@host:5432/db)"
                        .to_owned(),
                )
            })?;
        let options = PgConnectOptions::from_str(&url).map_err(|err| {
            Fatal(format!(
                "invalid database URL {}: {}",
                redact_url(&url),
                scrub(&err.to_string(), &url)
            ))
        })?;
        let host = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => options.get_host().to_owned(),
        };
        let shown = format!(
            "{}@{}:{}/{}",
            options.get_username(),
            host,
            options.get_port(),
            options.get_database().unwrap_or(options.get_username())
        );
        let options = options.application_name(APPLICATION_NAME);
        Ok(Database { options, shown })
    }

    /// A small pool (the lock's session and one for looking at `pg_locks`), with a first
    /// connection made within [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<PgPool, Fatal> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(self.options.clone());
        match pool.acquire().await {
            Ok(conn) => {
                drop(conn);
                Ok(pool)
            }
            Err(sqlx::Error::PoolTimedOut) => {
                // The pool retries refused connections until its deadline and then only
                // says it timed out: one more try, to tell the user why.
                let retry = <sqlx::PgConnection as sqlx::Connection>::connect_with(&self.options);
                let why = match tokio::time::timeout(Duration::from_secs(3), retry).await {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no connection within {}", human(CONNECT_TIMEOUT)),
                };
                Err(self.connect_error(why))
            }
            Err(err) => Err(self.connect_error(err)),
        }
    }

    /// "cannot connect to the database at user@host:port/db: why".
    pub fn connect_error(&self, err: impl std::fmt::Display) -> Fatal {
        Fatal(format!(
            "cannot connect to the database at {}: {err}",
            self.shown
        ))
    }
}

/// Closes `pool` gracefully, so the server logs no broken connection; bounded all the same.
pub async fn close(pool: PgPool) {
    let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
}

// A URL that parses is shown through `PgConnectOptions` (above), which has no password
// in it. These three are for the URL that does not parse: sqlx parses with the `url`
// crate, so a URL sqlx refuses is mostly one `url` refuses too, and cannot be redacted
// through it. Finding `:password@` in the authority by hand works on any text.

/// `url` with its password taken out, for messages about a URL that does not parse.
fn redact_url(url: &str) -> String {
    match password_span(url) {
        Some((start, end)) => format!("{}***{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

/// `message` with the URL's password (if any, and long enough to be told apart from
/// ordinary text) replaced by `***`.
fn scrub(message: &str, url: &str) -> String {
    match password_span(url).map(|(start, end)| &url[start..end]) {
        Some(password) if password.len() >= 4 => message.replace(password, "***"),
        _ => message.to_owned(),
    }
}

/// Where the password is in `scheme://user:password@host/...`, as a byte range.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let authority_start = url.find("://")? + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let userinfo_len = rest[..authority_len].rfind('@')?;
    let colon = rest[..userinfo_len].find(':')?;
    Some((authority_start + colon + 1, authority_start + userinfo_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url = "postgres://app:s3cret@db.example:5433/prod?sslmode=require";
        assert_eq!(
            redact_url(url),
            "postgres://app:***@db.example:5433/prod?sslmode=require"
        );
        assert_eq!(scrub("bad s3cret here", url), "bad *** here");
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("not a url"), "not a url");
        let db = Database::from_args(Some(url.to_owned())).expect("parses");
        assert_eq!(db.shown, "app@db.example:5433/prod");
    }
}

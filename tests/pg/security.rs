//! SQL is never built from strings (issues 7 and 12): the escape hatches sqlx leaves open
//! are forbidden in `src/`.
//!
//! The compiler proves most of it: sqlx 0.9 takes a statement only as `impl SqlSafeStr`,
//! that is a `&'static str` (see the module docs of `src/sql.rs`, whose `compile_fail`
//! examples show each kind of run-time string refused). The unit tests in `src/sql/tests.rs`
//! check the parameters of every statement of `src/sql.rs`. What is left is what the
//! compiler lets through, and this test forbids it in `src/**/*.rs` by a plain text scan
//! of every line that is not a comment:
//!
//! - `AssertSqlSafe` (any text, asserted safe), `QueryBuilder` (its `push` takes any text),
//!   `copy_in_raw` / `copy_out_raw` (they take any `&str`), and `raw_sql` (no parameters);
//! - what makes a `&'static str` at run time: `leak` (`String::leak`, `Box::leak`, ...) and
//!   statics initialized at run time (`OnceLock`, `LazyLock`, `OnceCell`, `lazy_static`,
//!   `once_cell`);
//! - text from outside the source (`include_str!`, `include_bytes!`, `include!`, `env!`,
//!   `option_env!`) and text that hides its words (`concat!`, `stringify!`);
//! - in `src/sql.rs`, `format!`, `format_args!`, `write!` and `writeln!`: its statements are
//!   literal constants;
//! - outside `src/sql.rs`, SQL-looking text: an upper-case SQL keyword followed by a space, a
//!   lower-case one that starts a statement right after a `"`, or an advisory-lock,
//!   `set_config` or `current_setting` call.
//!
//! The few uses the crate needs are listed in [`ALLOWED`], each counted exactly and with
//! its reason. `src/sql/tests.rs`, compiled only for the unit tests, holds bad statements
//! on purpose and is not scanned. The scan proves itself first on snippets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Escape hatches forbidden everywhere in `src/`: `(tokens, why)`; `name!` is a macro.
const FORBIDDEN: [(&str, &str); 7] = [
    ("AssertSqlSafe", "passes any text to sqlx as a statement"),
    (
        "QueryBuilder query_builder",
        "builds a statement from pushed text",
    ),
    ("copy_in_raw copy_out_raw", "sends any &str as a statement"),
    ("raw_sql", "sends a statement without parameters"),
    (
        "leak OnceLock LazyLock OnceCell lazy_static once_cell",
        "makes a &'static str of run-time text",
    ),
    (
        "include_str! include_bytes! include! env! option_env!",
        "a &'static str from outside the source",
    ),
    (
        "concat! stringify!",
        "a &'static str whose words the scan cannot see",
    ),
];

/// Forbidden in `src/sql.rs` too: its statements are literal constants.
const FORBIDDEN_IN_SQL_RS: (&str, &str) = (
    "format! format_args! write! writeln!",
    "formats text into a statement",
);

/// The uses `src/` needs: `(file, token, exactly how many, why it is no statement)`.
const ALLOWED: [(&str, &str, usize, &str); 6] = [
    (
        "src/bin/pglock/exit.rs",
        "include_str!",
        1,
        "a unit test reads the README's exit-code table, to check it matches the code",
    ),
    (
        "src/bin/pglock/args.rs",
        "include_str!",
        1,
        "a unit test reads the README's CLI section, to check it lists every flag",
    ),
    (
        "src/timer.rs",
        "leak",
        1,
        "leaks the timer thread's state, a struct",
    ),
    (
        "src/timer.rs",
        "OnceLock",
        5,
        "imported, the static that holds the timer, and the instant deadlines count from",
    ),
    (
        "src/migrate.rs",
        "include_str!",
        2,
        "the migrations, run by sqlx's migrator",
    ),
    (
        "src/lib.rs",
        "include_str!",
        1,
        "the README as the crate docs",
    ),
];

/// SQL keywords, upper case as pglock writes SQL: followed by a space, SQL anywhere on a line.
const SQL_WORDS: &str = "SELECT INSERT UPDATE DELETE WITH SET SAVEPOINT RELEASE ROLLBACK BEGIN \
     COMMIT DROP CREATE ALTER TRUNCATE GRANT REVOKE COPY LOCK LISTEN NOTIFY RESET DISCARD \
     PREPARE EXECUTE DEALLOCATE EXPLAIN VALUES CALL SHOW";

/// SQL keywords in lower case that start a statement but not an English message: right
/// after a `"` and followed by a space, SQL.
const SQL_WORDS_LOWER: &str =
    "select insert update delete savepoint rollback commit truncate drop create alter";

/// SQL functions pglock calls, named at the start of an identifier.
const SQL_FUNCTIONS: [&str; 4] = [
    "pg_advisory",
    "pg_try_advisory",
    "set_config(",
    "current_setting(",
];

const SQL_RS: &str = "src/sql.rs";

/// Compiled only for `cargo test` (declared `#[cfg(test)]` in `src/sql.rs`): not scanned.
const SQL_TESTS_RS: &str = "src/sql/tests.rs";

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The lines of `text` that may hold code, numbered from 1: a line that starts with `//`
/// is a comment (or inside a string or a block comment), never code.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
}

/// How many times `line` names `token` as a whole identifier (`name!`: a macro call).
fn count(line: &str, token: &str) -> usize {
    let (name, is_macro) = token
        .strip_suffix('!')
        .map_or((token, false), |name| (name, true));
    line.match_indices(name)
        .filter(|&(at, _)| {
            let after = &line[at + name.len()..];
            !line[..at].ends_with(is_ident)
                && !after.starts_with(is_ident)
                && (!is_macro || after.trim_start().starts_with('!'))
        })
        .count()
}

/// Why `line` looks like SQL, if it does.
fn sql_looking(line: &str) -> Option<String> {
    for function in SQL_FUNCTIONS {
        if line
            .match_indices(function)
            .any(|(at, _)| !line[..at].ends_with(is_ident))
        {
            return Some(function.trim_end_matches('(').to_owned());
        }
    }
    let followed_by_space =
        |after: &str| after.is_empty() || after.starts_with(char::is_whitespace);
    for word in SQL_WORDS.split_whitespace() {
        if line.match_indices(word).any(|(at, _)| {
            !line[..at].ends_with(|c: char| is_ident(c) || c == ':' || c == '.')
                && followed_by_space(&line[at + word.len()..])
        }) {
            return Some(word.to_owned());
        }
    }
    for word in SQL_WORDS_LOWER.split_whitespace() {
        if line.match_indices('"').any(|(at, _)| {
            line[at + 1..]
                .trim_start()
                .strip_prefix(word)
                .is_some_and(followed_by_space)
        }) {
            return Some(word.to_owned());
        }
    }
    None
}

/// Every escape hatch in `files` (`(path, text)`), with its file and line, but those
/// [`ALLOWED`].
fn scan(files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, text) in files {
        if path == SQL_TESTS_RS {
            continue;
        }
        let in_sql_rs = path == SQL_RS;
        let rules = FORBIDDEN
            .iter()
            .chain(in_sql_rs.then_some(&FORBIDDEN_IN_SQL_RS));
        for (token, why) in
            rules.flat_map(|&(tokens, why)| tokens.split_whitespace().map(move |t| (t, why)))
        {
            let lines: Vec<usize> = code_lines(text)
                .flat_map(|(n, line)| std::iter::repeat_n(n, count(line, token)))
                .collect();
            match ALLOWED.iter().find(|a| a.0 == path && a.1 == token) {
                Some(&(_, _, allowed, reason)) if lines.len() != allowed => problems.push(format!(
                    "{path}: {token} is allowed exactly {allowed} time(s) ({reason}); found at \
                     lines {lines:?}: {why}. Remove the new use, or update ALLOWED in \
                     tests/security.rs if it makes no statement"
                )),
                Some(_) => {}
                None => {
                    problems.extend(lines.iter().map(|n| format!("{path}:{n}: {token}: {why}")))
                }
            }
        }
        if !in_sql_rs {
            for (n, line) in code_lines(text) {
                if let Some(what) = sql_looking(line) {
                    problems.push(format!(
                        "{path}:{n}: looks like SQL ({what}) outside {SQL_RS}, where every \
                         statement is a constant whose parameters its unit tests check: \
                         {}",
                        line.trim()
                    ));
                }
            }
        }
    }
    problems
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `path` is the root of a binary: `src/bin/name.rs` or `src/bin/name/main.rs`.
fn is_binary_root(path: &str) -> bool {
    match path.strip_prefix("src/bin/") {
        Some(rest) => !rest.contains('/') || rest.ends_with("/main.rs"),
        None => false,
    }
}

/// `src/**/*.rs` as `(path from the crate root, text)`.
fn crate_sources() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    rust_files(&root.join("src"), &mut paths);
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let name = path
                .strip_prefix(&root)
                .unwrap_or(path)
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
            (name, text)
        })
        .collect()
}

#[test]
fn src_uses_none_of_the_escape_hatches_sqlx_lets_through() {
    let sources = crate_sources();
    let by_path: BTreeMap<&str, &str> = sources
        .iter()
        .map(|(path, text)| (path.as_str(), text.as_str()))
        .collect();
    let sql_rs = by_path
        .get(SQL_RS)
        .expect("src/sql.rs holds the statements");
    assert!(
        sql_rs.contains("#[cfg(test)]\nmod tests;\n"),
        "{SQL_TESTS_RS} is skipped because src/sql.rs declares it test-only"
    );
    // `unsafe` could make a `&'static str` of anything; the compiler forbids it.
    for root in by_path
        .keys()
        .filter(|path| **path == "src/lib.rs" || is_binary_root(path))
    {
        assert!(
            by_path[root].contains("#![forbid(unsafe_code)]"),
            "{root} is a crate root without #![forbid(unsafe_code)]"
        );
    }
    let problems = scan(&sources);
    assert!(
        problems.is_empty(),
        "ways to send SQL that is not a constant of src/sql.rs:\n\n{}\n",
        problems.join("\n\n")
    );
}

/// The scan on snippets that use each escape hatch: it must name the file and line of each.
#[test]
fn the_scan_catches_each_escape_hatch_and_sql_outside_sql_rs() {
    let sql_rs = r#"
pub(crate) const GOOD: &str = "SELECT pg_try_advisory_lock($1), pg_backend_pid()";
pub(crate) fn formatted(key: i64) -> String {
    format!("SELECT pg_advisory_lock({key})")
}
pub(crate) const JOINED: &str = concat!("SELECT ", "1");
"#;
    let advisory_rs = r#"
use crate::sql;
async fn ok(conn: &mut PgConnection, key: LockKey, args: PgArguments) {
    sqlx::query_with(sql::LOCK.for_key(key), args).execute(&mut *conn).await;
    conn.execute(sql::SAVEPOINT).await;
    // sqlx::raw_sql(AssertSqlSafe(text)) in a comment is no code
    let message = format!("cannot lock {key}: {}", "LOCK");
}
async fn bad(conn: &mut PgConnection, name: &str, text: String) {
    sqlx::query("SELECT 1").execute(&mut *conn).await;
    conn.execute("DROP TABLE t").await;
    sqlx::raw_sql(AssertSqlSafe(text)).execute(&mut *conn).await;
    let leaked: &'static str = format!("SELECT {name}").leak();
    let boxed: &'static str = Box::leak(text.into_boxed_str());
    let message = format!("UPDATE t SET x = {name}");
    let mut builder = sqlx::QueryBuilder::<Postgres>::new("select ");
    conn.copy_in_raw(name).await;
    static SQL: LazyLock<String> = LazyLock::new(|| std::env::var("SQL").unwrap());
    sqlx::query(stringify!(DELETE FROM t)).execute(&mut *conn).await;
    sqlx::query(env!("PGLOCK_SQL")).execute(&mut *conn).await;
    sqlx::query(include_str!("statement.sql")).execute(&mut *conn).await;
    let q = "select pg_backend_pid() where pid = $1";
    sqlx::query(concat!("SEL", "ECT 1")).execute(&mut *conn).await;
}
"#;
    let timer_rs = "use std::sync::OnceLock;\n\
                    static EPOCH: OnceLock<Instant> = OnceLock::new();\n\
                    static TIMER: OnceLock<&'static Timer> = OnceLock::new();\n";
    let files = [
        ("src/sql.rs", sql_rs),
        ("src/advisory.rs", advisory_rs),
        ("src/timer.rs", timer_rs),
        (
            "src/sql/tests.rs",
            "const BAD: &str = \"SELECT pg_advisory_lock(42)\";",
        ),
    ]
    .map(|(path, text)| (path.to_owned(), text.to_owned()));
    let problems = scan(&files);
    let report = problems.join("\n");
    let expect = |at: &str, needle: &str| {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!("{at}:")) && p.contains(needle)),
            "the scan should flag {needle:?} at {at}; it said:\n{report}"
        );
    };
    expect("src/sql.rs:4", "format!");
    expect("src/sql.rs:6", "concat!");
    expect("src/advisory.rs:10", "SELECT");
    expect("src/advisory.rs:11", "DROP");
    expect("src/advisory.rs:12", "raw_sql");
    expect("src/advisory.rs:12", "AssertSqlSafe");
    expect("src/advisory.rs:13", "leak");
    expect("src/advisory.rs:14", "leak");
    expect("src/advisory.rs:15", "UPDATE");
    expect("src/advisory.rs:16", "QueryBuilder");
    expect("src/advisory.rs:16", "select");
    expect("src/advisory.rs:17", "copy_in_raw");
    expect("src/advisory.rs:18", "LazyLock");
    expect("src/advisory.rs:19", "stringify!");
    expect("src/advisory.rs:20", "env!");
    expect("src/advisory.rs:21", "include_str!");
    expect("src/advisory.rs:22", "select");
    expect("src/advisory.rs:23", "concat!");
    // An allowance is exact: src/timer.rs's five OnceLocks pass, its `leak`, allowed once,
    // is missing.
    expect("src/timer.rs", "leak is allowed exactly 1 time(s)");
    assert!(
        !report.contains("OnceLock"),
        "OnceLock in src/timer.rs is allowed five times:\n{report}"
    );
    // Nothing in the good lines, nor in the test-only file.
    let good_lines = (1..=8).map(|n| format!("src/advisory.rs:{n}"));
    for at in good_lines.chain(["src/sql.rs:2".into(), "src/sql/tests.rs".into()]) {
        assert!(
            !problems.iter().any(|p| p.starts_with(&format!("{at}:"))),
            "false alarm at {at}:\n{report}"
        );
    }
}

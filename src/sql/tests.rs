//! Every statement of `src/sql.rs` passes what varies as a `$n` parameter.
//!
//! [`checked_constants`] names the constants whose statements are checked;
//! [`every_const_and_static_of_sql_rs_is_checked`] reads `src/sql.rs` and fails on any
//! `const` or `static` the list lacks, so a statement added there cannot go unchecked.

use std::collections::BTreeSet;

use super::*;

/// The statements of one constant: one, or the two of a [`KeyedSql`].
trait Statements {
    fn statements(self) -> Vec<&'static str>;
}

impl Statements for &'static str {
    fn statements(self) -> Vec<&'static str> {
        vec![self]
    }
}

impl Statements for KeyedSql {
    fn statements(self) -> Vec<&'static str> {
        vec![self.bigint, self.pair]
    }
}

/// `(name, statements)` of each constant named: the name is the token that gives the value,
/// so the two cannot disagree.
macro_rules! constants {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), Statements::statements($name))),*]
    };
}

/// Every SQL constant of `src/sql.rs`. A new one is added here (the test below says so).
fn checked_constants() -> Vec<(&'static str, Vec<&'static str>)> {
    constants![
        LOCK,
        LOCK_SHARED,
        TRY_LOCK,
        TRY_LOCK_SHARED,
        UNLOCK,
        UNLOCK_SHARED,
        UNLOCK_LEVELS,
        TRY_LOCK_FOR,
        TRY_LOCK_SHARED_FOR,
        IS_HELD,
        IS_HELD_IN_MODE,
        FIRST,
        FIRST_CONFIGURED,
        FIRST_BORROWED,
        LIVENESS,
        STATEMENT_TIMEOUT_MS,
        SET_STATEMENT_TIMEOUT,
        RESTORE_SESSION,
        LANE_BATCH,
        TRY_LOCK_ALL,
        LOCK_ALL,
        LANE_HOLDINGS,
        XACT_LOCK,
        XACT_LOCK_SHARED,
        TRY_XACT_LOCK,
        TRY_XACT_LOCK_SHARED,
        TRY_XACT_LOCK_FOR,
        TRY_XACT_LOCK_SHARED_FOR,
        SAVEPOINT,
        RELEASE_SAVEPOINT,
        ROLLBACK_TO_SAVEPOINT,
        SET_LOCAL_STATEMENT_TIMEOUT,
        LOCK_FENCED,
        TRY_LOCK_FENCED,
        CURRENT_TOKEN,
        ADVISORY_LOCKS,
    ]
}

/// The source of `src/sql.rs`, as compiled.
const SQL_RS: &str = include_str!("../sql.rs");

/// Columns that hold a key, a session or a token: never compared with a literal.
const KEY_COLUMNS: [&str; 6] = ["classid", "objid", "objsubid", "pid", "lock_key", "token"];

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `line` is all comment: a line that starts with `//` holds no code.
fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

/// Positions of `word` in `text` as a whole identifier.
fn words<'a>(text: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    text.match_indices(word)
        .map(|(at, _)| at)
        .filter(move |&at| {
            !text[..at].ends_with(is_ident) && !text[at + word.len()..].starts_with(is_ident)
        })
}

/// `$n` (with an optional `::type` cast): a bound parameter.
fn is_parameter(arg: &str) -> bool {
    let bare = arg.split("::").next().unwrap_or(arg).trim();
    bare.strip_prefix('$')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        || is_column_of_parameters(bare)
}

/// A qualified column (`o.k1`): in these statements, always a column of `unnest` over
/// array parameters, so still a bound value, not one spliced into the text.
fn is_column_of_parameters(arg: &str) -> bool {
    match arg.split_once('.') {
        Some((table, column)) => {
            !table.is_empty()
                && !column.is_empty()
                && table.chars().chain(column.chars()).all(is_ident)
                && !table.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Whether `value` starts with a literal: a quoted string or a number.
fn starts_with_literal(value: &str) -> bool {
    let value = value.trim_start();
    let value = value.strip_prefix('-').unwrap_or(value).trim_start();
    value.starts_with('\'') || value.starts_with(|c: char| c.is_ascii_digit())
}

/// Whether `text` ends with a literal: a quoted string or a number (not a `$n`).
fn ends_with_literal(text: &str) -> bool {
    if text.ends_with('\'') {
        return true;
    }
    let number = text.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    number.len() < text.len() && !number.ends_with(|c: char| is_ident(c) || c == '$')
}

/// A comparison operator at the start of `text`: what follows it.
fn after_comparison(text: &str) -> Option<&str> {
    ["<>", "!=", "<=", ">=", "=", "<", ">"]
        .into_iter()
        .find_map(|op| text.strip_prefix(op))
}

/// A comparison operator at the end of `text`: what precedes it.
fn before_comparison(text: &str) -> Option<&str> {
    ["<>", "!=", "<=", ">=", "=", "<", ">"]
        .into_iter()
        .find_map(|op| text.strip_suffix(op))
}

/// The `$n` parameters a statement uses.
fn parameters(sql: &str) -> BTreeSet<u32> {
    sql.match_indices('$')
        .filter_map(|(at, _)| {
            let digits: String = sql[at + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// The arguments of the call whose name ends at `open` (`(` there, or after spaces), up to
/// the first `)`.
fn call_arguments(sql: &str, open: usize) -> Option<Vec<&str>> {
    let args = sql[open..].trim_start().strip_prefix('(')?;
    let args = args.split(')').next().unwrap_or(args);
    Some(args.split(',').map(str::trim).collect())
}

/// What in `sql` is spliced in instead of bound: empty when every value that varies is a
/// `$n` parameter. These are the rules of `src/sql.rs`'s module docs.
fn spliced_values(sql: &str) -> Vec<String> {
    let mut found = Vec::new();
    let lower = sql.to_ascii_lowercase();
    if sql.trim().is_empty() {
        found.push("no statement".to_owned());
    }
    if sql.contains(['{', '}']) || sql.contains("%s") {
        found.push("a format placeholder ({..} or %s): bind a $n parameter".to_owned());
    }
    if sql.trim_end().trim_end_matches(';').contains(';') {
        found.push("more than one statement".to_owned());
    }
    let numbers = parameters(sql);
    if let Some(&max) = numbers.last()
        && numbers.len() != max as usize
    {
        found.push(format!(
            "parameters {numbers:?} have gaps: $1..${max} expected"
        ));
    }
    // Advisory-lock functions (pg_advisory_lock, pg_try_advisory_xact_lock_shared, ...)
    // take only parameters.
    for (at, _) in lower.match_indices("advisory") {
        let start = lower[..at].trim_end_matches(is_ident).len();
        let end = lower[at..]
            .find(|c| !is_ident(c))
            .map_or(lower.len(), |n| at + n);
        let function = &lower[start..end];
        if !function.starts_with("pg_") {
            continue;
        }
        for arg in call_arguments(&lower, end).unwrap_or_default() {
            if !arg.is_empty() && !is_parameter(arg) {
                found.push(format!(
                    "{function}(..) takes {arg:?}: the key must be a $n parameter"
                ));
            }
        }
    }
    // Key-like columns are never compared with a literal, on either side.
    for column in KEY_COLUMNS {
        for at in words(&lower, column) {
            let after = lower[at + column.len()..].trim_start();
            let literal_after = after_comparison(after).is_some_and(starts_with_literal);
            // Before it, skip a qualifier (`l.pid`).
            let before = lower[..at]
                .strip_suffix('.')
                .map_or(&lower[..at], |q| q.trim_end_matches(is_ident));
            let literal_before = before_comparison(before.trim_end())
                .is_some_and(|rest| ends_with_literal(rest.trim_end()));
            if literal_after || literal_before {
                found.push(format!(
                    "{column} compared with a literal: bind a $n parameter"
                ));
            }
        }
    }
    // set_config(name, value, is_local): the value is never a literal.
    for at in words(&lower, "set_config") {
        let args = call_arguments(&lower, at + "set_config".len()).unwrap_or_default();
        if let Some(value) = args.get(1)
            && starts_with_literal(value)
        {
            found.push(format!(
                "set_config value {value} is a literal: bind a $n parameter"
            ));
        }
    }
    // Row counts are parameters; OFFSET 0 is the planner fence, not a count.
    for keyword in ["limit", "offset"] {
        for at in words(&lower, keyword) {
            let value = lower[at + keyword.len()..].trim_start();
            let number: String = value.chars().take_while(char::is_ascii_digit).collect();
            let fence = keyword == "offset" && number == "0";
            if !number.is_empty() && !fence {
                found.push(format!(
                    "{} {number}: a literal row count; bind a $n parameter",
                    keyword.to_ascii_uppercase()
                ));
            }
        }
    }
    found
}

/// The names of the `const` and `static` items declared in `source`: `const NAME:` or
/// `static NAME:` on a line that is not a comment (not `const fn`, not `&'static str`).
fn declared_items(source: &str) -> BTreeSet<&str> {
    let mut names = BTreeSet::new();
    for line in source.lines().filter(|line| !is_comment(line)) {
        for keyword in ["const", "static"] {
            for at in words(line, keyword) {
                if line[..at].ends_with('\'') {
                    continue; // a lifetime
                }
                let rest = line[at + keyword.len()..].trim_start();
                let name = &rest[..rest.find(|c| !is_ident(c)).unwrap_or(rest.len())];
                let after = rest[name.len()..].trim_start();
                if !name.is_empty() && after.starts_with(':') && !after.starts_with("::") {
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// The 1-based numbers of the lines of `source` that hold a string literal (a `"`) outside
/// the value of a `const` or `static` item (attributes and comments aside). An item's
/// value runs from its declaration to the first line that ends with `;`.
fn literals_outside_items(source: &str) -> Vec<usize> {
    let mut outside = Vec::new();
    let mut in_item = false;
    for (index, line) in source.lines().enumerate() {
        let code = line.trim();
        if is_comment(line) || code.starts_with("#[") || code.starts_with("#![") {
            continue;
        }
        in_item = in_item || !declared_items(line).is_empty();
        if !in_item && code.contains('"') {
            outside.push(index + 1);
        }
        if code.ends_with(';') {
            in_item = false;
        }
    }
    outside
}

#[test]
fn every_statement_of_sql_rs_binds_what_varies_as_a_parameter() {
    let mut problems = Vec::new();
    for (name, statements) in checked_constants() {
        for sql in statements {
            for problem in spliced_values(sql) {
                problems.push(format!("{name}: {problem}\n    SQL: {sql}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "statements of src/sql.rs with a value spliced in:\n\n{}\n",
        problems.join("\n\n")
    );
}

#[test]
fn every_const_and_static_of_sql_rs_is_checked() {
    let declared = declared_items(SQL_RS);
    let checked: BTreeSet<&str> = checked_constants()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let unchecked: Vec<&&str> = declared.difference(&checked).collect();
    assert!(
        unchecked.is_empty(),
        "src/sql.rs declares {unchecked:?}, which src/sql/tests.rs does not check: add each \
         to `constants![..]` in `checked_constants` (a new type of statement implements \
         `Statements`); a constant that is no statement belongs in another module"
    );
    let unseen: Vec<&&str> = checked.difference(&declared).collect();
    assert!(
        unseen.is_empty(),
        "`declared_items` did not find {unseen:?} in src/sql.rs: declare each as \
         `const NAME: ...` on one line, so that a new one cannot be missed"
    );
}

#[test]
fn string_literals_in_sql_rs_are_only_the_values_of_constants() {
    let lines = literals_outside_items(SQL_RS);
    assert!(
        lines.is_empty(),
        "src/sql.rs has string literals outside a const at lines {lines:?}: a statement is a \
         constant (listed in `checked_constants`), so that its parameters are checked"
    );
}

#[test]
fn the_rules_reject_each_kind_of_spliced_value_and_accept_bound_parameters() {
    for (sql, expected) in [
        (
            "SELECT pg_advisory_lock(42)",
            "pg_advisory_lock(..) takes \"42\"",
        ),
        (
            "SELECT PG_TRY_ADVISORY_XACT_LOCK($1, 7)",
            "pg_try_advisory_xact_lock(..) takes \"7\"",
        ),
        ("SELECT 1 FROM pg_locks WHERE pid = 4242", "pid compared"),
        (
            "SELECT 1 FROM pg_locks AS l WHERE 4242 <> l.pid",
            "pid compared",
        ),
        (
            "SELECT 1 FROM pg_locks WHERE classid = $1 AND objid = '7'",
            "objid compared",
        ),
        (
            "SELECT token FROM pglock_fencing_tokens WHERE lock_key = '42'",
            "lock_key compared",
        ),
        ("SELECT $1, $3", "gaps"),
        ("SELECT pg_advisory_lock({key})", "placeholder"),
        ("SELECT '%s'", "placeholder"),
        (
            "SELECT set_config('lock_timeout', '250ms', true)",
            "set_config value '250ms'",
        ),
        ("SELECT 1; SELECT 2", "more than one statement"),
        ("SELECT * FROM pglock_fencing_tokens LIMIT 10", "LIMIT 10"),
        ("SELECT * FROM pglock_fencing_tokens OFFSET 5", "OFFSET 5"),
        ("  ", "no statement"),
    ] {
        let problems = spliced_values(sql);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{sql:?} should be rejected with {expected:?}; the rules said {problems:?}"
        );
    }
    for sql in [
        "SELECT pg_try_advisory_lock($1::bigint, $2), pg_backend_pid()",
        "SELECT 1 FROM pg_locks AS l WHERE l.pid = $1 AND locktype = 'advisory'",
        "SELECT set_config('lock_timeout', $1[2], true) FROM (SELECT 1 OFFSET 0) AS s",
        "SELECT token FROM pglock_fencing_tokens WHERE lock_key = $1 FOR SHARE;",
        "INSERT INTO t (lock_key, token) SELECT $1, 1 ON CONFLICT (lock_key) \
         DO UPDATE SET token = t.token + 1",
    ] {
        assert_eq!(spliced_values(sql), Vec::<String>::new(), "{sql}");
    }
}

#[test]
fn declared_items_finds_every_const_and_static_however_it_is_placed() {
    let source = "pub(crate) const A: &str = \"SELECT 1\";\n\
                  const fn not_an_item() -> &'static str { B }\n\
                  // const COMMENTED: &str = \"\";\n\
                  /// const DOC: &str = \"\";\n\
                  pub const B: &'static str = \"SELECT 2\";\n\
                  \x20   pub(super) const C : KeyedSql = KeyedSql {\n\
                  static D: &str = \"SELECT 3\";\n\
                  fn f() { const E: &str = \"SELECT 4\"; }\n\
                  fn g(x: Option<&'static str>) {}\n";
    assert_eq!(
        declared_items(source),
        BTreeSet::from(["A", "B", "C", "D", "E"])
    );
}

#[test]
fn literals_outside_items_finds_a_statement_that_is_not_a_constant() {
    let source = "//! \"quoted\" in the docs\n\
                  const A: KeyedSql = KeyedSql {\n\
                  \x20   bigint: \"SELECT 1\",\n\
                  \x20   pair: \"SELECT 2\",\n\
                  };\n\
                  #[expect(dead_code, reason = \"an attribute\")]\n\
                  fn statement() -> &'static str {\n\
                  \x20   \"SELECT pg_advisory_lock(1)\"\n\
                  }\n\
                  const B: &str =\n\
                  \x20   \"SELECT 3\";\n\
                  const C: &str = concat!(\"SELECT\", \" 4\");\n\
                  fn message() -> String { \"x\".into() }\n";
    assert_eq!(literals_outside_items(source), vec![8, 13]);
}

//! Security properties (issue 7): SQL is never built from strings, and nothing the crate
//! prints shows a password.
//!
//! (a) A static check over `src/**/*.rs` (not the tests): every statement pglock sends is
//! a constant of `src/sql.rs` with bound parameters.
//!
//! - Every `sqlx::query`, `query_with`, `query_scalar`, `query_scalar_with`, `query_as`,
//!   `query_as_with`, `raw_sql`, `AssertSqlSafe`, and `.execute(..)`/`Executor::execute`
//!   with a string argument takes a `sql::CONSTANT` path, `<KeyedSql>.for_key(..)`, or a
//!   name bound to one: a `let` whose value is built only from those, or a parameter of
//!   type `&'static str` (or `KeyedSql`) whose every call site passes one of those in turn.
//!   A `&'static str` cannot hold a formatted string unless it is leaked, so leaking a
//!   string (`leak(..)` of a `String`/`format!`) is flagged too, as is a `KeyedSql { .. }`
//!   built outside `src/sql.rs`.
//! - No `format!` (or `write!`, `format_args!`, `concat!`) in `src/sql.rs`, and none
//!   anywhere in `src/` whose text holds SQL (SELECT, INSERT, UPDATE, DELETE, SET).
//! - No SQL string literal outside `src/sql.rs`.
//! - Every SQL constant of `src/sql.rs` passes what varies as `$n`: advisory-lock
//!   functions take only parameters, no key-like column (`classid`, `objid`,
//!   `objsubid`, `pid`, `lock_key`, `token`) is compared with a literal, `set_config`
//!   values are not literals, no `LIMIT n` / `OFFSET n` (but the `OFFSET 0` planner
//!   fence), no format placeholders, one statement per constant, and `$1..$n` without
//!   gaps.
//!
//! The checker proves itself first on snippets that break each rule.
//!
//! (b) `Debug` and `Display` of locks (`AdvisoryLock`, its guard, `MemoryLock`),
//! `LockOptions`, every `Error` variant (with `Database` errors from failed connections to
//! URLs that carry a password) and the pool's options never show the password.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pglock::{AdvisoryLock, Error, LockKey, LockMode, LockOptions};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::cluster::PrivateCluster;
use support::rt;

// ---------------------------------------------------------------------------------------
// (a) The static check.
// ---------------------------------------------------------------------------------------

/// One source file, split into what is code, string literal, or comment.
struct Source {
    /// Path shown in messages (`src/xact.rs`).
    name: String,
    text: String,
    kind: Vec<Kind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Code,
    Str,
    Comment,
}

impl Source {
    fn new(name: &str, text: &str) -> Source {
        Source {
            name: name.to_owned(),
            text: text.to_owned(),
            kind: classify(text.as_bytes()),
        }
    }

    fn line_of(&self, at: usize) -> usize {
        self.text[..at].bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn here(&self, at: usize) -> String {
        format!("{}:{}", self.name, self.line_of(at))
    }

    fn is_code(&self, at: usize) -> bool {
        self.kind.get(at) == Some(&Kind::Code)
    }

    /// The text of `range` with comments blanked out.
    fn code(&self, range: std::ops::Range<usize>) -> String {
        range
            .clone()
            .map(|i| match self.kind[i] {
                Kind::Comment => ' ',
                _ => self.text.as_bytes()[i] as char,
            })
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Positions where `word` starts as a whole identifier in code.
    fn find_word(&self, word: &str) -> Vec<usize> {
        let bytes = self.text.as_bytes();
        let mut found = Vec::new();
        let mut from = 0;
        while let Some(pos) = self.text[from..].find(word) {
            let at = from + pos;
            from = at + 1;
            let before = at.checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(at + word.len()).copied();
            if self.is_code(at)
                && !before.is_some_and(is_ident_byte)
                && !after.is_some_and(is_ident_byte)
            {
                found.push(at);
            }
        }
        found
    }

    /// After `at` (just past a name), skips whitespace and a turbofish `::<..>`; returns
    /// the position of `(` if a call follows.
    fn call_paren(&self, mut at: usize) -> Option<usize> {
        let bytes = self.text.as_bytes();
        at = skip_ws(bytes, at);
        if self.text[at..].starts_with("::<") {
            let close = self.matching(at + 2)?;
            at = skip_ws(bytes, close + 1);
        }
        (bytes.get(at) == Some(&b'(')).then_some(at)
    }

    /// The position of the bracket closing the one at `open` (`(`, `[`, `{`, `<` for
    /// turbofish), skipping strings and comments.
    fn matching(&self, open: usize) -> Option<usize> {
        let bytes = self.text.as_bytes();
        let mut depth = 0i32;
        for (i, &b) in bytes.iter().enumerate().skip(open) {
            if !self.is_code(i) {
                continue;
            }
            match b {
                b'(' | b'[' | b'{' => depth += 1,
                b'<' if bytes[open] == b'<' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b'>' if bytes[open] == b'<' && bytes.get(i.wrapping_sub(1)) != Some(&b'-') => {
                    depth -= 1
                }
                _ => {}
            }
            if depth == 0 {
                return Some(i);
            }
        }
        None
    }

    /// The arguments of the call whose `(` is at `open`: `(start, end)` of each, split at
    /// top-level commas.
    fn arguments(&self, open: usize) -> Vec<(usize, usize)> {
        let Some(close) = self.matching(open) else {
            return Vec::new();
        };
        let bytes = self.text.as_bytes();
        let mut args = Vec::new();
        let mut depth = 0i32;
        let mut start = open + 1;
        for (i, &byte) in bytes.iter().enumerate().take(close).skip(open + 1) {
            if !self.is_code(i) {
                continue;
            }
            match byte {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b',' if depth == 0 => {
                    args.push((start, i));
                    start = i + 1;
                }
                _ => {}
            }
        }
        if !self.code(start..close).is_empty() {
            args.push((start, close));
        }
        args
    }

    /// Whether any byte of `range` is inside a string literal.
    fn has_string(&self, range: std::ops::Range<usize>) -> bool {
        range.into_iter().any(|i| self.kind[i] == Kind::Str)
    }

    /// The string literals in `range`, unescaped, with their positions.
    fn strings(&self, range: std::ops::Range<usize>) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut i = range.start;
        while i < range.end {
            if self.kind[i] == Kind::Str {
                let start = i;
                while i < range.end && self.kind[i] == Kind::Str {
                    i += 1;
                }
                out.push((start, unescape(&self.text[start..i])));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Every `fn`: `(name, params text range, body range)`.
    fn functions(&self) -> Vec<Function> {
        let mut out = Vec::new();
        for at in self.find_word("fn") {
            let bytes = self.text.as_bytes();
            let name_start = skip_ws(bytes, at + 2);
            let name_end = (name_start..bytes.len())
                .find(|&i| !is_ident_byte(bytes[i]))
                .unwrap_or(bytes.len());
            let name = self.text[name_start..name_end].to_owned();
            let mut open = skip_ws(bytes, name_end);
            if bytes.get(open) == Some(&b'<') {
                let Some(close) = self.matching(open) else {
                    continue;
                };
                open = skip_ws(bytes, close + 1);
            }
            if bytes.get(open) != Some(&b'(') {
                continue;
            }
            let Some(params_close) = self.matching(open) else {
                continue;
            };
            // The body: the first `{` in code after the parameters (or none: a declaration).
            let body_open = (params_close..bytes.len())
                .find(|&i| self.is_code(i) && (bytes[i] == b'{' || bytes[i] == b';'));
            let Some(body_open) = body_open.filter(|&i| bytes[i] == b'{') else {
                continue;
            };
            let Some(body_close) = self.matching(body_open) else {
                continue;
            };
            let params = self
                .arguments(open)
                .into_iter()
                .map(|(s, e)| self.code(s..e))
                .collect();
            out.push(Function {
                name,
                params,
                body: body_open..body_close,
            });
        }
        out
    }

    /// The innermost function whose body contains `at`.
    fn enclosing(&self, functions: &[Function], at: usize) -> Option<Function> {
        functions
            .iter()
            .filter(|f| f.body.contains(&at))
            .min_by_key(|f| f.body.len())
            .cloned()
    }
}

#[derive(Debug, Clone)]
struct Function {
    name: String,
    /// Each parameter as written (`sql: &'static str`, `&mut self`).
    params: Vec<String>,
    body: std::ops::Range<usize>,
}

impl Function {
    fn takes_self(&self) -> bool {
        self.params.first().is_some_and(|p| p.ends_with("self"))
    }

    /// The type of parameter `name`, if it is one.
    fn param_type(&self, name: &str) -> Option<String> {
        self.params.iter().find_map(|p| {
            let (pattern, ty) = p.split_once(':')?;
            (pattern.trim().trim_start_matches("mut ").trim() == name).then(|| ty.trim().to_owned())
        })
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// Marks every byte as code, string literal (quotes included) or comment.
fn classify(bytes: &[u8]) -> Vec<Kind> {
    let mut kind = vec![Kind::Code; bytes.len()];
    let mut i = 0;
    let ident_before = |i: usize| i > 0 && is_ident_byte(bytes[i - 1]);
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |p| i + p);
            kind[i..end].fill(Kind::Comment);
            i = end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let start = i;
            while i < bytes.len() {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            kind[start..i].fill(Kind::Comment);
        } else if !ident_before(i)
            && (rest.starts_with(b"r\"")
                || rest.starts_with(b"r#")
                || rest.starts_with(b"br\"")
                || rest.starts_with(b"br#"))
        {
            let start = i;
            i += if rest[0] == b'b' { 2 } else { 1 };
            let hashes = bytes[i..].iter().take_while(|&&b| b == b'#').count();
            i += hashes;
            if bytes.get(i) != Some(&b'"') {
                continue; // `r#ident`
            }
            i += 1;
            let mut closing = vec![b'"'];
            closing.extend(std::iter::repeat_n(b'#', hashes));
            while i < bytes.len() && !bytes[i..].starts_with(&closing) {
                i += 1;
            }
            i = (i + closing.len()).min(bytes.len());
            kind[start..i].fill(Kind::Str);
        } else if rest[0] == b'"' || (rest.starts_with(b"b\"") && !ident_before(i)) {
            let start = i;
            i += if rest[0] == b'b' { 2 } else { 1 };
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
            kind[start..i].fill(Kind::Str);
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\'', '\u{..}'), or a lifetime ('a).
            let end = if rest.get(1) == Some(&b'\\') {
                rest.iter()
                    .skip(2)
                    .position(|&b| b == b'\'')
                    .map(|p| i + 2 + p + 1)
            } else {
                let ch_len = std::str::from_utf8(&rest[1..rest.len().min(5)])
                    .ok()
                    .or_else(|| {
                        (2..=5)
                            .rev()
                            .find_map(|n| std::str::from_utf8(&rest[1..rest.len().min(n)]).ok())
                    })
                    .and_then(|s| s.chars().next())
                    .map_or(1, char::len_utf8);
                (rest.get(1 + ch_len) == Some(&b'\'')).then_some(i + 1 + ch_len + 1)
            };
            match end {
                Some(end) => {
                    kind[i..end].fill(Kind::Str);
                    i = end;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    kind
}

/// The content of a string literal as Rust reads it: quotes off, `\` line continuations
/// joined, common escapes resolved.
fn unescape(literal: &str) -> String {
    let raw = literal.starts_with('r') || literal.starts_with("br");
    let body = literal
        .trim_start_matches('b')
        .trim_start_matches('r')
        .trim_matches('#');
    let body = body
        .strip_prefix('"')
        .and_then(|b| b.strip_suffix('"'))
        .unwrap_or(body);
    if raw {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\n') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The SQL constants of `src/sql.rs`: name, kind, statements (one, or the two of a
/// `KeyedSql`), and where they are.
#[derive(Debug, Clone)]
struct SqlConst {
    name: String,
    keyed: bool,
    statements: Vec<String>,
    at: String,
}

fn sql_constants(sql: &Source) -> (Vec<SqlConst>, Vec<String>) {
    let mut consts = Vec::new();
    let mut problems = Vec::new();
    for at in sql.find_word("const") {
        let bytes = sql.text.as_bytes();
        let name_start = skip_ws(bytes, at + 5);
        let name_end = (name_start..bytes.len())
            .find(|&i| !is_ident_byte(bytes[i]))
            .unwrap_or(bytes.len());
        let name = sql.text[name_start..name_end].to_owned();
        let Some(colon) = sql.text[name_end..].find(':').map(|p| name_end + p) else {
            continue;
        };
        let Some(eq) = sql.text[colon..].find('=').map(|p| colon + p) else {
            continue;
        };
        let ty = sql.code(colon + 1..eq);
        let end = (eq..bytes.len())
            .find(|&i| sql.is_code(i) && bytes[i] == b';')
            .unwrap_or(bytes.len());
        let keyed = ty.contains("KeyedSql");
        let is_str = ty.contains("str");
        if !keyed && !is_str {
            continue;
        }
        let statements: Vec<String> = sql.strings(eq..end).into_iter().map(|(_, s)| s).collect();
        let expected = if keyed { 2 } else { 1 };
        if statements.len() != expected {
            problems.push(format!(
                "{}: const {name}: expected {expected} string literal(s), found {}: the SQL \
                 must be a literal, not computed",
                sql.here(at),
                statements.len()
            ));
        }
        let computed = sql.code(eq + 1..end);
        if computed.contains('!') {
            problems.push(format!(
                "{}: const {name} is built by a macro ({computed}); write the SQL as a literal",
                sql.here(at)
            ));
        }
        consts.push(SqlConst {
            name,
            keyed,
            statements,
            at: sql.here(at),
        });
    }
    (consts, problems)
}

/// What varies must be a `$n` parameter: the rules of the module docs, for one statement.
fn check_statement(constant: &SqlConst, sql: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut say = |what: String| {
        problems.push(format!(
            "{}: const {}: {what}\n    SQL: {sql}",
            constant.at, constant.name
        ))
    };
    if sql.contains('{') || sql.contains('}') || sql.contains("%s") {
        say("a format placeholder ({..} or %s) in SQL: bind a $n parameter instead".into());
    }
    if sql.trim_end().trim_end_matches(';').contains(';') {
        say("more than one statement in one constant".into());
    }
    // $1..$n without gaps.
    let mut numbers = BTreeSet::new();
    let bytes = sql.as_bytes();
    for (i, _) in sql.match_indices('$') {
        let digits: String = bytes[i + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        if let Ok(n) = digits.parse::<u32>() {
            numbers.insert(n);
        }
    }
    if let Some(&max) = numbers.iter().next_back()
        && numbers.len() as u32 != max
    {
        say(format!(
            "parameters {numbers:?} have gaps: $1..${max} expected"
        ));
    }
    let upper = sql.to_ascii_uppercase();
    // Advisory-lock functions take only parameters.
    for (i, _) in sql.match_indices("advisory_") {
        let Some(open) = sql[i..].find('(').map(|p| i + p) else {
            continue;
        };
        let function = &sql[sql[..i]
            .rfind(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .map_or(0, |p| p + 1)..open];
        if !function.starts_with("pg_") {
            continue;
        }
        let Some(close) = sql[open..].find(')').map(|p| open + p) else {
            continue;
        };
        for arg in sql[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            let bare = arg.split("::").next().unwrap_or(arg).trim();
            if !(bare.starts_with('$') && bare[1..].chars().all(|c| c.is_ascii_digit())) {
                say(format!(
                    "{function}({}) takes {arg:?}: the key must be a $n parameter",
                    &sql[open + 1..close]
                ));
            }
        }
    }
    // Key-like columns are never compared with literals.
    for column in ["classid", "objid", "objsubid", "pid", "lock_key", "token"] {
        for (i, _) in sql.match_indices(column) {
            let before = sql[..i].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = sql[i + column.len()..].trim_start();
            let Some(value) = rest
                .strip_prefix('=')
                .filter(|r| !r.starts_with('='))
                .map(str::trim_start)
            else {
                continue;
            };
            if value.starts_with('\'') || value.starts_with(|c: char| c.is_ascii_digit()) {
                say(format!(
                    "{column} compared with the literal {:?}: bind a $n parameter",
                    value.split_whitespace().next().unwrap_or(value)
                ));
            }
        }
    }
    // set_config(name, value, local): the value is never a literal.
    for (i, _) in sql.match_indices("set_config(") {
        let args: Vec<&str> = sql[i + "set_config(".len()..]
            .split(')')
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .collect();
        if let Some(value) = args.get(1)
            && (value.starts_with('\'') || value.starts_with(|c: char| c.is_ascii_digit()))
        {
            say(format!(
                "set_config value {value:?} is a literal: bind a $n parameter"
            ));
        }
    }
    for keyword in ["LIMIT", "OFFSET"] {
        for (i, _) in upper.match_indices(keyword) {
            let value = upper[i + keyword.len()..].trim_start();
            let number: String = value.chars().take_while(|c| c.is_ascii_digit()).collect();
            let fence = keyword == "OFFSET" && number == "0";
            if !(number.is_empty() || fence) {
                say(format!(
                    "{keyword} {number}: a literal row count; bind a $n parameter"
                ));
            }
        }
    }
    problems
}

/// SQL keywords that mark a string as a statement (whole words, upper case as pglock
/// writes SQL; `SET` also in lower case after a `SELECT` is not needed).
fn looks_like_sql(text: &str) -> Option<&'static str> {
    const WORDS: [&str; 7] = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "SET",
        "SAVEPOINT",
        "pg_advisory",
    ];
    WORDS.into_iter().find(|word| {
        text.match_indices(word).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + word.len()..].chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && (word.starts_with("pg_")
                    || (!after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                        && after.is_some_and(char::is_whitespace)))
        })
    })
}

/// The statement-taking calls: name, and whether the first argument is always SQL.
const SQL_CALLS: [&str; 8] = [
    "query",
    "query_with",
    "query_scalar",
    "query_scalar_with",
    "query_as",
    "query_as_with",
    "raw_sql",
    "AssertSqlSafe",
];

/// The whole check over a set of sources (the crate's, or a test's snippets). `sql_rs`
/// names the file that holds the statements.
fn check_sources(sources: &[Source], sql_rs: &str, seen: &mut Vec<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(sql) = sources.iter().find(|s| s.name == sql_rs) else {
        return vec![format!("{sql_rs} not found")];
    };
    let (consts, const_problems) = sql_constants(sql);
    problems.extend(const_problems);
    for constant in &consts {
        for statement in &constant.statements {
            problems.extend(check_statement(constant, statement));
        }
    }
    let known: BTreeMap<&str, &SqlConst> = consts.iter().map(|c| (c.name.as_str(), c)).collect();

    // Parameters typed `&'static str` that carry SQL, to be checked at their call sites:
    // (file, function, index among the call's arguments).
    let mut sql_params: Vec<(String, String, usize)> = Vec::new();

    for source in sources {
        let functions = source.functions();
        let in_sql_rs = source.name == sql_rs;

        // format!-like macros.
        for mac in ["format", "write", "writeln", "format_args", "concat"] {
            for at in source.find_word(mac) {
                let bang = skip_ws(source.text.as_bytes(), at + mac.len());
                if source.text.as_bytes().get(bang) != Some(&b'!') {
                    continue;
                }
                let open = skip_ws(source.text.as_bytes(), bang + 1);
                let end = source.matching(open).unwrap_or(open);
                if in_sql_rs {
                    problems.push(format!(
                        "{}: {mac}! in {sql_rs}: statements are literal constants, never \
                         formatted: {}",
                        source.here(at),
                        source.code(at..end + 1)
                    ));
                    continue;
                }
                for (_, text) in source.strings(open..end) {
                    if let Some(word) = looks_like_sql(&text) {
                        problems.push(format!(
                            "{}: {mac}! builds text with SQL ({word}): {text:?}; SQL must be \
                             a constant in {sql_rs} with $n parameters",
                            source.here(at)
                        ));
                    }
                }
            }
        }

        // SQL literals outside sql.rs.
        if !in_sql_rs {
            for (at, text) in source.strings(0..source.text.len()) {
                if let Some(word) = looks_like_sql(&text) {
                    problems.push(format!(
                        "{}: a string with SQL ({word}) outside {sql_rs}: {text:?}",
                        source.here(at)
                    ));
                }
            }
            for at in source.find_word("KeyedSql") {
                let next = skip_ws(source.text.as_bytes(), at + "KeyedSql".len());
                if source.text.as_bytes().get(next) == Some(&b'{') {
                    problems.push(format!(
                        "{}: a KeyedSql built outside {sql_rs}; its statements must be the \
                         constants there",
                        source.here(at)
                    ));
                }
            }
        }

        // Leaked strings could pose as `&'static str`.
        for at in source.find_word("leak") {
            let Some(open) = source.call_paren(at + 4) else {
                continue;
            };
            let end = source.matching(open).unwrap_or(open);
            let receiver = source.code(at.saturating_sub(80)..at);
            let arg = source.code(open..end + 1);
            let stringy = [
                "format!",
                "String",
                "to_string",
                "to_owned",
                "str",
                "into()",
            ];
            if stringy
                .iter()
                .any(|s| arg.contains(s) || receiver.ends_with(&format!("{s}::")))
                || receiver.ends_with("String::")
                || (receiver.ends_with('.') && arg == "()")
            {
                problems.push(format!(
                    "{}: a leaked string ({}leak{arg}) could pass for a &'static str statement",
                    source.here(at),
                    receiver.rsplit(' ').next().unwrap_or("")
                ));
            }
        }

        // Statement-taking calls.
        let mut calls: Vec<(usize, usize, &str)> = Vec::new(); // (name at, paren, call)
        for name in SQL_CALLS {
            for at in source.find_word(name) {
                let before = source.code(at.saturating_sub(40)..at);
                let qualified = before.ends_with("sqlx::") || before.ends_with("sqlx ::");
                let imported = source.text.contains(&format!("sqlx::{name}"))
                    && source.find_word("use").iter().any(|&u| {
                        let end = source.text[u..].find(';').map_or(u, |p| u + p);
                        source.text[u..end].contains("sqlx")
                            && source.find_word(name).iter().any(|&n| n > u && n < end)
                    });
                let defined_here = functions.iter().any(|f| f.name == name);
                let is_call_name =
                    qualified || (imported && !defined_here) || name == "AssertSqlSafe";
                if !is_call_name || before.ends_with("fn") || before.ends_with('.') {
                    continue;
                }
                if let Some(paren) = source.call_paren(at + name.len()) {
                    calls.push((at, paren, name));
                }
            }
        }
        for at in source.find_word("execute") {
            let before = source.code(at.saturating_sub(40)..at);
            if !(before.ends_with('.') || before.ends_with("Executor::")) {
                continue;
            }
            if let Some(paren) = source.call_paren(at + "execute".len()) {
                calls.push((at, paren, "execute"));
            }
        }
        for (at, paren, name) in calls {
            let args = source.arguments(paren);
            // Executor::execute(executor, sql): the statement is the second argument.
            let index = usize::from(
                source
                    .code(at.saturating_sub(12)..at)
                    .ends_with("Executor::"),
            );
            let Some(&(start, end)) = args.get(index) else {
                if name != "execute" {
                    problems.push(format!("{}: {name}() without a statement", source.here(at)));
                }
                continue;
            };
            let arg = source.code(start..end);
            let enclosing = source.enclosing(&functions, at);
            if name == "execute" {
                // `.execute(conn)` runs a query built before; only a statement argument
                // (a literal, a sql:: path, a string-typed name) is checked.
                let stringy_name = enclosing
                    .as_ref()
                    .and_then(|f| f.param_type(arg.trim_start_matches('&').trim()))
                    .is_some_and(|ty| ty.contains("str") || ty.contains("String"));
                let is_statement = source.has_string(start..end)
                    || arg.contains("format!")
                    || arg.contains("sql::")
                    || arg.contains("for_key")
                    || stringy_name;
                if !is_statement {
                    continue;
                }
            }
            match accept_sql(
                source,
                enclosing.as_ref(),
                start..end,
                &known,
                &mut sql_params,
                0,
            ) {
                Ok(()) => seen.push(format!("{}: {name}({arg})", source.here(at))),
                Err(why) => problems.push(format!("{}: {name}({arg}): {why}", source.here(at))),
            }
        }
    }

    // Call sites of functions whose `&'static str` parameter carries SQL.
    let mut checked = BTreeSet::new();
    while let Some((file, function, index)) = sql_params.pop() {
        if !checked.insert((file.clone(), function.clone(), index)) {
            continue;
        }
        let Some(source) = sources.iter().find(|s| s.name == file) else {
            continue;
        };
        let functions = source.functions();
        let mut sites = 0;
        for at in source.find_word(&function) {
            let before = source.code(at.saturating_sub(10)..at);
            if before.ends_with("fn") {
                continue;
            }
            let Some(paren) = source.call_paren(at + function.len()) else {
                continue;
            };
            let args = source.arguments(paren);
            // Another function of the same name (a sqlx method, say) takes other arguments.
            let arity = functions
                .iter()
                .find(|f| f.name == function)
                .map(|f| f.params.len() - usize::from(f.takes_self()));
            if arity.is_some_and(|n| n != args.len()) {
                continue;
            }
            sites += 1;
            let Some(&(start, end)) = args.get(index) else {
                problems.push(format!(
                    "{}: call of {function} without its statement argument #{index}",
                    source.here(at)
                ));
                continue;
            };
            let enclosing = source.enclosing(&functions, at);
            match accept_sql(
                source,
                enclosing.as_ref(),
                start..end,
                &known,
                &mut sql_params,
                0,
            ) {
                Ok(()) => seen.push(format!(
                    "{}: {function}(.., {}, ..)",
                    source.here(at),
                    source.code(start..end)
                )),
                Err(why) => problems.push(format!(
                    "{}: {function}(.., {}, ..) passes SQL that is not a constant: {why}",
                    source.here(at),
                    source.code(start..end)
                )),
            }
        }
        if sites == 0 {
            problems.push(format!(
                "{file}: fn {function} takes SQL as `&'static str`, but the checker found no \
                 call of it to follow"
            ));
        }
    }
    problems
}

/// Whether the expression at `range` is a statement pglock may send: see the module docs.
fn accept_sql(
    source: &Source,
    function: Option<&Function>,
    range: std::ops::Range<usize>,
    known: &BTreeMap<&str, &SqlConst>,
    sql_params: &mut Vec<(String, String, usize)>,
    depth: u32,
) -> Result<(), String> {
    if depth > 8 {
        return Err("the statement's origin is too deep to follow".into());
    }
    let expr = source.code(range.clone());
    if expr.contains("format!") || expr.contains("String") || expr.contains("to_string") {
        return Err("built at run time".into());
    }
    if source.has_string(range.clone()) {
        return Err("a string literal; statements are constants in src/sql.rs".into());
    }
    let expr = expr.trim_start_matches('&').trim();
    let expr = expr.strip_prefix("crate::").unwrap_or(expr);
    // sql::CONSTANT, or sql::KEYED.for_key(..)
    let path_const = |path: &str| -> Result<bool, String> {
        let Some(name) = path.strip_prefix("sql::") else {
            return Ok(false);
        };
        match known.get(name) {
            Some(_) => Ok(true),
            None => Err(format!("sql::{name} is not a SQL constant of src/sql.rs")),
        }
    };
    let (base, keyed_call) = match expr.split_once(".for_key(") {
        Some((base, _)) => (base.trim(), true),
        None => (expr, false),
    };
    if path_const(base)? {
        let constant = known[base.trim_start_matches("sql::")];
        return match (constant.keyed, keyed_call) {
            (true, true) | (false, false) => Ok(()),
            (true, false) => Ok(()), // a KeyedSql passed on; its use is checked where called
            (false, true) => Err(format!("{base} is not a KeyedSql")),
        };
    }
    let is_ident =
        !base.is_empty() && base.bytes().all(is_ident_byte) && !base.as_bytes()[0].is_ascii_digit();
    if !is_ident {
        return Err(format!(
            "`{expr}` is neither sql::CONSTANT, <KeyedSql>.for_key(..), nor a name bound to one"
        ));
    }
    let Some(function) = function else {
        return Err(format!("`{base}` is used outside any function"));
    };
    // A parameter.
    if let Some(ty) = function.param_type(base) {
        let ty = ty.replace(' ', "");
        if ty.ends_with("KeyedSql") {
            return Ok(());
        }
        if ty == "&'staticstr" && !keyed_call {
            let index = function
                .params
                .iter()
                .position(|p| {
                    p.split_once(':').is_some_and(|(pattern, _)| {
                        pattern.trim().trim_start_matches("mut ").trim() == base
                    })
                })
                .unwrap_or(0);
            let index = if function.takes_self() {
                index - 1
            } else {
                index
            };
            sql_params.push((source.name.clone(), function.name.clone(), index));
            return Ok(());
        }
        return Err(format!(
            "the parameter `{base}: {ty}` can carry any text; take `&'static str` (checked at \
             every call site) or a `KeyedSql`"
        ));
    }
    // A `let` in the function, before this use.
    let body = function.body.clone();
    let lets: Vec<usize> = source
        .find_word("let")
        .into_iter()
        .filter(|&l| body.contains(&l) && l < range.start)
        .collect();
    for &l in lets.iter().rev() {
        let bytes = source.text.as_bytes();
        let Some(eq) = (l..range.start).find(|&i| {
            source.is_code(i)
                && bytes[i] == b'='
                && bytes.get(i + 1) != Some(&b'=')
                && !matches!(bytes.get(i - 1), Some(b'=' | b'!' | b'<' | b'>'))
        }) else {
            continue;
        };
        let pattern = source.code(l + 3..eq);
        let pattern = pattern.split(':').next().unwrap_or("");
        let binds = pattern
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| word == base);
        if !binds {
            continue;
        }
        let mut depth_count = 0i32;
        let end = (eq..bytes.len())
            .find(|&i| {
                if !source.is_code(i) {
                    return false;
                }
                match bytes[i] {
                    b'(' | b'[' | b'{' => depth_count += 1,
                    b')' | b']' | b'}' => depth_count -= 1,
                    b';' if depth_count == 0 => return true,
                    _ => {}
                }
                false
            })
            .unwrap_or(bytes.len());
        let init = source.code(eq + 1..end);
        if source.has_string(eq + 1..end) {
            return Err(format!(
                "`{base}` is bound to an expression with a string literal: {init}"
            ));
        }
        for bad in [
            "format!",
            "String",
            "to_string",
            "to_owned",
            "leak",
            "concat!",
        ] {
            if init.contains(bad) {
                return Err(format!(
                    "`{base}` is bound to text built at run time ({bad}): {init}"
                ));
            }
        }
        let mut constants = 0;
        for (i, _) in init.match_indices("sql::") {
            let name: String = init[i + 5..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                if !known.contains_key(name.as_str()) {
                    return Err(format!(
                        "`{base}` is bound to sql::{name}, not a SQL constant"
                    ));
                }
                constants += 1;
            }
        }
        if constants == 0 && !init.contains(".for_key(") {
            // Bound from another name: follow it.
            let inner = init.trim().trim_start_matches('&');
            if inner.bytes().all(is_ident_byte) && inner != base {
                let at = source.text[eq + 1..end]
                    .find(inner)
                    .map_or(eq + 1, |p| eq + 1 + p);
                return accept_sql(
                    source,
                    Some(function),
                    at..at + inner.len(),
                    known,
                    sql_params,
                    depth + 1,
                );
            }
            return Err(format!(
                "`{base}` is bound to {init}, which is not built from sql:: constants"
            ));
        }
        return Ok(());
    }
    Err(format!(
        "`{base}` is not bound to a sql:: constant (no parameter or `let` of that name in fn {})",
        function.name
    ))
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

fn crate_sources() -> Vec<Source> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .iter()
        .map(|path| {
            let name = path
                .strip_prefix(&root)
                .unwrap_or(path)
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
            Source::new(&name, &text)
        })
        .collect()
}

#[test]
fn every_statement_in_src_is_a_constant_of_src_sql_rs_with_bound_parameters() {
    let sources = crate_sources();
    assert!(
        sources.iter().any(|s| s.name == "src/sql.rs"),
        "src/sql.rs is where the statements live"
    );
    let (consts, _) = sql_constants(sources.iter().find(|s| s.name == "src/sql.rs").unwrap());
    assert!(
        consts.len() >= 20,
        "the checker found the statements of src/sql.rs: {:?}",
        consts.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    let mut seen = Vec::new();
    let problems = check_sources(&sources, "src/sql.rs", &mut seen);
    eprintln!(
        "statements followed to a constant:\n  {}",
        seen.join("\n  ")
    );
    assert!(
        problems.is_empty(),
        "SQL that is not a constant with bound parameters:\n\n{}\n",
        problems.join("\n\n")
    );
    // And the checker looked at the calls that exist: every query call in src/ names a
    // statement it accepted.
    let calls: usize = sources
        .iter()
        .map(|s| {
            SQL_CALLS
                .iter()
                .map(|name| s.find_word(name).len())
                .sum::<usize>()
        })
        .sum();
    assert!(
        calls >= 5,
        "the checker saw the crate's query calls ({calls})"
    );
}

/// The checker on snippets that break each rule: it must name the file and line of each.
#[test]
fn the_sql_checker_catches_each_kind_of_dynamic_sql() {
    let sql_rs = r#"
pub(crate) const GOOD: &str = "SELECT pg_try_advisory_lock($1), pg_backend_pid()";
pub(crate) const KEYED: KeyedSql = KeyedSql {
    bigint: "SELECT pg_advisory_lock($1)",
    pair: "SELECT pg_advisory_lock($1, $2)",
};
pub(crate) const LITERAL_KEY: &str = "SELECT pg_advisory_lock(42)";
pub(crate) const LITERAL_PID: &str = "SELECT 1 FROM pg_locks WHERE pid = 4242";
pub(crate) const GAP: &str = "SELECT $1, $3";
pub(crate) const PLACEHOLDER: &str = "SELECT pg_advisory_lock({key})";
pub(crate) const TIMEOUT: &str = "SELECT set_config('lock_timeout', '250ms', true)";
pub(crate) const TWO: &str = "SELECT 1; SELECT 2";
pub(crate) const ROWS: &str = "SELECT * FROM pglock_fencing_tokens LIMIT 10";
pub(crate) fn formatted(key: i64) -> String {
    format!("SELECT pg_advisory_lock({key})")
}
"#;
    let lib_rs = r#"
use crate::sql;
async fn ok(conn: &mut PgConnection, key: LockKey) {
    sqlx::query(sql::GOOD).execute(&mut *conn).await;
    let chosen = sql::KEYED.for_key(key);
    sqlx::query_with(chosen, args).execute(&mut *conn).await;
    conn.execute(sql::GOOD).await;
    run(conn, sql::GOOD).await;
}
async fn run(conn: &mut PgConnection, statement: &'static str) {
    sqlx::query_scalar_with(statement, args).fetch_one(conn).await;
}
async fn bad(conn: &mut PgConnection, name: &str, text: String) {
    sqlx::query("SELECT 1").execute(&mut *conn).await;
    sqlx::query(&format!("SELECT * FROM {name}")).execute(&mut *conn).await;
    sqlx::query_as::<_, (i64,)>(text.as_str()).fetch_one(&mut *conn).await;
    conn.execute("DROP TABLE t").await;
    sqlx::raw_sql(AssertSqlSafe(text)).execute(&mut *conn).await;
    let leaked: &'static str = format!("SELECT {name}").leak();
    run(conn, leaked).await;
    sqlx::query_scalar(sql::NOT_THERE).fetch_one(conn).await;
    let fake = KeyedSql { bigint: "SELECT 1", pair: "SELECT 2" };
    let message = format!("UPDATE t SET x = {name}");
}
"#;
    let sources = [
        Source::new("src/sql.rs", sql_rs),
        Source::new("src/lib.rs", lib_rs),
    ];
    let problems = check_sources(&sources, "src/sql.rs", &mut Vec::new());
    let report = problems.join("\n");
    let expect = |needle: &str, line: usize, file: &str| {
        let at = format!("{file}:{line}:");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&at) && p.contains(needle)),
            "the checker should flag {needle:?} at {at}; it said:\n{report}"
        );
    };
    expect("LITERAL_KEY", 7, "src/sql.rs");
    expect("LITERAL_PID", 8, "src/sql.rs");
    expect("gaps", 9, "src/sql.rs");
    expect("placeholder", 10, "src/sql.rs");
    expect("set_config", 11, "src/sql.rs");
    expect("more than one statement", 12, "src/sql.rs");
    expect("LIMIT 10", 13, "src/sql.rs");
    expect("format! in src/sql.rs", 15, "src/sql.rs");
    expect("string literal", 14, "src/lib.rs");
    expect("built at run time", 15, "src/lib.rs");
    expect("text.as_str()", 16, "src/lib.rs");
    expect("DROP TABLE", 17, "src/lib.rs");
    expect("AssertSqlSafe", 18, "src/lib.rs");
    expect("leak", 19, "src/lib.rs");
    expect("run(", 20, "src/lib.rs");
    expect("NOT_THERE", 21, "src/lib.rs");
    expect("KeyedSql built outside", 22, "src/lib.rs");
    expect("format! builds text with SQL", 23, "src/lib.rs");
    // ... and nothing in the good function.
    for line in 3..=11 {
        let at = format!("src/lib.rs:{line}:");
        assert!(
            !problems.iter().any(|p| p.starts_with(&at)),
            "false alarm at {at}:\n{report}"
        );
    }
    for line in 2..=6 {
        let at = format!("src/sql.rs:{line}:");
        assert!(
            !problems.iter().any(|p| p.starts_with(&at)),
            "false alarm at {at}:\n{report}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// (b) Nothing printed shows a password.
// ---------------------------------------------------------------------------------------

const PASSWORD: &str = "s3cr3t-pw";

fn assert_hides_password(what: &str, shown: &str) {
    assert!(
        !shown.contains(PASSWORD),
        "{what} shows the password: {shown}"
    );
    assert!(
        !shown.contains("s3cr3t"),
        "{what} shows part of the password: {shown}"
    );
}

fn assert_error_hides_password(what: &str, err: &Error) {
    assert_hides_password(&format!("{what} (Display)"), &err.to_string());
    assert_hides_password(&format!("{what} (Debug)"), &format!("{err:?}"));
    assert_hides_password(&format!("{what} (alternate Debug)"), &format!("{err:#?}"));
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        assert_hides_password(&format!("{what} (source)"), &inner.to_string());
        source = inner.source();
    }
}

/// `postgres://user:s3cr3t-pw@host:port/db`
fn with_password(user: &str, host_port: &str, db: &str) -> String {
    format!("postgres://{user}:{PASSWORD}@{host_port}/{db}")
}

#[test]
fn errors_from_connections_with_a_password_never_show_it() {
    rt::run(async {
        let unreachable = with_password("user", "127.0.0.1:1", "db");
        let mut errors: Vec<(String, Error)> = Vec::new();

        // A pool to a closed port: the lock gets the pool's error.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy(&unreachable)
            .expect("a lazy pool");
        assert_hides_password("Pool (Debug)", &format!("{pool:?}"));
        let result = rt::timeout(
            Duration::from_secs(10),
            AdvisoryLock::new(&pool, LockKey::BigInt(1)),
        )
        .await
        .expect("bounded");
        errors.push((
            "AdvisoryLock::new on a pool to a closed port".into(),
            result.expect_err("no server"),
        ));
        pool.close().await;

        // Eager pool and single connection to the closed port.
        let result = rt::timeout(
            Duration::from_secs(10),
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(1))
                .connect(&unreachable),
        )
        .await
        .expect("bounded");
        errors.push((
            "PgPool::connect".into(),
            Error::from(result.expect_err("no server")),
        ));
        let options: PgConnectOptions = unreachable.parse().expect("the URL parses");
        let result = rt::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect_with(&options),
        )
        .await
        .expect("bounded");
        errors.push((
            "PgConnection::connect".into(),
            Error::from(result.expect_err("no server")),
        ));
        let result = rt::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect(&unreachable),
        )
        .await
        .expect("bounded");
        errors.push((
            "PgConnection::connect(url)".into(),
            Error::from(result.expect_err("no server")),
        ));

        // URLs that do not parse.
        for bad in [
            with_password("user", "127.0.0.1:99999", "db"),
            format!("postgres://user:{PASSWORD}@127.0.0.1:5432/db?sslmode=sometimes"),
            format!("postgres://user:{PASSWORD}@[::1:5432/db"),
        ] {
            if let Err(err) = bad.parse::<PgConnectOptions>() {
                errors.push((
                    format!("parse of a bad URL ({})", bad.replace(PASSWORD, "***")),
                    Error::from(err),
                ));
            }
        }

        // A server that asks for the password, given the wrong one.
        let cluster = PrivateCluster::start(&["password_encryption = 'scram-sha-256'"]);
        let mut admin = support::connect_at(&cluster.url()).await;
        sqlx::raw_sql("CREATE ROLE pwuser LOGIN PASSWORD 'another-right-one'")
            .execute(&mut admin)
            .await
            .expect("create the role");
        admin.close().await.unwrap();
        support::require_password_for(&cluster, "pwuser");
        let port = cluster
            .url()
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let wrong = with_password("pwuser", &format!("127.0.0.1:{port}"), "postgres");
        let refused = support::eventually(
            Duration::from_secs(10),
            "pwuser needs its password",
            || async {
                let options: PgConnectOptions = wrong.parse().unwrap();
                sqlx::PgConnection::connect_with(&options).await.is_err()
            },
        )
        .await;
        let _ = refused;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&wrong)
            .unwrap();
        let result = rt::timeout(
            Duration::from_secs(10),
            AdvisoryLock::new(&pool, LockKey::BigInt(2)),
        )
        .await
        .expect("bounded");
        errors.push((
            "AdvisoryLock::new with a wrong password".into(),
            result.expect_err("wrong password"),
        ));
        pool.close().await;

        for (what, err) in &errors {
            eprintln!("[{}] {what}: {err}", rt::NAME);
            assert_error_hides_password(what, err);
        }
        assert!(errors.len() >= 6, "{} errors checked", errors.len());
    });
}

#[test]
fn locks_options_pools_and_every_error_variant_never_show_the_password() {
    rt::run(async {
        // A trust-auth server ignores the password, so a URL with one connects: a real lock
        // on a pool whose URL carries a password.
        let cluster = PrivateCluster::start(&[]);
        let port = cluster
            .url()
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let url = with_password("postgres", &format!("127.0.0.1:{port}"), "postgres");
        let pool_options = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10));
        assert_hides_password("PgPoolOptions (Debug)", &format!("{pool_options:?}"));
        let pool = pool_options
            .connect(&url)
            .await
            .expect("connect to the private cluster");
        assert_hides_password("PgPool (Debug)", &format!("{pool:?}"));
        let connect_options = pool.connect_options();
        let options_debug = format!("{connect_options:?}");
        if options_debug.contains(PASSWORD) {
            // sqlx's own type, outside pglock: reported, not failed on.
            eprintln!(
                "[{}] note: sqlx's PgConnectOptions Debug (pool.connect_options()) shows the \
                 password; pglock never formats it",
                rt::NAME
            );
        }

        let key = LockKey::from_name("security/debug");
        let options = LockOptions::new().application_name("billing-worker");
        assert_hides_password("LockOptions (Debug)", &format!("{options:?}"));
        let mut lock = AdvisoryLock::new(&pool, key)
            .await
            .unwrap()
            .with_options(options);
        assert_hides_password("AdvisoryLock (Debug, fresh)", &format!("{lock:?}"));
        assert!(lock.try_lock().await.unwrap());
        assert_hides_password("AdvisoryLock (Debug, holding)", &format!("{lock:#?}"));
        lock.unlock().await.unwrap();
        {
            let guard = lock.lock_guard().await.unwrap();
            assert_hides_password("AdvisoryLockGuard (Debug)", &format!("{guard:?}"));
            guard.release().await.unwrap();
        }
        // A lock on a borrowed connection from the same URL.
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        {
            let mut borrowed = AdvisoryLock::with_connection(&mut conn, key);
            assert!(borrowed.try_lock_shared().await.unwrap());
            assert_hides_password(
                "AdvisoryLock<&mut PgConnection> (Debug)",
                &format!("{borrowed:?}"),
            );
            borrowed.close().await.unwrap();
        }
        conn.close().await.unwrap();
        lock.close().await.unwrap();
        assert_hides_password("AdvisoryLock (Debug, closed)", &format!("{lock:?}"));

        let locks = pglock::memory::MemoryLocks::new();
        let mut memory = locks.lock(key);
        assert!(memory.try_lock().await.unwrap());
        assert_hides_password("MemoryLock (Debug)", &format!("{memory:?}"));
        assert_hides_password("MemoryLocks (Debug)", &format!("{locks:?}"));
        memory.close().await.unwrap();

        // Every variant a caller can meet, built by hand, plus Database errors of every
        // kind sqlx returns for a connection attempt with this URL.
        let pair = LockKey::IntPair(1, 2);
        let mut variants = vec![
            Error::NotHeld {
                key,
                mode: LockMode::Shared,
            },
            Error::NotHeld {
                key: pair,
                mode: LockMode::Exclusive,
            },
            Error::Closed,
            Error::LockLost { key },
            Error::Disconnected { key },
            Error::Interrupted { key: pair },
            Error::Unresponsive {
                key,
                after: Duration::from_secs(30),
            },
            Error::StaleToken {
                key,
                token: 3,
                current: 4,
            },
            Error::SessionNotPinned {
                key,
                first_pid: Some(10),
                pid: Some(11),
            },
            Error::Deadlock { key },
            Error::TooManyLocks { key },
            Error::Database(sqlx::Error::PoolClosed),
            Error::Database(sqlx::Error::PoolTimedOut),
            Error::Database(sqlx::Error::RowNotFound),
            Error::Database(sqlx::Error::WorkerCrashed),
            Error::Database(sqlx::Error::Protocol(format!(
                "unexpected message from {}",
                url.replace(PASSWORD, "***")
            ))),
        ];
        let closed_pool = PgPoolOptions::new().connect_lazy(&url).unwrap();
        closed_pool.close().await;
        variants.push(
            AdvisoryLock::new(&closed_pool, key)
                .await
                .expect_err("closed pool"),
        );
        for err in &variants {
            assert!(!err.to_string().is_empty(), "{err:?}");
            assert_error_hides_password(&format!("{err:?}"), err);
        }
        // Every variant is covered (a new one should be added above).
        let names: BTreeSet<String> = variants
            .iter()
            .map(|e| {
                format!("{e:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        for expected in [
            "NotHeld",
            "Closed",
            "LockLost",
            "Disconnected",
            "Interrupted",
            "Unresponsive",
            "StaleToken",
            "SessionNotPinned",
            "Deadlock",
            "TooManyLocks",
            "Database",
        ] {
            assert!(
                names.contains(expected),
                "variant {expected} checked: {names:?}"
            );
        }
        pool.close().await;
    });
}

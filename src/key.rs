//! Lock keys: PostgreSQL's two advisory key spaces, and the Go-compatible name hash.
//!
//! PostgreSQL identifies an advisory lock either by one `bigint` or by a pair of
//! `integer`s. The two spaces never overlap: `pg_advisory_lock(1)` and
//! `pg_advisory_lock(0, 1)` are different locks. [`LockKey`] names one key in
//! one of those spaces. A name's key is [`LockKey::from_name`]: a `bigint` key made exactly
//! as the Go library go.rtnl.ai/pglock makes it (its `Hash`), so Rust and Go processes
//! meet on the same lock.

use std::fmt;
use std::hash::Hasher;
use std::str::FromStr;

/// The number of a name's key: FNV-1a 64 of `name`'s UTF-8 bytes, read as a signed
/// 64-bit integer.
///
/// To lock by name, use [`LockKey::from_name`], which is `LockKey::BigInt(hash(name))`;
/// this is the bare `i64`, for code that stores or prints it. Identical to Go pglock's
/// `Hash`: a Go service locking `pglock.Hash("jobs")` and a Rust service locking
/// `LockKey::from_name("jobs")` contend for the same lock. The input is not normalised: `"café"` written with a precomposed `é` and with `e` + combining
/// accent are different names.
///
/// ```
/// assert_eq!(pglock::hash("mylock"), 5745039872434889948);
/// assert_eq!(pglock::hash(""), -3750763034362895579);
/// ```
pub fn hash(name: &str) -> i64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(name.as_bytes());
    // Go converts the uint64 sum with int64(...): the same bits, read as signed.
    i64::from_ne_bytes(hasher.finish().to_ne_bytes())
}

/// The key of one advisory lock, in one of PostgreSQL's two key spaces.
///
/// ```
/// use pglock::LockKey;
///
/// assert_eq!(LockKey::from(42_i64), LockKey::BigInt(42));
/// assert_eq!(LockKey::from((1, -2)), LockKey::IntPair(1, -2));
/// assert_eq!(LockKey::from_name("mylock"), LockKey::BigInt(pglock::hash("mylock")));
///
/// // Display and FromStr round-trip.
/// let key: LockKey = "1,-2".parse()?;
/// assert_eq!(key.to_string(), "1,-2");
/// # Ok::<(), pglock::ParseLockKeyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockKey {
    /// The single-`bigint` key space: `pg_advisory_lock(key)`.
    BigInt(i64),
    /// The two-`integer` key space: `pg_advisory_lock(a, b)`.
    IntPair(i32, i32),
}

impl LockKey {
    /// A name's key: `LockKey::BigInt(hash(name))`, the key Go pglock's `Hash(name)`
    /// makes. The one way to lock by name; see [`hash`] for the hash itself.
    pub fn from_name(name: &str) -> Self {
        LockKey::BigInt(hash(name))
    }

    /// How `pg_locks` shows this key: `(classid, objid, objsubid)`.
    ///
    /// A `bigint` key shows as its high and low 32 bits with `objsubid = 1`; an int pair
    /// as its two halves with `objsubid = 2`. Both halves are unsigned `oid`s, so negative
    /// keys come out as large numbers.
    ///
    /// ```
    /// use pglock::LockKey;
    /// assert_eq!(LockKey::BigInt(-1).pg_locks_ids(), (u32::MAX, u32::MAX, 1));
    /// assert_eq!(LockKey::IntPair(7, -1).pg_locks_ids(), (7, u32::MAX, 2));
    /// ```
    pub fn pg_locks_ids(self) -> (u32, u32, i16) {
        match self {
            LockKey::BigInt(key) => {
                let bits = u64::from_ne_bytes(key.to_ne_bytes());
                ((bits >> 32) as u32, bits as u32, 1)
            }
            LockKey::IntPair(a, b) => (
                u32::from_ne_bytes(a.to_ne_bytes()),
                u32::from_ne_bytes(b.to_ne_bytes()),
                2,
            ),
        }
    }

    /// The key `pg_locks` shows as `(classid, objid, objsubid)`: the inverse of
    /// [`pg_locks_ids`](Self::pg_locks_ids). `None` for an `objsubid` that is not an
    /// advisory key space (1 or 2).
    ///
    /// ```
    /// use pglock::LockKey;
    /// for key in [LockKey::BigInt(-5), LockKey::IntPair(i32::MIN, -1)] {
    ///     let (classid, objid, objsubid) = key.pg_locks_ids();
    ///     assert_eq!(LockKey::from_pg_locks_ids(classid, objid, objsubid), Some(key));
    /// }
    /// ```
    pub fn from_pg_locks_ids(classid: u32, objid: u32, objsubid: i16) -> Option<Self> {
        match objsubid {
            1 => {
                let bits = (u64::from(classid) << 32) | u64::from(objid);
                Some(LockKey::BigInt(i64::from_ne_bytes(bits.to_ne_bytes())))
            }
            2 => Some(LockKey::IntPair(
                i32::from_ne_bytes(classid.to_ne_bytes()),
                i32::from_ne_bytes(objid.to_ne_bytes()),
            )),
            _ => None,
        }
    }
}

impl From<i64> for LockKey {
    fn from(key: i64) -> Self {
        LockKey::BigInt(key)
    }
}

impl From<(i32, i32)> for LockKey {
    fn from((a, b): (i32, i32)) -> Self {
        LockKey::IntPair(a, b)
    }
}

/// `BigInt` prints as the number (`-42`), `IntPair` as two numbers and a comma (`1,-2`).
impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockKey::BigInt(key) => write!(f, "{key}"),
            LockKey::IntPair(a, b) => write!(f, "{a},{b}"),
        }
    }
}

/// The text was not a lock key as [`LockKey`]'s `Display` writes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid lock key {input:?}: expected a 64-bit integer (\"-42\") or two 32-bit integers \
     separated by a comma (\"1,-2\"); to lock by name use LockKey::from_name"
)]
pub struct ParseLockKeyError {
    input: String,
}

/// Parses what `Display` writes: `"-42"` or `"1,-2"` (spaces around numbers allowed).
impl FromStr for LockKey {
    type Err = ParseLockKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseLockKeyError {
            input: s.to_owned(),
        };
        match s.split_once(',') {
            None => s.trim().parse().map(LockKey::BigInt).map_err(|_| invalid()),
            Some((a, b)) => match (a.trim().parse(), b.trim().parse()) {
                (Ok(a), Ok(b)) => Ok(LockKey::IntPair(a, b)),
                _ => Err(invalid()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_go_pglock_vectors() {
        assert_eq!(hash(""), -3750763034362895579);
        assert_eq!(hash("mylock"), 5745039872434889948);
        assert_eq!(hash("test"), -439409999022904539);
        assert_eq!(hash("caf\u{e9}-r\u{e9}sum\u{e9}"), -1084965660865976875);
    }

    #[test]
    fn hash_does_not_normalise_unicode() {
        assert_ne!(hash("caf\u{e9}"), hash("cafe\u{301}"));
    }

    #[test]
    fn display_and_from_str_round_trip_at_the_edges() {
        for key in [
            LockKey::BigInt(0),
            LockKey::BigInt(i64::MIN),
            LockKey::BigInt(i64::MAX),
            LockKey::IntPair(i32::MIN, i32::MAX),
            LockKey::IntPair(0, -1),
        ] {
            assert_eq!(key.to_string().parse::<LockKey>(), Ok(key));
        }
    }

    #[test]
    fn from_str_rejects_what_display_never_writes() {
        for bad in [
            "",
            "x",
            "1,",
            ",1",
            "1,2,3",
            "9223372036854775808",
            "2147483648,0",
        ] {
            assert!(bad.parse::<LockKey>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn pg_locks_ids_split_bigint_into_high_and_low_halves() {
        assert_eq!(LockKey::BigInt(0x1_0000_0002).pg_locks_ids(), (1, 2, 1));
        assert_eq!(
            LockKey::BigInt(i64::MIN).pg_locks_ids(),
            (0x8000_0000, 0, 1)
        );
    }
}

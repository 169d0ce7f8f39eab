//! Distributed locks on PostgreSQL advisory locks, built on [sqlx].
//!
//! pglock is a Rust port of the Go library go.rtnl.ai/pglock (itself a port of
//! github.com/allisson/go-pglock). An [`AdvisoryLock`] holds one PostgreSQL session and
//! takes session-level advisory locks on one [`LockKey`] through it: exclusive or shared,
//! blocking or not, stacking like PostgreSQL's own. A name's key,
//! [`LockKey::from_name`], is the one Go pglock's `Hash` makes, so Rust and Go services
//! can share locks.
//!
//! What it adds over the Go library and over sqlx's `PgAdvisoryLock`:
//!
//! - **Nothing leaks into the pool.** A lock dropped while it holds levels closes its owned
//!   pool connection instead of returning it, so the server frees the levels at once;
//!   [`close`](AdvisoryLock::close) releases exactly the levels held, then returns a clean
//!   connection.
//! - **Misuse is an error.** Unlocking a mode that is not held is [`Error::NotHeld`], and
//!   changes nothing; a lost session is [`Error::LockLost`], never silence.
//! - **Shared locks and stacking**, as PostgreSQL has them, behind a [`DistributedLock`]
//!   trait that tests can swap for another implementation.
//! - **Many locks over a few sessions.** A [`LockClient`] holds thousands of locks over a
//!   handful of sessions, batches the operations of many tasks per round trip, and takes
//!   several keys all-or-nothing in one statement.
//!
//! Every method that acquires or releases says which [`Error`]s it returns (`# Errors`) and
//! what dropping its future mid-way does (`# Cancel safety`); what all locks share is
//! stated once, on [`DistributedLock`].
//!
//! ```no_run
//! use pglock::{AdvisoryLock, LockKey};
//!
//! # async fn example() -> pglock::Result<()> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
//! let mut lock = AdvisoryLock::new(&pool, LockKey::from_name("mylock")).await?;
//! if lock.try_lock().await? {
//!     // ... only one process at a time gets here ...
//!     lock.unlock().await?;
//! }
//! lock.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Runtimes and features
//!
//! The library depends on no async runtime: it drives sqlx connections, so it runs on the
//! runtime the application chose for sqlx (Tokio, async-std or smol). Applications that do
//! not name sqlx themselves can pick one through pglock's features:
//!
//! | feature | forwards to |
//! |---|---|
//! | `runtime-tokio` | `sqlx/runtime-tokio` |
//! | `runtime-async-std` | `sqlx/runtime-async-std` |
//! | `runtime-smol` | `sqlx/runtime-smol` |
//! | `migrate` | `sqlx/migrate`, and `pglock::migrate()` for the fencing-token table |
//! | `tracing` | spans for acquisitions and events for releases, losses and sessions ended, with [`tracing`](https://docs.rs/tracing) |
//! | `tls-native-tls`, `tls-rustls`, `tls-rustls-ring-webpki`, `tls-rustls-ring-native-roots`, `tls-rustls-aws-lc-rs` | the sqlx feature of the same name |

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod advisory;
pub mod client;
mod error;
pub mod fencing;
mod guard;
pub mod inspect;
mod key;
mod levels;
mod lock;
pub mod memory;
#[cfg(feature = "migrate")]
#[cfg_attr(docsrs, doc(cfg(feature = "migrate")))]
pub mod migrate;
mod options;
mod scoped;
mod session;
mod sql;
mod timer;
mod trace;
pub mod xact;

pub use advisory::AdvisoryLock;
pub use client::{ClientLock, ClientOptions, LockClient, LockSet};
pub use error::{Error, Result};
pub use guard::AdvisoryLockGuard;
pub use key::{LockKey, ParseLockKeyError, hash};
pub use lock::{DistributedLock, LockMode, LockProvider};
#[cfg(feature = "migrate")]
#[cfg_attr(docsrs, doc(cfg(feature = "migrate")))]
pub use migrate::migrate;
pub use options::LockOptions;
pub use scoped::{try_with_lock, with_lock, with_lock_for, with_lock_shared};
pub use session::LockConnection;

/// The README's code samples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

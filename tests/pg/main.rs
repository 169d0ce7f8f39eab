//! PostgreSQL-only behaviour, one module per topic, in one test binary (so CI compiles and
//! links one binary instead of one per topic). What every `DistributedLock` must do is in
//! `tests/conformance`; see `tests/README.md` for the layout.
//!
//! One topic: `cargo test --test pg loss::`; one test: `cargo test --test pg
//! loss::killed_child_process_frees_its_lock_within_two_seconds -- --exact`.

#[path = "../support/mod.rs"]
mod support;

mod cancellation;
mod cli;
mod client;
mod core;
mod errors;
mod examples;
mod faults;
mod fencing;
mod guards;
mod inspect;
mod leaks;
mod loss;
mod misuse;
mod pgbouncer;
mod redaction;
mod restart;
mod scoped;
mod security;
mod setup;
mod silent_network;
mod standby;
mod stress;
mod timed_waits;
mod xact;

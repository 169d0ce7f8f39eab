//! The database the benchmarks run against: `DATABASE_URL` when set (the `locks` bench),
//! otherwise a private throwaway PostgreSQL cluster, started the way the tests start
//! theirs (`tests/support/cluster.rs`): initdb into a temporary directory (as the
//! `postgres` user when run as root), `fsync = off`, `pg_stat_statements` preloaded,
//! `pg_ctl start` on a free loopback port, and a watchdog that stops the server and
//! deletes the directory when the bench process exits, however it exits.
//!
//! Also what every bench shares: the raw-statement baselines ([`raw`]), the
//! several-session workloads ([`workloads`]), pinning to one CPU ([`pin`]), the counting
//! proxy ([`wire`]). Not every bench uses all of it.
#![allow(dead_code)]

pub mod pin;
pub mod raw;
pub mod wire;
pub mod workloads;

/// The tests' private-cluster harness, shared rather than copied.
#[path = "../../tests/support/cluster.rs"]
mod cluster;

/// `DATABASE_URL` if set and not empty, else the URL of a new private cluster.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => private_cluster(),
    }
}

/// The bench database, and whether it is the bench's own private cluster (whose
/// processes the bench may pin; a shared server's it may not, beyond its own backends).
pub struct Database {
    pub url: String,
    pub private: bool,
}

/// [`database_url`], saying which kind it is.
pub fn database() -> Database {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Database {
            url,
            private: false,
        },
        _ => Database {
            url: private_cluster(),
            private: true,
        },
    }
}

/// Starts a private cluster (stopped and deleted when the bench exits) and returns the
/// URL of its `postgres` database.
pub fn private_cluster() -> String {
    cluster::PrivateCluster::start(&[]).url()
}

//! `pglock`: flock(1) for PostgreSQL advisory locks, from the shell.
//!
//! Built with the `cli` feature (`cargo install pglock --features cli`); the library
//! itself stays free of clap and Tokio. `pglock --help` and the README's "Command line"
//! section are the user's documentation; the modules here are:
//!
//! - [`args`]: the command line (clap), and how a lock argument names a key;
//! - [`exit`]: the exit codes, written once for the code, `--help` and the README;
//! - [`run`]: `pglock run`, which takes the lock ([`acquire`]) and runs the command under
//!   it ([`supervise`], with [`signals`]);
//! - [`status`]: `pglock status`;
//! - [`migrate`]: `pglock migrate`, the table `run --fenced` needs;
//! - [`database`]: the database URL, connecting, and keeping its password out of messages;
//! - [`duration`]: durations as the user writes and reads them.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// `eprintln!` that never panics: a closed stderr loses the message, not the exit code.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod acquire;
mod args;
mod database;
mod duration;
mod exit;
mod migrate;
mod run;
mod signals;
mod status;
mod supervise;

use args::{Cli, Command};
use exit::Fatal;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(args) = &cli.command
        && let Err(err) = args.check()
    {
        err.exit();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            say!("pglock: cannot start the async runtime: {err}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Hash { name } => exit::print(&format!("{}\n", pglock::hash(&name))),
            Command::Status(args) => status::status(cli.database_url, args).await,
            Command::Run(args) => run::run(cli.database_url, args).await,
            Command::Migrate => migrate::migrate(cli.database_url).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Fatal(message)) => {
            say!("pglock: {message}");
            ExitCode::from(exit::ERROR)
        }
    }
}

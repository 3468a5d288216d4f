//! Command-line interface: `pgcapi setup | run | check | status | retry | replay | purge |
//! backfill | sandbox | demo | validate | bench`.
//!
//! This module parses the arguments and runs one match from command to exit code; each command's
//! work is in its own file here (loading the config, calling the library, printing the report) or,
//! for `status`, `retry`, `replay` and `purge`, in the operation's module, which owns its arguments.

mod backfill;
mod run;
mod sandbox;
mod setup;

use crate::error::Error;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub use crate::telemetry::logging::LogFormat;

/// pgcapi: stream conversions from PostgreSQL into ad platforms' conversion APIs.
#[derive(Debug, Parser)]
#[command(name = "pgcapi", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check prerequisites and install the control schema, publication and slot (idempotent).
    ///
    /// Exits 0 when pgcapi is ready, 3 when something is left for the DBA (printed with the SQL and
    /// who must run it; run setup again once it is applied), 1 on an error.
    Setup {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Set REPLICA IDENTITY FULL on watched tables that have no usable replica identity.
        #[arg(long)]
        set_replica_identity_full: bool,
    },
    /// Capture changes into the control table and dispatch them until SIGTERM or SIGINT.
    Run {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Capture as usual but send nothing: write the requests dispatch would send instead (rows stay
        /// pending, so a later run without --dry-run sends them).
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: append the would-be requests to DIR/{destination}.jsonl instead of stdout.
        #[arg(long, value_name = "DIR", requires = "dry_run")]
        dry_run_output: Option<PathBuf>,
    },
    /// Check the config, the database prerequisites and each destination's credentials, without
    /// recording any conversion; exits non-zero when a check fails.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the demo: a throwaway PostgreSQL, the sandbox, the example config and a short story.
    Demo {
        /// Send to all 11 platforms (examples/all-platforms.toml), not only the contract's four.
        #[arg(long)]
        all_platforms: bool,
    },
    /// Serve the platform sandbox (Meta, Google Ads, TikTok rules) for tests and trials.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: std::net::SocketAddr,
    },
    /// Record conversions for existing rows of one rule's table changed since a time, for dispatch
    /// to send (rows already recorded are left alone; rows past a platform's window end skipped).
    Backfill {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The rule to evaluate.
        #[arg(long)]
        rule: String,
        /// Rows whose timestamp column is at or after this: an age (7d, 36h) or a time (2026-11-16,
        /// 2026-11-16 14:00, RFC 3339; UTC unless an offset is given).
        #[arg(long, value_name = "AGE|TIME")]
        since: crate::units::TimeRef,
        /// The timestamp column to filter on (default: the rule's event_time column).
        #[arg(long)]
        column: Option<String>,
        /// Evaluate and count, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Measure throughput, latency and memory on a throwaway PostgreSQL and print a table.
    Bench {
        /// A smaller run (a tenth of the rows) to check that everything works.
        #[arg(long)]
        quick: bool,
        /// How many times each ratio measurement is repeated (the best run is reported).
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        /// Run only some measurements: any of `decode`, `capture`, `e2e`, `latency` (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The benchmark's capture process: capture until an LSN, then print a JSON report.
    #[command(hide = true)]
    BenchCapture {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Stop once everything up to this LSN is recorded.
        #[arg(long)]
        stop_at: String,
    },
    /// Check a config file (and nothing else).
    Validate {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the replication slot, each destination's health and recent failures.
    ///
    /// Exit code 0 when healthy, 2 when unhealthy (slot missing or lost, more WAL retained than
    /// --max-wal-retained, deliveries failed in the last hour), 1 when status could not be read.
    Status(crate::ops::status::StatusArgs),
    /// Requeue failed deliveries (all, or those matching the filters) and wake up running dispatchers.
    Retry(crate::ops::repair::RetryArgs),
    /// Send rows again after fixing a destination setting (skipped and failed rows since a time).
    ///
    /// Takes rows that reached skipped or failed (and with --state sent, sent) since --since (required).
    /// Platforms deduplicate on the event id: Meta and TikTok drop an event id they received in the last
    /// 48 hours (and count it again after that), Google Ads drops an order id it already has. So
    /// replaying sent rows is for a destination that pointed at the wrong place (wrong pixel or account).
    /// Cancelled conversions, retracted conversions and rows recorded without consent are never replayed.
    Replay(crate::ops::repair::ReplayArgs),
    /// Delete old sent, skipped and cancelled rows now (as `run` does hourly), or failed rows with --failed.
    Purge(crate::ops::retention::PurgeArgs),
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; `Ok` holds the exit code, `Err` what went wrong, for stderr (exit code 1).
async fn execute(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Setup {
            config,
            set_replica_identity_full,
        } => setup::run(&config, set_replica_identity_full).await,
        Command::Run {
            config,
            dry_run,
            dry_run_output,
        } => run::run(&config, dry_run, dry_run_output).await,
        Command::Check { config } => done(text(crate::ops::check::run(&config).await)),
        Command::Status(args) => text(crate::ops::status::run_status(args).await),
        Command::Retry(args) => text(crate::ops::repair::run_retry(args).await),
        Command::Replay(args) => text(crate::ops::repair::run_replay(args).await),
        Command::Purge(args) => text(crate::ops::retention::run_purge(args).await),
        Command::Backfill {
            config,
            rule,
            since,
            column,
            dry_run,
        } => backfill::run(&config, rule, since, column, dry_run).await,
        Command::Validate { config } => {
            load(&config)?;
            println!("{}: ok", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox { listen } => done(sandbox::run(listen).await),
        Command::Demo { all_platforms } => {
            let scope = match all_platforms {
                true => crate::demo::Scope::AllPlatforms,
                false => crate::demo::Scope::Contract,
            };
            print!("{}", text(crate::demo::run(scope).await)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            quick,
            repeats,
            only,
        } => {
            let options = crate::bench::BenchOptions {
                quick,
                repeats,
                only,
            };
            print!(
                "{}",
                crate::bench::run(options).await.map_err(Error::Failed)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchCapture { config, stop_at } => done(
            crate::bench::capture_child(&config, &stop_at)
                .await
                .map_err(Error::Failed),
        ),
    }
}

/// Exit code 0 for a command that succeeded without choosing one.
fn done(result: Result<(), Error>) -> Result<ExitCode, Error> {
    result.map(|()| ExitCode::SUCCESS)
}

/// A command that still reports its failure as text (the operations of `ops/`, demo, bench).
fn text<T>(result: Result<T, String>) -> Result<T, Error> {
    result.map_err(Error::Failed)
}

/// Loads and validates the config file at `path` (every problem, with its key path, in one message).
fn load(path: &std::path::Path) -> Result<crate::config::Config, Error> {
    crate::config::Config::load(path).map_err(|e| Error::Config(e.to_string()))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

//! Command-line interface: `pgcapi setup | run | check | status | retry | replay | purge |
//! backfill | sandbox | demo | validate`.

use crate::capture::Capture;
use crate::config::Config;
use crate::setup::{self, SetupOptions};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tracing::{error, info, Instrument};

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

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
    Demo,
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
    Status(crate::status::StatusArgs),
    /// Requeue failed deliveries (all, or those matching the filters) and wake up running dispatchers.
    Retry(crate::repair::RetryArgs),
    /// Send rows again after fixing a destination setting (skipped and failed rows since a time).
    ///
    /// Takes rows that reached skipped or failed (and with --state sent, sent) since --since (required).
    /// Platforms deduplicate on the event id: Meta and TikTok drop an event id they received in the last
    /// 48 hours (and count it again after that), Google Ads drops an order id it already has. So
    /// replaying sent rows is for a destination that pointed at the wrong place (wrong pixel or account).
    /// Cancelled conversions, retracted conversions and rows recorded without consent are never replayed.
    Replay(crate::repair::ReplayArgs),
    /// Delete old sent, skipped and cancelled rows now (as `run` does hourly), or failed rows with --failed.
    Purge(crate::retention::PurgeArgs),
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
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
    match runtime.block_on(dispatch_with_code(cli.command)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the tracing subscriber; `RUST_LOG` overrides the default filter. `tokio_postgres` stays at
/// `info` or above because at debug it logs query parameters, which hold identifiers. Text logs are
/// coloured only when stderr is a terminal and `NO_COLOR` is not set (files and log collectors get no
/// ANSI escapes).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive("tokio_postgres=info".parse().expect("valid directive"));
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether log lines get ANSI colours: only on a terminal, and not when `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Runs the commands that choose their own exit code, and the others through [`dispatch`].
async fn dispatch_with_code(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Status(args) => crate::status::run_status(args).await,
        Command::Setup {
            config,
            set_replica_identity_full,
        } => {
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            let report = setup::setup(
                &config,
                SetupOptions {
                    set_replica_identity_full,
                },
            )
            .await
            .map_err(|e| crate::pg::error_chain(&e))?;
            print!("{}", report.render());
            Ok(ExitCode::from(report.exit_code()))
        }
        Command::Retry(args) => crate::repair::run_retry(args).await,
        Command::Replay(args) => crate::repair::run_replay(args).await,
        Command::Purge(args) => crate::retention::run_purge(args).await,
        other => dispatch(other).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn dispatch(command: Command) -> Result<(), String> {
    match command {
        Command::Status(_)
        | Command::Setup { .. }
        | Command::Retry(_)
        | Command::Replay(_)
        | Command::Purge(_) => {
            unreachable!("handled by dispatch_with_code")
        }
        Command::Validate { config } => {
            Config::load(&config).map_err(|e| e.to_string())?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Demo => {
            let report = crate::demo::run().await?;
            print!("{report}");
            Ok(())
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
            let report = crate::bench::run(options).await?;
            print!("{report}");
            Ok(())
        }
        Command::BenchCapture { config, stop_at } => {
            crate::bench::capture_child(&config, &stop_at).await
        }
        Command::Sandbox { listen } => {
            let handle = crate::testbed::sandbox::Sandbox::start(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            println!("sandbox listening on {}", handle.base_url());
            handle
                .run_until(wait_for_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::Backfill {
            config,
            rule,
            since,
            column,
            dry_run,
        } => {
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            let since = since.resolve(chrono::Utc::now());
            let options = crate::backfill::BackfillOptions {
                rule,
                since,
                column,
                dry_run,
            };
            let report = crate::backfill::backfill(&config, &options)
                .await
                .map_err(|e| crate::pg::error_chain(&e))?;
            print!("{}", report.render());
            Ok(())
        }
        Command::Run {
            config,
            dry_run,
            dry_run_output,
        } => {
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            let dry_run = dry_run.then(|| crate::dry_run::Output::from_option(dry_run_output));
            run_with(Arc::new(config), dry_run).await
        }
        Command::Check { config } => crate::check::run(&config).await,
    }
}

/// `pgcapi run`: captures and dispatches until a signal.
pub async fn run(config: Arc<Config>) -> Result<(), String> {
    run_with(config, None).await
}

/// `pgcapi run`, or with `dry_run` set `pgcapi run --dry-run` (see [`crate::dry_run`]).
///
/// Capture, dispatch, retention and metrics run side by side until SIGTERM or SIGINT, and none takes
/// another down: capture waits out outages and, when it cannot proceed (a change a rule cannot apply,
/// a slot lost or ahead, a config that does not match the tables), says so in the log, the metrics and
/// `capture_state` and tries again (see [`Capture::run_supervised`]) while dispatch goes on sending what
/// is recorded. Only a config that cannot run at all (an unparseable URL) makes it return an error.
pub async fn run_with(
    config: Arc<Config>,
    dry_run: Option<crate::dry_run::Output>,
) -> Result<(), String> {
    let capture = Capture::new(config.clone()).map_err(|e| e.to_string())?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // Held until the end, so that receivers never see the channel closed before they stop.
    let shutdown_tx = Arc::new(shutdown_tx);
    let on_signal = shutdown_tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested");
        let _ = on_signal.send(true);
    });
    let metrics = crate::telemetry::server::start(config.clone(), shutdown_rx.clone()).await?;
    let span = tracing::info_span!("capture", slot = %config.source.slot);
    // Retention deletes finished rows; a dry run changes nothing, so it runs without it.
    let retention = dry_run.is_none().then(|| {
        tokio::spawn(crate::retention::run_periodic(
            config.clone(),
            shutdown_rx.clone(),
        ))
    });
    let dispatch = match dry_run {
        Some(output) => tokio::spawn(crate::dry_run::run(config, output, shutdown_rx.clone())),
        None => tokio::spawn(run_dispatch(config, shutdown_rx.clone())),
    };
    // Returns only at shutdown.
    capture.run_supervised(shutdown_rx).instrument(span).await;
    crate::metrics::set_capture_state(crate::metrics::CaptureState::Stopped);
    // Dispatch and retention stop on the same signal; dispatch records what is in flight first.
    let mut dispatch = dispatch;
    if tokio::time::timeout(std::time::Duration::from_secs(30), &mut dispatch)
        .await
        .is_err()
    {
        error!("dispatch did not stop within 30 s; stopping it");
        dispatch.abort();
        let _ = dispatch.await;
    }
    if let Some(retention) = retention {
        retention.abort();
        let _ = retention.await;
    }
    if let Some(metrics) = metrics {
        metrics.join().await;
    }
    drop(shutdown_tx);
    info!("stopped cleanly");
    Ok(())
}

/// Dispatches pending deliveries until shutdown, reconnecting after control-database outages (and
/// after any other failure: dispatch never gives up while the process runs).
async fn run_dispatch(config: Arc<Config>, shutdown: crate::shutdown::Shutdown) {
    let attempt = || dispatch_session(&config, shutdown.clone());
    let _ = crate::shutdown::supervise(
        "dispatch",
        crate::shutdown::Policy::OUTAGE,
        shutdown.clone(),
        |e: &String, delay| {
            error!(error = %e, retry_in_ms = delay.as_millis() as u64, "dispatch interrupted");
            crate::shutdown::Action::RETRY
        },
        attempt,
    )
    .await;
}

/// One dispatch session: connects to the control database and dispatches until shutdown or a failure.
async fn dispatch_session(
    config: &Config,
    shutdown: crate::shutdown::Shutdown,
) -> Result<(), String> {
    let info: crate::pg::ConnInfo = config
        .source
        .control_url()
        .expose()
        .parse()
        .map_err(|e| format!("source.control_url: {e}"))?;
    let destinations = crate::destinations::build_all(&config.destinations, &config.dispatch)
        .map_err(|e| crate::pg::error_chain(&e))?;
    let (client, connection) = crate::pg::client::connect_parts(&info)
        .await
        .map_err(|e| crate::pg::error_chain(&e))?;
    // One control connection per destination worker, so that their statements run in parallel server
    // processes.
    let mut worker_clients = Vec::new();
    for _ in 1..destinations.len() {
        let client = crate::pg::client::connect(&info)
            .await
            .map_err(|e| crate::pg::error_chain(&e))?;
        worker_clients.push(client);
    }
    crate::dispatch::Dispatcher::with_connection(
        client,
        connection,
        &config.source.schema,
        config.dispatch.clone(),
        destinations,
    )
    .with_worker_clients(worker_clients)
    .run(shutdown)
    .await
    .map_err(|e| crate::pg::error_chain(&e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        // NO_COLOR set but empty does not disable colours (no-color.org).
        assert!(use_colour(true, Some(OsStr::new(""))));
    }
}

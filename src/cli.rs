//! Command-line interface: `pgcapi setup | run | sandbox`.

use crate::capture::Capture;
use crate::config::Config;
use crate::rules::Rules;
use crate::setup::{self, SetupOptions};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tracing::{error, info};

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
    Setup {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Set REPLICA IDENTITY FULL on watched tables that have no usable replica identity.
        #[arg(long)]
        set_replica_identity_full: bool,
    },
    /// Capture changes into the control table until SIGTERM or SIGINT.
    Run {
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
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the tracing subscriber; `RUST_LOG` overrides the default filter. `tokio_postgres` stays at
/// `info` or above because at debug it logs query parameters, which hold identifiers.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive("tokio_postgres=info".parse().expect("valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn dispatch(command: Command) -> Result<(), String> {
    match command {
        Command::Validate { config } => {
            Config::load(&config).map_err(|e| e.to_string())?;
            println!("{}: ok", config.display());
            Ok(())
        }
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
            .map_err(|e| e.to_string())?;
            print!("{}", report.render());
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
            let handle = crate::sandbox::Sandbox::start(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            println!("sandbox listening on {}", handle.base_url());
            handle
                .run_until(wait_for_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::Run { config } => {
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            run(Arc::new(config)).await
        }
    }
}

/// `pgcapi run`: checks the config against the database, then captures until a signal.
pub async fn run(config: Arc<Config>) -> Result<(), String> {
    let source = setup::connect(config.source.url.expose(), "source database")
        .await
        .map_err(|e| e.to_string())?;
    let problems = setup::check_columns(&source, &Rules::new(&config))
        .await
        .map_err(|e| e.to_string())?;
    if !problems.is_empty() {
        return Err(setup::SetupError::NotReady(problems).to_string());
    }
    drop(source);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested");
        let _ = shutdown_tx.send(true);
    });
    let capture = Capture::new(config.clone()).map_err(|e| e.to_string())?;
    let dispatch = tokio::spawn(run_dispatch(config, shutdown_rx.clone()));
    let result = capture.run(shutdown_rx).await;
    // Dispatch follows capture: it stops on the same signal, or here when capture failed.
    dispatch.abort();
    let _ = dispatch.await;
    match result {
        Ok(()) => {
            info!("stopped cleanly");
            Ok(())
        }
        Err(e) => {
            error!(error = %crate::error_chain(&e), "capture stopped");
            Err(crate::error_chain(&e))
        }
    }
}

/// Dispatches pending deliveries until shutdown, reconnecting after control-database outages.
async fn run_dispatch(config: Arc<Config>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let attempt = async {
            let info: crate::source::ConnInfo = config
                .source
                .control_url()
                .expose()
                .parse()
                .map_err(|e| format!("source.control_url: {e}"))?;
            let destinations =
                crate::destinations::build_all(&config.destinations, &config.dispatch)
                    .map_err(|e| crate::error_chain(&e))?;
            let (client, connection) = crate::db::connect_parts(&info)
                .await
                .map_err(|e| crate::error_chain(&e))?;
            crate::dispatch::Dispatcher::with_connection(
                client,
                connection,
                &config.source.schema,
                config.dispatch.clone(),
                destinations,
            )
            .run(shutdown.clone())
            .await
            .map_err(|e| crate::error_chain(&e))
        };
        match attempt.await {
            Ok(()) => return,
            Err(e) => {
                error!(error = %e, retry_in_ms = delay.as_millis() as u64, "dispatch interrupted");
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
        }
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }
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

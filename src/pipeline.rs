//! `pgcapi run` assembled: the metrics server, capture, dispatch (or the dry run) and retention, side by
//! side under one shutdown signal, each supervised on its own.
//!
//! The CLI only turns signals into the shutdown ([`crate::shutdown`]); tests and the benchmark can run the
//! same assembly with a shutdown of their own.

use crate::capture::Capture;
use crate::config::Config;
use crate::error::Error;
use crate::shutdown::{never_halt, supervise, Policy, Shutdown};
use std::sync::Arc;
use tracing::{error, info, Instrument};

/// `pgcapi run`, or with `dry_run` set `pgcapi run --dry-run` (see [`crate::ops::dry_run`]), until
/// `shutdown` is given.
///
/// Capture, dispatch, retention and metrics run side by side until shutdown, and none takes
/// another down: capture waits out outages and, when it cannot proceed (a change a rule cannot apply,
/// a slot lost or ahead, a config that does not match the tables), says so in the log, the metrics and
/// `capture_state` and tries again (see [`Capture::run_supervised`]) while dispatch goes on sending what
/// is recorded. Only a config that cannot run at all (an unparseable URL) makes it return an error.
pub async fn run(
    config: Arc<Config>,
    dry_run: Option<crate::ops::dry_run::Output>,
    shutdown_rx: Shutdown,
) -> Result<(), Error> {
    let capture = Capture::new(config.clone()).map_err(Error::from)?;
    let metrics = crate::telemetry::server::start(config.clone(), shutdown_rx.clone()).await?;
    let span = tracing::info_span!("capture", slot = %config.source.slot);
    // Retention deletes finished rows; a dry run changes nothing, so it runs without it.
    let retention = dry_run.is_none().then(|| {
        tokio::spawn(crate::ops::retention::run_periodic(
            config.clone(),
            shutdown_rx.clone(),
        ))
    });
    let dispatch = match dry_run {
        Some(output) => tokio::spawn(crate::ops::dry_run::run(
            config,
            output,
            shutdown_rx.clone(),
        )),
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
    info!("stopped cleanly");
    Ok(())
}

/// Dispatches pending deliveries until shutdown, reconnecting after control-database outages (and
/// after any other failure: dispatch never gives up while the process runs, see [`never_halt`]).
async fn run_dispatch(config: Arc<Config>, shutdown: Shutdown) {
    let attempt = || dispatch_session(&config, shutdown.clone());
    let _ = supervise(
        "dispatch",
        Policy::OUTAGE,
        shutdown.clone(),
        never_halt("dispatch"),
        attempt,
    )
    .await;
}

/// One dispatch session: connects to the control database and dispatches until shutdown or a failure.
async fn dispatch_session(config: &Config, shutdown: Shutdown) -> Result<(), Error> {
    let info = crate::pg::client::control_info(config)?;
    let destinations = crate::destinations::build_all(&config.destinations, &config.dispatch)
        .map_err(|e| Error::config(crate::pg::error_chain(&e)))?;
    let (client, connection) = crate::pg::client::connect_parts(&info).await?;
    // One control connection per destination worker, so that their statements run in parallel server
    // processes.
    let mut worker_clients = Vec::new();
    for _ in 1..destinations.len() {
        worker_clients.push(crate::pg::client::connect(&info).await?);
    }
    Ok(crate::dispatch::Dispatcher::with_connection(
        client,
        connection,
        &config.source.schema,
        config.dispatch.clone(),
        destinations,
    )
    .with_worker_clients(worker_clients)
    .run(shutdown)
    .await?)
}

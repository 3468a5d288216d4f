//! The HTTP side of the metrics: `/metrics`, `/healthz`, `/readyz` of `pgcapi run` (`[metrics] listen`)
//! and the probe that refreshes the database gauges and judges readiness every `[metrics] refresh_ms`.
//!
//! The registry and the counters live in the leaf [`crate::metrics`], which capture, dispatch and the
//! destinations update; this module reads the control and source databases (as `pgcapi status` does,
//! with [`crate::ops::status::judge_flow`], the same function) and stores what it finds there, so that
//! `/readyz` answers from memory.

use crate::config::Config;
use crate::error::Error;
use crate::metrics::{global, FlowProblem};
use crate::ops::status::{FlowThresholds, Problem, Reason};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};

/// A running metrics server.
pub struct MetricsServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// The server and probe tasks; they end on shutdown.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MetricsServer {
    /// Waits for the server and probe to end (after shutdown).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts the metrics server and the database probe when `[metrics]` is configured; `Ok(None)` when
/// it is not. Fails when the address cannot be bound. Both tasks end when `shutdown` turns true.
pub async fn start(
    config: Arc<Config>,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<MetricsServer>, Error> {
    let Some(settings) = config.metrics.clone() else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| Error::Io {
            context: format!("metrics.listen {}: cannot listen", settings.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        context: format!("metrics.listen {}", settings.listen),
        source,
    })?;
    let span = info_span!("metrics", %addr);
    info!(parent: &span, %addr, "metrics server listening");
    let app = Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(get_readyz));
    let mut stop = shutdown.clone();
    let server = tokio::spawn(
        async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    while !*stop.borrow_and_update() {
                        if stop.changed().await.is_err() {
                            break;
                        }
                    }
                })
                .await;
            if let Err(e) = result {
                warn!(error = %e, "metrics server stopped");
            }
        }
        .instrument(span.clone()),
    );
    let refresh = Duration::from_millis(settings.refresh_ms.max(100));
    let probe = tokio::spawn(probe_loop(config, refresh, shutdown).instrument(span));
    Ok(Some(MetricsServer {
        addr,
        tasks: vec![server, probe],
    }))
}

/// `GET /metrics`.
async fn get_metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        global().encode(),
    )
        .into_response()
}

/// `GET /readyz`.
async fn get_readyz() -> Response {
    match global().readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// The database probe
// ---------------------------------------------------------------------------------------------

/// Open connections of the probe; dropped after any failure and opened again on the next round.
#[derive(Default)]
struct Probe {
    control: Option<tokio_postgres::Client>,
    source: Option<tokio_postgres::Client>,
}

/// Refreshes the database gauges and the control-database readiness every `refresh` until shutdown.
async fn probe_loop(config: Arc<Config>, refresh: Duration, shutdown: watch::Receiver<bool>) {
    // The rounds share the probe's connections; a lock (never contended) lets each round borrow them.
    let probe = tokio::sync::Mutex::new(Probe::default());
    let limit = refresh.clamp(Duration::from_secs(1), Duration::from_secs(5));
    let round = || async {
        probe.lock().await.round(&config, limit).await;
        Ok::<(), std::convert::Infallible>(())
    };
    crate::shutdown::every("metrics probe", refresh, shutdown, round).await;
}

impl Probe {
    /// One round: the control database, the slot, then the flow judgement, each within `limit`.
    /// Failures are recorded for `/readyz`, not returned; a failed connection is opened again next time.
    async fn round(&mut self, config: &Config, limit: Duration) {
        let control = match tokio::time::timeout(limit, self.control_round(config)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(reason.to_string()),
            Err(_) => Err(format!(
                "the control database did not answer within {} ms",
                limit.as_millis()
            )),
        };
        if let Err(reason) = &control {
            self.control = None;
            debug!(%reason, "control database probe failed");
        }
        global().set_control(control);
        match tokio::time::timeout(limit, self.slot_round(config)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                debug!(%reason, "slot probe failed");
                self.source = None;
            }
            Err(_) => self.source = None,
        }
        let flow = match tokio::time::timeout(limit, self.flow_round(config)).await {
            Ok(Ok(problems)) => Ok(problems),
            Ok(Err(reason)) => {
                debug!(%reason, "flow probe failed");
                Err(reason.to_string())
            }
            Err(_) => Err(format!(
                "reading the slot and capture state took longer than {} ms",
                limit.as_millis()
            )),
        };
        let reasons = Reason::FLOW.map(Reason::as_str);
        global().set_flow(
            &reasons,
            flow.map(|problems| problems.iter().map(flow_problem).collect()),
        );
    }
}

/// Opens a connection for `url` (a config value that is never printed).
async fn open(url: &str, what: &str) -> Result<tokio_postgres::Client, Error> {
    let info: crate::pg::ConnInfo = url
        .parse()
        .map_err(|e| Error::config(format!("{what}: {e}")))?;
    crate::pg::client::connect(&info)
        .await
        .map_err(|e| Error::from(e).context(format_args!("{what} unreachable")))
}

/// A probe's connection that is not open (it failed earlier this round).
fn not_connected(message: &str) -> Error {
    Error::Database {
        message: message.into(),
        fault: crate::error::Fault::Lost,
    }
}

impl Probe {
    /// Counts pending rows per destination.
    async fn control_round(&mut self, config: &Config) -> Result<(), Error> {
        if self.control.is_none() {
            self.control =
                Some(open(config.source.control_url().expose(), "control database").await?);
        }
        let client = self.control.as_ref().expect("just opened");
        let pending = crate::outbox::Outbox::new(&config.source.schema)
            .pending_per_destination(client)
            .await
            .map_err(|e| Error::from(e).context("control database"))?;
        for name in config.destinations.keys() {
            let n = pending
                .iter()
                .find(|(destination, _)| destination == name)
                .map_or(0, |(_, n)| *n);
            crate::metrics::set_pending(name, n);
        }
        Ok(())
    }

    /// Judges whether conversions flow, exactly as `pgcapi status` does.
    async fn flow_round(&mut self, config: &Config) -> Result<Vec<Problem>, Error> {
        let shared = config.source.control_url.is_none();
        let (Some(control), source) = (self.control.as_ref(), self.source.as_ref()) else {
            return Err(not_connected("the control database is not connected"));
        };
        let source = if shared {
            control
        } else {
            source.ok_or_else(|| not_connected("the source database is not connected"))?
        };
        let observation = crate::ops::status::observe(
            source,
            control,
            &config.source.schema,
            &config.source.slot,
            FlowThresholds::from_config(config).failing_after,
        )
        .await
        .map_err(|e| Error::failed(crate::pg::error_chain(&e)))?;
        Ok(crate::ops::status::judge_flow(
            &observation,
            &FlowThresholds::from_config(config),
        ))
    }

    /// Reads the slot's confirmed position and how much WAL it retains.
    async fn slot_round(&mut self, config: &Config) -> Result<(), Error> {
        let shared = config.source.control_url.is_none();
        if shared && self.control.is_some() {
            self.source = None;
        } else if self.source.is_none() {
            self.source = Some(open(config.source.url.expose(), "source database").await?);
        }
        let client = if shared {
            self.control.as_ref()
        } else {
            self.source.as_ref()
        };
        let Some(client) = client else {
            return Err(not_connected("source database not connected"));
        };
        let row = client
            .query_opt(
                "select (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint, \
                   pg_wal_lsn_diff(case when pg_is_in_recovery() then pg_last_wal_receive_lsn() \
                     else pg_current_wal_lsn() end, confirmed_flush_lsn)::bigint \
                 from pg_replication_slots where slot_name = $1",
                &[&config.source.slot],
            )
            .await
            .map_err(|e| Error::Database {
                message: format!("reading the slot: {}", crate::pg::client::describe(&e)),
                fault: crate::pg::fault(&e),
            })?;
        if let Some(row) = row {
            crate::metrics::set_slot(row.get(0), row.get(1));
        }
        Ok(())
    }
}

/// A problem of the flow judgement as the metrics keep it (names, not `status` types).
fn flow_problem(problem: &Problem) -> FlowProblem {
    FlowProblem {
        reason: problem.reason.as_str(),
        message: problem.message.clone(),
    }
}

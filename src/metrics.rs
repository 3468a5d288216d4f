//! Prometheus metrics and the health endpoints of `pgcapi run` (`[metrics] listen = "…"`).
//!
//! The counters live in one process-wide registry ([`global`]) that capture, dispatch and the
//! destinations update through the small functions of this module; they cost a few atomic operations
//! when no server is configured. The server ([`start`]) answers:
//!
//! - `GET /metrics`: every metric below, in the OpenMetrics text format Prometheus scrapes;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 when the control database answered the last probe, capture is streaming (or is
//!   a standby waiting for the slot another process holds) and conversions flow as `pgcapi status`
//!   judges it ([`crate::status::judge_flow`], the same function); 503 with the reasons otherwise.
//!
//! Labels are low-cardinality only (`destination`, `state`, `outcome`): never an event id.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `pgcapi_changes_decoded_total` | counter | row changes decoded from the replication stream |
//! | `pgcapi_transactions_total` | counter | source transactions whose commit was decoded |
//! | `pgcapi_events_captured_total` | counter | control-table rows (one per event and destination) newly written by capture |
//! | `pgcapi_deliveries_total{destination,state}` | counter | outcomes this process recorded: `sent`, `failed`, `skipped`, `cancelled`, `retry` (pending again with a backoff), `wait` (an adjustment waiting for its conversion); a `retry` past `give_up_after_secs` is stored as `failed` but counted here as `retry` |
//! | `pgcapi_dispatch_requests_total{destination,outcome}` | counter | requests to a platform: `accepted` (the platform processed the request; per-row results are in the deliveries), `rejected` (refused because of its events), `retry` (temporary failure, no answer, or credentials at fault) |
//! | `pgcapi_dispatch_request_duration_seconds{destination}` | histogram | duration of one platform request (Google: with the OAuth exchange when one was needed) |
//! | `pgcapi_dispatch_latency_seconds{destination}` | histogram | from the row's creation in the control table (capture) to the platform's acceptance, per sent row |
//! | `pgcapi_replication_lag_bytes` | gauge | WAL the slot still retains: current WAL position minus the slot's `confirmed_flush_lsn` |
//! | `pgcapi_confirmed_flush_lsn` | gauge | the slot's `confirmed_flush_lsn`, as a byte position |
//! | `pgcapi_pending_deliveries{destination}` | gauge | rows in state `pending`, read from the control table |
//! | `pgcapi_capture_active` | gauge | 1 while this process holds the slot and streams; 0 while it is standby, reconnecting or stuck on a change it cannot apply (`/readyz` then says which, and `capture_state` holds the reason and LSN) |
//! | `pgcapi_unhealthy{reason}` | gauge | 1 while `pgcapi status` would report this reason (`capture_not_running`, `capture_stuck`, `capture_retrying`, `slot_missing`, `slot_lost`, `slot_unreserved`, `slot_ahead`, `destination_failing`), else 0 |
//! | `pgcapi_healthy` | gauge | 1 while `/readyz` answers 200 |
//! | `pgcapi_toast_read_backs_total{outcome}` | counter | changes whose unchanged TOAST values a rule needed, read back from the source by key: `read`, or `unresolved` (no key, row gone, query refused: recorded without them, the identifiers counted as dropped) |
//!
//! The database-read gauges are refreshed every `[metrics] refresh_ms` by a probe that also decides the
//! database half of `/readyz`.

use crate::config::Config;
use crate::status::{FlowThresholds, Problem, Reason};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};

/// Labels of per-destination metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    /// The destination's config name.
    destination: String,
}

/// Labels of `pgcapi_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    /// The destination's config name.
    destination: String,
    /// The recorded outcome.
    state: String,
}

/// Labels of `pgcapi_dispatch_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The destination's config name.
    destination: String,
    /// `accepted`, `rejected` or `retry`.
    outcome: String,
}

/// Labels of `pgcapi_unhealthy`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// A [`crate::status::Reason`] name.
    reason: String,
}

/// Labels of `pgcapi_toast_read_backs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToastLabels {
    /// `read` or `unresolved`.
    outcome: String,
}

/// A histogram family with one constructor for all its members.
type Histograms = Family<DestinationLabels, Histogram, fn() -> Histogram>;

/// Buckets for request durations: 5 ms to about 40 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Buckets for capture-to-sent latency: 50 ms to about 2 hours (retries stretch it).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.5, 14))
}

/// What capture is doing, for `/readyz` and `pgcapi_capture_active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureState {
    /// Not connected yet.
    Starting = 0,
    /// Holding the slot and streaming.
    Streaming = 1,
    /// Another process holds the slot; waiting to take over (a healthy standby).
    Standby = 2,
    /// The connection was lost; reconnecting.
    Reconnecting = 3,
    /// Capture returned (shutdown).
    Stopped = 4,
    /// Capture stopped on a change (or a config) it cannot apply until an operator acts, and tries
    /// again from time to time; dispatch goes on.
    Stuck = 5,
}

impl CaptureState {
    fn from_u8(v: u8) -> CaptureState {
        match v {
            1 => CaptureState::Streaming,
            2 => CaptureState::Standby,
            3 => CaptureState::Reconnecting,
            4 => CaptureState::Stopped,
            5 => CaptureState::Stuck,
            _ => CaptureState::Starting,
        }
    }
}

/// The result of the last control-database probe.
#[derive(Debug, Clone)]
struct ControlProbe {
    /// Whether the control database answered.
    ok: bool,
    /// Why not, when it did not.
    reason: String,
}

/// Every metric of the process, and the state `/readyz` reads.
pub struct Metrics {
    registry: Registry,
    changes_decoded: Counter,
    transactions: Counter,
    events_captured: Counter,
    deliveries: Family<DeliveryLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms,
    dispatch_latency: Histograms,
    replication_lag_bytes: Gauge,
    confirmed_flush_lsn: Gauge,
    pending: Family<DestinationLabels, Gauge>,
    capture_active: Gauge,
    toast_read_backs: Family<ToastLabels, Counter>,
    google_processing_errors: Family<DestinationReasonLabels, Counter>,
    capture_state: AtomicU8,
    control: Mutex<Option<ControlProbe>>,
    unhealthy: Family<ReasonLabels, Gauge>,
    healthy: Gauge,
    /// The last flow judgement: its problems, or why it could not be made.
    flow: Mutex<Option<Result<Vec<Problem>, String>>>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pgcapi");
        let m = Metrics {
            registry: Registry::default(),
            changes_decoded: Counter::default(),
            transactions: Counter::default(),
            events_captured: Counter::default(),
            deliveries: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram),
            dispatch_latency: Family::new_with_constructor(latency_histogram),
            replication_lag_bytes: Gauge::default(),
            confirmed_flush_lsn: Gauge::default(),
            pending: Family::default(),
            capture_active: Gauge::default(),
            toast_read_backs: Family::default(),
            google_processing_errors: Family::default(),
            capture_state: AtomicU8::new(CaptureState::Starting as u8),
            control: Mutex::new(None),
            unhealthy: Family::default(),
            healthy: Gauge::default(),
            flow: Mutex::new(None),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "changes_decoded",
            "Row changes decoded from the replication stream",
            m.changes_decoded.clone(),
        );
        registry.register(
            "transactions",
            "Source transactions whose commit was decoded",
            m.transactions.clone(),
        );
        registry.register(
            "events_captured",
            "Control-table rows (one per event and destination) newly written by capture",
            m.events_captured.clone(),
        );
        registry.register(
            "toast_read_backs",
            "Changes whose unchanged TOAST values were read back from the source, by outcome",
            m.toast_read_backs.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery outcomes recorded by this process",
            m.deliveries.clone(),
        );
        registry.register(
            "dispatch_requests",
            "Requests sent to a platform, by outcome",
            m.requests.clone(),
        );
        registry.register(
            "dispatch_request_duration_seconds",
            "Duration of one platform request",
            m.request_duration.clone(),
        );
        registry.register(
            "dispatch_latency_seconds",
            "From the row's creation in the control table to the platform's acceptance, per sent row",
            m.dispatch_latency.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "WAL retained by the slot: current WAL position minus confirmed_flush_lsn",
            m.replication_lag_bytes.clone(),
        );
        registry.register(
            "confirmed_flush_lsn",
            "The slot's confirmed_flush_lsn as a byte position",
            m.confirmed_flush_lsn.clone(),
        );
        registry.register(
            "pending_deliveries",
            "Control-table rows in state pending",
            m.pending.clone(),
        );
        registry.register(
            "capture_active",
            "1 while this process holds the slot and streams",
            m.capture_active.clone(),
        );
        registry.register(
            "unhealthy",
            "1 while pgcapi status would report this reason, else 0",
            m.unhealthy.clone(),
        );
        registry.register("healthy", "1 while /readyz answers 200", m.healthy.clone());
        registry.register(
            "google_processing_errors",
            "Events Data Manager accepted but then could not use, by reason (requestStatus:retrieve)",
            m.google_processing_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Whether `/readyz` answers 200, and the reasons when it does not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        match self
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            None => reasons.push("the control database has not been probed yet".to_string()),
            Some(p) if !p.ok => reasons.push(p.reason.clone()),
            Some(_) => {}
        }
        match CaptureState::from_u8(self.capture_state.load(Ordering::Relaxed)) {
            CaptureState::Streaming | CaptureState::Standby => {}
            CaptureState::Starting => reasons.push("capture has not started streaming yet".into()),
            CaptureState::Reconnecting => {
                reasons.push("capture lost its connection and is reconnecting".into())
            }
            CaptureState::Stopped => reasons.push("capture has stopped".into()),
            CaptureState::Stuck => {
                reasons.push("capture is stuck on a change it cannot apply (see the log)".into())
            }
        }
        match self.flow.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            None => {}
            Some(Ok(problems)) => reasons.extend(problems.iter().map(|p| p.message.clone())),
            Some(Err(why)) => reasons.push(why.clone()),
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn set_control(&self, probe: ControlProbe) {
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(probe);
    }

    /// Records the flow judgement and sets `pgcapi_unhealthy` (one series per reason, 0 or 1) and
    /// `pgcapi_healthy`.
    fn set_flow(&self, flow: Result<Vec<Problem>, String>) {
        for reason in Reason::FLOW {
            let on = flow
                .as_ref()
                .is_ok_and(|problems| problems.iter().any(|p| p.reason == reason));
            self.unhealthy
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str().to_string(),
                })
                .set(i64::from(on));
        }
        *self.flow.lock().unwrap_or_else(|p| p.into_inner()) = Some(flow);
        self.healthy.set(i64::from(self.readiness().is_ok()));
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

// ---------------------------------------------------------------------------------------------
// Hooks called by capture, dispatch and the destinations
// ---------------------------------------------------------------------------------------------

/// Capture decoded `n` row changes.
pub fn changes_decoded(n: u64) {
    global().changes_decoded.inc_by(n);
}

/// Capture decoded a source transaction's commit.
pub fn transaction_committed() {
    global().transactions.inc();
}

/// Capture wrote `n` new control-table rows.
pub fn events_captured(n: u64) {
    global().events_captured.inc_by(n);
}

/// Capture read back a change's unchanged TOAST values (`read`), or could not (`unresolved`).
pub fn toast_read_back(read: bool) {
    let outcome = if read { "read" } else { "unresolved" };
    global()
        .toast_read_backs
        .get_or_create(&ToastLabels {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// Capture changed state.
pub fn set_capture_state(state: CaptureState) {
    let m = global();
    m.capture_state.store(state as u8, Ordering::Relaxed);
    m.capture_active
        .set(i64::from(state == CaptureState::Streaming));
}

/// What capture is doing now.
pub fn capture_state() -> CaptureState {
    CaptureState::from_u8(global().capture_state.load(Ordering::Relaxed))
}

/// Dispatch recorded one outcome per item of `states` for `destination`.
pub fn deliveries_recorded<'a>(destination: &str, states: impl IntoIterator<Item = &'a str>) {
    let family = &global().deliveries;
    for state in states {
        family
            .get_or_create(&DeliveryLabels {
                destination: destination.to_string(),
                state: state.to_string(),
            })
            .inc();
    }
}

/// Dispatch recorded `n` rows of `destination` as `state` at once.
pub fn deliveries_recorded_n(destination: &str, state: &str, n: u64) {
    if n > 0 {
        global()
            .deliveries
            .get_or_create(&DeliveryLabels {
                destination: destination.to_string(),
                state: state.to_string(),
            })
            .inc_by(n);
    }
}

/// How a platform request ended, for `pgcapi_dispatch_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The platform processed the request.
    Accepted,
    /// The platform refused the request because of its events.
    Rejected,
    /// Temporary failure, no answer, or credentials at fault: the rows are retried.
    Retry,
}

impl RequestOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Accepted => "accepted",
            RequestOutcome::Rejected => "rejected",
            RequestOutcome::Retry => "retry",
        }
    }
}

/// One platform request of `destination` took `elapsed` and ended as `outcome`.
pub fn dispatch_request(destination: &str, outcome: RequestOutcome, elapsed: Duration) {
    let m = global();
    m.requests
        .get_or_create(&RequestLabels {
            destination: destination.to_string(),
            outcome: outcome.as_str().to_string(),
        })
        .inc();
    m.request_duration
        .get_or_create(&DestinationLabels {
            destination: destination.to_string(),
        })
        .observe(elapsed.as_secs_f64());
}

/// Labels of a per-reason count of a destination.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DestinationReasonLabels {
    /// The destination's name.
    pub destination: String,
    /// The platform's reason, e.g. `PROCESSING_ERROR_REASON_EVENT_TOO_OLD`.
    pub reason: String,
}

/// Data Manager reported `count` events of `destination` it accepted but could not use, for `reason`.
pub fn google_processing_errors(destination: &str, reason: &str, count: u64) {
    global()
        .google_processing_errors
        .get_or_create(&DestinationReasonLabels {
            destination: destination.to_string(),
            reason: reason.to_string(),
        })
        .inc_by(count);
}

/// A row of `destination` created in the control table at `created_at` was accepted by the platform now.
pub fn delivery_sent(destination: &str, created_at: DateTime<Utc>) {
    let seconds = (Utc::now() - created_at)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    global()
        .dispatch_latency
        .get_or_create(&DestinationLabels {
            destination: destination.to_string(),
        })
        .observe(seconds);
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

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
) -> Result<Option<MetricsServer>, String> {
    let Some(settings) = config.metrics.clone() else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("metrics.listen {}: cannot listen: {e}", settings.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("metrics.listen {}: {e}", settings.listen))?;
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
async fn probe_loop(config: Arc<Config>, refresh: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut probe = Probe::default();
    let limit = refresh.clamp(Duration::from_secs(1), Duration::from_secs(5));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let control = match tokio::time::timeout(limit, probe.control_round(&config)).await {
            Ok(Ok(())) => ControlProbe {
                ok: true,
                reason: String::new(),
            },
            Ok(Err(reason)) => {
                probe.control = None;
                ControlProbe { ok: false, reason }
            }
            Err(_) => {
                probe.control = None;
                ControlProbe {
                    ok: false,
                    reason: format!(
                        "the control database did not answer within {} ms",
                        limit.as_millis()
                    ),
                }
            }
        };
        if !control.ok {
            debug!(reason = %control.reason, "control database probe failed");
        }
        global().set_control(control);
        match tokio::time::timeout(limit, probe.slot_round(&config)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                debug!(%reason, "slot probe failed");
                probe.source = None;
            }
            Err(_) => probe.source = None,
        }
        let flow = match tokio::time::timeout(limit, probe.flow_round(&config)).await {
            Ok(Ok(problems)) => Ok(problems),
            Ok(Err(reason)) => {
                debug!(%reason, "flow probe failed");
                Err(reason)
            }
            Err(_) => Err(format!(
                "reading the slot and capture state took longer than {} ms",
                limit.as_millis()
            )),
        };
        global().set_flow(flow);
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Opens a connection for `url` (a config value that is never printed).
async fn open(url: &str, what: &str) -> Result<tokio_postgres::Client, String> {
    let info: crate::pg::ConnInfo = url.parse().map_err(|e| format!("{what}: {e}"))?;
    crate::pg::client::connect(&info)
        .await
        .map_err(|e| format!("{what} unreachable: {}", crate::pg::error_chain(&e)))
}

impl Probe {
    /// Counts pending rows per destination.
    async fn control_round(&mut self, config: &Config) -> Result<(), String> {
        if self.control.is_none() {
            self.control =
                Some(open(config.source.control_url().expose(), "control database").await?);
        }
        let client = self.control.as_ref().expect("just opened");
        let rows = crate::outbox::Outbox::new(&config.source.schema)
            .pending_per_destination(client)
            .await
            .map_err(|e| format!("control database: {e}"))?;
        let m = global();
        for name in config.destinations.keys() {
            let n = rows
                .iter()
                .find(|(destination, _)| destination == name)
                .map_or(0, |(_, n)| *n);
            m.pending
                .get_or_create(&DestinationLabels {
                    destination: name.clone(),
                })
                .set(n);
        }
        Ok(())
    }

    /// Judges whether conversions flow, exactly as `pgcapi status` does.
    async fn flow_round(&mut self, config: &Config) -> Result<Vec<Problem>, String> {
        let shared = config.source.control_url.is_none();
        let (Some(control), source) = (self.control.as_ref(), self.source.as_ref()) else {
            return Err("the control database is not connected".into());
        };
        let source = if shared {
            control
        } else {
            source.ok_or("the source database is not connected")?
        };
        let observation = crate::status::observe(
            source,
            control,
            &config.source.schema,
            &config.source.slot,
            FlowThresholds::from_config(config).failing_after,
        )
        .await
        .map_err(|e| crate::pg::error_chain(&e))?;
        Ok(crate::status::judge_flow(
            &observation,
            &FlowThresholds::from_config(config),
        ))
    }

    /// Reads the slot's confirmed position and how much WAL it retains.
    async fn slot_round(&mut self, config: &Config) -> Result<(), String> {
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
            return Err("source database not connected".into());
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
            .map_err(|e| format!("reading the slot: {}", crate::pg::client::describe(&e)))?;
        if let Some(row) = row {
            let m = global();
            if let Some(lsn) = row.get::<_, Option<i64>>(0) {
                m.confirmed_flush_lsn.set(lsn);
            }
            if let Some(lag) = row.get::<_, Option<i64>>(1) {
                m.replication_lag_bytes.set(lag.max(0));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_by_prometheus_conventions_and_carry_no_event_ids() {
        deliveries_recorded("meta-test", ["sent", "sent", "failed"]);
        dispatch_request(
            "meta-test",
            RequestOutcome::Accepted,
            Duration::from_millis(12),
        );
        let text = global().encode();
        assert!(
            text.contains(r#"pgcapi_deliveries_total{destination="meta-test",state="sent"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"pgcapi_dispatch_requests_total{destination="meta-test",outcome="accepted"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE pgcapi_dispatch_request_duration_seconds histogram"));
        for name in [
            "pgcapi_changes_decoded_total",
            "pgcapi_transactions_total",
            "pgcapi_events_captured_total",
            "pgcapi_replication_lag_bytes",
            "pgcapi_confirmed_flush_lsn",
            "pgcapi_capture_active",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }

    #[test]
    fn readiness_names_what_is_missing() {
        let m = Metrics::new();
        let reasons = m.readiness().unwrap_err();
        assert!(reasons.iter().any(|r| r.contains("control database")));
        m.set_control(ControlProbe {
            ok: false,
            reason: "control database unreachable: connection refused".into(),
        });
        let reasons = m.readiness().unwrap_err();
        assert!(reasons.iter().any(|r| r.contains("connection refused")));
    }

    #[test]
    fn the_flow_judgement_drives_readiness_and_the_unhealthy_gauge() {
        let m = Metrics::new();
        m.set_control(ControlProbe {
            ok: true,
            reason: String::new(),
        });
        m.capture_state
            .store(CaptureState::Streaming as u8, Ordering::Relaxed);
        m.set_flow(Ok(Vec::new()));
        assert!(m.readiness().is_ok());
        let text = m.encode();
        assert!(
            text.contains(r#"pgcapi_unhealthy{reason="capture_stuck"} 0"#),
            "{text}"
        );
        assert!(text.contains("pgcapi_healthy 1"), "{text}");
        m.set_flow(Ok(vec![Problem {
            reason: Reason::CaptureStuck,
            message: "capture is stuck at LSN 0/1".into(),
        }]));
        assert_eq!(
            m.readiness().unwrap_err(),
            ["capture is stuck at LSN 0/1".to_string()]
        );
        let text = m.encode();
        assert!(
            text.contains(r#"pgcapi_unhealthy{reason="capture_stuck"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pgcapi_unhealthy{reason="slot_ahead"} 0"#),
            "{text}"
        );
        assert!(text.contains("pgcapi_healthy 0"), "{text}");
    }
}

//! Prometheus metrics of `pgcapi run`: the registry, the metric names and the functions that record.
//!
//! A leaf: it imports no other pgcapi module, so capture, dispatch and the destinations can all record
//! here. The counters live in one process-wide registry ([`global`]) updated through the small functions
//! of this module; they cost a few atomic operations when no server is configured. The server and the
//! database probe that fill the gauges are in `telemetry::server`, which answers:
//!
//! - `GET /metrics`: every metric below, in the OpenMetrics text format Prometheus scrapes;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 when the control database answered the last probe, capture is streaming (or is
//!   a standby waiting for the slot another process holds) and conversions flow as `pgcapi status`
//!   judges it; 503 with the reasons otherwise ([`Metrics::readiness`]).
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

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

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
    /// A `pgcapi status` reason name (`capture_stuck`, `slot_lost`, …).
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

/// One problem of the flow judgement (`pgcapi status`), as the metrics keep it: the reason's stable
/// name and the message `/readyz` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowProblem {
    /// The reason's name, the `reason` label of `pgcapi_unhealthy`.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
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
    /// The last control-database probe: `Ok` when it answered, else why not.
    control: Mutex<Option<Result<(), String>>>,
    unhealthy: Family<ReasonLabels, Gauge>,
    healthy: Gauge,
    /// The last flow judgement: its problems, or why it could not be made.
    flow: Mutex<Option<Result<Vec<FlowProblem>, String>>>,
}

impl Metrics {
    fn new() -> Metrics {
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
        let registry = m.registry_of_all();
        Metrics { registry, ..m }
    }

    /// A registry (prefix `pgcapi`) holding every metric of `self`, with its help text.
    fn registry_of_all(&self) -> Registry {
        let mut registry = Registry::with_prefix("pgcapi");
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "changes_decoded",
            "Row changes decoded from the replication stream",
            self.changes_decoded.clone(),
        );
        registry.register(
            "transactions",
            "Source transactions whose commit was decoded",
            self.transactions.clone(),
        );
        registry.register(
            "events_captured",
            "Control-table rows (one per event and destination) newly written by capture",
            self.events_captured.clone(),
        );
        registry.register(
            "toast_read_backs",
            "Changes whose unchanged TOAST values were read back from the source, by outcome",
            self.toast_read_backs.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery outcomes recorded by this process",
            self.deliveries.clone(),
        );
        registry.register(
            "dispatch_requests",
            "Requests sent to a platform, by outcome",
            self.requests.clone(),
        );
        registry.register(
            "dispatch_request_duration_seconds",
            "Duration of one platform request",
            self.request_duration.clone(),
        );
        registry.register(
            "dispatch_latency_seconds",
            "From the row's creation in the control table to the platform's acceptance, per sent row",
            self.dispatch_latency.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "WAL retained by the slot: current WAL position minus confirmed_flush_lsn",
            self.replication_lag_bytes.clone(),
        );
        registry.register(
            "confirmed_flush_lsn",
            "The slot's confirmed_flush_lsn as a byte position",
            self.confirmed_flush_lsn.clone(),
        );
        registry.register(
            "pending_deliveries",
            "Control-table rows in state pending",
            self.pending.clone(),
        );
        registry.register(
            "capture_active",
            "1 while this process holds the slot and streams",
            self.capture_active.clone(),
        );
        registry.register(
            "unhealthy",
            "1 while pgcapi status would report this reason, else 0",
            self.unhealthy.clone(),
        );
        registry.register(
            "healthy",
            "1 while /readyz answers 200",
            self.healthy.clone(),
        );
        registry.register(
            "google_processing_errors",
            "Events Data Manager accepted but then could not use, by reason (requestStatus:retrieve)",
            self.google_processing_errors.clone(),
        );
        registry
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
            Some(Err(why)) => reasons.push(why.clone()),
            Some(Ok(())) => {}
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

    /// Records the last control-database probe: `Ok` when it answered, else why not.
    pub fn set_control(&self, probe: Result<(), String>) {
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(probe);
    }

    /// Records the flow judgement and sets `pgcapi_unhealthy` (one series per name in `reasons`, each
    /// 0 or 1) and `pgcapi_healthy`. `reasons` are every reason the judgement can report, so that a
    /// reason that went away reads 0 rather than disappearing.
    pub fn set_flow(&self, reasons: &[&str], flow: Result<Vec<FlowProblem>, String>) {
        for &reason in reasons {
            let on = flow
                .as_ref()
                .is_ok_and(|problems| problems.iter().any(|p| p.reason == reason));
            self.unhealthy
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
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

/// The probe counted `n` rows of `destination` in state `pending`.
pub fn set_pending(destination: &str, n: i64) {
    global()
        .pending
        .get_or_create(&DestinationLabels {
            destination: destination.to_string(),
        })
        .set(n);
}

/// The probe read the slot: its `confirmed_flush_lsn` as a byte position and the WAL it retains
/// (either unknown while the slot has never confirmed a position).
pub fn set_slot(confirmed_flush_lsn: Option<i64>, retained_bytes: Option<i64>) {
    let m = global();
    if let Some(lsn) = confirmed_flush_lsn {
        m.confirmed_flush_lsn.set(lsn);
    }
    if let Some(lag) = retained_bytes {
        m.replication_lag_bytes.set(lag.max(0));
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
        m.set_control(Err(
            "control database unreachable: connection refused".into()
        ));
        let reasons = m.readiness().unwrap_err();
        assert!(reasons.iter().any(|r| r.contains("connection refused")));
    }

    #[test]
    fn the_flow_judgement_drives_readiness_and_the_unhealthy_gauge() {
        let m = Metrics::new();
        m.set_control(Ok(()));
        m.capture_state
            .store(CaptureState::Streaming as u8, Ordering::Relaxed);
        let reasons = ["capture_stuck", "slot_ahead"];
        m.set_flow(&reasons, Ok(Vec::new()));
        assert!(m.readiness().is_ok());
        let text = m.encode();
        assert!(
            text.contains(r#"pgcapi_unhealthy{reason="capture_stuck"} 0"#),
            "{text}"
        );
        assert!(text.contains("pgcapi_healthy 1"), "{text}");
        m.set_flow(
            &reasons,
            Ok(vec![FlowProblem {
                reason: "capture_stuck",
                message: "capture is stuck at LSN 0/1".into(),
            }]),
        );
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

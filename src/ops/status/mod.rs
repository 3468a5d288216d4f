//! `pgcapi status`: the replication slot, capture, each destination's health and the latest failures,
//! as readable tables or JSON, with an exit code for scripts and monitoring.
//!
//! The slot is read from the source database (so this works when the control schema lives elsewhere);
//! capture's own report from `capture_state`, destination health from the `health` view and failures
//! from the `send_log` view of the control schema (see `sql/views.sql`).
//!
//! Whether conversions flow is decided by one function, [`judge_flow`], over one reading,
//! [`observe`]; `pgcapi run`'s `/readyz` and `pgcapi_unhealthy{reason}` use the same two
//! (see [`crate::metrics`]). Unhealthy (exit code 2), each with the reason and what to do:
//! - the slot does not exist, or its `wal_status` is `lost` (changes were missed) or `unreserved` (about
//!   to be lost);
//! - the slot's confirmed position is ahead of pgcapi's stored checkpoint (changes never captured);
//! - capture is not running: the slot has no reader and no capture process reported within 60 s;
//! - capture is stuck on a change, or has been retrying (an outage) for more than 60 s;
//! - a destination has had only failures for `--failing-after` (default `dispatch.failing_after_secs`,
//!   10 minutes) while rows wait;
//! - the slot retains more WAL than `--max-wal-retained` (default 1 GiB);
//! - a delivery failed in the last hour (unless `--allow-failures`).
//!
//! Exit code 1 means status itself could not run (config, connection, missing control schema).

use crate::config::Config;
use crate::lsn::Lsn;
use crate::outbox::{quote_ident, CapturePhase, CaptureReport, Outbox};
pub use crate::outbox::{DestinationFlow, DestinationHealth, FailureLine, UnusableReason};
use crate::report::{clip, table};
use crate::units::{format_bytes, format_secs};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of an unhealthy status.
pub const UNHEALTHY_EXIT: u8 = 2;

/// Thresholds of `pgcapi status`.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// WAL retained by the slot beyond which status is unhealthy, in bytes.
    pub max_wal_retained: u64,
    /// Do not count failures of the last hour as unhealthy.
    pub allow_failures: bool,
    /// How many recent failures to list.
    pub recent_failures: usize,
    /// When conversions count as not flowing.
    pub flow: FlowThresholds,
}

impl Default for StatusOptions {
    fn default() -> Self {
        StatusOptions {
            max_wal_retained: 1 << 30,
            allow_failures: false,
            recent_failures: 10,
            flow: FlowThresholds::default(),
        }
    }
}

/// The thresholds of [`judge_flow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowThresholds {
    /// A destination whose rows waited this long while every attempt in that time failed is failing.
    pub failing_after: Duration,
    /// A slot without a reader whose capture has not reported for this long is not being read.
    pub capture_silent_after: Duration,
    /// Capture retrying (an outage) for longer than this is a problem.
    pub retrying_after: Duration,
}

impl Default for FlowThresholds {
    fn default() -> Self {
        FlowThresholds {
            failing_after: Duration::from_secs(600),
            capture_silent_after: Duration::from_secs(60),
            retrying_after: Duration::from_secs(60),
        }
    }
}

impl FlowThresholds {
    /// The defaults with `failing_after` from the config (`dispatch.failing_after_secs`).
    pub fn from_config(config: &Config) -> FlowThresholds {
        FlowThresholds {
            failing_after: Duration::from_secs(config.dispatch.failing_after_secs),
            ..FlowThresholds::default()
        }
    }
}

/// Why conversions do not flow (or need attention), as a stable name for scripts and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The slot does not exist.
    SlotMissing,
    /// The slot was invalidated (`wal_status = lost`).
    SlotLost,
    /// The slot is about to be lost (`wal_status = unreserved`).
    SlotUnreserved,
    /// The slot's confirmed position is ahead of the stored checkpoint.
    SlotAhead,
    /// Nothing reads the slot.
    CaptureNotRunning,
    /// Capture cannot apply a change until an operator acts.
    CaptureStuck,
    /// Capture has been waiting out an outage for too long.
    CaptureRetrying,
    /// A destination has had only failures for a while and rows wait.
    DestinationFailing,
    /// The slot retains more WAL than `--max-wal-retained` (status only).
    WalRetained,
    /// Deliveries failed in the last hour (status only).
    RecentFailures,
}

impl Reason {
    /// The reasons [`judge_flow`] can give: what `/readyz` and `pgcapi_unhealthy` report.
    pub const FLOW: [Reason; 8] = [
        Reason::SlotMissing,
        Reason::SlotLost,
        Reason::SlotUnreserved,
        Reason::SlotAhead,
        Reason::CaptureNotRunning,
        Reason::CaptureStuck,
        Reason::CaptureRetrying,
        Reason::DestinationFailing,
    ];

    /// The stable name (`capture_stuck`), as in JSON and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SlotMissing => "slot_missing",
            Reason::SlotLost => "slot_lost",
            Reason::SlotUnreserved => "slot_unreserved",
            Reason::SlotAhead => "slot_ahead",
            Reason::CaptureNotRunning => "capture_not_running",
            Reason::CaptureStuck => "capture_stuck",
            Reason::CaptureRetrying => "capture_retrying",
            Reason::DestinationFailing => "destination_failing",
            Reason::WalRetained => "wal_retained",
            Reason::RecentFailures => "recent_failures",
        }
    }
}

/// One reason for being unhealthy: its name and one line saying what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// The stable name.
    pub reason: Reason,
    /// What is wrong and what to do.
    pub message: String,
}

/// What [`judge_flow`] judges, read by [`observe`].
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The control database's clock when it was read.
    pub now: DateTime<Utc>,
    /// The slot and stored checkpoint.
    pub slot: SlotStatus,
    /// Capture's own report, if a capture process ever wrote one.
    pub capture: Option<CaptureReport>,
    /// Each destination with rows pending or finished within the window.
    pub destinations: Vec<DestinationFlow>,
    /// The control schema's name (for the SQL the messages give).
    pub schema: String,
}

/// The replication slot as the source database sees it, with pgcapi's stored position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotStatus {
    /// The slot name from the config.
    pub name: String,
    /// Whether the slot exists on the source database.
    pub exists: bool,
    /// Whether a process is streaming from it.
    pub active: Option<bool>,
    /// That process's pid.
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// `pg_current_wal_lsn() - restart_lsn`.
    pub wal_retained_bytes: Option<i64>,
    /// Bytes that can still be written before the slot is lost (`None`: no limit).
    pub safe_wal_size: Option<i64>,
    /// The position the server knows is confirmed.
    pub confirmed_flush_lsn: Option<String>,
    /// The position pgcapi stored in `checkpoints`.
    pub checkpoint_lsn: Option<String>,
    /// When pgcapi last moved it.
    pub checkpoint_at: Option<DateTime<Utc>>,
    /// Seconds since then.
    pub secs_since_checkpoint: Option<i64>,
}

/// Everything `pgcapi status` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// True when no reason below holds.
    pub healthy: bool,
    /// Why it is unhealthy, one sentence each with what to do.
    pub reasons: Vec<String>,
    /// The same reasons with their stable names.
    pub problems: Vec<Problem>,
    /// Worth a look, but not unhealthy.
    pub warnings: Vec<String>,
    /// The replication slot.
    pub slot: SlotStatus,
    /// What capture last reported (`null` when no capture process ever did).
    pub capture: Option<CaptureReport>,
    /// One line per destination (configured or present in the control table).
    pub destinations: Vec<DestinationHealth>,
    /// The latest failures, newest first.
    pub recent_failures: Vec<FailureLine>,
}

impl StatusReport {
    /// 0 when healthy, [`UNHEALTHY_EXIT`] otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.healthy {
            0
        } else {
            UNHEALTHY_EXIT
        }
    }
}

/// Status could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A database could not be reached.
    #[error("{0}")]
    Connect(String),
    /// The control schema or its views are missing.
    #[error("{0}")]
    NotInstalled(String),
    /// A statement failed.
    #[error("{what}: {}", crate::pg::client::describe(source))]
    Sql {
        /// What was being read.
        what: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The control schema could not be read.
    #[error(transparent)]
    Control(#[from] crate::outbox::OutboxError),
}

fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StatusError {
    let what = what.into();
    move |source| StatusError::Sql { what, source }
}

/// Reads the slot, the health of every destination and the latest failures, and judges them.
pub async fn status(config: &Config, options: &StatusOptions) -> Result<StatusReport, StatusError> {
    let connect = |url: &crate::config::Secret, what: &'static str| {
        let url = url.expose().to_string();
        async move {
            crate::ops::setup::connect(&url, what)
                .await
                .map_err(|e| StatusError::Connect(e.to_string()))
        }
    };
    let source = connect(&config.source.url, "source database").await?;
    let control_owned = match &config.source.control_url {
        Some(url) => Some(connect(url, "control database").await?),
        None => None,
    };
    let control = control_owned.as_ref().unwrap_or(&source);
    let schema = &config.source.schema;
    let outbox = Outbox::new(schema);
    if !outbox.is_installed(control).await? {
        return Err(StatusError::NotInstalled(format!(
            "the control schema {schema:?} (with its views) is not installed in the control database: \
             run `pgcapi setup --config FILE`"
        )));
    }

    let observation = observe(
        &source,
        control,
        schema,
        &config.source.slot,
        options.flow.failing_after,
    )
    .await?;
    let destinations = read_health(control, &outbox, config).await?;
    let recent_failures = outbox.failures(control, options.recent_failures).await?;
    let (problems, warnings) = judge(&observation, &destinations, options);
    Ok(StatusReport {
        healthy: problems.is_empty(),
        reasons: problems.iter().map(|p| p.message.clone()).collect(),
        problems,
        warnings,
        slot: observation.slot,
        capture: observation.capture,
        destinations,
        recent_failures,
    })
}

/// Reads what [`judge_flow`] judges: the slot (from `source`), the stored checkpoint, capture's report
/// and each destination's deliveries within `window` (from `control`, the control database).
pub async fn observe(
    source: &tokio_postgres::Client,
    control: &tokio_postgres::Client,
    schema: &str,
    slot: &str,
    window: Duration,
) -> Result<Observation, StatusError> {
    let outbox = Outbox::new(schema);
    let slot_status = read_slot(source, control, &outbox, slot).await?;
    let capture = crate::outbox::load_capture_report(control, schema, slot).await?;
    let now: DateTime<Utc> = control
        .query_one("select now()", &[])
        .await
        .map_err(sql("reading the control database's clock"))?
        .get(0);
    let destinations = outbox.flows(control, window).await?;
    Ok(Observation {
        now,
        slot: slot_status,
        capture,
        destinations,
        schema: schema.to_string(),
    })
}

/// Seconds from `since` to `now` (0 when `since` is later).
fn secs_between(since: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (now - since).num_seconds().max(0)
}

/// Whether conversions flow: every reason they do not, each with what to do. Shared by `pgcapi status`
/// and `/readyz` (and `pgcapi_unhealthy`), so both always say the same.
pub fn judge_flow(observation: &Observation, thresholds: &FlowThresholds) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |reason, message: String| problems.push(Problem { reason, message });
    let slot = &observation.slot;
    let name = &slot.name;
    let now = observation.now;
    if !slot.exists {
        push(
            Reason::SlotMissing,
            format!(
                "replication slot {name:?} does not exist on the source database, so nothing is \
                 captured: run `pgcapi setup`, then `pgcapi backfill` for what changed meanwhile"
            ),
        );
    }
    match slot.wal_status.as_deref() {
        Some("lost") => push(
            Reason::SlotLost,
            format!(
                "replication slot {name:?} is lost (wal_status = lost): the server removed WAL it \
                 still needed, so changes were missed; drop it \
                 (SELECT pg_drop_replication_slot('{name}');), rerun `pgcapi setup`, then \
                 `pgcapi backfill` for what changed meanwhile"
            ),
        ),
        Some("unreserved") => push(
            Reason::SlotUnreserved,
            format!(
                "replication slot {name:?} is about to be lost (wal_status = unreserved: it retains \
                 more than max_slot_wal_keep_size): make sure `pgcapi run` is running and confirming"
            ),
        ),
        _ => {}
    }
    let confirmed = slot
        .confirmed_flush_lsn
        .as_deref()
        .and_then(|l| l.parse::<Lsn>().ok());
    let stored = slot
        .checkpoint_lsn
        .as_deref()
        .and_then(|l| l.parse::<Lsn>().ok());
    if let (Some(confirmed), Some(stored)) = (confirmed, stored) {
        if confirmed > stored {
            push(
                Reason::SlotAhead,
                format!(
                    "replication slot {name:?} is at {confirmed}, ahead of the position pgcapi stored \
                     ({stored}): the changes in between were never captured (the slot was recreated \
                     or advanced outside pgcapi); run `pgcapi backfill` for the time since the \
                     stored position was written, then accept the slot's position: \
                     UPDATE {}.checkpoints SET lsn = '{confirmed}' WHERE slot = '{name}';",
                    quote_ident(&observation.schema)
                ),
            );
        }
    }
    let lost = slot.wal_status.as_deref() == Some("lost");
    if slot.exists && !lost {
        let report = observation.capture.as_ref();
        let silent = report.map(|r| secs_between(r.seen_at, now));
        let fresh = silent.is_some_and(|s| s <= thresholds.capture_silent_after.as_secs() as i64);
        // A capture that streams holds the slot: an inactive slot with "streaming" as the last
        // report means that process stopped or died (an outage or a stuck change is reported first).
        let streamed = report.is_some_and(|r| r.phase == CapturePhase::Streaming);
        if slot.active == Some(false) && (!fresh || streamed) {
            let last = match (report, silent) {
                (Some(r), Some(secs)) => format!(
                    "capture last reported {} ago ({}{})",
                    format_secs(secs),
                    r.phase.as_str(),
                    r.error
                        .as_deref()
                        .map(|e| format!(": {}", clip(e, 200)))
                        .unwrap_or_default()
                ),
                _ => "no capture ever reported".to_string(),
            };
            push(
                Reason::CaptureNotRunning,
                format!(
                    "no process reads replication slot {name:?} (inactive; {last}), so no change is \
                     captured: start `pgcapi run` (or see why it stopped in its log)"
                ),
            );
        } else if let Some(r) = report.filter(|_| fresh) {
            let since = r
                .error_since
                .map(|t| (t, secs_between(t, now)))
                .unwrap_or((now, 0));
            let error = clip(r.error.as_deref().unwrap_or("no reason recorded"), 300);
            match r.phase {
                CapturePhase::Stuck => push(
                    Reason::CaptureStuck,
                    format!(
                        "capture is stuck at LSN {} since {} UTC ({} ago): {error}; nothing after \
                         that change is captured until it is fixed as the message says (capture \
                         retries by itself; dispatch goes on)",
                        r.error_lsn.map_or("unknown".into(), |l| l.to_string()),
                        since.0.format("%Y-%m-%d %H:%M:%S"),
                        format_secs(since.1)
                    ),
                ),
                CapturePhase::Retrying if since.1 > thresholds.retrying_after.as_secs() as i64 => {
                    push(
                        Reason::CaptureRetrying,
                        format!(
                            "capture has been retrying for {} (since {} UTC): {error}; check that \
                             the source and control databases are reachable and accept pgcapi's \
                             connections",
                            format_secs(since.1),
                            since.0.format("%Y-%m-%d %H:%M:%S")
                        ),
                    )
                }
                _ => {}
            }
        }
    }
    let window = thresholds.failing_after.as_secs() as i64;
    for d in &observation.destinations {
        let waited = d.oldest_pending_secs.unwrap_or(0);
        if d.pending > 0 && d.sent_in_window == 0 && d.failed_in_window > 0 && waited >= window {
            push(
                Reason::DestinationFailing,
                format!(
                    "destination {} has delivered nothing for {}: {} row(s) wait (the oldest for \
                     {}) and every attempt since failed; last error: {}; check the platform's \
                     status and the destination's credentials and endpoint (`pgcapi check`); the \
                     rows are retried by themselves",
                    d.destination,
                    format_secs(window),
                    d.pending,
                    format_secs(waited),
                    clip(d.last_error.as_deref().unwrap_or("-"), 200)
                ),
            );
        }
    }
    problems
}

/// The slot from the source and the stored position from the control database.
async fn read_slot(
    source: &tokio_postgres::Client,
    control: &tokio_postgres::Client,
    outbox: &Outbox,
    name: &str,
) -> Result<SlotStatus, StatusError> {
    let row = source
        .query_opt(
            "select active, active_pid, wal_status, safe_wal_size, \
               pg_wal_lsn_diff(case when pg_is_in_recovery() then pg_last_wal_receive_lsn() \
                 else pg_current_wal_lsn() end, restart_lsn)::bigint, confirmed_flush_lsn::text \
             from pg_replication_slots where slot_name = $1",
            &[&name],
        )
        .await
        .map_err(sql("reading the replication slot"))?;
    let checkpoint = outbox.stored_checkpoint(control, name).await?;
    Ok(SlotStatus {
        name: name.to_string(),
        exists: row.is_some(),
        active: row.as_ref().map(|r| r.get(0)),
        active_pid: row.as_ref().and_then(|r| r.get(1)),
        wal_status: row.as_ref().and_then(|r| r.get(2)),
        safe_wal_size: row.as_ref().and_then(|r| r.get(3)),
        wal_retained_bytes: row.as_ref().and_then(|r| r.get(4)),
        confirmed_flush_lsn: row.as_ref().and_then(|r| r.get(5)),
        checkpoint_lsn: checkpoint.as_ref().map(|c| c.lsn.clone()),
        checkpoint_at: checkpoint.as_ref().map(|c| c.updated_at),
        secs_since_checkpoint: checkpoint.as_ref().map(|c| c.secs_since),
    })
}

/// The `health` view, plus configured destinations that have no row yet.
async fn read_health(
    control: &tokio_postgres::Client,
    outbox: &Outbox,
    config: &Config,
) -> Result<Vec<DestinationHealth>, StatusError> {
    let mut out = outbox.health_view(control).await?;
    let mut reasons = crate::outbox::load_unusable_24h(control, &config.source.schema).await?;
    for d in &mut out {
        if let Some(list) = reasons.remove(&d.destination) {
            d.platform_unusable_reasons = list
                .into_iter()
                .map(|(reason, events)| UnusableReason { reason, events })
                .collect();
        }
    }
    for (name, dest) in &config.destinations {
        if !out.iter().any(|d| &d.destination == name) {
            out.push(DestinationHealth::empty(name, dest.platform().as_str()));
        }
    }
    out.sort_by(|a, b| a.destination.cmp(&b.destination));
    Ok(out)
}

impl DestinationHealth {
    /// A destination with no row in the control table yet.
    fn empty(name: &str, platform: &str) -> DestinationHealth {
        DestinationHealth {
            destination: name.to_string(),
            platform: platform.to_string(),
            pending: 0,
            retrying: 0,
            oldest_pending_secs: None,
            failed: 0,
            sent_1h: 0,
            failed_1h: 0,
            skipped_1h: 0,
            cancelled_1h: 0,
            sent_24h: 0,
            failed_24h: 0,
            skipped_24h: 0,
            cancelled_24h: 0,
            last_sent_at: None,
            events_24h: 0,
            email_share: None,
            phone_share: None,
            name_share: None,
            address_share: None,
            click_id_share: None,
            ip_ua_share: None,
            external_id_share: None,
            browser_id_share: None,
            match_score: None,
            last_error: None,
            last_error_at: None,
            platform_unusable_24h: 0,
            platform_unusable_reasons: Vec::new(),
        }
    }
}

/// The reasons for being unhealthy (those of [`judge_flow`], then status's own thresholds) and the
/// warnings.
fn judge(
    observation: &Observation,
    destinations: &[DestinationHealth],
    options: &StatusOptions,
) -> (Vec<Problem>, Vec<String>) {
    let mut problems = judge_flow(observation, &options.flow);
    let mut warnings = Vec::new();
    let slot = &observation.slot;
    let name = &slot.name;
    if let Some(retained) = slot.wal_retained_bytes {
        if retained > 0 && retained as u64 > options.max_wal_retained {
            problems.push(Problem {
                reason: Reason::WalRetained,
                message: format!(
                    "replication slot {name:?} retains {} of WAL, over the limit of {} \
                     (--max-wal-retained){}",
                    format_bytes(retained),
                    format_bytes(i64::try_from(options.max_wal_retained).unwrap_or(i64::MAX)),
                    if slot.active == Some(false) {
                        ": no process is reading the slot; start `pgcapi run`"
                    } else {
                        ": pgcapi is behind; see its log"
                    }
                ),
            });
        }
    }
    if let Some(r) = &observation.capture {
        let silent = secs_between(r.seen_at, observation.now);
        if slot.active == Some(true) && silent > options.flow.capture_silent_after.as_secs() as i64
        {
            warnings.push(format!(
                "replication slot {name:?} is read, but no pgcapi capture has reported for {} \
                 (last: {}): is another program reading it?",
                format_secs(silent),
                r.phase.as_str()
            ));
        }
    }
    let failed_1h: i64 = destinations.iter().map(|d| d.failed_1h).sum();
    if failed_1h > 0 {
        let by_destination = destinations
            .iter()
            .filter(|d| d.failed_1h > 0)
            .map(|d| format!("{} {}", d.destination, d.failed_1h))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "{failed_1h} delivery(ies) failed in the last hour ({by_destination}): see the failures \
             below; once the cause is fixed, requeue them with `pgcapi retry`"
        );
        if options.allow_failures {
            warnings.push(text);
        } else {
            problems.push(Problem {
                reason: Reason::RecentFailures,
                message: format!("{text} (or pass --allow-failures)"),
            });
        }
    }
    for d in destinations.iter().filter(|d| d.platform_unusable_24h > 0) {
        warnings.push(unusable_warning(d));
    }
    let failed_older: i64 = destinations.iter().map(|d| d.failed - d.failed_1h).sum();
    if failed_older > 0 {
        warnings.push(format!(
            "{failed_older} older failed row(s) wait for `pgcapi retry` or `pgcapi purge --failed`"
        ));
    }
    (problems, warnings)
}

/// "google: Google accepted 12 events but could not use 5 of them in the last 24 h: EVENT_TOO_OLD 3,
/// INVALID_GCLID 2" (a warning, not a reason to fail: the data is at fault, not the connector).
fn unusable_warning(d: &DestinationHealth) -> String {
    let platform = if d.platform.starts_with("google") {
        "Google"
    } else {
        "the platform"
    };
    let reasons = d
        .platform_unusable_reasons
        .iter()
        .map(|r| {
            let reason = r
                .reason
                .strip_prefix("PROCESSING_ERROR_REASON_")
                .unwrap_or(&r.reason);
            format!("{reason} {}", r.events)
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}: {platform} accepted {} events but could not use {} of them in the last 24 h: {reasons}",
        d.destination, d.sent_24h, d.platform_unusable_24h
    )
}

/// `2025-01-31 14:05:06` (UTC), or `-`.
fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// `0.75` as `75%`, or `-`.
fn share(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{:.0}%", v * 100.0))
}

impl StatusReport {
    /// The readable form: verdict with reasons, then the slot, destinations and recent failures.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pgcapi status: {}",
            if self.healthy { "HEALTHY" } else { "UNHEALTHY" }
        );
        for reason in &self.reasons {
            let _ = writeln!(out, "  ! {reason}");
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "  warning: {warning}");
        }
        let slot = &self.slot;
        let yes_no = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        out.push_str("\nReplication slot (source database)\n");
        out.push_str(&table(
            &[
                "slot",
                "exists",
                "active",
                "pid",
                "wal_status",
                "wal retained",
                "safe_wal_size",
                "confirmed",
                "stored position",
                "moved",
            ],
            &[vec![
                slot.name.clone(),
                yes_no(Some(slot.exists)).into(),
                yes_no(slot.active).into(),
                slot.active_pid.map_or("-".into(), |p| p.to_string()),
                slot.wal_status.clone().unwrap_or_else(|| "-".into()),
                slot.wal_retained_bytes.map_or("-".into(), format_bytes),
                slot.safe_wal_size.map_or("unlimited".into(), format_bytes),
                slot.confirmed_flush_lsn
                    .clone()
                    .unwrap_or_else(|| "-".into()),
                slot.checkpoint_lsn.clone().unwrap_or_else(|| "-".into()),
                slot.secs_since_checkpoint
                    .map_or("-".into(), |s| format!("{} ago", format_secs(s))),
            ]],
        ));
        out.push_str("\nCapture (as it last reported)\n");
        match &self.capture {
            None => out.push_str("  no capture process has reported yet\n"),
            Some(c) => out.push_str(&table(
                &["state", "since", "at LSN", "last seen", "error"],
                &[vec![
                    c.phase.as_str().into(),
                    time(c.error_since),
                    c.error_lsn.map_or("-".into(), |l| l.to_string()),
                    time(Some(c.seen_at)),
                    clip(c.error.as_deref().unwrap_or("-"), 100),
                ]],
            )),
        }
        out.push_str("\nDestinations (outcomes counted by when they were reached)\n");
        let rows: Vec<Vec<String>> = self
            .destinations
            .iter()
            .map(|d| {
                vec![
                    d.destination.clone(),
                    d.platform.clone(),
                    d.pending.to_string(),
                    d.oldest_pending_secs.map_or("-".into(), format_secs),
                    d.retrying.to_string(),
                    d.failed.to_string(),
                    format!("{}/{}/{}", d.sent_1h, d.failed_1h, d.skipped_1h),
                    format!("{}/{}/{}", d.sent_24h, d.failed_24h, d.skipped_24h),
                    time(d.last_sent_at),
                    d.match_score.map_or("-".into(), |s| format!("{s:.1}")),
                    share(d.email_share),
                    share(d.phone_share),
                    share(d.click_id_share),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "destination",
                "platform",
                "pending",
                "oldest",
                "retrying",
                "failed",
                "1h sent/failed/skipped",
                "24h sent/failed/skipped",
                "last sent",
                "match score",
                "email",
                "phone",
                "click id",
            ],
            &rows,
        ));
        let errors: Vec<Vec<String>> = self
            .destinations
            .iter()
            .filter_map(|d| {
                d.last_error
                    .as_ref()
                    .map(|e| vec![d.destination.clone(), time(d.last_error_at), clip(e, 100)])
            })
            .collect();
        if !errors.is_empty() {
            out.push_str("\nLast error per destination\n");
            out.push_str(&table(&["destination", "at", "message"], &errors));
        }
        out.push_str("\nRecent failures (requeue with `pgcapi retry --id ID`)\n");
        if self.recent_failures.is_empty() {
            out.push_str("  none\n");
        } else {
            let rows: Vec<Vec<String>> = self
                .recent_failures
                .iter()
                .map(|f| {
                    vec![
                        f.id.to_string(),
                        time(Some(f.failed_at)),
                        f.destination.clone(),
                        f.rule.clone(),
                        f.kind.clone(),
                        f.event_id.clone(),
                        f.attempts.to_string(),
                        clip(f.last_error.as_deref().unwrap_or("-"), 100),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "id",
                    "failed at",
                    "destination",
                    "rule",
                    "kind",
                    "event_id",
                    "attempts",
                    "message",
                ],
                &rows,
            ));
        }
        out
    }
}

/// Parses `--max-wal-retained`.
fn size_arg(text: &str) -> Result<u64, String> {
    crate::units::parse_size(text)
}

/// Arguments of `pgcapi status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Print the report as JSON (same exit codes).
    #[arg(long)]
    pub json: bool,
    /// Unhealthy when the slot retains more WAL than this (1GiB, 512MB, bytes; units are powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = size_arg)]
    pub max_wal_retained: u64,
    /// Do not count deliveries that failed in the last hour as unhealthy (still listed).
    #[arg(long)]
    pub allow_failures: bool,
    /// How many recent failures to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub failures: usize,
    /// Unhealthy when a destination's rows waited this long while every attempt failed and nothing was
    /// sent (10m, 30s, 1h; default: `dispatch.failing_after_secs` of the config, 10 minutes).
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    pub failing_after: Option<Duration>,
}

/// `pgcapi status` from the command line: prints the report, exits 0 when healthy and 2 when not.
pub async fn run_status(args: StatusArgs) -> Result<ExitCode, String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let options = StatusOptions {
        max_wal_retained: args.max_wal_retained,
        allow_failures: args.allow_failures,
        recent_failures: args.failures,
        flow: FlowThresholds {
            failing_after: args
                .failing_after
                .unwrap_or(Duration::from_secs(config.dispatch.failing_after_secs)),
            ..FlowThresholds::default()
        },
    };
    let report = status(&config, &options)
        .await
        .map_err(|e| crate::pg::error_chain(&e))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::from(report.exit_code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> SlotStatus {
        SlotStatus {
            name: "pgcapi".into(),
            exists: true,
            active: Some(true),
            active_pid: Some(42),
            wal_status: Some("reserved".into()),
            wal_retained_bytes: Some(4096),
            safe_wal_size: None,
            confirmed_flush_lsn: Some("0/1".into()),
            checkpoint_lsn: Some("0/1".into()),
            checkpoint_at: None,
            secs_since_checkpoint: Some(3),
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-12-05T12:00:00Z".parse().unwrap()
    }

    fn observation(slot: SlotStatus) -> Observation {
        Observation {
            now: now(),
            slot,
            capture: None,
            destinations: Vec::new(),
            schema: "pgcapi".into(),
        }
    }

    fn report(phase: CapturePhase, seen_secs_ago: i64, since_secs_ago: i64) -> CaptureReport {
        CaptureReport {
            phase,
            error: (phase != CapturePhase::Streaming)
                .then(|| "column \"email\" was dropped".into()),
            error_lsn: (phase == CapturePhase::Stuck).then_some(Lsn(0x1_6B37_4D48)),
            error_since: Some(now() - chrono::TimeDelta::seconds(since_secs_ago)),
            seen_at: now() - chrono::TimeDelta::seconds(seen_secs_ago),
        }
    }

    fn reasons(problems: &[Problem]) -> Vec<Reason> {
        problems.iter().map(|p| p.reason).collect()
    }

    #[test]
    fn a_quiet_connector_is_healthy_and_each_problem_gives_a_reason() {
        let options = StatusOptions::default();
        let (problems, warnings) = judge(&observation(slot()), &[], &options);
        assert!(
            problems.is_empty() && warnings.is_empty(),
            "{problems:?} {warnings:?}"
        );

        let lost = SlotStatus {
            wal_status: Some("lost".into()),
            wal_retained_bytes: None,
            active: Some(false),
            ..slot()
        };
        let (problems, _) = judge(&observation(lost), &[], &options);
        assert_eq!(reasons(&problems), [Reason::SlotLost], "{problems:?}");
        assert!(problems[0].message.contains("is lost"));

        let behind = SlotStatus {
            wal_retained_bytes: Some(2 << 30),
            ..slot()
        };
        let (problems, _) = judge(&observation(behind), &[], &options);
        assert!(
            problems[0].message.contains("retains 2.0 GiB of WAL"),
            "{problems:?}"
        );

        let mut meta = DestinationHealth::empty("meta", "meta");
        meta.failed_1h = 2;
        meta.failed = 3;
        let (problems, warnings) =
            judge(&observation(slot()), std::slice::from_ref(&meta), &options);
        assert!(problems[0]
            .message
            .starts_with("2 delivery(ies) failed in the last hour (meta 2)"));
        assert!(
            warnings[0].starts_with("1 older failed row(s)"),
            "{warnings:?}"
        );
        let allow = StatusOptions {
            allow_failures: true,
            ..StatusOptions::default()
        };
        let (problems, warnings) = judge(&observation(slot()), &[meta], &allow);
        assert!(problems.is_empty());
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn events_google_could_not_use_are_a_warning_with_the_reasons_not_a_problem() {
        let mut google = DestinationHealth::empty("google", "google_data_manager");
        google.sent_24h = 12;
        google.platform_unusable_24h = 5;
        google.platform_unusable_reasons = vec![
            UnusableReason {
                reason: "PROCESSING_ERROR_REASON_EVENT_TOO_OLD".into(),
                events: 3,
            },
            UnusableReason {
                reason: "PROCESSING_ERROR_REASON_INVALID_GCLID".into(),
                events: 2,
            },
        ];
        let (problems, warnings) =
            judge(&observation(slot()), &[google], &StatusOptions::default());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            warnings,
            [
                "google: Google accepted 12 events but could not use 5 of them in the last 24 h: \
              EVENT_TOO_OLD 3, INVALID_GCLID 2"
            ]
        );
    }

    #[test]
    fn an_unread_slot_is_unhealthy_unless_a_capture_reported_within_a_minute() {
        let t = FlowThresholds::default();
        let inactive = SlotStatus {
            active: Some(false),
            active_pid: None,
            ..slot()
        };
        // No capture ever reported: nothing reads the slot.
        let problems = judge_flow(&observation(inactive.clone()), &t);
        assert_eq!(reasons(&problems), [Reason::CaptureNotRunning]);
        assert!(problems[0].message.contains("start `pgcapi run`"));
        // A capture that reported retrying 20 s ago is between two connections: fine.
        let mut o = observation(inactive.clone());
        o.capture = Some(report(CapturePhase::Retrying, 20, 20));
        assert!(judge_flow(&o, &t).is_empty());
        // One whose last word was "streaming" would hold the slot: that process is gone.
        o.capture = Some(report(CapturePhase::Streaming, 20, 0));
        assert_eq!(reasons(&judge_flow(&o, &t)), [Reason::CaptureNotRunning]);
        // Silent for 90 s: not running, and the last report is quoted.
        o.capture = Some(report(CapturePhase::Stuck, 90, 600));
        let problems = judge_flow(&o, &t);
        assert_eq!(reasons(&problems), [Reason::CaptureNotRunning]);
        assert!(
            problems[0].message.contains("1m30s ago (stuck"),
            "{problems:?}"
        );
        // A standby: the slot is read by another process.
        let mut o = observation(slot());
        o.capture = Some(report(CapturePhase::Streaming, 10, 0));
        assert!(judge_flow(&o, &t).is_empty());
    }

    #[test]
    fn stuck_at_once_retrying_after_a_minute() {
        let t = FlowThresholds::default();
        let mut o = observation(slot());
        o.capture = Some(report(CapturePhase::Stuck, 5, 3));
        let problems = judge_flow(&o, &t);
        assert_eq!(reasons(&problems), [Reason::CaptureStuck]);
        let text = &problems[0].message;
        assert!(
            text.contains("stuck at LSN 1/6B374D48 since 2026-12-05 11:59:57 UTC")
                && text.contains("column \"email\" was dropped"),
            "{text}"
        );
        o.capture = Some(report(CapturePhase::Retrying, 5, 30));
        assert!(judge_flow(&o, &t).is_empty());
        o.capture = Some(report(CapturePhase::Retrying, 5, 61));
        let problems = judge_flow(&o, &t);
        assert_eq!(reasons(&problems), [Reason::CaptureRetrying]);
        assert!(
            problems[0].message.contains("retrying for 1m01s"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_slot_ahead_of_the_stored_position_lost_changes() {
        let t = FlowThresholds::default();
        let ahead = SlotStatus {
            confirmed_flush_lsn: Some("0/3000100".into()),
            checkpoint_lsn: Some("0/20000A0".into()),
            ..slot()
        };
        let problems = judge_flow(&observation(ahead), &t);
        assert_eq!(reasons(&problems), [Reason::SlotAhead]);
        assert!(
            problems[0].message.contains("`pgcapi backfill`")
                && problems[0].message.contains(
                    "UPDATE \"pgcapi\".checkpoints SET lsn = '0/3000100' WHERE slot = 'pgcapi';"
                ),
            "{problems:?}"
        );
        let behind = SlotStatus {
            confirmed_flush_lsn: Some("0/20000A0".into()),
            checkpoint_lsn: Some("0/3000100".into()),
            ..slot()
        };
        assert!(judge_flow(&observation(behind), &t).is_empty());
        let missing = SlotStatus {
            exists: false,
            active: None,
            ..slot()
        };
        assert_eq!(
            reasons(&judge_flow(&observation(missing), &t)),
            [Reason::SlotMissing]
        );
    }

    #[test]
    fn a_destination_fails_only_when_rows_waited_the_whole_window_and_nothing_was_sent() {
        let t = FlowThresholds {
            failing_after: Duration::from_secs(600),
            ..FlowThresholds::default()
        };
        let failing = DestinationFlow {
            destination: "meta".into(),
            pending: 300,
            oldest_pending_secs: Some(700),
            sent_in_window: 0,
            failed_in_window: 300,
            last_error: Some("HTTP 503: unavailable".into()),
        };
        let mut o = observation(slot());
        o.destinations = vec![failing.clone()];
        let problems = judge_flow(&o, &t);
        assert_eq!(reasons(&problems), [Reason::DestinationFailing]);
        assert!(
            problems[0]
                .message
                .contains("destination meta has delivered nothing for 10m")
                && problems[0].message.contains("HTTP 503"),
            "{problems:?}"
        );
        for healthy in [
            DestinationFlow {
                sent_in_window: 1,
                ..failing.clone()
            },
            DestinationFlow {
                oldest_pending_secs: Some(300),
                ..failing.clone()
            },
            DestinationFlow {
                failed_in_window: 0,
                ..failing.clone()
            },
            DestinationFlow {
                pending: 0,
                oldest_pending_secs: None,
                ..failing.clone()
            },
        ] {
            o.destinations = vec![healthy.clone()];
            assert!(judge_flow(&o, &t).is_empty(), "{healthy:?}");
        }
    }
}

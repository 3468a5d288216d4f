//! `pgcapi status`: the replication slot, each destination's health and the latest failures, as readable
//! tables or JSON, with an exit code for scripts and monitoring.
//!
//! The slot is read from the source database (so this works when the control schema lives elsewhere);
//! destination health comes from the `health` view and failures from the `send_log` view of the control
//! schema (see `sql/views.sql`).
//!
//! Unhealthy (exit code 2), each with the reason printed:
//! - the slot does not exist, or its `wal_status` is `lost` (changes were missed) or `unreserved` (about
//!   to be lost);
//! - the slot retains more WAL than `--max-wal-retained` (default 1 GiB);
//! - a delivery failed in the last hour (unless `--allow-failures`).
//!
//! Exit code 1 means status itself could not run (config, connection, missing control schema).

use crate::config::Config;
use crate::outbox::quote_ident;
use crate::repair::clip;
use crate::units::{format_bytes, format_secs};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

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
}

impl Default for StatusOptions {
    fn default() -> Self {
        StatusOptions {
            max_wal_retained: 1 << 30,
            allow_failures: false,
            recent_failures: 10,
        }
    }
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

/// One line of the `health` view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationHealth {
    /// The destination name.
    pub destination: String,
    /// Its platform.
    pub platform: String,
    /// Rows waiting to be sent.
    pub pending: i64,
    /// Pending rows that were tried at least once.
    pub retrying: i64,
    /// Age of the oldest pending row.
    pub oldest_pending_secs: Option<i64>,
    /// Failed rows waiting for retry or purge.
    pub failed: i64,
    /// Rows that reached `sent` in the last hour.
    pub sent_1h: i64,
    /// ... `failed` in the last hour.
    pub failed_1h: i64,
    /// ... `skipped` in the last hour.
    pub skipped_1h: i64,
    /// ... `cancelled` in the last hour.
    pub cancelled_1h: i64,
    /// Rows that reached `sent` in the last 24 hours.
    pub sent_24h: i64,
    /// ... `failed` in the last 24 hours.
    pub failed_24h: i64,
    /// ... `skipped` in the last 24 hours.
    pub skipped_24h: i64,
    /// ... `cancelled` in the last 24 hours.
    pub cancelled_24h: i64,
    /// The latest successful send.
    pub last_sent_at: Option<DateTime<Utc>>,
    /// Conversions with consent recorded in the last 24 hours (the base of the shares and score).
    pub events_24h: i64,
    /// Share of them with an email (0..1).
    pub email_share: Option<f64>,
    /// ... with a phone.
    pub phone_share: Option<f64>,
    /// ... with first and last name.
    pub name_share: Option<f64>,
    /// ... with city, state or zip.
    pub address_share: Option<f64>,
    /// ... with a click id.
    pub click_id_share: Option<f64>,
    /// ... with client IP and user agent.
    pub ip_ua_share: Option<f64>,
    /// ... with an external id or lead id.
    pub external_id_share: Option<f64>,
    /// ... with a browser id (fbp, ttp).
    pub browser_id_share: Option<f64>,
    /// Estimated match quality, 0..10 (formula in `sql/views.sql` and the README).
    pub match_score: Option<f64>,
    /// The newest platform error (failed or retrying rows).
    pub last_error: Option<String>,
    /// When it was recorded.
    pub last_error_at: Option<DateTime<Utc>>,
}

/// One recent failure from the send log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureLine {
    /// `deliveries.id` (for `pgcapi retry --id`).
    pub id: i64,
    /// When it failed.
    pub failed_at: DateTime<Utc>,
    /// The destination.
    pub destination: String,
    /// The rule.
    pub rule: String,
    /// conversion, retraction or restatement.
    pub kind: String,
    /// The event id.
    pub event_id: String,
    /// Attempts made.
    pub attempts: i32,
    /// The platform's message.
    pub last_error: Option<String>,
}

/// Everything `pgcapi status` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// True when no reason below holds.
    pub healthy: bool,
    /// Why it is unhealthy, one sentence each with what to do.
    pub reasons: Vec<String>,
    /// Worth a look, but not unhealthy.
    pub warnings: Vec<String>,
    /// The replication slot.
    pub slot: SlotStatus,
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
    #[error("{what}: {}", crate::db::describe(source))]
    Sql {
        /// What was being read.
        what: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
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
            crate::setup::connect(&url, what)
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
    let s = quote_ident(schema);

    let installed: bool = control
        .query_one(
            "select to_regclass($1) is not null",
            &[&format!("{s}.health")],
        )
        .await
        .map_err(sql("looking for the control schema"))?
        .get(0);
    if !installed {
        return Err(StatusError::NotInstalled(format!(
            "the control schema {schema:?} (with its views) is not installed in the control database: \
             run `pgcapi setup --config FILE`"
        )));
    }

    let slot = read_slot(&source, control, &s, &config.source.slot).await?;
    let destinations = read_health(control, &s, config).await?;
    let recent_failures = read_failures(control, &s, options.recent_failures).await?;
    let (reasons, warnings) = judge(&slot, &destinations, options);
    Ok(StatusReport {
        healthy: reasons.is_empty(),
        reasons,
        warnings,
        slot,
        destinations,
        recent_failures,
    })
}

/// The slot from the source and the stored position from the control database.
async fn read_slot(
    source: &tokio_postgres::Client,
    control: &tokio_postgres::Client,
    s: &str,
    name: &str,
) -> Result<SlotStatus, StatusError> {
    let row = source
        .query_opt(
            "select active, active_pid, wal_status, safe_wal_size, \
               pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, confirmed_flush_lsn::text \
             from pg_replication_slots where slot_name = $1",
            &[&name],
        )
        .await
        .map_err(sql("reading the replication slot"))?;
    let checkpoint = control
        .query_opt(
            &format!(
                "select lsn::text, updated_at, extract(epoch from now() - updated_at)::bigint \
                 from {s}.checkpoints where slot = $1"
            ),
            &[&name],
        )
        .await
        .map_err(sql("reading the stored position"))?;
    Ok(SlotStatus {
        name: name.to_string(),
        exists: row.is_some(),
        active: row.as_ref().map(|r| r.get(0)),
        active_pid: row.as_ref().and_then(|r| r.get(1)),
        wal_status: row.as_ref().and_then(|r| r.get(2)),
        safe_wal_size: row.as_ref().and_then(|r| r.get(3)),
        wal_retained_bytes: row.as_ref().and_then(|r| r.get(4)),
        confirmed_flush_lsn: row.as_ref().and_then(|r| r.get(5)),
        checkpoint_lsn: checkpoint.as_ref().map(|r| r.get(0)),
        checkpoint_at: checkpoint.as_ref().map(|r| r.get(1)),
        secs_since_checkpoint: checkpoint.as_ref().map(|r| r.get(2)),
    })
}

/// The `health` view, plus configured destinations that have no row yet.
async fn read_health(
    control: &tokio_postgres::Client,
    s: &str,
    config: &Config,
) -> Result<Vec<DestinationHealth>, StatusError> {
    let rows = control
        .query(
            &format!(
                "select destination, platform, pending, retrying, oldest_pending_secs, failed, \
                   sent_1h, failed_1h, skipped_1h, cancelled_1h, sent_24h, failed_24h, skipped_24h, \
                   cancelled_24h, last_sent_at, events_24h, email_share::float8, phone_share::float8, \
                   name_share::float8, address_share::float8, click_id_share::float8, \
                   ip_ua_share::float8, external_id_share::float8, browser_id_share::float8, \
                   match_score::float8, last_error, last_error_at \
                 from {s}.health order by destination"
            ),
            &[],
        )
        .await
        .map_err(sql("reading the health view"))?;
    let mut out: Vec<DestinationHealth> = rows
        .iter()
        .map(|r| DestinationHealth {
            destination: r.get(0),
            platform: r.get(1),
            pending: r.get(2),
            retrying: r.get(3),
            oldest_pending_secs: r.get(4),
            failed: r.get(5),
            sent_1h: r.get(6),
            failed_1h: r.get(7),
            skipped_1h: r.get(8),
            cancelled_1h: r.get(9),
            sent_24h: r.get(10),
            failed_24h: r.get(11),
            skipped_24h: r.get(12),
            cancelled_24h: r.get(13),
            last_sent_at: r.get(14),
            events_24h: r.get(15),
            email_share: r.get(16),
            phone_share: r.get(17),
            name_share: r.get(18),
            address_share: r.get(19),
            click_id_share: r.get(20),
            ip_ua_share: r.get(21),
            external_id_share: r.get(22),
            browser_id_share: r.get(23),
            match_score: r.get(24),
            last_error: r.get(25),
            last_error_at: r.get(26),
        })
        .collect();
    for (name, dest) in &config.destinations {
        if !out.iter().any(|d| &d.destination == name) {
            out.push(DestinationHealth::empty(name, dest.platform.as_str()));
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
        }
    }
}

/// The newest failed rows of the send log.
async fn read_failures(
    control: &tokio_postgres::Client,
    s: &str,
    limit: usize,
) -> Result<Vec<FailureLine>, StatusError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = control
        .query(
            &format!(
                "select id, updated_at, destination, rule, kind, event_id, attempts, last_error \
                 from {s}.send_log where state = 'failed' order by updated_at desc, id desc limit $1"
            ),
            &[&limit],
        )
        .await
        .map_err(sql("reading recent failures"))?;
    Ok(rows
        .iter()
        .map(|r| FailureLine {
            id: r.get(0),
            failed_at: r.get(1),
            destination: r.get(2),
            rule: r.get(3),
            kind: r.get(4),
            event_id: r.get(5),
            attempts: r.get(6),
            last_error: r.get(7),
        })
        .collect())
}

/// The reasons for being unhealthy and the warnings.
fn judge(
    slot: &SlotStatus,
    destinations: &[DestinationHealth],
    options: &StatusOptions,
) -> (Vec<String>, Vec<String>) {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    let name = &slot.name;
    if !slot.exists {
        reasons.push(format!(
            "replication slot {name:?} does not exist on the source database, so nothing is captured: \
             run `pgcapi setup`, then backfill what changed meanwhile"
        ));
    }
    match slot.wal_status.as_deref() {
        Some("lost") => reasons.push(format!(
            "replication slot {name:?} is lost (wal_status = lost): the server removed WAL it still \
             needed, so changes were missed; drop it (SELECT pg_drop_replication_slot('{name}');), \
             rerun `pgcapi setup` and backfill"
        )),
        Some("unreserved") => reasons.push(format!(
            "replication slot {name:?} is about to be lost (wal_status = unreserved: it retains more \
             than max_slot_wal_keep_size): make sure `pgcapi run` is running and confirming"
        )),
        _ => {}
    }
    if let Some(retained) = slot.wal_retained_bytes {
        if retained > 0 && retained as u64 > options.max_wal_retained {
            reasons.push(format!(
                "replication slot {name:?} retains {} of WAL, over the limit of {} \
                 (--max-wal-retained){}",
                format_bytes(retained),
                format_bytes(i64::try_from(options.max_wal_retained).unwrap_or(i64::MAX)),
                if slot.active == Some(false) {
                    ": no process is reading the slot; start `pgcapi run`"
                } else {
                    ": pgcapi is behind; see its log"
                }
            ));
        }
    }
    if slot.exists && slot.active == Some(false) && slot.wal_status.as_deref() != Some("lost") {
        warnings.push(format!(
            "replication slot {name:?} has no active reader: is `pgcapi run` running?"
        ));
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
            reasons.push(format!("{text} (or pass --allow-failures)"));
        }
    }
    let failed_older: i64 = destinations.iter().map(|d| d.failed - d.failed_1h).sum();
    if failed_older > 0 {
        warnings.push(format!(
            "{failed_older} older failed row(s) wait for `pgcapi retry` or `pgcapi purge --failed`"
        ));
    }
    (reasons, warnings)
}

/// A plain-text table: a header line and one line per row, columns padded to their widest cell and two
/// spaces apart, the last column left unpadded. Indented by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::from("  ");
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i != last {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
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
}

/// `pgcapi status` from the command line: prints the report, exits 0 when healthy and 2 when not.
pub async fn run_status(args: StatusArgs) -> Result<ExitCode, String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let options = StatusOptions {
        max_wal_retained: args.max_wal_retained,
        allow_failures: args.allow_failures,
        recent_failures: args.failures,
    };
    let report = status(&config, &options)
        .await
        .map_err(|e| crate::error_chain(&e))?;
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

    #[test]
    fn a_quiet_connector_is_healthy_and_each_problem_gives_a_reason() {
        let options = StatusOptions::default();
        let (reasons, warnings) = judge(&slot(), &[], &options);
        assert!(
            reasons.is_empty() && warnings.is_empty(),
            "{reasons:?} {warnings:?}"
        );

        let lost = SlotStatus {
            wal_status: Some("lost".into()),
            wal_retained_bytes: None,
            ..slot()
        };
        let (reasons, _) = judge(&lost, &[], &options);
        assert!(reasons[0].contains("is lost"), "{reasons:?}");

        let behind = SlotStatus {
            active: Some(false),
            wal_retained_bytes: Some(2 << 30),
            ..slot()
        };
        let (reasons, warnings) = judge(&behind, &[], &options);
        assert!(reasons[0].contains("retains 2.0 GiB of WAL"), "{reasons:?}");
        assert!(warnings[0].contains("no active reader"), "{warnings:?}");

        let mut meta = DestinationHealth::empty("meta", "meta");
        meta.failed_1h = 2;
        meta.failed = 3;
        let (reasons, warnings) = judge(&slot(), std::slice::from_ref(&meta), &options);
        assert!(reasons[0].starts_with("2 delivery(ies) failed in the last hour (meta 2)"));
        assert!(
            warnings[0].starts_with("1 older failed row(s)"),
            "{warnings:?}"
        );
        let allow = StatusOptions {
            allow_failures: true,
            ..StatusOptions::default()
        };
        let (reasons, warnings) = judge(&slot(), &[meta], &allow);
        assert!(reasons.is_empty());
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn tables_pad_every_column_but_the_last() {
        let text = table(
            &["a", "bb", "c"],
            &[vec!["xxx".into(), "y".into(), "zzzz".into()]],
        );
        assert_eq!(text, "  a    bb  c\n  xxx  y   zzzz\n");
    }
}

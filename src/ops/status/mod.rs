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
use crate::outbox::CaptureReport;
pub use crate::outbox::{DestinationFlow, DestinationHealth, FailureLine, UnusableReason};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod read;
mod render;
mod verdict;

pub use read::{observe, status};
use verdict::judge;
pub use verdict::judge_flow;

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
        crate::ops::print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::from(report.exit_code()))
}

#[cfg(test)]
mod tests;

//! `pgcapi retry` and `pgcapi replay`: put rows of the control table back in the dispatch queue.
//!
//! Both set the chosen rows to `pending`, due now, in one transaction that also sends `NOTIFY` on the
//! channel dispatchers listen on ([`crate::outbox::notify_channel`]), so a running `pgcapi run` picks them
//! up at once. What is kept: `attempts` (the row's whole history of sends; it only lengthens backoff),
//! `last_error` (the platform's last message, until the next outcome replaces it), `platform_ref` and
//! `sent_at` (replaced when the row is sent again).
//!
//! - **retry** takes `failed` rows: the platform rejected them for good, or they ran out of retries.
//! - **replay** takes rows that reached `skipped`, `failed` (and with `--state sent`, `sent`) since a time,
//!   for a destination whose setting was wrong (wrong pixel, account or conversion action). Meta and
//!   TikTok deduplicate an `event_id` for 48 hours and Google Ads an order id forever: a replayed `sent`
//!   row is dropped by the platform it already reached, unless the destination now points elsewhere; and
//!   to Meta or TikTok more than 48 hours later it would count twice.
//!
//! Some rows are never requeued, whatever the filters (they are reported as held back): `cancelled` and
//! `pending` rows, conversions that were retracted (a refund was recorded for them), and rows recorded
//! without consent or as invalid rows (their payload says no consent).

use crate::config::Config;
pub use crate::outbox::{Filters, RowLine};
use crate::outbox::{Outbox, OutboxError};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// A state `pgcapi replay` may take rows from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayState {
    /// Rejected rows.
    Failed,
    /// Rows pgcapi decided not to send (with the reason in `last_error`).
    Skipped,
    /// Rows the platform accepted (deduplicated by the platform if it already has them).
    Sent,
}

impl ReplayState {
    /// The stored state name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayState::Failed => "failed",
            ReplayState::Skipped => "skipped",
            ReplayState::Sent => "sent",
        }
    }
}

/// What `retry` or `replay` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepairReport {
    /// `retry` or `replay`.
    pub command: &'static str,
    /// True when nothing was changed.
    pub dry_run: bool,
    /// The rows set back to pending (or that would be, in a dry run), by id.
    pub requeued: Vec<RowLine>,
    /// Rows that matched the filters but must not be sent again.
    pub held_back: Vec<RowLine>,
}

/// A repair command failed.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The arguments make no sense.
    #[error("{0}")]
    Usage(String),
    /// A statement failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// `pgcapi retry`: requeues `failed` rows matching `filters`.
pub async fn retry(
    client: &mut tokio_postgres::Client,
    schema: &str,
    filters: &Filters,
    dry_run: bool,
) -> Result<RepairReport, RepairError> {
    requeue(client, schema, "retry", &["failed"], filters, dry_run).await
}

/// `pgcapi replay`: requeues rows in `states` (never `cancelled` or `pending`) matching `filters`, which
/// must include `since`.
pub async fn replay(
    client: &mut tokio_postgres::Client,
    schema: &str,
    states: &[ReplayState],
    filters: &Filters,
    dry_run: bool,
) -> Result<RepairReport, RepairError> {
    if filters.since.is_none() {
        return Err(RepairError::Usage(
            "replay needs --since (e.g. --since 2h, or the time the destination setting was fixed)"
                .into(),
        ));
    }
    if states.is_empty() {
        return Err(RepairError::Usage(
            "replay needs at least one --state (failed, skipped, sent)".into(),
        ));
    }
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    requeue(client, schema, "replay", &states, filters, dry_run).await
}

/// Requeues the sendable rows in `states` matching `filters` (see [`Outbox::requeue`]).
async fn requeue(
    client: &mut tokio_postgres::Client,
    schema: &str,
    command: &'static str,
    states: &[&str],
    filters: &Filters,
    dry_run: bool,
) -> Result<RepairReport, RepairError> {
    let rows = Outbox::new(schema)
        .requeue(client, states, filters, dry_run)
        .await?;
    Ok(RepairReport {
        command,
        dry_run,
        requeued: rows.requeued,
        held_back: rows.held_back,
    })
}

impl RepairReport {
    /// A readable account: how many rows, which ones, and which were held back and why.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let n = self.requeued.len();
        let _ = if self.dry_run {
            writeln!(
                out,
                "{}: would requeue {n} row(s) (dry run: nothing changed)",
                self.command
            )
        } else if n == 0 {
            writeln!(out, "{}: no row to requeue", self.command)
        } else {
            writeln!(
                out,
                "{}: requeued {n} row(s); a running `pgcapi run` sends them now",
                self.command
            )
        };
        if n > 0 {
            out.push_str(&row_table(&self.requeued, false));
        }
        if !self.held_back.is_empty() {
            let _ = writeln!(
                out,
                "held back {} row(s) that must not be sent again:",
                self.held_back.len()
            );
            out.push_str(&row_table(&self.held_back, true));
        }
        out
    }
}

/// Most rows listed by the readable output (all of them in `--json`).
const LISTED_ROWS: usize = 50;

/// A table of row lines, the last column being the error or the hold-back reason.
fn row_table(lines: &[RowLine], reasons: bool) -> String {
    let header = [
        "id",
        "destination",
        "rule",
        "kind",
        "event_id",
        "from state",
        "attempts",
        if reasons {
            "held back because"
        } else {
            "last_error"
        },
    ];
    let rows: Vec<Vec<String>> = lines
        .iter()
        .take(LISTED_ROWS)
        .map(|l| {
            vec![
                l.id.to_string(),
                l.destination.clone(),
                l.rule.clone(),
                l.kind.clone(),
                l.event_id.clone(),
                l.state.clone(),
                l.attempts.to_string(),
                if reasons {
                    l.held_back_because.clone().unwrap_or_default()
                } else {
                    crate::report::clip(l.last_error.as_deref().unwrap_or("-"), 80)
                },
            ]
        })
        .collect();
    let mut out = crate::report::table(&header, &rows);
    if lines.len() > LISTED_ROWS {
        let _ = writeln!(
            out,
            "  ... and {} more (use --json for all)",
            lines.len() - LISTED_ROWS
        );
    }
    out
}

/// Arguments of `pgcapi retry`.
#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
    /// The config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Which failed rows.
    #[command(flatten)]
    pub filters: Filters,
    /// Show what would be requeued without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `pgcapi replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Which rows (--since is required).
    #[command(flatten)]
    pub filters: Filters,
    /// The states to take rows from, comma-separated. `sent` rows are deduplicated by a platform that
    /// already has them (Meta and TikTok for 48 hours, Google Ads forever): replay them only when the
    /// destination pointed at the wrong place.
    #[arg(
        long = "state",
        value_enum,
        value_delimiter = ',',
        default_value = "skipped,failed"
    )]
    pub states: Vec<ReplayState>,
    /// Show what would be requeued without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Opens the control database of `config`.
pub(crate) async fn connect_control(config: &Config) -> Result<tokio_postgres::Client, String> {
    crate::ops::setup::connect(config.source.control_url().expose(), "control database")
        .await
        .map_err(|e| e.to_string())
}

/// Prints `report` as asked.
fn print(report: &RepairReport, json: bool) -> Result<(), String> {
    if json {
        crate::ops::print_json(report)?;
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// `pgcapi retry` from the command line.
pub async fn run_retry(args: RetryArgs) -> Result<ExitCode, String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let mut client = connect_control(&config).await?;
    let report = retry(
        &mut client,
        &config.source.schema,
        &args.filters,
        args.dry_run,
    )
    .await
    .map_err(|e| crate::pg::error_chain(&e))?;
    print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `pgcapi replay` from the command line.
pub async fn run_replay(args: ReplayArgs) -> Result<ExitCode, String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let mut client = connect_control(&config).await?;
    let report = replay(
        &mut client,
        &config.source.schema,
        &args.states,
        &args.filters,
        args.dry_run,
    )
    .await
    .map_err(|e| crate::pg::error_chain(&e))?;
    print(&report, args.json)?;
    if args.states.contains(&ReplayState::Sent) && !args.json && !report.requeued.is_empty() {
        println!(
            "note: platforms deduplicate on the event id: Meta and TikTok drop a replayed event they \
             received in the last 48 hours (and count it again after that), Google Ads drops an order \
             id it already has."
        );
    }
    Ok(ExitCode::SUCCESS)
}

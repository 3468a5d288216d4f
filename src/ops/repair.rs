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
use crate::outbox::{notify_channel, quote_ident};
use crate::units::TimeRef;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Which rows a repair command works on; every filter given must hold.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filters {
    /// Only the row with this id (repeatable).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<i64>,
    /// Only rows of this destination (its name in the config).
    #[arg(long)]
    pub destination: Option<String>,
    /// Only rows of this rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// Only rows that reached their current state at or after this time: an age (`2h`, `7d`) or a
    /// timestamp (`2025-01-31`, `2025-01-31 14:00`, RFC 3339; UTC unless an offset is given).
    #[arg(long, value_name = "AGE|TIME")]
    pub since: Option<TimeRef>,
    /// Only rows that reached their current state before this time (same forms as --since).
    #[arg(long, value_name = "AGE|TIME")]
    pub before: Option<TimeRef>,
}

impl Filters {
    /// The SQL condition on `d` for these filters, with parameters numbered from `$first` (seven of them,
    /// see [`Filters::params`]).
    pub(crate) fn condition(first: usize) -> String {
        let p = |i: usize| format!("${}", first + i);
        format!(
            "(cardinality({ids}::bigint[]) = 0 or d.id = any({ids}::bigint[])) \
             and ({dest}::text is null or d.destination = {dest}::text) \
             and ({rule}::text is null or d.rule = {rule}::text) \
             and d.updated_at >= coalesce({since_at}::timestamptz, \
                   now() - {since_secs}::bigint * interval '1 second', '-infinity') \
             and d.updated_at < coalesce({before_at}::timestamptz, \
                   now() - {before_secs}::bigint * interval '1 second', 'infinity')",
            ids = p(0),
            dest = p(1),
            rule = p(2),
            since_at = p(3),
            since_secs = p(4),
            before_at = p(5),
            before_secs = p(6),
        )
    }

    /// The seven parameter values of [`Filters::condition`], in order.
    pub(crate) fn params(&self) -> FilterParams {
        let (since_at, since_secs) = self.since.map(|t| t.sql_params()).unwrap_or_default();
        let (before_at, before_secs) = self.before.map(|t| t.sql_params()).unwrap_or_default();
        FilterParams {
            ids: self.ids.clone(),
            destination: self.destination.clone(),
            rule: self.rule.clone(),
            since_at,
            since_secs,
            before_at,
            before_secs,
        }
    }

    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.destination.is_none()
            && self.rule.is_none()
            && self.since.is_none()
            && self.before.is_none()
    }
}

/// Owned SQL parameters of a [`Filters`] condition.
pub(crate) struct FilterParams {
    ids: Vec<i64>,
    destination: Option<String>,
    rule: Option<String>,
    since_at: Option<DateTime<Utc>>,
    since_secs: Option<i64>,
    before_at: Option<DateTime<Utc>>,
    before_secs: Option<i64>,
}

impl FilterParams {
    /// The parameters as tokio-postgres wants them.
    pub(crate) fn as_refs(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        vec![
            &self.ids,
            &self.destination,
            &self.rule,
            &self.since_at,
            &self.since_secs,
            &self.before_at,
            &self.before_secs,
        ]
    }
}

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

/// One row a repair command touched (or would touch, or held back).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowLine {
    /// `deliveries.id`.
    pub id: i64,
    /// The destination name.
    pub destination: String,
    /// The rule.
    pub rule: String,
    /// conversion, retraction or restatement.
    pub kind: String,
    /// The event id the platform deduplicates on.
    pub event_id: String,
    /// The state before the command.
    pub state: String,
    /// Sends attempted so far.
    pub attempts: i32,
    /// The platform's last message or the skip reason.
    pub last_error: Option<String>,
    /// When the row reached its state.
    pub updated_at: DateTime<Utc>,
    /// Why the row is held back (only in [`RepairReport::held_back`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_back_because: Option<String>,
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
    #[error("{what}: {}", crate::pg::client::describe(source))]
    Sql {
        /// What was being done.
        what: &'static str,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
}

fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RepairError {
    move |source| RepairError::Sql { what, source }
}

/// Why a matched row must not be requeued (SQL expression on `d`, null when it may be).
pub(crate) fn held_back_reason(schema: &str) -> String {
    format!(
        "case \
           when d.payload::json ->> 'consent' is distinct from 'true' \
             then 'recorded without consent or as an invalid row: never sendable' \
           when d.kind = 'conversion' and exists (select 1 from {s}.deliveries r \
               where r.kind = 'retraction' and r.destination = d.destination \
                 and r.adjusts_rule = d.rule and r.event_id = d.event_id) \
             then 'its conversion was retracted (refund recorded)' \
         end",
        s = quote_ident(schema)
    )
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

/// Selects the rows in `states` matching `filters`, and unless `dry_run`, sets the sendable ones to
/// pending and notifies dispatchers, in one transaction.
async fn requeue(
    client: &mut tokio_postgres::Client,
    schema: &str,
    command: &'static str,
    states: &[&str],
    filters: &Filters,
    dry_run: bool,
) -> Result<RepairReport, RepairError> {
    let s = quote_ident(schema);
    let tx = client
        .transaction()
        .await
        .map_err(sql("beginning a transaction"))?;
    let select = format!(
        "select d.id, d.destination, d.rule, d.kind, d.event_id, d.state, d.attempts, d.last_error, \
           d.updated_at, {held} \
         from {s}.deliveries d \
         where d.state = any($1::text[]) and {condition} \
         order by d.id {lock}",
        held = held_back_reason(schema),
        condition = Filters::condition(2),
        lock = if dry_run { "" } else { "for update of d" },
    );
    let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    let params = filters.params();
    let mut values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&states];
    values.extend(params.as_refs());
    let rows = tx
        .query(&select, &values)
        .await
        .map_err(sql("selecting the rows to requeue"))?;
    let mut report = RepairReport {
        command,
        dry_run,
        requeued: Vec::new(),
        held_back: Vec::new(),
    };
    for r in &rows {
        let line = RowLine {
            id: r.get(0),
            destination: r.get(1),
            rule: r.get(2),
            kind: r.get(3),
            event_id: r.get(4),
            state: r.get(5),
            attempts: r.get(6),
            last_error: r.get(7),
            updated_at: r.get(8),
            held_back_because: r.get(9),
        };
        if line.held_back_because.is_some() {
            report.held_back.push(line);
        } else {
            report.requeued.push(line);
        }
    }
    if dry_run || report.requeued.is_empty() {
        tx.rollback().await.map_err(sql("ending the transaction"))?;
        return Ok(report);
    }
    let ids: Vec<i64> = report.requeued.iter().map(|l| l.id).collect();
    let update = format!(
        "update {s}.deliveries set state = 'pending', next_attempt_at = now(), queued_at = now(), \
           lease_owner = null, lease_until = null, updated_at = now() \
         where id = any($1::bigint[])"
    );
    tx.execute(&update, &[&ids])
        .await
        .map_err(sql("requeueing rows"))?;
    tx.execute("select pg_notify($1, '')", &[&notify_channel(schema)])
        .await
        .map_err(sql("notifying dispatchers"))?;
    tx.commit().await.map_err(sql("committing"))?;
    Ok(report)
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
        let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        println!("{text}");
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

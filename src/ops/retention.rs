//! Retention: deletes finished rows of the control table once they are older than `[retention] keep`.
//!
//! `sent`, `skipped` and `cancelled` rows whose state is older than `keep` (default 30 days; `off`
//! disables) are deleted by `pgcapi run` once at start and then hourly, and on demand by `pgcapi purge`.
//! `failed` rows are never deleted by age: they wait for `pgcapi retry` or an explicit
//! `pgcapi purge --failed`. Two rules keep deletion from changing what platforms receive:
//!
//! - every deleted row leaves its key `(rule, destination, event_id)` in `pgcapi.retired`, and capture
//!   records no delivery with a retired key, so a later update of an old source row (an order still
//!   `paid`) never sends its conversion a second time;
//! - a `sent` conversion to a platform that accepts retractions (Google Ads) is kept at least
//!   [`RETRACTABLE_KEEP`] (Google accepts adjustments up to 54 days after the conversion), so a late
//!   refund still finds the conversion it retracts.
//!
//! Rows are deleted in batches of `batch_rows` (one statement each, `for update skip locked` so that
//! nothing waits on a row another process holds), with `batch_pause_ms` between batches.

use crate::config::Config;
use crate::ops::repair::Filters;
use crate::outbox::quote_ident;
use crate::platform::Platform;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::info;

/// The least age of a `sent` conversion to a platform that can retract it before it is deleted.
pub const RETRACTABLE_KEEP: Duration = Duration::from_secs(55 * 86_400);

/// How often `pgcapi run` purges.
pub const PERIOD: Duration = Duration::from_secs(3_600);

/// How rows are deleted: batch size and pause.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most rows per delete statement.
    pub rows: usize,
    /// Pause between statements.
    pub pause: Duration,
}

impl Batching {
    /// The batching of `[retention]`.
    pub fn of(config: &Config) -> Batching {
        Batching {
            rows: config.retention.batch_rows.max(1),
            pause: Duration::from_millis(config.retention.batch_pause_ms),
        }
    }
}

/// Which rows a purge deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `sent`, `skipped` and `cancelled` rows whose state is older than this.
    Finished {
        /// The retention age.
        keep: Duration,
    },
    /// `failed` rows (only ever on explicit request).
    Failed,
}

/// What a purge did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// `finished` (sent, skipped, cancelled) or `failed`.
    pub target: &'static str,
    /// True when nothing was deleted on purpose.
    pub dry_run: bool,
    /// Rows deleted (or that would be, in a dry run).
    pub deleted: u64,
    /// Delete statements run.
    pub batches: u32,
}

/// A purge failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
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

/// The condition of `target` on `d` and its own parameters (numbered from `$1`).
fn target_condition(
    target: Target,
) -> (
    String,
    Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
) {
    match target {
        Target::Finished { keep } => {
            let retractable: Vec<String> = Platform::ALL
                .into_iter()
                .filter(|p| p.can_retract())
                .map(|p| p.as_str().to_string())
                .collect();
            let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
            (
                "d.state in ('sent', 'skipped', 'cancelled') \
                 and d.updated_at < now() - $1::bigint * interval '1 second' \
                 and not (d.kind = 'conversion' and d.state = 'sent' and d.platform = any($2::text[]) \
                   and d.updated_at >= now() - $3::bigint * interval '1 second')"
                    .to_string(),
                vec![
                    Box::new(secs(keep)),
                    Box::new(retractable),
                    Box::new(secs(RETRACTABLE_KEEP)),
                ],
            )
        }
        Target::Failed => ("d.state = 'failed'".to_string(), Vec::new()),
    }
}

/// Deletes the rows of `target` matching `filters`, batch by batch, retiring their keys. In a dry run,
/// counts them instead.
pub async fn purge(
    client: &tokio_postgres::Client,
    schema: &str,
    target: Target,
    filters: &Filters,
    batching: Batching,
    dry_run: bool,
) -> Result<PurgeReport, RetentionError> {
    let s = quote_ident(schema);
    let (condition, own) = target_condition(target);
    let filter_at = own.len() + 1;
    let limit_at = filter_at + 7;
    let condition = format!("{condition} and {}", Filters::condition(filter_at));
    let filter_params = filters.params();
    let limit = i64::try_from(batching.rows.max(1)).unwrap_or(i64::MAX);
    let mut values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = own
        .iter()
        .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    values.extend(filter_params.as_refs());
    let mut report = PurgeReport {
        target: match target {
            Target::Finished { .. } => "finished",
            Target::Failed => "failed",
        },
        dry_run,
        deleted: 0,
        batches: 0,
    };
    if dry_run {
        let count = format!("select count(*) from {s}.deliveries d where {condition}");
        let n: i64 = client
            .query_one(&count, &values)
            .await
            .map_err(|source| RetentionError::Sql {
                what: "counting rows to purge",
                source,
            })?
            .get(0);
        report.deleted = u64::try_from(n).unwrap_or(0);
        return Ok(report);
    }
    let delete = format!(
        "with doomed as ( \
           select d.id from {s}.deliveries d where {condition} \
           limit ${limit_at} for update of d skip locked), \
         gone as ( \
           delete from {s}.deliveries x using doomed where x.id = doomed.id \
           returning x.rule, x.destination, x.event_id, x.kind, x.state), \
         retired as ( \
           insert into {s}.retired (rule, destination, event_id, kind, state) \
           select rule, destination, event_id, kind, state from gone \
           on conflict (rule, destination, event_id) \
             do update set state = excluded.state, retired_at = now()) \
         select count(*) from gone"
    );
    values.push(&limit);
    loop {
        let n: i64 = client
            .query_one(&delete, &values)
            .await
            .map_err(|source| RetentionError::Sql {
                what: "deleting old rows",
                source,
            })?
            .get(0);
        report.batches += 1;
        report.deleted += u64::try_from(n).unwrap_or(0);
        if n < limit {
            return Ok(report);
        }
        tokio::time::sleep(batching.pause).await;
    }
}

/// One retention pass with the config's settings: connects to the control database and purges finished
/// rows older than `keep`.
pub async fn pass(config: &Config, keep: Duration) -> Result<PurgeReport, String> {
    let client = crate::ops::repair::connect_control(config).await?;
    let report = purge(
        &client,
        &config.source.schema,
        Target::Finished { keep },
        &Filters::default(),
        Batching::of(config),
        false,
    )
    .await
    .map_err(|e| crate::pg::error_chain(&e))?;
    // Platforms' processing reports go with the deliveries, but stay a day for `pgcapi status`.
    crate::outbox::purge_processing(
        &client,
        &config.source.schema,
        keep.max(Duration::from_secs(86_400)),
    )
    .await
    .map_err(|e| crate::pg::error_chain(&e))?;
    Ok(report)
}

/// The retention task of `pgcapi run`: a pass at start, then every [`PERIOD`], until `shutdown`. A
/// failed pass is logged and tried again at the next period.
pub async fn run_periodic(config: Arc<Config>, shutdown: watch::Receiver<bool>) {
    let keep = match config.retention.keep() {
        Ok(Some(keep)) => keep,
        _ => {
            info!("retention is off: finished rows are kept");
            return;
        }
    };
    let round = || async {
        let report = pass(&config, keep).await?;
        if report.deleted > 0 {
            info!(
                deleted = report.deleted,
                batches = report.batches,
                keep_secs = keep.as_secs(),
                "retention: old finished rows deleted"
            );
        }
        Ok::<(), String>(())
    };
    crate::shutdown::every("retention", PERIOD, shutdown, round).await;
}

/// Arguments of `pgcapi purge`.
#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    /// The config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Delete failed rows (matching the filters) instead of old finished ones. Failed rows are never
    /// deleted by age; this is the only way besides `pgcapi retry`.
    #[arg(long)]
    pub failed: bool,
    /// Retention age for this run instead of `[retention] keep` (`30d`, `12h`); ignored with --failed.
    #[arg(long, value_name = "AGE")]
    pub keep: Option<String>,
    /// Narrow the rows further.
    #[command(flatten)]
    pub filters: Filters,
    /// Count what would be deleted without deleting.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The purge target of `args` under `config`.
pub fn target_of(args: &PurgeArgs, config: &Config) -> Result<Target, RetentionError> {
    if args.failed {
        return Ok(Target::Failed);
    }
    let keep = match &args.keep {
        Some(text) => crate::units::parse_duration(text)
            .map(|d| (!d.is_zero()).then_some(d))
            .map_err(|e| RetentionError::Usage(format!("--keep: {e}")))?,
        None => config
            .retention
            .keep()
            .map_err(|e| RetentionError::Usage(format!("retention.keep: {e}")))?,
    };
    match keep {
        Some(keep) => Ok(Target::Finished { keep }),
        None => Err(RetentionError::Usage(
            "retention is off ([retention] keep = \"off\" or 0): pass --keep AGE to purge anyway"
                .into(),
        )),
    }
}

/// `pgcapi purge` from the command line.
pub async fn run_purge(args: PurgeArgs) -> Result<ExitCode, String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let target = target_of(&args, &config).map_err(|e| e.to_string())?;
    let client = crate::ops::repair::connect_control(&config).await?;
    let report = purge(
        &client,
        &config.source.schema,
        target,
        &args.filters,
        Batching::of(&config),
        args.dry_run,
    )
    .await
    .map_err(|e| crate::pg::error_chain(&e))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        let what = match target {
            Target::Finished { keep } => format!(
                "sent, skipped and cancelled rows older than {}",
                crate::units::format_secs(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX))
            ),
            Target::Failed => "failed rows".to_string(),
        };
        if report.dry_run {
            println!(
                "purge: would delete {} {what} (dry run: nothing changed)",
                report.deleted
            );
        } else {
            println!(
                "purge: deleted {} {what} in {} batch(es)",
                report.deleted, report.batches
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

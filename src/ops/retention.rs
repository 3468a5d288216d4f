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
pub use crate::outbox::{Batching, PurgeReport, Target, RETRACTABLE_KEEP};
use crate::outbox::{Outbox, OutboxError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::info;

/// How often `pgcapi run` purges.
pub const PERIOD: Duration = Duration::from_secs(3_600);

impl Batching {
    /// The batching of `[retention]`.
    pub fn of(config: &Config) -> Batching {
        Batching {
            rows: config.retention.batch_rows.max(1),
            pause: Duration::from_millis(config.retention.batch_pause_ms),
        }
    }
}

/// A purge failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The arguments make no sense.
    #[error("{0}")]
    Usage(String),
    /// A statement failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Deletes the rows of `target` matching `filters`, batch by batch, retiring their keys. In a dry run,
/// counts them instead (see [`Outbox::purge`]).
pub async fn purge(
    client: &tokio_postgres::Client,
    schema: &str,
    target: Target,
    filters: &Filters,
    batching: Batching,
    dry_run: bool,
) -> Result<PurgeReport, RetentionError> {
    Ok(Outbox::new(schema)
        .purge(client, target, filters, batching, dry_run)
        .await?)
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
        crate::ops::print_json(&report)?;
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

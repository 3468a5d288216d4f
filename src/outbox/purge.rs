//! Deleting old rows: finished deliveries (retention, `pgcapi purge`) and old processing reports.

use super::{db, quote_ident, Filters, Outbox, OutboxError};
use crate::platform::Platform;
use serde::Serialize;
use std::time::Duration;
use tokio_postgres::GenericClient;

/// The least age of a `sent` conversion to a platform that can retract it before it is deleted.
pub const RETRACTABLE_KEEP: Duration = Duration::from_secs(55 * 86_400);

/// How rows are deleted: batch size and pause.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most rows per delete statement.
    pub rows: usize,
    /// Pause between statements.
    pub pause: Duration,
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

impl Outbox {
    /// Deletes the rows of `target` matching `filters`, batch by batch, retiring their keys. In a dry run,
    /// counts them instead.
    pub async fn purge(
        &self,
        client: &tokio_postgres::Client,
        target: Target,
        filters: &Filters,
        batching: Batching,
        dry_run: bool,
    ) -> Result<PurgeReport, OutboxError> {
        let s = self.s();
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
                .map_err(db("counting rows to purge"))?
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
                .map_err(db("deleting old rows"))?
                .get(0);
            report.batches += 1;
            report.deleted += u64::try_from(n).unwrap_or(0);
            if n < limit {
                return Ok(report);
            }
            tokio::time::sleep(batching.pause).await;
        }
    }
}

/// Deletes processing reports recorded more than `keep` ago.
pub async fn purge_processing(
    client: &impl GenericClient,
    schema: &str,
    keep: std::time::Duration,
) -> Result<u64, OutboxError> {
    let sql = format!(
        "delete from {}.platform_processing \
         where recorded_at < now() - make_interval(secs => $1)",
        quote_ident(schema)
    );
    client
        .execute(&sql, &[&keep.as_secs_f64()])
        .await
        .map_err(db("deleting old processing reports"))
}

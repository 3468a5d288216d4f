//! Health reads and reports kept in the control schema: capture's state (`capture_state`), the
//! platforms' processing reports (`platform_processing`), and what `pgcapi status` and the metrics probe
//! read about the deliveries.

use super::Outbox;
use super::{db, quote_ident, OutboxError};
use crate::event::ProcessingReport;
use crate::lsn::Lsn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_postgres::GenericClient;

/// What capture is doing, as stored in `capture_state` (see `sql/007_capture_state.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapturePhase {
    /// Holding the slot and recording changes.
    Streaming,
    /// Waiting out an outage (connection lost or refused); it resumes by itself.
    Retrying,
    /// A change it cannot apply until an operator acts; `error` says what and `error_lsn` where.
    Stuck,
}

impl CapturePhase {
    /// The name stored in `capture_state.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapturePhase::Streaming => "streaming",
            CapturePhase::Retrying => "retrying",
            CapturePhase::Stuck => "stuck",
        }
    }

    /// Parses the stored name.
    pub fn from_name(name: &str) -> Option<CapturePhase> {
        [
            CapturePhase::Streaming,
            CapturePhase::Retrying,
            CapturePhase::Stuck,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }
}

/// One slot's row of `capture_state`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureReport {
    /// What capture is doing.
    pub phase: CapturePhase,
    /// Why it is not streaming.
    pub error: Option<String>,
    /// The WAL position of the change it is stuck on.
    #[serde(serialize_with = "crate::lsn::serialize_opt")]
    pub error_lsn: Option<Lsn>,
    /// When the current problem started.
    pub error_since: Option<chrono::DateTime<chrono::Utc>>,
    /// When a capture process last wrote the row.
    pub seen_at: chrono::DateTime<chrono::Utc>,
}

/// Records what capture of `slot` is doing. `error_since` is kept while the phase stays the same, so it
/// tells how long the problem has lasted; streaming clears the error. Called at each change of phase and
/// at least every 30 s while capture runs (that refreshes `seen_at`).
pub async fn report_capture(
    client: &impl GenericClient,
    schema: &str,
    slot: &str,
    phase: CapturePhase,
    error: Option<&str>,
    error_lsn: Option<Lsn>,
) -> Result<(), OutboxError> {
    let sql = format!(
        "insert into {s}.capture_state as c (slot, state, error, error_lsn, error_since, seen_at) \
         values ($1, $2, $3, $4::text::pg_lsn, case when $2 = 'streaming' then null else now() end, now()) \
         on conflict (slot) do update set state = excluded.state, error = excluded.error, \
           error_lsn = excluded.error_lsn, seen_at = now(), \
           error_since = case when excluded.state = 'streaming' then null \
                              when c.state = excluded.state then coalesce(c.error_since, now()) \
                              else now() end",
        s = quote_ident(schema)
    );
    let error_lsn = error_lsn.map(|l| l.to_string());
    client
        .execute(&sql, &[&slot, &phase.as_str(), &error, &error_lsn])
        .await
        .map(drop)
        .map_err(db("recording the capture state"))
}

/// The stored state of `slot`'s capture, if a capture process ever recorded one.
pub async fn load_capture_report(
    client: &impl GenericClient,
    schema: &str,
    slot: &str,
) -> Result<Option<CaptureReport>, OutboxError> {
    let sql = format!(
        "select state, error, error_lsn::text, error_since, seen_at from {}.capture_state \
         where slot = $1",
        quote_ident(schema)
    );
    let row = client
        .query_opt(&sql, &[&slot])
        .await
        .map_err(db("reading the capture state"))?;
    Ok(row.map(|r| CaptureReport {
        phase: CapturePhase::from_name(r.get::<_, &str>(0)).unwrap_or(CapturePhase::Retrying),
        error: r.get(1),
        error_lsn: r.get::<_, Option<String>>(2).and_then(|l| l.parse().ok()),
        error_since: r.get(3),
        seen_at: r.get(4),
    }))
}

/// Records a final processing report once (a repeat of the same request changes nothing).
pub async fn record_processing(
    client: &impl GenericClient,
    schema: &str,
    report: &ProcessingReport,
) -> Result<(), OutboxError> {
    let sql = format!(
        "insert into {}.platform_processing (destination, request_id, reason, events) \
         values ($1, $2, $3, $4) on conflict do nothing",
        quote_ident(schema)
    );
    for (reason, events) in &report.unusable {
        client
            .execute(
                &sql,
                &[&report.destination, &report.request_id, reason, events],
            )
            .await
            .map_err(db("recording the platform's processing report"))?;
    }
    Ok(())
}

/// Per destination, the events the platform reported it could not use in the last 24 hours, per reason
/// (most first).
pub async fn load_unusable_24h(
    client: &impl GenericClient,
    schema: &str,
) -> Result<std::collections::BTreeMap<String, Vec<(String, i64)>>, OutboxError> {
    let sql = format!(
        "select destination, reason, sum(events)::bigint from {}.platform_processing \
         where recorded_at >= now() - interval '1 day' \
         group by destination, reason order by destination, 3 desc, reason",
        quote_ident(schema)
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(db("reading the platforms' processing reports"))?;
    let mut out = std::collections::BTreeMap::<String, Vec<(String, i64)>>::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    Ok(out)
}

/// A destination's recent deliveries, as `pgcapi status` judges them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationFlow {
    /// The destination.
    pub destination: String,
    /// Rows in state `pending`.
    pub pending: i64,
    /// How long the oldest of them has waited (since it was queued), in seconds.
    pub oldest_pending_secs: Option<i64>,
    /// Rows sent within the window (`failing_after`).
    pub sent_in_window: i64,
    /// Rows whose latest attempt within the window failed (retryable: pending again; or `failed`).
    pub failed_in_window: i64,
    /// The newest of those failures' messages.
    pub last_error: Option<String>,
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
    /// Events the platform accepted in the last 24 hours but reported later it could not use.
    pub platform_unusable_24h: i64,
    /// The same, per the platform's reason (most first).
    pub platform_unusable_reasons: Vec<UnusableReason>,
}

/// Events a platform could not use for one reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnusableReason {
    /// The platform's reason, e.g. `PROCESSING_ERROR_REASON_EVENT_TOO_OLD`.
    pub reason: String,
    /// How many events.
    pub events: i64,
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

/// The stored slot position, as `pgcapi status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    /// The position, as text.
    pub lsn: String,
    /// When capture last moved it.
    pub updated_at: DateTime<Utc>,
    /// Seconds since then, by the control database's clock.
    pub secs_since: i64,
}

impl Outbox {
    /// Whether the control schema is installed with its views (`pgcapi setup` ran).
    pub async fn is_installed(&self, control: &impl GenericClient) -> Result<bool, OutboxError> {
        let s = self.s();
        Ok(control
            .query_one(
                "select to_regclass($1) is not null",
                &[&format!("{s}.health")],
            )
            .await
            .map_err(db("looking for the control schema"))?
            .get(0))
    }

    /// The stored position of `slot`, with its age.
    pub async fn stored_checkpoint(
        &self,
        control: &impl GenericClient,
        slot: &str,
    ) -> Result<Option<StoredCheckpoint>, OutboxError> {
        let s = self.s();
        let row = control
            .query_opt(
                &format!(
                    "select lsn::text, updated_at, extract(epoch from now() - updated_at)::bigint \
                     from {s}.checkpoints where slot = $1"
                ),
                &[&slot],
            )
            .await
            .map_err(db("reading the stored position"))?;
        Ok(row.map(|r| StoredCheckpoint {
            lsn: r.get(0),
            updated_at: r.get(1),
            secs_since: r.get(2),
        }))
    }

    /// Pending rows per destination (the metrics probe's gauge).
    pub async fn pending_per_destination(
        &self,
        control: &impl GenericClient,
    ) -> Result<Vec<(String, i64)>, OutboxError> {
        let sql = format!(
            "select destination, count(*) from {}.deliveries where state = 'pending' \
             group by destination",
            self.s()
        );
        let rows = control
            .query(&sql, &[])
            .await
            .map_err(db("counting pending deliveries"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Per destination: pending rows and the outcomes of the last `window`. Reads the pending rows and the
    /// rows finished within the window only (both indexed: `deliveries_due_order_idx`,
    /// `deliveries_finished_idx`).
    pub async fn flows(
        &self,
        control: &impl GenericClient,
        window: Duration,
    ) -> Result<Vec<DestinationFlow>, OutboxError> {
        let s = self.s();
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let rows = control
            .query(
                &format!(
                    "with recent as ( \
                       select destination, state, attempts, queued_at, sent_at, updated_at, last_error, \
                         updated_at >= now() - $1::bigint * interval '1 millisecond' as in_window \
                       from {s}.deliveries \
                       where state = 'pending' \
                          or (state <> 'pending' \
                              and updated_at >= now() - $1::bigint * interval '1 millisecond')), \
                     flagged as ( \
                       select *, in_window and (state = 'failed' \
                           or (state = 'pending' and attempts > 0 and last_error is not null)) as failure \
                       from recent) \
                     select destination, \
                       count(*) filter (where state = 'pending'), \
                       extract(epoch from now() - min(queued_at) filter (where state = 'pending'))::bigint, \
                       count(*) filter (where state = 'sent' \
                         and sent_at >= now() - $1::bigint * interval '1 millisecond'), \
                       count(*) filter (where failure), \
                       (array_agg(last_error order by updated_at desc) filter (where failure))[1] \
                     from flagged group by destination order by destination"
                ),
                &[&window_ms],
            )
            .await
            .map_err(db("reading the recent deliveries"))?;
        Ok(rows
            .iter()
            .map(|r| DestinationFlow {
                destination: r.get(0),
                pending: r.get(1),
                oldest_pending_secs: r.get(2),
                sent_in_window: r.get(3),
                failed_in_window: r.get(4),
                last_error: r.get(5),
            })
            .collect())
    }

    /// The `health` view's rows, by destination (without the per-reason list of unusable events).
    pub async fn health_view(
        &self,
        control: &impl GenericClient,
    ) -> Result<Vec<DestinationHealth>, OutboxError> {
        let s = self.s();
        let rows = control
            .query(
                &format!(
                    "select destination, platform, pending, retrying, oldest_pending_secs, failed, \
                       sent_1h, failed_1h, skipped_1h, cancelled_1h, sent_24h, failed_24h, skipped_24h, \
                       cancelled_24h, last_sent_at, events_24h, email_share::float8, phone_share::float8, \
                       name_share::float8, address_share::float8, click_id_share::float8, \
                       ip_ua_share::float8, external_id_share::float8, browser_id_share::float8, \
                       match_score::float8, last_error, last_error_at, platform_unusable_24h \
                     from {s}.health order by destination"
                ),
                &[],
            )
            .await
            .map_err(db("reading the health view"))?;
        Ok(rows
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
                platform_unusable_24h: r.get(27),
                platform_unusable_reasons: Vec::new(),
            })
            .collect())
    }

    /// The newest failed rows of the send log.
    pub async fn failures(
        &self,
        control: &impl GenericClient,
        limit: usize,
    ) -> Result<Vec<FailureLine>, OutboxError> {
        let s = self.s();
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
            .map_err(db("reading recent failures"))?;
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
}

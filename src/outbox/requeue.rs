//! Putting rows back in the dispatch queue (`pgcapi retry` and `pgcapi replay`): the filters that pick
//! them, the rows that must never be sent again, and the requeue transaction.

use super::{db, Outbox, OutboxError};
use crate::units::TimeRef;
use chrono::{DateTime, Utc};
use serde::Serialize;

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
    /// Why the row is held back (only in held-back rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_back_because: Option<String>,
}

/// The rows a requeue matched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requeued {
    /// Set back to pending (or that would be, in a dry run), by id.
    pub requeued: Vec<RowLine>,
    /// Matched, but must not be sent again (with the reason).
    pub held_back: Vec<RowLine>,
}

impl Outbox {
    /// Why a matched row must not be requeued (SQL expression on `d`, null when it may be).
    fn held_back_reason(&self) -> String {
        format!(
            "case \
               when d.payload::json ->> 'consent' is distinct from 'true' \
                 then 'recorded without consent or as an invalid row: never sendable' \
               when d.kind = 'conversion' and exists (select 1 from {s}.deliveries r \
                   where r.kind = 'retraction' and r.destination = d.destination \
                     and r.adjusts_rule = d.rule and r.event_id = d.event_id) \
                 then 'its conversion was retracted (refund recorded)' \
             end",
            s = self.s()
        )
    }

    /// Selects the rows in `states` matching `filters`, and unless `dry_run`, sets the sendable ones to
    /// pending and notifies dispatchers, in one transaction.
    pub async fn requeue(
        &self,
        client: &mut tokio_postgres::Client,
        states: &[&str],
        filters: &Filters,
        dry_run: bool,
    ) -> Result<Requeued, OutboxError> {
        let s = self.s();
        let tx = client
            .transaction()
            .await
            .map_err(db("beginning a transaction"))?;
        let select = format!(
            "select d.id, d.destination, d.rule, d.kind, d.event_id, d.state, d.attempts, d.last_error, \
               d.updated_at, {held} \
             from {s}.deliveries d \
             where d.state = any($1::text[]) and {condition} \
             order by d.id {lock}",
            held = self.held_back_reason(),
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
            .map_err(db("selecting the rows to requeue"))?;
        let mut report = Requeued::default();
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
            tx.rollback().await.map_err(db("ending the transaction"))?;
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
            .map_err(db("requeueing rows"))?;
        tx.execute("select pg_notify($1, '')", &[&self.channel()])
            .await
            .map_err(db("notifying dispatchers"))?;
        tx.commit().await.map_err(db("committing"))?;
        Ok(report)
    }
}

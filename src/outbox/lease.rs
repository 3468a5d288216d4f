//! Dispatch's statements: claim due rows under a lease, look up the conversions that adjustments
//! adjust, cancel or restate unsent conversions, and record every row's outcome.
//!
//! Rows are only ever updated by the lease owner (`lease_owner = $owner` in every write), so several
//! pgcapi processes can dispatch from one control table without sending a row twice while its lease
//! holds.

use super::{db, Outbox, OutboxError, Unreadable};
use crate::event::{is_deletion_rule, Delivery, Payload, State};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// A row's new state, as [`Outbox::record`] writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The platform accepted it.
    Sent,
    /// The platform rejected it for good, or it cannot be read.
    Failed,
    /// Deliberately not sent.
    Skipped,
    /// Not sent, and never will be (its conversion was retracted before it was sent).
    Cancelled,
    /// Back to pending after an attempt, due again after its delay (unless it is given up).
    Retry,
    /// Back to pending without an attempt: waiting for the conversion it adjusts.
    Wait,
}

impl Recorded {
    /// The name the record statement takes (`sent`, …, `retry`, `wait`).
    pub fn as_str(self) -> &'static str {
        match self {
            Recorded::Sent => "sent",
            Recorded::Failed => "failed",
            Recorded::Skipped => "skipped",
            Recorded::Cancelled => "cancelled",
            Recorded::Retry => "retry",
            Recorded::Wait => "wait",
        }
    }

    /// True for the states that put the row back to pending with a delay.
    pub fn is_rescheduled(self) -> bool {
        matches!(self, Recorded::Retry | Recorded::Wait)
    }
}

/// One row's new state, as [`Outbox::record`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The row.
    pub id: i64,
    /// What becomes of it.
    pub state: Recorded,
    /// The new `last_error` (cleared when `None`).
    pub error: Option<String>,
    /// The platform's reference; the stored one is kept when `None`.
    pub platform_ref: Option<String>,
    /// For [`Recorded::Retry`] / [`Recorded::Wait`]: how long until the row is due again.
    pub delay: Duration,
    /// 1 when a request was attempted for the row, else 0.
    pub attempted: i32,
}

impl Record {
    /// A record without platform reference or delay.
    pub fn new(id: i64, state: Recorded, error: Option<String>, attempted: i32) -> Record {
        Record {
            id,
            state,
            error,
            platform_ref: None,
            delay: Duration::ZERO,
            attempted,
        }
    }
}

/// A claimed batch ([`Outbox::claim`]): its rows, and how long each had been queued, by the control
/// database's clock, when the claim answered at `at`. Dispatch judges giving up from these ages (plus
/// the time since `at`), so that one clock judges every row whichever process sends it.
#[derive(Debug)]
pub struct Lease {
    /// The claimed rows, in id order; a row that cannot be read back is an [`Unreadable`].
    pub rows: Vec<Result<Delivery, Unreadable>>,
    /// Row id → how long since it was queued (`queued_at`: captured, or requeued by an operator).
    pub queued: HashMap<i64, Duration>,
    /// When the claim answered.
    pub at: Instant,
}

/// An adjustment row and the conversion it adjusts, if that exists.
#[derive(Debug, Clone)]
pub struct AdjustedConversion {
    /// The adjustment row.
    pub adjustment_id: i64,
    /// The adjusted conversion, if it was ever recorded.
    pub conversion: Option<Conversion>,
}

/// What an adjustment needs to know about its conversion.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// Its row.
    pub id: i64,
    /// Its state (`None`: one this version does not know).
    pub state: Option<State>,
    /// Who holds (or last held) its lease.
    pub lease_owner: Option<String>,
    /// Whether its lease is still valid.
    pub leased: bool,
    /// The Google conversion action it was sent with.
    pub conversion_action: Option<String>,
    /// Its currency.
    pub currency: Option<String>,
    /// How many sends were attempted: above zero, the platform may have it even if still pending.
    pub attempts: i32,
    /// The time it was (or will be) sent with.
    pub event_time: chrono::DateTime<chrono::Utc>,
    /// How long until it is due again (zero when due or in flight).
    pub due_in: Duration,
    /// The payload it was sent with (identifiers a Data Manager restatement sends again).
    pub payload: Option<Payload>,
    /// Pending adjustments of it recorded before this one (sent first: the last one wins).
    pub earlier_adjustments: Vec<i64>,
}

impl Outbox {
    /// Starts listening on the channel capture notifies after each commit.
    pub async fn listen(&self, client: &Client) -> Result<(), OutboxError> {
        client
            .batch_execute(&format!("listen {}", super::quote_ident(&self.channel())))
            .await
            .map_err(db("listening for new deliveries"))
    }

    /// How long until the earliest pending row of `destination` is due (zero if one is due now);
    /// `None` when it has no pending row.
    pub async fn until_next_due(
        &self,
        client: &Client,
        destination: &str,
    ) -> Result<Option<Duration>, OutboxError> {
        let sql = format!(
            "select extract(epoch from min(greatest(next_attempt_at, \
               coalesce(lease_until, next_attempt_at))) - now())::float8 \
             from {}.deliveries where destination = $1 and state = 'pending'",
            self.s()
        );
        let row = client
            .query_one(&sql, &[&destination])
            .await
            .map_err(db("finding the next due delivery"))?;
        Ok(row
            .get::<_, Option<f64>>(0)
            .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))))
    }

    /// Makes the pending rows `ids` due now, unless someone holds them (the end of an outage);
    /// returns how many.
    pub async fn make_due(&self, client: &Client, ids: &[i64]) -> Result<u64, OutboxError> {
        let sql = format!(
            "update {s}.deliveries set next_attempt_at = now() \
             where id = any($1) and state = 'pending' and next_attempt_at > now() \
               and (lease_until is null or lease_until < now())",
            s = self.s()
        );
        client
            .execute(&sql, &[&ids])
            .await
            .map_err(db("requeueing rows after an outage"))
    }

    /// Claims up to `limit` due pending rows of `destination` under the lease of `owner`, for
    /// `lease_secs`, in id order.
    ///
    /// A cancellable (see `dispatch`) conversion with a pending retraction or restatement is not
    /// claimed: the adjustment decides its fate when it is claimed itself (cancel both, or apply the
    /// restated value), so a batch boundary between the two can never send a refunded conversion.
    /// Capture writes a source transaction's rows in one control transaction, so a conversion and the
    /// refund of the same source transaction become visible together.
    ///
    /// `= any(array(…))` rather than `in (…)`: the claimed ids are then looked up by primary key, where
    /// `in` let the planner hash-join them against a sequential scan of the whole table, making every
    /// claim cost O(table) while a backlog drains (seen in `pgcapi bench`).
    ///
    /// The claim changes no indexed column (only the lease and `attempts`; `updated_at` keeps meaning
    /// "when the row reached its current state", and a claim changes no state), so PostgreSQL can make
    /// it a HOT update when the page has room (`sql/005_dispatch_hot.sql` leaves some): no new index
    /// entries per claimed row.
    pub async fn claim(
        &self,
        client: &Client,
        destination: &str,
        owner: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Lease, OutboxError> {
        let sql = format!(
            "update {s}.deliveries d \
               set lease_owner = $2, lease_until = now() + $3::bigint * interval '1 second', \
                   attempts = d.attempts + (d.lease_owner is not null)::int \
             where d.id = any(array( \
               select x.id from {s}.deliveries x \
                where x.destination = $1 and x.state = 'pending' and x.next_attempt_at <= now() \
                  and (x.lease_until is null or x.lease_until < now()) \
                  and not (x.kind = 'conversion' \
                    and x.attempts = 0 and x.lease_owner is null and exists ( \
                    select 1 from {s}.deliveries a \
                     where a.destination = $1 and a.state = 'pending' and a.kind <> 'conversion' \
                       and a.event_id = x.event_id and a.adjusts_rule = x.rule)) \
                order by x.next_attempt_at, x.id \
                limit $4 \
                for update skip locked)) \
             returning {columns}, extract(epoch from now() - d.queued_at)::float8",
            s = self.s(),
            columns = Delivery::COLUMNS,
        );
        let lease = i64::try_from(lease_secs.max(1)).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let rows = client
            .query(&sql, &[&destination, &owner, &lease, &limit])
            .await
            .map_err(db("claiming due deliveries"))?;
        let at = Instant::now();
        let queued = rows
            .iter()
            .map(|r| {
                let secs: f64 = r.get(Delivery::COLUMN_COUNT);
                (r.get::<_, i64>(0), Duration::from_secs_f64(secs.max(0.0)))
            })
            .collect();
        let mut claimed: Vec<Result<Delivery, Unreadable>> =
            rows.iter().map(Delivery::from_row).collect();
        // `returning` does not keep the subquery's order: restore it (ids grow with time).
        claimed.sort_by_key(|c| match c {
            Ok(d) => d.id,
            Err(u) => u.id,
        });
        Ok(Lease {
            rows: claimed,
            queued,
            at,
        })
    }

    /// Up to `limit` pending rows of `destination` after id `after`, in id order, unclaimed (what a
    /// dry run shows).
    pub async fn pending_after(
        &self,
        client: &Client,
        destination: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Result<Delivery, Unreadable>>, OutboxError> {
        let sql = format!(
            "select {columns} \
             from {s}.deliveries d where destination = $1 and state = 'pending' and id > $2 \
             order by id limit $3",
            columns = Delivery::COLUMNS,
            s = self.s()
        );
        let rows = client
            .query(
                &sql,
                &[
                    &destination,
                    &after,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(db("reading pending deliveries"))?;
        Ok(rows.iter().map(Delivery::from_row).collect())
    }

    /// The conversions adjusted by the rows `ids` (same destination, rule = adjusts_rule, event id).
    pub async fn adjusted_conversions(
        &self,
        client: &Client,
        ids: &[i64],
    ) -> Result<Vec<AdjustedConversion>, OutboxError> {
        let sql = format!(
            "select a.id, c.id, c.state, c.lease_owner, \
               coalesce(c.lease_until >= now(), false), c.payload::json ->> 'conversion_action', c.currency, \
               c.attempts, c.event_time, \
               greatest(extract(epoch from c.next_attempt_at - now()), 0)::float8, \
               c.payload::text, \
               array(select e.id from {s}.deliveries e where e.destination = a.destination \
                 and e.adjusts_rule = a.adjusts_rule and e.event_id = a.event_id \
                 and e.kind <> 'conversion' and e.state = 'pending' and e.id < a.id) \
             from {s}.deliveries a \
             left join {s}.deliveries c on c.destination = a.destination and c.rule = a.adjusts_rule \
               and c.event_id = a.event_id and c.kind = 'conversion' \
             where a.id = any($1)",
            s = self.s()
        );
        let rows = client
            .query(&sql, &[&ids])
            .await
            .map_err(db("looking up adjusted conversions"))?;
        Ok(rows
            .iter()
            .map(|r| AdjustedConversion {
                adjustment_id: r.get(0),
                conversion: r.get::<_, Option<i64>>(1).map(|id| Conversion {
                    id,
                    state: State::from_name(r.get::<_, &str>(2)),
                    lease_owner: r.get(3),
                    leased: r.get(4),
                    conversion_action: r.get(5),
                    currency: r.get(6),
                    attempts: r.get(7),
                    event_time: r.get(8),
                    due_in: Duration::from_secs_f64(r.get::<_, f64>(9).min(86_400.0)),
                    payload: r
                        .get::<_, Option<&str>>(10)
                        .and_then(|p| serde_json::from_str(p).ok()),
                    earlier_adjustments: r.get(11),
                }),
            })
            .collect())
    }

    /// Cancels a cancellable conversion that was not sent and the retraction of it (held by `owner`),
    /// atomically (one statement). False when the conversion was claimed by another process in the
    /// meantime.
    pub async fn cancel_both(
        &self,
        client: &Client,
        owner: &str,
        conversion: i64,
        retraction: i64,
        retraction_rule: &str,
    ) -> Result<bool, OutboxError> {
        let sql = format!(
            "with conv as ( \
               update {s}.deliveries set state = 'cancelled', last_error = $4, \
                 lease_owner = null, lease_until = null, updated_at = now() \
               where id = $1 and state = 'pending' \
                 and attempts = 0 and (lease_owner is null or lease_owner = $3) \
               returning id) \
             update {s}.deliveries set state = 'cancelled', last_error = 'conversion was not sent yet', \
               lease_owner = null, lease_until = null, updated_at = now() \
             where id = $2 and lease_owner = $3 and state = 'pending' and exists (select 1 from conv) \
             returning id",
            s = self.s()
        );
        let reason = if is_deletion_rule(retraction_rule) {
            "source row deleted before it was sent"
        } else {
            "retracted before it was sent"
        };
        let rows = client
            .query(&sql, &[&conversion, &retraction, &owner, &reason])
            .await
            .map_err(db("cancelling a retracted conversion"))?;
        Ok(!rows.is_empty())
    }

    /// Applies a restatement (held by `owner`) to a conversion that was not sent (its value becomes the
    /// restated total) and closes the restatement, atomically. False when the conversion was claimed
    /// meanwhile.
    pub async fn restate_unsent(
        &self,
        client: &Client,
        owner: &str,
        conversion: i64,
        restatement: i64,
    ) -> Result<bool, OutboxError> {
        let sql = format!(
            "with r as (select value, currency from {s}.deliveries where id = $2), \
             conv as ( \
               update {s}.deliveries c set value = r.value, currency = coalesce(r.currency, c.currency), \
                 updated_at = now() \
               from r \
               where c.id = $1 and c.state = 'pending' \
                 and c.attempts = 0 and c.lease_owner is null \
               returning c.id) \
             update {s}.deliveries set state = 'cancelled', \
               last_error = 'restated value applied to the conversion before it was sent', \
               lease_owner = null, lease_until = null, updated_at = now() \
             where id = $2 and lease_owner = $3 and state = 'pending' and exists (select 1 from conv) \
             returning id",
            s = self.s()
        );
        let rows = client
            .query(&sql, &[&conversion, &restatement, &owner])
            .await
            .map_err(db("applying a restatement to an unsent conversion"))?;
        Ok(!rows.is_empty())
    }

    /// Writes every record of a round in one statement and releases `owner`'s leases; returns how many
    /// rows were updated. Rows whose lease was lost (expired and claimed by another process) are left
    /// alone: the new owner records them. A [`Recorded::Retry`] or [`Recorded::Wait`] goes back to
    /// pending, due after its delay; every other state is written as it is (giving up is decided
    /// before, in `dispatch::retry`, from the ages the claim read: [`Lease::queued`]).
    pub async fn record(
        &self,
        client: &Client,
        owner: &str,
        records: &[Record],
    ) -> Result<u64, OutboxError> {
        if records.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "update {s}.deliveries d set \
               state = case when u.state in ('retry', 'wait') then 'pending' else u.state end, \
               last_error = u.error, \
               attempts = d.attempts + u.attempted, \
               platform_ref = coalesce(u.platform_ref, d.platform_ref), \
               sent_at = case when u.state = 'sent' then now() else d.sent_at end, \
               next_attempt_at = case when u.state in ('retry', 'wait') \
                 then now() + u.delay_ms * interval '1 millisecond' else d.next_attempt_at end, \
               lease_owner = null, lease_until = null, updated_at = now() \
             from unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::int4[]) \
               as u(id, state, error, platform_ref, delay_ms, attempted) \
             where d.id = u.id and d.lease_owner = $1 and d.state = 'pending'",
            s = self.s()
        );
        let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        let states: Vec<&str> = records.iter().map(|r| r.state.as_str()).collect();
        let errors: Vec<Option<&str>> = records.iter().map(|r| r.error.as_deref()).collect();
        let refs: Vec<Option<&str>> = records.iter().map(|r| r.platform_ref.as_deref()).collect();
        let delays: Vec<i64> = records
            .iter()
            .map(|r| i64::try_from(r.delay.as_millis()).unwrap_or(i64::MAX))
            .collect();
        let attempted: Vec<i32> = records.iter().map(|r| r.attempted).collect();
        client
            .execute(
                &sql,
                &[&owner, &ids, &states, &errors, &refs, &delays, &attempted],
            )
            .await
            .map_err(db("recording delivery outcomes"))
    }
}

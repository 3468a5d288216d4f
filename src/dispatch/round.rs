//! One round of one destination: claim → resolve → send → record.
//!
//! [`Dispatcher::process`] reads as those four steps: the claimed rows' adjustments are resolved
//! against the conversions they adjust ([`resolve`], applied here), the rest go to the
//! [`Destination`] in one call, and every row's outcome ([`retry::record`]) is written in one
//! statement ([`Outbox::record`](crate::outbox::Outbox::record)).

use super::adjustments::{as_sent, resolve, ConversionView, Resolution};
use super::retry::{self, Answers};
use super::worker::{Progress, Summary};
use super::{DispatchError, Dispatcher, WAIT_FOR_IN_FLIGHT};
use crate::destinations::Destination;
use crate::event::{Delivery, Kind};
use crate::outbox::{AdjustedConversion, Lease, Record, Recorded, Unreadable};
use std::collections::HashSet;
use std::time::Duration;
use tracing::{debug, info, warn};

impl Dispatcher {
    /// Claims, resolves, sends and records one batch for `dest`; returns how many rows were claimed.
    pub(super) async fn round(&self, dest: &dyn Destination) -> Result<usize, DispatchError> {
        let claimed = self.claim(dest.name(), dest.max_batch()).await?;
        if claimed.rows.is_empty() {
            return Ok(0);
        }
        Ok(self.process(dest, claimed).await?.claimed)
    }

    /// Claims up to `limit` due pending rows of `destination` under this process's lease (see
    /// [`Outbox::claim`](crate::outbox::Outbox::claim)).
    pub(super) async fn claim(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Lease, DispatchError> {
        let claimed = self
            .outbox
            .claim(
                &self.client,
                destination,
                &self.owner,
                self.config.lease_secs,
                limit,
            )
            .await?;
        debug!(claimed = claimed.rows.len(), "claimed deliveries");
        Ok(claimed)
    }

    /// Resolves, sends and records a claimed batch of `dest`.
    pub(super) async fn process(
        &self,
        dest: &dyn Destination,
        claimed: Lease,
    ) -> Result<Processed, DispatchError> {
        let count = claimed.rows.len();
        let mut records = Vec::with_capacity(count);
        let mut rows = Vec::with_capacity(count);
        for c in claimed.rows {
            match c {
                Ok(d) => rows.push(d),
                Err(Unreadable { id, error }) => {
                    records.push(Record::new(id, Recorded::Failed, Some(error), 0))
                }
            }
        }
        let (to_send, resolved) = self.resolve_adjustments(rows).await?;
        records.extend(resolved.records);
        let outcomes = if to_send.is_empty() {
            Vec::new()
        } else {
            dest.send(&to_send).await
        };
        let mut answers = Answers::default();
        for (d, outcome) in to_send.iter().zip(outcomes) {
            answers.observe(d.id, &outcome);
            if matches!(outcome, crate::destinations::Outcome::Sent { .. }) {
                crate::metrics::delivery_sent(dest.name(), d.created_at);
            }
            records.push(retry::record(&self.config, d, outcome));
        }
        retry::give_up(
            &self.config,
            &mut records,
            &claimed.queued,
            claimed.at.elapsed(),
        );
        self.write(&records).await?;
        Ok(report(
            dest.name(),
            count,
            &records,
            resolved.cancelled,
            answers,
        ))
    }

    /// Resolves the adjustments among `rows` against the conversions they adjust. Returns the rows to
    /// send (conversions, and adjustments of conversions already sent) and the records of the others.
    ///
    /// A pending conversion is cancelled by its retraction (or takes its restatement's value) when
    /// it is cancellable (module docs of `dispatch`) and nobody else is sending it; otherwise the
    /// adjustment waits until the conversion has an outcome, and is then sent (Google) or skipped
    /// (Meta, TikTok).
    async fn resolve_adjustments(
        &self,
        rows: Vec<Delivery>,
    ) -> Result<(Vec<Delivery>, Resolved), DispatchError> {
        let adjustment_ids: Vec<i64> = rows
            .iter()
            .filter(|d| d.kind != Kind::Conversion)
            .map(|d| d.id)
            .collect();
        let mut resolved = Resolved::default();
        if adjustment_ids.is_empty() {
            return Ok((rows, resolved));
        }
        let claimed_ids: HashSet<i64> = rows.iter().map(|d| d.id).collect();
        let targets = self
            .outbox
            .adjusted_conversions(&self.client, &adjustment_ids)
            .await?;
        let (mut to_send, adjustments): (Vec<Delivery>, Vec<Delivery>) =
            rows.into_iter().partition(|d| d.kind == Kind::Conversion);
        let mut send_adjustments = Vec::new();
        for d in adjustments {
            let target = targets
                .iter()
                .find(|t: &&AdjustedConversion| t.adjustment_id == d.id)
                .and_then(|t| t.conversion.as_ref());
            let view = target.map(|c| ConversionView::of(c, &self.owner, &claimed_ids));
            let resolution = resolve(d.kind, view);
            let (Resolution::Send, Some(target)) = (&resolution, target) else {
                self.apply(&d, target, resolution, &mut resolved).await?;
                continue;
            };
            if !target
                .earlier_adjustments
                .iter()
                .all(|id| claimed_ids.contains(id))
            {
                // An earlier refund of this conversion is still to be sent: it goes first, so that
                // the last restatement is the one that stays.
                resolved.wait(d.id, Duration::ZERO);
                continue;
            }
            send_adjustments.push(as_sent(d, target));
        }
        to_send.retain(|d| !resolved.dropped.contains(&d.id));
        // Adjustments of sent conversions go to the destination, which sends them (Google) or answers
        // that it cannot retract (Meta, TikTok).
        to_send.extend(send_adjustments);
        Ok((to_send, resolved))
    }

    /// Applies a resolution that sends nothing: cancels or restates in the database, or records the
    /// adjustment as waiting, cancelled or skipped.
    async fn apply(
        &self,
        d: &Delivery,
        target: Option<&crate::outbox::Conversion>,
        resolution: Resolution,
        resolved: &mut Resolved,
    ) -> Result<(), DispatchError> {
        let due_in = target.map_or(Duration::ZERO, |t| t.due_in);
        match (resolution, target) {
            (Resolution::CancelBoth, Some(target)) => {
                let cancelled = self
                    .outbox
                    .cancel_both(&self.client, &self.owner, target.id, d.id, &d.rule)
                    .await?;
                if cancelled {
                    resolved.dropped.insert(target.id);
                    resolved.cancelled += 2;
                } else {
                    resolved.wait(d.id, due_in);
                }
            }
            (Resolution::RestateUnsent, Some(target)) => {
                let restated = self
                    .outbox
                    .restate_unsent(&self.client, &self.owner, target.id, d.id)
                    .await?;
                if restated {
                    resolved.cancelled += 1;
                } else {
                    resolved.wait(d.id, due_in);
                }
            }
            (Resolution::Cancelled, _) => resolved.records.push(Record::new(
                d.id,
                Recorded::Cancelled,
                Some("conversion was not sent yet".into()),
                0,
            )),
            (Resolution::Skip(reason), _) => resolved.skip(d.id, reason),
            // Wait; and the resolutions that need a conversion, which `resolve` only gives with one.
            _ => resolved.wait(d.id, due_in),
        }
        Ok(())
    }

    /// Writes every record of a round in one statement and releases the leases (see
    /// [`Outbox::record`](crate::outbox::Outbox::record)).
    async fn write(&self, records: &[Record]) -> Result<(), DispatchError> {
        let updated = self
            .outbox
            .record(&self.client, &self.owner, records)
            .await?;
        if updated < records.len() as u64 {
            warn!(
                recorded = updated,
                expected = records.len(),
                "some leases expired before their outcome was recorded"
            );
        }
        Ok(())
    }
}

/// Counts a recorded batch into the metrics and the log, and sums it up for the worker.
fn report(
    destination: &str,
    claimed: usize,
    records: &[Record],
    cancelled: usize,
    answers: Answers,
) -> Processed {
    crate::metrics::deliveries_recorded(destination, records.iter().map(|r| r.state.as_str()));
    crate::metrics::deliveries_recorded_n(
        destination,
        Recorded::Cancelled.as_str(),
        cancelled as u64,
    );
    let tally = |state: Recorded| records.iter().filter(|r| r.state == state).count();
    info!(
        claimed,
        sent = tally(Recorded::Sent),
        failed = tally(Recorded::Failed),
        retried = tally(Recorded::Retry),
        skipped = tally(Recorded::Skipped),
        cancelled,
        waiting = tally(Recorded::Wait),
        "batch dispatched"
    );
    Processed {
        claimed,
        rescheduled: records.iter().filter(|r| r.state.is_rescheduled()).count(),
        answered: answers.answered,
        unanswered: answers.unanswered && !answers.answered,
        retry_after: answers.retry_after,
        backed_off: answers.backed_off,
    }
}

/// The records of adjustments resolved without sending.
#[derive(Default)]
struct Resolved {
    /// Records of adjustments decided without sending.
    records: Vec<Record>,
    /// Rows cancelled directly in the database (conversions and their adjustments).
    cancelled: usize,
    /// Conversions of this batch cancelled with their retraction: not sent.
    dropped: HashSet<i64>,
}

impl Resolved {
    /// The adjustment is not sent, for `reason`.
    fn skip(&mut self, id: i64, reason: String) {
        self.records
            .push(Record::new(id, Recorded::Skipped, Some(reason), 0));
    }

    /// The adjusted conversion is being sent, or is due again in `due_in`: look again shortly after,
    /// without counting an attempt.
    fn wait(&mut self, id: i64, due_in: Duration) {
        self.records.push(Record {
            delay: due_in.max(WAIT_FOR_IN_FLIGHT),
            ..Record::new(
                id,
                Recorded::Wait,
                Some("waiting: the adjusted conversion is being sent".into()),
                0,
            )
        });
    }
}

/// What a processed batch came to.
pub(super) struct Processed {
    /// Rows claimed.
    pub(super) claimed: usize,
    /// Rows put back to pending with a delay (retries, adjustments waiting for their conversion).
    rescheduled: usize,
    /// The platform accepted at least one row.
    answered: bool,
    /// Rows were sent and the platform accepted none: every one met a retryable error.
    unanswered: bool,
    /// The longest `Retry-After` (or operator floor) among the retries.
    retry_after: Option<Duration>,
    /// Rows put back on plain exponential backoff (no platform-given delay).
    backed_off: Vec<i64>,
}

impl Processed {
    /// What the worker needs to know.
    pub(super) fn summary(self) -> Summary {
        Summary {
            progress: if self.rescheduled > 0 {
                Progress::Rescheduled
            } else {
                Progress::Done
            },
            answered: self.answered,
            unanswered: self.unanswered,
            retry_after: self.retry_after,
            backed_off: self.backed_off,
        }
    }
}

//! One destination's worker loop: claims batches back to back while they come back full, keeps up to
//! [`BATCHES_IN_FLIGHT`] of them in progress, notices an outage (probing with small batches) and its
//! end, and otherwise waits for a wake-up.

use super::retry::backoff;
use super::{changed, DispatchError, Dispatcher, BATCHES_IN_FLIGHT, ROUND_ERROR_PAUSE};
use crate::config::DispatchConfig;
use crate::destinations::Destination;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

/// How many batches in a row must go unanswered before the destination counts as down.
const DOWN_AFTER_BATCHES: u32 = 2;
/// The most rows a probe carries while the destination is down.
pub const PROBE_ROWS: usize = 10;
/// The longest wait between two probes (unless the platform's `Retry-After` asks for more): how
/// late, at most, the end of an outage is noticed.
pub const PROBE_MAX_INTERVAL: Duration = Duration::from_secs(5);
/// The most row ids remembered for the requeue at the end of an outage; rows beyond it wait out
/// their own backoff.
const MAX_BACKED_OFF_TRACKED: usize = 1_000_000;

/// The batches of one destination in progress (being resolved, sent or recorded).
type InFlight = JoinSet<Result<Summary, DispatchError>>;

/// What a worker carries from one turn of its loop to the next.
struct Worker {
    /// The destination it serves.
    dest: Arc<dyn Destination>,
    /// The batches in progress.
    in_flight: InFlight,
    /// Whether the platform answers.
    availability: Availability,
    /// Notifications of new rows (`None`: polling only).
    wakeups: Option<watch::Receiver<u64>>,
    /// The connection the next batch goes to (an index into `connections`, modulo its length).
    next_connection: usize,
    /// This dispatcher on each of its control connections.
    connections: Arc<[Arc<Dispatcher>]>,
}

impl Dispatcher {
    /// One destination's loop: claims back to back while batches come back full, with up to
    /// [`BATCHES_IN_FLIGHT`] claimed batches being sent and recorded at once, else waits for a
    /// wake-up (a notification, the next due row, a batch that left rows to retry, or the poll).
    ///
    /// Claims are made one after the other, so batches never compete for rows; what overlaps is
    /// the slow part of a round (the request, the platform, the outcome write) with the claim of
    /// the next batch. A batch is only claimed when a slot is free, so its lease starts running
    /// when it is about to be sent, as with one batch at a time. The worker claims on its own control
    /// connection and spreads its batches over all of them (`connections`), so that recording one
    /// batch and claiming the next can run in parallel server processes.
    pub(super) async fn worker(
        self: Arc<Self>,
        index: usize,
        mut stop: watch::Receiver<bool>,
        connections: Arc<[Arc<Dispatcher>]>,
    ) -> Result<(), DispatchError> {
        let dest = self.destinations[index].clone();
        let span = info_span!(
            "dispatch",
            destination = dest.name(),
            platform = dest.platform().as_str()
        );
        let mut w = Worker {
            dest,
            in_flight: JoinSet::new(),
            availability: Availability::default(),
            wakeups: self.wakeups.clone(),
            next_connection: index,
            connections,
        };
        async move {
            info!("dispatch worker started");
            loop {
                if *stop.borrow() {
                    // Rounds in progress are finished first.
                    while let Some(joined) = w.in_flight.join_next().await {
                        finished(joined, w.dest.name())?;
                    }
                    info!("dispatch worker stopped");
                    return Ok(());
                }
                self.record_processing_reports(w.dest.as_ref()).await;
                let pause = match self.make_room(&mut w).await? {
                    Some(pause) => pause,
                    None => match self.claim_next(&mut w).await? {
                        Some(pause) => pause,
                        // A full batch: claim the next one at once.
                        None => continue,
                    },
                };
                self.wait(&mut w, &mut stop, pause).await?;
            }
        }
        .instrument(span)
        .await
    }

    /// Records what the platform reported later about requests it accepted.
    async fn record_processing_reports(&self, dest: &dyn Destination) {
        for report in dest.take_processing_reports() {
            if let Err(e) =
                crate::outbox::record_processing(self.client.as_ref(), self.outbox.name(), &report)
                    .await
            {
                warn!(error = %e, request_id = %report.request_id,
                    "cannot record the platform's processing report");
            }
        }
    }

    /// Waits until a batch may be claimed: fewer than [`BATCHES_IN_FLIGHT`] in progress, and while
    /// the platform is down, none (one probe at a time). Returns a pause to take before claiming, if
    /// any: after a failed round, or until the next probe.
    async fn make_room(&self, w: &mut Worker) -> Result<Option<Duration>, DispatchError> {
        let mut pause = None;
        while w.in_flight.len() >= BATCHES_IN_FLIGHT
            || (w.availability.is_down() && !w.in_flight.is_empty())
        {
            if let Some(joined) = w.in_flight.join_next().await {
                let summary = finished(joined, w.dest.name())?;
                if summary.progress == Progress::Failed {
                    pause = Some(ROUND_ERROR_PAUSE);
                }
                self.observe(&mut w.availability, &summary).await?;
            }
        }
        Ok(pause.or_else(|| w.availability.until_probe()))
    }

    /// Claims a batch and starts it on the next connection. Returns how long to wait before the next
    /// claim, or `None` when the batch came back full (claim again at once).
    async fn claim_next(&self, w: &mut Worker) -> Result<Option<Duration>, DispatchError> {
        let limit = if w.availability.is_down() {
            PROBE_ROWS.min(w.dest.max_batch())
        } else {
            w.dest.max_batch()
        };
        let claimed = match self.claim(w.dest.name(), limit).await {
            Ok(claimed) => claimed,
            Err(e) if e.is_connection_error() => return Err(e),
            Err(e) => {
                warn!(error = %e, "dispatch round failed");
                return Ok(Some(ROUND_ERROR_PAUSE));
            }
        };
        let full = claimed.rows.len() >= limit && !w.availability.is_down();
        if !claimed.rows.is_empty() {
            w.next_connection += 1;
            let this = w.connections[w.next_connection % w.connections.len()].clone();
            let dest = w.dest.clone();
            w.in_flight.spawn(
                async move {
                    match this.process(dest.as_ref(), claimed).await {
                        Ok(processed) => Ok(processed.summary()),
                        Err(e) if e.is_connection_error() => Err(e),
                        Err(e) => {
                            warn!(error = %e, "dispatch round failed");
                            Ok(Summary::failed())
                        }
                    }
                }
                .in_current_span(),
            );
        }
        if full {
            return Ok(None);
        }
        let due = self
            .outbox
            .until_next_due(&self.client, w.dest.name())
            .await?;
        Ok(Some(
            due.unwrap_or(self.poll_interval).min(self.poll_interval),
        ))
    }

    /// Waits out `pause`, or less: until shutdown, a notification, or a finished batch that changes
    /// what to claim.
    async fn wait(
        &self,
        w: &mut Worker,
        stop: &mut watch::Receiver<bool>,
        pause: Duration,
    ) -> Result<(), DispatchError> {
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                changed = changed(&mut w.wakeups) => {
                    if !changed {
                        w.wakeups = None;
                    }
                    return Ok(());
                }
                Some(joined) = w.in_flight.join_next(), if !w.in_flight.is_empty() => {
                    // A batch that left rows to retry or waiting may have made a row due
                    // sooner than the pause, and one that found the platform back or down
                    // changes what to claim: look again.
                    let summary = finished(joined, w.dest.name())?;
                    let was_down = w.availability.is_down();
                    self.observe(&mut w.availability, &summary).await?;
                    if summary.progress == Progress::Rescheduled
                        || was_down != w.availability.is_down()
                    {
                        return Ok(());
                    }
                }
                _ = &mut sleep => return Ok(()),
            }
        }
    }

    /// Takes a finished batch into the destination's [`Availability`]; when it shows the platform
    /// back after an outage, the rows that outage put on backoff become due now.
    async fn observe(
        &self,
        availability: &mut Availability,
        summary: &Summary,
    ) -> Result<(), DispatchError> {
        let was_down = availability.is_down();
        let requeue = availability.observe(&self.config, summary);
        if !was_down && availability.is_down() {
            warn!(
                failed_batches = availability.failed_batches,
                "the platform answers no request: probing with one small batch at a time"
            );
        }
        if let Some(ids) = requeue {
            let requeued = self.outbox.make_due(&self.client, &ids).await?;
            info!(
                requeued,
                "the platform answers again: rows waiting on backoff are due now"
            );
        }
        Ok(())
    }
}

/// A finished batch, as the worker loop sees it.
pub(super) struct Summary {
    /// How it ended.
    pub(super) progress: Progress,
    /// See [`super::round::Processed::answered`].
    pub(super) answered: bool,
    /// See [`super::round::Processed::unanswered`].
    pub(super) unanswered: bool,
    /// See [`super::round::Processed::retry_after`].
    pub(super) retry_after: Option<Duration>,
    /// See [`super::round::Processed::backed_off`].
    pub(super) backed_off: Vec<i64>,
}

impl Summary {
    /// A round that failed without losing the connection.
    fn failed() -> Summary {
        Summary {
            progress: Progress::Failed,
            answered: false,
            unanswered: false,
            retry_after: None,
            backed_off: Vec::new(),
        }
    }
}

/// A destination's availability as its worker sees it.
///
/// After [`DOWN_AFTER_BATCHES`] batches in a row that the platform answered for no row (5xx,
/// timeouts, lost connections, 429s), the destination is *down*: instead of trying every due row
/// (and pushing each one's backoff further), the worker sends one probe of at most [`PROBE_ROWS`]
/// rows at a time, spaced by an exponential backoff capped at [`PROBE_MAX_INTERVAL`] (never less
/// than a `Retry-After`). The first batch the platform accepts ends the outage: the rows the outage
/// put on plain backoff are due at once, so the backlog drains at full speed (bounded by the
/// batch size and [`BATCHES_IN_FLIGHT`]). Rows that the platform asked to wait (`Retry-After`, or an
/// operator's problem) keep their time.
#[derive(Debug, Default)]
struct Availability {
    /// Batches in a row that the platform answered for no row.
    failed_batches: u32,
    /// While down: when the next probe may go.
    probe_at: Option<tokio::time::Instant>,
    /// Rows put on plain backoff since the last answered batch.
    backed_off: HashSet<i64>,
}

impl Availability {
    /// Whether the platform is considered down (probing).
    fn is_down(&self) -> bool {
        self.probe_at.is_some()
    }

    /// While down, how long until the next probe (`None`: claim now).
    fn until_probe(&self) -> Option<Duration> {
        let at = self.probe_at?;
        let now = tokio::time::Instant::now();
        (at > now).then(|| at - now)
    }

    /// Takes a finished batch into account; returns the rows to make due now when it shows the
    /// platform back after an outage.
    fn observe(&mut self, config: &DispatchConfig, summary: &Summary) -> Option<Vec<i64>> {
        if summary.answered {
            let was_down = self.probe_at.take().is_some();
            self.failed_batches = 0;
            let backed_off = std::mem::take(&mut self.backed_off);
            return (was_down && !backed_off.is_empty()).then(|| backed_off.into_iter().collect());
        }
        if !summary.unanswered {
            return None;
        }
        for id in &summary.backed_off {
            if self.backed_off.len() >= MAX_BACKED_OFF_TRACKED {
                break;
            }
            self.backed_off.insert(*id);
        }
        self.failed_batches = self.failed_batches.saturating_add(1);
        if self.failed_batches >= DOWN_AFTER_BATCHES {
            self.probe_at = Some(
                tokio::time::Instant::now()
                    + probe_delay(
                        config,
                        self.failed_batches - DOWN_AFTER_BATCHES,
                        summary.retry_after,
                    ),
            );
        }
        None
    }
}

/// The wait before the next probe after `failed_probes` unanswered ones: [`backoff`] with its cap
/// lowered to [`PROBE_MAX_INTERVAL`], never shorter than `retry_after`.
fn probe_delay(
    config: &DispatchConfig,
    failed_probes: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let max = u64::try_from(PROBE_MAX_INTERVAL.as_millis()).unwrap_or(u64::MAX);
    let probe = DispatchConfig {
        retry_initial_ms: config.retry_initial_ms.min(max),
        retry_max_ms: config.retry_max_ms.min(max),
        ..config.clone()
    };
    backoff(
        &probe,
        i32::try_from(failed_probes).unwrap_or(i32::MAX),
        retry_after,
    )
}

/// How a batch in flight ended, as far as the worker loop cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// Every row recorded; nothing became due sooner.
    Done,
    /// Some rows were put back to pending with a delay.
    Rescheduled,
    /// The round failed without losing the connection (logged): pause before the next claim.
    Failed,
}

/// Unwraps a finished batch task: connection errors and panics stop the worker.
fn finished(
    joined: Result<Result<Summary, DispatchError>, tokio::task::JoinError>,
    destination: &str,
) -> Result<Summary, DispatchError> {
    match joined {
        Ok(result) => result,
        Err(e) => Err(DispatchError::Worker {
            destination: destination.to_string(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::retry::tests::config;
    use super::*;

    fn batch(answered: bool, backed_off: &[i64], retry_after: Option<Duration>) -> Summary {
        Summary {
            progress: Progress::Rescheduled,
            answered,
            unanswered: !answered,
            retry_after,
            backed_off: backed_off.to_vec(),
        }
    }

    #[test]
    fn an_outage_is_probed_and_its_end_makes_the_backed_off_rows_due() {
        let c = config(20_000, 300_000);
        let mut a = Availability::default();
        // One unanswered batch is not an outage yet.
        assert_eq!(a.observe(&c, &batch(false, &[1, 2], None)), None);
        assert!(!a.is_down());
        // Two in a row are: probes only, at most PROBE_MAX_INTERVAL apart.
        assert_eq!(a.observe(&c, &batch(false, &[3], None)), None);
        assert!(a.is_down());
        assert!(a.until_probe().unwrap_or_default() <= PROBE_MAX_INTERVAL);
        // A Retry-After is respected even beyond that.
        a.observe(&c, &batch(false, &[], Some(Duration::from_secs(30))));
        assert!(a.until_probe().unwrap() >= Duration::from_secs(29));
        // The first answer ends it: every row the outage backed off is due again.
        let mut due = a.observe(&c, &batch(true, &[], None)).unwrap();
        due.sort();
        assert_eq!(due, [1, 2, 3]);
        assert!(!a.is_down() && a.until_probe().is_none());
        // An isolated retry while the platform answers is left to its own backoff.
        a.observe(&c, &batch(false, &[5], None));
        assert_eq!(a.observe(&c, &batch(true, &[], None)), None);
        assert!(a.backed_off.is_empty());
    }
}

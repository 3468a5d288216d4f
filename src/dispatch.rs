//! Dispatch: per destination, claim due rows of the control table under a lease, send them, and record each row's outcome.
//!
//! A worker per destination repeats one *round*: claim up to one platform batch of due `pending` rows
//! (`for update skip locked`, then a lease owned by this process), resolve retractions and restatements
//! against the conversion they adjust, send the rest through the [`Destination`], and write every row's
//! outcome in one statement. Rows are only ever updated by the lease owner, so several pgcapi processes
//! can dispatch from one control table without sending a row twice while its lease holds. A crash
//! leaves leased rows that are claimed again once the lease expires: at-least-once on the wire, made
//! effectively-once by the platforms' deduplication on `event_id` / `orderId`.
//!
//! Refunds (and deletes of the source row): a pending conversion is *cancellable* — its retraction
//! cancels it, its restatement replaces its value, and it is never sent — only when it was never
//! attempted (it cannot have reached the platform; a claim left behind by a process that died
//! mid-round counts as an attempt). A conversion that may have reached the platform (an attempt whose
//! answer was lost: a timeout, a dropped connection, a 5xx) is never cancelled, on any platform: the
//! control table would then say "not sent" about an event the platform may count. It is finished
//! first — sent again, its stored payload unchanged, which the platform deduplicates — and then the
//! adjustment goes to Google Ads, or is skipped as "platform cannot retract" for Meta and TikTok, so the
//! rows say what the platform holds. An adjustment whose conversion is pending waits (pending, short
//! delay) for its outcome; one whose conversion never existed, or was skipped or failed, is skipped
//! with that reason. [`resolve`] is the decision, as a pure function.
//!
//! Workers wake up on `NOTIFY {schema}_deliveries` (capture notifies after each commit), at the earliest
//! `next_attempt_at`, and otherwise poll every [`DEFAULT_POLL_INTERVAL`].

use crate::config::DispatchConfig;
use crate::destinations::{Destination, Outcome};
use crate::event::{Delivery, Kind};
use crate::outbox::{
    AdjustedConversion, Conversion, Outbox, OutboxError, Record, Recorded, Unreadable,
};
use crate::platform::Platform;
use rand::Rng;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client, Connection};
use tracing::{debug, info, info_span, warn, Instrument};

/// How often a worker looks for due rows when no notification arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long an adjustment waits when the conversion it adjusts is being sent by someone else.
const WAIT_FOR_IN_FLIGHT: Duration = Duration::from_secs(1);
/// Pause after a failed round that did not lose the connection (a statement error).
const ROUND_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// How many claimed batches of one destination a worker has in progress at once (being resolved,
/// sent or recorded); see [`Dispatcher::run`].
pub const BATCHES_IN_FLIGHT: usize = 3;

/// Dispatch stopped.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The control table could not be read or written.
    #[error(transparent)]
    Control(#[from] OutboxError),
    /// The control database could not be reached.
    #[error("connecting to the control database: {}", crate::pg::client::describe(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// A worker task panicked or was cancelled.
    #[error("dispatch worker for destination {destination} stopped: {message}")]
    Worker {
        /// The destination the worker served.
        destination: String,
        /// What happened to it.
        message: String,
    },
}

impl DispatchError {
    /// True when the control connection is gone: dispatch must be restarted with a new one.
    pub fn is_connection_error(&self) -> bool {
        match self {
            DispatchError::Control(e) => e.is_connection_error(),
            DispatchError::Connect(_) => true,
            DispatchError::Worker { .. } => false,
        }
    }
}

/// Sends the control table's pending rows to their destinations.
pub struct Dispatcher {
    /// The control connection, shared by the workers (tokio-postgres pipelines their statements).
    client: Arc<Client>,
    /// The control schema.
    outbox: Outbox,
    /// This dispatcher's lease owner id, unique per dispatcher.
    owner: String,
    /// Leases, retries and timeouts.
    config: DispatchConfig,
    /// One worker each.
    destinations: Vec<Arc<dyn Destination>>,
    /// Changes on every `NOTIFY` when this dispatcher drives its own connection.
    wakeups: Option<watch::Receiver<u64>>,
    /// The fallback poll interval.
    poll_interval: Duration,
    /// More control connections: destination worker `i` uses `[client, worker_clients…][i % n]`,
    /// so that the workers' statements run in parallel server processes.
    worker_clients: Vec<Arc<Client>>,
}

impl Dispatcher {
    /// A dispatcher over `client` (whose connection the caller drives; no notifications, polling only).
    pub fn new(
        client: Client,
        schema: &str,
        config: DispatchConfig,
        destinations: Vec<Box<dyn Destination>>,
    ) -> Dispatcher {
        Dispatcher {
            client: Arc::new(client),
            outbox: Outbox::new(schema),
            owner: format!(
                "pgcapi-{}-{:08x}",
                std::process::id(),
                rand::rng().random::<u32>()
            ),
            config,
            destinations: destinations.into_iter().map(Arc::from).collect(),
            wakeups: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            worker_clients: Vec::new(),
        }
    }

    /// Adds control connections (driven by the caller) for the destination workers beyond the first,
    /// which otherwise all queue their statements on one connection, served by one server process.
    /// Notifications still arrive on the first connection only.
    pub fn with_worker_clients(mut self, clients: Vec<Client>) -> Dispatcher {
        self.worker_clients = clients.into_iter().map(Arc::new).collect();
        self
    }

    /// This dispatcher on each of its control connections: the same owner, destinations and
    /// wake-ups.
    fn on_each_connection(self: &Arc<Self>) -> Vec<Arc<Dispatcher>> {
        (0..=self.worker_clients.len())
            .map(|i| self.on_connection(i))
            .collect()
    }

    /// This dispatcher on control connection `i` (0: the first).
    fn on_connection(self: &Arc<Self>, i: usize) -> Arc<Dispatcher> {
        match i {
            0 => self.clone(),
            i => Arc::new(Dispatcher {
                client: self.worker_clients[i - 1].clone(),
                outbox: self.outbox.clone(),
                owner: self.owner.clone(),
                config: self.config.clone(),
                destinations: self.destinations.clone(),
                wakeups: self.wakeups.clone(),
                poll_interval: self.poll_interval,
                worker_clients: Vec::new(),
            }),
        }
    }

    /// A dispatcher that drives `connection` itself and wakes up on its notifications (any TLS mode).
    pub fn with_connection<S, T>(
        client: Client,
        connection: Connection<S, T>,
        schema: &str,
        config: DispatchConfig,
        destinations: Vec<Box<dyn Destination>>,
    ) -> Dispatcher
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut dispatcher = Dispatcher::new(client, schema, config, destinations);
        dispatcher.wakeups = Some(drive(connection));
        dispatcher
    }

    /// Connects to the control database at `url` without TLS (local sockets, tests, the demo).
    pub async fn connect(
        url: &str,
        schema: &str,
        config: DispatchConfig,
        destinations: Vec<Box<dyn Destination>>,
    ) -> Result<Dispatcher, DispatchError> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(DispatchError::Connect)?;
        Ok(Dispatcher::with_connection(
            client,
            connection,
            schema,
            config,
            destinations,
        ))
    }

    /// Changes the fallback poll interval.
    pub fn with_poll_interval(mut self, interval: Duration) -> Dispatcher {
        self.poll_interval = interval;
        self
    }

    /// The lease owner id of this process, as stored in `deliveries.lease_owner`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs one worker per destination until `shutdown` turns true or its sender is dropped (a round in
    /// progress is finished first), or until the control connection is lost (an error: restart dispatch
    /// with a new connection). The first worker error stops the others.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), DispatchError> {
        if self.wakeups.is_some() {
            self.outbox.listen(&self.client).await?;
        }
        let this = Arc::new(self);
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let forward = {
            let stop_tx = stop_tx.clone();
            let mut shutdown = shutdown;
            tokio::spawn(async move {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
                let _ = stop_tx.send(true);
            })
        };
        let mut workers = tokio::task::JoinSet::new();
        let connections: Arc<[Arc<Dispatcher>]> = this.on_each_connection().into();
        for (index, dest) in this.destinations.iter().enumerate() {
            let name = dest.name().to_string();
            let task = connections[index % connections.len()].clone().worker(
                index,
                stop_rx.clone(),
                connections.clone(),
            );
            workers.spawn(async move { (name, task.await) });
        }
        if workers.is_empty() {
            // Nothing to dispatch to: still end on shutdown, like a worker would.
            let mut stop = stop_rx;
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        }
        let mut first_error = None;
        while let Some(joined) = workers.join_next().await {
            let error = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((_, Err(e))) => e,
                Err(e) => DispatchError::Worker {
                    destination: "?".into(),
                    message: e.to_string(),
                },
            };
            let _ = stop_tx.send(true);
            first_error.get_or_insert(error);
        }
        forward.abort();
        first_error.map_or(Ok(()), Err)
    }

    /// Claims and processes one round (at most one batch) for every destination; returns how many rows
    /// were claimed in total.
    pub async fn run_once(&self) -> Result<usize, DispatchError> {
        let mut total = 0;
        for dest in &self.destinations {
            total += self.round(dest.as_ref()).await?;
        }
        Ok(total)
    }

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
    async fn worker(
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
        let mut wakeups = self.wakeups.clone();
        let mut next_connection = index;
        async move {
            info!("dispatch worker started");
            let mut in_flight: tokio::task::JoinSet<Result<Summary, DispatchError>> =
                tokio::task::JoinSet::new();
            let mut availability = Availability::default();
            loop {
                if *stop.borrow() {
                    // Rounds in progress are finished first.
                    while let Some(joined) = in_flight.join_next().await {
                        finished(joined, dest.name())?;
                    }
                    info!("dispatch worker stopped");
                    return Ok(());
                }
                // What the platform reported later about requests it accepted.
                for report in dest.take_processing_reports() {
                    if let Err(e) = crate::outbox::record_processing(
                        self.client.as_ref(),
                        self.outbox.name(),
                        &report,
                    )
                    .await
                    {
                        warn!(error = %e, request_id = %report.request_id,
                            "cannot record the platform's processing report");
                    }
                }
                let mut pause = None;
                // While the platform is down, one probe at a time.
                while in_flight.len() >= BATCHES_IN_FLIGHT
                    || (availability.is_down() && !in_flight.is_empty())
                {
                    if let Some(joined) = in_flight.join_next().await {
                        let summary = finished(joined, dest.name())?;
                        if summary.progress == Progress::Failed {
                            pause = Some(ROUND_ERROR_PAUSE);
                        }
                        self.observe(&mut availability, &summary).await?;
                    }
                }
                if pause.is_none() {
                    pause = availability.until_probe();
                }
                let limit = if availability.is_down() {
                    PROBE_ROWS.min(dest.max_batch())
                } else {
                    dest.max_batch()
                };
                let pause = match pause {
                    Some(pause) => pause,
                    None => match self.claim(dest.name(), limit).await {
                        Ok(claimed) => {
                            let full = claimed.len() >= limit && !availability.is_down();
                            if !claimed.is_empty() {
                                next_connection += 1;
                                let this = connections[next_connection % connections.len()].clone();
                                let dest = dest.clone();
                                in_flight.spawn(
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
                                continue;
                            }
                            self.outbox
                                .until_next_due(&self.client, dest.name())
                                .await?
                                .unwrap_or(self.poll_interval)
                                .min(self.poll_interval)
                        }
                        Err(e) if e.is_connection_error() => return Err(e),
                        Err(e) => {
                            warn!(error = %e, "dispatch round failed");
                            ROUND_ERROR_PAUSE
                        }
                    },
                };
                let sleep = tokio::time::sleep(pause);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.changed() => break,
                        changed = changed(&mut wakeups) => {
                            if !changed {
                                wakeups = None;
                            }
                            break;
                        }
                        Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                            // A batch that left rows to retry or waiting may have made a row due
                            // sooner than the pause, and one that found the platform back or down
                            // changes what to claim: look again.
                            let summary = finished(joined, dest.name())?;
                            let was_down = availability.is_down();
                            self.observe(&mut availability, &summary).await?;
                            if summary.progress == Progress::Rescheduled
                                || was_down != availability.is_down()
                            {
                                break;
                            }
                        }
                        _ = &mut sleep => break,
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Claims, resolves, sends and records one batch for `dest`; returns how many rows were claimed.
    async fn round(&self, dest: &dyn Destination) -> Result<usize, DispatchError> {
        let claimed = self.claim_for(dest).await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        Ok(self.process(dest, claimed).await?.claimed)
    }

    /// Claims up to one batch of `dest`'s due rows.
    async fn claim_for(&self, dest: &dyn Destination) -> Result<Vec<Claimed>, DispatchError> {
        self.claim(dest.name(), dest.max_batch()).await
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

    /// Resolves, sends and records a claimed batch of `dest`.
    async fn process(
        &self,
        dest: &dyn Destination,
        claimed: Vec<Claimed>,
    ) -> Result<Processed, DispatchError> {
        let count = claimed.len();
        let mut records = Vec::with_capacity(count);
        let mut rows = Vec::with_capacity(count);
        for c in claimed {
            match c {
                Ok(d) => rows.push(d),
                Err(Unreadable { id, error }) => {
                    records.push(Record::new(id, Recorded::Failed, Some(error), 0))
                }
            }
        }
        let (to_send, resolved) = self.resolve_adjustments(rows).await?;
        let cancelled = resolved.cancelled;
        records.extend(resolved.records);
        let outcomes = if to_send.is_empty() {
            Vec::new()
        } else {
            dest.send(&to_send).await
        };
        let mut answered = false;
        let mut unanswered = false;
        let mut retry_after: Option<Duration> = None;
        let mut backed_off = Vec::new();
        for (d, outcome) in to_send.iter().zip(outcomes) {
            match &outcome {
                Outcome::Sent { .. } => {
                    answered = true;
                    crate::metrics::delivery_sent(dest.name(), d.created_at);
                }
                Outcome::Retry {
                    retry_after: after, ..
                } => {
                    unanswered = true;
                    match after {
                        None => backed_off.push(d.id),
                        Some(after) => retry_after = retry_after.max(Some(*after)),
                    }
                }
                Outcome::Failed { .. } | Outcome::Skipped { .. } => {}
            }
            records.push(self.record(d, outcome));
        }
        self.write(&records).await?;
        crate::metrics::deliveries_recorded(dest.name(), records.iter().map(|r| r.state.as_str()));
        crate::metrics::deliveries_recorded_n(
            dest.name(),
            Recorded::Cancelled.as_str(),
            cancelled as u64,
        );
        let tally = |state: Recorded| records.iter().filter(|r| r.state == state).count();
        info!(
            claimed = count,
            sent = tally(Recorded::Sent),
            failed = tally(Recorded::Failed),
            retried = tally(Recorded::Retry),
            skipped = tally(Recorded::Skipped),
            cancelled,
            waiting = tally(Recorded::Wait),
            "batch dispatched"
        );
        Ok(Processed {
            claimed: count,
            rescheduled: tally(Recorded::Retry) + tally(Recorded::Wait),
            answered,
            unanswered: unanswered && !answered,
            retry_after,
            backed_off,
        })
    }

    /// Claims up to `limit` due pending rows of `destination` under this process's lease (see
    /// [`Outbox::claim`]).
    async fn claim(&self, destination: &str, limit: usize) -> Result<Vec<Claimed>, DispatchError> {
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
        debug!(claimed = claimed.len(), "claimed deliveries");
        Ok(claimed)
    }

    /// Resolves the adjustments among `rows` against the conversions they adjust. Returns the rows to
    /// send (conversions, and adjustments of conversions already sent) and the records of the others.
    ///
    /// A pending conversion is cancelled by its retraction (or takes its restatement's value) when
    /// it is cancellable (module docs) and nobody else is sending it; otherwise the adjustment waits
    /// until the conversion has an outcome, and is then sent (Google) or skipped (Meta, TikTok).
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
        let mut dropped: HashSet<i64> = HashSet::new();
        let mut to_send = Vec::with_capacity(rows.len());
        let mut adjustments = Vec::new();
        for d in rows {
            if d.kind == Kind::Conversion {
                to_send.push(d);
            } else {
                adjustments.push(d);
            }
        }
        let mut send_adjustments = Vec::new();
        for mut d in adjustments {
            let target = targets
                .iter()
                .find(|t: &&AdjustedConversion| t.adjustment_id == d.id)
                .and_then(|t| t.conversion.as_ref());
            let view = target.map(|c| ConversionView {
                state: c.state.as_str(),
                may_have_been_sent: c.may_have_been_sent(&self.owner, &claimed_ids),
                mine: claimed_ids.contains(&c.id) && c.lease_owner.as_deref() == Some(&self.owner),
                leased: c.leased,
            });
            match resolve(d.kind, view) {
                Resolution::CancelBoth => {
                    let target = target.expect("resolved against a conversion");
                    if self
                        .outbox
                        .cancel_both(&self.client, &self.owner, target.id, d.id, &d.rule)
                        .await?
                    {
                        dropped.insert(target.id);
                        resolved.cancelled += 2;
                    } else {
                        resolved.wait(d.id, target.due_in);
                    }
                }
                Resolution::RestateUnsent => {
                    let target = target.expect("resolved against a conversion");
                    if self
                        .outbox
                        .restate_unsent(&self.client, &self.owner, target.id, d.id)
                        .await?
                    {
                        resolved.cancelled += 1;
                    } else {
                        resolved.wait(d.id, target.due_in);
                    }
                }
                Resolution::Wait => {
                    resolved.wait(d.id, target.map_or(Duration::ZERO, |t| t.due_in));
                }
                Resolution::Send => {
                    let target = target.expect("resolved against a conversion");
                    if !target
                        .earlier_adjustments
                        .iter()
                        .all(|id| claimed_ids.contains(id))
                    {
                        // An earlier refund of this conversion is still to be sent: it goes first,
                        // so that the last restatement is the one that stays.
                        resolved.wait(d.id, Duration::ZERO);
                        continue;
                    }
                    // An adjustment names the conversion as it was sent: a Data Manager restatement
                    // is its event again, Microsoft identifies it by its click id (or hashed email
                    // or phone).
                    if d.payload.keys.is_empty() {
                        if let Some(sent) = &target.payload {
                            d.payload.keys = sent.keys.clone();
                            d.payload.click_time = sent.click_time;
                            d.payload.consent = sent.consent;
                            d.payload.consent_column = sent.consent_column;
                        }
                    }
                    // The adjustment needs what the conversion was sent with.
                    if d.payload.conversion_action.is_none() {
                        d.payload.conversion_action = target.conversion_action.clone();
                    }
                    if d.currency.is_none() {
                        d.currency = target.currency.clone();
                    }
                    // Adjustments are keyed by, and timed after, the conversion as it was sent.
                    d.event_time = target.event_time;
                    send_adjustments.push(d);
                }
                Resolution::Cancelled => resolved.records.push(Record::new(
                    d.id,
                    Recorded::Cancelled,
                    Some("conversion was not sent yet".into()),
                    0,
                )),
                Resolution::Skip(reason) => resolved.skip(d.id, reason),
            }
        }
        to_send.retain(|d| !dropped.contains(&d.id));
        // Adjustments of sent conversions go to the destination, which sends them (Google) or answers
        // that it cannot retract (Meta, TikTok).
        to_send.extend(send_adjustments);
        Ok((to_send, resolved))
    }

    /// The record of one sent row's outcome.
    fn record(&self, d: &Delivery, outcome: Outcome) -> Record {
        match outcome {
            Outcome::Sent { platform_ref } => Record {
                platform_ref,
                ..Record::new(d.id, Recorded::Sent, None, 1)
            },
            Outcome::Failed { error } => Record::new(d.id, Recorded::Failed, Some(error), 1),
            Outcome::Skipped { reason } => Record::new(d.id, Recorded::Skipped, Some(reason), 0),
            Outcome::Retry { error, retry_after } => Record {
                delay: backoff(&self.config, d.attempts, retry_after),
                ..Record::new(d.id, Recorded::Retry, Some(error), 1)
            },
        }
    }

    /// Writes every record of a round in one statement and releases the leases (see
    /// [`Outbox::record`]).
    async fn write(&self, records: &[Record]) -> Result<(), DispatchError> {
        let updated = self
            .outbox
            .record(
                &self.client,
                &self.owner,
                self.config.give_up_after_secs,
                records,
            )
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

/// What a processed batch came to.
struct Processed {
    /// Rows claimed.
    claimed: usize,
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
    fn summary(self) -> Summary {
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

/// A finished batch, as the worker loop sees it.
struct Summary {
    /// How it ended.
    progress: Progress,
    /// See [`Processed::answered`].
    answered: bool,
    /// See [`Processed::unanswered`].
    unanswered: bool,
    /// See [`Processed::retry_after`].
    retry_after: Option<Duration>,
    /// See [`Processed::backed_off`].
    backed_off: Vec<i64>,
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
enum Progress {
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

/// Whether the platform can withdraw or restate a conversion it counted (platforms.md §7: Google Ads;
/// platforms-next.md §1: Microsoft Advertising offline conversions).
pub fn can_retract(platform: Platform) -> bool {
    platform.can_retract()
}

/// The retry delay after `attempts` earlier attempts: exponential from `retry_initial_ms`, capped at
/// `retry_max_ms`, with full jitter (uniform between zero and the cap, so that many rows failing
/// together do not retry together), and never shorter than the platform's `Retry-After`.
pub fn backoff(config: &DispatchConfig, attempts: i32, retry_after: Option<Duration>) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 62)).unwrap_or(0);
    let cap = config
        .retry_initial_ms
        .saturating_mul(1u64.checked_shl(exponent).unwrap_or(u64::MAX))
        .min(config.retry_max_ms)
        .max(1);
    let jittered = Duration::from_millis(rand::rng().random_range(0..=cap));
    jittered.max(retry_after.unwrap_or_default())
}

/// A claimed row, or the id of one that cannot be read back (it fails without being sent).
pub(crate) type Claimed = Result<Delivery, Unreadable>;

/// The records of adjustments resolved without sending.
#[derive(Default)]
struct Resolved {
    /// Records of adjustments decided without sending.
    records: Vec<Record>,
    /// Rows cancelled directly in the database (conversions and their adjustments).
    cancelled: usize,
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

/// What an adjustment's resolution needs to know about the conversion it adjusts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConversionView<'a> {
    /// Its state.
    pub state: &'a str,
    /// Whether a request carrying it may have reached the platform: an attempt was recorded (a
    /// timeout, a lost connection, a 5xx, a 429), or a lease other than this batch's holds or held
    /// it (a round in flight, or one that died before recording its outcome).
    pub may_have_been_sent: bool,
    /// Whether this batch claimed it.
    pub mine: bool,
    /// Whether its lease is still valid.
    pub leased: bool,
}

/// What becomes of an adjustment (a retraction or restatement) of a conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// The conversion never reached the platform: cancel it and the retraction together.
    CancelBoth,
    /// The conversion never reached the platform: it takes the restated value, the restatement closes.
    RestateUnsent,
    /// The conversion is being sent, or may have reached the platform and must be finished (sent,
    /// its stored payload as it is) first: look again once it has an outcome.
    Wait,
    /// The conversion was sent: the adjustment goes to the destination, which retracts or restates
    /// it (Google Ads) or answers that it cannot (Meta, TikTok: skipped, `platform cannot retract`).
    Send,
    /// The conversion was cancelled before it was sent: so is the adjustment.
    Cancelled,
    /// Nothing to adjust, for this reason.
    Skip(String),
}

/// Resolves an adjustment of kind `kind` against its conversion (`None`: never recorded).
///
/// The rule that keeps the control table truthful: a conversion that may have reached the platform is
/// never cancelled (the platform may count it); it is finished first, and the adjustment then follows
/// what the platform can do. Only a conversion that was never attempted is cancelled (retraction) or
/// changed in place (restatement), and only while nobody else holds it.
pub(crate) fn resolve(kind: Kind, conversion: Option<ConversionView<'_>>) -> Resolution {
    let verb = if kind == Kind::Retraction {
        "retract"
    } else {
        "restate"
    };
    let Some(c) = conversion else {
        return Resolution::Skip(format!("no conversion to {verb}"));
    };
    match c.state {
        "pending" if c.may_have_been_sent => Resolution::Wait,
        "pending" if kind == Kind::Retraction && (c.mine || !c.leased) => Resolution::CancelBoth,
        "pending" if kind == Kind::Restatement && !c.mine && !c.leased => Resolution::RestateUnsent,
        "pending" => Resolution::Wait,
        "sent" => Resolution::Send,
        "cancelled" => Resolution::Cancelled,
        state @ ("failed" | "skipped") => Resolution::Skip(format!(
            "the conversion was {state}, not sent: nothing to {verb}"
        )),
        _ => Resolution::Skip(format!("no conversion to {verb}")),
    }
}

impl Conversion {
    /// Whether a request carrying it may have reached the platform (see [`ConversionView`]).
    fn may_have_been_sent(&self, owner: &str, claimed: &HashSet<i64>) -> bool {
        let claimed_by_this_batch =
            claimed.contains(&self.id) && self.lease_owner.as_deref() == Some(owner);
        self.attempts > 0 || (self.lease_owner.is_some() && !claimed_by_this_batch)
    }
}

/// Drives a control connection in the background and counts its notifications; the receiver changes
/// on every `NOTIFY`, and its sender is dropped when the connection ends.
fn drive<S, T>(mut connection: Connection<S, T>) -> watch::Receiver<u64>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => tx.send_modify(|n| *n += 1),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    warn!(error = %crate::pg::client::describe(&e), "control connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    rx
}

/// Waits for the next notification; false when there will be none (no listener or connection gone).
async fn changed(wakeups: &mut Option<watch::Receiver<u64>>) -> bool {
    match wakeups {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(initial: u64, max: u64) -> DispatchConfig {
        DispatchConfig {
            retry_initial_ms: initial,
            retry_max_ms: max,
            ..DispatchConfig::default()
        }
    }

    /// A conversion as an adjustment sees it.
    fn conv(state: &str, may_have_been_sent: bool, mine: bool, leased: bool) -> ConversionView<'_> {
        ConversionView {
            state,
            may_have_been_sent,
            mine,
            leased,
        }
    }

    #[test]
    fn a_conversion_that_may_have_reached_the_platform_is_never_cancelled() {
        use Kind::{Restatement as Rs, Retraction as Rt};
        use Resolution::*;
        let skip = |s: &str| Skip(s.to_string());
        #[rustfmt::skip]
        let table: Vec<(Kind, Option<ConversionView>, Resolution)> = vec![
            // Never attempted, nobody else holds it: cancelled, or changed in place.
            (Rt, Some(conv("pending", false, false, false)), CancelBoth),
            (Rt, Some(conv("pending", false, true, true)), CancelBoth),
            (Rs, Some(conv("pending", false, false, false)), RestateUnsent),
            // In this very batch: the restatement waits for it to be sent.
            (Rs, Some(conv("pending", false, true, true)), Wait),
            // Held by another process: wait for its outcome.
            (Rt, Some(conv("pending", false, false, true)), Wait),
            // An attempt whose answer was lost (timeout, 5xx, a crash mid-round): finished first,
            // on every platform, whoever holds it.
            (Rt, Some(conv("pending", true, false, false)), Wait),
            (Rt, Some(conv("pending", true, true, true)), Wait),
            (Rs, Some(conv("pending", true, false, false)), Wait),
            // Then the adjustment follows what the platform can do.
            (Rt, Some(conv("sent", true, false, false)), Send),
            (Rs, Some(conv("sent", false, false, false)), Send),
            (Rt, Some(conv("cancelled", false, false, false)), Cancelled),
            (Rt, Some(conv("failed", true, false, false)),
                skip("the conversion was failed, not sent: nothing to retract")),
            (Rs, Some(conv("skipped", false, false, false)),
                skip("the conversion was skipped, not sent: nothing to restate")),
            (Rt, None, skip("no conversion to retract")),
            (Rs, None, skip("no conversion to restate")),
        ];
        for (kind, conversion, expected) in table {
            assert_eq!(
                resolve(kind, conversion),
                expected,
                "{kind:?} of {conversion:?}"
            );
        }
    }

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

    #[test]
    fn backoff_grows_exponentially_within_its_cap() {
        let c = config(100, 1_000);
        for _ in 0..200 {
            assert!(backoff(&c, 0, None) <= Duration::from_millis(100));
            assert!(backoff(&c, 2, None) <= Duration::from_millis(400));
            assert!(backoff(&c, 30, None) <= Duration::from_millis(1_000));
            assert!(backoff(&c, i32::MAX, None) <= Duration::from_millis(1_000));
        }
    }

    #[test]
    fn backoff_is_jittered_over_the_whole_range() {
        let c = config(1_000, 1_000);
        let samples: Vec<Duration> = (0..200).map(|_| backoff(&c, 0, None)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_millis(300)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(700)));
    }

    #[test]
    fn retry_after_is_a_floor_even_beyond_the_cap() {
        let c = config(100, 1_000);
        let d = backoff(&c, 3, Some(Duration::from_secs(30)));
        assert_eq!(d, Duration::from_secs(30));
    }
}

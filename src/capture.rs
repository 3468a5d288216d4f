//! The capture worker: replication stream → rules → control table, with the slot position kept in step.
//!
//! The LSN rule: the flush position reported to PostgreSQL is always a commit end whose rows, and those of
//! every earlier transaction, are committed in the control table together with the stored checkpoint.
//! Rows of many small source transactions share one control transaction (group commit, bounded by
//! `capture.group_max_rows` and `capture.group_max_ms`); a larger transaction is handed to the writer in
//! parts of `group_max_rows` rows, so memory stays bounded, which it inserts into one control transaction
//! committed with the checkpoint at the source commit: the rows of a source transaction always become
//! visible together. When nothing is in
//! flight, the keepalive position is stored and confirmed so that WAL of unrelated tables is released.
//!
//! Control transactions are written by a [`ControlWriter`] task that owns the control connection, so
//! decoding and rule evaluation of the next group overlap the insert of the previous one. Groups reach it
//! in order, and a group is handed over only once the previous one is committed, so at most two groups
//! are in memory; while the writer is busy the next group keeps growing (group commit). The session
//! advances its confirmed position only from the writer's acknowledgements, each sent after the commit
//! holding the rows and the checkpoint.

use crate::config::Config;
use crate::decode::{self, fill_unchanged_toast, PgOutput, RelationCache};
use crate::lsn::Lsn;
use crate::outbox::{self, NewDelivery, OutboxError};
use crate::rules::{Bound, DropCounts, RuleError, Rules, TxContext};
use crate::source::{
    ConnInfo, ReplicationConnection, ReplicationMessage, ReplicationStream, SourceError,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The first wait before reconnecting after an outage; it doubles up to 10 s while outages go on.
const INITIAL_RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// A session that streamed at least this long ended a healthy period: the backoff starts again.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Startup options of the replication connection: fixed formats for the values pgoutput prints.
pub const REPLICATION_OPTIONS: &str =
    "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c wal_sender_timeout=60s";

/// Capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The replication connection failed.
    #[error("replication connection: {0}")]
    Source(#[from] SourceError),
    /// A pgoutput message could not be decoded.
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
    /// A rule cannot be applied (dropped column, unparseable type).
    #[error("{error} (at LSN {lsn}; the slot stays before this change)")]
    Rule {
        /// What is wrong.
        error: RuleError,
        /// Where in the WAL.
        lsn: Lsn,
    },
    /// The control table could not be written.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The control database connection could not be opened.
    #[error("control database: {0}")]
    Db(String),
    /// The slot's confirmed position is ahead of what pgcapi recorded.
    #[error(
        "slot {slot:?} was advanced to {slot_lsn} by something other than this pgcapi, but pgcapi has \
         recorded changes only up to {checkpoint}: the changes in between were never captured. Recreate \
         the slot (and backfill), or if this is intended, update {schema}.checkpoints"
    )]
    SlotAhead {
        /// The slot.
        slot: String,
        /// The slot's confirmed_flush_lsn.
        slot_lsn: Lsn,
        /// The stored checkpoint.
        checkpoint: Lsn,
        /// The control schema.
        schema: String,
    },
    /// The slot does not exist.
    #[error("replication slot {0:?} does not exist: run `pgcapi setup` first")]
    NoSlot(String),
    /// A message arrived out of order.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl CaptureError {
    /// True for outages worth waiting out (connections lost or refused); false for problems that need an
    /// operator (config, schema, data).
    pub fn is_retryable(&self) -> bool {
        match self {
            CaptureError::Source(e) => e.is_retryable(),
            CaptureError::Outbox(e) => e.is_connection_error(),
            CaptureError::Db(_) => true,
            _ => false,
        }
    }
}

/// Progress counters, shared with status and metrics.
#[derive(Debug, Default, Clone)]
pub struct CaptureStats {
    /// Row changes decoded.
    pub changes: u64,
    /// Control-table rows written (new ones).
    pub rows_inserted: u64,
    /// The last confirmed (flushed) LSN.
    pub confirmed: Lsn,
    /// Identifiers dropped as invalid.
    pub dropped_keys: u64,
}

/// The capture worker for one slot.
pub struct Capture {
    config: Arc<Config>,
    rules: Rules,
    source: ConnInfo,
    control: ConnInfo,
    stats: watch::Sender<CaptureStats>,
    /// Stop cleanly once everything up to this position is recorded (benchmarks and tests).
    stop_at: Option<Lsn>,
}

impl Capture {
    /// Prepares a capture worker; connections are opened by [`Capture::run`].
    pub fn new(config: Arc<Config>) -> Result<Capture, CaptureError> {
        let source: ConnInfo = config
            .source
            .url
            .expose()
            .parse()
            .map_err(|e| CaptureError::Db(format!("source.url: {e}")))?;
        let control: ConnInfo = config
            .source
            .control_url()
            .expose()
            .parse()
            .map_err(|e| CaptureError::Db(format!("source.control_url: {e}")))?;
        let rules = Rules::new(&config);
        let (stats, _) = watch::channel(CaptureStats::default());
        Ok(Capture {
            config,
            rules,
            source,
            control,
            stats,
            stop_at: None,
        })
    }

    /// Makes [`Capture::run`] return once every change up to `lsn` is recorded and confirmed, as if
    /// shut down there. For benchmarks and tests that replay a known stretch of WAL; `run` never stops
    /// by itself otherwise.
    pub fn stop_at(mut self, lsn: Lsn) -> Capture {
        self.stop_at = Some(lsn);
        self
    }

    /// A receiver of progress counters.
    pub fn stats(&self) -> watch::Receiver<CaptureStats> {
        self.stats.subscribe()
    }

    /// Runs until `shutdown` turns true; reconnects after outages; returns an error only for problems
    /// that need an operator.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), CaptureError> {
        let mut delay = INITIAL_RECONNECT_DELAY;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let started = Instant::now();
            let outcome = self.session(&mut shutdown).await;
            if started.elapsed() >= HEALTHY_SESSION {
                // The outage is new, not the previous one going on: start the backoff again.
                delay = INITIAL_RECONNECT_DELAY;
            }
            match outcome {
                Ok(()) => return Ok(()),
                Err(SessionEnd::SlotInUse) => {
                    crate::metrics::set_capture_state(crate::metrics::CaptureState::Standby);
                    info!(slot = %self.config.source.slot, "another process holds the slot; waiting to take over");
                    delay = Duration::from_secs(1);
                }
                Err(SessionEnd::Error(e)) if e.is_retryable() => {
                    crate::metrics::set_capture_state(crate::metrics::CaptureState::Reconnecting);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "capture interrupted; reconnecting");
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(SessionEnd::Error(e)) => return Err(e),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), SessionEnd> {
        let schema = self.config.source.schema.clone();
        let slot = self.config.source.slot.clone();
        let control = crate::db::connect(&self.control)
            .await
            .map_err(|e| CaptureError::Db(crate::error_chain(&e)))?;
        let checkpoint = outbox::load_checkpoint(&control, &schema, &slot).await?;
        let source_sql = crate::db::connect(&self.source)
            .await
            .map_err(|e| CaptureError::Db(crate::error_chain(&e)))?;
        let slot_lsn = slot_position(&source_sql, &slot).await?;
        verify_not_ahead(&slot, &schema, slot_lsn, checkpoint)?;
        let connection = ReplicationConnection::connect(&self.source, REPLICATION_OPTIONS)
            .await
            .map_err(CaptureError::from)?;
        let stream = match connection
            .start_logical(&slot, Lsn::ZERO, &self.config.source.publication)
            .await
        {
            Ok(stream) => stream,
            Err(e) if e.is_slot_in_use() => return Err(SessionEnd::SlotInUse),
            Err(e) => return Err(CaptureError::from(e).into()),
        };
        // Verify again now that we hold the slot: nothing may have moved it in between.
        let slot_lsn = slot_position(&source_sql, &slot).await?;
        verify_not_ahead(&slot, &schema, slot_lsn, checkpoint)?;
        drop(source_sql);
        let start = checkpoint.unwrap_or(slot_lsn).max(slot_lsn);
        info!(%slot, start = %start, "capture started");
        crate::metrics::set_capture_state(crate::metrics::CaptureState::Streaming);
        let writer = ControlWriter::start(control, schema.clone(), slot.clone());
        let mut session = Session {
            capture: self,
            stream,
            writer,
            queued: start,
            relations: RelationCache::new(),
            bound: HashMap::new(),
            tx: None,
            ordinal: 0,
            group: Vec::new(),
            spare: Vec::new(),
            group_complete: 0,
            group_end: None,
            group_deadline: None,
            confirmed: start,
            received: start,
            keepalive_end: start,
            drops: DropCounts::default(),
            last_status: Instant::now(),
            uncounted: 0,
        };
        let result = session.pump(shutdown).await;
        match result {
            Ok(()) => {
                session.finish().await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

enum SessionEnd {
    SlotInUse,
    Error(CaptureError),
}

impl From<CaptureError> for SessionEnd {
    fn from(e: CaptureError) -> Self {
        SessionEnd::Error(e)
    }
}

impl From<OutboxError> for SessionEnd {
    fn from(e: OutboxError) -> Self {
        SessionEnd::Error(e.into())
    }
}

async fn slot_position(client: &tokio_postgres::Client, slot: &str) -> Result<Lsn, CaptureError> {
    let row = client
        .query_opt(
            "select coalesce(confirmed_flush_lsn, '0/0')::text from pg_replication_slots \
             where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| CaptureError::Db(format!("reading slot {slot:?}: {e}")))?
        .ok_or_else(|| CaptureError::NoSlot(slot.to_string()))?;
    row.get::<_, String>(0)
        .parse()
        .map_err(|e| CaptureError::Protocol(format!("slot position: {e}")))
}

fn verify_not_ahead(
    slot: &str,
    schema: &str,
    slot_lsn: Lsn,
    checkpoint: Option<Lsn>,
) -> Result<(), CaptureError> {
    match checkpoint {
        Some(checkpoint) if slot_lsn > checkpoint => Err(CaptureError::SlotAhead {
            slot: slot.to_string(),
            slot_lsn,
            checkpoint,
            schema: schema.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The open source transaction.
struct OpenTx {
    context: TxContext,
}

/// One replication session's state.
struct Session<'a> {
    capture: &'a Capture,
    stream: ReplicationStream,
    /// Writes control transactions in order, off the decoding path.
    writer: ControlWriter,
    /// The newest checkpoint handed to the writer (confirmed once acknowledged).
    queued: Lsn,
    relations: RelationCache,
    bound: HashMap<u32, Option<Bound>>,
    tx: Option<OpenTx>,
    ordinal: u64,
    /// Rows waiting for the next control transaction.
    group: Vec<NewDelivery>,
    /// An emptied group buffer back from the writer, to be the next group.
    spare: Vec<NewDelivery>,
    /// How many rows at the front of `group` belong to complete source transactions; the rest belong
    /// to the open one and wait for its commit, so that the rows of one source transaction (a payment
    /// and its refund) become visible to dispatch together. A transaction larger than
    /// `group_max_rows` is handed over in parts of one control transaction, committed at its commit.
    group_complete: usize,
    /// The commit end of the newest complete transaction in the group.
    group_end: Option<Lsn>,
    group_deadline: Option<tokio::time::Instant>,
    /// The newest position stored and reported as flushed.
    confirmed: Lsn,
    /// The newest WAL end received.
    received: Lsn,
    /// The newest keepalive position seen while no transaction was open.
    keepalive_end: Lsn,
    drops: DropCounts,
    last_status: Instant,
    /// Changes decoded and not yet added to the shared counters.
    uncounted: u64,
}

/// How many changes are counted locally before the shared counters are updated.
const CHANGES_PER_STATS_UPDATE: u64 = 1_000;

/// A control transaction for the writer: rows, and the checkpoint to store with them. A job without a
/// checkpoint is a part: the writer keeps its transaction open for the following jobs, up to one with a
/// checkpoint, and commits them together.
struct WriteJob {
    rows: Vec<NewDelivery>,
    checkpoint: Option<Lsn>,
}

/// A control transaction the writer committed.
struct Written {
    rows: usize,
    /// The job's rows, handed back to be dropped on the capture side and their buffer reused for the
    /// next group. A group buffer is megabytes: freeing and allocating one per group made the allocator
    /// sweep its free lists each time. And rows freed by the thread that allocated them go back to its
    /// own caches, where the writer's thread would return them to another thread's arena, one locked
    /// free at a time.
    spare: Vec<NewDelivery>,
    inserted: u64,
    checkpoint: Option<Lsn>,
    elapsed: Duration,
}

/// The task that owns the control connection and commits [`WriteJob`]s one by one, in order.
struct ControlWriter {
    jobs: Option<tokio::sync::mpsc::Sender<WriteJob>>,
    acks: tokio::sync::mpsc::UnboundedReceiver<Result<Written, CaptureError>>,
    task: tokio::task::JoinHandle<()>,
    /// Jobs sent and not acknowledged yet.
    in_flight: usize,
}

impl ControlWriter {
    /// Starts the task.
    fn start(client: tokio_postgres::Client, schema: String, slot: String) -> ControlWriter {
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<WriteJob>(1);
        let (ack, acks) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // A control transaction left open by parts (jobs without a checkpoint), committed by the
            // next job that has one.
            let mut open: Option<outbox::OpenGroup> = None;
            while let Some(job) = queue.recv().await {
                let started = Instant::now();
                let result = match (open.take(), job.checkpoint) {
                    (None, Some(lsn)) => {
                        outbox::write_group(&client, &schema, &slot, &job.rows, lsn).await
                    }
                    (group, checkpoint) => {
                        async {
                            let mut group = match group {
                                Some(group) => group,
                                None => outbox::OpenGroup::begin(&client).await?,
                            };
                            group.add(&client, &schema, &job.rows).await?;
                            match checkpoint {
                                Some(lsn) => group.commit(&client, &schema, &slot, lsn).await,
                                None => {
                                    open = Some(group);
                                    Ok(0)
                                }
                            }
                        }
                        .await
                    }
                };
                let failed = result.is_err();
                let rows = job.rows.len();
                let spare = job.rows;
                let _ = ack.send(
                    result
                        .map(|inserted| Written {
                            rows,
                            spare,
                            inserted,
                            checkpoint: job.checkpoint,
                            elapsed: started.elapsed(),
                        })
                        .map_err(CaptureError::from),
                );
                if failed {
                    // Nothing after a failed transaction may be committed: the session stops.
                    return;
                }
            }
        });
        ControlWriter {
            jobs: Some(jobs),
            acks,
            task,
            in_flight: 0,
        }
    }

    /// Queues a job. Fails with the writer's error if it has stopped.
    async fn send(&mut self, job: WriteJob) -> Result<(), CaptureError> {
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(job).await.is_ok(),
            None => false,
        };
        if sent {
            self.in_flight += 1;
            Ok(())
        } else {
            Err(self.failure().await)
        }
    }

    /// The next acknowledgement; pending while nothing is in flight.
    async fn next(&mut self) -> Result<Written, CaptureError> {
        if self.in_flight == 0 {
            return std::future::pending().await;
        }
        match self.acks.recv().await {
            Some(result) => {
                self.in_flight -= 1;
                result
            }
            None => Err(CaptureError::Db(
                "the control writer stopped unexpectedly".to_string(),
            )),
        }
    }

    /// Why the writer stopped: its error, found among the acknowledgements.
    async fn failure(&mut self) -> CaptureError {
        while let Some(result) = self.acks.recv().await {
            if let Err(e) = result {
                return e;
            }
        }
        CaptureError::Db("the control writer stopped unexpectedly".to_string())
    }
}

impl Drop for ControlWriter {
    fn drop(&mut self) {
        // A session that ends with an error leaves queued jobs unwritten: nothing was confirmed for them.
        self.task.abort();
    }
}

impl Session<'_> {
    async fn pump(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), CaptureError> {
        let interval = Duration::from_millis(self.capture.config.capture.status_interval_ms);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(stop) = self.capture.stop_at {
                if self.idle() && self.keepalive_end >= stop {
                    self.advance_idle().await?;
                }
                if self.confirmed >= stop {
                    return Ok(());
                }
            }
            let deadline = self.group_deadline;
            // Group commit: while the writer commits one group, the next keeps growing (up to
            // group_max_rows) and goes as soon as the writer is free.
            let flush_due = deadline.is_some() && self.writer.in_flight == 0;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if flush_due => {
                    self.flush_group().await?;
                }
                message = self.stream.next() => {
                    match message? {
                        None => return Err(CaptureError::Source(SourceError::Protocol(
                            "the server ended the replication stream".to_string()))),
                        Some(ReplicationMessage::XLogData { wal_start, wal_end, data, .. }) => {
                            self.received = self.received.max(wal_end);
                            let message = decode::decode(&data, wal_start)?;
                            self.handle(message, wal_start).await?;
                        }
                        Some(ReplicationMessage::Keepalive { wal_end, reply_requested, .. }) => {
                            self.received = self.received.max(wal_end);
                            if self.idle() {
                                self.keepalive_end = self.keepalive_end.max(wal_end);
                            }
                            if reply_requested {
                                self.advance_idle().await?;
                                self.send_status(false).await?;
                            }
                        }
                    }
                }
                written = self.writer.next() => {
                    self.acknowledged(written?).await?;
                }
                _ = ticker.tick() => {
                    self.advance_idle().await?;
                    self.send_status(false).await?;
                }
            }
        }
    }

    /// The writer committed a control transaction: count it, and confirm its checkpoint.
    async fn acknowledged(&mut self, mut written: Written) -> Result<(), CaptureError> {
        written.spare.clear();
        if written.spare.capacity() > self.spare.capacity() {
            self.spare = std::mem::take(&mut written.spare);
        }
        if written.inserted > 0 {
            crate::metrics::events_captured(written.inserted);
            self.capture
                .stats
                .send_modify(|s| s.rows_inserted += written.inserted);
        }
        debug!(
            rows = written.rows,
            inserted = written.inserted,
            checkpoint = ?written.checkpoint.map(|l| l.to_string()),
            elapsed_ms = written.elapsed.as_millis() as u64,
            "control transaction committed"
        );
        if let Some(checkpoint) = written.checkpoint {
            if checkpoint > self.confirmed {
                self.confirmed = checkpoint;
                self.keepalive_end = self.keepalive_end.max(checkpoint);
                self.send_status(false).await?;
            }
        }
        Ok(())
    }

    /// True when no transaction is open and nothing waits to be written.
    fn idle(&self) -> bool {
        self.tx.is_none() && self.group.is_empty() && self.group_end.is_none()
    }

    async fn handle(&mut self, message: PgOutput, at: Lsn) -> Result<(), CaptureError> {
        match message {
            PgOutput::Begin(begin) => {
                self.tx = Some(OpenTx {
                    context: TxContext {
                        commit_lsn: begin.final_lsn,
                        commit_time: begin.commit_time,
                    },
                });
                self.ordinal = 0;
            }
            PgOutput::Commit(commit) => {
                if self.tx.take().is_none() {
                    return Err(CaptureError::Protocol(format!(
                        "Commit without Begin at {at}"
                    )));
                }
                crate::metrics::transaction_committed();
                self.group_end = Some(commit.end_lsn);
                self.group_complete = self.group.len();
                self.publish_changes();
                if self.group.len() >= self.capture.config.capture.group_max_rows {
                    self.flush_group().await?;
                } else if self.group_deadline.is_none() {
                    self.group_deadline = Some(
                        tokio::time::Instant::now()
                            + Duration::from_millis(self.capture.config.capture.group_max_ms),
                    );
                }
            }
            PgOutput::Relation(relation) => {
                let oid = relation.oid;
                let relation = self.relations.insert(relation);
                let bound = self
                    .capture
                    .rules
                    .bind(relation)
                    .map_err(|error| CaptureError::Rule { error, lsn: at })?;
                self.bound.insert(oid, bound);
            }
            PgOutput::Insert(insert) => {
                self.change(insert.relation, &insert.new, at).await?;
            }
            PgOutput::Update(mut update) => {
                fill_unchanged_toast(&mut update.new, update.old.as_ref());
                self.change(update.relation, &update.new, at).await?;
            }
            PgOutput::Delete(delete) => {
                self.bump_changes();
                self.deleted(delete, at).await?;
            }
            PgOutput::Truncate(_) => {
                self.bump_changes();
            }
            PgOutput::Origin(_) | PgOutput::Type(_) | PgOutput::Message(_) => {}
        }
        Ok(())
    }

    /// A DELETE: retractions of the deleted row's conversions (rules with `on_delete = "retract"`),
    /// recorded where such a conversion exists; see [`Rules::evaluate_delete`].
    async fn deleted(&mut self, delete: decode::Delete, at: Lsn) -> Result<(), CaptureError> {
        let Some(tx) = self.tx.as_ref().map(|t| t.context) else {
            return Err(CaptureError::Protocol(format!(
                "row change outside a transaction at {at}"
            )));
        };
        let Some(Some(bound)) = self.bound.get(&delete.relation) else {
            return Ok(());
        };
        let unmatched = self
            .capture
            .rules
            .evaluate_delete(bound, &delete.old, tx, &mut self.group);
        for rule in unmatched {
            warn!(
                rule = %rule,
                table = %bound.relation().qualified_name(),
                "a DELETE cannot be matched to this rule's conversion: its event_id reads columns \
                 outside the table's replica identity key. Set REPLICA IDENTITY FULL on the table \
                 for deletes to retract conversions (or on_delete = \"ignore\" to silence this)"
            );
        }
        if self.group.len() >= self.capture.config.capture.group_max_rows {
            self.flush_group().await?;
            if self.group.len() >= self.capture.config.capture.group_max_rows {
                self.group_deadline = None;
                self.write(None).await?;
            }
        }
        Ok(())
    }

    /// Counts a row change; the shared counter is updated every [`CHANGES_PER_STATS_UPDATE`] changes
    /// and at each commit (a shared update per change cost more than decoding the change).
    fn bump_changes(&mut self) {
        self.uncounted += 1;
        if self.uncounted >= CHANGES_PER_STATS_UPDATE {
            self.publish_changes();
        }
    }

    /// Adds the changes counted since the last update to the shared counters.
    fn publish_changes(&mut self) {
        if self.uncounted > 0 {
            let n = std::mem::take(&mut self.uncounted);
            crate::metrics::changes_decoded(n);
            self.capture.stats.send_modify(|s| s.changes += n);
        }
    }

    async fn change(
        &mut self,
        relation: u32,
        new: &decode::Tuple,
        at: Lsn,
    ) -> Result<(), CaptureError> {
        self.bump_changes();
        let Some(tx) = self.tx.as_ref().map(|t| t.context) else {
            return Err(CaptureError::Protocol(format!(
                "row change outside a transaction at {at}"
            )));
        };
        let Some(bound) = self.bound.get(&relation) else {
            return Err(CaptureError::Protocol(format!(
                "change for relation {relation} before its Relation message at {at}"
            )));
        };
        let Some(bound) = bound else {
            return Ok(());
        };
        self.ordinal += 1;
        let before = self.drops.total;
        self.capture
            .rules
            .evaluate_into(
                bound,
                new,
                tx,
                self.ordinal,
                &mut self.drops,
                &mut self.group,
            )
            .map_err(|error| CaptureError::Rule { error, lsn: at })?;
        let dropped = self.drops.total - before;
        if dropped > 0 {
            self.capture
                .stats
                .send_modify(|s| s.dropped_keys += dropped);
        }
        let max = self.capture.config.capture.group_max_rows;
        if self.group.len() >= max {
            // A full group: the complete transactions in it go now, committed with their checkpoint;
            // the rows of the open one stay for its commit.
            self.flush_group().await?;
            if self.group.len() >= max {
                // The open transaction alone fills a group: bound memory by handing it over as a part
                // of a control transaction that the writer commits with the checkpoint at its commit.
                self.group_deadline = None;
                self.write(None).await?;
            }
        }
        Ok(())
    }

    /// Hands the group's complete transactions and the checkpoint of the newest to the writer; the
    /// checkpoint is confirmed once the writer has committed it. Rows of a transaction still open stay
    /// in the group until its commit, so a source transaction's rows are committed together.
    async fn flush_group(&mut self) -> Result<(), CaptureError> {
        self.group_deadline = None;
        let Some(end) = self.group_end.take() else {
            return Ok(());
        };
        // Rows of a transaction still open (the deadline can fire in the middle of one) stay.
        let open = self
            .group
            .split_off(self.group_complete.min(self.group.len()));
        let written = self.write(Some(end)).await;
        // Into the group `write` sized for a full group, rather than replacing it with a small one.
        self.group.extend(open);
        written
    }

    async fn write(&mut self, checkpoint: Option<Lsn>) -> Result<(), CaptureError> {
        let next = if self.spare.capacity() > 0 {
            std::mem::take(&mut self.spare)
        } else {
            Vec::with_capacity(self.capture.config.capture.group_max_rows.min(8192))
        };
        let rows = std::mem::replace(&mut self.group, next);
        self.group_complete = 0;
        if let Some(checkpoint) = checkpoint {
            self.queued = self.queued.max(checkpoint);
        }
        self.send_job(WriteJob { rows, checkpoint }).await
    }

    /// Hands a job to the writer once the previous one is committed: one group is written while the
    /// next is decoded, and no more than those two are held in memory.
    async fn send_job(&mut self, job: WriteJob) -> Result<(), CaptureError> {
        while self.writer.in_flight > 0 {
            let written = self.writer.next().await?;
            self.acknowledged(written).await?;
        }
        self.writer.send(job).await
    }

    /// With nothing in flight, stores and confirms the keepalive position so unrelated WAL is released.
    async fn advance_idle(&mut self) -> Result<(), CaptureError> {
        if !self.idle() {
            return Ok(());
        }
        if self.keepalive_end > self.queued {
            // Queued behind every earlier group, so it is committed after them.
            self.queued = self.keepalive_end;
            self.send_job(WriteJob {
                rows: Vec::new(),
                checkpoint: Some(self.keepalive_end),
            })
            .await?;
        }
        Ok(())
    }

    async fn send_status(&mut self, reply: bool) -> Result<(), CaptureError> {
        self.publish_changes();
        self.stream
            .send_status(self.received, self.confirmed, self.confirmed, reply)
            .await?;
        self.last_status = Instant::now();
        let confirmed = self.confirmed;
        self.capture.stats.send_modify(|s| s.confirmed = confirmed);
        Ok(())
    }

    /// Clean stop: commit the complete transactions of the group, report the last position, end the copy.
    async fn finish(mut self) -> Result<(), CaptureError> {
        // Rows of a transaction still open stay unwritten (a control transaction holding parts of it is
        // rolled back when the writer's connection closes): the slot gives them again at the next start.
        self.flush_group().await?;
        self.advance_idle().await?;
        // Wait for the writer to commit everything queued.
        self.writer.jobs = None;
        while self.writer.in_flight > 0 {
            let written = self.writer.next().await?;
            self.acknowledged(written).await?;
        }
        self.send_status(false).await?;
        info!(confirmed = %self.confirmed, "capture stopped");
        self.stream.finish().await?;
        Ok(())
    }
}

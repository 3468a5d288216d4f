//! One replication session: connecting at the stored checkpoint, the message pump, group commit
//! through the [`ControlWriter`], and the positions reported back to PostgreSQL.

use super::writer::{ControlWriter, WriteJob, Written};
use super::*;

impl Capture {
    pub(super) async fn session(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionEnd> {
        let schema = self.config.source.schema.clone();
        let slot = self.config.source.slot.clone();
        let control = crate::pg::client::connect(&self.control)
            .await
            .map_err(|e| CaptureError::Db(crate::pg::error_chain(&e)))?;
        let checkpoint = outbox::load_checkpoint(&control, &schema, &slot).await?;
        let source_sql = crate::pg::client::connect(&self.source)
            .await
            .map_err(|e| CaptureError::Db(crate::pg::error_chain(&e)))?;
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
        // After a stop on a change, capture counts as streaming again only once it is past that change:
        // a retry that stops on it again leaves the state (and how long it has lasted) alone.
        let stuck_on = match &*self.state.borrow() {
            Some(r) if r.phase == CapturePhase::Stuck => r.error_lsn,
            _ => None,
        };
        if stuck_on.is_none() {
            self.mark_streaming();
        }
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
            read_back: None,
            stuck_on,
            broken: HashMap::new(),
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

pub(super) enum SessionEnd {
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

pub(super) async fn slot_position(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Lsn, CaptureError> {
    let found = catalog::slot(client, slot).await.map_err(|e| {
        CaptureError::Db(format!(
            "reading slot {slot:?}: {}",
            crate::pg::client::describe(&e.source)
        ))
    })?;
    let found = found.ok_or_else(|| CaptureError::NoSlot(slot.to_string()))?;
    Ok(found.confirmed_flush.unwrap_or(Lsn::ZERO))
}

pub(super) fn verify_not_ahead(
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
pub(super) struct OpenTx {
    pub(super) context: TxContext,
}

/// One replication session's state.
pub(super) struct Session<'a> {
    pub(super) capture: &'a Capture,
    pub(super) stream: ReplicationStream,
    /// Writes control transactions in order, off the decoding path.
    pub(super) writer: ControlWriter,
    /// The newest checkpoint handed to the writer (confirmed once acknowledged).
    pub(super) queued: Lsn,
    pub(super) relations: RelationCache,
    pub(super) bound: HashMap<u32, Option<Bound>>,
    pub(super) tx: Option<OpenTx>,
    pub(super) ordinal: u64,
    /// Rows waiting for the next control transaction.
    pub(super) group: Vec<NewDelivery>,
    /// An emptied group buffer back from the writer, to be the next group.
    pub(super) spare: Vec<NewDelivery>,
    /// How many rows at the front of `group` belong to complete source transactions; the rest belong
    /// to the open one and wait for its commit, so that the rows of one source transaction (a payment
    /// and its refund) become visible to dispatch together. A transaction larger than
    /// `group_max_rows` is handed over in parts of one control transaction, committed at its commit.
    pub(super) group_complete: usize,
    /// The commit end of the newest complete transaction in the group.
    pub(super) group_end: Option<Lsn>,
    pub(super) group_deadline: Option<tokio::time::Instant>,
    /// The newest position stored and reported as flushed.
    pub(super) confirmed: Lsn,
    /// The newest WAL end received.
    pub(super) received: Lsn,
    /// The newest keepalive position seen while no transaction was open.
    pub(super) keepalive_end: Lsn,
    pub(super) drops: DropCounts,
    pub(super) last_status: Instant,
    /// Changes decoded and not yet added to the shared counters.
    pub(super) uncounted: u64,
    /// An ordinary SQL connection to the source, opened at the first need and kept for the session:
    /// it reads back unchanged TOAST values, and the catalog when a Relation message lacks a column a
    /// rule reads.
    pub(super) read_back: Option<tokio_postgres::Client>,
    /// The change capture stopped on last time, until the confirmed position is past it.
    pub(super) stuck_on: Option<Lsn>,
    /// Relations whose rules cannot be bound, with why: the error is raised at the relation's next
    /// change, whose LSN it carries (a Relation message itself comes with position 0/0).
    pub(super) broken: HashMap<u32, RuleError>,
}

/// How many changes are counted locally before the shared counters are updated.
pub(super) const CHANGES_PER_STATS_UPDATE: u64 = 1_000;

impl Session<'_> {
    pub(super) async fn pump(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), CaptureError> {
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
    pub(super) async fn acknowledged(&mut self, mut written: Written) -> Result<(), CaptureError> {
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
        if self.stuck_on.is_some_and(|lsn| self.confirmed > lsn) {
            self.stuck_on = None;
            info!(confirmed = %self.confirmed, "capture is past the change it had stopped on");
            self.capture.mark_streaming();
        }
        Ok(())
    }

    /// True when no transaction is open and nothing waits to be written.
    pub(super) fn idle(&self) -> bool {
        self.tx.is_none() && self.group.is_empty() && self.group_end.is_none()
    }

    /// Counts a row change; the shared counter is updated every [`CHANGES_PER_STATS_UPDATE`] changes
    /// and at each commit (a shared update per change cost more than decoding the change).
    pub(super) fn bump_changes(&mut self) {
        self.uncounted += 1;
        if self.uncounted >= CHANGES_PER_STATS_UPDATE {
            self.publish_changes();
        }
    }

    /// Adds the changes counted since the last update to the shared counters.
    pub(super) fn publish_changes(&mut self) {
        if self.uncounted > 0 {
            let n = std::mem::take(&mut self.uncounted);
            crate::metrics::changes_decoded(n);
            self.capture.stats.send_modify(|s| s.changes += n);
        }
    }

    /// Hands the group's complete transactions and the checkpoint of the newest to the writer; the
    /// checkpoint is confirmed once the writer has committed it. Rows of a transaction still open stay
    /// in the group until its commit, so a source transaction's rows are committed together.
    pub(super) async fn flush_group(&mut self) -> Result<(), CaptureError> {
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

    pub(super) async fn write(&mut self, checkpoint: Option<Lsn>) -> Result<(), CaptureError> {
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
    pub(super) async fn send_job(&mut self, job: WriteJob) -> Result<(), CaptureError> {
        while self.writer.in_flight > 0 {
            let written = self.writer.next().await?;
            self.acknowledged(written).await?;
        }
        self.writer.send(job).await
    }

    /// With nothing in flight, stores and confirms the keepalive position so unrelated WAL is released.
    pub(super) async fn advance_idle(&mut self) -> Result<(), CaptureError> {
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

    pub(super) async fn send_status(&mut self, reply: bool) -> Result<(), CaptureError> {
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
    pub(super) async fn finish(mut self) -> Result<(), CaptureError> {
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

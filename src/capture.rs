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

mod toast;

use crate::config::Config;
use crate::decode::{self, fill_unchanged_toast, PgOutput, RelationCache};
use crate::event::NewDelivery;
use crate::lsn::Lsn;
use crate::outbox::CapturePhase;
use crate::outbox::{self, OutboxError};
use crate::pg::catalog;
use crate::rules::{Bound, DropCounts, Recovered, RuleError, Rules, TxContext};
use crate::source::{
    ConnInfo, ReplicationConnection, ReplicationMessage, ReplicationStream, SourceError,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// The first wait before reconnecting after an outage; it doubles up to 10 s while outages go on.
const INITIAL_RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// A session that streamed at least this long ended a healthy period: the backoff starts again.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// While capture is stuck, the first wait before trying again; it doubles up to [`STUCK_MAX_DELAY`].
const STUCK_MIN_DELAY: Duration = Duration::from_secs(5);

/// The longest wait between two tries of a stuck capture.
const STUCK_MAX_DELAY: Duration = Duration::from_secs(60);

/// How often the capture state row is written again while nothing changes (it refreshes `seen_at`,
/// which readers expect at least every 30 s).
const STATE_REFRESH: Duration = Duration::from_secs(20);

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
    /// The SQL connection to the source, used to read back unchanged TOAST values, was lost or could
    /// not be opened (an outage: retried).
    #[error("reading back a TOASTed value from the source database: {0}")]
    ReadBack(String),
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
    /// The config does not match the tables as they are now (checked before capture starts).
    #[error("the config does not match the database: {0}")]
    Tables(String),
}

impl CaptureError {
    /// The WAL position of the change this error is about, when it is about one.
    pub fn lsn(&self) -> Option<Lsn> {
        match self {
            CaptureError::Rule { lsn, .. } => Some(*lsn),
            // A Relation or Type message is sent with position 0/0 (it precedes the change it serves).
            CaptureError::Decode(e) => (e.lsn() != Lsn::ZERO).then(|| e.lsn()),
            _ => None,
        }
    }

    /// True for outages worth waiting out (connections lost or refused); false for problems that need an
    /// operator (config, schema, data).
    pub fn is_retryable(&self) -> bool {
        match self {
            CaptureError::Source(e) => e.is_retryable(),
            CaptureError::Outbox(e) => e.is_connection_error(),
            CaptureError::Db(_) | CaptureError::ReadBack(_) => true,
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
    /// Identifiers dropped as invalid, or unknown (an unchanged TOAST value that could not be read back).
    pub dropped_keys: u64,
    /// Rows whose unchanged TOAST values a rule needed were read back from the source by key.
    pub toast_read_backs: u64,
    /// Of those, rows that could not be read back (no key, row gone, query refused): their events were
    /// recorded without the values.
    pub toast_unresolved: u64,
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
    /// What capture is doing, for the task that writes it to `capture_state` (`None`: write nothing).
    state: watch::Sender<Option<StateReport>>,
    /// Whether a task writing `state` runs (one per capture worker).
    reporting: AtomicBool,
}

/// A row of `capture_state` to write.
#[derive(Debug, Clone, PartialEq)]
struct StateReport {
    phase: CapturePhase,
    error: Option<String>,
    error_lsn: Option<Lsn>,
}

/// Aborts the task writing the capture state when the capture run that started it ends.
struct ReporterGuard<'a> {
    task: tokio::task::JoinHandle<()>,
    reporting: &'a AtomicBool,
}

impl Drop for ReporterGuard<'_> {
    fn drop(&mut self) {
        self.task.abort();
        self.reporting.store(false, Ordering::SeqCst);
    }
}

/// Writes the newest [`StateReport`] to `capture_state` on a small connection of its own (never the
/// writer's, so it never delays or fails a checkpoint), at each change and every [`STATE_REFRESH`]. A
/// failed write is logged and retried at the next round; it never stops capture.
async fn write_state(
    control: ConnInfo,
    schema: String,
    slot: String,
    mut state: watch::Receiver<Option<StateReport>>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failing = false;
    loop {
        let report = state.borrow_and_update().clone();
        if let Some(report) = report {
            let written = async {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    let connected = tokio::time::timeout(
                        Duration::from_secs(10),
                        crate::pg::client::connect(&control),
                    )
                    .await
                    .map_err(|_| "connecting timed out".to_string())?
                    .map_err(|e| crate::pg::error_chain(&e))?;
                    client = Some(connected);
                }
                let c = client.as_ref().expect("connected above");
                tokio::time::timeout(
                    Duration::from_secs(10),
                    outbox::report_capture(
                        c,
                        &schema,
                        &slot,
                        report.phase,
                        report.error.as_deref(),
                        report.error_lsn,
                    ),
                )
                .await
                .map_err(|_| "writing timed out".to_string())?
                .map_err(|e| crate::pg::error_chain(&e))
            }
            .await;
            match written {
                Ok(()) => failing = false,
                Err(e) => {
                    client = None;
                    // Once per failing spell: while the control database is down capture says so.
                    if !failing {
                        warn!(error = %e, state = report.phase.as_str(), "could not record the capture state; capture goes on");
                    }
                    failing = true;
                }
            }
        }
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(STATE_REFRESH) => {}
        }
    }
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
        let (state, _) = watch::channel(None);
        Ok(Capture {
            config,
            rules,
            source,
            control,
            stats,
            stop_at: None,
            state,
            reporting: AtomicBool::new(false),
        })
    }

    /// Starts the task that records the capture state, unless one runs; it stops with the guard.
    fn start_reporting(&self) -> Option<ReporterGuard<'_>> {
        if self.reporting.swap(true, Ordering::SeqCst) {
            return None;
        }
        let task = tokio::spawn(write_state(
            self.control.clone(),
            self.config.source.schema.clone(),
            self.config.source.slot.clone(),
            self.state.subscribe(),
        ));
        Some(ReporterGuard {
            task,
            reporting: &self.reporting,
        })
    }

    /// Sets what the capture state row should say (`None`: leave it to the process holding the slot).
    fn report(&self, phase: Option<CapturePhase>, error: Option<String>, error_lsn: Option<Lsn>) {
        let report = phase.map(|phase| StateReport {
            phase,
            error,
            error_lsn,
        });
        self.state.send_if_modified(|current| {
            let changed = *current != report;
            *current = report;
            changed
        });
    }

    /// Runs until `shutdown` turns true, whatever happens: what `pgcapi run` uses, so that dispatch never
    /// depends on capture. Outages are waited out as in [`Capture::run`]; a problem that needs an operator
    /// (a change a rule cannot apply, a slot that is gone or ahead, a config that does not match the
    /// tables) is logged with its reason and LSN, recorded as `stuck` in `capture_state` and the metrics,
    /// and tried again after a wait growing from 5 s to 60 s, so that fixing the database (renaming a
    /// column back, re-adding it, recreating the slot) resumes capture without a restart.
    pub async fn run_supervised(&self, mut shutdown: watch::Receiver<bool>) {
        use backon::BackoffBuilder;
        let _reporting = self.start_reporting();
        let new_backoff = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(STUCK_MIN_DELAY)
                .with_max_delay(STUCK_MAX_DELAY)
                .with_factor(2.0)
                .without_max_times()
                .build()
        };
        let mut backoff = new_backoff();
        // The tables are checked against the config until they match once; after that, the changes
        // themselves are checked against the relation the WAL describes. When an earlier process
        // stopped on a change, that change decides: the config may match the table as it was then
        // rather than as it is now (the config changed to a column's new name, the changes still in the
        // slot made under the old one), so the check is left to the change.
        let mut tables_checked = false;
        if let Some(stuck) = self.stored_stuck_change().await {
            info!(lsn = %stuck.error_lsn.map(|l| l.to_string()).unwrap_or_default(),
                "capture was stuck on a change; trying it again");
            self.state.send_replace(Some(stuck));
            tables_checked = true;
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            let outcome = if tables_checked {
                self.run(shutdown.clone()).await
            } else {
                match self.check_tables().await {
                    Ok(()) => {
                        tables_checked = true;
                        self.run(shutdown.clone()).await
                    }
                    Err(e) => Err(e),
                }
            };
            let e = match outcome {
                Ok(()) => return,
                Err(e) => e,
            };
            if started.elapsed() >= STUCK_MAX_DELAY {
                // Capture got further than before (or was waiting out an outage): start over.
                backoff = new_backoff();
            }
            let delay = backoff.next().unwrap_or(STUCK_MAX_DELAY);
            let reason = crate::pg::error_chain(&e);
            if e.is_retryable() {
                // Only the table check gets here with an outage (`run` waits those out itself).
                self.report(Some(CapturePhase::Retrying), Some(reason.clone()), None);
                crate::metrics::set_capture_state(crate::metrics::CaptureState::Reconnecting);
                warn!(error = %reason, retry_in_s = delay.as_secs(), "capture cannot start yet");
            } else {
                let lsn = e.lsn();
                self.report(Some(CapturePhase::Stuck), Some(reason.clone()), lsn);
                crate::metrics::set_capture_state(crate::metrics::CaptureState::Stuck);
                error!(
                    error = %reason,
                    lsn = %lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".to_string()),
                    retry_in_s = delay.as_secs(),
                    "capture is stuck; dispatch goes on, capture tries again"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The stored capture state, when a process stopped on a change (with its LSN) and has not passed it.
    async fn stored_stuck_change(&self) -> Option<StateReport> {
        let client = crate::pg::client::connect(&self.control).await.ok()?;
        let report = outbox::load_capture_report(
            &client,
            &self.config.source.schema,
            &self.config.source.slot,
        )
        .await
        .ok()??;
        (report.phase == CapturePhase::Stuck && report.error_lsn.is_some()).then_some(StateReport {
            phase: report.phase,
            error: report.error,
            error_lsn: report.error_lsn,
        })
    }

    /// Checks that the watched tables have the columns the rules read, as they are now.
    async fn check_tables(&self) -> Result<(), CaptureError> {
        let client = crate::pg::client::connect(&self.source)
            .await
            .map_err(|e| CaptureError::Db(crate::pg::error_chain(&e)))?;
        let tables = self.rules.tables();
        let problems = catalog::check_columns(&client, &tables, |t| self.rules.columns_of(t))
            .await
            .map_err(|e| CaptureError::Db(crate::pg::error_chain(&e)))?;
        if problems.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        Err(CaptureError::Tables(format!(
            "{}. Capture starts once they match: rename or re-add the column, or change the config \
             and restart pgcapi",
            listed.join("; ")
        )))
    }

    /// Makes [`Capture::run`] return once every change up to `lsn` is recorded and confirmed, as if
    /// shut down there. For benchmarks and tests that replay a known stretch of WAL; `run` never stops
    /// by itself otherwise.
    pub fn stop_at(mut self, lsn: Lsn) -> Capture {
        self.stop_at = Some(lsn);
        self
    }

    /// Capture holds the slot and makes progress: say so in the metrics and `capture_state`.
    fn mark_streaming(&self) {
        crate::metrics::set_capture_state(crate::metrics::CaptureState::Streaming);
        self.report(Some(CapturePhase::Streaming), None, None);
    }

    /// A receiver of progress counters.
    pub fn stats(&self) -> watch::Receiver<CaptureStats> {
        self.stats.subscribe()
    }

    /// Runs until `shutdown` turns true; reconnects after outages; returns an error only for problems
    /// that need an operator.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), CaptureError> {
        let _reporting = self.start_reporting();
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
                    // The process holding the slot reports; a standby leaves the row to it.
                    self.report(None, None, None);
                    crate::metrics::set_capture_state(crate::metrics::CaptureState::Standby);
                    info!(slot = %self.config.source.slot, "another process holds the slot; waiting to take over");
                    delay = Duration::from_secs(1);
                }
                Err(SessionEnd::Error(e)) if e.is_retryable() => {
                    self.report(
                        Some(CapturePhase::Retrying),
                        Some(crate::pg::error_chain(&e)),
                        None,
                    );
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
    let found = catalog::slot(client, slot).await.map_err(|e| {
        CaptureError::Db(format!(
            "reading slot {slot:?}: {}",
            crate::pg::client::describe(&e.source)
        ))
    })?;
    let found = found.ok_or_else(|| CaptureError::NoSlot(slot.to_string()))?;
    Ok(found.confirmed_flush.unwrap_or(Lsn::ZERO))
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
    /// An ordinary SQL connection to the source, opened at the first need and kept for the session:
    /// it reads back unchanged TOAST values, and the catalog when a Relation message lacks a column a
    /// rule reads.
    read_back: Option<tokio_postgres::Client>,
    /// The change capture stopped on last time, until the confirmed position is past it.
    stuck_on: Option<Lsn>,
    /// Relations whose rules cannot be bound, with why: the error is raised at the relation's next
    /// change, whose LSN it carries (a Relation message itself comes with position 0/0).
    broken: HashMap<u32, RuleError>,
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
        if self.stuck_on.is_some_and(|lsn| self.confirmed > lsn) {
            self.stuck_on = None;
            info!(confirmed = %self.confirmed, "capture is past the change it had stopped on");
            self.capture.mark_streaming();
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
                self.broken.remove(&oid);
                match self.bind(relation).await? {
                    Ok(bound) => {
                        self.bound.insert(oid, bound);
                    }
                    Err(error) => {
                        self.bound.insert(oid, None);
                        self.broken.insert(oid, error);
                    }
                }
            }
            PgOutput::Insert(insert) => {
                self.change(insert.relation, insert.new, at).await?;
            }
            PgOutput::Update(mut update) => {
                fill_unchanged_toast(&mut update.new, update.old.as_ref());
                self.change(update.relation, update.new, at).await?;
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

    /// The error that keeps the rules from being bound to `relation`, if any, with the LSN of this
    /// change (`at`). Every change of a watched table goes through here before it is evaluated.
    fn check_bound(&self, relation: u32, at: Lsn) -> Result<(), CaptureError> {
        match self.broken.get(&relation) {
            Some(error) => Err(CaptureError::Rule {
                error: error.clone(),
                lsn: at,
            }),
            None => Ok(()),
        }
    }

    /// Binds the rules to a Relation message. A column a rule reads that the message lacks is looked
    /// up in the table as it is now: a change written while the column had another name binds to it by
    /// position once it has its name back (same position, same type, the other name gone), and a change
    /// written while it did not exist reads it as NULL once it is re-added. Otherwise the rule error
    /// stands. The outer error is an outage reading the catalog.
    async fn bind(
        &mut self,
        relation: Arc<decode::Relation>,
    ) -> Result<Result<Option<Bound>, RuleError>, CaptureError> {
        let rules = &self.capture.rules;
        let error = match rules.bind(relation.clone()) {
            Ok(bound) => return Ok(Ok(bound)),
            Err(error) => error,
        };
        let missing = rules.missing_columns(&relation);
        let now = self.catalog_columns(relation.oid).await?;
        let mut recovered = HashMap::new();
        for column in missing {
            let Some(position) = now.iter().position(|(name, _)| *name == column) else {
                continue;
            };
            match relation.columns.get(position) {
                Some(then)
                    if now.len() == relation.columns.len()
                        && then.type_oid == now[position].1
                        && !now.iter().any(|(name, _)| *name == then.name) =>
                {
                    warn!(
                        table = %relation.qualified_name(),
                        column = %column,
                        wal_name = %then.name,
                        "the WAL names this column {:?} (it was renamed, and has its name back): \
                         reading it by position", then.name
                    );
                    recovered.insert(column, Recovered::At(position));
                }
                _ if position >= relation.columns.len() => {
                    warn!(
                        table = %relation.qualified_name(),
                        column = %column,
                        "the column did not exist when these changes were written (re-added since): \
                         reading it as NULL for them"
                    );
                    recovered.insert(column, Recovered::Absent);
                }
                _ => {}
            }
        }
        if recovered.is_empty() {
            return Ok(Err(error));
        }
        Ok(rules.bind_recovered(relation, &recovered))
    }

    /// The live columns of table `oid` now (name and type), in the order pgoutput lists them.
    async fn catalog_columns(&mut self, oid: u32) -> Result<Vec<(String, u32)>, CaptureError> {
        let client = self.read_back_client().await?;
        let rows = client
            .query(
                "select attname::text, atttypid from pg_attribute where attrelid = $1 \
                 and attnum > 0 and not attisdropped and attgenerated = '' order by attnum",
                &[&oid],
            )
            .await
            .map_err(|e| {
                CaptureError::Db(format!(
                    "reading the columns of table {oid}: {}",
                    crate::pg::error_chain(&e)
                ))
            })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// A DELETE: retractions of the deleted row's conversions (rules with `on_delete = "retract"`),
    /// recorded where such a conversion exists; see [`Rules::evaluate_delete`].
    async fn deleted(&mut self, delete: decode::Delete, at: Lsn) -> Result<(), CaptureError> {
        let Some(tx) = self.tx.as_ref().map(|t| t.context) else {
            return Err(CaptureError::Protocol(format!(
                "row change outside a transaction at {at}"
            )));
        };
        self.check_bound(delete.relation, at)?;
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
                "a DELETE cannot be matched to this rule's conversion: the table has no replica \
                 identity key and its event_id is not in the DELETE. Add a primary key or set \
                 REPLICA IDENTITY FULL on the table for deletes to retract conversions (or \
                 on_delete = \"ignore\" to silence this)"
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
        mut new: decode::Tuple,
        at: Lsn,
    ) -> Result<(), CaptureError> {
        self.bump_changes();
        let Some(tx) = self.tx.as_ref().map(|t| t.context) else {
            return Err(CaptureError::Protocol(format!(
                "row change outside a transaction at {at}"
            )));
        };
        self.check_bound(relation, at)?;
        let Some(bound) = self.bound.get(&relation) else {
            return Err(CaptureError::Protocol(format!(
                "change for relation {relation} before its Relation message at {at}"
            )));
        };
        let Some(bound) = bound else {
            return Ok(());
        };
        // Values a matching rule needs that the WAL does not carry (unchanged TOAST without an old
        // row image) are read back from the source by key; only such changes pay for a query.
        let needed = self.capture.rules.unresolved_columns(bound, &new);
        let unresolved = if needed.is_empty() {
            None
        } else {
            let relation = Arc::clone(bound.relation());
            self.resolve_toast(&relation, &mut new, &needed, at).await?
        };
        let Some(Some(bound)) = self.bound.get(&relation) else {
            unreachable!("bound above");
        };
        self.ordinal += 1;
        let before = self.drops.total;
        self.capture
            .rules
            .evaluate_unresolved_into(
                bound,
                &new,
                unresolved.as_deref(),
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

    /// Replaces the unchanged TOAST values at `columns` of `new` by the row's current values, read from
    /// the source by its replica-identity key. Returns why that was impossible (no usable key, the row
    /// is gone, the query was refused), leaving those values unknown: the rules then record the event
    /// without them. A lost connection is an error (capture reconnects and reads again).
    async fn resolve_toast(
        &mut self,
        relation: &decode::Relation,
        new: &mut decode::Tuple,
        columns: &[usize],
        at: Lsn,
    ) -> Result<Option<String>, CaptureError> {
        let outcome = match toast::key_of(relation, new) {
            Err(reason) => Err(reason),
            Ok(key) => {
                let client = self.read_back_client().await?;
                toast::read_back(client, relation, &key, columns).await
            }
        };
        let unresolved = match outcome {
            Ok(values) => {
                for (&i, value) in columns.iter().zip(values) {
                    new.0[i] = match value {
                        Some(text) => decode::Datum::Text(text.into_bytes().into()),
                        None => decode::Datum::Null,
                    };
                }
                None
            }
            Err(toast::Failure::Retry(message)) => {
                // Reopened at the next need, in the next session.
                self.read_back = None;
                return Err(CaptureError::ReadBack(message));
            }
            Err(toast::Failure::Unresolved(reason)) => Some(reason),
        };
        let names: Vec<&str> = columns
            .iter()
            .map(|&i| relation.columns[i].name.as_str())
            .collect();
        match &unresolved {
            None => debug!(
                table = %relation.qualified_name(),
                columns = ?names,
                lsn = %at,
                "unchanged TOAST values read back from the source"
            ),
            Some(reason) => warn!(
                table = %relation.qualified_name(),
                columns = ?names,
                lsn = %at,
                %reason,
                "unchanged TOAST values could not be read back: the change is recorded without them"
            ),
        }
        crate::metrics::toast_read_back(unresolved.is_none());
        let failed = u64::from(unresolved.is_some());
        self.capture.stats.send_modify(|s| {
            s.toast_read_backs += 1;
            s.toast_unresolved += failed;
        });
        Ok(unresolved)
    }

    /// The SQL connection for read-backs, opened at the first need with the replication connection's
    /// formats (ISO dates, UTC, exact floats) so values read back are written as the WAL writes them.
    async fn read_back_client(&mut self) -> Result<&tokio_postgres::Client, CaptureError> {
        if self.read_back.as_ref().is_some_and(|c| c.is_closed()) {
            self.read_back = None;
        }
        if self.read_back.is_none() {
            let client = crate::pg::client::connect(&self.capture.source)
                .await
                .map_err(|e| CaptureError::ReadBack(crate::pg::error_chain(&e)))?;
            client
                .batch_execute(toast::SESSION_SETTINGS)
                .await
                .map_err(|e| CaptureError::ReadBack(crate::pg::error_chain(&e)))?;
            self.read_back = Some(client);
        }
        Ok(self.read_back.as_ref().expect("opened above"))
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

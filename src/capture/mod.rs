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
//! Control transactions are written by a control writer task (`writer`) that owns the control connection, so
//! decoding and rule evaluation of the next group overlap the insert of the previous one. Groups reach it
//! in order, and a group is handed over only once the previous one is committed, so at most two groups
//! are in memory; while the writer is busy the next group keeps growing (group commit). The session
//! advances its confirmed position only from the writer's acknowledgements, each sent after the commit
//! holding the rows and the checkpoint.
//!
//! Here: the worker, its supervision and state reports. `session`: one replication session and its
//! group commit; `change`: what each decoded message does; `writer`: the control writer; `toast`:
//! reading back unchanged TOAST values.

mod change;
mod session;
mod toast;
mod writer;

use session::SessionEnd;

use crate::config::Config;
use crate::decode::{self, fill_unchanged_toast, PgOutput, RelationCache};
use crate::error::{Action, Error, Fault};
use crate::event::NewDelivery;
use crate::lsn::Lsn;
use crate::outbox::CapturePhase;
use crate::outbox::{self, OutboxError};
use crate::pg::catalog;
use crate::rules::{Bound, DropCounts, Recovered, RuleError, Rules, TxContext};
use crate::shutdown::{supervise, Policy};
use crate::source::{
    ConnInfo, ReplicationConnection, ReplicationMessage, ReplicationStream, SourceError,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// While capture is stuck, waits between tries grow from 5 s to 60 s; a try that ran 60 s (capture got
/// further than before, or waited out an outage) starts them over. Outages themselves are waited out
/// with [`Policy::OUTAGE`] (200 ms to 10 s).
const STUCK: Policy = Policy {
    first: Duration::from_secs(5),
    max: Duration::from_secs(60),
    healthy: Duration::from_secs(60),
};

/// How often a standby tries to take the slot over from the process holding it.
const STANDBY_POLL: Duration = Duration::from_secs(1);

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

    /// What the failure was, for the retry policy ([`crate::error`]): connections lost or refused are
    /// outages; a change, a slot or a config that does not fit is refused (it needs an operator).
    pub fn fault(&self) -> Fault {
        match self {
            CaptureError::Source(e) => source_fault(e),
            CaptureError::Outbox(e) => e.fault(),
            CaptureError::Db(_) | CaptureError::ReadBack(_) => Fault::Lost,
            CaptureError::Decode(_)
            | CaptureError::Rule { .. }
            | CaptureError::SlotAhead { .. }
            | CaptureError::NoSlot(_)
            | CaptureError::Protocol(_)
            | CaptureError::Tables(_) => Fault::Refused,
        }
    }

    /// Retry or halt, by the one policy ([`Fault::action`]).
    pub fn action(&self) -> Action {
        self.fault().action()
    }
}

/// What a replication connection's failure was: the socket or a timeout is a lost connection, a server
/// error is its SQLSTATE, and TLS, credentials and protocol problems are refused.
fn source_fault(e: &SourceError) -> Fault {
    match e {
        SourceError::Io(_) | SourceError::Timeout(_) => Fault::Lost,
        SourceError::Server { code, .. } => Fault::Server(code.clone()),
        SourceError::Tls(_)
        | SourceError::Auth(_)
        | SourceError::Protocol(_)
        | SourceError::InvalidArgument(_) => Fault::Refused,
    }
}

impl From<CaptureError> for Error {
    fn from(e: CaptureError) -> Self {
        let message = crate::pg::error_chain(&e);
        let fault = e.fault();
        match e {
            CaptureError::Db(_) | CaptureError::Outbox(_) => Error::Database { message, fault },
            _ => Error::Replication { message, fault },
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
    pub async fn run_supervised(&self, shutdown: watch::Receiver<bool>) {
        let _reporting = self.start_reporting();
        // The tables are checked against the config until they match once; after that, the changes
        // themselves are checked against the relation the WAL describes. When an earlier process
        // stopped on a change, that change decides: the config may match the table as it was then
        // rather than as it is now (the config changed to a column's new name, the changes still in the
        // slot made under the old one), so the check is left to the change.
        let tables_checked = AtomicBool::new(false);
        if let Some(stuck) = self.stored_stuck_change().await {
            info!(lsn = %stuck.error_lsn.map(|l| l.to_string()).unwrap_or_default(),
                "capture was stuck on a change; trying it again");
            self.state.send_replace(Some(stuck));
            tables_checked.store(true, Ordering::SeqCst);
        }
        let attempt = || async {
            if !tables_checked.load(Ordering::SeqCst) {
                self.check_tables().await?;
                tables_checked.store(true, Ordering::SeqCst);
            }
            self.run(shutdown.clone()).await
        };
        // Every failure is tried again (`Retry`), so this returns only at shutdown.
        let _ = supervise(
            "capture",
            STUCK,
            shutdown.clone(),
            |e, delay| self.on_stuck(e, delay),
            attempt,
        )
        .await;
    }

    /// Reports why capture cannot go on, for [`Capture::run_supervised`], which tries again after `delay`.
    fn on_stuck(&self, e: &CaptureError, delay: Duration) -> Action {
        let reason = crate::pg::error_chain(e);
        if e.action() != Action::Halt {
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
        Action::RETRY
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
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> Result<(), CaptureError> {
        let _reporting = self.start_reporting();
        let session = || {
            let mut shutdown = shutdown.clone();
            async move { self.session(&mut shutdown).await }
        };
        match supervise(
            "capture",
            Policy::OUTAGE,
            shutdown.clone(),
            |end, delay| self.on_session_end(end, delay),
            session,
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(SessionEnd::Error(e)) => Err(e),
            Err(SessionEnd::SlotInUse) => unreachable!("a standby always waits (on_session_end)"),
        }
    }

    /// Decides, for [`Capture::run`], whether a session's end is waited out: a standby polls for the
    /// slot, an outage is retried after `delay`, anything else needs an operator.
    fn on_session_end(&self, end: &SessionEnd, delay: Duration) -> Action {
        match end {
            SessionEnd::SlotInUse => {
                // The process holding the slot reports; a standby leaves the row to it.
                self.report(None, None, None);
                crate::metrics::set_capture_state(crate::metrics::CaptureState::Standby);
                info!(slot = %self.config.source.slot, "another process holds the slot; waiting to take over");
                Fault::Busy(STANDBY_POLL).action()
            }
            SessionEnd::Error(e) if e.action() != Action::Halt => {
                self.report(
                    Some(CapturePhase::Retrying),
                    Some(crate::pg::error_chain(e)),
                    None,
                );
                crate::metrics::set_capture_state(crate::metrics::CaptureState::Reconnecting);
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "capture interrupted; reconnecting");
                e.action()
            }
            SessionEnd::Error(_) => Action::Halt,
        }
    }
}

//! The control schema, and the only place with SQL on it: `pgcapi.deliveries` rows, the stored slot
//! position (`pgcapi.checkpoints`), capture's state, the platforms' processing reports and the views.
//!
//! Capture writes a group of [`NewDelivery`](crate::event::NewDelivery) rows and the new checkpoint in
//! one transaction ([`write_group`], `write.rs`); the unique key `(event_id, destination, rule)` turns
//! replays after a crash into no-ops. Dispatch claims [`Delivery`] rows under a lease and records their
//! outcomes (`lease.rs`); operators requeue (`requeue.rs`) and purge (`purge.rs`) them; `pgcapi status`
//! and the metrics probe read `health.rs`. Statements name the schema through an [`Outbox`] handle
//! (or, on capture's write path, the schema name they are given).

mod health;
mod lease;
mod migrations;
mod purge;
mod requeue;
mod write;

pub use health::{
    load_capture_report, load_unusable_24h, record_processing, report_capture, CapturePhase,
    CaptureReport,
};
pub use health::{
    DestinationFlow, DestinationHealth, FailureLine, StoredCheckpoint, UnusableReason,
};
pub use lease::{AdjustedConversion, Conversion, Lease, Record, Recorded};
pub use migrations::{InstallError, MIGRATIONS};
pub use purge::{purge_processing, Batching, PurgeReport, Target, RETRACTABLE_KEEP};
pub use requeue::{Filters, Requeued, RowLine};
pub use write::{
    insert_deliveries, load_checkpoint, save_checkpoint, write_group, OpenGroup, WRITE_CHUNK_ROWS,
};

use crate::error::{Action, Error, Fault};
use crate::event::{Delivery, Kind, Payload};
use tokio_postgres::Row;

/// The control schema as statements name it: a handle that quotes the schema once, instead of every
/// statement quoting a `schema: &str` it was handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    /// The schema's name, as configured (`source.schema`).
    name: String,
    /// The same, quoted for SQL.
    quoted: String,
}

impl Outbox {
    /// The control schema `name` (usually `pgcapi`).
    pub fn new(name: &str) -> Outbox {
        Outbox {
            name: name.to_string(),
            quoted: quote_ident(name),
        }
    }

    /// The schema's name, unquoted.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema, quoted: what goes before `.deliveries` in a statement.
    fn s(&self) -> &str {
        &self.quoted
    }

    /// The channel dispatchers listen on (see [`notify_channel`]).
    pub fn channel(&self) -> String {
        notify_channel(&self.name)
    }
}

/// A delivery row that cannot be read back: it fails without being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The row.
    pub id: i64,
    /// What is wrong (never a value).
    pub error: String,
}

impl Delivery {
    /// The columns [`Delivery::from_row`] reads, in its order, on a `deliveries` row aliased `d`.
    pub const COLUMNS: &'static str =
        "d.id, d.rule, d.destination, d.event_id, d.kind, d.adjusts_rule, d.event_name, \
               d.event_time, d.value::text, d.currency, d.action_source, d.payload::text, d.attempts, \
               d.created_at";

    /// How many columns [`Delivery::COLUMNS`] has: a statement's next column is at this index.
    pub const COLUMN_COUNT: usize = 14;

    /// Reads a row selected with [`Delivery::COLUMNS`]; a kind or payload that cannot be read is an
    /// [`Unreadable`] row.
    pub fn from_row(r: &Row) -> Result<Delivery, Unreadable> {
        let id: i64 = r.get(0);
        let Some(kind) = Kind::from_name(r.get::<_, &str>(4)) else {
            return Err(Unreadable {
                id,
                error: "unknown kind in the control table".into(),
            });
        };
        let payload: Payload = match serde_json::from_str(r.get::<_, &str>(11)) {
            Ok(p) => p,
            Err(e) => {
                return Err(Unreadable {
                    id,
                    error: format!("payload cannot be read: {}", classify_name(&e)),
                })
            }
        };
        Ok(Delivery {
            id,
            rule: r.get(1),
            destination: r.get(2),
            event_id: r.get(3),
            kind,
            adjusts_rule: r.get(5),
            event_name: r.get(6),
            event_time: r.get(7),
            value: r.get(8),
            currency: r.get(9),
            action_source: r.get(10),
            payload,
            attempts: r.get(12),
            created_at: r.get(13),
        })
    }
}

/// A short, value-free name for a JSON error (the payload holds hashed identifiers).
fn classify_name(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "io error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "unexpected fields or types",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database refused or the connection broke.
    #[error("control table ({what}): {}", crate::pg::client::describe(source))]
    Db {
        /// What was being done.
        what: &'static str,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A stored value could not be read back.
    #[error("control table row {id}: {message}")]
    Corrupt {
        /// The row.
        id: i64,
        /// What is wrong.
        message: String,
    },
}

impl OutboxError {
    /// What the failure was, for the retry policy ([`crate::error`]).
    pub fn fault(&self) -> Fault {
        match self {
            OutboxError::Db { source, .. } => crate::pg::fault(source),
            OutboxError::Corrupt { .. } => Fault::Refused,
        }
    }

    /// True when the error is a lost or refused connection (retry later), not a statement error.
    pub fn is_connection_error(&self) -> bool {
        matches!(self.fault().action(), Action::Retry { .. })
    }
}

impl From<OutboxError> for Error {
    fn from(e: OutboxError) -> Self {
        Error::Database {
            fault: e.fault(),
            message: crate::pg::error_chain(&e),
        }
    }
}

fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> OutboxError {
    move |source| OutboxError::Db { what, source }
}

/// Quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Notifies dispatchers listening on `{schema}_deliveries` that new rows are due.
pub fn notify_channel(schema: &str) -> String {
    format!("{schema}_deliveries")
}

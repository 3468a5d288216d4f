//! Pure pgoutput (protocol version 1) decoder: XLogData payload bytes in, typed messages out.
//!
//! The decoder does no IO and never panics: every malformed or truncated input becomes a
//! [`DecodeError`] naming the XLogData LSN. Tuple values are zero-copy [`Bytes`] slices of the
//! input, so decoding a row costs one `Vec` for the tuple and a reference-count bump per value.
//! Turning those text values into typed [`Value`]s lives in [`value`].

mod reader;
mod relation;
#[cfg(test)]
mod test_encoder;
#[cfg(test)]
mod tests;
pub mod value;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::lsn::Lsn;

use reader::Reader;
pub use relation::{fill_unchanged_toast, RelationCache};
pub use value::{is_plain_text, parse_datum, parse_value, type_name, type_oid, Value, ValueError};

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput {
    /// Start of a transaction (`B`).
    Begin(Begin),
    /// End of a transaction (`C`).
    Commit(Commit),
    /// The transaction came from another origin (`O`); sent after Begin.
    Origin(Origin),
    /// Table schema (`R`); always sent before the first change of a relation and after each schema change.
    Relation(Relation),
    /// A non-builtin column type (`Y`).
    Type(TypeInfo),
    /// A new row (`I`).
    Insert(Insert),
    /// A changed row (`U`).
    Update(Update),
    /// A removed row (`D`).
    Delete(Delete),
    /// One or more tables were truncated (`T`).
    Truncate(Truncate),
    /// A `pg_logical_emit_message` payload (`M`).
    Message(LogicalMessage),
}

impl PgOutput {
    /// The message kind's name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            PgOutput::Begin(_) => "Begin",
            PgOutput::Commit(_) => "Commit",
            PgOutput::Origin(_) => "Origin",
            PgOutput::Relation(_) => "Relation",
            PgOutput::Type(_) => "Type",
            PgOutput::Insert(_) => "Insert",
            PgOutput::Update(_) => "Update",
            PgOutput::Delete(_) => "Delete",
            PgOutput::Truncate(_) => "Truncate",
            PgOutput::Message(_) => "Message",
        }
    }
}

/// Start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: DateTime<Utc>,
    /// Transaction id.
    pub xid: u32,
}

/// End of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by PostgreSQL (always 0); kept so nothing is silently dropped.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to confirm once the transaction is durable.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: DateTime<Utc>,
}

/// Replication origin of the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// Schema of a published table, as of the changes that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Table OID; changes refer to the table by it.
    pub oid: u32,
    /// Schema name. pgoutput sends an empty string for `pg_catalog`; the decoder writes it out.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `relreplident`: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in tuple order.
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// Position of the column called `name` in this relation's tuples.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `schema.table`, e.g. `public.orders`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (usually the primary key).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID; see [`type_oid`] and [`parse_value`].
    pub type_oid: u32,
    /// `atttypmod` (e.g. length or precision), -1 when none.
    pub type_modifier: i32,
}

/// A non-builtin type used by a published column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Type OID.
    pub oid: u32,
    /// Schema name (`pg_catalog` when pgoutput sent an empty string).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column value inside a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL (also sent for non-key columns of a key-only old tuple).
    Null,
    /// A TOASTed value that the change did not touch; its value is not in the message.
    /// Never treat it as NULL: see [`fill_unchanged_toast`].
    UnchangedToast,
    /// The type's text output, a slice of the message.
    Text(Bytes),
    /// The type's binary output (only when `binary` was requested), a slice of the message.
    Binary(Bytes),
}

/// A row's column values, in relation column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Datum>);

impl Tuple {
    /// The value at column `index`, if the tuple has that many columns.
    pub fn get(&self, index: usize) -> Option<&Datum> {
        self.0.get(index)
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the tuple has no columns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Table OID (see [`Relation`]).
    pub relation: u32,
    /// The inserted row.
    pub new: Tuple,
}

/// The previous row version sent with an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: replica identity columns only; the other columns are [`Datum::Null`].
    Key(Tuple),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

impl OldTuple {
    /// The tuple, whatever its kind.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// A changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Table OID.
    pub relation: u32,
    /// Old key or row: present only when the key changed or the table is `REPLICA IDENTITY FULL`.
    pub old: Option<OldTuple>,
    /// The new row; may hold [`Datum::UnchangedToast`].
    pub new: Tuple,
}

/// A removed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Table OID.
    pub relation: u32,
    /// The removed row's key (or whole row with `REPLICA IDENTITY FULL`).
    pub old: OldTuple,
}

/// Truncated tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 1: `CASCADE`; bit 2: `RESTART IDENTITY`.
    pub options: u8,
    /// OIDs of the truncated tables.
    pub relations: Vec<u32>,
}

/// A message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Written inside the transaction (true) or immediately (false).
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: Lsn,
    /// The prefix the writer chose, to tell message kinds apart.
    pub prefix: String,
    /// Opaque payload, a slice of the input.
    pub content: Bytes,
}

/// A pgoutput message that could not be decoded.
///
/// The detail names fields and byte offsets, never tuple contents, so it is safe to log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed pgoutput at LSN {lsn}: {message}: {detail}")]
pub struct DecodeError {
    lsn: Lsn,
    message: &'static str,
    detail: Cow<'static, str>,
}

impl DecodeError {
    /// Start LSN of the XLogData that carried the message.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The kind of message being decoded (`Insert`, …), or `message` when the tag was unreadable.
    pub fn message_kind(&self) -> &'static str {
        self.message
    }

    /// What was wrong, e.g. `tuple truncated at byte 37`.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Decodes one pgoutput message (the payload of one XLogData).
///
/// `at` is the XLogData start LSN and is named in every error. Zero-copy: tuple values and logical
/// message contents are slices of `data`. Trailing bytes after a complete message are an error,
/// because v1 messages have fixed layouts and extra bytes mean we misread something.
pub fn decode(data: &Bytes, at: Lsn) -> Result<PgOutput, DecodeError> {
    let mut r = Reader {
        data,
        pos: 0,
        at,
        message: "message",
    };
    let tag = r.u8("message tag")?;
    r.message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        other => {
            return Err(r.error(format!(
                "unknown message tag 0x{other:02x} (protocol v1 without streaming expected)"
            )))
        }
    };
    let message = match tag {
        b'B' => PgOutput::Begin(Begin {
            final_lsn: Lsn(r.u64("final LSN")?),
            commit_time: r.timestamp("commit time")?,
            xid: r.u32("xid")?,
        }),
        b'C' => PgOutput::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: Lsn(r.u64("commit LSN")?),
            end_lsn: Lsn(r.u64("end LSN")?),
            commit_time: r.timestamp("commit time")?,
        }),
        b'O' => PgOutput::Origin(Origin {
            commit_lsn: Lsn(r.u64("origin commit LSN")?),
            name: r.cstr("origin name")?,
        }),
        b'R' => PgOutput::Relation(r.relation()?),
        b'Y' => PgOutput::Type(TypeInfo {
            oid: r.u32("type oid")?,
            namespace: r.namespace()?,
            name: r.cstr("type name")?,
        }),
        b'I' => {
            let relation = r.u32("relation oid")?;
            r.expect_new_tag()?;
            PgOutput::Insert(Insert {
                relation,
                new: r.tuple()?,
            })
        }
        b'U' => PgOutput::Update(r.update()?),
        b'D' => PgOutput::Delete(r.delete()?),
        b'T' => PgOutput::Truncate(r.truncate()?),
        // The only tag left is b'M'; the match above rejected everything else.
        _ => PgOutput::Message(r.logical_message()?),
    };
    r.finish()?;
    Ok(message)
}

//! Pure pgoutput (protocol version 1) decoder: XLogData payload bytes in, typed messages out.
//!
//! The decoder does no IO and never panics: every malformed or truncated input becomes a
//! [`DecodeError`] naming the XLogData LSN. Tuple values are zero-copy [`Bytes`] slices of the
//! input, so decoding a row costs one `Vec` for the tuple and a reference-count bump per value.
//! Turning those text values into typed [`Value`]s lives in [`value`].

pub mod value;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::lsn::Lsn;

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
        b'U' => {
            let relation = r.u32("relation oid")?;
            let old = match r.peek_u8("tuple tag")? {
                b'K' => {
                    r.pos += 1;
                    Some(OldTuple::Key(r.tuple()?))
                }
                b'O' => {
                    r.pos += 1;
                    Some(OldTuple::Full(r.tuple()?))
                }
                _ => None,
            };
            r.expect_new_tag()?;
            PgOutput::Update(Update {
                relation,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation = r.u32("relation oid")?;
            let old = match r.u8("tuple tag")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => {
                    return Err(r.error(format!(
                        "expected old tuple tag 'K' or 'O', found 0x{other:02x}"
                    )))
                }
            };
            PgOutput::Delete(Delete { relation, old })
        }
        b'T' => {
            let count = r.u32("relation count")? as usize;
            let options = r.u8("options")?;
            // Cap the reservation by what the input can hold, so a bogus count cannot allocate much.
            let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relations.push(r.u32("relation oid")?);
            }
            PgOutput::Truncate(Truncate { options, relations })
        }
        // The only tag left is b'M'; the match above rejected everything else.
        _ => {
            let flags = r.u8("flags")?;
            let lsn = Lsn(r.u64("message LSN")?);
            let prefix = r.cstr("prefix")?;
            let len = r.len("content length")?;
            PgOutput::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.take(len, "content")?,
            })
        }
    };
    r.finish()?;
    Ok(message)
}

/// A cursor over one message that turns every short read into a [`DecodeError`].
struct Reader<'a> {
    /// The whole message.
    data: &'a Bytes,
    /// Offset of the next unread byte.
    pos: usize,
    /// XLogData start LSN, for errors.
    at: Lsn,
    /// Message kind being decoded, for errors.
    message: &'static str,
}

impl Reader<'_> {
    /// An error about the current message.
    fn error(&self, detail: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError {
            lsn: self.at,
            message: self.message,
            detail: detail.into(),
        }
    }

    /// The error for a field that runs past the end of the message.
    fn truncated(&self, field: &'static str) -> DecodeError {
        self.error(format!("{field} truncated at byte {}", self.pos))
    }

    /// Bytes left to read.
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Reads `N` bytes as an array.
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .data
            .get(self.pos..self.pos + N)
            .ok_or_else(|| self.truncated(field))?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        self.pos += N;
        Ok(out)
    }

    /// Reads one byte.
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Looks at the next byte without consuming it.
    fn peek_u8(&self, field: &'static str) -> Result<u8, DecodeError> {
        self.data
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.truncated(field))
    }

    /// Reads a big-endian Int16.
    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian Int32.
    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian unsigned Int32 (OIDs, xids).
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian unsigned Int64 (LSNs).
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads an Int32 length that must not be negative.
    fn len(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let start = self.pos;
        let len = self.i32(field)?;
        usize::try_from(len).map_err(|_| self.error(format!("{field} is negative at byte {start}")))
    }

    /// Reads a PostgreSQL timestamp: Int64 microseconds since 2000-01-01 UTC.
    fn timestamp(&mut self, field: &'static str) -> Result<DateTime<Utc>, DecodeError> {
        let start = self.pos;
        let micros = i64::from_be_bytes(self.array(field)?);
        micros
            .checked_add(PG_EPOCH_UNIX_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| self.error(format!("{field} out of range at byte {start}")))
    }

    /// Takes `len` bytes as a zero-copy slice.
    fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < len {
            return Err(self.truncated(field));
        }
        let out = self.data.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// Reads a NUL-terminated UTF-8 string.
    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error(format!("{field} unterminated at byte {}", self.pos)))?;
        let text = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.error(format!("{field} is not UTF-8 at byte {}", self.pos)))?
            .to_owned();
        self.pos += nul + 1;
        Ok(text)
    }

    /// Reads a namespace name, writing out the `pg_catalog` that pgoutput abbreviates as "".
    fn namespace(&mut self) -> Result<String, DecodeError> {
        let name = self.cstr("namespace")?;
        Ok(if name.is_empty() {
            "pg_catalog".to_owned()
        } else {
            name
        })
    }

    /// Reads the body of a Relation message.
    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32("relation oid")?;
        let namespace = self.namespace()?;
        let name = self.cstr("relation name")?;
        let replica_identity = self.u8("replica identity")?;
        let count = self.column_count("column count")?;
        // Each column takes at least 10 bytes: flags, an empty name, type OID and modifier.
        let mut columns = Vec::with_capacity(count.min(self.remaining() / 10));
        for _ in 0..count {
            columns.push(RelationColumn {
                key: self.u8("column flags")? & 1 != 0,
                name: self.cstr("column name")?,
                type_oid: self.u32("column type oid")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// Reads an Int16 column count that must not be negative.
    fn column_count(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let start = self.pos;
        let count = self.i16(field)?;
        usize::try_from(count)
            .map_err(|_| self.error(format!("{field} is negative at byte {start}")))
    }

    /// Consumes the `N` byte that introduces a new tuple.
    fn expect_new_tag(&mut self) -> Result<(), DecodeError> {
        match self.u8("tuple tag")? {
            b'N' => Ok(()),
            other => Err(self.error(format!(
                "expected new tuple tag 'N' at byte {}, found 0x{other:02x}",
                self.pos - 1
            ))),
        }
    }

    /// Reads TupleData: a column count, then per column a kind byte and maybe a length and value.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.column_count("tuple")?;
        // Each column takes at least its kind byte.
        let mut datums = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let datum = match self.u8("tuple")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.len("tuple value length")?;
                    Datum::Text(self.take(len, "tuple")?)
                }
                b'b' => {
                    let len = self.len("tuple value length")?;
                    Datum::Binary(self.take(len, "tuple")?)
                }
                other => {
                    return Err(self.error(format!(
                        "unknown tuple column kind 0x{other:02x} at byte {}",
                        self.pos - 1
                    )))
                }
            };
            datums.push(datum);
        }
        Ok(Tuple(datums))
    }

    /// Rejects bytes left over after a complete message.
    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error(format!(
                "{n} unexpected trailing bytes at byte {}",
                self.pos
            ))),
        }
    }
}

/// The latest [`Relation`] message per table OID.
///
/// pgoutput sends a Relation before a table's first change in a session and again after each
/// schema change, so the newest message always describes the tuples that follow it.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    /// Relations by OID.
    relations: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `relation`, replacing any older schema for its OID, and returns the shared copy.
    pub fn insert(&mut self, relation: Relation) -> Arc<Relation> {
        let relation = Arc::new(relation);
        self.relations.insert(relation.oid, Arc::clone(&relation));
        relation
    }

    /// The latest schema for `oid`.
    pub fn get(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    /// Number of cached relations.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// True when no relation is cached.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// Forgets everything, e.g. when a new replication session starts.
    pub fn clear(&mut self) {
        self.relations.clear();
    }
}

/// Replaces [`Datum::UnchangedToast`] in `new` by the old tuple's value at the same index, where the
/// old tuple holds one.
///
/// A full old tuple holds every column, so any non-TOAST old datum (NULL included) is copied. A key
/// tuple holds values only for the replica identity columns (the rest are NULL placeholders, and key
/// columns can't be NULL), so only its text or binary values are copied. Datums that stay
/// `UnchangedToast` mean the value is unknown to us; callers must not read them as NULL.
pub fn fill_unchanged_toast(new: &mut Tuple, old: Option<&OldTuple>) {
    let Some(old) = old else { return };
    let (old, full) = match old {
        OldTuple::Full(t) => (t, true),
        OldTuple::Key(t) => (t, false),
    };
    for (slot, previous) in new.0.iter_mut().zip(&old.0) {
        if *slot != Datum::UnchangedToast {
            continue;
        }
        let usable = match previous {
            Datum::Text(_) | Datum::Binary(_) => true,
            Datum::Null => full,
            Datum::UnchangedToast => false,
        };
        if usable {
            *slot = previous.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};
    use proptest::prelude::*;

    /// Writes pgoutput messages the way the server does, so tests can round-trip them.
    #[derive(Default)]
    struct Builder(Vec<u8>);

    impl Builder {
        /// Appends one byte.
        fn u8(&mut self, v: u8) -> &mut Self {
            self.0.push(v);
            self
        }

        /// Appends a big-endian Int16.
        fn i16(&mut self, v: i16) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        /// Appends a big-endian Int32.
        fn i32(&mut self, v: i32) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        /// Appends a big-endian unsigned Int32.
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        /// Appends a big-endian Int64.
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        /// Appends a PostgreSQL timestamp.
        fn time(&mut self, t: DateTime<Utc>) -> &mut Self {
            let micros = t.timestamp_micros() - PG_EPOCH_UNIX_MICROS;
            self.0.extend_from_slice(&micros.to_be_bytes());
            self
        }

        /// Appends a NUL-terminated string.
        fn cstr(&mut self, s: &str) -> &mut Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }

        /// Appends raw bytes.
        fn extend(&mut self, bytes: &[u8]) -> &mut Self {
            self.0.extend_from_slice(bytes);
            self
        }

        /// Appends TupleData.
        fn tuple(&mut self, t: &Tuple) -> &mut Self {
            self.i16(t.0.len() as i16);
            for d in &t.0 {
                match d {
                    Datum::Null => self.u8(b'n'),
                    Datum::UnchangedToast => self.u8(b'u'),
                    Datum::Text(b) => self.u8(b't').i32(b.len() as i32).extend(b),
                    Datum::Binary(b) => self.u8(b'b').i32(b.len() as i32).extend(b),
                };
            }
            self
        }

        /// Appends an old tuple with its `K`/`O` tag.
        fn old(&mut self, old: &OldTuple) -> &mut Self {
            match old {
                OldTuple::Key(t) => self.u8(b'K').tuple(t),
                OldTuple::Full(t) => self.u8(b'O').tuple(t),
            }
        }

        /// The bytes written so far.
        fn bytes(&self) -> Bytes {
            Bytes::copy_from_slice(&self.0)
        }
    }

    /// Encodes `m` as PostgreSQL would.
    fn encode(m: &PgOutput) -> Bytes {
        let mut b = Builder::default();
        match m {
            PgOutput::Begin(x) => b.u8(b'B').u64(x.final_lsn.0).time(x.commit_time).u32(x.xid),
            PgOutput::Commit(x) => b
                .u8(b'C')
                .u8(x.flags)
                .u64(x.commit_lsn.0)
                .u64(x.end_lsn.0)
                .time(x.commit_time),
            PgOutput::Origin(x) => b.u8(b'O').u64(x.commit_lsn.0).cstr(&x.name),
            PgOutput::Relation(x) => {
                b.u8(b'R')
                    .u32(x.oid)
                    .cstr(&x.namespace)
                    .cstr(&x.name)
                    .u8(x.replica_identity)
                    .i16(x.columns.len() as i16);
                for c in &x.columns {
                    b.u8(u8::from(c.key))
                        .cstr(&c.name)
                        .u32(c.type_oid)
                        .i32(c.type_modifier);
                }
                &mut b
            }
            PgOutput::Type(x) => b.u8(b'Y').u32(x.oid).cstr(&x.namespace).cstr(&x.name),
            PgOutput::Insert(x) => b.u8(b'I').u32(x.relation).u8(b'N').tuple(&x.new),
            PgOutput::Update(x) => {
                b.u8(b'U').u32(x.relation);
                if let Some(old) = &x.old {
                    b.old(old);
                }
                b.u8(b'N').tuple(&x.new)
            }
            PgOutput::Delete(x) => b.u8(b'D').u32(x.relation).old(&x.old),
            PgOutput::Truncate(x) => {
                b.u8(b'T').u32(x.relations.len() as u32).u8(x.options);
                for oid in &x.relations {
                    b.u32(*oid);
                }
                &mut b
            }
            PgOutput::Message(x) => b
                .u8(b'M')
                .u8(u8::from(x.transactional))
                .u64(x.lsn.0)
                .cstr(&x.prefix)
                .i32(x.content.len() as i32)
                .extend(&x.content),
        };
        b.bytes()
    }

    /// A text datum.
    fn t(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A fixed commit time with microseconds.
    fn when() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 9, 14, 5, 7).unwrap() + TimeDelta::microseconds(123_456)
    }

    /// One or more instances of every message kind, with the variants that change the layout.
    fn samples() -> Vec<PgOutput> {
        let row = Tuple(vec![
            t("42"),
            Datum::Null,
            Datum::UnchangedToast,
            Datum::Binary(Bytes::from_static(&[0, 1, 2])),
            t(""),
            t("ünïcode"),
        ]);
        let key = Tuple(vec![t("42"), Datum::Null, Datum::Null]);
        vec![
            PgOutput::Begin(Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time: when(),
                xid: 770,
            }),
            PgOutput::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_time: when(),
            }),
            PgOutput::Origin(Origin {
                commit_lsn: Lsn(7),
                name: "upstream".into(),
            }),
            PgOutput::Relation(Relation {
                oid: 16384,
                namespace: "public".into(),
                name: "orders".into(),
                replica_identity: b'd',
                columns: vec![
                    RelationColumn {
                        key: true,
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        key: false,
                        name: "total".into(),
                        type_oid: 1700,
                        type_modifier: 655366,
                    },
                ],
            }),
            PgOutput::Relation(Relation {
                oid: 1,
                namespace: "s".into(),
                name: "empty".into(),
                replica_identity: b'n',
                columns: vec![],
            }),
            PgOutput::Type(TypeInfo {
                oid: 90001,
                namespace: "public".into(),
                name: "mood".into(),
            }),
            PgOutput::Insert(Insert {
                relation: 16384,
                new: row.clone(),
            }),
            PgOutput::Insert(Insert {
                relation: 16384,
                new: Tuple(vec![]),
            }),
            PgOutput::Update(Update {
                relation: 16384,
                old: None,
                new: row.clone(),
            }),
            PgOutput::Update(Update {
                relation: 16384,
                old: Some(OldTuple::Key(key.clone())),
                new: row.clone(),
            }),
            PgOutput::Update(Update {
                relation: 16384,
                old: Some(OldTuple::Full(row.clone())),
                new: row.clone(),
            }),
            PgOutput::Delete(Delete {
                relation: 16384,
                old: OldTuple::Key(key),
            }),
            PgOutput::Delete(Delete {
                relation: 16384,
                old: OldTuple::Full(row),
            }),
            PgOutput::Truncate(Truncate {
                options: 3,
                relations: vec![16384, 16390, 4_000_000_000],
            }),
            PgOutput::Truncate(Truncate {
                options: 0,
                relations: vec![],
            }),
            PgOutput::Message(LogicalMessage {
                transactional: true,
                lsn: Lsn(0x1_0000_0001),
                prefix: "pgcapi".into(),
                content: Bytes::from_static(b"{\"hello\":1}"),
            }),
            PgOutput::Message(LogicalMessage {
                transactional: false,
                lsn: Lsn(1),
                prefix: String::new(),
                content: Bytes::new(),
            }),
        ]
    }

    const AT: Lsn = Lsn(0x16B3748);

    #[test]
    fn every_message_kind_round_trips() {
        for m in samples() {
            let bytes = encode(&m);
            assert_eq!(decode(&bytes, AT).unwrap(), m, "{}", m.kind());
        }
    }

    #[test]
    fn an_insert_decodes_from_literal_bytes_as_slices_of_the_input() {
        let data = Bytes::from_static(&[
            b'I', 0, 0, 0x40, 0x00, b'N', 0, 3, b't', 0, 0, 0, 2, b'4', b'2', b'n', b'u',
        ]);
        let PgOutput::Insert(insert) = decode(&data, AT).unwrap() else {
            panic!("not an insert")
        };
        assert_eq!(insert.relation, 16384);
        assert_eq!(
            insert.new,
            Tuple(vec![t("42"), Datum::Null, Datum::UnchangedToast])
        );
        let Datum::Text(v) = &insert.new.0[0] else {
            panic!("not text")
        };
        // Zero-copy: the value points into the message buffer.
        assert_eq!(v.as_ptr(), data[13..].as_ptr());
    }

    #[test]
    fn begin_and_commit_decode_from_literal_bytes() {
        // Commit time 0 is the PostgreSQL epoch; 1_000_000 is one second later.
        let begin = Bytes::from_static(&[
            b'B', 0, 0, 0, 0x16, 0xB3, 0x74, 0xD8, 0x48, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 2,
        ]);
        assert_eq!(
            decode(&begin, AT).unwrap(),
            PgOutput::Begin(Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap(),
                xid: 0x302,
            })
        );
        let commit = Bytes::from_static(&[
            b'C', 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0x0F, 0x42,
            0x40,
        ]);
        assert_eq!(
            decode(&commit, AT).unwrap(),
            PgOutput::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(9),
                end_lsn: Lsn(10),
                commit_time: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 1).unwrap(),
            })
        );
    }

    #[test]
    fn an_empty_namespace_means_pg_catalog() {
        let rel = Builder::default()
            .u8(b'R')
            .u32(1259)
            .cstr("")
            .cstr("pg_class")
            .u8(b'n')
            .i16(0)
            .bytes();
        let PgOutput::Relation(rel) = decode(&rel, AT).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.qualified_name(), "pg_catalog.pg_class");
        let ty = Builder::default()
            .u8(b'Y')
            .u32(16)
            .cstr("")
            .cstr("bool")
            .bytes();
        let PgOutput::Type(ty) = decode(&ty, AT).unwrap() else {
            panic!("not a type")
        };
        assert_eq!(ty.namespace, "pg_catalog");
    }

    #[test]
    fn relation_helpers_find_columns_and_qualify_names() {
        let PgOutput::Relation(rel) = samples().swap_remove(3) else {
            panic!("sample 3 is a relation")
        };
        assert_eq!(rel.qualified_name(), "public.orders");
        assert_eq!(rel.column_index("total"), Some(1));
        assert_eq!(rel.column_index("id"), Some(0));
        assert_eq!(rel.column_index("missing"), None);
        assert!(rel.columns[0].key && !rel.columns[1].key);
    }

    #[test]
    fn every_truncation_of_every_message_is_an_error() {
        for m in samples() {
            let full = encode(&m);
            for len in 0..full.len() {
                let cut = full.slice(..len);
                assert!(
                    decode(&cut, AT).is_err(),
                    "{} cut at {len} decoded",
                    m.kind()
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for m in samples() {
            let mut bytes = encode(&m).to_vec();
            bytes.push(0);
            let err = decode(&Bytes::from(bytes), AT).unwrap_err();
            assert!(err.detail().contains("trailing"), "{err}");
        }
    }

    #[test]
    fn corrupting_any_byte_never_panics() {
        for m in samples() {
            let full = encode(&m).to_vec();
            for i in 0..full.len() {
                for v in [0u8, 1, 0x7f, 0x80, 0xff, b'n', b't', b'N', b'K'] {
                    let mut bad = full.clone();
                    bad[i] = v;
                    let _ = decode(&Bytes::from(bad), AT);
                }
            }
        }
    }

    #[test]
    fn errors_name_the_lsn_the_message_and_the_byte() {
        let full = encode(&PgOutput::Insert(Insert {
            relation: 16384,
            new: Tuple(vec![t("a@example.com")]),
        }));
        let err = decode(&full.slice(..full.len() - 1), AT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed pgoutput at LSN 0/16B3748: Insert: tuple truncated at byte 13"
        );
        assert_eq!(err.lsn(), AT);
        assert_eq!(err.message_kind(), "Insert");
        // The partial value must never appear in the error.
        assert!(!err.to_string().contains("example"));
    }

    #[test]
    fn unknown_tags_and_kinds_are_errors() {
        let err = decode(&Bytes::from_static(b"X"), AT).unwrap_err();
        assert!(
            err.to_string().contains("unknown message tag 0x58"),
            "{err}"
        );
        let err = decode(&Bytes::new(), AT).unwrap_err();
        assert!(err.to_string().contains("message tag truncated"), "{err}");
        // Streaming messages (protocol v2) are not v1.
        assert!(decode(&Bytes::from_static(b"S\0\0\0\x01\x01"), AT).is_err());
        let bad_kind = Builder::default()
            .u8(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b'x')
            .bytes();
        let err = decode(&bad_kind, AT).unwrap_err();
        assert!(err.detail().contains("unknown tuple column kind"), "{err}");
        let bad_old = Builder::default().u8(b'D').u32(1).u8(b'N').i16(0).bytes();
        assert!(decode(&bad_old, AT).is_err());
        let negative = Builder::default()
            .u8(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(-1)
            .bytes();
        let err = decode(&negative, AT).unwrap_err();
        assert!(err.detail().contains("negative"), "{err}");
        let negative_count = Builder::default().u8(b'I').u32(1).u8(b'N').i16(-1).bytes();
        assert!(decode(&negative_count, AT).is_err());
    }

    #[test]
    fn huge_counts_do_not_allocate_before_failing() {
        let truncate = Builder::default()
            .u8(b'T')
            .u32(u32::MAX)
            .u8(0)
            .u32(1)
            .bytes();
        assert!(decode(&truncate, AT).is_err());
        let relation = Builder::default()
            .u8(b'R')
            .u32(1)
            .cstr("a")
            .cstr("b")
            .u8(b'd')
            .i16(i16::MAX)
            .bytes();
        assert!(decode(&relation, AT).is_err());
        let message = Builder::default()
            .u8(b'M')
            .u8(1)
            .u64(1)
            .cstr("p")
            .i32(i32::MAX)
            .bytes();
        assert!(decode(&message, AT).is_err());
    }

    #[test]
    fn out_of_range_timestamps_and_bad_utf8_are_errors() {
        let begin = Builder::default()
            .u8(b'B')
            .u64(1)
            .u64(i64::MAX as u64)
            .u32(1)
            .bytes();
        let err = decode(&begin, AT).unwrap_err();
        assert!(err.detail().contains("out of range"), "{err}");
        let origin = Builder::default()
            .u8(b'O')
            .u64(1)
            .extend(&[0xff, 0xfe, 0])
            .bytes();
        let err = decode(&origin, AT).unwrap_err();
        assert!(err.detail().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn the_relation_cache_keeps_the_latest_schema() {
        let mut cache = RelationCache::new();
        assert!(cache.is_empty());
        let PgOutput::Relation(mut rel) = samples().swap_remove(3) else {
            panic!("sample 3 is a relation")
        };
        let first = cache.insert(rel.clone());
        assert_eq!(first.columns.len(), 2);
        rel.columns.pop();
        cache.insert(rel);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(16384).unwrap().columns.len(), 1);
        // The earlier Arc still describes the tuples decoded before the change.
        assert_eq!(first.columns.len(), 2);
        assert!(cache.get(1).is_none());
        cache.clear();
        assert!(cache.get(16384).is_none());
    }

    #[test]
    fn unchanged_toast_is_filled_from_a_full_old_tuple() {
        let mut new = Tuple(vec![t("1"), Datum::UnchangedToast, Datum::UnchangedToast]);
        let old = OldTuple::Full(Tuple(vec![t("0"), t("long notes"), Datum::Null]));
        fill_unchanged_toast(&mut new, Some(&old));
        assert_eq!(new, Tuple(vec![t("1"), t("long notes"), Datum::Null]));
    }

    #[test]
    fn unchanged_toast_is_filled_only_from_key_values_of_a_key_tuple() {
        let mut new = Tuple(vec![Datum::UnchangedToast, Datum::UnchangedToast]);
        let old = OldTuple::Key(Tuple(vec![t("key"), Datum::Null]));
        fill_unchanged_toast(&mut new, Some(&old));
        assert_eq!(new, Tuple(vec![t("key"), Datum::UnchangedToast]));
    }

    #[test]
    fn unchanged_toast_stays_without_an_old_tuple_or_value() {
        let mut new = Tuple(vec![Datum::UnchangedToast, t("x"), Datum::UnchangedToast]);
        fill_unchanged_toast(&mut new, None);
        assert_eq!(new.0[0], Datum::UnchangedToast);
        // A shorter old tuple, or an old value that is itself unchanged TOAST, leaves the slot alone.
        let old = OldTuple::Full(Tuple(vec![Datum::UnchangedToast, t("y")]));
        fill_unchanged_toast(&mut new, Some(&old));
        assert_eq!(
            new,
            Tuple(vec![Datum::UnchangedToast, t("x"), Datum::UnchangedToast])
        );
    }

    /// Any datum.
    fn datum() -> impl Strategy<Value = Datum> {
        prop_oneof![
            Just(Datum::Null),
            Just(Datum::UnchangedToast),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Datum::Text(v.into())),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Datum::Binary(v.into())),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&Bytes::from(data), AT);
        }

        #[test]
        fn random_bodies_after_a_valid_tag_never_panic(
            tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut data = vec![tag];
            data.extend(body);
            let _ = decode(&Bytes::from(data), AT);
        }

        #[test]
        fn random_updates_round_trip(
            relation in any::<u32>(),
            new in proptest::collection::vec(datum(), 0..20),
            old in proptest::option::of((any::<bool>(), proptest::collection::vec(datum(), 0..20))),
        ) {
            let m = PgOutput::Update(Update {
                relation,
                old: old.map(|(key, t)| if key { OldTuple::Key(Tuple(t)) } else { OldTuple::Full(Tuple(t)) }),
                new: Tuple(new),
            });
            prop_assert_eq!(decode(&encode(&m), AT).unwrap(), m);
        }
    }
}

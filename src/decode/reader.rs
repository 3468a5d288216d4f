//! The byte cursor under [`decode`](super::decode): bounded reads of pgoutput's fields, each short
//! read an error naming the field, and the parts several messages share (relations, tuples).

use super::*;
/// A cursor over one message that turns every short read into a [`DecodeError`].
pub(super) struct Reader<'a> {
    /// The whole message.
    pub(super) data: &'a Bytes,
    /// Offset of the next unread byte.
    pub(super) pos: usize,
    /// XLogData start LSN, for errors.
    pub(super) at: Lsn,
    /// Message kind being decoded, for errors.
    pub(super) message: &'static str,
}

impl Reader<'_> {
    /// An error about the current message.
    pub(super) fn error(&self, detail: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError {
            lsn: self.at,
            message: self.message,
            detail: detail.into(),
        }
    }

    /// The error for a field that runs past the end of the message.
    pub(super) fn truncated(&self, field: &'static str) -> DecodeError {
        self.error(format!("{field} truncated at byte {}", self.pos))
    }

    /// Bytes left to read.
    pub(super) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Reads `N` bytes as an array.
    pub(super) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
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
    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Looks at the next byte without consuming it.
    pub(super) fn peek_u8(&self, field: &'static str) -> Result<u8, DecodeError> {
        self.data
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.truncated(field))
    }

    /// Reads a big-endian Int16.
    pub(super) fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian Int32.
    pub(super) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian unsigned Int32 (OIDs, xids).
    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian unsigned Int64 (LSNs).
    pub(super) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads an Int32 length that must not be negative.
    pub(super) fn len(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let start = self.pos;
        let len = self.i32(field)?;
        usize::try_from(len).map_err(|_| self.error(format!("{field} is negative at byte {start}")))
    }

    /// Reads a PostgreSQL timestamp: Int64 microseconds since 2000-01-01 UTC.
    pub(super) fn timestamp(&mut self, field: &'static str) -> Result<DateTime<Utc>, DecodeError> {
        let start = self.pos;
        let micros = i64::from_be_bytes(self.array(field)?);
        micros
            .checked_add(PG_EPOCH_UNIX_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| self.error(format!("{field} out of range at byte {start}")))
    }

    /// Takes `len` bytes as a zero-copy slice.
    pub(super) fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < len {
            return Err(self.truncated(field));
        }
        let out = self.data.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// Reads a NUL-terminated UTF-8 string.
    pub(super) fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
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
    pub(super) fn namespace(&mut self) -> Result<String, DecodeError> {
        let name = self.cstr("namespace")?;
        Ok(if name.is_empty() {
            "pg_catalog".to_owned()
        } else {
            name
        })
    }

    /// Reads the body of a Relation message.
    pub(super) fn relation(&mut self) -> Result<Relation, DecodeError> {
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
    pub(super) fn column_count(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let start = self.pos;
        let count = self.i16(field)?;
        usize::try_from(count)
            .map_err(|_| self.error(format!("{field} is negative at byte {start}")))
    }

    /// Consumes the `N` byte that introduces a new tuple.
    pub(super) fn expect_new_tag(&mut self) -> Result<(), DecodeError> {
        match self.u8("tuple tag")? {
            b'N' => Ok(()),
            other => Err(self.error(format!(
                "expected new tuple tag 'N' at byte {}, found 0x{other:02x}",
                self.pos - 1
            ))),
        }
    }

    /// Reads TupleData: a column count, then per column a kind byte and maybe a length and value.
    pub(super) fn tuple(&mut self) -> Result<Tuple, DecodeError> {
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
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error(format!(
                "{n} unexpected trailing bytes at byte {}",
                self.pos
            ))),
        }
    }

    /// The rest of an Update message: the relation, the old tuple if any, the new tuple.
    pub(super) fn update(&mut self) -> Result<Update, DecodeError> {
        let relation = self.u32("relation oid")?;
        let old = match self.peek_u8("tuple tag")? {
            b'K' => {
                self.pos += 1;
                Some(OldTuple::Key(self.tuple()?))
            }
            b'O' => {
                self.pos += 1;
                Some(OldTuple::Full(self.tuple()?))
            }
            _ => None,
        };
        self.expect_new_tag()?;
        Ok(Update {
            relation,
            old,
            new: self.tuple()?,
        })
    }

    /// The rest of a Delete message: the relation and the old key or full tuple.
    pub(super) fn delete(&mut self) -> Result<Delete, DecodeError> {
        let relation = self.u32("relation oid")?;
        let old = match self.u8("tuple tag")? {
            b'K' => OldTuple::Key(self.tuple()?),
            b'O' => OldTuple::Full(self.tuple()?),
            other => {
                return Err(self.error(format!(
                    "expected old tuple tag 'K' or 'O', found 0x{other:02x}"
                )))
            }
        };
        Ok(Delete { relation, old })
    }

    /// The rest of a Truncate message.
    pub(super) fn truncate(&mut self) -> Result<Truncate, DecodeError> {
        let count = self.u32("relation count")? as usize;
        let options = self.u8("options")?;
        // Cap the reservation by what the input can hold, so a bogus count cannot allocate much.
        let mut relations = Vec::with_capacity(count.min(self.remaining() / 4));
        for _ in 0..count {
            relations.push(self.u32("relation oid")?);
        }
        Ok(Truncate { options, relations })
    }

    /// The rest of a logical decoding message (`pg_logical_emit_message`).
    pub(super) fn logical_message(&mut self) -> Result<LogicalMessage, DecodeError> {
        let flags = self.u8("flags")?;
        let lsn = Lsn(self.u64("message LSN")?);
        let prefix = self.cstr("prefix")?;
        let len = self.len("content length")?;
        Ok(LogicalMessage {
            transactional: flags & 1 != 0,
            lsn,
            prefix,
            content: self.take(len, "content")?,
        })
    }
}

//! A pgoutput writer for the decoder tests: messages written the way the server writes them, so that
//! tests can round-trip them and build malformed ones byte by byte.

use super::*;

/// Writes pgoutput messages the way the server does, so tests can round-trip them.
#[derive(Default)]
pub(super) struct Builder(Vec<u8>);

impl Builder {
    /// Appends one byte.
    pub(super) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Appends a big-endian Int16.
    pub(super) fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian Int32.
    pub(super) fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian unsigned Int32.
    pub(super) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian Int64.
    pub(super) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a PostgreSQL timestamp.
    pub(super) fn time(&mut self, t: DateTime<Utc>) -> &mut Self {
        let micros = t.timestamp_micros() - PG_EPOCH_UNIX_MICROS;
        self.0.extend_from_slice(&micros.to_be_bytes());
        self
    }

    /// Appends a NUL-terminated string.
    pub(super) fn cstr(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }

    /// Appends raw bytes.
    pub(super) fn extend(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends TupleData.
    pub(super) fn tuple(&mut self, t: &Tuple) -> &mut Self {
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
    pub(super) fn old(&mut self, old: &OldTuple) -> &mut Self {
        match old {
            OldTuple::Key(t) => self.u8(b'K').tuple(t),
            OldTuple::Full(t) => self.u8(b'O').tuple(t),
        }
    }

    /// The bytes written so far.
    pub(super) fn bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }
}

/// Encodes `m` as PostgreSQL would.
pub(super) fn encode(m: &PgOutput) -> Bytes {
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

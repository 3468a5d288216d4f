//! Typed column values parsed from pgoutput's text output, by column type OID.
//!
//! The parsers expect PostgreSQL's own output formats with `DateStyle = ISO` (the replication
//! connection should set `datestyle=ISO`); they are strict so that a misconfigured session fails
//! loudly instead of yielding wrong dates. Errors name the type and the reason, never the value.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeDelta, Utc};

use super::Datum;

mod time;

use time::{parse_date, parse_timestamp};

/// Built-in type OIDs (from `pg_type.dat`; stable across PostgreSQL versions).
pub mod type_oid {
    /// `boolean`.
    pub const BOOL: u32 = 16;
    /// `bytea`.
    pub const BYTEA: u32 = 17;
    /// `"char"` (one byte).
    pub const CHAR: u32 = 18;
    /// `name`.
    pub const NAME: u32 = 19;
    /// `bigint`.
    pub const INT8: u32 = 20;
    /// `smallint`.
    pub const INT2: u32 = 21;
    /// `integer`.
    pub const INT4: u32 = 23;
    /// `text`.
    pub const TEXT: u32 = 25;
    /// `oid`.
    pub const OID: u32 = 26;
    /// `json`.
    pub const JSON: u32 = 114;
    /// `cidr`.
    pub const CIDR: u32 = 650;
    /// `real`.
    pub const FLOAT4: u32 = 700;
    /// `double precision`.
    pub const FLOAT8: u32 = 701;
    /// `inet`.
    pub const INET: u32 = 869;
    /// `character(n)`, blank-padded.
    pub const BPCHAR: u32 = 1042;
    /// `character varying`.
    pub const VARCHAR: u32 = 1043;
    /// `date`.
    pub const DATE: u32 = 1082;
    /// `timestamp without time zone`.
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamp with time zone`.
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `numeric`.
    pub const NUMERIC: u32 = 1700;
    /// `uuid`.
    pub const UUID: u32 = 2950;
    /// `jsonb`.
    pub const JSONB: u32 = 3802;
}

/// The SQL name of a type this module knows, or `unknown type` for the others.
pub fn type_name(oid: u32) -> &'static str {
    use type_oid::*;
    match oid {
        BOOL => "bool",
        BYTEA => "bytea",
        CHAR => "char",
        NAME => "name",
        INT8 => "int8",
        INT2 => "int2",
        INT4 => "int4",
        TEXT => "text",
        OID => "oid",
        JSON => "json",
        CIDR => "cidr",
        FLOAT4 => "float4",
        FLOAT8 => "float8",
        INET => "inet",
        BPCHAR => "bpchar",
        VARCHAR => "varchar",
        DATE => "date",
        TIMESTAMP => "timestamp",
        TIMESTAMPTZ => "timestamptz",
        NUMERIC => "numeric",
        UUID => "uuid",
        JSONB => "jsonb",
        _ => "unknown type",
    }
}

/// A typed column value, parsed from pgoutput text output.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// text, varchar, bpchar (padding kept: callers trim), name, `"char"`, and every type not listed here.
    Text(String),
    /// int2, int4, int8, oid.
    Int(i64),
    /// float4, float8 (NaN and ±infinity included, as PostgreSQL allows them).
    Float(f64),
    /// numeric, as PostgreSQL prints it: optional `-`, digits, optional `.` and digits (scale kept,
    /// e.g. `12.50`). NaN and ±Infinity are rejected: no conversion value can be one.
    Numeric(String),
    /// bool.
    Bool(bool),
    /// date.
    Date(NaiveDate),
    /// timestamp without time zone.
    Timestamp(NaiveDateTime),
    /// timestamp with time zone, converted to UTC.
    TimestampTz(DateTime<Utc>),
    /// inet or cidr holding one host address (no prefix, or a /32 or /128 prefix).
    Inet(IpAddr),
    /// inet or cidr holding a network: address and a prefix shorter than the address.
    Network(IpAddr, u8),
    /// uuid, lowercase hyphenated.
    Uuid(String),
    /// json, jsonb.
    Json(serde_json::Value),
}

impl Value {
    /// The value as text for templates; `None` for NULL.
    ///
    /// Numeric as PostgreSQL printed it, floats as shortest round-trip decimals (`NaN`,
    /// `Infinity`, `-Infinity`), booleans `true`/`false`, dates `YYYY-MM-DD`, timestamps RFC 3339
    /// (`2024-01-15T10:30:00.5Z`; without offset for `timestamp`), networks `addr/prefix`, JSON
    /// compact.
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Value::Null => return None,
            Value::Text(s) | Value::Numeric(s) | Value::Uuid(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) if f.is_nan() => "NaN".to_owned(),
            Value::Float(f) if f.is_infinite() => {
                if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
            }
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Date(d) => d.format("%Y-%m-%d").to_string(),
            Value::Timestamp(t) => t.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
            Value::TimestampTz(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            Value::Inet(a) => a.to_string(),
            Value::Network(a, p) => format!("{a}/{p}"),
            Value::Json(j) => j.to_string(),
        })
    }

    /// [`Value::to_text`], moving the text out of text-like values instead of copying it.
    pub fn into_text(self) -> Option<String> {
        match self {
            Value::Text(s) | Value::Numeric(s) | Value::Uuid(s) => Some(s),
            other => other.to_text(),
        }
    }

    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// A column value that did not parse as its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValueError {
    type_oid: u32,
    reason: &'static str,
}

impl ValueError {
    /// Builds an error for a value of type `type_oid`.
    fn new(type_oid: u32, reason: &'static str) -> Self {
        Self { type_oid, reason }
    }

    /// OID of the column type.
    pub fn type_oid(&self) -> u32 {
        self.type_oid
    }

    /// Why the value was rejected (never contains the value).
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} value (type oid {}): {}",
            type_name(self.type_oid),
            self.type_oid,
            self.reason
        )
    }
}

/// Parses one datum: NULL becomes [`Value::Null`], text goes through [`parse_value`].
///
/// Unchanged-TOAST and binary datums are errors: the first has no value in the message (fill it
/// with [`super::fill_unchanged_toast`] first), the second needs binary mode, which we never request.
pub fn parse_datum(type_oid: u32, datum: &Datum) -> Result<Value, ValueError> {
    match datum {
        Datum::Null => Ok(Value::Null),
        Datum::Text(text) => parse_value(type_oid, text),
        Datum::UnchangedToast => Err(ValueError::new(
            type_oid,
            "unchanged TOAST value is not in the message",
        )),
        Datum::Binary(_) => Err(ValueError::new(
            type_oid,
            "binary format values are not supported",
        )),
    }
}

/// True for the text types (`text`, `varchar`, `char(n)`, `"char"`, `name`): their value is the text
/// itself, so [`parse_value`] gives [`Value::Text`] of any valid UTF-8.
pub fn is_plain_text(type_oid: u32) -> bool {
    use type_oid::*;
    matches!(type_oid, TEXT | VARCHAR | BPCHAR | CHAR | NAME)
}

/// Parses one text-format value by its column type OID.
///
/// Text types (and unknown types) must be UTF-8 and are returned as is. `numeric` NaN/Infinity and
/// infinite dates or timestamps are errors; float NaN/Infinity are values.
pub fn parse_value(type_oid: u32, text: &[u8]) -> Result<Value, ValueError> {
    use type_oid::*;
    let err = |reason| ValueError::new(type_oid, reason);
    let s = std::str::from_utf8(text).map_err(|_| err("not valid UTF-8"))?;
    match type_oid {
        BOOL => match s {
            "t" | "true" => Ok(Value::Bool(true)),
            "f" | "false" => Ok(Value::Bool(false)),
            _ => Err(err("expected 't' or 'f'")),
        },
        INT2 | INT4 | INT8 => s
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| err("not an integer in range")),
        OID => s
            .parse::<u32>()
            .map(|o| Value::Int(i64::from(o)))
            .map_err(|_| err("not an unsigned 32-bit integer")),
        FLOAT4 | FLOAT8 => parse_float(s).map(Value::Float).ok_or(err("not a number")),
        NUMERIC => parse_numeric(s).map(Value::Numeric).map_err(err),
        DATE => parse_date(s).map(Value::Date).map_err(err),
        TIMESTAMP => match parse_timestamp(s).map_err(err)? {
            (t, None) => Ok(Value::Timestamp(t)),
            (_, Some(_)) => Err(err("unexpected time zone offset")),
        },
        TIMESTAMPTZ => match parse_timestamp(s).map_err(err)? {
            (t, Some(offset)) => t
                .checked_sub_signed(TimeDelta::seconds(i64::from(offset)))
                .map(|utc| Value::TimestampTz(utc.and_utc()))
                .ok_or(err("out of range")),
            (_, None) => Err(err("missing time zone offset")),
        },
        INET | CIDR => parse_inet(s).map_err(err),
        UUID => parse_uuid(s)
            .map(Value::Uuid)
            .ok_or(err("not a hyphenated UUID")),
        JSON | JSONB => serde_json::from_str(s)
            .map(Value::Json)
            .map_err(|_| err("not valid JSON")),
        _ => Ok(Value::Text(s.to_owned())),
    }
}

/// Parses float4/float8 output, including PostgreSQL's spellings of the special values.
fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        // Rust also accepts "inf"/"nan" spellings, which PostgreSQL never prints; they are harmless.
        _ => s.parse().ok(),
    }
}

/// Checks numeric output (`-?digits(.digits)?`) and returns it unchanged.
fn parse_numeric(s: &str) -> Result<String, &'static str> {
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return Err("NaN and infinite values are not supported");
    }
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if digits(int) && frac.is_none_or(digits) {
        Ok(s.to_owned())
    } else {
        Err("not a decimal number")
    }
}

/// Parses inet/cidr output: an address with an optional `/prefix`.
fn parse_inet(s: &str) -> Result<Value, &'static str> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
    let full = if addr.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => Ok(Value::Inet(addr)),
        Some(p) => {
            let p: u8 = p
                .parse()
                .ok()
                .filter(|&p| p <= full)
                .ok_or("prefix length out of range")?;
            Ok(if p == full {
                Value::Inet(addr)
            } else {
                Value::Network(addr, p)
            })
        }
    }
}

/// Checks the 8-4-4-4-12 hexadecimal form and returns it lowercased.
fn parse_uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let shaped = b.len() == 36
        && b.iter().enumerate().all(|(i, &ch)| match i {
            8 | 13 | 18 | 23 => ch == b'-',
            _ => ch.is_ascii_hexdigit(),
        });
    shaped.then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;

//! Typed column values parsed from pgoutput's text output, by column type OID.
//!
//! The parsers expect PostgreSQL's own output formats with `DateStyle = ISO` (the replication
//! connection should set `datestyle=ISO`); they are strict so that a misconfigured session fails
//! loudly instead of yielding wrong dates. Errors name the type and the reason, never the value.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeDelta, Utc};

use super::Datum;

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

/// A cursor over ASCII date/time text.
struct Cursor<'a> {
    /// The text.
    bytes: &'a [u8],
    /// Offset of the next unread byte.
    pos: usize,
}

impl Cursor<'_> {
    /// The next byte, if any.
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Consumes `b` if it is next.
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.pos += usize::from(hit);
        hit
    }

    /// Reads a run of at least `min` and at most `max` ASCII digits as a number, with the digit count.
    fn digits(&mut self, min: usize, max: usize) -> Option<(u32, usize)> {
        let start = self.pos;
        let mut value: u32 = 0;
        while self.pos - start < max {
            match self.peek() {
                Some(b @ b'0'..=b'9') => {
                    value = value.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
                    self.pos += 1;
                }
                _ => break,
            }
        }
        let count = self.pos - start;
        (count >= min).then_some((value, count))
    }

    /// Reads exactly two digits.
    fn two(&mut self) -> Option<u32> {
        self.digits(2, 2).map(|(v, _)| v)
    }

    /// True when everything was read.
    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

/// Reads `YYYY-MM-DD` (year of 4 or more digits), leaving the era to the caller.
fn read_ymd(c: &mut Cursor<'_>) -> Result<(u32, u32, u32), &'static str> {
    const MALFORMED: &str = "expected ISO format YYYY-MM-DD";
    let (year, _) = c.digits(4, 7).ok_or(MALFORMED)?;
    if !c.eat(b'-') {
        return Err(MALFORMED);
    }
    let month = c.two().ok_or(MALFORMED)?;
    if !c.eat(b'-') {
        return Err(MALFORMED);
    }
    let day = c.two().ok_or(MALFORMED)?;
    Ok((year, month, day))
}

/// Consumes a trailing ` BC` era marker, if present.
fn read_era(c: &mut Cursor<'_>) -> bool {
    if c.bytes[c.pos..] == *b" BC" {
        c.pos += 3;
        true
    } else {
        false
    }
}

/// Builds a date from an ISO year (AD, or BC when `bc`, where 1 BC is astronomical year 0).
fn make_date(year: u32, month: u32, day: u32, bc: bool) -> Result<NaiveDate, &'static str> {
    let year = i32::try_from(year).map_err(|_| "out of range")?;
    let year = if bc { 1 - year } else { year };
    if bc && year > 0 {
        return Err("year 0 does not exist");
    }
    NaiveDate::from_ymd_opt(year, month, day).ok_or("no such date or out of range")
}

/// Parses date output in the ISO DateStyle, e.g. `2024-01-15` or `0044-03-15 BC`.
fn parse_date(s: &str) -> Result<NaiveDate, &'static str> {
    if matches!(s, "infinity" | "-infinity") {
        return Err("infinite dates are not supported");
    }
    let mut c = Cursor {
        bytes: s.as_bytes(),
        pos: 0,
    };
    let (y, m, d) = read_ymd(&mut c)?;
    let bc = read_era(&mut c);
    if !c.done() {
        return Err("unexpected text after the date");
    }
    make_date(y, m, d, bc)
}

/// Parses timestamp or timestamptz output in the ISO DateStyle:
/// `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]`. Returns the local time and the UTC offset
/// in seconds east of Greenwich when one was present.
fn parse_timestamp(s: &str) -> Result<(NaiveDateTime, Option<i32>), &'static str> {
    const MALFORMED: &str = "expected ISO format YYYY-MM-DD HH:MM:SS";
    if matches!(s, "infinity" | "-infinity") {
        return Err("infinite timestamps are not supported");
    }
    let mut c = Cursor {
        bytes: s.as_bytes(),
        pos: 0,
    };
    let (y, mo, d) = read_ymd(&mut c)?;
    if !(c.eat(b' ') || c.eat(b'T')) {
        return Err(MALFORMED);
    }
    let h = c.two().ok_or(MALFORMED)?;
    if !c.eat(b':') {
        return Err(MALFORMED);
    }
    let mi = c.two().ok_or(MALFORMED)?;
    if !c.eat(b':') {
        return Err(MALFORMED);
    }
    let sec = c.two().ok_or(MALFORMED)?;
    let mut nanos = 0;
    if c.eat(b'.') {
        let (frac, n) = c.digits(1, 9).ok_or("malformed fractional seconds")?;
        nanos = frac * 10u32.pow(9 - n as u32);
    }
    let offset = match c.peek() {
        Some(sign @ (b'+' | b'-')) => {
            c.pos += 1;
            let oh = c.two().ok_or("malformed time zone offset")?;
            let om = if c.eat(b':') {
                c.two().ok_or("malformed time zone offset")?
            } else {
                0
            };
            let os = if c.eat(b':') {
                c.two().ok_or("malformed time zone offset")?
            } else {
                0
            };
            if om >= 60 || os >= 60 {
                return Err("malformed time zone offset");
            }
            let secs = (oh * 3600 + om * 60 + os) as i32;
            Some(if sign == b'-' { -secs } else { secs })
        }
        Some(b'Z') => {
            c.pos += 1;
            Some(0)
        }
        _ => None,
    };
    let bc = read_era(&mut c);
    if !c.done() {
        return Err("unexpected text after the timestamp");
    }
    let date = make_date(y, mo, d, bc)?;
    let time = NaiveTime::from_hms_nano_opt(h, mi, sec, nanos).ok_or("no such time of day")?;
    Ok((date.and_time(time), offset))
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
mod tests {
    use super::type_oid::*;
    use super::*;
    use bytes::Bytes;
    use chrono::TimeZone;
    use proptest::prelude::*;

    proptest! {
        /// The text types are taken as is: `is_plain_text` callers may skip `parse_value`.
        #[test]
        fn plain_text_types_parse_to_their_own_text(text in any::<String>()) {
            for oid in [TEXT, VARCHAR, BPCHAR, CHAR, NAME] {
                prop_assert!(is_plain_text(oid));
                prop_assert_eq!(
                    parse_value(oid, text.as_bytes()).unwrap().into_text(),
                    Some(text.clone())
                );
            }
        }
    }

    /// Parses `s` as type `oid`.
    fn p(oid: u32, s: &str) -> Result<Value, ValueError> {
        parse_value(oid, s.as_bytes())
    }

    /// A UTC instant.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn text_types_are_kept_as_is_including_padding() {
        assert_eq!(p(TEXT, "héllo").unwrap(), Value::Text("héllo".into()));
        assert_eq!(p(VARCHAR, "").unwrap(), Value::Text(String::new()));
        assert_eq!(p(BPCHAR, "ab   ").unwrap(), Value::Text("ab   ".into()));
        assert_eq!(p(NAME, "orders").unwrap(), Value::Text("orders".into()));
        assert_eq!(p(CHAR, "x").unwrap(), Value::Text("x".into()));
        assert!(parse_value(TEXT, &[0xff]).is_err());
    }

    #[test]
    fn unknown_types_are_text() {
        assert_eq!(p(99999, "happy").unwrap(), Value::Text("happy".into()));
        assert_eq!(p(BYTEA, "\\x00ff").unwrap(), Value::Text("\\x00ff".into()));
    }

    #[test]
    fn integers_parse_within_range() {
        assert_eq!(p(INT2, "-32768").unwrap(), Value::Int(-32768));
        assert_eq!(p(INT4, "42").unwrap(), Value::Int(42));
        assert_eq!(
            p(INT8, "9223372036854775807").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(p(OID, "4294967295").unwrap(), Value::Int(4_294_967_295));
        assert!(p(INT8, "9223372036854775808").is_err());
        assert!(p(INT4, "1.5").is_err());
        assert!(p(INT4, "").is_err());
        assert!(p(OID, "-1").is_err());
    }

    #[test]
    fn floats_parse_including_special_values() {
        assert_eq!(p(FLOAT8, "2.75").unwrap(), Value::Float(2.75));
        assert_eq!(p(FLOAT4, "1e+20").unwrap(), Value::Float(1e20));
        assert_eq!(p(FLOAT8, "-0").unwrap(), Value::Float(-0.0));
        assert_eq!(p(FLOAT8, "Infinity").unwrap(), Value::Float(f64::INFINITY));
        assert_eq!(
            p(FLOAT8, "-Infinity").unwrap(),
            Value::Float(f64::NEG_INFINITY)
        );
        let Value::Float(nan) = p(FLOAT8, "NaN").unwrap() else {
            panic!("not a float")
        };
        assert!(nan.is_nan());
        assert!(p(FLOAT8, "abc").is_err());
        assert_eq!(Value::Float(f64::NAN).to_text().unwrap(), "NaN");
        assert_eq!(Value::Float(f64::INFINITY).to_text().unwrap(), "Infinity");
        assert_eq!(Value::Float(2.5).to_text().unwrap(), "2.5");
    }

    #[test]
    fn numerics_keep_their_text_and_reject_nan() {
        assert_eq!(p(NUMERIC, "12.50").unwrap(), Value::Numeric("12.50".into()));
        assert_eq!(
            p(NUMERIC, "-0.001").unwrap(),
            Value::Numeric("-0.001".into())
        );
        assert_eq!(
            p(NUMERIC, "123456789012345678901234567890").unwrap(),
            Value::Numeric("123456789012345678901234567890".into())
        );
        for bad in [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e5",
            "",
            "-",
            "1.",
            ".5",
            "1.2.3",
            "+1",
        ] {
            assert!(p(NUMERIC, bad).is_err(), "{bad}");
        }
        assert_eq!(
            p(NUMERIC, "NaN").unwrap_err().reason(),
            "NaN and infinite values are not supported"
        );
        assert_eq!(Value::Numeric("12.50".into()).to_text().unwrap(), "12.50");
    }

    #[test]
    fn booleans_are_t_or_f() {
        assert_eq!(p(BOOL, "t").unwrap(), Value::Bool(true));
        assert_eq!(p(BOOL, "f").unwrap(), Value::Bool(false));
        assert!(p(BOOL, "yes").is_err());
        assert_eq!(Value::Bool(true).to_text().unwrap(), "true");
    }

    #[test]
    fn dates_parse_iso_output_including_bc_and_reject_infinity() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(p(DATE, "2024-02-29").unwrap(), Value::Date(d(2024, 2, 29)));
        assert_eq!(
            p(DATE, "0044-03-15 BC").unwrap(),
            Value::Date(d(-43, 3, 15))
        );
        assert_eq!(p(DATE, "0001-01-01 BC").unwrap(), Value::Date(d(0, 1, 1)));
        assert_eq!(p(DATE, "10000-01-01").unwrap(), Value::Date(d(10000, 1, 1)));
        for bad in [
            "2023-02-29",
            "2024-1-05",
            "15.01.2024",
            "01/15/2024",
            "2024-01-15x",
            "",
        ] {
            assert!(p(DATE, bad).is_err(), "{bad}");
        }
        let err = p(DATE, "infinity").unwrap_err();
        assert_eq!(err.reason(), "infinite dates are not supported");
        assert_eq!(Value::Date(d(2024, 1, 5)).to_text().unwrap(), "2024-01-05");
    }

    #[test]
    fn timestamps_parse_with_fractional_seconds() {
        let naive = |s| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        assert_eq!(
            p(TIMESTAMP, "2024-01-15 10:30:00").unwrap(),
            Value::Timestamp(naive("2024-01-15 10:30:00"))
        );
        assert_eq!(
            p(TIMESTAMP, "2024-01-15 10:30:00.5").unwrap(),
            Value::Timestamp(naive("2024-01-15 10:30:00.500"))
        );
        assert_eq!(
            p(TIMESTAMP, "2024-01-15 10:30:00.000123").unwrap(),
            Value::Timestamp(naive("2024-01-15 10:30:00.000123"))
        );
        assert!(p(TIMESTAMP, "2024-01-15 10:30:00+00").is_err());
        assert!(p(TIMESTAMP, "2024-01-15 25:00:00").is_err());
        assert!(p(TIMESTAMP, "2024-01-15 10:30").is_err());
        assert!(p(TIMESTAMP, "2024-01-15 10:30:00.").is_err());
        assert!(p(TIMESTAMP, "-infinity").is_err());
        assert_eq!(
            p(TIMESTAMP, "2024-01-15 10:30:00.25")
                .unwrap()
                .to_text()
                .unwrap(),
            "2024-01-15T10:30:00.250"
        );
        assert_eq!(
            p(TIMESTAMP, "2024-01-15 10:30:00")
                .unwrap()
                .to_text()
                .unwrap(),
            "2024-01-15T10:30:00"
        );
    }

    #[test]
    fn timestamptz_offsets_convert_to_utc() {
        let cases = [
            ("2024-01-15 10:30:00+00", utc(2024, 1, 15, 10, 30, 0)),
            ("2024-01-15 10:30:00-05", utc(2024, 1, 15, 15, 30, 0)),
            ("2024-01-15 10:30:00+05:30", utc(2024, 1, 15, 5, 0, 0)),
            ("2024-01-15 10:30:00-03:30:15", utc(2024, 1, 15, 14, 0, 15)),
            ("2024-01-01 01:00:00+14", utc(2023, 12, 31, 11, 0, 0)),
            ("2024-01-15T10:30:00Z", utc(2024, 1, 15, 10, 30, 0)),
        ];
        for (text, want) in cases {
            assert_eq!(
                p(TIMESTAMPTZ, text).unwrap(),
                Value::TimestampTz(want),
                "{text}"
            );
        }
        let Value::TimestampTz(t) = p(TIMESTAMPTZ, "2024-01-15 10:30:00.123456+01").unwrap() else {
            panic!("not a timestamptz")
        };
        assert_eq!(t.timestamp_subsec_micros(), 123_456);
        assert_eq!(
            Value::TimestampTz(t).to_text().unwrap(),
            "2024-01-15T09:30:00.123456Z"
        );
        assert_eq!(
            Value::TimestampTz(utc(2024, 1, 15, 9, 30, 0))
                .to_text()
                .unwrap(),
            "2024-01-15T09:30:00Z"
        );
    }

    #[test]
    fn timestamptz_handles_bc_and_rejects_bad_input() {
        let Value::TimestampTz(t) = p(TIMESTAMPTZ, "0044-03-15 12:00:00+00 BC").unwrap() else {
            panic!("not a timestamptz")
        };
        assert_eq!(t, utc(-43, 3, 15, 12, 0, 0));
        for bad in [
            "2024-01-15 10:30:00",
            "2024-01-15 10:30:00+5",
            "2024-01-15 10:30:00+05:60",
            "2024-01-15 10:30:00+05:30 AD",
            "2024-01-15 10:30:00 PST",
            "Mon Jan 15 10:30:00 2024 PST",
            "0000-01-01 00:00:00+00 BC",
        ] {
            assert!(p(TIMESTAMPTZ, bad).is_err(), "{bad}");
        }
        let err = p(TIMESTAMPTZ, "infinity").unwrap_err();
        assert_eq!(err.reason(), "infinite timestamps are not supported");
        assert_eq!(
            err.to_string(),
            "invalid timestamptz value (type oid 1184): infinite timestamps are not supported"
        );
    }

    #[test]
    fn inet_and_cidr_split_hosts_from_networks() {
        let v4: IpAddr = "192.168.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(p(INET, "192.168.0.1").unwrap(), Value::Inet(v4));
        assert_eq!(p(INET, "192.168.0.1/32").unwrap(), Value::Inet(v4));
        assert_eq!(p(INET, "2001:db8::1").unwrap(), Value::Inet(v6));
        assert_eq!(p(CIDR, "2001:db8::1/128").unwrap(), Value::Inet(v6));
        let net = p(CIDR, "10.0.0.0/8").unwrap();
        assert_eq!(net, Value::Network("10.0.0.0".parse().unwrap(), 8));
        assert_eq!(net.to_text().unwrap(), "10.0.0.0/8");
        assert!(p(INET, "10.0.0.1/33").is_err());
        assert!(p(INET, "10.0.0.256").is_err());
        assert!(p(INET, "host").is_err());
        assert_eq!(Value::Inet(v6).to_text().unwrap(), "2001:db8::1");
    }

    #[test]
    fn uuids_are_validated_and_lowercased() {
        let s = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(p(UUID, s).unwrap(), Value::Uuid(s.into()));
        assert_eq!(p(UUID, &s.to_uppercase()).unwrap(), Value::Uuid(s.into()));
        assert!(p(UUID, "a0eebc999c0b4ef8bb6d6bb9bd380a11").is_err());
        assert!(p(UUID, "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").is_err());
    }

    #[test]
    fn json_and_jsonb_parse_to_values() {
        let v = p(JSONB, r#"{"a": [1, "x", null]}"#).unwrap();
        assert_eq!(v, Value::Json(serde_json::json!({"a": [1, "x", null]})));
        assert_eq!(v.to_text().unwrap(), r#"{"a":[1,"x",null]}"#);
        assert_eq!(p(JSON, "3").unwrap(), Value::Json(serde_json::json!(3)));
        let err = p(JSON, "{nope").unwrap_err();
        assert_eq!(err.reason(), "not valid JSON");
    }

    #[test]
    fn errors_never_contain_the_value() {
        let secret = "jane.doe@example.com";
        for oid in [
            INT4,
            FLOAT8,
            NUMERIC,
            BOOL,
            DATE,
            TIMESTAMP,
            TIMESTAMPTZ,
            INET,
            UUID,
            JSON,
        ] {
            let err = p(oid, secret).unwrap_err();
            assert!(!err.to_string().contains("jane"), "{err}");
            assert_eq!(err.type_oid(), oid);
        }
    }

    #[test]
    fn datums_map_null_text_and_reject_toast_and_binary() {
        assert_eq!(parse_datum(INT4, &Datum::Null).unwrap(), Value::Null);
        assert_eq!(
            parse_datum(INT4, &Datum::Text(Bytes::from_static(b"7"))).unwrap(),
            Value::Int(7)
        );
        assert!(parse_datum(TEXT, &Datum::UnchangedToast).is_err());
        assert!(parse_datum(TEXT, &Datum::Binary(Bytes::from_static(b"x"))).is_err());
        assert_eq!(Value::Null.to_text(), None);
        assert!(Value::Null.is_null());
    }

    proptest! {
        #[test]
        fn random_text_never_panics_for_any_type(
            oid in proptest::sample::select(vec![
                BOOL, INT2, INT4, INT8, OID, FLOAT4, FLOAT8, NUMERIC, DATE, TIMESTAMP,
                TIMESTAMPTZ, INET, CIDR, UUID, JSON, JSONB, TEXT, 4242,
            ]),
            text in "[0-9:. +\\-TZBCa-f/]{0,40}",
        ) {
            let _ = p(oid, &text);
        }

        #[test]
        fn timestamptz_round_trips_through_text(secs in -60_000_000_000i64..200_000_000_000, micros in 0u32..1_000_000) {
            let t = DateTime::from_timestamp(secs, micros * 1000).unwrap();
            let text = t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
            prop_assume!(t.year() > 0);
            prop_assert_eq!(p(TIMESTAMPTZ, &text).unwrap(), Value::TimestampTz(t));
        }
    }
    use chrono::Datelike;
}

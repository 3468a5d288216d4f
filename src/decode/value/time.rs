//! Dates and timestamps in PostgreSQL's ISO output (`DateStyle = ISO`), BC years included.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

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
pub(super) fn parse_date(s: &str) -> Result<NaiveDate, &'static str> {
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
pub(super) fn parse_timestamp(s: &str) -> Result<(NaiveDateTime, Option<i32>), &'static str> {
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

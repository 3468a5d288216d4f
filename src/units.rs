//! Human-written durations (`2h`, `30d`), sizes (`1GB`, `512MiB`) and points in time, as operators type
//! them on the command line and in the config, and the reverse for display.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use std::time::Duration;

/// Parses a duration: a whole number and a unit, `s`, `m`, `h`, `d` or `w` (also `sec`, `min`, `hours`,
/// `days`, `weeks` and the like); a bare `0` is zero. Several parts may follow each other (`1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || {
        format!(
            "{text:?} is not a duration: write a number and a unit, e.g. 45s, 30m, 2h, 30d or 1w"
        )
    };
    let mut total: u64 = 0;
    let mut rest = trimmed;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            _ => return Err(bad()),
        };
        total = number
            .checked_mul(seconds)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(Duration::from_secs(total))
}

/// Parses a size in bytes: a number (decimals allowed) and an optional unit. As in PostgreSQL settings,
/// `kB`, `MB`, `GB` and `TB` are powers of 1024; `KiB`, `MiB`, `GiB`, `TiB` and `K`, `M`, `G`, `T` mean
/// the same; no unit (or `B`) means bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size: write e.g. 1073741824, 512MB or 1GiB");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Parses a point in time: RFC 3339 (`2025-01-31T12:00:00+01:00`), or `YYYY-MM-DD[ HH:MM[:SS]]` (also with
/// `T`) taken as UTC.
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(at) = NaiveDateTime::parse_from_str(t, format) {
            return Ok(at.and_utc());
        }
    }
    if let Ok(day) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(format!(
        "{text:?} is neither a duration (2h, 30m, 7d) nor a timestamp (2025-01-31, \
         2025-01-31 14:00, 2025-01-31T14:00:00+01:00; without an offset it is UTC)"
    ))
}

/// A point in time given either as an age (`2h` ago) or as a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeRef {
    /// That long before now (the database's clock).
    Ago(Duration),
    /// This moment.
    At(DateTime<Utc>),
}

impl TimeRef {
    /// Parses `2h`-style durations (as an age) or timestamps.
    pub fn parse(text: &str) -> Result<TimeRef, String> {
        match parse_duration(text) {
            Ok(age) => Ok(TimeRef::Ago(age)),
            Err(_) => parse_timestamp(text).map(TimeRef::At),
        }
    }

    /// The moment this names, with `now` as the reference for an age.
    pub fn resolve(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            TimeRef::At(at) => *at,
            TimeRef::Ago(age) => chrono::Duration::from_std(*age)
                .ok()
                .and_then(|age| now.checked_sub_signed(age))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }

    /// The two SQL parameters `(timestamp, seconds_ago)`, exactly one of them set, for
    /// `coalesce($ts, now() - $secs * interval '1 second')`.
    pub fn sql_params(&self) -> (Option<DateTime<Utc>>, Option<i64>) {
        match self {
            TimeRef::At(at) => (Some(*at), None),
            TimeRef::Ago(age) => (
                None,
                Some(i64::try_from(age.as_secs()).unwrap_or(i64::MAX / 2)),
            ),
        }
    }
}

impl std::str::FromStr for TimeRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TimeRef::parse(s)
    }
}

/// Formats a byte count with a 1024-based unit (`1.5 GiB`).
pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Formats a number of seconds as `45s`, `12m05s`, `3h05m`, `2d04h` or `30d` (two units at most, a zero
/// second unit left out).
pub fn format_secs(secs: i64) -> String {
    let s = secs.max(0);
    let (major, major_unit, minor, minor_unit) = match s {
        0..=59 => return format!("{s}s"),
        60..=3_599 => (s / 60, "m", s % 60, "s"),
        3_600..=86_399 => (s / 3_600, "h", (s % 3_600) / 60, "m"),
        _ => (s / 86_400, "d", (s % 86_400) / 3_600, "h"),
    };
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit}{minor:02}{minor_unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_the_rest() {
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7_200));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(2_592_000)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("45 s").unwrap(), Duration::from_secs(45));
        assert_eq!(
            parse_duration("2 weeks").unwrap(),
            Duration::from_secs(1_209_600)
        );
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "h", "2", "2x", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_use_powers_of_1024_like_postgresql() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512 MB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10kB").unwrap(), 10_240);
        for bad in ["", "GB", "1XB", "-1GB", "1e3"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_references_are_ages_or_timestamps_in_utc() {
        assert_eq!(
            TimeRef::parse("2h").unwrap(),
            TimeRef::Ago(Duration::from_secs(7_200))
        );
        let at = |s: &str| match TimeRef::parse(s).unwrap() {
            TimeRef::At(t) => t.to_rfc3339(),
            other => panic!("{other:?}"),
        };
        assert_eq!(at("2025-01-31"), "2025-01-31T00:00:00+00:00");
        assert_eq!(at("2025-01-31 14:05"), "2025-01-31T14:05:00+00:00");
        assert_eq!(at("2025-01-31T14:05:06+01:00"), "2025-01-31T13:05:06+00:00");
        let err = TimeRef::parse("yesterday").unwrap_err();
        assert!(err.contains("neither a duration"), "{err}");
        let now = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let resolved = |s: &str| TimeRef::parse(s).unwrap().resolve(now).to_rfc3339();
        assert_eq!(resolved("7d"), "2026-11-16T12:00:00+00:00");
        assert_eq!(resolved("36h"), "2026-11-22T00:00:00+00:00");
        assert_eq!(resolved("2026-11-16"), "2026-11-16T00:00:00+00:00");
    }

    #[test]
    fn sizes_and_ages_format_for_humans() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_secs(42), "42s");
        assert_eq!(format_secs(3_725), "1h02m");
        assert_eq!(format_secs(2 * 86_400 + 4 * 3_600), "2d04h");
        assert_eq!(format_secs(30 * 86_400), "30d");
        assert_eq!(format_secs(125), "2m05s");
    }
}

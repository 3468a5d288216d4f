//! Date of birth, gender and external id normalization.

use chrono::NaiveDate;

use super::text::{clean, lower, nfc};
use super::{Reason, EMPTY};

/// Reason for a date of birth in no accepted format, or an impossible date.
const INVALID_DATE: Reason = "invalid date of birth";

/// Reason for a gender that is neither female nor male words.
const UNKNOWN_GENDER: Reason = "unknown gender";

/// Splits `a<sep>b<sep>c` into three numbers of 1–2, 1–2 and exactly 4 ASCII digits.
fn day_month_year(value: &str, sep: char) -> Option<(u32, u32, i32)> {
    let mut parts = value.split(sep);
    let (a, b, year) = (parts.next()?, parts.next()?, parts.next()?);
    let short = |s: &str| (1..=2).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let long = year.len() == 4 && year.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_some() || !short(a) || !short(b) || !long {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?, year.parse().ok()?))
}

/// Reads the date in one of the accepted text forms; `region` decides how `a/b/yyyy` is read.
fn parse_date(value: &str, region: &str) -> Option<NaiveDate> {
    // A timestamp's date part is the date (`1990-01-15 00:00:00`, `1990-01-15T00:00:00Z`).
    let date = value.split([' ', 'T']).next().unwrap_or(value);
    if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) {
        let (year, month, day) = (&date[..4], &date[4..6], &date[6..]);
        return NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, day.parse().ok()?);
    }
    if date.len() == 10 && date.as_bytes()[4] == b'-' {
        return NaiveDate::parse_from_str(date, "%Y-%m-%d").ok();
    }
    if let Some((a, b, year)) = day_month_year(date, '/') {
        let (month, day) = if region.eq_ignore_ascii_case("US") {
            (a, b)
        } else {
            (b, a)
        };
        return NaiveDate::from_ymd_opt(year, month, day);
    }
    // Dots are day-first everywhere (no region writes month.day.year).
    let (day, month, year) = day_month_year(date, '.')?;
    NaiveDate::from_ymd_opt(year, month, day)
}

/// Normalizes a date of birth to `YYYYMMDD`, or says why it is left out.
pub(crate) fn date_of_birth_checked(raw: &str, region: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    let date = parse_date(&cleaned, region).ok_or(INVALID_DATE)?;
    Ok(date.format("%Y%m%d").to_string())
}

/// Normalizes a date of birth to `YYYYMMDD` from `YYYY-MM-DD`, `YYYYMMDD`, `MM/DD/YYYY` (US rows),
/// `DD/MM/YYYY` (other rows) or `DD.MM.YYYY`; `None` for other forms and impossible dates.
pub fn normalize_date_of_birth(raw: &str, region: &str) -> Option<String> {
    date_of_birth_checked(raw, region).ok()
}

/// Normalizes a gender to `f` or `m`, or says why it is left out.
pub(crate) fn gender_checked(raw: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    match lower(&cleaned).as_str() {
        "f" | "female" | "woman" => Ok("f".to_owned()),
        "m" | "male" | "man" => Ok("m".to_owned()),
        _ => Err(UNKNOWN_GENDER),
    }
}

/// Normalizes a gender: `f`, `female`, `woman` → `f`; `m`, `male`, `man` → `m` (any case); else `None`.
pub fn normalize_gender(raw: &str) -> Option<String> {
    gender_checked(raw).ok()
}

/// Normalizes an external id, or says why it is left out.
pub(crate) fn external_id_checked(raw: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    Ok(nfc(lower(&cleaned)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()))
}

/// Normalizes an external id: trimmed, lowercase, whitespace removed (`" CRM-00123 "` → `crm-00123`).
/// The browser pixel must be given the same value.
pub fn normalize_external_id(raw: &str) -> Option<String> {
    external_id_checked(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_birth_in_the_published_forms_become_yyyymmdd() {
        let cases = [
            ("1990-01-15", "US", "19900115"),
            ("19900115", "US", "19900115"),
            ("01/15/1990", "US", "19900115"),
            ("15/01/1990", "FR", "19900115"),
            ("15.01.1990", "DE", "19900115"),
            ("15.01.1990", "US", "19900115"),
            ("1/5/1990", "US", "19900105"),
            ("1990-01-15 00:00:00", "US", "19900115"),
            ("1990-01-15T00:00:00Z", "US", "19900115"),
        ];
        for (raw, region, expected) in cases {
            assert_eq!(
                normalize_date_of_birth(raw, region).as_deref(),
                Some(expected),
                "{raw}"
            );
        }
    }

    #[test]
    fn impossible_or_unknown_dates_are_left_out() {
        for (raw, region) in [
            ("1990-02-30", "US"),
            ("15/01/1990", "US"),
            ("01/15/1990", "FR"),
            ("19901301", "US"),
            ("90-01-15", "US"),
            ("Jan 15 1990", "US"),
            ("1990/01/15", "US"),
        ] {
            assert_eq!(
                date_of_birth_checked(raw, region),
                Err(INVALID_DATE),
                "{raw}"
            );
        }
        assert_eq!(date_of_birth_checked("", "US"), Err(EMPTY));
    }

    #[test]
    fn gender_words_map_to_one_letter() {
        for raw in ["f", "F", "Female", "WOMAN", " f "] {
            assert_eq!(normalize_gender(raw).as_deref(), Some("f"), "{raw}");
        }
        for raw in ["m", "M", "male", "Man"] {
            assert_eq!(normalize_gender(raw).as_deref(), Some("m"), "{raw}");
        }
        for raw in ["x", "other", "mrs", "n/a"] {
            assert_eq!(gender_checked(raw), Err(UNKNOWN_GENDER), "{raw}");
        }
    }

    #[test]
    fn external_ids_are_lowercased_without_whitespace() {
        assert_eq!(
            normalize_external_id(" CRM-00123 ").as_deref(),
            Some("crm-00123")
        );
        assert_eq!(
            normalize_external_id("Cust 42\tB").as_deref(),
            Some("cust42b")
        );
        assert_eq!(external_id_checked("  "), Err(EMPTY));
    }
}

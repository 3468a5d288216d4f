//! Small readers and writers of the wire formats every platform module uses: JSON answers, ids,
//! form bodies, bearer tokens, credentials, digests, timestamps and numbers as the platforms send
//! them.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::distr::{Alphanumeric, SampleString};

/// How far in the future an event time may be, in seconds: the clock skew every platform of the
/// sandbox allows.
pub(crate) const FUTURE_TOLERANCE_SECS: i64 = 10 * 60;

/// Checks a presented credential against a configured one (`None` accepts any non-empty value).
pub(crate) fn credential_ok(expected: &Option<String>, presented: Option<&str>) -> bool {
    match (expected, presented) {
        (_, None) => false,
        (_, Some("")) => false,
        (None, Some(_)) => true,
        (Some(want), Some(got)) => want == got,
    }
}
/// A JSON response with `status`.
pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// A random alphanumeric id (trace ids, request ids, tokens).
pub(crate) fn random_id(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// True for a SHA-256 digest written as 64 lowercase hex characters.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses an `application/x-www-form-urlencoded` body; `None` if it is not valid UTF-8.
pub(crate) fn parse_form(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut pairs = Vec::new();
    for part in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((percent_decode(key)?, percent_decode(value)?));
    }
    Some(pairs)
}

/// Decodes `+` and `%XX` escapes; `None` on a bad escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// True for a JSON string holding a plain IPv4 or IPv6 address (a hashed IP is not one).
pub(crate) fn is_ip_address(value: &serde_json::Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok())
}

/// Reads a JSON value as a Unix-seconds integer (a JSON integer or a string of digits).
pub(crate) fn as_unix_seconds(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

/// True for `10`, `9.99`, `-1.5`: digits with at most one point, no exponent, no `+` (the plain
/// decimal of a query-string parameter).
pub(crate) fn is_decimal_text(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    !whole.is_empty()
        && !frac.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// A hashed user field as its digests: one SHA-256 hex string or a non-empty array of them; `None`
/// for anything else (a raw value, a number, an empty list).
pub(crate) fn sha256_values(value: &serde_json::Value) -> Option<Vec<String>> {
    let items = match value {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(serde_json::Value::as_str)
            .collect::<Option<Vec<&str>>>()?,
        _ => return None,
    };
    items
        .into_iter()
        .map(|s| is_sha256_hex(s).then(|| s.to_string()))
        .collect()
}

/// The hashed and plain identifiers of a `user_data` object, by field name, for the records.
pub(crate) fn user_fields(
    user: Option<&serde_json::Map<String, serde_json::Value>>,
    hashed_keys: &[&str],
    plain_keys: &[&str],
) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, String>) {
    let (mut hashed, mut plain) = Default::default();
    let Some(user) = user else {
        return (hashed, plain);
    };
    for key in hashed_keys {
        if let Some(values) = user.get(*key).and_then(sha256_values) {
            hashed.insert(key.to_string(), values);
        }
    }
    for key in plain_keys {
        if let Some(v) = user.get(*key).and_then(serde_json::Value::as_str) {
            plain.insert(key.to_string(), v.to_string());
        }
    }
    (hashed, plain)
}

/// Reads a JSON value as a number (a JSON number or a numeric string).
pub(crate) fn as_number(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
        _ => None,
    }
}

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Reads a JSON integer as epoch milliseconds; `None` for anything else, including a value below
/// 10^12 (before 2001-09-09 in milliseconds: that is seconds sent by mistake).
pub(crate) fn epoch_millis(value: &serde_json::Value) -> Option<i64> {
    value.as_i64().filter(|ms| *ms >= 1_000_000_000_000)
}

/// The hashed user fields among `keys` as sent (a string or a list of strings), by field name, for
/// the records; the platform's rules have judged them already.
pub(crate) fn hashed_as_sent(
    user: &serde_json::Map<String, serde_json::Value>,
    keys: &[&str],
) -> BTreeMap<String, Vec<String>> {
    let mut hashed = BTreeMap::new();
    for key in keys {
        let values: Vec<String> = match user.get(*key) {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => continue,
        };
        hashed.insert(key.to_string(), values);
    }
    hashed
}

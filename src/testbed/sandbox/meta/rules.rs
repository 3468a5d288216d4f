//! Meta's per-event rules (platforms.md §1.3–§1.6): required fields, event age, hashed keys,
//! identifier formats and the minimum matching requirement.

use serde_json::{Map, Value};

use crate::testbed::sandbox::FUTURE_TOLERANCE_SECS;
use crate::testbed::sandbox::{as_number, as_unix_seconds, is_ip_address, sha256_values};

/// Events per request (§1.2).
const MAX_EVENTS: usize = 1_000;
/// Maximum event age, 7 days (§1.3).
const MAX_AGE_SECS: i64 = 7 * 24 * 3600;
/// Maximum age of `physical_store` events, 62 days (§1.3).
const MAX_AGE_PHYSICAL_STORE_SECS: i64 = 62 * 24 * 3600;
/// `action_source` values (§1.3).
const ACTION_SOURCES: &[&str] = &[
    "website",
    "app",
    "email",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
];
/// `user_data` keys that must be SHA-256 hex, as a string or a list of strings (§1.5).
pub(super) const HASHED_KEYS: &[&str] = &[
    "em",
    "ph",
    "fn",
    "ln",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
    "db",
    "ge",
    "f5first",
    "f5last",
    "fi",
    "dobd",
    "dobm",
    "doby",
];
/// `user_data` keys that identify a person on their own.
const STRONG_KEYS: &[&str] = &[
    "em",
    "ph",
    "external_id",
    "fbc",
    "fbp",
    "lead_id",
    "madid",
    "anon_id",
    "subscription_id",
    "fb_login_id",
    "ctwa_clid",
];
/// Unhashed identifiers kept in the records.
pub(super) const PLAIN_KEYS: &[&str] = &[
    "fbc",
    "fbp",
    "lead_id",
    "anon_id",
    "madid",
    "ctwa_clid",
    "client_ip_address",
    "client_user_agent",
];

/// Error subcode: a required parameter is missing.
const SUB_MISSING: u32 = 2_804_001;
/// Error subcode: event timestamp too old.
const SUB_TOO_OLD: u32 = 2_804_003;
/// Error subcode: event timestamp in the future.
const SUB_FUTURE: u32 = 2_804_004;
/// Error subcode: a parameter has an invalid value or format.
pub(super) const SUB_INVALID: u32 = 2_804_019;
/// Error subcode: no usable customer information.
const SUB_NO_USER_DATA: u32 = 2_804_050;

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Why a request was rejected.
pub(super) struct Violation {
    /// Graph error code (100 for parameter errors).
    pub(super) code: u32,
    /// Graph error subcode.
    pub(super) subcode: Option<u32>,
    /// The index of the offending event, when one event is to blame.
    pub(super) index: Option<usize>,
    /// Human-readable reason naming the field, never its value.
    pub(super) reason: String,
}

impl Violation {
    /// A parameter error about event `index`.
    fn event(index: usize, subcode: u32, reason: impl Into<String>) -> Self {
        Violation {
            code: 100,
            subcode: Some(subcode),
            index: Some(index),
            reason: reason.into(),
        }
    }

    /// A parameter error about the request as a whole.
    pub(super) fn request(subcode: Option<u32>, reason: impl Into<String>) -> Self {
        Violation {
            code: 100,
            subcode,
            index: None,
            reason: reason.into(),
        }
    }
}

/// Turns `data` into a list of event objects (the form API may send JSON-encoded strings).
pub(super) fn events_of(data: Option<Value>) -> Result<Vec<Map<String, Value>>, Violation> {
    let list = match data {
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(Violation::request(
                Some(SUB_INVALID),
                "param data must be an array",
            ))
        }
        None => {
            return Err(Violation::request(
                Some(SUB_MISSING),
                "the parameter data is required",
            ))
        }
    };
    if list.is_empty() {
        return Err(Violation::request(
            Some(SUB_MISSING),
            "the parameter data must not be empty",
        ));
    }
    if list.len() > MAX_EVENTS {
        return Err(Violation::request(
            Some(SUB_INVALID),
            format!("param data can contain at most {MAX_EVENTS} events"),
        ));
    }
    let mut events = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let item = match item {
            Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
            other => other,
        };
        match item {
            Value::Object(obj) => events.push(obj),
            _ => {
                return Err(Violation::event(
                    i,
                    SUB_INVALID,
                    "event must be a JSON object",
                ))
            }
        }
    }
    Ok(events)
}

/// Checks one event against §1.3–§1.6; `now` is Unix seconds.
pub(super) fn validate_event(i: usize, ev: &Map<String, Value>, now: i64) -> Result<(), Violation> {
    let bad = |sub: u32, reason: &str| Err(Violation::event(i, sub, reason));
    match ev.get("event_name") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(_) => return bad(SUB_INVALID, "event_name must be a non-empty string"),
        None => return bad(SUB_MISSING, "event_name is required"),
    }
    if let Some(id) = ev.get("event_id") {
        if !matches!(id, Value::String(s) if !s.is_empty()) && !id.is_number() {
            return bad(SUB_INVALID, "event_id must be a non-empty string");
        }
    }
    let source = match ev.get("action_source") {
        Some(Value::String(s)) if ACTION_SOURCES.contains(&s.as_str()) => s.as_str(),
        Some(_) => {
            return bad(
                SUB_INVALID,
                "action_source is not one of the allowed values",
            )
        }
        None => return bad(SUB_MISSING, "action_source is required"),
    };
    let Some(time) = ev.get("event_time") else {
        return bad(SUB_MISSING, "event_time is required");
    };
    let Some(time) = as_unix_seconds(time) else {
        return bad(
            SUB_INVALID,
            "event_time must be a Unix timestamp in seconds",
        );
    };
    let max_age = if source == "physical_store" {
        MAX_AGE_PHYSICAL_STORE_SECS
    } else {
        MAX_AGE_SECS
    };
    if time < now - max_age {
        return bad(
            SUB_TOO_OLD,
            "event_time is too far in the past (older than 7 days)",
        );
    }
    if time > now + FUTURE_TOLERANCE_SECS {
        return bad(
            SUB_FUTURE,
            "event_time is in the future (milliseconds instead of seconds?)",
        );
    }
    let user = match ev.get("user_data") {
        Some(Value::Object(u)) => u,
        Some(_) => return bad(SUB_INVALID, "user_data must be an object"),
        None => return bad(SUB_MISSING, "user_data is required"),
    };
    validate_user_data(i, user)?;
    if source == "website" {
        match ev.get("event_source_url") {
            Some(Value::String(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
            Some(_) => return bad(SUB_INVALID, "event_source_url must be an http(s) URL"),
            None => {
                return bad(
                    SUB_MISSING,
                    "event_source_url is required for website events",
                )
            }
        }
        if !matches!(user.get("client_user_agent"), Some(Value::String(s)) if !s.is_empty()) {
            return bad(
                SUB_MISSING,
                "user_data.client_user_agent is required for website events",
            );
        }
    }
    validate_custom_data(i, ev)
}

/// Checks hashed keys, unhashed identifiers and the minimum matching requirement (§1.5, §1.6).
fn validate_user_data(i: usize, user: &Map<String, Value>) -> Result<(), Violation> {
    for key in HASHED_KEYS {
        if user.get(*key).is_some_and(|v| sha256_values(v).is_none()) {
            return Err(Violation::event(
                i,
                SUB_INVALID,
                format!("user_data.{key} must be a SHA-256 hash (64 lowercase hex characters)"),
            ));
        }
    }
    if let Some(ip) = user.get("client_ip_address") {
        if !is_ip_address(ip) {
            return Err(Violation::event(
                i,
                SUB_INVALID,
                "user_data.client_ip_address is not a valid IP address (do not hash it)",
            ));
        }
    }
    if let Some(fbc) = user.get("fbc") {
        if !fbc.as_str().is_some_and(fbc_is_valid) {
            return Err(Violation::event(
                i,
                SUB_INVALID,
                "user_data.fbc must look like fb.<subdomain_index>.<creation_time_ms>.<fbclid>",
            ));
        }
    }
    if let Some(lead) = user.get("lead_id") {
        let digits = match lead {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_u64() => n.to_string(),
            _ => String::new(),
        };
        if !(15..=16).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Violation::event(
                i,
                SUB_INVALID,
                "user_data.lead_id must be a 15-16 digit Meta lead id",
            ));
        }
    }
    let has = |k: &str| user.get(k).is_some_and(|v| !v.is_null());
    let usable = STRONG_KEYS.iter().any(|k| has(k))
        || (has("client_ip_address") && has("client_user_agent"))
        || (has("fn") && has("ln") && ["zp", "ct", "st", "country", "db"].iter().any(|k| has(k)));
    if !usable {
        return Err(Violation::event(
            i,
            SUB_NO_USER_DATA,
            "user_data does not contain a usable customer information parameter",
        ));
    }
    Ok(())
}

/// `fb.<subdomain_index>.<creation_time_ms>.<fbclid>[.<appendix>]` with a time in milliseconds.
fn fbc_is_valid(fbc: &str) -> bool {
    let parts: Vec<&str> = fbc.splitn(4, '.').collect();
    let [prefix, sub, ms, rest] = parts.as_slice() else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // Milliseconds since 2001-09-09 have at least 13 digits; a 10-digit value is seconds.
    *prefix == "fb"
        && sub.len() == 1
        && digits(sub)
        && digits(ms)
        && ms.len() >= 13
        && !rest.is_empty()
}

/// Checks `custom_data` types; `Purchase` needs a value and a currency.
fn validate_custom_data(i: usize, ev: &Map<String, Value>) -> Result<(), Violation> {
    let empty = Map::new();
    let custom = match ev.get("custom_data") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(c)) => c,
        Some(_) => {
            return Err(Violation::event(
                i,
                SUB_INVALID,
                "custom_data must be an object",
            ))
        }
    };
    if let Some(v) = custom.get("value") {
        if as_number(v).is_none() {
            return Err(Violation::event(
                i,
                SUB_INVALID,
                "custom_data.value must be a number",
            ));
        }
    }
    if let Some(c) = custom.get("currency") {
        if !c
            .as_str()
            .is_some_and(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            return Err(Violation::event(
                i,
                SUB_INVALID,
                "custom_data.currency must be a 3-letter ISO 4217 code",
            ));
        }
    }
    if ev.get("event_name").and_then(Value::as_str) == Some("Purchase")
        && (custom.get("value").is_none() || custom.get("currency").is_none())
    {
        return Err(Violation::event(
            i,
            SUB_MISSING,
            "custom_data.value and custom_data.currency are required for Purchase events",
        ));
    }
    Ok(())
}

//! Meta Conversions API: `POST /{version}/{pixel_id}/events` (platforms.md §1).
//!
//! Whole-batch semantics: one bad event rejects the request with Graph's error envelope (HTTP 400,
//! `type: OAuthException`, `code: 100`) and a message naming the event's index. The `error_subcode`
//! numbers follow Meta's 2804xxx CAPI family but are not verified against the live API; clients
//! should key on `code` and treat the message as text. Beyond the published rules the sandbox also
//! insists that `external_id` is hashed (pgcapi's own convention) and rejects events more than
//! [`FUTURE_TOLERANCE_SECS`] in the future.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use serde_json::{json, Map, Value};

use super::faults::{self, ConnControl, Gate};
use super::records::{AcceptedEvent, Seen};
use super::{as_number, as_unix_seconds, credential_ok, is_sha256_hex, json_response, parse_form};
use super::{random_id, Shared};
use crate::config::Platform;

/// Events per request (§1.2).
const MAX_EVENTS: usize = 1_000;
/// Maximum event age, 7 days (§1.3).
const MAX_AGE_SECS: i64 = 7 * 24 * 3600;
/// Maximum age of `physical_store` events, 62 days (§1.3).
const MAX_AGE_PHYSICAL_STORE_SECS: i64 = 62 * 24 * 3600;
/// How far in the future an `event_time` may be (clock skew allowance).
const FUTURE_TOLERANCE_SECS: i64 = 10 * 60;
/// `action_source` values (§1.3).
const ACTION_SOURCES: &[&str] = &[
    "website", "app", "email", "phone_call", "chat", "physical_store",
    "system_generated", "business_messaging", "other",
];
/// `user_data` keys that must be SHA-256 hex, as a string or a list of strings (§1.5).
const HASHED_KEYS: &[&str] = &[
    "em", "ph", "fn", "ln", "ct", "st", "zp", "country", "external_id", "db", "ge",
    "f5first", "f5last", "fi", "dobd", "dobm", "doby",
];
/// `user_data` keys that identify a person on their own.
const STRONG_KEYS: &[&str] = &[
    "em", "ph", "external_id", "fbc", "fbp", "lead_id", "madid", "anon_id", "subscription_id",
    "fb_login_id", "ctwa_clid",
];
/// Unhashed identifiers kept in the records.
const PLAIN_KEYS: &[&str] = &["fbc", "fbp", "lead_id", "anon_id", "madid", "ctwa_clid"];

/// Error subcode: a required parameter is missing.
const SUB_MISSING: u32 = 2_804_001;
/// Error subcode: event timestamp too old.
const SUB_TOO_OLD: u32 = 2_804_003;
/// Error subcode: event timestamp in the future.
const SUB_FUTURE: u32 = 2_804_004;
/// Error subcode: a parameter has an invalid value or format.
const SUB_INVALID: u32 = 2_804_019;
/// Error subcode: no usable customer information.
const SUB_NO_USER_DATA: u32 = 2_804_050;

// ---------------------------------------------------------------------------------------------
// Request types
// ---------------------------------------------------------------------------------------------

/// The request body after JSON or form decoding.
struct Envelope {
    /// `access_token` from the body, if any.
    access_token: Option<String>,
    /// `data`, if present (not yet checked to be an array of objects).
    data: Option<Value>,
    /// `test_event_code`.
    test_event_code: Option<String>,
}

/// Decodes a JSON or form body; `None` when it is neither.
fn decode_body(headers: &HeaderMap, body: &[u8]) -> Option<Envelope> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if body.is_empty() {
        return Some(Envelope { access_token: None, data: None, test_event_code: None });
    }
    let is_form = content_type.starts_with("application/x-www-form-urlencoded");
    if !is_form {
        if let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) {
            return Some(Envelope {
                access_token: obj.remove("access_token").and_then(string_of),
                data: obj.remove("data"),
                test_event_code: obj.remove("test_event_code").and_then(string_of),
            });
        }
        if content_type.starts_with("application/json") {
            return None;
        }
    }
    // Form POST, as the SDK sends it: `data` is a JSON-encoded list.
    let mut env = Envelope { access_token: None, data: None, test_event_code: None };
    for (key, value) in parse_form(body)? {
        match key.as_str() {
            "access_token" => env.access_token = Some(value),
            "test_event_code" => env.test_event_code = Some(value),
            "data" => env.data = Some(serde_json::from_str(&value).unwrap_or(Value::String(value))),
            _ => {}
        }
    }
    Some(env)
}

/// The string inside a JSON string value.
fn string_of(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Why a request was rejected.
struct Violation {
    /// Graph error code (100 for parameter errors).
    code: u32,
    /// Graph error subcode.
    subcode: Option<u32>,
    /// The index of the offending event, when one event is to blame.
    index: Option<usize>,
    /// Human-readable reason naming the field, never its value.
    reason: String,
}

impl Violation {
    /// A parameter error about event `index`.
    fn event(index: usize, subcode: u32, reason: impl Into<String>) -> Self {
        Violation { code: 100, subcode: Some(subcode), index: Some(index), reason: reason.into() }
    }

    /// A parameter error about the request as a whole.
    fn request(subcode: Option<u32>, reason: impl Into<String>) -> Self {
        Violation { code: 100, subcode, index: None, reason: reason.into() }
    }
}

/// Turns `data` into a list of event objects (the form API may send JSON-encoded strings).
fn events_of(data: Option<Value>) -> Result<Vec<Map<String, Value>>, Violation> {
    let list = match data {
        Some(Value::Array(list)) => list,
        Some(_) => return Err(Violation::request(Some(SUB_INVALID), "param data must be an array")),
        None => return Err(Violation::request(Some(SUB_MISSING), "the parameter data is required")),
    };
    if list.is_empty() {
        return Err(Violation::request(Some(SUB_MISSING), "the parameter data must not be empty"));
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
            _ => return Err(Violation::event(i, SUB_INVALID, "event must be a JSON object")),
        }
    }
    Ok(events)
}

/// Checks one event against §1.3–§1.6; `now` is Unix seconds.
fn validate_event(i: usize, ev: &Map<String, Value>, now: i64) -> Result<(), Violation> {
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
        Some(_) => return bad(SUB_INVALID, "action_source is not one of the allowed values"),
        None => return bad(SUB_MISSING, "action_source is required"),
    };
    let Some(time) = ev.get("event_time") else {
        return bad(SUB_MISSING, "event_time is required");
    };
    let Some(time) = as_unix_seconds(time) else {
        return bad(SUB_INVALID, "event_time must be a Unix timestamp in seconds");
    };
    let max_age = if source == "physical_store" { MAX_AGE_PHYSICAL_STORE_SECS } else { MAX_AGE_SECS };
    if time < now - max_age {
        return bad(SUB_TOO_OLD, "event_time is too far in the past (older than 7 days)");
    }
    if time > now + FUTURE_TOLERANCE_SECS {
        return bad(SUB_FUTURE, "event_time is in the future (milliseconds instead of seconds?)");
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
            None => return bad(SUB_MISSING, "event_source_url is required for website events"),
        }
        if !matches!(user.get("client_user_agent"), Some(Value::String(s)) if !s.is_empty()) {
            return bad(SUB_MISSING, "user_data.client_user_agent is required for website events");
        }
    }
    validate_custom_data(i, ev)
}

/// Checks hashed keys, unhashed identifiers and the minimum matching requirement (§1.5, §1.6).
fn validate_user_data(i: usize, user: &Map<String, Value>) -> Result<(), Violation> {
    for key in HASHED_KEYS {
        let Some(value) = user.get(*key) else { continue };
        let ok = match value {
            Value::String(s) => is_sha256_hex(s),
            Value::Array(items) => {
                !items.is_empty() && items.iter().all(|v| v.as_str().is_some_and(is_sha256_hex))
            }
            _ => false,
        };
        if !ok {
            return Err(Violation::event(
                i,
                SUB_INVALID,
                format!("user_data.{key} must be a SHA-256 hash (64 lowercase hex characters)"),
            ));
        }
    }
    if let Some(ip) = user.get("client_ip_address") {
        if !ip.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()) {
            return Err(Violation::event(i, SUB_INVALID, "user_data.client_ip_address is not a valid IP address (do not hash it)"));
        }
    }
    if let Some(fbc) = user.get("fbc") {
        if !fbc.as_str().is_some_and(fbc_is_valid) {
            return Err(Violation::event(i, SUB_INVALID, "user_data.fbc must look like fb.<subdomain_index>.<creation_time_ms>.<fbclid>"));
        }
    }
    if let Some(lead) = user.get("lead_id") {
        let digits = match lead {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_u64() => n.to_string(),
            _ => String::new(),
        };
        if !(15..=16).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Violation::event(i, SUB_INVALID, "user_data.lead_id must be a 15-16 digit Meta lead id"));
        }
    }
    let has = |k: &str| user.get(k).is_some_and(|v| !v.is_null());
    let usable = STRONG_KEYS.iter().any(|k| has(k))
        || (has("client_ip_address") && has("client_user_agent"))
        || (has("fn") && has("ln") && ["zp", "ct", "st", "country", "db"].iter().any(|k| has(k)));
    if !usable {
        return Err(Violation::event(i, SUB_NO_USER_DATA, "user_data does not contain a usable customer information parameter"));
    }
    Ok(())
}

/// `fb.<subdomain_index>.<creation_time_ms>.<fbclid>[.<appendix>]` with a time in milliseconds.
fn fbc_is_valid(fbc: &str) -> bool {
    let parts: Vec<&str> = fbc.splitn(4, '.').collect();
    let [prefix, sub, ms, rest] = parts.as_slice() else { return false };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // Milliseconds since 2001-09-09 have at least 13 digits; a 10-digit value is seconds.
    *prefix == "fb" && sub.len() == 1 && digits(sub) && digits(ms) && ms.len() >= 13 && !rest.is_empty()
}

/// Checks `custom_data` types; `Purchase` needs a value and a currency.
fn validate_custom_data(i: usize, ev: &Map<String, Value>) -> Result<(), Violation> {
    let empty = Map::new();
    let custom = match ev.get("custom_data") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(c)) => c,
        Some(_) => return Err(Violation::event(i, SUB_INVALID, "custom_data must be an object")),
    };
    if let Some(v) = custom.get("value") {
        if as_number(v).is_none() {
            return Err(Violation::event(i, SUB_INVALID, "custom_data.value must be a number"));
        }
    }
    if let Some(c) = custom.get("currency") {
        if !c.as_str().is_some_and(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic())) {
            return Err(Violation::event(i, SUB_INVALID, "custom_data.currency must be a 3-letter ISO 4217 code"));
        }
    }
    if ev.get("event_name").and_then(Value::as_str) == Some("Purchase")
        && (custom.get("value").is_none() || custom.get("currency").is_none())
    {
        return Err(Violation::event(i, SUB_MISSING, "custom_data.value and custom_data.currency are required for Purchase events"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------------------------

/// The Meta route.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/{version}/{pixel_id}/events", post(handle_events))
}

/// `POST /{version}/{pixel_id}/events`.
async fn handle_events(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    Path((version, pixel_id)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::Meta).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let response = process(&shared, &version, &pixel_id, &query, &headers, &body);
    faults::finish(&shared, &conn, Platform::Meta, drop_after, response)
}

/// Authenticates, validates and records one request.
fn process(
    shared: &Shared,
    version: &str,
    pixel_id: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let reject = |count: usize, response: Response| {
        let mut state = shared.lock();
        let counters = &mut state.records.meta.counters;
        counters.rejected_requests += 1;
        counters.rejected += count as u64;
        response
    };
    let Some(env) = decode_body(headers, body) else {
        return reject(0, violation_response(&Violation::request(Some(SUB_INVALID), "the request body is neither JSON nor form data")));
    };
    let token = query
        .iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.clone())
        .or(env.access_token.clone());
    let count = match &env.data {
        Some(Value::Array(list)) => list.len(),
        _ => 0,
    };
    match token.as_deref() {
        None | Some("") => return reject(count, auth_error(104, "An access token is required to request this resource.")),
        t if !credential_ok(&shared.config.meta_access_token, t) => {
            return reject(count, auth_error(190, "Invalid OAuth access token - Cannot parse access token"))
        }
        _ => {}
    }
    if !version_is_valid(version) {
        return reject(count, graph_error(StatusCode::BAD_REQUEST, 2500, None, "Unknown path components: invalid API version"));
    }
    if pixel_id.is_empty() || !pixel_id.bytes().all(|b| b.is_ascii_digit()) {
        let msg = "Unsupported post request. Object with the given ID does not exist, cannot be loaded due to missing permissions, or does not support this operation.";
        return reject(count, graph_error(StatusCode::BAD_REQUEST, 100, Some(33), msg));
    }
    let events = match events_of(env.data) {
        Ok(events) => events,
        Err(v) => return reject(count, violation_response(&v)),
    };
    let now = Utc::now();
    for (i, ev) in events.iter().enumerate() {
        if let Err(v) = validate_event(i, ev, now.timestamp()) {
            return reject(events.len(), violation_response(&v));
        }
    }
    record(shared, &events, env.test_event_code, now);
    success(events.len())
}

/// `v` followed by `major.minor`, e.g. `v21.0`.
fn version_is_valid(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else { return false };
    let Some((major, minor)) = rest.split_once('.') else { return false };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor)
}

/// Dedups on `event_name` + `event_id` and stores the counted events.
fn record(
    shared: &Shared,
    events: &[Map<String, Value>],
    test_event_code: Option<String>,
    now: chrono::DateTime<Utc>,
) {
    let window = shared.config.dedup_window;
    let mut state = shared.lock();
    for ev in events {
        let name = ev.get("event_name").and_then(Value::as_str).unwrap_or_default().to_string();
        let event_id = ev.get("event_id").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        if let Some(id) = &event_id {
            let key = format!("{name}\u{1f}{id}");
            if state.meta.sends.note(&key) {
                state.records.meta.counters.duplicate_sends += 1;
            }
            if state.meta.dedup.check(&key, now, window) == Seen::WithinWindow {
                state.records.meta.counters.deduplicated += 1;
                continue;
            }
            state.meta.dedup.remember(key, now);
        }
        let accepted = accepted_event(ev, name, event_id, test_event_code.clone(), now);
        state.records.meta.counters.accepted += 1;
        state.records.meta.events.push(accepted);
    }
}

/// The record of one counted event.
fn accepted_event(
    ev: &Map<String, Value>,
    event_name: String,
    event_id: Option<String>,
    test_event_code: Option<String>,
    now: chrono::DateTime<Utc>,
) -> AcceptedEvent {
    let user = ev.get("user_data").and_then(Value::as_object);
    let mut hashed = BTreeMap::new();
    let mut plain = BTreeMap::new();
    if let Some(user) = user {
        for key in HASHED_KEYS {
            let values: Vec<String> = match user.get(*key) {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                _ => continue,
            };
            hashed.insert(key.to_string(), values);
        }
        for key in PLAIN_KEYS {
            if let Some(v) = user.get(*key) {
                plain.insert(key.to_string(), v.as_str().map_or_else(|| v.to_string(), str::to_string));
            }
        }
    }
    let custom = ev.get("custom_data");
    AcceptedEvent {
        event_name,
        event_id,
        event_time: ev.get("event_time").and_then(as_unix_seconds).unwrap_or_default(),
        source: ev.get("action_source").and_then(Value::as_str).unwrap_or_default().to_string(),
        hashed,
        plain,
        value: custom.and_then(|c| c.get("value")).and_then(as_number),
        currency: custom.and_then(|c| c.get("currency")).and_then(Value::as_str).map(str::to_string),
        test_event_code,
        received_at: now,
    }
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// `{"events_received": N, "messages": [], "fbtrace_id": "…"}`.
fn success(events_received: usize) -> Response {
    json_response(
        StatusCode::OK,
        json!({"events_received": events_received, "messages": [], "fbtrace_id": random_id(27)}),
    )
}

/// A Graph error envelope: `{"error": {message, type, code, error_subcode?, fbtrace_id}}`.
fn graph_error_body(code: u32, subcode: Option<u32>, message: &str) -> Value {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "is_transient": false,
        "fbtrace_id": random_id(27),
    });
    if let Some(sub) = subcode {
        error["error_subcode"] = json!(sub);
    }
    json!({ "error": error })
}

/// A Graph error response.
fn graph_error(status: StatusCode, code: u32, subcode: Option<u32>, message: &str) -> Response {
    json_response(status, graph_error_body(code, subcode, message))
}

/// A parameter error naming the event index, with Meta's user-facing title and message.
fn violation_response(v: &Violation) -> Response {
    let message = match v.index {
        Some(i) => format!("(#{}) Invalid parameter at data[{i}]: {}", v.code, v.reason),
        None => format!("(#{}) Invalid parameter: {}", v.code, v.reason),
    };
    let mut body = graph_error_body(v.code, v.subcode, &message);
    body["error"]["error_user_title"] = json!("Invalid parameter");
    body["error"]["error_user_msg"] = json!(v.reason);
    json_response(StatusCode::BAD_REQUEST, body)
}

/// Invalid or missing token: HTTP 400 with code 104 or 190, plus `WWW-Authenticate` as Graph sends.
fn auth_error(code: u32, message: &str) -> Response {
    let mut response = graph_error(StatusCode::BAD_REQUEST, code, None, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("OAuth \"Facebook Platform\" \"invalid_token\""),
    );
    response
}

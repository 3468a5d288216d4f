//! TikTok Events API 2.0: `POST /open_api/v1.3/event/track/` (platforms.md §3).
//!
//! TikTok answers with HTTP 200 and a JSON `code`: 0 is success, 40001 is an authentication error,
//! 40002 a parameter error (one bad event rejects the whole batch; the message names its index).
//! The stored docs do not give an event-age limit; the sandbox applies 7 days, the "risky" line of
//! §3, and rejects times more than [`FUTURE_TOLERANCE_SECS`] ahead. It also requires at least one
//! match key per event and uppercase ISO 4217 currencies — assumptions marked as unverified in §3.
//!
//! CRM events (`event_source: "crm"`, `event_source_id` = the CRM event set id) carry the TikTok lead
//! as `data[].lead.{lead_id, lead_event_source}` (platform-audit.md T4); a CRM event with `user.lead_id`
//! instead is refused. The recorded event's `plain` map also holds the envelope's `event_source_id`
//! and the lead's `lead_id` / `lead_event_source`, and a purchase's `content_type` and its contents'
//! ids (`content_ids`, comma-separated). Both the current standard names (`Purchase`,
//! `Lead`) and the legacy ones TikTok still converts (`CompletePayment`, `SubmitForm`) are accepted.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::faults::{self, ConnControl, Gate};
use super::records::AcceptedEvent;
use super::{
    as_number, as_unix_seconds, credential_ok, is_ip_address, json_response, random_id,
    sha256_values,
};
use super::{hashed_as_sent, Shared};
use crate::testbed::sandbox::Platform;
use crate::testbed::sandbox::FUTURE_TOLERANCE_SECS;

/// Events per request (§3).
const MAX_EVENTS: usize = 1_000;
/// Maximum event age applied by the sandbox, 7 days.
const MAX_AGE_SECS: i64 = 7 * 24 * 3600;
/// `event_source` values (§3).
const EVENT_SOURCES: &[&str] = &["web", "app", "offline", "crm"];
/// `user` keys that must be SHA-256 hex, as a string or a list of strings.
const HASHED_KEYS: &[&str] = &[
    "email",
    "phone",
    "external_id",
    "first_name",
    "last_name",
    "zip_code",
];
/// `user` keys that are never hashed and are kept in the records.
const PLAIN_KEYS: &[&str] = &["ttclid", "ttp", "lead_id", "ip", "user_agent"];
/// Code for a successful request.
const CODE_OK: u32 = 0;
/// Code for an authentication error.
const CODE_AUTH: u32 = 40_001;
/// Code for a parameter error.
const CODE_PARAM: u32 = 40_002;

// ---------------------------------------------------------------------------------------------
// Request types
// ---------------------------------------------------------------------------------------------

/// The checked envelope of a track request.
struct Envelope {
    /// `event_source`.
    event_source: String,
    /// `event_source_id` (pixel code, or CRM event set id).
    event_source_id: String,
    /// `test_event_code`, when sent.
    test_event_code: Option<String>,
    /// The events, each a JSON object.
    events: Vec<Map<String, Value>>,
}

/// Why a request was rejected: the message names the field (and event index), never the value.
struct Violation {
    /// TikTok's response code.
    code: u32,
    /// The message.
    message: String,
    /// How many events the rejected request carried.
    count: usize,
}

impl Violation {
    /// A parameter error.
    fn param(message: impl Into<String>, count: usize) -> Self {
        Violation {
            code: CODE_PARAM,
            message: message.into(),
            count,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Parses and checks the envelope.
fn parse_envelope(body: &[u8]) -> Result<Envelope, Violation> {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(Violation::param(
            "Invalid parameter: the request body must be a JSON object",
            0,
        ));
    };
    let data = obj.remove("data");
    let count = data.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
    let param = |m: &str| Err(Violation::param(format!("Invalid parameter: {m}"), count));
    let event_source = match obj.get("event_source") {
        Some(Value::String(s)) if EVENT_SOURCES.contains(&s.as_str()) => s.clone(),
        Some(_) => return param("event_source must be one of web, app, offline, crm"),
        None => return param("event_source is required"),
    };
    let event_source_id = match obj.get("event_source_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return param("event_source_id is required"),
    };
    let test_event_code = match obj.get("test_event_code") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return param("test_event_code must be a string"),
    };
    let list = match data {
        Some(Value::Array(list)) => list,
        Some(_) => return param("data must be an array"),
        None => return param("data is required"),
    };
    if list.is_empty() {
        return param("data must not be empty");
    }
    if list.len() > MAX_EVENTS {
        return param(&format!("data can contain at most {MAX_EVENTS} events"));
    }
    let mut events = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        match item {
            Value::Object(ev) => events.push(ev),
            _ => {
                return Err(Violation::param(
                    format!("Invalid parameter at data[{i}]: event must be an object"),
                    count,
                ))
            }
        }
    }
    Ok(Envelope {
        event_source,
        event_source_id,
        test_event_code,
        events,
    })
}

/// Checks one event; the error is the reason without the index.
fn validate_event(ev: &Map<String, Value>, now: i64, crm: bool) -> Result<(), String> {
    if !matches!(ev.get("event"), Some(Value::String(s)) if !s.trim().is_empty()) {
        return Err("event is required".into());
    }
    if let Some(id) = ev.get("event_id") {
        if !matches!(id, Value::String(s) if !s.is_empty()) {
            return Err("event_id must be a non-empty string".into());
        }
    }
    let time = ev.get("event_time").ok_or("event_time is required")?;
    let time = as_unix_seconds(time).ok_or("event_time must be a Unix timestamp in seconds")?;
    if time < now - MAX_AGE_SECS {
        return Err("event_time is too far in the past (older than 7 days)".into());
    }
    if time > now + FUTURE_TOLERANCE_SECS {
        return Err("event_time is in the future (milliseconds instead of seconds?)".into());
    }
    if let Some(flag) = ev.get("limited_data_use") {
        if !flag.is_boolean() {
            return Err("limited_data_use must be a boolean".into());
        }
    }
    let user = match ev.get("user") {
        Some(Value::Object(u)) => u,
        Some(_) => return Err("user must be an object".into()),
        None => return Err("user is required".into()),
    };
    let lead_id = match ev.get("lead") {
        None | Some(Value::Null) => false,
        Some(Value::Object(lead)) => {
            for (key, v) in lead {
                if !matches!(key.as_str(), "lead_id" | "lead_event_source") {
                    return Err(format!("lead.{key} is not a lead field"));
                }
                if v.as_str().is_none_or(str::is_empty) {
                    return Err(format!("lead.{key} must be a non-empty string"));
                }
            }
            lead.contains_key("lead_id")
        }
        Some(_) => return Err("lead must be an object".into()),
    };
    if crm && user.contains_key("lead_id") {
        return Err("a CRM event carries its lead as lead.lead_id, not user.lead_id".into());
    }
    if !crm && ev.contains_key("lead") {
        return Err("lead is for CRM events (event_source crm)".into());
    }
    if !lead_id {
        validate_user(user)?;
    } else {
        validate_user_fields(user)?;
    }
    if let Some(page) = ev.get("page") {
        let url_ok = match page.get("url") {
            None => true,
            Some(u) => u
                .as_str()
                .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://")),
        };
        if !page.is_object() || !url_ok {
            return Err("page.url must be an http(s) URL".into());
        }
    }
    validate_properties(ev.get("properties"))
}

/// Checks hashed keys, unhashed identifiers and that some match key is present.
fn validate_user(user: &Map<String, Value>) -> Result<(), String> {
    validate_user_fields(user)?;
    let has = |k: &str| user.get(k).is_some_and(|v| !v.is_null());
    let usable = ["email", "phone", "external_id", "ttclid", "ttp", "lead_id"]
        .iter()
        .any(|k| has(k))
        || (has("ip") && has("user_agent"));
    if !usable {
        return Err("user has no usable match key (email, phone, external_id, ttclid, ttp, lead_id, or ip with user_agent)".into());
    }
    Ok(())
}

/// Checks hashed keys and unhashed identifiers (an event whose lead names the person needs no more).
fn validate_user_fields(user: &Map<String, Value>) -> Result<(), String> {
    for key in HASHED_KEYS {
        if user.get(*key).is_some_and(|v| sha256_values(v).is_none()) {
            return Err(format!(
                "user.{key} must be a SHA-256 hash (64 lowercase hex characters)"
            ));
        }
    }
    for key in ["ttclid", "ttp", "user_agent", "lead_id", "locale"] {
        if let Some(v) = user.get(key) {
            if !v.is_string() {
                return Err(format!("user.{key} must be a string"));
            }
        }
    }
    if let Some(ip) = user.get("ip") {
        if !is_ip_address(ip) {
            return Err("user.ip is not a valid IP address (do not hash it)".into());
        }
    }
    Ok(())
}

/// Checks `properties.value` and `properties.currency`.
fn validate_properties(properties: Option<&Value>) -> Result<(), String> {
    let props = match properties {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(p)) => p,
        Some(_) => return Err("properties must be an object".into()),
    };
    if let Some(v) = props.get("value") {
        if as_number(v).is_none() {
            return Err("properties.value must be a number".into());
        }
    }
    if let Some(c) = props.get("currency") {
        if !c
            .as_str()
            .is_some_and(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err("properties.currency must be an uppercase ISO 4217 code".into());
        }
    }
    if let Some(contents) = props.get("contents") {
        let Some(items) = contents.as_array() else {
            return Err("properties.contents must be an array".into());
        };
        if items.iter().any(|c| {
            c.get("content_id")
                .is_some_and(|id| id.as_str().is_none_or(str::is_empty))
        }) {
            return Err("properties.contents[].content_id must be a non-empty string".into());
        }
    }
    if let Some(kind) = props.get("content_type") {
        if !matches!(kind.as_str(), Some("product" | "product_group")) {
            return Err("properties.content_type must be product or product_group".into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------------------------

/// The TikTok route.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/open_api/v1.3/event/track/", post(handle_track))
}

/// `POST /open_api/v1.3/event/track/`.
async fn handle_track(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::Tiktok).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let response = match process(&shared, &headers, &body) {
        Ok(()) => reply(CODE_OK, "OK"),
        Err(v) => {
            let mut state = shared.lock();
            state.records.tiktok.counters.rejected_requests += 1;
            state.records.tiktok.counters.rejected += v.count as u64;
            state.records.tiktok.counters.received += v.count as u64;
            reply(v.code, &v.message)
        }
    };
    faults::finish(&shared, &conn, Platform::Tiktok, drop_after, response)
}

/// Authenticates, validates and records one request.
fn process(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<(), Violation> {
    let token = headers.get("access-token").and_then(|v| v.to_str().ok());
    if !credential_ok(&shared.config.tiktok_access_token, token) {
        let count = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("data").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(0);
        let message = if token.is_none_or(str::is_empty) {
            "Authentication error: the Access-Token header is missing"
        } else {
            "Authentication error: the access token is invalid or has been revoked"
        };
        return Err(Violation {
            code: CODE_AUTH,
            message: message.into(),
            count,
        });
    }
    let env = parse_envelope(body)?;
    let now = Utc::now();
    for (i, ev) in env.events.iter().enumerate() {
        if let Err(reason) = validate_event(ev, now.timestamp(), env.event_source == "crm") {
            return Err(Violation::param(
                format!("Invalid parameter at data[{i}]: {reason}"),
                env.events.len(),
            ));
        }
    }
    record(shared, &env, now);
    Ok(())
}

/// Dedups on `event` + `event_id` and stores the counted events.
fn record(shared: &Shared, env: &Envelope, now: DateTime<Utc>) {
    let window = shared.config.dedup_window;
    let mut guard = shared.lock();
    let state = &mut *guard;
    state.records.tiktok.counters.received += env.events.len() as u64;
    for ev in &env.events {
        let name = ev
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let event_id = ev
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let key = event_id.as_ref().map(|id| format!("{name}\u{1f}{id}"));
        if !state
            .tiktok
            .count(&mut state.records.tiktok.counters, key, now, window)
        {
            continue;
        }
        let accepted = accepted_event(ev, name, event_id, env, now);
        state.records.tiktok.events.push(accepted);
    }
}

/// The record of one counted event.
fn accepted_event(
    ev: &Map<String, Value>,
    event_name: String,
    event_id: Option<String>,
    env: &Envelope,
    now: DateTime<Utc>,
) -> AcceptedEvent {
    let mut hashed = BTreeMap::new();
    let mut plain = BTreeMap::new();
    if let Some(user) = ev.get("user").and_then(Value::as_object) {
        hashed = hashed_as_sent(user, HASHED_KEYS);
        for key in PLAIN_KEYS {
            if let Some(v) = user.get(*key).and_then(Value::as_str) {
                plain.insert(key.to_string(), v.to_string());
            }
        }
    }
    if let Some(lead) = ev.get("lead").and_then(Value::as_object) {
        for key in ["lead_id", "lead_event_source"] {
            if let Some(v) = lead.get(key).and_then(Value::as_str) {
                plain.insert(key.to_string(), v.to_string());
            }
        }
    }
    plain.insert("event_source_id".into(), env.event_source_id.clone());
    let props = ev.get("properties");
    if let Some(props) = props {
        if let Some(kind) = props.get("content_type").and_then(Value::as_str) {
            plain.insert("content_type".into(), kind.to_string());
        }
        if let Some(items) = props.get("contents").and_then(Value::as_array) {
            let ids: Vec<&str> = items
                .iter()
                .filter_map(|c| c.get("content_id").and_then(Value::as_str))
                .collect();
            plain.insert("content_ids".into(), ids.join(","));
        }
    }
    let event_time = ev.get("event_time").and_then(as_unix_seconds);
    AcceptedEvent {
        event_name,
        event_id,
        event_time: event_time.unwrap_or_default(),
        source: env.event_source.clone(),
        hashed,
        plain,
        value: props.and_then(|p| p.get("value")).and_then(as_number),
        currency: props
            .and_then(|p| p.get("currency"))
            .and_then(Value::as_str)
            .map(str::to_string),
        test_event_code: env.test_event_code.clone(),
        received_at: now,
    }
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// `{"code", "message", "request_id", "data": {}}` with HTTP 200, as TikTok answers everything.
fn reply(code: u32, message: &str) -> Response {
    json_response(
        StatusCode::OK,
        json!({"code": code, "message": message, "request_id": random_id(32), "data": {}}),
    )
}

//! Reddit Conversions API v3: `POST /api/v3/pixels/{pixel_id}/conversion_events` (platforms-next.md §5).
//!
//! Body `{"data": {"events": […], "test_id": "…"?}}`, 1–1,000 events, `Authorization: Bearer` with the
//! conversion access token. An event: `event_at` in epoch **milliseconds** (a 10-digit value is
//! refused as seconds) within the last 7 days, `action_source` (`WEBSITE`, `APP`, `OTHER`,
//! `PHYSICAL_STORE`), `type{tracking_type, custom_event_name}` (the name required for `CUSTOM`, ≤ 64
//! characters, refused otherwise), `click_id` (the `rdt_cid`, plain), `user{…}`, `metadata{conversion_id,
//! currency, value (a number), item_count, products}`. Reddit takes match keys plain or hashed; the
//! sandbox is stricter and wants `email`, `phone_number` and `external_id` as SHA-256 (pgcapi never
//! sends raw PII). An event needs a match key: `click_id`, `email`, `phone_number`, `external_id`,
//! `uuid`, `idfa`, `aaid`, or `ip_address` with `user_agent`; a `click_id` with whitespace inside is
//! refused (it cannot have come from a URL).
//!
//! One invalid event fails the whole request: HTTP 400 "There were N invalid conversion events. None
//! were processed." (the `details` list with index and reason is the sandbox's own addition). More than
//! 1,000 events: 400 "Bad Request". A missing or generic library `User-Agent` gets 429 "Your user agent
//! was automatically ratelimited." as Reddit does. Success: `{"data": {"message": "Successfully
//! processed N conversion events."}}`.
//!
//! Dedup: `metadata.conversion_id` within the same event type (and custom name) and `action_source`,
//! counted once within the sandbox's dedup window (Reddit: 2 days). A request with `test_id` is
//! recorded with it as `test_event_code` (Reddit shows it in Event Testing).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::faults::{self, ConnControl, Gate};
use super::records::AcceptedEvent;
use super::{
    bearer, credential_ok, epoch_millis, is_ip_address, is_sha256_hex, json_response, Platform,
    Shared,
};

/// Events per request.
const MAX_EVENTS: usize = 1_000;
/// Oldest accepted event, in days.
const MAX_AGE_DAYS: i64 = 7;
/// How far ahead of the clock an event may be, in milliseconds.
const FUTURE_TOLERANCE_MS: i64 = 10 * 60 * 1000;
/// Longest custom event name.
const MAX_CUSTOM_NAME: usize = 64;
/// `action_source` values.
const ACTION_SOURCES: &[&str] = &["WEBSITE", "APP", "OTHER", "PHYSICAL_STORE"];
/// `type.tracking_type` values.
const TRACKING_TYPES: &[&str] = &[
    "PAGE_VISIT",
    "VIEW_CONTENT",
    "SEARCH",
    "ADD_TO_CART",
    "ADD_TO_WISHLIST",
    "PURCHASE",
    "LEAD",
    "SIGN_UP",
    "CUSTOM",
];
/// The fields of an event.
const EVENT_FIELDS: &[&str] = &[
    "event_at",
    "action_source",
    "type",
    "click_id",
    "event_source_url",
    "user",
    "metadata",
];
/// `user` keys the sandbox wants hashed.
const HASHED_KEYS: &[&str] = &["email", "phone_number", "external_id"];
/// `user` keys taken as plain strings (an IP may also be a hash).
const PLAIN_KEYS: &[&str] = &["ip_address", "user_agent", "uuid", "idfa", "aaid"];
/// User agents Reddit throttles (library defaults), by prefix.
const GENERIC_AGENTS: &[&str] = &[
    "python-requests",
    "curl/",
    "Go-http-client",
    "okhttp",
    "axios",
    "node-fetch",
    "Java/",
];

/// The Reddit route.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route(
        "/api/v3/pixels/{pixel_id}/conversion_events",
        post(handle_events),
    )
}

/// Reddit's error body.
fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({"message": message}))
}

/// The body of a Reddit 429.
pub(crate) fn throttled_body() -> Value {
    json!({"message": "Too many requests/events within timeframe."})
}

/// The body of a Reddit 500.
pub(crate) fn server_error_body() -> Value {
    json!({"message": "The service is currently unavailable. No conversion events were processed."})
}

/// `POST /api/v3/pixels/{pixel_id}/conversion_events`.
async fn handle_events(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    Path(pixel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::Reddit).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let response = process(&shared, &pixel_id, &headers, &body).unwrap_or_else(|rejected| {
        shared.lock().records.reddit.counters.rejected_requests += 1;
        *rejected
    });
    faults::finish(&shared, &conn, Platform::Reddit, drop_after, response)
}

/// Checks the user agent (Reddit throttles library defaults) and the bearer token.
fn check_headers(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let agent = headers.get("user-agent").and_then(|v| v.to_str().ok());
    if agent.is_none_or(|a| a.trim().is_empty() || GENERIC_AGENTS.iter().any(|g| a.starts_with(g)))
    {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "Your user agent was automatically ratelimited.",
        )
        .into());
    }
    let token = bearer(headers);
    if token.is_none_or(str::is_empty) {
        return Err(error(StatusCode::UNAUTHORIZED, "No bearer token provided").into());
    }
    if !credential_ok(&shared.config.reddit_access_token, token) {
        return Err(error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED").into());
    }
    Ok(())
}

/// The body's `data.test_id` and `data.events` (1–1,000); anything else is Reddit's bare 400.
fn parse_body(body: &[u8]) -> Result<(Option<String>, Vec<Value>), Box<Response>> {
    let bad = || Box::new(error(StatusCode::BAD_REQUEST, "Bad Request"));
    let Ok(Value::Object(mut root)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad());
    };
    let Some(Value::Object(mut data)) = root.remove("data") else {
        return Err(bad());
    };
    let test_id = match data.remove("test_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() => Some(id),
        Some(_) => return Err(bad()),
    };
    let Some(Value::Array(events)) = data.remove("events") else {
        return Err(bad());
    };
    if events.is_empty() || events.len() > MAX_EVENTS || !root.is_empty() || !data.is_empty() {
        return Err(bad());
    }
    Ok((test_id, events))
}

/// Checks the request; records and answers it, or the error response.
fn process(
    shared: &Shared,
    pixel_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Box<Response>> {
    check_headers(shared, headers)?;
    let (test_id, events) = parse_body(body)?;
    let now = Utc::now();
    let invalid: Vec<Value> = events
        .iter()
        .enumerate()
        .filter_map(|(i, ev)| {
            validate(ev, now.timestamp_millis())
                .err()
                .map(|reason| json!({"index": i, "message": reason}))
        })
        .collect();
    let mut state = shared.lock();
    state.records.reddit.counters.received += events.len() as u64;
    if !invalid.is_empty() {
        state.records.reddit.counters.rejected += events.len() as u64;
        drop(state);
        let message = format!(
            "There were {} invalid conversion events. None were processed.",
            invalid.len()
        );
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": message, "details": invalid}),
        )
        .into());
    }
    let window = shared.config.dedup_window;
    for ev in &events {
        let event = accepted_event(ev, pixel_id, test_id.as_deref(), now);
        let key = event
            .event_id
            .as_ref()
            .map(|id| format!("{}\u{1f}{}\u{1f}{id}", event.event_name, event.source));
        let state = &mut *state;
        if state
            .reddit
            .count(&mut state.records.reddit.counters, key, now, window)
        {
            state.records.reddit.events.push(event);
        }
    }
    let message = format!("Successfully processed {} conversion events.", events.len());
    Ok(json_response(
        StatusCode::OK,
        json!({"data": {"message": message}}),
    ))
}

/// Checks one event; the error names the field, never its value.
fn validate(event: &Value, now_ms: i64) -> Result<(), String> {
    let Value::Object(ev) = event else {
        return Err("an event must be an object".into());
    };
    if let Some(field) = ev.keys().find(|k| !EVENT_FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field {field}"));
    }
    let at = ev.get("event_at").ok_or("event_at is required")?;
    let at = epoch_millis(at).ok_or("event_at must be epoch milliseconds (13 digits)")?;
    if at < now_ms - MAX_AGE_DAYS * 24 * 3600 * 1000 {
        return Err(format!("event_at is older than {MAX_AGE_DAYS} days"));
    }
    if at > now_ms + FUTURE_TOLERANCE_MS {
        return Err("event_at is in the future".into());
    }
    if !ev
        .get("action_source")
        .and_then(Value::as_str)
        .is_some_and(|s| ACTION_SOURCES.contains(&s))
    {
        return Err("action_source is required: WEBSITE, APP, OTHER or PHYSICAL_STORE".into());
    }
    validate_type(ev.get("type").unwrap_or(&Value::Null))?;
    // A click id comes from a URL parameter: never blank, never with whitespace (stricter than
    // documented).
    let token = |v: &Value| {
        v.as_str()
            .is_some_and(|s| !s.is_empty() && !s.contains(char::is_whitespace))
    };
    for key in ["click_id", "event_source_url"] {
        if ev.get(key).is_some_and(|v| !token(v)) {
            return Err(format!(
                "{key} must be a non-empty string without whitespace"
            ));
        }
    }
    let user = match ev.get("user") {
        None => &Map::new(),
        Some(Value::Object(user)) => user,
        Some(_) => return Err("user must be an object".into()),
    };
    validate_user(user, ev.contains_key("click_id"))?;
    match ev.get("metadata") {
        None => Ok(()),
        Some(Value::Object(metadata)) => validate_metadata(metadata),
        Some(_) => Err("metadata must be an object".into()),
    }
}

/// Checks `type{tracking_type, custom_event_name}`.
fn validate_type(kind: &Value) -> Result<(), String> {
    let tracking = kind["tracking_type"]
        .as_str()
        .filter(|t| TRACKING_TYPES.contains(t))
        .ok_or("type.tracking_type is required and must be a v3 event type")?;
    let custom = kind.get("custom_event_name");
    match (tracking, custom) {
        ("CUSTOM", Some(Value::String(name)))
            if !name.is_empty() && name.chars().count() <= MAX_CUSTOM_NAME =>
        {
            Ok(())
        }
        ("CUSTOM", _) => Err(format!(
            "type.custom_event_name is required for CUSTOM (1–{MAX_CUSTOM_NAME} characters)"
        )),
        (_, Some(_)) => Err("type.custom_event_name is only for CUSTOM".into()),
        (_, None) => Ok(()),
    }
}

/// Checks the user's keys and that the event has something to match on.
fn validate_user(user: &Map<String, Value>, has_click: bool) -> Result<(), String> {
    for (key, value) in user {
        let ok = if HASHED_KEYS.contains(&key.as_str()) {
            value.as_str().is_some_and(is_sha256_hex)
        } else if key == "ip_address" {
            is_ip_address(value) || value.as_str().is_some_and(is_sha256_hex)
        } else if PLAIN_KEYS.contains(&key.as_str()) {
            value.as_str().is_some_and(|s| !s.is_empty())
        } else if matches!(
            key.as_str(),
            "screen_dimensions" | "data_processing_options"
        ) {
            value.is_object()
        } else {
            return Err(format!("unknown field user.{key}"));
        };
        if !ok {
            let want = if HASHED_KEYS.contains(&key.as_str()) {
                "a SHA-256 hash (64 lowercase hex characters)"
            } else {
                "a valid value"
            };
            return Err(format!("user.{key} must be {want}"));
        }
    }
    let has = |k: &str| user.contains_key(k);
    let matched = has_click
        || [
            "email",
            "phone_number",
            "external_id",
            "uuid",
            "idfa",
            "aaid",
        ]
        .iter()
        .any(|k| has(k))
        || (has("ip_address") && has("user_agent"));
    if !matched {
        return Err("the event has no match key (click_id, email, phone_number, external_id, uuid, idfa, aaid, or ip_address with user_agent)".into());
    }
    Ok(())
}

/// Checks `metadata`.
fn validate_metadata(metadata: &Map<String, Value>) -> Result<(), String> {
    for (key, value) in metadata {
        let ok = match key.as_str() {
            "conversion_id" => value.as_str().is_some_and(|s| !s.is_empty()),
            "currency" => value
                .as_str()
                .is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())),
            "value" => value.as_f64().is_some_and(|v| v.is_finite() && v >= 0.0),
            "item_count" => value.as_u64().is_some(),
            "products" => value.is_array(),
            other => return Err(format!("unknown field metadata.{other}")),
        };
        if !ok {
            let want = match key.as_str() {
                "value" => "a number (not a string)",
                "currency" => "an uppercase ISO 4217 code",
                _ => "a valid value",
            };
            return Err(format!("metadata.{key} must be {want}"));
        }
    }
    Ok(())
}

/// The record of one counted event: `event_name` the tracking type (`CUSTOM:<name>` for custom
/// events), `event_id` the conversion id, `source` the action source; `plain` holds the click id,
/// the plain user keys and the pixel id.
fn accepted_event(
    ev: &Value,
    pixel_id: &str,
    test_id: Option<&str>,
    now: DateTime<Utc>,
) -> AcceptedEvent {
    let kind = ev["type"]["tracking_type"].as_str().unwrap_or_default();
    let event_name = match ev["type"]["custom_event_name"].as_str() {
        Some(name) => format!("{kind}:{name}"),
        None => kind.to_string(),
    };
    let user = &ev["user"];
    let mut hashed = BTreeMap::new();
    for key in HASHED_KEYS {
        if let Some(value) = user[*key].as_str() {
            hashed.insert(key.to_string(), vec![value.to_string()]);
        }
    }
    let mut plain = BTreeMap::new();
    for key in PLAIN_KEYS {
        if let Some(value) = user[*key].as_str() {
            plain.insert(key.to_string(), value.to_string());
        }
    }
    if let Some(click) = ev["click_id"].as_str() {
        plain.insert("click_id".into(), click.to_string());
    }
    plain.insert("pixel_id".into(), pixel_id.to_string());
    let metadata = &ev["metadata"];
    AcceptedEvent {
        event_name,
        event_id: metadata["conversion_id"].as_str().map(str::to_string),
        event_time: epoch_millis(&ev["event_at"]).unwrap_or_default() / 1000,
        source: ev["action_source"].as_str().unwrap_or_default().to_string(),
        hashed,
        plain,
        value: metadata["value"].as_f64(),
        currency: metadata["currency"].as_str().map(str::to_string),
        test_event_code: test_id.map(str::to_string),
        received_at: now,
    }
}

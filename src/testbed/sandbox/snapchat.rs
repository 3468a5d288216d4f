//! Snapchat Conversions API v3 (platforms-next.md §2).
//!
//! | endpoint | what |
//! |---|---|
//! | `POST /v3/{asset_id}/events?access_token=…` | records the events of `{"data":[…]}` |
//! | `POST /v3/{asset_id}/events/validate?access_token=…` | the test-events tool: same checks and answer, records nothing |
//! | `GET /v3/{asset_id}/events/validate/stats?access_token=…` | a read of the test-event stats (checks the token, records nothing) |
//!
//! The token is the `access_token` query parameter (an `Authorization: Bearer` header is accepted
//! too, as some connectors send it). Rules enforced: 1–2,000 events; per event only the documented
//! top-level fields; `event_name` one of Snap's upper-case names; `event_time` a JSON integer of Unix
//! **seconds** (13 digits is reported as milliseconds), at most 37 days old and not in the future;
//! `action_source` `WEB`, `MOBILE_APP` or `OFFLINE`, with `event_source_url` for `WEB`; hashed
//! `user_data` keys as SHA-256 hex (a string or a list); `client_ip_address` a plain IP; at least one
//! identifier (`em`, `ph`, `sc_click_id`, `sc_cookie1`, `madid`, or IP with user agent); `currency`
//! (3 upper-case letters) and `value` on `PURCHASE`.
//!
//! Failure model: per event. A valid request is answered HTTP 200 with `status` `VALID` (every event
//! valid) or `INVALID`, and `events[]` in request order, each `{status, event: index, reason,
//! errors: {codes, error_msgs}}`; valid events are recorded, invalid ones are not. The envelope
//! (body, `data`, batch size) fails the whole request with HTTP 400, a bad token with 401. The exact
//! body of Snap's multi-event answer is not published in detail; this shape follows the SDK's
//! per-event `{status, reason, errors, event}`. Stricter than Snap: unknown top-level event fields
//! fail their event.
//!
//! Dedup: the same asset + `event_name` + `event_id` inside the dedup window counts once (Snap
//! dedups `event_id` against the pixel's `client_dedup_id`; 48 hours per Stape).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};

use super::capi::{judge_and_record, refuse_request, Shape};
use super::faults::{self, ConnControl, Gate};
use super::records::{AcceptedEvent, Counters, EventMemory};
use super::{
    as_number, credential_ok, is_ip_address, json_response, parse_form, sha256_values, Shared,
};
use crate::testbed::sandbox::Platform;
use crate::testbed::sandbox::FUTURE_TOLERANCE_SECS;

/// Events per request.
const MAX_EVENTS: usize = 2_000;
/// Oldest accepted event, in seconds (37 days).
const MAX_AGE_SECS: i64 = 37 * 24 * 3600;
/// Snap's standard event names.
const EVENT_NAMES: &[&str] = &[
    "PAGE_VIEW",
    "VIEW_CONTENT",
    "ADD_CART",
    "ADD_TO_WISHLIST",
    "SIGN_UP",
    "SEARCH",
    "PURCHASE",
    "ADD_BILLING",
    "COMPLETE_TUTORIAL",
    "SUBSCRIBE",
    "AD_CLICK",
    "AD_VIEW",
    "START_CHECKOUT",
    "RATE",
    "LIST_VIEW",
    "LEVEL_COMPLETE",
    "ACHIEVEMENT_UNLOCKED",
    "SPENT_CREDITS",
    "SAVE",
    "SHARE",
    "INVITE",
    "LOGIN",
    "RESERVE",
    "START_TRIAL",
    "APP_INSTALL",
    "APP_OPEN",
    "CUSTOM_EVENT_1",
    "CUSTOM_EVENT_2",
    "CUSTOM_EVENT_3",
    "CUSTOM_EVENT_4",
    "CUSTOM_EVENT_5",
];
/// `action_source` values.
const ACTION_SOURCES: &[&str] = &["WEB", "MOBILE_APP", "OFFLINE"];
/// Top-level fields of an event.
const EVENT_FIELDS: &[&str] = &[
    "event_name",
    "event_time",
    "event_id",
    "action_source",
    "event_source_url",
    "user_data",
    "custom_data",
    "app_data",
    "data_processing_options",
    "data_processing_options_country",
    "data_processing_options_state",
    "integration",
];
/// `user_data` keys that must be SHA-256 hex.
const HASHED_KEYS: &[&str] = &[
    "em",
    "ph",
    "fn",
    "ln",
    "ge",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
    "db",
];
/// `user_data` keys sent in clear, kept in the records.
const PLAIN_KEYS: &[&str] = &[
    "client_ip_address",
    "client_user_agent",
    "sc_click_id",
    "sc_cookie1",
    "madid",
    "idfv",
];
/// Keys that identify a person on their own.
const IDENTIFIERS: &[&str] = &["em", "ph", "sc_click_id", "sc_cookie1", "madid"];

/// Where Snapchat's events go, and its `user_data` keys.
const SHAPE: Shape = Shape {
    slot: |state| (&mut state.records.snapchat, &mut state.snapchat),
    hashed_keys: HASHED_KEYS,
    plain_keys: PLAIN_KEYS,
};

/// The routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/v3/{asset_id}/events",
            post(|s, c, p, q, h, b| handle_events(s, c, p, q, h, b, false)),
        )
        .route(
            "/v3/{asset_id}/events/validate",
            post(|s, c, p, q, h, b| handle_events(s, c, p, q, h, b, true)),
        )
        .route("/v3/{asset_id}/events/validate/stats", get(handle_stats))
}

/// The token of a request: the `access_token` query parameter, else a bearer header.
fn presented_token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query
        .and_then(|q| parse_form(q.as_bytes()))
        .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "access_token"))
        .map(|(_, v)| v);
    from_query.or_else(|| {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string)
    })
}

/// A whole-request answer: `{"status":"INVALID","reason":…}` with `status`.
fn refuse(status: StatusCode, reason: &str) -> Response {
    json_response(status, json!({"status": "INVALID", "reason": reason}))
}

/// `GET /v3/{asset_id}/events/validate/stats`: the test-event count of the asset.
async fn handle_stats(
    State(shared): State<Arc<Shared>>,
    Path(asset_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let token = presented_token(query.as_deref(), &headers);
    if !credential_ok(&shared.config.snapchat_access_token, token.as_deref()) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: invalid access token",
        );
    }
    let tested = shared.lock().records.snapchat.tested;
    json_response(
        StatusCode::OK,
        json!({"status": "VALID", "asset_id": asset_id, "stats": {"test_events": tested}}),
    )
}

/// `POST /v3/{asset_id}/events` and `…/events/validate`.
async fn handle_events(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    Path(asset_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
    validate: bool,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::Snapchat).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let token = presented_token(query.as_deref(), &headers);
    let response = process(&shared, &asset_id, token.as_deref(), &body, validate);
    faults::finish(&shared, &conn, Platform::Snapchat, drop_after, response)
}

/// Authenticates, checks and (unless validating) records one request.
fn process(
    shared: &Shared,
    asset_id: &str,
    token: Option<&str>,
    body: &[u8],
    validate: bool,
) -> Response {
    let refused = |status, reason: &str, count: usize| {
        refuse_request(
            &mut shared.lock().records.snapchat.counters,
            validate,
            count,
        );
        refuse(status, reason)
    };
    if !credential_ok(&shared.config.snapchat_access_token, token) {
        return refused(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: invalid access token",
            0,
        );
    }
    let events = match parse_envelope(body) {
        Ok(events) => events,
        Err((reason, count)) => return refused(StatusCode::BAD_REQUEST, &reason, count),
    };
    let window = shared.config.dedup_window;
    let count = |memory: &mut EventMemory, counters: &mut Counters, ev: &AcceptedEvent, now| {
        let key =
            (ev.event_id.as_ref()).map(|id| format!("{asset_id}\u{1f}{}\u{1f}{id}", ev.event_name));
        memory.count(counters, key, now, window)
    };
    let verdicts = judge_and_record(shared, &SHAPE, &events, validate, validate_event, count);
    reply(&verdicts)
}

/// The events of `{"data": […]}`, or why the whole request fails (and how many events it had).
fn parse_envelope(body: &[u8]) -> Result<Vec<Map<String, Value>>, (String, usize)> {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(("the request body must be a JSON object".into(), 0));
    };
    let data = obj.remove("data");
    let count = data.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
    if let Some(key) = obj.keys().next() {
        return Err((format!("unknown field {key} in the request body"), count));
    }
    let list = match data {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err(("data must not be empty".into(), 0)),
        Some(_) => return Err(("data must be an array of events".into(), 0)),
        None => return Err(("data is required".into(), 0)),
    };
    if list.len() > MAX_EVENTS {
        return Err((
            format!("data can contain at most {MAX_EVENTS} events"),
            count,
        ));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, ev)| match ev {
            Value::Object(ev) => Ok(ev),
            _ => Err((format!("data[{i}] must be an object"), count)),
        })
        .collect()
}

/// Checks one event; the error names the field, never its value.
fn validate_event(ev: &Map<String, Value>, now: i64) -> Result<(), String> {
    if let Some(key) = ev.keys().find(|k| !EVENT_FIELDS.contains(&k.as_str())) {
        return Err(format!("{key} is not an event field"));
    }
    let name = match ev.get("event_name") {
        Some(Value::String(s)) if EVENT_NAMES.contains(&s.as_str()) => s.as_str(),
        Some(_) => return Err("event_name must be one of Snap's standard event names".into()),
        None => return Err("event_name is required".into()),
    };
    validate_time(ev.get("event_time"), now)?;
    match ev.get("action_source").and_then(Value::as_str) {
        Some(s) if ACTION_SOURCES.contains(&s) => {
            let url_ok = ev
                .get("event_source_url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"));
            if s == "WEB" && !url_ok {
                return Err("event_source_url (an http(s) URL) is required for WEB events".into());
            }
        }
        Some(_) => return Err("action_source must be WEB, MOBILE_APP or OFFLINE".into()),
        None => return Err("action_source is required".into()),
    }
    if let Some(id) = ev.get("event_id") {
        if id.as_str().is_none_or(str::is_empty) {
            return Err("event_id must be a non-empty string".into());
        }
    }
    match ev.get("user_data") {
        Some(Value::Object(user)) => validate_user(user)?,
        Some(_) => return Err("user_data must be an object".into()),
        None => return Err("user_data is required".into()),
    }
    validate_custom(ev.get("custom_data"), name == "PURCHASE")
}

/// `event_time`: a JSON integer of Unix seconds inside the accepted window.
fn validate_time(time: Option<&Value>, now: i64) -> Result<(), String> {
    let time = time.ok_or("event_time is required")?;
    let secs = time
        .as_i64()
        .ok_or("event_time must be an integer of Unix seconds")?;
    if secs.to_string().len() > 10 {
        return Err("event_time must be Unix seconds (it looks like milliseconds)".into());
    }
    if secs < now - MAX_AGE_SECS {
        return Err("event_time is more than 37 days in the past".into());
    }
    if secs > now + FUTURE_TOLERANCE_SECS {
        return Err("event_time is in the future".into());
    }
    Ok(())
}

/// Hashed keys, plain keys and at least one identifier.
fn validate_user(user: &Map<String, Value>) -> Result<(), String> {
    for key in HASHED_KEYS {
        if user.get(*key).is_some_and(|v| sha256_values(v).is_none()) {
            return Err(format!(
                "user_data.{key} must be a SHA-256 hash (64 lowercase hex characters)"
            ));
        }
    }
    for key in PLAIN_KEYS {
        if user.get(*key).is_some_and(|v| !v.is_string()) {
            return Err(format!("user_data.{key} must be a string"));
        }
    }
    if user
        .get("client_ip_address")
        .is_some_and(|ip| !is_ip_address(ip))
    {
        return Err("user_data.client_ip_address is not an IP address (do not hash it)".into());
    }
    let has = |k: &str| user.contains_key(k);
    let browser = has("client_ip_address") && has("client_user_agent");
    if !(IDENTIFIERS.iter().any(|k| has(k)) || browser) {
        return Err("user_data has no identifier (em, ph, sc_click_id, sc_cookie1, madid, or client_ip_address with client_user_agent)".into());
    }
    Ok(())
}

/// `custom_data`: a numeric `value` and an ISO currency, both required on purchases.
fn validate_custom(custom: Option<&Value>, purchase: bool) -> Result<(), String> {
    let custom = match custom {
        None if purchase => {
            return Err("custom_data with currency and value is required for PURCHASE".into())
        }
        None => return Ok(()),
        Some(Value::Object(c)) => c,
        Some(_) => return Err("custom_data must be an object".into()),
    };
    match custom.get("value") {
        Some(v) if as_number(v).is_none() => {
            return Err("custom_data.value must be a number".into())
        }
        None if purchase => return Err("custom_data.value is required for PURCHASE".into()),
        _ => {}
    }
    match custom.get("currency").map(Value::as_str) {
        Some(Some(c)) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => Ok(()),
        Some(_) => Err("custom_data.currency must be an upper-case ISO 4217 code".into()),
        None if purchase => Err("custom_data.currency is required for PURCHASE".into()),
        None => Ok(()),
    }
}

/// HTTP 200 with the overall and per-event statuses.
fn reply(verdicts: &[Result<(), String>]) -> Response {
    let events: Vec<Value> = verdicts
        .iter()
        .enumerate()
        .map(|(i, verdict)| match verdict {
            Ok(()) => json!({"status": "VALID", "event": i, "reason": null,
                "errors": {"codes": [], "error_msgs": []}}),
            Err(reason) => json!({"status": "INVALID", "event": i, "reason": reason,
                "errors": {"codes": ["INVALID_PARAMETER"], "error_msgs": [reason]}}),
        })
        .collect();
    let status = if verdicts.iter().all(Result::is_ok) {
        "VALID"
    } else {
        "INVALID"
    };
    json_response(StatusCode::OK, json!({"status": status, "events": events}))
}

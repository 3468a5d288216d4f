//! Pinterest Conversions API v5: `POST /v5/ad_accounts/{ad_account_id}/events[?test=true]`
//! (platforms-next.md §3).
//!
//! Auth is `Authorization: Bearer <conversion token>`: missing or wrong → 401 `{"code": 2}`; an ad
//! account the token may not write to (when [`super::SandboxConfig::pinterest_ad_account_id`] is
//! set) → 403 `{"code": 29}`.
//!
//! Two levels of failure, as Pinterest's OpenAPI description and connectors show:
//! * the schema (`additionalProperties: false` everywhere, required fields, JSON types, enums,
//!   1–1,000 events) fails the whole request: HTTP 400 `{"code": 1, "message"}` naming the field;
//! * the content of one event (a hash that is not SHA-256 hex, a timestamp in the past or the future,
//!   no usable identifier, a non-numeric value) fails that event only: when any event fails the
//!   answer is HTTP 422 `{"code", "message", "details": {…}}`, else HTTP 200 with the same
//!   `{num_events_received, num_events_processed, events: [{status, error_message,
//!   warning_message}]}` in request order. The processed events of a 422 are recorded.
//!
//! Stricter than the published schema (a string): `event_source_url` must be an http(s) URL.
//!
//! `user_data` needs `em`, `hashed_maids`, or `client_ip_address` with `client_user_agent` (the
//! published minimum; `ph` or `click_id` alone are not enough). Hashed keys are arrays of SHA-256
//! hex. `custom_data.value` is a **string**. `event_time` is Unix **seconds**; Pinterest publishes
//! no age limit, only the error "Given timestamp is in the past" (code 953), so the sandbox applies
//! 7 days, an assumption.
//!
//! `?test=true`: the same checks and answers, nothing recorded (counted in `tested`).
//!
//! Dedup: the same ad account + `event_name` + `event_id` inside the window counts once, except
//! `action_source: offline` events, which Pinterest says cannot be deduplicated.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
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
const MAX_EVENTS: usize = 1_000;
/// Oldest accepted event, in seconds (7 days: an assumption, see the module notes).
const MAX_AGE_SECS: i64 = 7 * 24 * 3600;
/// `event_name` values.
const EVENT_NAMES: &[&str] = &[
    "add_payment_info",
    "add_to_cart",
    "add_to_wishlist",
    "app_install",
    "app_open",
    "checkout",
    "contact",
    "custom",
    "initiate_checkout",
    "lead",
    "page_visit",
    "search",
    "signup",
    "subscribe",
    "view_category",
    "view_content",
    "watch_video",
];
/// `action_source` values.
const ACTION_SOURCES: &[&str] = &["app_android", "app_ios", "web", "offline"];
/// Fields of an event; the first five are required.
const EVENT_FIELDS: &[&str] = &[
    "event_name",
    "action_source",
    "event_time",
    "event_id",
    "user_data",
    "event_source_url",
    "opt_out",
    "partner_name",
    "custom_data",
    "app_id",
    "app_name",
    "app_version",
    "device_brand",
    "device_carrier",
    "device_model",
    "device_type",
    "os_version",
    "wifi",
    "language",
];
/// Required event fields.
const REQUIRED: usize = 5;
/// `user_data` keys: arrays of SHA-256 hex.
const HASHED_KEYS: &[&str] = &[
    "em",
    "hashed_maids",
    "ph",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
];
/// `user_data` keys sent in clear.
const PLAIN_KEYS: &[&str] = &[
    "click_id",
    "client_ip_address",
    "client_user_agent",
    "partner_id",
];
/// `custom_data` fields.
const CUSTOM_FIELDS: &[&str] = &[
    "currency",
    "value",
    "content_ids",
    "content_name",
    "content_category",
    "content_brand",
    "contents",
    "num_items",
    "order_id",
    "search_string",
    "opt_out_type",
    "np",
];
/// The code of a 422 whose first failure is a timestamp in the past (Segment's example body).
const CODE_PAST: u32 = 953;
/// The code of other event failures (Pinterest's per-failure codes are not published).
const CODE_INVALID_EVENT: u32 = 4;

/// Where Pinterest's events go, and its `user_data` keys.
const SHAPE: Shape = Shape {
    slot: |state| (&mut state.records.pinterest, &mut state.pinterest),
    hashed_keys: HASHED_KEYS,
    plain_keys: PLAIN_KEYS,
};

/// The route.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route(
        "/v5/ad_accounts/{ad_account_id}/events",
        post(handle_events),
    )
}

/// A Pinterest error body with `status`.
fn error(status: StatusCode, code: u32, message: &str) -> Response {
    json_response(status, json!({"code": code, "message": message}))
}

/// `POST /v5/ad_accounts/{ad_account_id}/events`.
async fn handle_events(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::Pinterest).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let test = query
        .as_deref()
        .and_then(|q| parse_form(q.as_bytes()))
        .is_some_and(|pairs| pairs.iter().any(|(k, v)| k == "test" && v == "true"));
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let response = process(&shared, &account, token, &body, test);
    faults::finish(&shared, &conn, Platform::Pinterest, drop_after, response)
}

/// Authenticates, checks and (unless testing) records one request.
fn process(
    shared: &Shared,
    account: &str,
    token: Option<&str>,
    body: &[u8],
    test: bool,
) -> Response {
    let refused = |status, code, message: &str, count: usize| {
        refuse_request(&mut shared.lock().records.pinterest.counters, test, count);
        error(status, code, message)
    };
    if !credential_ok(&shared.config.pinterest_access_token, token) {
        return refused(StatusCode::UNAUTHORIZED, 2, "Authentication failed.", 0);
    }
    let account_ok = !account.is_empty() && account.bytes().all(|b| b.is_ascii_digit());
    let permitted = match &shared.config.pinterest_ad_account_id {
        Some(want) => want == account,
        None => account_ok,
    };
    if !permitted {
        let message = "You are not permitted to access that resource.";
        return refused(StatusCode::FORBIDDEN, 29, message, 0);
    }
    let events = match parse_request(body) {
        Ok(events) => events,
        Err((reason, count)) => {
            let message = format!("Invalid request body: {reason}");
            return refused(StatusCode::BAD_REQUEST, 1, &message, count);
        }
    };
    let window = shared.config.dedup_window;
    let count = |memory: &mut EventMemory, counters: &mut Counters, ev: &AcceptedEvent, now| {
        let id = ev.event_id.as_deref().unwrap_or_default();
        let key = format!("{account}\u{1f}{}\u{1f}{id}", ev.event_name);
        if ev.source == "offline" {
            // Offline events cannot be deduplicated: each copy counts.
            memory.count_every(counters, &key);
            return true;
        }
        memory.count(counters, Some(key), now, window)
    };
    let verdicts = judge_and_record(shared, &SHAPE, &events, test, check_event, count);
    reply(&verdicts)
}

/// The events of `{"data": […]}` once the schema holds, or why not (and how many events it had).
fn parse_request(body: &[u8]) -> Result<Vec<Map<String, Value>>, (String, usize)> {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(("the body must be a JSON object".into(), 0));
    };
    let data = obj.remove("data");
    let count = data.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
    if let Some(key) = obj.keys().next() {
        return Err((unexpected(key), count));
    }
    let list = match data {
        Some(Value::Array(list)) => list,
        Some(_) => return Err(("data must be an array".into(), 0)),
        None => return Err(("'data' is a required property".into(), 0)),
    };
    if list.is_empty() || list.len() > MAX_EVENTS {
        let reason = format!("data must hold 1 to {MAX_EVENTS} events");
        return Err((reason, count));
    }
    let mut events = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let Value::Object(ev) = item else {
            return Err((format!("data[{i}] must be an object"), count));
        };
        check_schema(&ev).map_err(|reason| (format!("data[{i}]: {reason}"), count))?;
        events.push(ev);
    }
    Ok(events)
}

/// The message of an `additionalProperties: false` violation, as Pinterest words it.
fn unexpected(key: &str) -> String {
    format!("Additional properties are not allowed ('{key}' was unexpected)")
}

/// The schema of one event: known fields, required fields, JSON types and enums.
fn check_schema(ev: &Map<String, Value>) -> Result<(), String> {
    if let Some(key) = ev.keys().find(|k| !EVENT_FIELDS.contains(&k.as_str())) {
        return Err(unexpected(key));
    }
    if let Some(missing) = EVENT_FIELDS[..REQUIRED]
        .iter()
        .find(|k| !ev.contains_key(**k))
    {
        return Err(format!("'{missing}' is a required property"));
    }
    let text = |k: &str| ev.get(k).and_then(Value::as_str);
    if !text("event_name").is_some_and(|n| EVENT_NAMES.contains(&n)) {
        return Err("event_name is not one of the event names".into());
    }
    if !text("action_source").is_some_and(|s| ACTION_SOURCES.contains(&s)) {
        return Err("action_source must be app_android, app_ios, web or offline".into());
    }
    if !ev.get("event_time").is_some_and(Value::is_i64) {
        return Err("event_time must be an integer".into());
    }
    if text("event_id").is_none_or(str::is_empty) {
        return Err("event_id must be a non-empty string".into());
    }
    let Some(user) = ev.get("user_data").and_then(Value::as_object) else {
        return Err("user_data must be an object".into());
    };
    for (key, value) in user {
        let ok = if HASHED_KEYS.contains(&key.as_str()) {
            value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string))
        } else if PLAIN_KEYS.contains(&key.as_str()) {
            value.is_string()
        } else {
            return Err(format!("user_data: {}", unexpected(key)));
        };
        if !ok {
            return Err(format!("user_data.{key} has the wrong type"));
        }
    }
    match ev.get("custom_data") {
        None => Ok(()),
        Some(Value::Object(custom)) => check_custom_schema(custom),
        Some(_) => Err("custom_data must be an object".into()),
    }
}

/// `custom_data`: known fields; `value` and `currency` are strings.
fn check_custom_schema(custom: &Map<String, Value>) -> Result<(), String> {
    if let Some(key) = custom.keys().find(|k| !CUSTOM_FIELDS.contains(&k.as_str())) {
        return Err(format!("custom_data: {}", unexpected(key)));
    }
    for key in ["value", "currency", "order_id"] {
        if custom.get(key).is_some_and(|v| !v.is_string()) {
            return Err(format!("custom_data.{key} must be a string"));
        }
    }
    Ok(())
}

/// The content of one schema-valid event; the error names the field, never its value.
fn check_event(ev: &Map<String, Value>, now: i64) -> Result<(), String> {
    let time = ev
        .get("event_time")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    if time.to_string().len() > 10 || time > now + FUTURE_TOLERANCE_SECS {
        return Err("Invalid event_timestamp parameter. Given timestamp is in the future (Unix seconds expected)".into());
    }
    if time < now - MAX_AGE_SECS {
        return Err("Invalid event_timestamp parameter. Given timestamp is in the past".into());
    }
    if ev
        .get("event_source_url")
        .is_some_and(|u| !u.as_str().is_some_and(is_http_url))
    {
        return Err("event_source_url must be an http(s) URL".into());
    }
    let user = ev.get("user_data").and_then(Value::as_object);
    let user = user.expect("checked by the schema");
    for key in HASHED_KEYS {
        if user.get(*key).is_some_and(|v| sha256_values(v).is_none()) {
            return Err(format!(
                "user_data.{key} must hold SHA-256 hashes (64 lowercase hex characters)"
            ));
        }
    }
    if user
        .get("client_ip_address")
        .is_some_and(|ip| !is_ip_address(ip))
    {
        return Err("user_data.client_ip_address is not an IP address".into());
    }
    let has = |k: &str| user.contains_key(k);
    let browser = has("client_ip_address") && has("client_user_agent");
    if !(has("em") || has("hashed_maids") || browser) {
        return Err(
            "user_data needs em, hashed_maids, or client_ip_address with client_user_agent".into(),
        );
    }
    let custom = ev.get("custom_data").and_then(Value::as_object);
    if custom
        .and_then(|c| c.get("value"))
        .is_some_and(|v| as_number(v).is_none())
    {
        return Err("custom_data.value must be a numeric string".into());
    }
    let currency = custom
        .and_then(|c| c.get("currency"))
        .and_then(Value::as_str);
    if currency.is_some_and(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err("custom_data.currency must be an upper-case ISO 4217 code".into());
    }
    Ok(())
}

/// True for `http://…` or `https://…` with a host and no whitespace.
fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) && !url.contains(char::is_whitespace)
}

/// 200 when every event was processed, else 422 with the same report under `details`.
fn reply(verdicts: &[Result<(), String>]) -> Response {
    let events: Vec<Value> = verdicts
        .iter()
        .map(|verdict| match verdict {
            Ok(()) => {
                json!({"status": "processed", "error_message": null, "warning_message": null})
            }
            Err(reason) => {
                json!({"status": "failed", "error_message": reason, "warning_message": null})
            }
        })
        .collect();
    let processed = verdicts.iter().filter(|v| v.is_ok()).count();
    let report = json!({
        "num_events_received": verdicts.len(),
        "num_events_processed": processed,
        "events": events,
    });
    let Some(Err(first)) = verdicts.iter().find(|v| v.is_err()) else {
        return json_response(StatusCode::OK, report);
    };
    let code = if first.contains("in the past") {
        CODE_PAST
    } else {
        CODE_INVALID_EVENT
    };
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"code": code, "message": first, "details": report}),
    )
}

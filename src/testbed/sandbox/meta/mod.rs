//! Meta Conversions API: `POST /{version}/{pixel_id}/events` (platforms.md §1).
//!
//! Whole-batch semantics: one bad event rejects the request with Graph's error envelope (HTTP 400,
//! `type: OAuthException`, `code: 100`) and a message naming the event's index. The `error_subcode`
//! numbers follow Meta's 2804xxx CAPI family but are not verified against the live API; clients
//! should key on `code` and treat the message as text. Beyond the published rules the sandbox also
//! insists that `external_id` is hashed (pgcapi's own convention) and rejects events more than
//! ten minutes in the future (a millisecond timestamp is caught that way).

mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use serde_json::{json, Map, Value};

use super::faults::{self, ConnControl, Gate};
use super::records::AcceptedEvent;
use super::{as_number, as_unix_seconds, credential_ok, json_response, parse_form};
use super::{hashed_as_sent, random_id, Shared};
use crate::testbed::sandbox::Platform;
use rules::{events_of, validate_event, Violation, HASHED_KEYS, PLAIN_KEYS, SUB_INVALID};

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
        return Some(Envelope {
            access_token: None,
            data: None,
            test_event_code: None,
        });
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
    let mut env = Envelope {
        access_token: None,
        data: None,
        test_event_code: None,
    };
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
// Handler
// ---------------------------------------------------------------------------------------------

/// The Meta routes: the events endpoint and a read of the pixel (what `pgcapi check` calls).
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/{version}/{pixel_id}/events", post(handle_events))
        .route("/{version}/{pixel_id}", get(handle_pixel))
}

/// `GET /{version}/{pixel_id}?fields=id`: reads the dataset (pixel) node, which checks the token and
/// the pixel id without recording anything. Answers `{"id": …}` plus `name` when asked for.
async fn handle_pixel(
    State(shared): State<Arc<Shared>>,
    Path((version, pixel_id)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let token = query
        .iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.as_str());
    match token {
        None | Some("") => {
            return auth_error(104, "An access token is required to request this resource.")
        }
        t if !credential_ok(&shared.config.meta_access_token, t) => {
            return auth_error(
                190,
                "Invalid OAuth access token - Cannot parse access token",
            )
        }
        _ => {}
    }
    if !version_is_valid(&version) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            2500,
            None,
            "Unknown path components: invalid API version",
        );
    }
    if pixel_id.is_empty() || !pixel_id.bytes().all(|b| b.is_ascii_digit()) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            Some(33),
            "Unsupported get request. Object with the given ID does not exist, cannot be loaded due to missing permissions, or does not support this operation.",
        );
    }
    let fields = query
        .iter()
        .find(|(k, _)| k == "fields")
        .map_or("id", |(_, v)| v.as_str());
    let mut body = json!({ "id": pixel_id });
    if fields.split(',').any(|f| f.trim() == "name") {
        body["name"] = json!("pgcapi sandbox pixel");
    }
    json_response(StatusCode::OK, body)
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
        return reject(
            0,
            violation_response(&Violation::request(
                Some(SUB_INVALID),
                "the request body is neither JSON nor form data",
            )),
        );
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
    shared.lock().records.meta.counters.received += count as u64;
    if let Err(response) = check_access(shared, version, pixel_id, token.as_deref()) {
        return reject(count, *response);
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

/// The token, the API version and the pixel id of a request; the Graph error otherwise.
fn check_access(
    shared: &Shared,
    version: &str,
    pixel_id: &str,
    token: Option<&str>,
) -> Result<(), Box<Response>> {
    let refused = |response: Response| Err(Box::new(response));
    match token {
        None | Some("") => {
            return refused(auth_error(
                104,
                "An access token is required to request this resource.",
            ));
        }
        t if !credential_ok(&shared.config.meta_access_token, t) => {
            return refused(auth_error(
                190,
                "Invalid OAuth access token - Cannot parse access token",
            ));
        }
        _ => {}
    }
    if !version_is_valid(version) {
        return refused(graph_error(
            StatusCode::BAD_REQUEST,
            2500,
            None,
            "Unknown path components: invalid API version",
        ));
    }
    if pixel_id.is_empty() || !pixel_id.bytes().all(|b| b.is_ascii_digit()) {
        let msg = "Unsupported post request. Object with the given ID does not exist, cannot be loaded due to missing permissions, or does not support this operation.";
        return refused(graph_error(StatusCode::BAD_REQUEST, 100, Some(33), msg));
    }
    Ok(())
}

/// `v` followed by `major.minor`, e.g. `v21.0`.
fn version_is_valid(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let Some((major, minor)) = rest.split_once('.') else {
        return false;
    };
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
    let mut guard = shared.lock();
    let state = &mut *guard;
    for ev in events {
        let name = ev
            .get("event_name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let event_id = ev.get("event_id").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let key = event_id.as_ref().map(|id| format!("{name}\u{1f}{id}"));
        if !state
            .meta
            .count(&mut state.records.meta.counters, key, now, window)
        {
            continue;
        }
        let accepted = accepted_event(ev, name, event_id, test_event_code.clone(), now);
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
        hashed = hashed_as_sent(user, HASHED_KEYS);
        for key in PLAIN_KEYS {
            if let Some(v) = user.get(*key) {
                plain.insert(
                    key.to_string(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                );
            }
        }
    }
    let custom = ev.get("custom_data");
    let event_time = ev.get("event_time").and_then(as_unix_seconds);
    AcceptedEvent {
        event_name,
        event_id,
        event_time: event_time.unwrap_or_default(),
        source: ev
            .get("action_source")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        hashed,
        plain,
        value: custom.and_then(|c| c.get("value")).and_then(as_number),
        currency: custom
            .and_then(|c| c.get("currency"))
            .and_then(Value::as_str)
            .map(str::to_string),
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

//! Google Data Manager API: `POST /v1/events:ingest` and `GET /v1/requestStatus:retrieve`
//! (platforms.md §2.4–2.5, platforms-next.md §6).
//!
//! Strict where Google is: the bearer token must be one `/token` issued (a service account's token
//! must carry the `datamanager` scope); 1–10 destinations with a GOOGLE_ADS operating account and a
//! numeric product destination id; 1–2,000 events; `encoding` HEX or BASE64 whenever user data is
//! sent, and every hashed identifier a SHA-256 digest in that encoding; the address's region code
//! (two uppercase letters) and postal code in clear; consent values `CONSENT_GRANTED` /
//! `CONSENT_DENIED`; each event with a timestamp (RFC 3339, not in the future) and at least one
//! identifier. Any violation fails the whole request fast, with a 400 whose `BadRequest` field
//! violations name `events[i].…` — nothing of the request is recorded.
//!
//! Accepted events are kept per (product destination id, transaction id): the first creates the
//! conversion, a later one with another value or currency restates it (the latest value shows), the
//! same values again change nothing (`deduplicated`). Conversions are also made known to the Google
//! Ads sandbox, so that a Google Ads API retraction by order id finds them. A developer-token header
//! is optional and ignored (counted in the records). `validateOnly` checks and records nothing.
//!
//! `requestStatus:retrieve` answers SUCCESS at once. The sandbox cannot know Google's clicks: a gclid
//! starting with `unknown-` stands for one Google does not know, and is reported there as
//! `PROCESSING_ERROR_REASON_INVALID_GCLID` (status PARTIAL_SUCCESS, or FAILED when no event was usable).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use serde_json::{json, Value};

use super::faults::{self, ConnControl, Gate};
use super::records::SendLog;
use super::{json_response, Shared};
use crate::testbed::sandbox::Platform;
use ingest::ingest;

mod events;
mod ingest;

/// Events per request.
const MAX_EVENTS: usize = 2_000;
/// Destinations per request.
const MAX_DESTINATIONS: usize = 10;
/// User identifiers per event.
const MAX_IDENTIFIERS: usize = 10;
/// The scope a service account token needs.
const SCOPE: &str = "https://www.googleapis.com/auth/datamanager";

/// The Data Manager state of the sandbox.
#[derive(Debug, Default)]
pub(crate) struct DataManager {
    /// (operating account, product destination id, transaction id) → index into the records'
    /// conversions.
    by_transaction: HashMap<(String, String, String), usize>,
    /// Every (product destination id, transaction id) received in a valid request.
    sends: SendLog,
    /// Request id → its status answer.
    requests: HashMap<String, Value>,
}

/// The Data Manager routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/events:ingest", post(handle_ingest))
        .route("/v1/requestStatus:retrieve", get(handle_status))
}

/// A Google error envelope.
fn error(status: StatusCode, name: &str, message: &str, details: Vec<Value>) -> Response {
    let mut body = json!({"error": {"code": status.as_u16(), "message": message, "status": name}});
    if !details.is_empty() {
        body["error"]["details"] = Value::Array(details);
    }
    json_response(status, body)
}

/// A 400 with `BadRequest` field violations.
fn invalid(violations: Vec<(String, String)>) -> Response {
    let list: Vec<Value> = violations
        .iter()
        .map(|(field, description)| json!({"field": field, "description": description}))
        .collect();
    let message = violations
        .first()
        .map(|(f, d)| format!("Invalid argument at '{f}': {d}"))
        .unwrap_or_else(|| "Request contains an invalid argument.".into());
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        &message,
        vec![
            json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": list}),
            json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INVALID_ARGUMENT",
                   "domain": "datamanager.googleapis.com"}),
        ],
    )
}

/// Checks the bearer token; `Err` is the response.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let unauthenticated = || {
        Box::new(error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential.",
            vec![],
        ))
    };
    let Some(bearer) = bearer else {
        return Err(unauthenticated());
    };
    let state = shared.lock();
    match state.google_tokens.get(bearer) {
        Some(expiry) if *expiry > Utc::now() => {}
        _ => return Err(unauthenticated()),
    }
    if let Some(scopes) = state.google_token_scopes.get(bearer) {
        if !scopes.split(' ').any(|s| s == SCOPE) {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                vec![],
            )));
        }
    }
    Ok(())
}

/// `POST /v1/events:ingest`.
async fn handle_ingest(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::GoogleDataManager).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    if headers.contains_key("developer-token") {
        shared
            .lock()
            .records
            .google_data_manager
            .developer_token_headers += 1;
    }
    let response = match authenticate(&shared, &headers) {
        Err(response) => {
            shared
                .lock()
                .records
                .google_data_manager
                .counters
                .rejected_requests += 1;
            *response
        }
        Ok(()) => ingest(&shared, &body),
    };
    faults::finish(
        &shared,
        &conn,
        Platform::GoogleDataManager,
        drop_after,
        response,
    )
}

/// `GET /v1/requestStatus:retrieve?requestId=…`.
async fn handle_status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = authenticate(&shared, &headers) {
        return *response;
    }
    let Some(id) = query.get("requestId").or_else(|| query.get("request_id")) else {
        return invalid(vec![(
            "request_id".into(),
            "Required field is missing.".into(),
        )]);
    };
    match shared.lock().data_manager.requests.get(id) {
        Some(status) => json_response(StatusCode::OK, status.clone()),
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "No request with this id.",
            vec![],
        ),
    }
}

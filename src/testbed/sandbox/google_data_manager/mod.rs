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
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Value};

use super::faults::{self, ConnControl, Gate};
use super::records::{DataManagerConversion, DataManagerEvent, SendLog};
use super::{json_response, random_id, Shared};
use crate::testbed::sandbox::Platform;

/// Events per request.
const MAX_EVENTS: usize = 2_000;
/// Destinations per request.
const MAX_DESTINATIONS: usize = 10;
/// User identifiers per event.
const MAX_IDENTIFIERS: usize = 10;
/// How far in the future an event timestamp may be.
const FUTURE_TOLERANCE_SECS: i64 = 10 * 60;
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

/// One destination of a request.
struct Dest {
    reference: Option<String>,
    operating_account: String,
    login_account: Option<String>,
    product_destination_id: String,
    value: Value,
}

/// Validates and applies one ingest request.
fn ingest(shared: &Shared, body: &[u8]) -> Response {
    let reject = |response: Response, events: usize| {
        let mut state = shared.lock();
        let c = &mut state.records.google_data_manager.counters;
        c.rejected_requests += 1;
        c.received += events as u64;
        c.rejected += events as u64;
        response
    };
    let request = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return reject(
                invalid(vec![(
                    String::new(),
                    "Invalid JSON payload received. Expected a JSON object.".into(),
                )]),
                0,
            )
        }
    };
    let events = request
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let n = events.len();
    let mut violations: Vec<(String, String)> = Vec::new();
    let mut bad = |field: String, description: &str| violations.push((field, description.into()));
    for key in request.keys() {
        if !matches!(
            key.as_str(),
            "destinations" | "events" | "consent" | "validateOnly" | "encoding" | "encryptionInfo"
        ) {
            bad(key.clone(), "Unknown field.");
        }
    }
    // Destinations.
    let mut dests = Vec::new();
    match request.get("destinations").and_then(Value::as_array) {
        None => bad("destinations".into(), "Required field is missing."),
        Some(list) if list.is_empty() => bad("destinations".into(), "Required field is missing."),
        Some(list) if list.len() > MAX_DESTINATIONS => bad(
            "destinations".into(),
            "At most 10 destinations are allowed.",
        ),
        Some(list) => {
            for (i, d) in list.iter().enumerate() {
                let at = |f: &str| format!("destinations[{i}].{f}");
                let account = |v: Option<&Value>, f: &str, bad: &mut dyn FnMut(String, &str)| {
                    let v = v?;
                    let id = v
                        .get("accountId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                        bad(
                            at(&format!("{f}.account_id")),
                            "Must be the account id, digits only.",
                        );
                    }
                    let kind = v
                        .get("accountType")
                        .or_else(|| v.get("product"))
                        .and_then(Value::as_str);
                    if kind != Some("GOOGLE_ADS") {
                        bad(
                            at(&format!("{f}.account_type")),
                            "Only GOOGLE_ADS accounts take Google Ads conversions.",
                        );
                    }
                    Some(id.to_string())
                };
                let operating = account(d.get("operatingAccount"), "operating_account", &mut bad);
                if operating.is_none() {
                    bad(at("operating_account"), "Required field is missing.");
                }
                let login = account(d.get("loginAccount"), "login_account", &mut bad);
                let pdid = d
                    .get("productDestinationId")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if pdid.is_empty() || !pdid.bytes().all(|b| b.is_ascii_digit()) {
                    bad(
                        at("product_destination_id"),
                        "Must be the conversion action id, digits only.",
                    );
                }
                dests.push(Dest {
                    reference: d
                        .get("reference")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    operating_account: operating.unwrap_or_default(),
                    login_account: login,
                    product_destination_id: pdid.to_string(),
                    value: d.clone(),
                });
            }
        }
    }
    // Events.
    if n == 0 {
        bad("events".into(), "Required field is missing.");
    } else if n > MAX_EVENTS {
        bad(
            "events".into(),
            "At most 2000 events are allowed in one request.",
        );
    }
    let encoding = request.get("encoding").and_then(Value::as_str);
    let has_user_data = events.iter().any(|e| e.get("userData").is_some());
    match encoding {
        None if has_user_data => bad(
            "encoding".into(),
            "Required when user data is sent: HEX or BASE64.",
        ),
        Some(e) if !matches!(e, "HEX" | "BASE64") => {
            bad("encoding".into(), "Must be HEX or BASE64.")
        }
        _ => {}
    }
    let hex = encoding != Some("BASE64");
    if let Some(c) = request.get("consent") {
        check_consent(c, "consent", &mut bad);
    }
    let now = Utc::now();
    let mut times = Vec::with_capacity(n);
    if n <= MAX_EVENTS {
        for (i, e) in events.iter().enumerate() {
            times.push(check_event(e, i, hex, &dests, now, &mut bad));
        }
    }
    if !violations.is_empty() {
        return reject(invalid(violations), n);
    }
    if request.get("validateOnly") == Some(&Value::Bool(true)) {
        let mut state = shared.lock();
        let r = &mut state.records.google_data_manager;
        r.validated += 1;
        r.counters.received += n as u64;
        return json_response(StatusCode::OK, json!({}));
    }
    let request_id = format!(
        "{}-{}-{}",
        random_id(8).to_ascii_lowercase(),
        random_id(4).to_ascii_lowercase(),
        random_id(12).to_ascii_lowercase()
    );
    let mut guard = shared.lock();
    let state = &mut *guard;
    let mut per_dest = vec![0u64; dests.len()];
    let mut unknown_clicks = vec![0u64; dests.len()];
    for (e, time) in events.iter().zip(times) {
        let refs: Vec<&str> = e
            .get("destinationReferences")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (k, d) in dests.iter().enumerate() {
            if !refs.is_empty() && !d.reference.as_deref().is_some_and(|r| refs.contains(&r)) {
                continue;
            }
            per_dest[k] += 1;
            let gclid = e.pointer("/adIdentifiers/gclid").and_then(Value::as_str);
            if gclid.is_some_and(|g| g.starts_with("unknown-")) {
                unknown_clicks[k] += 1;
            }
            apply(state, d, e, time, &request_id, encoding.unwrap_or("HEX"));
        }
    }
    let statuses: Vec<Value> = dests
        .iter()
        .zip(per_dest.into_iter().zip(unknown_clicks))
        .map(|(d, (count, unknown))| {
            let mut status = json!({
                "destination": d.value,
                "requestStatus": if unknown == 0 { "SUCCESS" } else if unknown < count { "PARTIAL_SUCCESS" } else { "FAILED" },
                "eventsIngestionStatus": {"recordCount": count.to_string()},
            });
            if unknown > 0 {
                status["errorInfo"] = json!({"errorCounts": [{
                    "recordCount": unknown.to_string(),
                    "reason": "PROCESSING_ERROR_REASON_INVALID_GCLID",
                }]});
            }
            status
        })
        .collect();
    state.data_manager.requests.insert(
        request_id.clone(),
        json!({"requestStatusPerDestination": statuses}),
    );
    drop(guard);
    json_response(StatusCode::OK, json!({"requestId": request_id}))
}

/// Records one accepted event for one destination and applies it to the conversion it names.
fn apply(
    state: &mut super::SandboxState,
    d: &Dest,
    e: &Value,
    time: Option<DateTime<FixedOffset>>,
    request_id: &str,
    encoding: &str,
) {
    let records = &mut state.records.google_data_manager;
    records.counters.received += 1;
    records.counters.accepted += 1;
    records.events.push(DataManagerEvent {
        request_id: request_id.to_string(),
        operating_account: d.operating_account.clone(),
        login_account: d.login_account.clone(),
        product_destination_id: d.product_destination_id.clone(),
        encoding: encoding.to_string(),
        event: e.clone(),
        received_at: Utc::now(),
    });
    let value = e.get("conversionValue").and_then(Value::as_f64);
    let currency = e
        .get("currency")
        .and_then(Value::as_str)
        .map(str::to_string);
    let txn = e.get("transactionId").and_then(Value::as_str);
    let key = txn.map(|t| {
        (
            d.operating_account.clone(),
            d.product_destination_id.clone(),
            t.to_string(),
        )
    });
    if let Some((account, pdid, t)) = &key {
        if state
            .data_manager
            .sends
            .note(&format!("{account}\u{0}{pdid}\u{0}{t}"))
        {
            records.counters.duplicate_sends += 1;
        }
    }
    match key
        .as_ref()
        .and_then(|k| state.data_manager.by_transaction.get(k))
    {
        Some(&i) => {
            let c = &mut records.conversions[i];
            if c.value == value && (currency.is_none() || c.currency == currency) {
                records.counters.deduplicated += 1;
            } else {
                c.value = value;
                if currency.is_some() {
                    c.currency = currency;
                }
                c.history.push(value);
                c.restatements += 1;
            }
        }
        None => {
            records.counters.unique += 1;
            let index = records.conversions.len();
            records.conversions.push(DataManagerConversion {
                product_destination_id: d.product_destination_id.clone(),
                transaction_id: txn.unwrap_or_default().to_string(),
                value,
                currency,
                history: vec![value],
                restatements: 0,
            });
            if let Some(k) = key {
                if let Some(time) = time {
                    // Google keeps one set of conversions: the Ads API can adjust it by order id.
                    state.google.import(&k.1, &k.2, time);
                }
                state.data_manager.by_transaction.insert(k, index);
            }
        }
    }
}

/// Checks a consent object.
fn check_consent(c: &Value, at: &str, bad: &mut dyn FnMut(String, &str)) {
    let Some(m) = c.as_object() else {
        bad(at.into(), "Must be an object.");
        return;
    };
    for (k, v) in m {
        let field = match k.as_str() {
            "adUserData" => "ad_user_data",
            "adPersonalization" => "ad_personalization",
            _ => {
                bad(format!("{at}.{k}"), "Unknown field.");
                continue;
            }
        };
        if !matches!(v.as_str(), Some("CONSENT_GRANTED" | "CONSENT_DENIED")) {
            bad(
                format!("{at}.{field}"),
                "Must be CONSENT_GRANTED or CONSENT_DENIED.",
            );
        }
    }
}

/// True for a SHA-256 digest in the request's encoding.
fn is_digest(s: &str, hex: bool) -> bool {
    if hex {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
    } else {
        s.len() == 44
            && s.ends_with('=')
            && s[..43]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    }
}

/// Checks event `i`; returns its timestamp when valid.
fn check_event(
    e: &Value,
    i: usize,
    hex: bool,
    dests: &[Dest],
    now: DateTime<Utc>,
    bad: &mut dyn FnMut(String, &str),
) -> Option<DateTime<FixedOffset>> {
    let at = |f: &str| format!("events[{i}].{f}");
    let Some(m) = e.as_object() else {
        bad(format!("events[{i}]"), "Must be an object.");
        return None;
    };
    const KNOWN: &[&str] = &[
        "destinationReferences",
        "transactionId",
        "eventTimestamp",
        "lastUpdatedTimestamp",
        "userData",
        "consent",
        "adIdentifiers",
        "currency",
        "conversionValue",
        "eventSource",
        "eventDeviceInfo",
        "cartData",
        "customVariables",
        "experimentalFields",
        "userProperties",
    ];
    for k in m.keys() {
        if !KNOWN.contains(&k.as_str()) {
            bad(at(k), "Unknown field.");
        }
    }
    let time = match m.get("eventTimestamp").and_then(Value::as_str) {
        None => {
            bad(at("event_timestamp"), "Required field is missing.");
            None
        }
        Some(t) => match DateTime::parse_from_rfc3339(t) {
            Err(_) => {
                bad(at("event_timestamp"), "Must be an RFC 3339 timestamp.");
                None
            }
            Ok(t)
                if t.with_timezone(&Utc)
                    > now + chrono::Duration::seconds(FUTURE_TOLERANCE_SECS) =>
            {
                bad(at("event_timestamp"), "Must not be in the future.");
                None
            }
            Ok(t) => Some(t),
        },
    };
    if let Some(t) = m.get("transactionId") {
        if t.as_str().is_none_or(|s| s.trim().is_empty()) {
            bad(at("transaction_id"), "Must be a non-empty string.");
        }
    }
    if let Some(v) = m.get("conversionValue") {
        if !v.as_f64().is_some_and(|v| v.is_finite() && v >= 0.0) {
            bad(at("conversion_value"), "Must be a non-negative number.");
        }
    }
    if let Some(c) = m.get("currency") {
        let ok = c
            .as_str()
            .is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()));
        if !ok {
            bad(
                at("currency"),
                "Must be an ISO 4217 code (three uppercase letters).",
            );
        }
    }
    if let Some(s) = m.get("eventSource") {
        if !matches!(
            s.as_str(),
            Some("WEB" | "APP" | "IN_STORE" | "PHONE" | "OTHER")
        ) {
            bad(
                at("event_source"),
                "Must be WEB, APP, IN_STORE, PHONE or OTHER.",
            );
        }
    }
    if let Some(c) = m.get("consent") {
        check_consent(c, &at("consent"), bad);
    }
    if let Some(refs) = m.get("destinationReferences").and_then(Value::as_array) {
        for (j, r) in refs.iter().enumerate() {
            let known = dests.iter().any(|d| d.reference.as_deref() == r.as_str());
            if !known {
                bad(
                    at(&format!("destination_references[{j}]")),
                    "Names no destination of the request.",
                );
            }
        }
    }
    let mut identifiers = 0;
    if let Some(ad) = m.get("adIdentifiers") {
        for k in ad
            .as_object()
            .map(|o| o.keys().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            match k.as_str() {
                "gclid" | "gbraid" | "wbraid" => {
                    if ad[k].as_str().is_some_and(|s| !s.is_empty()) {
                        identifiers += 1;
                    } else {
                        bad(
                            at(&format!("ad_identifiers.{k}")),
                            "Must be a non-empty string.",
                        );
                    }
                }
                "sessionAttributes" => identifiers += 1,
                "landingPageDeviceInfo" => {
                    let info = &ad[k];
                    if let Some(ip) = info.get("ipAddress") {
                        if !super::is_ip_address(ip) {
                            bad(
                                at("ad_identifiers.landing_page_device_info.ip_address"),
                                "Must be an IPv4 or IPv6 address, in clear.",
                            );
                        }
                    }
                }
                _ => bad(at(&format!("ad_identifiers.{k}")), "Unknown field."),
            }
        }
    }
    if let Some(ud) = m.get("userData") {
        let ids = ud
            .get("userIdentifiers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if ids.is_empty() {
            bad(
                at("user_data.user_identifiers"),
                "Required field is missing.",
            );
        } else if ids.len() > MAX_IDENTIFIERS {
            bad(
                at("user_data.user_identifiers"),
                "At most 10 user identifiers are allowed.",
            );
        }
        for (j, id) in ids.iter().enumerate() {
            let path = |f: &str| at(&format!("user_data.user_identifiers[{j}].{f}"));
            let set: Vec<&String> = id
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            if set.len() != 1 {
                bad(
                    at(&format!("user_data.user_identifiers[{j}]")),
                    "Exactly one of email_address, phone_number and address must be set.",
                );
                continue;
            }
            identifiers += 1;
            match set[0].as_str() {
                "emailAddress" | "phoneNumber" => {
                    let field = if set[0] == "emailAddress" {
                        "email_address"
                    } else {
                        "phone_number"
                    };
                    if !id[set[0]].as_str().is_some_and(|s| is_digest(s, hex)) {
                        bad(
                            path(field),
                            "Must be a SHA-256 hash in the request's encoding.",
                        );
                    }
                }
                "address" => {
                    let a = &id["address"];
                    for (f, name) in [("givenName", "given_name"), ("familyName", "family_name")] {
                        if !a
                            .get(f)
                            .and_then(Value::as_str)
                            .is_some_and(|s| is_digest(s, hex))
                        {
                            bad(
                                path(&format!("address.{name}")),
                                "Must be a SHA-256 hash in the request's encoding.",
                            );
                        }
                    }
                    let region = a
                        .get("regionCode")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !(region.len() == 2 && region.bytes().all(|b| b.is_ascii_uppercase())) {
                        bad(
                            path("address.region_code"),
                            "Must be an ISO 3166-1 alpha-2 code in clear (two uppercase letters).",
                        );
                    }
                    let postal = a
                        .get("postalCode")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if postal.trim().is_empty() || is_digest(postal, true) {
                        bad(
                            path("address.postal_code"),
                            "Must be the postal code in clear.",
                        );
                    }
                }
                other => bad(path(other), "Unknown field."),
            }
        }
    }
    if identifiers == 0 {
        bad(
            format!("events[{i}]"),
            "At least one ad identifier or user identifier is required.",
        );
    }
    time
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

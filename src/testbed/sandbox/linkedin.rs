//! LinkedIn Conversions API: `POST /rest/conversionEvents` and two reads (platforms-next.md §4).
//!
//! | endpoint | what |
//! |---|---|
//! | `POST /rest/conversionEvents` | one event, or with `X-RestLi-Method: BATCH_CREATE` `{"elements":[…]}` |
//! | `GET /rest/adAccounts/{id}` | the ad account (a read: token, version and access) |
//! | `GET /rest/conversions/{id}` | a conversion rule (a read) |
//!
//! Every call needs `Authorization: Bearer …`, `X-Restli-Protocol-Version: 2.0.0` and a
//! `LinkedIn-Version: YYYYMM` that is active: LinkedIn releases monthly and switches a version off about
//! a year later (202511 went on 16 Nov 2026), answering HTTP 426 `NONEXISTENT_VERSION` "Requested
//! version … is not active" — also for versions not released yet. See [`version_active`].
//!
//! An event: `conversion` = `urn:lla:llaPartnerConversion:{digits}`, `conversionHappenedAt` in epoch
//! **milliseconds** (a 10-digit value is refused as seconds), not older than 90 days, `eventId`,
//! `conversionValue{currencyCode, amount}` with the amount a decimal **string**, and `user` with
//! `userIds` always present (may be `[]`) and `userInfo` holding both `firstName` and `lastName` or
//! absent (since 202607: 422 otherwise). `SHA256_EMAIL` must be 64 lowercase hex; the other id types
//! (`LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID` = `li_fat_id`, `ACXIOM_ID`, `ORACLE_MOAT_ID`) are plain.
//! An event needs some id or both names. Unknown fields are refused (stricter than documented).
//!
//! A batch answers HTTP 200 with one `{"status": 201}` or `{"status": 4xx, "error": {…}}` per element,
//! in order (the per-element error shape is not published; this is Rest.li's). At most 5,000
//! elements. Dedup: conversion rule + `eventId` counted once within the sandbox's dedup window (the
//! real window is not published); a duplicate still answers 201.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Datelike, Utc};
use serde_json::{json, Map, Value};

use super::faults::{self, ConnControl, Gate};
use super::records::AcceptedEvent;
use super::{bearer, credential_ok, epoch_millis, is_sha256_hex, json_response, Platform, Shared};

/// Elements per batch.
const MAX_ELEMENTS: usize = 5_000;
/// Oldest accepted event, in days.
const MAX_AGE_DAYS: i64 = 90;
/// How far ahead of the clock an event may be, in milliseconds.
const FUTURE_TOLERANCE_MS: i64 = 10 * 60 * 1000;
/// How many months a version stays active after its release month (it goes in the middle of the
/// thirteenth).
const VERSION_LIFETIME_MONTHS: i32 = 12;
/// Prefix of a conversion rule URN.
const RULE_PREFIX: &str = "urn:lla:llaPartnerConversion:";
/// The fields of an event.
const EVENT_FIELDS: &[&str] = &[
    "conversion",
    "conversionHappenedAt",
    "conversionValue",
    "eventId",
    "user",
];
/// The `userInfo` fields, all plain strings.
const USER_INFO_FIELDS: &[&str] = &[
    "firstName",
    "lastName",
    "companyName",
    "title",
    "countryCode",
];
/// The `idType`s and whether their value is a SHA-256 digest.
const ID_TYPES: &[(&str, bool)] = &[
    ("SHA256_EMAIL", true),
    ("LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", false),
    ("ACXIOM_ID", false),
    ("ORACLE_MOAT_ID", false),
];

/// Whether `version` (`YYYYMM`) is active at `now`: released (its month has begun) and not yet
/// switched off (before the 16th of the same month a year later).
pub fn version_active(version: &str, now: DateTime<Utc>) -> bool {
    let Some((year, month)) = parse_version(version) else {
        return false;
    };
    let age = (now.year() - year) * 12 + (now.month() as i32 - month);
    (0..VERSION_LIFETIME_MONTHS).contains(&age)
        || (age == VERSION_LIFETIME_MONTHS && now.day() < 16)
}

/// `YYYYMM` as (year, month).
fn parse_version(version: &str) -> Option<(i32, i32)> {
    if version.len() != 6 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = version[..4].parse().ok()?;
    let month: i32 = version[4..].parse().ok()?;
    (1..=12).contains(&month).then_some((year, month))
}

/// The LinkedIn routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/rest/conversionEvents", post(handle_events))
        .route("/rest/adAccounts/{id}", get(handle_read))
        .route("/rest/conversions/{id}", get(handle_read))
}

/// LinkedIn's error body.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"status": status.as_u16(), "code": code, "message": message}),
    )
}

/// Checks the token and the two protocol headers, as every LinkedIn call does.
fn check_headers(shared: &Shared, headers: &HeaderMap) -> Result<String, Box<Response>> {
    if !credential_ok(&shared.config.linkedin_access_token, bearer(headers)) {
        return Err(json_response(
            StatusCode::UNAUTHORIZED,
            json!({"status": 401, "serviceErrorCode": 65600, "code": "INVALID_ACCESS_TOKEN",
                   "message": "Invalid access token"}),
        )
        .into());
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-restli-protocol-version") != Some("2.0.0") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "ILLEGAL_ARGUMENT",
            "X-Restli-Protocol-Version must be 2.0.0",
        )
        .into());
    }
    let Some(version) = header("linkedin-version") else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "VERSION_MISSING",
            "A version must be present. Please specify a version by adding the LinkedIn-Version header.",
        ).into());
    };
    if !version_active(version, Utc::now()) {
        return Err(error(
            StatusCode::UPGRADE_REQUIRED,
            "NONEXISTENT_VERSION",
            &format!("Requested version {version} is not active"),
        )
        .into());
    }
    Ok(version.to_string())
}

/// `GET /rest/adAccounts/{id}` and `GET /rest/conversions/{id}`: a read that records nothing.
async fn handle_read(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = check_headers(&shared, &headers) {
        return *response;
    }
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "Not found");
    }
    json_response(
        StatusCode::OK,
        json!({"id": id.parse::<u64>().unwrap_or(0)}),
    )
}

/// `POST /rest/conversionEvents`.
async fn handle_events(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::Linkedin).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let response = process(&shared, &headers, &body).unwrap_or_else(|rejected| {
        let mut state = shared.lock();
        state.records.linkedin.counters.rejected_requests += 1;
        *rejected
    });
    faults::finish(&shared, &conn, Platform::Linkedin, drop_after, response)
}

/// Checks the request and answers it: one status per element for a batch, 201 or an error alone.
fn process(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Response, Box<Response>> {
    let version = check_headers(shared, headers)?;
    let batch = headers
        .get("x-restli-method")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.eq_ignore_ascii_case("BATCH_CREATE"));
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "ILLEGAL_ARGUMENT", m);
    let Ok(Value::Object(mut root)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad("the request body must be a JSON object").into());
    };
    let elements = if batch {
        match root.remove("elements") {
            Some(Value::Array(list)) if !list.is_empty() && list.len() <= MAX_ELEMENTS => list,
            Some(Value::Array(list)) if list.is_empty() => {
                return Err(bad("elements is empty").into())
            }
            Some(Value::Array(_)) => {
                return Err(
                    bad(&format!("a batch can hold at most {MAX_ELEMENTS} elements")).into(),
                )
            }
            _ => return Err(bad("a BATCH_CREATE body is {\"elements\": [...]}").into()),
        }
    } else {
        vec![Value::Object(root)]
    };
    let now = Utc::now();
    let verdicts: Vec<Result<(), (StatusCode, String)>> = elements
        .iter()
        .map(|e| validate(e, now.timestamp_millis()))
        .collect();
    record(shared, &elements, &verdicts, &version, now);
    if !batch {
        return match &verdicts[0] {
            Ok(()) => Ok(StatusCode::CREATED.into_response()),
            Err((status, message)) => Err(error(*status, "INVALID_EVENT", message).into()),
        };
    }
    let answers: Vec<Value> = verdicts
        .iter()
        .map(|v| match v {
            Ok(()) => json!({"status": 201}),
            Err((status, message)) => json!({"status": status.as_u16(),
                "error": {"status": status.as_u16(), "message": message}}),
        })
        .collect();
    Ok(json_response(StatusCode::OK, json!({"elements": answers})))
}

/// Checks one event; the error is the status and a message naming the field, never its value.
fn validate(element: &Value, now_ms: i64) -> Result<(), (StatusCode, String)> {
    let unprocessable = |m: String| (StatusCode::UNPROCESSABLE_ENTITY, m);
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let Value::Object(ev) = element else {
        return Err(bad("an element must be an object".into()));
    };
    if let Some(field) = ev.keys().find(|k| !EVENT_FIELDS.contains(&k.as_str())) {
        return Err(bad(format!("unrecognized field {field}")));
    }
    match ev.get("conversion").and_then(Value::as_str) {
        Some(urn) if urn.strip_prefix(RULE_PREFIX).is_some_and(is_digits) => {}
        Some(_) => return Err(bad(format!("conversion must be {RULE_PREFIX}{{ruleId}}"))),
        None => return Err(unprocessable("Conversion Rule ID is required".into())),
    }
    let at = ev
        .get("conversionHappenedAt")
        .ok_or_else(|| unprocessable("conversionHappenedAt is required".into()))?;
    let at = epoch_millis(at).ok_or_else(|| {
        bad("conversionHappenedAt must be epoch milliseconds (13 digits), not seconds".into())
    })?;
    if at < now_ms - MAX_AGE_DAYS * 24 * 3600 * 1000 {
        return Err(bad(format!(
            "conversionHappenedAt is older than {MAX_AGE_DAYS} days"
        )));
    }
    if at > now_ms + FUTURE_TOLERANCE_MS {
        return Err(bad("conversionHappenedAt is in the future".into()));
    }
    if let Some(id) = ev.get("eventId") {
        if id.as_str().is_none_or(str::is_empty) {
            return Err(bad("eventId must be a non-empty string".into()));
        }
    }
    if let Some(value) = ev.get("conversionValue") {
        validate_value(value).map_err(bad)?;
    }
    validate_user(ev.get("user")).map_err(unprocessable)
}

/// Checks `conversionValue{currencyCode, amount}`.
fn validate_value(value: &Value) -> Result<(), String> {
    let currency_ok = value["currencyCode"]
        .as_str()
        .is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()));
    if !currency_ok {
        return Err("conversionValue.currencyCode must be an ISO 4217 code".into());
    }
    let amount_ok = value["amount"]
        .as_str()
        .is_some_and(|a| a.parse::<f64>().is_ok_and(|v| v.is_finite() && v >= 0.0));
    if !amount_ok {
        return Err("conversionValue.amount must be a decimal string".into());
    }
    Ok(())
}

/// Checks `user`: `userIds` present, typed ids, `userInfo` with both names or none, some match.
fn validate_user(user: Option<&Value>) -> Result<(), String> {
    let Some(Value::Object(user)) = user else {
        return Err("user is required".into());
    };
    let Some(Value::Array(ids)) = user.get("userIds") else {
        return Err("user.userIds is required (send [] when matching on userInfo)".into());
    };
    for (i, id) in ids.iter().enumerate() {
        let kind = id["idType"].as_str().unwrap_or_default();
        let Some((_, hashed)) = ID_TYPES.iter().find(|(t, _)| *t == kind) else {
            return Err(format!("user.userIds[{i}].idType is not a known id type"));
        };
        let value = id["idValue"].as_str().unwrap_or_default();
        let ok = if *hashed {
            is_sha256_hex(value)
        } else {
            !value.is_empty() && !value.chars().any(char::is_whitespace)
        };
        if !ok {
            return Err(format!("user.userIds[{i}].idValue is not a valid {kind}"));
        }
    }
    let named = match user.get("userInfo") {
        None => false,
        Some(Value::Object(info)) => validate_user_info(info)?,
        Some(_) => return Err("user.userInfo must be an object".into()),
    };
    if let Some(field) = user
        .keys()
        .find(|k| !matches!(k.as_str(), "userIds" | "userInfo"))
    {
        return Err(format!("unrecognized field user.{field}"));
    }
    if ids.is_empty() && !named {
        return Err("user has no user id and no userInfo names to match on".into());
    }
    Ok(())
}

/// Checks `userInfo`; true when it names the person (it must, since 202607).
fn validate_user_info(info: &Map<String, Value>) -> Result<bool, String> {
    for (key, value) in info {
        if !USER_INFO_FIELDS.contains(&key.as_str()) {
            return Err(format!("unrecognized field user.userInfo.{key}"));
        }
        if value.as_str().is_none_or(|s| s.trim().is_empty()) {
            return Err(format!("user.userInfo.{key} must be a non-empty string"));
        }
    }
    if !(info.contains_key("firstName") && info.contains_key("lastName")) {
        return Err("user.userInfo requires both firstName and lastName".into());
    }
    Ok(true)
}

/// True for a non-empty string of ASCII digits.
fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Counts the request's elements and records the valid ones once per rule + `eventId`.
fn record(
    shared: &Shared,
    elements: &[Value],
    verdicts: &[Result<(), (StatusCode, String)>],
    version: &str,
    now: DateTime<Utc>,
) {
    let window = shared.config.dedup_window;
    let mut guard = shared.lock();
    let state = &mut *guard;
    let counters = &mut state.records.linkedin.counters;
    counters.received += elements.len() as u64;
    for (element, verdict) in elements.iter().zip(verdicts) {
        if verdict.is_err() {
            state.records.linkedin.counters.rejected += 1;
            continue;
        }
        let event = accepted_event(element, version, now);
        let key = event
            .event_id
            .as_ref()
            .map(|id| format!("{}\u{1f}{id}", event.event_name));
        let counters = &mut state.records.linkedin.counters;
        if state.linkedin.count(counters, key, now, window) {
            state.records.linkedin.events.push(event);
        }
    }
}

/// The record of one counted event: `hashed` by `idType`, `plain` the other ids, the `userInfo`
/// fields and the `LinkedIn-Version` it came with.
fn accepted_event(element: &Value, version: &str, now: DateTime<Utc>) -> AcceptedEvent {
    let mut hashed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut plain = BTreeMap::new();
    let user = &element["user"];
    for id in user["userIds"].as_array().into_iter().flatten() {
        let (kind, value) = (id["idType"].as_str(), id["idValue"].as_str());
        let (Some(kind), Some(value)) = (kind, value) else {
            continue;
        };
        if kind == "SHA256_EMAIL" {
            hashed.entry(kind.into()).or_default().push(value.into());
        } else {
            plain.insert(kind.to_string(), value.to_string());
        }
    }
    for (key, value) in user["userInfo"].as_object().into_iter().flatten() {
        plain.insert(key.clone(), value.as_str().unwrap_or_default().to_string());
    }
    plain.insert("linkedin_version".into(), version.to_string());
    let value = &element["conversionValue"];
    AcceptedEvent {
        event_name: element["conversion"].as_str().unwrap_or_default().into(),
        event_id: element["eventId"].as_str().map(str::to_string),
        event_time: epoch_millis(&element["conversionHappenedAt"]).unwrap_or_default() / 1000,
        source: "CONVERSIONS_API".into(),
        hashed,
        plain,
        value: value["amount"].as_str().and_then(|a| a.parse().ok()),
        currency: value["currencyCode"].as_str().map(str::to_string),
        test_event_code: None,
        received_at: now,
    }
}

/// The body of a LinkedIn 429 (application or member throttle).
pub(crate) fn throttled_body() -> Value {
    json!({"status": 429, "code": "TOO_MANY_REQUESTS",
           "message": "Resource level throttle limit for calls to this resource is reached."})
}

/// The body of a LinkedIn 500.
pub(crate) fn server_error_body() -> Value {
    json!({"status": 500, "code": "INTERNAL_SERVER_ERROR", "message": "Internal Server Error"})
}

//! One `events:ingest` request: its envelope and destinations (any violation fails it whole), then
//! the conversions it creates or restates, and the status `requestStatus:retrieve` will answer.

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Map, Value};

use super::events::{check_consent, check_event};
use super::{invalid, MAX_DESTINATIONS, MAX_EVENTS};
use crate::testbed::sandbox::records::{DataManagerConversion, DataManagerEvent};
use crate::testbed::sandbox::{json_response, random_id, SandboxState, Shared};

/// Where a field violation is collected: the field path and its description.
pub(super) type Bad<'a> = dyn FnMut(String, &str) + 'a;

/// One destination of a request.
pub(super) struct Dest {
    pub(super) reference: Option<String>,
    operating_account: String,
    login_account: Option<String>,
    product_destination_id: String,
    value: Value,
}

impl Dest {
    /// The record of event `e` as this destination received it.
    fn event(&self, e: &Value, request_id: &str, encoding: &str) -> DataManagerEvent {
        DataManagerEvent {
            request_id: request_id.to_string(),
            operating_account: self.operating_account.clone(),
            login_account: self.login_account.clone(),
            product_destination_id: self.product_destination_id.clone(),
            encoding: encoding.to_string(),
            event: e.clone(),
            received_at: Utc::now(),
        }
    }
}

/// Validates and applies one ingest request.
pub(super) fn ingest(shared: &Shared, body: &[u8]) -> Response {
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
    let (dests, times) = check_request(&request, &events, &mut bad);
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
    let encoding = request.get("encoding").and_then(Value::as_str);
    let request_id = format!(
        "{}-{}-{}",
        random_id(8).to_ascii_lowercase(),
        random_id(4).to_ascii_lowercase(),
        random_id(12).to_ascii_lowercase()
    );
    let mut guard = shared.lock();
    let statuses = accept(
        &mut guard,
        &dests,
        &events,
        times,
        &request_id,
        encoding.unwrap_or("HEX"),
    );
    guard.data_manager.requests.insert(
        request_id.clone(),
        json!({"requestStatusPerDestination": statuses}),
    );
    drop(guard);
    json_response(StatusCode::OK, json!({"requestId": request_id}))
}

/// Checks the whole request, reporting every violation to `bad` in the order Google lists them;
/// returns the destinations and each event's timestamp (when valid).
fn check_request(
    request: &Map<String, Value>,
    events: &[Value],
    bad: &mut Bad<'_>,
) -> (Vec<Dest>, Vec<Option<DateTime<FixedOffset>>>) {
    for key in request.keys() {
        if !matches!(
            key.as_str(),
            "destinations" | "events" | "consent" | "validateOnly" | "encoding" | "encryptionInfo"
        ) {
            bad(key.clone(), "Unknown field.");
        }
    }
    let dests = check_destinations(request.get("destinations"), bad);
    let n = events.len();
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
        check_consent(c, "consent", bad);
    }
    let now = Utc::now();
    let mut times = Vec::with_capacity(n);
    if n <= MAX_EVENTS {
        for (i, e) in events.iter().enumerate() {
            times.push(check_event(e, i, hex, &dests, now, bad));
        }
    }
    (dests, times)
}

/// The request's `destinations`: 1 to 10, each with a GOOGLE_ADS operating account and a numeric
/// product destination id.
fn check_destinations(list: Option<&Value>, bad: &mut Bad<'_>) -> Vec<Dest> {
    let mut dests = Vec::new();
    match list.and_then(Value::as_array) {
        None => bad("destinations".into(), "Required field is missing."),
        Some(list) if list.is_empty() => bad("destinations".into(), "Required field is missing."),
        Some(list) if list.len() > MAX_DESTINATIONS => bad(
            "destinations".into(),
            "At most 10 destinations are allowed.",
        ),
        Some(list) => {
            for (i, d) in list.iter().enumerate() {
                dests.push(check_destination(i, d, bad));
            }
        }
    }
    dests
}

/// Destination `i`.
fn check_destination(i: usize, d: &Value, bad: &mut Bad<'_>) -> Dest {
    let at = |f: &str| format!("destinations[{i}].{f}");
    let operating = check_account(d.get("operatingAccount"), &at("operating_account"), bad);
    if operating.is_none() {
        bad(at("operating_account"), "Required field is missing.");
    }
    let login = check_account(d.get("loginAccount"), &at("login_account"), bad);
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
    Dest {
        reference: d
            .get("reference")
            .and_then(Value::as_str)
            .map(str::to_string),
        operating_account: operating.unwrap_or_default(),
        login_account: login,
        product_destination_id: pdid.to_string(),
        value: d.clone(),
    }
}

/// An account of a destination at `path`: its id (`None` when the account is absent).
fn check_account(v: Option<&Value>, path: &str, bad: &mut Bad<'_>) -> Option<String> {
    let v = v?;
    let id = v
        .get("accountId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        bad(
            format!("{path}.account_id"),
            "Must be the account id, digits only.",
        );
    }
    let kind = v
        .get("accountType")
        .or_else(|| v.get("product"))
        .and_then(Value::as_str);
    if kind != Some("GOOGLE_ADS") {
        bad(
            format!("{path}.account_type"),
            "Only GOOGLE_ADS accounts take Google Ads conversions.",
        );
    }
    Some(id.to_string())
}

/// Applies every event of a valid request to the destinations it names; the status per
/// destination (an `unknown-` gclid stands for a click Google does not know).
fn accept(
    state: &mut SandboxState,
    dests: &[Dest],
    events: &[Value],
    times: Vec<Option<DateTime<FixedOffset>>>,
    request_id: &str,
    encoding: &str,
) -> Vec<Value> {
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
            apply(state, d, e, time, request_id, encoding);
        }
    }
    dests
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
        .collect()
}

/// Records one accepted event for one destination and applies it to the conversion it names.
fn apply(
    state: &mut SandboxState,
    d: &Dest,
    e: &Value,
    time: Option<DateTime<FixedOffset>>,
    request_id: &str,
    encoding: &str,
) {
    let records = &mut state.records.google_data_manager;
    records.counters.received += 1;
    records.counters.accepted += 1;
    records.events.push(d.event(e, request_id, encoding));
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

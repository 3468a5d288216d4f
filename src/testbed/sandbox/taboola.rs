//! Taboola S2S conversions: the postback URL and the bulk endpoint (developers.taboola.com, pages
//! "The S2S postback URL", "Bulk submit S2S conversions", "S2S Error Codes", "Conversion
//! deduplication", "Heuristic deduplication", read 2026-12-05).
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /actions-handler/log/3/s2s-action?click-id=…&name=…` | one conversion; `revenue`, `currency`, `orderid`, `quantity` optional |
//! | `POST /{account-id}/log/3/bulk-s2s-action` | `{"actions":[…]}`, 1–1,000 conversions, JSON, no authentication |
//!
//! Documented and enforced: `click-id` (spelled exactly so) and `name` are required; a missing or
//! unparsable click id or a missing name answers the postback with 400; success is 204 with no body.
//! A click id is a case-sensitive string of 66 characters or more (the docs' sample is URL-safe
//! base64); the sandbox takes 66–1,024 characters of `A–Z a–z 0–9 - _`. `revenue` is an integer or
//! decimal number, `currency` one of the 19 codes the docs list (case-sensitive), `quantity` an
//! integer. A bulk action also needs `timestamp`, milliseconds since the Unix epoch; the account id
//! in the path is numeric.
//!
//! The bulk endpoint does no per-conversion validation at Taboola (the error-codes page excludes it):
//! a bad action is lost silently behind a 204. The sandbox answers 204 too, but counts such an action
//! as `rejected` and lists why in [`TaboolaRecords::rejections`], so a test sees what Taboola would
//! have dropped. Stricter than Taboola, and said so in the messages: the postback's bad `revenue`,
//! `currency` or `quantity` answers 400 (Taboola's answer is not published), an action field outside
//! the documented ones is rejected, a `timestamp` below 10^12 (seconds instead of milliseconds) or
//! more than ten minutes ahead is rejected, and a bulk envelope that is not `{"actions": [1–1,000
//! objects]}` answers 400 with `{"error": …}` (Taboola's shape for that is not published).
//!
//! Dedup, as documented for S2S: the same click id and event name within one fixed one-minute bucket
//! count once; for the postback a different `orderid`, `revenue`, `currency` or `quantity` makes a
//! different conversion, for bulk actions it does not. Which clock the bucket uses is not published:
//! the sandbox uses the action's `timestamp` for bulk (so a resend is always the same bucket) and the
//! arrival time for the postback, which has no timestamp. Taboola publishes no event-age limit (the
//! conversion windows are per conversion rule in Taboola Ads), so none is applied.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::testbed::sandbox::faults::{self, ConnControl, Gate};
use crate::testbed::sandbox::records::Counters;
use crate::testbed::sandbox::{is_decimal_text, json_response, parse_form, Platform, Shared};

/// Conversions per bulk request.
pub const MAX_ACTIONS: usize = 1_000;
/// Shortest click id the docs allow.
const MIN_CLICK_ID: usize = 66;
/// Longest click id the sandbox takes (the docs give no upper bound).
const MAX_CLICK_ID: usize = 1_024;
/// The currencies the postback page lists.
pub const CURRENCIES: [&str; 19] = [
    "AUD", "BRL", "CAD", "CNY", "EUR", "GBP", "HKD", "ILS", "INR", "JPY", "KRW", "MXN", "NZD",
    "RUB", "SGD", "THB", "TRY", "USD", "ZAR",
];
/// The fields of a bulk action.
const ACTION_FIELDS: &[&str] = &[
    "click-id",
    "timestamp",
    "name",
    "revenue",
    "currency",
    "orderid",
    "quantity",
];
/// A timestamp below this is seconds, not milliseconds (10^12 ms is September 2001).
const MIN_MILLIS: i64 = 1_000_000_000_000;
/// How far ahead a timestamp may be, in milliseconds.
const FUTURE_TOLERANCE_MS: i64 = 10 * 60 * 1000;
/// The dedup bucket, one minute.
const BUCKET_MS: i64 = 60_000;

/// What the sandbox recorded for Taboola.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaboolaRecords {
    /// Counters (postbacks and bulk actions together).
    pub counters: Counters,
    /// Conversions counted, in arrival order.
    pub conversions: Vec<TaboolaConversion>,
    /// Bulk actions Taboola would have dropped silently, with the reason.
    pub rejections: Vec<TaboolaRejection>,
    /// Bulk requests answered 204.
    pub bulk_requests: u64,
    /// Postbacks answered 204.
    pub postbacks: u64,
}

/// One conversion Taboola counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaboolaConversion {
    /// The account id of the bulk path; `None` for a postback.
    pub account_id: Option<String>,
    /// `click-id`.
    pub click_id: String,
    /// `name`, the event name of the conversion rule.
    pub name: String,
    /// `timestamp` (bulk only), milliseconds.
    pub timestamp_ms: Option<i64>,
    /// `revenue`.
    pub revenue: Option<f64>,
    /// `currency`.
    pub currency: Option<String>,
    /// `orderid`.
    pub orderid: Option<String>,
    /// `quantity`.
    pub quantity: Option<i64>,
    /// When the sandbox received it.
    pub received_at: DateTime<Utc>,
}

/// A bulk action the sandbox did not count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaboolaRejection {
    /// Its index in `actions`.
    pub index: usize,
    /// Why, naming the field, never the value.
    pub reason: String,
}

/// Taboola's dedup memory.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Dedup keys counted.
    counted: HashSet<String>,
    /// Every key received, for `duplicate_sends`.
    received: HashMap<String, u64>,
}

/// The routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/actions-handler/log/3/s2s-action", get(handle_postback))
        .route("/{account_id}/log/3/bulk-s2s-action", post(handle_bulk))
}

/// `GET /actions-handler/log/3/s2s-action`.
async fn handle_postback(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    RawQuery(query): RawQuery,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::Taboola).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let response = match postback_conversion(query.as_deref().unwrap_or_default()) {
        Ok(conversion) => {
            let now = conversion.received_at;
            let key = format!(
                "{}\u{1f}{:?}\u{1f}{:?}\u{1f}{:?}\u{1f}{:?}\u{1f}{}",
                identity_key(&conversion),
                conversion.orderid,
                conversion.revenue,
                conversion.currency,
                conversion.quantity,
                now.timestamp_millis().div_euclid(BUCKET_MS)
            );
            let mut state = shared.lock();
            state.records.taboola.postbacks += 1;
            count(&mut state, key, conversion);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(reason) => {
            let mut state = shared.lock();
            let counters = &mut state.records.taboola.counters;
            counters.received += 1;
            counters.rejected += 1;
            counters.rejected_requests += 1;
            error(&reason)
        }
    };
    faults::finish(&shared, &conn, Platform::Taboola, drop_after, response)
}

/// The conversion of a postback query, or why it answers 400.
fn postback_conversion(query: &str) -> Result<TaboolaConversion, String> {
    let pairs = parse_form(query.as_bytes()).ok_or("the query string is not valid UTF-8")?;
    let mut params = Map::new();
    for (key, value) in pairs {
        params.insert(key, Value::String(value));
    }
    if !params.contains_key("click-id") {
        return Err("click-id param is missing (it must be spelled click-id)".into());
    }
    if params.get("name").and_then(Value::as_str).is_none() {
        return Err("name param is missing".into());
    }
    conversion_of(&params, None)
}

/// `POST /{account-id}/log/3/bulk-s2s-action`.
async fn handle_bulk(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::Taboola).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let response = match bulk_actions(&account_id, &headers, &body) {
        Ok(actions) => {
            record_bulk(&shared, &account_id, actions);
            StatusCode::NO_CONTENT.into_response()
        }
        Err((reason, count)) => {
            let mut state = shared.lock();
            let counters = &mut state.records.taboola.counters;
            counters.received += count as u64;
            counters.rejected += count as u64;
            counters.rejected_requests += 1;
            error(&reason)
        }
    };
    faults::finish(&shared, &conn, Platform::Taboola, drop_after, response)
}

/// The actions of a bulk request, or why the whole request answers 400 (and how many it carried).
fn bulk_actions(
    account_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<Value>, (String, usize)> {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let count = parsed
        .as_ref()
        .and_then(|v| v.get("actions"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let fail = |reason: &str| {
        Err((
            format!("{reason} (sandbox: Taboola's answer is not published)"),
            count,
        ))
    };
    if account_id.is_empty() || !account_id.bytes().all(|b| b.is_ascii_digit()) {
        return fail("the account id in the path must be numeric");
    }
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return fail("Content-Type must be application/json");
    }
    let Some(Value::Object(mut envelope)) = parsed else {
        return fail("the body must be a JSON object");
    };
    if envelope.len() != 1 || !envelope.contains_key("actions") {
        return fail("the body must hold exactly one property, actions");
    }
    let Some(Value::Array(actions)) = envelope.remove("actions") else {
        return fail("actions must be an array");
    };
    if actions.is_empty() || actions.len() > MAX_ACTIONS {
        return fail(&format!("actions must hold 1 to {MAX_ACTIONS} conversions"));
    }
    Ok(actions)
}

/// Counts the valid actions of an accepted bulk request and lists the others.
fn record_bulk(shared: &Shared, account_id: &str, actions: Vec<Value>) {
    let now = Utc::now();
    let mut state = shared.lock();
    state.records.taboola.bulk_requests += 1;
    for (index, action) in actions.into_iter().enumerate() {
        let checked = match action {
            Value::Object(fields) => bulk_conversion(&fields, now),
            _ => Err("an action must be an object".into()),
        };
        match checked {
            Ok(mut conversion) => {
                conversion.account_id = Some(account_id.to_string());
                let bucket = conversion
                    .timestamp_ms
                    .unwrap_or_default()
                    .div_euclid(BUCKET_MS);
                let key = format!("{}\u{1f}{bucket}", identity_key(&conversion));
                count(&mut state, key, conversion);
            }
            Err(reason) => {
                let records = &mut state.records.taboola;
                records.counters.received += 1;
                records.counters.rejected += 1;
                records.rejections.push(TaboolaRejection { index, reason });
            }
        }
    }
}

/// One bulk action as a conversion, or why Taboola would drop it.
fn bulk_conversion(
    fields: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<TaboolaConversion, String> {
    if let Some(unknown) = fields.keys().find(|k| !ACTION_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "{unknown} is not a field of a bulk action (sandbox)"
        ));
    }
    let timestamp = match fields.get("timestamp") {
        None => return Err("timestamp is required".into()),
        Some(v) => v.as_i64().ok_or("timestamp must be an integer")?,
    };
    if timestamp < MIN_MILLIS {
        return Err("timestamp must be milliseconds since the Unix epoch (seconds sent?)".into());
    }
    if timestamp > now.timestamp_millis() + FUTURE_TOLERANCE_MS {
        return Err("timestamp is in the future (sandbox)".into());
    }
    conversion_of(fields, Some(timestamp))
}

/// The checked fields common to a postback and a bulk action. Postback values arrive as strings,
/// bulk values as JSON numbers where the docs say number.
fn conversion_of(
    fields: &Map<String, Value>,
    timestamp_ms: Option<i64>,
) -> Result<TaboolaConversion, String> {
    let text = |key: &str| fields.get(key).and_then(Value::as_str);
    let click_id = text("click-id").ok_or("click-id is required and must be a string")?;
    if !click_id_ok(click_id) {
        return Err("click-id value is not parsable".into());
    }
    let name = text("name").filter(|n| !n.trim().is_empty());
    let name = name.ok_or("name is required and must be a non-empty string")?;
    let from_query = timestamp_ms.is_none();
    let revenue = match fields.get("revenue") {
        None => None,
        Some(v) => {
            Some(number(v, from_query).ok_or("revenue must be an integer or decimal number")?)
        }
    };
    let quantity = match fields.get("quantity") {
        None => None,
        Some(v) => Some(integer(v, from_query).ok_or("quantity must be an integer")?),
    };
    let currency = match fields.get("currency") {
        None => None,
        Some(v) => match v.as_str() {
            Some(c) if CURRENCIES.contains(&c) => Some(c.to_string()),
            _ => {
                return Err(
                    "currency must be one of the supported 3-letter codes (case-sensitive)".into(),
                )
            }
        },
    };
    let orderid = match fields.get("orderid") {
        None => None,
        Some(v) => Some(v.as_str().ok_or("orderid must be a string")?.to_string()),
    };
    Ok(TaboolaConversion {
        account_id: None,
        click_id: click_id.to_string(),
        name: name.to_string(),
        timestamp_ms,
        revenue,
        currency,
        orderid,
        quantity,
        received_at: Utc::now(),
    })
}

/// True for a click id the sandbox can parse (see the module docs).
fn click_id_ok(id: &str) -> bool {
    (MIN_CLICK_ID..=MAX_CLICK_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A number: a JSON number in a bulk body, a decimal string in a query.
fn number(value: &Value, from_query: bool) -> Option<f64> {
    let parsed = match value {
        Value::Number(n) if !from_query => n.as_f64(),
        Value::String(s) if from_query && is_decimal_text(s) => s.parse().ok(),
        _ => None,
    };
    parsed.filter(|v: &f64| v.is_finite())
}

/// An integer: a JSON integer in a bulk body, a string of digits in a query.
fn integer(value: &Value, from_query: bool) -> Option<i64> {
    match value {
        Value::Number(n) if !from_query => n.as_i64(),
        Value::String(s) if from_query => s.parse().ok(),
        _ => None,
    }
}

/// Click id and event name: the "same event in the same click context" of Taboola's dedup.
fn identity_key(conversion: &TaboolaConversion) -> String {
    format!("{}\u{1f}{}", conversion.click_id, conversion.name)
}

/// Counts one valid conversion under its dedup key.
fn count(
    state: &mut crate::testbed::sandbox::SandboxState,
    key: String,
    conversion: TaboolaConversion,
) {
    let seen = state.taboola.received.entry(key.clone()).or_insert(0);
    *seen += 1;
    let resent = *seen > 1;
    let records = &mut state.records.taboola;
    records.counters.received += 1;
    if resent {
        records.counters.duplicate_sends += 1;
    }
    if state.taboola.counted.insert(key) {
        records.counters.unique += 1;
        records.counters.accepted += 1;
        records.conversions.push(conversion);
    } else {
        records.counters.deduplicated += 1;
    }
}

/// A 400 with the sandbox's `{"error": …}` body.
fn error(reason: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({ "error": reason }))
}

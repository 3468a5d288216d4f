//! Outbrain S2S conversions: `GET /unifiedPixel?ob_click_id=…&name=…` (host `tr.outbrain.com`).
//!
//! What is known, and from where (searched 2026-12-05): Outbrain's help centre describes S2S tracking
//! as sending the unique click id Outbrain generated for the click back to Outbrain's server, with the
//! name of an event-based conversion created in the dashboard (outbrain.com/help, "server2server
//! integrations"). The request itself is documented only by third parties (Stape's Outbrain S2S tag,
//! GTM templates): a GET of `https://tr.outbrain.com/unifiedPixel` with `ob_click_id`, `name`, and
//! optionally `orderId`, `orderValue` and `currency`. Outbrain publishes no error codes, no
//! response body, no dedup rule and no event-age limit for it.
//!
//! So the sandbox is strict on what is known and stricter than anything published, as noted in its
//! messages: `ob_click_id` and `name` must be present and non-empty, `ob_click_id` without whitespace;
//! `orderValue` a decimal number that is not negative, `currency` three uppercase letters; any other
//! parameter is refused (catching, for example, Taboola's `orderid` sent to Outbrain). A valid
//! postback answers 200 with an empty body, a bad one 400 with `{"error": …}` (the sandbox's shape).
//! There is no dedup: every valid postback is counted, as Outbrain documents nothing else; `unique`
//! counts distinct (click id, name, `orderId`) keys and `duplicate_sends` the repeats, so tests can
//! see resends.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::testbed::sandbox::faults::{self, ConnControl, Gate};
use crate::testbed::sandbox::records::Counters;
use crate::testbed::sandbox::{is_decimal_text, json_response, parse_form, Platform, Shared};

/// The parameters of an S2S postback.
const PARAMS: &[&str] = &["ob_click_id", "name", "orderId", "orderValue", "currency"];

/// What the sandbox recorded for Outbrain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutbrainRecords {
    /// Counters: `accepted` every valid postback, `unique` distinct (click id, name, order id).
    pub counters: Counters,
    /// Every valid postback, in arrival order (resends included: Outbrain documents no dedup).
    pub conversions: Vec<OutbrainConversion>,
}

/// One postback Outbrain counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutbrainConversion {
    /// `ob_click_id`.
    pub ob_click_id: String,
    /// `name`, the event-based conversion's name.
    pub name: String,
    /// `orderId`.
    pub order_id: Option<String>,
    /// `orderValue`.
    pub order_value: Option<f64>,
    /// `currency`.
    pub currency: Option<String>,
    /// When the sandbox received it.
    pub received_at: DateTime<Utc>,
}

/// Keys received so far.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// (click id, name, order id) keys seen in valid postbacks.
    seen: HashSet<String>,
}

/// The route.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/unifiedPixel", get(handle_postback))
}

/// `GET /unifiedPixel`.
async fn handle_postback(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    RawQuery(query): RawQuery,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::Outbrain).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let checked = conversion(query.as_deref().unwrap_or_default());
    let mut state = shared.lock();
    let state = &mut *state;
    let records = &mut state.records.outbrain;
    records.counters.received += 1;
    let response = match checked {
        Ok(conversion) => {
            let key = format!(
                "{}\u{1f}{}\u{1f}{}",
                conversion.ob_click_id,
                conversion.name,
                conversion.order_id.as_deref().unwrap_or_default()
            );
            if state.outbrain.seen.insert(key) {
                records.counters.unique += 1;
            } else {
                records.counters.duplicate_sends += 1;
            }
            records.counters.accepted += 1;
            records.conversions.push(conversion);
            StatusCode::OK.into_response()
        }
        Err(reason) => {
            records.counters.rejected += 1;
            records.counters.rejected_requests += 1;
            json_response(StatusCode::BAD_REQUEST, json!({ "error": reason }))
        }
    };
    faults::finish(&shared, &conn, Platform::Outbrain, drop_after, response)
}

/// The conversion of a postback query, or why it is refused.
fn conversion(query: &str) -> Result<OutbrainConversion, String> {
    let pairs = parse_form(query.as_bytes()).ok_or("the query string is not valid UTF-8")?;
    let mut seen = HashSet::new();
    for (key, _) in &pairs {
        if !PARAMS.contains(&key.as_str()) {
            return Err(format!(
                "{key} is not a parameter of an S2S postback (sandbox)"
            ));
        }
        if !seen.insert(key.as_str()) {
            return Err(format!("{key} is given twice (sandbox)"));
        }
    }
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let click = get("ob_click_id").filter(|v| !v.is_empty());
    let click = click.ok_or("ob_click_id is required")?;
    if click.chars().any(char::is_whitespace) {
        return Err("ob_click_id must not contain whitespace".into());
    }
    let name = get("name").filter(|v| !v.trim().is_empty());
    let name = name.ok_or("name is required (the event-based conversion's name)")?;
    let order_value = match get("orderValue") {
        None => None,
        Some(v) if v.starts_with('-') => {
            return Err("orderValue must not be negative (sandbox)".into())
        }
        Some(v) => Some(
            is_decimal_text(v)
                .then(|| v.parse::<f64>().ok())
                .flatten()
                .ok_or("orderValue must be a decimal number (sandbox)")?,
        ),
    };
    let currency = match get("currency") {
        None => None,
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => Some(c.to_string()),
        Some(_) => {
            return Err("currency must be a 3-letter uppercase ISO 4217 code (sandbox)".into())
        }
    };
    let order_id = match get("orderId") {
        None => None,
        Some("") => return Err("orderId must not be empty (sandbox)".into()),
        Some(id) => Some(id.to_string()),
    };
    Ok(OutbrainConversion {
        ob_click_id: click.to_string(),
        name: name.to_string(),
        order_id,
        order_value,
        currency,
        received_at: Utc::now(),
    })
}

//! Taboola S2S conversions through the bulk endpoint:
//! `POST {endpoint}/{account_id}/log/3/bulk-s2s-action` with `{"actions": [...]}`.
//!
//! From Taboola's docs ("Bulk submit S2S conversions", "The S2S postback URL", "S2S Error Codes",
//! "Conversion deduplication", read 2026-12-05): up to 1,000 conversions per request, JSON, no
//! authentication; each action carries `click-id` (the Taboola click id the landing page got),
//! `timestamp` in milliseconds since the Unix epoch, `name` (the Event Name of the conversion rule in
//! Taboola Ads, case-sensitive), and optionally `revenue`, `currency` (one of 19 listed codes),
//! `orderid` and `quantity`. Success is 204. The bulk endpoint is preferred over one GET per
//! conversion (`/actions-handler/log/3/s2s-action`): one request per batch instead of per row.
//!
//! Failure model: Taboola validates nothing per action on the bulk endpoint (its error-codes page
//! excludes bulk submissions), so a bad action would be lost silently behind the 204. pgcapi checks
//! what the docs state before sending: a row without a usable click id is `skipped` ("no click id";
//! identity already left out a click id of the wrong shape), a row without an event name or with a
//! currency Taboola does not list `failed`, and only the others travel. A request answered 400 is
//! bisected like Meta's ([`isolate`]) in case one action is to blame after all; 401/403/404 point at
//! the account id and wait for an operator; 408, 429 and 5xx are retried.
//!
//! Dedup: Taboola counts the same click id and event name once within a fixed one-minute bucket (for
//! bulk actions regardless of `orderid` or `revenue`), so a resend after a crash counts once if it
//! falls in the same bucket. Which clock the bucket uses is not published; `orderid` carries the
//! row's event id for Taboola's reports. Two different orders from one click with the same event name
//! in the same minute count once: that is Taboola's rule, not pgcapi's.
//!
//! Refunds: Taboola cannot retract; a refund of a sent conversion is `skipped` ("platform cannot
//! retract"). No event-age limit is published (conversion windows are set per rule in Taboola Ads),
//! so none is applied. `check` has nothing to verify: no credential exists.

use super::{
    base_url, batch_size, event_name, excerpt, in_order, is_retryable_status, isolate, read_answer,
    required, value_number, BatchAnswer, Destination, DestinationError, Outcome, Picked,
    SendFuture, OPERATOR_RETRY_FLOOR,
};
use crate::config::{DestinationConfig, DispatchConfig};
use crate::event::{Delivery, Kind};
use crate::identity::MatchKey;
use crate::platform::Platform;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Production host of Taboola's S2S endpoints.
pub const DEFAULT_ENDPOINT: &str = "https://trc.taboola.com";
/// Conversions per bulk request.
pub const MAX_ACTIONS: usize = 1_000;
/// The currencies Taboola lists for S2S conversions (case-sensitive).
pub const CURRENCIES: [&str; 19] = [
    "AUD", "BRL", "CAD", "CNY", "EUR", "GBP", "HKD", "ILS", "INR", "JPY", "KRW", "MXN", "NZD",
    "RUB", "SGD", "THB", "TRY", "USD", "ZAR",
];

/// A Taboola advertiser account.
pub struct Taboola {
    /// The config name.
    name: String,
    /// The bulk endpoint of the account.
    url: String,
    /// Actions per request.
    max_batch: usize,
    /// The HTTP client.
    http: reqwest::Client,
}

impl Taboola {
    /// Builds the destination; `account_id` (the numeric Taboola account id) is required.
    pub fn new(
        name: &str,
        config: &DestinationConfig,
        dispatch: &DispatchConfig,
    ) -> Result<Taboola, DestinationError> {
        let account = required(name, "account_id", &config.account_id)?;
        Ok(Taboola {
            name: name.to_string(),
            url: bulk_url(&base_url(&config.endpoint, DEFAULT_ENDPOINT), account),
            max_batch: batch_size(config, MAX_ACTIONS),
            http: super::http_client(name, dispatch)?,
        })
    }
}

/// The bulk endpoint of `account` under `base`.
pub fn bulk_url(base: &str, account: &str) -> String {
    format!("{base}/{}/log/3/bulk-s2s-action", account.trim())
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// Builds one bulk action, or the outcome that replaces sending it.
pub fn encode_action(d: &Delivery) -> Result<Value, Outcome> {
    if d.kind != Kind::Conversion {
        return Err(Outcome::skipped("platform cannot retract"));
    }
    let Some(click) = d.payload.keys.get(&MatchKey::TaboolaClickId) else {
        return Err(Outcome::skipped("no click id"));
    };
    let Some(name) = event_name(d) else {
        return Err(Outcome::failed(
            "taboola needs an event name (the rule's event or [rules.taboola] event)",
        ));
    };
    let mut action = Map::new();
    action.insert("click-id".into(), json!(click));
    action.insert("timestamp".into(), json!(d.event_time.timestamp_millis()));
    action.insert("name".into(), json!(name));
    if let Some(revenue) = value_number(d).map_err(Outcome::failed)? {
        action.insert("revenue".into(), Value::Number(revenue));
    }
    if let Some(currency) = d.currency.as_deref().map(str::trim) {
        if !CURRENCIES.contains(&currency) {
            return Err(Outcome::failed(format!(
                "currency {currency} is not one Taboola takes ({})",
                CURRENCIES.join(", ")
            )));
        }
        action.insert("currency".into(), json!(currency));
    }
    action.insert("orderid".into(), json!(d.event_id));
    Ok(Value::Object(action))
}

/// A batch encoded for sending: each row's action (`Null` where none), the rows to send, and the
/// outcomes of the rows decided without sending.
pub struct Plan {
    /// One action per row.
    pub actions: Vec<Value>,
    /// The rows that travel.
    pub rows: Vec<usize>,
    /// The rows decided here.
    pub decided: Vec<(usize, Outcome)>,
}

/// Encodes `batch`.
pub fn plan(batch: &[Delivery]) -> Plan {
    let mut plan = Plan {
        actions: Vec::with_capacity(batch.len()),
        rows: Vec::with_capacity(batch.len()),
        decided: Vec::new(),
    };
    for (i, d) in batch.iter().enumerate() {
        match encode_action(d) {
            Ok(action) => {
                plan.actions.push(action);
                plan.rows.push(i);
            }
            Err(outcome) => {
                plan.actions.push(Value::Null);
                plan.decided.push((i, outcome));
            }
        }
    }
    plan
}

// ---------------------------------------------------------------------------------------------
// Answer
// ---------------------------------------------------------------------------------------------

/// Classifies Taboola's answer to one bulk request.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
) -> BatchAnswer {
    let said = || {
        let text = excerpt(body);
        if text.is_empty() {
            format!("taboola: HTTP {}", status.as_u16())
        } else {
            format!("taboola: HTTP {}: {text}", status.as_u16())
        }
    };
    if status.is_success() {
        return BatchAnswer::Sent(None);
    }
    if is_retryable_status(status) {
        return BatchAnswer::Retry {
            error: said(),
            retry_after,
        };
    }
    if matches!(status.as_u16(), 401 | 403 | 404) {
        return BatchAnswer::Retry {
            error: format!("{} (check the destination's account_id)", said()),
            retry_after: Some(OPERATOR_RETRY_FLOOR),
        };
    }
    BatchAnswer::Rejected(said())
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A bulk request body that borrows its actions.
#[derive(serde::Serialize)]
struct Body<'a> {
    /// The actions sent.
    actions: Picked<'a>,
}

impl Taboola {
    /// Sends the actions at `indices` in one request.
    async fn post(&self, actions: &[Value], indices: &[usize]) -> BatchAnswer {
        let started = std::time::Instant::now();
        let body = Body {
            actions: Picked {
                items: actions,
                indices,
            },
        };
        let response = self.http.post(&self.url).json(&body).send().await;
        let answer = read_answer("taboola", response, classify).await;
        super::observe_request(&self.name, started, &answer);
        answer
    }
}

impl Destination for Taboola {
    fn name(&self) -> &str {
        &self.name
    }

    fn platform(&self) -> Platform {
        Platform::Taboola
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let Plan {
                actions,
                rows,
                mut decided,
            } = plan(batch);
            let actions = &actions;
            decided
                .extend(isolate(rows, |part| async move { self.post(actions, &part).await }).await);
            in_order(batch.len(), decided)
        })
    }

    fn preview(&self, batch: &[Delivery]) -> super::Preview {
        let Plan {
            actions,
            rows,
            decided,
        } = plan(batch);
        let requests = if rows.is_empty() {
            Vec::new()
        } else {
            let picked: Vec<Value> = rows.iter().map(|&i| actions[i].clone()).collect();
            vec![super::PlannedRequest {
                url: self.url.clone(),
                body: json!({ "actions": picked }),
                rows,
            }]
        };
        super::Preview {
            requests,
            not_sent: decided,
        }
    }
}

#[cfg(test)]
mod tests;

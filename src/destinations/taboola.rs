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

use super::batch::{BatchAnswer, Body, Plan, Request};
use super::event_fields::{self, account_accessors, by_status, http_error, Account};
use super::health::{Health, HealthFuture, Probe};
use super::http::base_url;
use super::{value_number, Destination, DestinationError, Outcome, SendFuture};
use crate::config::{ApiConfig, DispatchConfig, TaboolaConfig};
use crate::event::Delivery;
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::{DateTime, Utc};
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
    /// Name, batch size (actions per request) and client.
    account: Account,
    /// The API base, for messages.
    base: String,
    /// The bulk endpoint of the account.
    url: String,
}

impl Taboola {
    /// Builds the destination `name` at `api` (or Taboola's) for the account of `config`.
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &TaboolaConfig,
        dispatch: &DispatchConfig,
    ) -> Result<Taboola, DestinationError> {
        let base = base_url(&api.endpoint, DEFAULT_ENDPOINT);
        Ok(Taboola {
            account: Account::new(name, api, MAX_ACTIONS, dispatch)?,
            url: bulk_url(&base, &config.account_id),
            base,
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
    let (click, name) = event_fields::click_and_name(d, MatchKey::TaboolaClickId, "taboola")?;
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

// ---------------------------------------------------------------------------------------------
// Answer
// ---------------------------------------------------------------------------------------------

/// Classifies Taboola's answer to one bulk request.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
) -> BatchAnswer {
    if status.is_success() {
        return BatchAnswer::Sent(None);
    }
    let mut error = http_error("taboola", status, body);
    let operator = [401, 403, 404];
    if operator.contains(&status.as_u16()) {
        error.push_str(" (check the destination's account_id)");
    }
    by_status(status, retry_after, error, &operator)
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

impl Taboola {
    /// The health check. Taboola's S2S endpoints take no credential, and none of them answers
    /// without recording a conversion (or checks the account id or an event name), so there is
    /// nothing to verify: the endpoint is only reached, with a GET the bulk endpoint does not serve.
    async fn check(&self) -> Health {
        let base = &self.base;
        let text = |status| {
            format!(
                "endpoint {base} reachable (HTTP {status}); nothing to verify: Taboola's S2S \
                 endpoints take no credential, and no call checks the account id or the event \
                 names without recording a conversion"
            )
        };
        self.account.reach(&self.url, base, text).await
    }
}

impl Destination for Taboola {
    account_accessors!(Platform::Taboola);

    /// One bulk request, no credential; a rejected one is bisected.
    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        let plan = (batch.len(), self.plan(batch, Utc::now()));
        let build = |r: &Request, body: Body<'_>| self.account.http.post(&r.url).json(&body);
        Box::pin(self.account.send_bisected("taboola", plan, build, classify))
    }

    /// One bulk request for every row Taboola can use.
    fn plan(&self, batch: &[Delivery], _now: DateTime<Utc>) -> Plan {
        Plan::encode(
            batch,
            |d| encode_action(d).map(|action| ((), action)),
            |()| Request::new(&self.url, "actions"),
        )
    }

    fn healthcheck<'a>(&'a self, _probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move { vec![self.check().await] })
    }
}

#[cfg(test)]
mod tests;

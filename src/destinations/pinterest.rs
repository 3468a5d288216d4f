//! Pinterest Conversions API v5: `POST {endpoint}/v5/ad_accounts/{ad_account_id}/events`
//! (platforms-next.md §3).
//!
//! Up to 1,000 events a request, `Authorization: Bearer <conversion token>`, `event_time` in Unix
//! **seconds**, `event_id` required (the row's event id: Pinterest's dedup key), hashed `user_data`
//! as lists under the `snap/pinterest` profile, the `_epik` click id as `click_id`, and
//! `custom_data.value` as a **string**. Pinterest answers per event in request order: HTTP 200 when
//! all were processed, 422 when some failed (the processed ones count), so one bad event fails alone.
//! Pinterest cannot retract: a refund of a sent conversion is skipped.
//!
//! Pinterest publishes no age limit; old events fail with "Given timestamp is in the past". pgcapi
//! skips events older than 7 days before any request (the line TikTok's notes call risky too).
//!
//! Pinterest needs `em`, a mobile ad id, or the IP address with the user agent: a row with only a
//! phone or a click id is skipped. `action_source` is `web` for website events and `offline`
//! otherwise; Pinterest cannot deduplicate offline events, so a resent offline row may count twice.
//!
//! `test_mode = true` adds `?test=true`: "events will not be recorded but the API will still return
//! the same response messages"; accepted rows are `skipped` with `test_mode: …`. `check` sends one synthetic event that way, timed now (a stale time
//! in a health check is a known 422).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::batch::{Body, Request};
use super::event_fields::{self, account_accessors, by_status, Account};
use super::health::synthetic;
use super::http::{base_url, excerpt};
use super::{
    Destination, DestinationError, Health, HealthFuture, Outcome, Plan, Probe, SendFuture,
};
use crate::config::{ApiConfig, DispatchConfig, PinterestConfig, Secret};
use crate::event::Delivery;
use crate::identity::MatchKey;
use crate::platform::Platform;

/// Production host.
pub const DEFAULT_ENDPOINT: &str = "https://api.pinterest.com";
/// Events per request.
pub const MAX_EVENTS: usize = 1_000;
/// Events older than this are skipped, in days (Pinterest publishes no limit).
pub const MAX_AGE_DAYS: i64 = 7;

/// Pinterest's event names.
const PINTEREST_NAMES: &str = "add_payment_info add_to_cart add_to_wishlist checkout contact custom \
    initiate_checkout lead page_visit search signup subscribe view_category view_content watch_video";

/// The Pinterest event name of a row: the override, a Pinterest name, or Pinterest's name for a
/// Meta-style one.
pub fn pinterest_event_name(d: &Delivery) -> Option<&'static str> {
    event_fields::native_name(d, PINTEREST_NAMES, |(_, _, pinterest)| pinterest)
}

/// Pinterest's `user_data` field of a match key, and whether its value is a hash (sent as a list):
/// the shared Conversions-API names, and the `_epik` click id.
fn user_field(key: MatchKey) -> Option<(&'static str, bool)> {
    match key {
        MatchKey::Epik => Some(("click_id", false)),
        _ => event_fields::capi_field(key),
    }
}

/// Builds one event, or the outcome that replaces sending it.
pub fn encode_event(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    event_fields::fresh_conversion(d, now, "pinterest", MAX_AGE_DAYS)?;
    let Some(name) = pinterest_event_name(d) else {
        return Err(Outcome::failed(
            "pinterest: the rule's event has no Pinterest name: set [rules.pinterest] event (checkout, lead, …)",
        ));
    };
    let user = event_fields::user_data(d, user_field);
    let has = |k: &str| user.contains_key(k);
    if !(has("em") || has("client_ip_address") && has("client_user_agent")) {
        return Err(Outcome::skipped(
            "no usable match key for pinterest (email, or IP address with user agent)",
        ));
    }
    let mut custom = event_fields::custom_value(d, "pinterest", true)?;
    if name == "checkout" {
        custom.insert("order_id".into(), json!(d.event_id));
    }
    Ok(event_fields::capi_event(
        d,
        name,
        action_source(d),
        user,
        custom,
    ))
}

/// `action_source`: `web` for website events (the rule's, or a page URL without one), else `offline`.
fn action_source(d: &Delivery) -> &'static str {
    match d.action_source.as_deref() {
        Some("website") => "web",
        None if d.payload.event_source_url.is_some() => "web",
        _ => "offline",
    }
}

/// Spreads Pinterest's answer to a request carrying `rows` over those rows.
///
/// 200 and 422 carry one status per event in request order (`processed` sent, `failed` failed with
/// Pinterest's message); 401/403 wait for the operator; 429 and 5xx are retried; a 400 (the schema)
/// fails the request's rows with Pinterest's message: the encoder only writes schema fields, so it is
/// a bug, not one event.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &str,
    rows: &[usize],
) -> Vec<(usize, Outcome)> {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |k: &str| parsed.as_ref().and_then(|v| v.get(k));
    let message = match (
        field("code").and_then(Value::as_i64),
        field("message").and_then(Value::as_str),
    ) {
        (Some(code), Some(m)) => format!("pinterest: HTTP {}: code {code}: {m}", status.as_u16()),
        _ => format!("pinterest: HTTP {}: {}", status.as_u16(), excerpt(body)),
    };
    let all = |outcome: Outcome| rows.iter().map(|&i| (i, outcome.clone())).collect();
    let report = match status.as_u16() {
        200 => parsed.as_ref(),
        422 => field("details"),
        _ => return all(by_status(status, retry_after, message, &[401, 403]).outcome()),
    };
    let statuses = report
        .and_then(|r| r.get("events"))
        .and_then(Value::as_array);
    let Some(statuses) = statuses else {
        return match status.as_u16() {
            200 => all(Outcome::Sent { platform_ref: None }),
            _ => all(Outcome::failed(message)),
        };
    };
    let slots = (0..rows.len())
        .map(|i| {
            let item = statuses.get(i)?;
            Some(match item.get("status").and_then(Value::as_str) {
                Some("processed") => Outcome::Sent { platform_ref: None },
                _ => {
                    let why = item.get("error_message").and_then(Value::as_str);
                    Outcome::failed(format!("pinterest: {}", why.unwrap_or("failed")))
                }
            })
        })
        .collect();
    event_fields::spread(rows, slots, "pinterest")
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A Pinterest ad account and the conversion token that may write to it.
pub struct Pinterest {
    /// Name, batch size and client.
    account: Account,
    /// `{endpoint}/v5/ad_accounts/{ad_account_id}/events`.
    url: String,
    /// The conversion token (a bearer header).
    access_token: Secret,
    /// Add `?test=true`.
    test_mode: bool,
}

impl Pinterest {
    /// Builds the destination from its API keys and its settings.
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &PinterestConfig,
        dispatch: &DispatchConfig,
    ) -> Result<Pinterest, DestinationError> {
        let base = base_url(&api.endpoint, DEFAULT_ENDPOINT);
        Ok(Pinterest {
            account: Account::new(name, api, MAX_EVENTS, dispatch)?,
            url: format!("{base}/v5/ad_accounts/{}/events", config.ad_account_id),
            access_token: config.access_token.clone(),
            test_mode: config.test_mode,
        })
    }

    /// The plan of `batch`, to the events URL with `?test=true` when `test`.
    fn plan_for(&self, batch: &[Delivery], now: DateTime<Utc>, test: bool) -> Plan {
        let query = if test { "?test=true" } else { "" };
        let url = format!("{}{query}", self.url);
        event_fields::plan(batch, now, &url, encode_event)
    }

    /// The HTTP request of `request` carrying `body`, with the bearer token.
    fn build(&self, request: &Request, body: Body<'_>) -> reqwest::RequestBuilder {
        (self.account.http.post(&request.url))
            .bearer_auth(self.access_token.expose())
            .json(&body)
    }

    /// Sends one synthetic `page_visit` (a hashed `.invalid` email, timed now) in test mode, as `send`
    /// sends: proves the token and the ad account and records nothing (Pinterest has no read that a
    /// conversion token is sure to be allowed).
    async fn check(&self) -> Health {
        let mut probe = synthetic(&self.account.name, None);
        probe.payload.platform_event = Some("page_visit".into());
        let plan = self.plan_for(std::slice::from_ref(&probe), Utc::now(), true);
        let build = |r: &Request, body: Body<'_>| self.build(r, body);
        let sent = (self.account).send_per_event("pinterest", &plan, build, classify);
        let outcome = match sent.await.pop() {
            Some((_, outcome)) => outcome,
            None => plan
                .not_sent
                .into_iter()
                .next()
                .map_or(Outcome::retry("no request"), |(_, o)| o),
        };
        match outcome {
            Outcome::Sent { .. } => Health::pass(
                "token and ad account accepted (one test event with test=true, nothing recorded)",
            ),
            Outcome::Failed { error }
            | Outcome::Retry { error, .. }
            | Outcome::NeedsOperator { error, .. } => Health::fail(error),
            Outcome::Skipped { reason } => Health::fail(format!("pinterest: {reason}")),
        }
    }
}

impl Destination for Pinterest {
    account_accessors!(Platform::Pinterest);

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        let plan = (batch.len(), self.plan(batch, Utc::now()));
        let build = |r: &Request, body: Body<'_>| self.build(r, body);
        let account = &self.account;
        Box::pin(account.send_tested("pinterest", plan, self.test_mode, build, classify))
    }

    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        self.plan_for(batch, now, self.test_mode)
    }

    fn healthcheck<'a>(&'a self, _probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move { vec![self.check().await] })
    }
}

#[cfg(test)]
mod tests;

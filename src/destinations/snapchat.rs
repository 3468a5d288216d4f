//! Snapchat Conversions API v3: `POST {endpoint}/v3/{pixel_id}/events?access_token=…`
//! (platforms-next.md §2).
//!
//! Up to 2,000 events a request, `event_time` in Unix **seconds**, hashed `user_data` under the
//! `snap/pinterest` profile (phone digits without `+`), the Snap click id (`ScCid`) as `sc_click_id`.
//! Snap answers per event, so one bad event fails alone and the others are sent. Dedup is Snap's: the
//! row's event id is the `event_id` (and, on purchases, the `order_id`). Snap cannot retract: a refund
//! of a sent conversion is skipped. Events older than 37 days are skipped before any request.
//!
//! `test_mode = true` sends to `/v3/{pixel_id}/events/validate` (Snap's test-events tool): the same
//! checks and answers, nothing recorded, so accepted rows are `skipped` with `test_mode: …` rather
//! than `sent`. The token travels in the query string, which the HTTP client
//! never puts in an error message.
//!
//! Event names: a rule's event that already is a Snap name (`PURCHASE`, `SIGN_UP`, …) is sent as is;
//! the usual Meta-style names map to Snap's (`Purchase` → `PURCHASE`, `Lead` → `SIGN_UP`, …); the
//! `[rules.snapchat] event` override wins.
//!
//! `check`: `GET /v3/{pixel_id}/events/validate/stats`, a read of the test-event stats, proves the
//! token and the pixel without recording anything.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::batch::{Body, Request};
use super::event_fields::{self, account_accessors, by_status, Account};
use super::health::unreachable;
use super::http::{base_url, Answer};
use super::{
    Destination, DestinationError, Health, HealthFuture, Outcome, Plan, Probe, SendFuture,
};
use crate::config::{ApiConfig, DispatchConfig, Secret, SnapchatConfig};
use crate::event::Delivery;
use crate::identity::MatchKey;
use crate::platform::Platform;

/// Production host.
pub const DEFAULT_ENDPOINT: &str = "https://tr.snapchat.com";
/// Events per request.
pub const MAX_EVENTS: usize = 2_000;
/// Oldest event Snap attributes, in days.
pub const MAX_AGE_DAYS: i64 = 37;

/// Snap's standard event names (the ones pgcapi's rules can produce).
const SNAP_NAMES: &str =
    "PURCHASE SIGN_UP ADD_CART START_CHECKOUT ADD_BILLING SUBSCRIBE START_TRIAL \
    VIEW_CONTENT PAGE_VIEW SEARCH ADD_TO_WISHLIST SAVE RESERVE LOGIN CUSTOM_EVENT_1 CUSTOM_EVENT_2 \
    CUSTOM_EVENT_3 CUSTOM_EVENT_4 CUSTOM_EVENT_5";

/// The Snap event name of a row: the override, a Snap name, or Snap's name for a Meta-style one.
pub fn snap_event_name(d: &Delivery) -> Option<&'static str> {
    event_fields::native_name(d, SNAP_NAMES, |(_, snap, _)| snap)
}

/// Snap's `user_data` field of a match key, and whether its value is a hash (sent as a list): the
/// shared Conversions-API names but the external id and birth date, and the Snap click id.
fn user_field(key: MatchKey) -> Option<(&'static str, bool)> {
    match key {
        MatchKey::ScClickId => Some(("sc_click_id", false)),
        MatchKey::ExternalId | MatchKey::DateOfBirth => None,
        _ => event_fields::capi_field(key),
    }
}

/// `action_source`: `WEB` for website events with a page URL (Snap requires one), `MOBILE_APP` for
/// app events, `OFFLINE` for everything else (orders and deals recorded in a database).
fn action_source(d: &Delivery) -> &'static str {
    let url = d.payload.event_source_url.is_some();
    match d.action_source.as_deref() {
        Some("app") => "MOBILE_APP",
        Some("website") | None if url => "WEB",
        _ => "OFFLINE",
    }
}

/// Builds one event, or the outcome that replaces sending it.
pub fn encode_event(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    event_fields::fresh_conversion(d, now, "snapchat", MAX_AGE_DAYS)?;
    let Some(name) = snap_event_name(d) else {
        return Err(Outcome::failed(
            "snapchat: the rule's event has no Snap name: set [rules.snapchat] event (PURCHASE, SIGN_UP, …)",
        ));
    };
    let user = event_fields::user_data(d, user_field);
    let has = |k: &str| user.contains_key(k);
    if !(has("em")
        || has("ph")
        || has("sc_click_id")
        || has("client_ip_address") && has("client_user_agent"))
    {
        return Err(Outcome::skipped("no usable match key for snapchat"));
    }
    let mut custom = event_fields::custom_value(d, "snapchat", false)?;
    if name == "PURCHASE" {
        if !(custom.contains_key("value") && custom.contains_key("currency")) {
            return Err(Outcome::failed(
                "snapchat: a PURCHASE needs a value and a currency",
            ));
        }
        // Snap's purchase dedup also looks at the transaction id.
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

/// Spreads Snap's answer to a request carrying `rows` over those rows.
///
/// HTTP 200 carries one status per event by index (`VALID` sent, `INVALID` failed with Snap's reason).
/// 401/403 wait for the operator; 429 and 5xx are retried; any other status fails the request's rows
/// with Snap's reason (the encoder already checks what Snap checks, so this is a bug, not one event).
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &str,
    rows: &[usize],
) -> Vec<(usize, Outcome)> {
    let all = |outcome: Outcome| rows.iter().map(|&i| (i, outcome.clone())).collect();
    if !status.is_success() {
        let reason = event_fields::said(body, "reason");
        let message = format!("snapchat: HTTP {}: {reason}", status.as_u16());
        return all(by_status(status, retry_after, message, &[401, 403]).outcome());
    }
    let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let Some(statuses) = answer["events"].as_array() else {
        // A 200 without per-event statuses: Snap took the request.
        return all(Outcome::Sent { platform_ref: None });
    };
    let mut slots: Vec<Option<Outcome>> = vec![None; rows.len()];
    for item in statuses {
        let index = item.get("event").and_then(Value::as_u64);
        let Some(slot) = index.and_then(|i| slots.get_mut(i as usize)) else {
            continue;
        };
        *slot = Some(match item.get("status").and_then(Value::as_str) {
            Some("VALID") => Outcome::Sent { platform_ref: None },
            _ => {
                let why = item.get("reason").and_then(Value::as_str);
                Outcome::failed(format!("snapchat: {}", why.unwrap_or("INVALID")))
            }
        });
    }
    event_fields::spread(rows, slots, "snapchat")
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A Snap pixel and the CAPI token that may write to it.
pub struct Snapchat {
    /// Name, batch size and client.
    account: Account,
    /// `{endpoint}/v3/{pixel_id}`.
    base: String,
    /// The CAPI token (a query parameter on every call).
    access_token: Secret,
    /// Send to `/events/validate` instead of `/events`.
    test_mode: bool,
}

impl Snapchat {
    /// Builds the destination from its API keys and its settings.
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &SnapchatConfig,
        dispatch: &DispatchConfig,
    ) -> Result<Snapchat, DestinationError> {
        let base = base_url(&api.endpoint, DEFAULT_ENDPOINT);
        Ok(Snapchat {
            account: Account::new(name, api, MAX_EVENTS, dispatch)?,
            base: format!("{base}/v3/{}", config.pixel_id),
            access_token: config.access_token.clone(),
            test_mode: config.test_mode,
        })
    }

    /// The events URL (without the token): `/events`, or `/events/validate` in test mode.
    fn events_url(&self) -> String {
        let suffix = if self.test_mode { "/validate" } else { "" };
        format!("{}/events{suffix}", self.base)
    }

    /// Reads the test-event stats of the pixel: proves the token and the pixel id, records nothing.
    async fn check(&self) -> Health {
        let url = format!("{}/events/validate/stats", self.base);
        let response = (self.account.http)
            .get(url)
            .query(&[("access_token", self.access_token.expose())])
            .send()
            .await;
        let answer = match response {
            Ok(r) => Answer::read(r).await,
            Err(e) => return Health::fail(unreachable(&self.base, e)),
        };
        if answer.status.is_success() {
            let mode = if self.test_mode { ", test_mode on" } else { "" };
            Health::pass(format!(
                "token and pixel accepted (read the test-event stats, nothing recorded{mode})"
            ))
        } else {
            let reason = event_fields::said(&answer.text, "reason");
            Health::fail(format!(
                "snapchat: HTTP {}: {reason}",
                answer.status.as_u16()
            ))
        }
    }
}

impl Destination for Snapchat {
    account_accessors!(Platform::Snapchat);

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        let plan = (batch.len(), self.plan(batch, Utc::now()));
        let token = [("access_token", self.access_token.expose())];
        let build = move |r: &Request, body: Body<'_>| {
            self.account.http.post(&r.url).query(&token).json(&body)
        };
        Box::pin(
            self.account
                .send_tested("snapchat", plan, self.test_mode, build, classify),
        )
    }

    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        event_fields::plan(batch, now, &self.events_url(), encode_event)
    }

    fn healthcheck<'a>(&'a self, _probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move { vec![self.check().await] })
    }
}

#[cfg(test)]
mod tests;

//! LinkedIn Conversions API: `POST {endpoint}/rest/conversionEvents` as `BATCH_CREATE` (platforms-next.md §4).
//!
//! Every call carries `LinkedIn-Version: YYYYMM` (the `api_version` key, default [`DEFAULT_VERSION`]).
//! LinkedIn switches each monthly version off about a year after its release and then answers every
//! call with HTTP 426 `NONEXISTENT_VERSION`; pgcapi turns that into one operator error naming the key
//! to change, and keeps the rows pending (held back like a credentials error) so nothing is lost.
//!
//! An event: the rule's conversion rule URN (`[rules.linkedin] conversion_rule`), the time in epoch
//! **milliseconds**, `eventId` (LinkedIn's dedup key with the Insight Tag), the value as a decimal
//! string, and `user` with `userIds` always present (even `[]`) and `userInfo` only when both names
//! are known (since 202607 a lone name is a 422). LinkedIn answers per element, in order, so a bad
//! event fails alone. Events older than 90 days are skipped; LinkedIn cannot retract, so a refund of
//! a sent conversion is skipped. There is no test mode: use a separate conversion rule.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::batch::{in_order, observe_request, BatchAnswer, Plan, Request};
use super::event_fields::{self, account_accessors, by_status, said, Account};
use super::health::{unreachable, Health, HealthFuture, Probe};
use super::http::{base_url, excerpt, operator_retry, transport_error};
use super::{value_number, Destination, DestinationError, Outcome, SendFuture};
use crate::config::{ApiConfig, DispatchConfig, LinkedinConfig, Secret};
use crate::event::Delivery;
use crate::identity::MatchKey;
use crate::platform::Platform;

/// Production API host.
pub const DEFAULT_ENDPOINT: &str = "https://api.linkedin.com";
/// The `LinkedIn-Version` sent when `api_version` is not set: released November 2026, active until
/// about November 2027. Bump it with each pgcapi release that is tested against a newer version.
pub const DEFAULT_VERSION: &str = "202611";
/// Events per batch (Salesforce's connector docs; LinkedIn publishes no number).
pub const MAX_EVENTS: usize = 5_000;
/// LinkedIn rejects events older than this, in days.
pub const MAX_AGE_DAYS: i64 = 90;
/// Prefix of a conversion rule URN.
const RULE_PREFIX: &str = "urn:lla:llaPartnerConversion:";

/// A LinkedIn ad account's conversion rules, reached with one member's token.
pub struct Linkedin {
    /// Name, batch size and client.
    account: Account,
    /// The API host, without a trailing slash.
    base: String,
    /// `LinkedIn-Version`.
    version: String,
    /// The OAuth access token (`rw_conversions`).
    access_token: Secret,
    /// The ad account owning the conversion rules, named when `check` reads them.
    ad_account_id: Option<String>,
}

impl Linkedin {
    /// Builds the destination.
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &LinkedinConfig,
        dispatch: &DispatchConfig,
    ) -> Result<Linkedin, DestinationError> {
        Ok(Linkedin {
            account: Account::new(name, api, MAX_EVENTS, dispatch)?,
            base: base_url(&api.endpoint, DEFAULT_ENDPOINT),
            version: api
                .api_version
                .clone()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_VERSION.to_string()),
            access_token: config.access_token.clone(),
            ad_account_id: config.ad_account_id.clone(),
        })
    }

    /// A request with the headers every LinkedIn call needs.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        (self.account.http)
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.access_token.expose())
            .header("LinkedIn-Version", &self.version)
            .header("X-Restli-Protocol-Version", "2.0.0")
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// The conversion rule URN of a row: an id is made a URN, a URN is checked.
fn rule_urn(d: &Delivery) -> Result<String, Outcome> {
    let Some(rule) = d.payload.conversion_action.as_deref().map(str::trim) else {
        return Err(Outcome::failed(
            "linkedin needs a conversion rule ([rules.linkedin] conversion_rule)",
        ));
    };
    let id = rule.strip_prefix(RULE_PREFIX).unwrap_or(rule);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Outcome::failed(format!(
            "linkedin: conversion rule must be an id or {RULE_PREFIX}<id>"
        )));
    }
    Ok(format!("{RULE_PREFIX}{id}"))
}

/// `user`: `userIds` (always present) and `userInfo` with both names, or why the row has nothing
/// LinkedIn can match on.
fn user(d: &Delivery) -> Result<Value, Outcome> {
    let keys = &d.payload.keys;
    let mut ids = Vec::new();
    if let Some(email) = keys.get(&MatchKey::Email) {
        ids.push(json!({"idType": "SHA256_EMAIL", "idValue": email}));
    }
    if let Some(uuid) = keys.get(&MatchKey::LiFatId) {
        ids.push(json!({"idType": "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", "idValue": uuid}));
    }
    let mut user = Map::new();
    let names = (
        keys.get(&MatchKey::FirstName),
        keys.get(&MatchKey::LastName),
    );
    let named = if let (Some(first), Some(last)) = names {
        user.insert(
            "userInfo".into(),
            json!({"firstName": first, "lastName": last}),
        );
        true
    } else {
        false
    };
    if ids.is_empty() && !named {
        return Err(Outcome::skipped(
            "no usable match key for linkedin (email, li_fat_id, or first and last name)",
        ));
    }
    user.insert("userIds".into(), Value::Array(ids));
    Ok(Value::Object(user))
}

/// Builds one event, or the outcome that replaces sending it.
pub fn encode_event(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    event_fields::fresh_conversion(d, now, "linkedin", MAX_AGE_DAYS)?;
    let mut event = Map::new();
    event.insert("conversion".into(), json!(rule_urn(d)?));
    event.insert(
        "conversionHappenedAt".into(),
        json!(d.event_time.timestamp_millis()),
    );
    event.insert("eventId".into(), json!(d.event_id));
    event.insert("user".into(), user(d)?);
    let amount = value_number(d).map_err(|e| Outcome::failed(format!("linkedin: {e}")))?;
    let currency = d
        .currency
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    match (amount, currency) {
        (Some(amount), Some(currency)) => {
            // LinkedIn takes the amount as a decimal string.
            event.insert(
                "conversionValue".into(),
                json!({"currencyCode": currency.to_ascii_uppercase(), "amount": amount.to_string()}),
            );
        }
        (Some(_), None) => {
            return Err(Outcome::failed(
                "linkedin: a conversion value needs a currency",
            ))
        }
        (None, _) => {}
    }
    Ok(Value::Object(event))
}

// ---------------------------------------------------------------------------------------------
// Response classification
// ---------------------------------------------------------------------------------------------

/// What one batch request came to: one outcome per element, or one answer for all of them.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// LinkedIn answered each element, in order.
    PerElement(Vec<Outcome>),
    /// The request as a whole: sent, retried, held for an operator or rejected.
    Whole(BatchAnswer),
}

/// Turns LinkedIn's answer to a batch of `count` events into outcomes. `version` is the
/// `LinkedIn-Version` sent and `destination` the config name, for the 426 message.
pub fn classify(
    status: reqwest::StatusCode,
    delay: Option<Duration>,
    body: &str,
    count: usize,
    (destination, version): (&str, &str),
) -> Reply {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = format!(
        "linkedin: HTTP {}: {}",
        status.as_u16(),
        said(body, "message")
    );
    let whole = match status.as_u16() {
        200 | 201 => match parsed["elements"].as_array() {
            Some(elements) if elements.len() == count => {
                return Reply::PerElement(elements.iter().map(element_outcome).collect())
            }
            _ => BatchAnswer::Retry {
                error: format!("linkedin: unexpected batch answer: {}", excerpt(body)),
                retry_after: None,
            },
        },
        426 => operator_retry(
            format!(
                "linkedin: LinkedIn-Version {version} is no longer active (HTTP 426 \
                 NONEXISTENT_VERSION): set api_version in destinations.{destination} to a \
                 current YYYYMM version (LinkedIn switches each version off about a year after \
                 its release)"
            ),
            delay,
        ),
        _ => by_status(status, delay, error, &[401, 403]),
    };
    Reply::Whole(whole)
}

/// The outcome of one element of a batch answer: 201 sent, 429 and 5xx retried, other statuses failed.
fn element_outcome(element: &Value) -> Outcome {
    let status = element["status"].as_u64().unwrap_or_default();
    if (200..300).contains(&status) {
        return Outcome::Sent { platform_ref: None };
    }
    let message = element["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_string();
    let error = format!("linkedin: {status}: {message}");
    if status == 429 || status >= 500 {
        Outcome::retry(error)
    } else {
        Outcome::failed(error)
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

impl Linkedin {
    /// Sends one `BATCH_CREATE` of `request`'s rows; one outcome per row, in the request's order.
    async fn post(&self, request: &Request, items: &[Value]) -> Vec<Outcome> {
        let started = std::time::Instant::now();
        let response = self
            .request(reqwest::Method::POST, "/rest/conversionEvents")
            .header("X-RestLi-Method", "BATCH_CREATE")
            .json(&request.body(items, &request.rows))
            .send()
            .await;
        let answer = match response {
            Err(e) => Reply::Whole(transport_error("linkedin", e)),
            Ok(r) => {
                let read = super::http::Answer::read(r).await;
                let context = (self.account.name.as_str(), self.version.as_str());
                let count = request.rows.len();
                classify(read.status, read.retry_after, &read.text, count, context)
            }
        };
        match answer {
            Reply::PerElement(outcomes) => {
                let all_sent = outcomes.iter().all(|o| matches!(o, Outcome::Sent { .. }));
                let counted = if all_sent {
                    BatchAnswer::Sent(None)
                } else {
                    BatchAnswer::Rejected(String::new())
                };
                observe_request(&self.account.name, started, &counted);
                outcomes
            }
            Reply::Whole(whole) => {
                observe_request(&self.account.name, started, &whole);
                vec![whole.outcome(); request.rows.len()]
            }
        }
    }

    /// Reads conversion rule `id` (`GET /rest/conversions/{id}`): proves the token, the version and
    /// the rule without recording anything.
    async fn read_rule(&self, id: &str) -> Health {
        let mut path = format!("/rest/conversions/{id}");
        if let Some(account) = &self.ad_account_id {
            path.push_str(&format!("?account=urn%3Ali%3AsponsoredAccount%3A{account}"));
        }
        let response = match self.request(reqwest::Method::GET, &path).send().await {
            Ok(r) => super::http::Answer::read(r).await,
            Err(e) => return Health::fail(unreachable(&self.base, e)),
        };
        if response.status.is_success() {
            return Health::pass(format!(
                "conversion rule {id} readable with LinkedIn-Version {}",
                self.version
            ));
        }
        let context = (self.account.name.as_str(), self.version.as_str());
        match classify(response.status, None, &response.text, 0, context) {
            Reply::Whole(answer) => {
                Health::fail(format!("conversion rule {id}: {}", answer.error()))
            }
            Reply::PerElement(_) => {
                Health::fail(format!("conversion rule {id}: unexpected answer"))
            }
        }
    }
}

impl Destination for Linkedin {
    account_accessors!(Platform::Linkedin);

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let plan = self.plan(batch, Utc::now());
            let mut sent = Vec::with_capacity(batch.len());
            for request in &plan.requests {
                let outcomes = self.post(request, &plan.items).await;
                sent.extend(request.rows.iter().copied().zip(outcomes));
            }
            in_order(batch.len(), sent.into_iter().chain(plan.not_sent))
        })
    }

    /// One `BATCH_CREATE` with every event that can be sent.
    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        let url = format!("{}/rest/conversionEvents", self.base);
        Plan::encode(
            batch,
            |d| encode_event(d, now).map(|event| ((), event)),
            |_| Request::new(&url, "elements"),
        )
    }

    /// Reads each conversion rule the destination's rules name (the conversion endpoint itself has
    /// no read-only call); without any there is nothing to verify the token with, and it says so.
    fn healthcheck<'a>(&'a self, probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move {
            let mut ids: Vec<String> = probe
                .rules
                .iter()
                .filter_map(|r| r.linkedin.conversion_rule.as_deref())
                .map(|r| r.trim().trim_start_matches(RULE_PREFIX).to_string())
                .collect();
            ids.sort();
            ids.dedup();
            if ids.is_empty() {
                return Health::only(
                    true,
                    format!(
                        "LinkedIn-Version {}; access token present but NOT verified: no rule \
                         names a conversion rule to read",
                        self.version
                    ),
                );
            }
            let mut lines = Vec::with_capacity(ids.len());
            for id in &ids {
                lines.push(self.read_rule(id).await);
            }
            lines
        })
    }
}

#[cfg(test)]
mod tests;

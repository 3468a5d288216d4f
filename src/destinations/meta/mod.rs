//! Meta Conversions API: `POST {endpoint}/{version}/{pixel_id}/events` (platforms.md §1).
//!
//! Meta rejects a whole request for one bad event (§1.7) and one stale event fails the request (§1.3),
//! so events are checked before sending (age, usable match keys, website fields) and rejected batches
//! are bisected until the bad events stand alone. Meta cannot retract an event (§1.12, §7).

use super::batch::{Body, Plan, Request};
use super::event_fields::{self, account_accessors, Account};
use super::health::{field, unreachable, Health, HealthFuture, Probe};
use super::http::{base_url, Answer};
use super::{event_name, Destination, DestinationError, Outcome, SendFuture};
use crate::config::{ApiConfig, DispatchConfig, MetaConfig, Secret};
use crate::event::Delivery;
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Production Graph API host.
pub const DEFAULT_ENDPOINT: &str = "https://graph.facebook.com";
/// Graph API version: the default of `facebook-business` 26.0.3 (platforms.md, "Versions").
pub const DEFAULT_API_VERSION: &str = "v26.0";
/// Events per request (§1.2).
pub const MAX_EVENTS: usize = 1_000;
/// Oldest event Meta accepts, in days (§1.3).
pub const MAX_AGE_DAYS: i64 = 7;
/// Oldest `physical_store` event Meta accepts, in days (§1.3).
pub const MAX_AGE_PHYSICAL_STORE_DAYS: i64 = 62;

/// A Meta dataset (pixel) and the token that may write to it.
pub struct Meta {
    /// Name, batch size and client.
    account: Account,
    /// The Graph API host, without a trailing slash.
    base: String,
    /// `{version}/{pixel_id}`: the dataset read by the health check.
    pixel_path: String,
    /// The pixel (dataset) id.
    pixel_id: String,
    /// The events endpoint.
    url: String,
    /// The access token.
    access_token: Secret,
    /// Routes events to the platform's test tool.
    test_event_code: Option<String>,
}

impl Meta {
    /// Builds the destination `name` at `api` (or Meta's) for the dataset of `config`.
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &MetaConfig,
        dispatch: &DispatchConfig,
    ) -> Result<Meta, DestinationError> {
        let pixel_id = &config.pixel_id;
        let access_token = config.access_token.clone();
        let version = api.api_version.as_deref().unwrap_or(DEFAULT_API_VERSION);
        let base = base_url(&api.endpoint, DEFAULT_ENDPOINT);
        Ok(Meta {
            account: Account::new(name, api, MAX_EVENTS, dispatch)?,
            url: format!("{base}/{version}/{pixel_id}/events"),
            pixel_path: format!("{version}/{pixel_id}"),
            pixel_id: pixel_id.clone(),
            base,
            access_token,
            test_event_code: config.test_event_code.clone(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// Meta's `user_data` name for a match key; `None` for keys Meta has no use for (other platforms' ids).
/// Meta sends every value as a string, hashes too.
fn user_data_field(key: MatchKey) -> Option<&'static str> {
    match key {
        MatchKey::Fbc => Some("fbc"),
        MatchKey::Fbp => Some("fbp"),
        MatchKey::LeadId => Some("lead_id"),
        _ => event_fields::capi_field(key).map(|(name, _)| name),
    }
}

/// Whether `user_data` meets Meta's minimum matching requirement (§1.5): one identifying key, or IP with
/// user agent, or both names with a location or birth date.
fn has_usable_match_key(user: &Map<String, Value>) -> bool {
    let has = |k: &str| user.contains_key(k);
    ["em", "ph", "external_id", "fbc", "fbp", "lead_id"]
        .iter()
        .any(|k| has(k))
        || (has("client_ip_address") && has("client_user_agent"))
        || (has("fn") && has("ln") && ["zp", "ct", "st", "country", "db"].iter().any(|k| has(k)))
}

/// `action_source`: the rule's, else inferred (a page URL means website; a lead id means CRM).
fn action_source(d: &Delivery) -> &str {
    match d.action_source.as_deref() {
        Some(s) if !s.is_empty() => s,
        _ if d.payload.event_source_url.is_some() => "website",
        _ if d.payload.keys.contains_key(&MatchKey::LeadId) => "system_generated",
        _ => "other",
    }
}

/// Builds one server event, or the outcome that replaces sending it (checked as Meta would, so that
/// one bad event does not poison its batch).
pub fn encode_event(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    let source = action_source(d);
    let max_age = if source == "physical_store" {
        MAX_AGE_PHYSICAL_STORE_DAYS
    } else {
        MAX_AGE_DAYS
    };
    event_fields::fresh_conversion(d, now, "meta", max_age)?;
    let Some(name) = event_name(d) else {
        return Err(Outcome::failed("meta needs an event name (rule event)"));
    };
    let user = event_fields::plain_user(d, user_data_field);
    if !has_usable_match_key(&user) {
        return Err(Outcome::skipped("no usable match key for meta"));
    }
    if source == "website" {
        if d.payload.event_source_url.is_none() {
            return Err(Outcome::failed(
                "meta website events need event_source_url (rule event_source_url)",
            ));
        }
        if !user.contains_key("client_user_agent") {
            return Err(Outcome::failed(
                "meta website events need client_user_agent (match key user_agent)",
            ));
        }
    }
    let mut custom = event_fields::custom_value(d, "meta", false)?;
    if let Some(Value::String(c)) = custom.get_mut("currency") {
        // Meta's SDK sends ISO 4217 codes lowercased (§1.4, §8 item 19).
        *c = c.to_ascii_lowercase();
    }
    if source == "system_generated" {
        // CRM / Conversion Leads events (§1.11).
        custom.insert("event_source".into(), json!("crm"));
        if let Some(s) = d.payload.lead_event_source.as_deref() {
            custom.insert("lead_event_source".into(), json!(s));
        }
    }
    Ok(event_fields::capi_event(d, name, source, user, custom))
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

impl Meta {
    /// Sends `batch` with the pre-send checks (event age above all) made against `now`. A clock
    /// behind Meta's lets a stale event through the checks: Meta then rejects the whole request and
    /// bisection fails that event alone.
    async fn send_at(&self, batch: &[Delivery], now: DateTime<Utc>) -> Vec<Outcome> {
        let plan = (batch.len(), self.plan(batch, now));
        let token = [("access_token", self.access_token.expose())];
        let build =
            |r: &Request, body: Body<'_>| self.account.http.post(&r.url).query(&token).json(&body);
        (self.account)
            .send_bisected("meta", plan, build, classify)
            .await
    }

    /// The health check: a read of the pixel with the token (`GET /{version}/{pixel}?fields=id`),
    /// so nothing is sent even when `test_event_code` is set (Meta does not promise that test events
    /// stay out of reporting).
    async fn check(&self) -> (bool, String) {
        let (base, path, pixel) = (&self.base, &self.pixel_path, &self.pixel_id);
        let response = (self.account.http)
            .get(format!("{base}/{path}"))
            .query(&[
                ("fields", "id"),
                ("access_token", self.access_token.expose()),
            ])
            .send()
            .await;
        let answer = match response {
            Ok(r) => Answer::read(r).await,
            Err(e) => return (false, unreachable(base, e)),
        };
        let (status, body) = (answer.status, answer.json());
        if status.is_success() {
            if field(&body, "id") != pixel {
                return (
                    false,
                    format!("GET /{path} answered without the pixel's id"),
                );
            }
            let mut text = format!(
                "access token accepted, pixel {pixel} readable (GET /{path}?fields=id; nothing sent)"
            );
            if let Some(code) = &self.test_event_code {
                text.push_str(&format!(
                    "; test_event_code {code} is set: events go to the Test Events tool"
                ));
            }
            return (true, text);
        }
        let error = body.get("error").unwrap_or(&Value::Null);
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
        let graph = format!("Graph error {code}: {}", field(error, "message"));
        let text = match code {
            102 | 104 | 190 => format!("access token rejected ({graph})"),
            100 | 803 => {
                format!("pixel {pixel} not found or not readable with this token ({graph})")
            }
            10 | 200..=299 => format!("the token lacks permission on pixel {pixel} ({graph})"),
            0 => format!("HTTP {status} from {base}: not a Graph API answer"),
            _ => format!("HTTP {status}: {graph}"),
        };
        (false, text)
    }
}

impl Destination for Meta {
    account_accessors!(Platform::Meta);

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(self.send_at(batch, Utc::now()))
    }

    /// One request with every event that passed the checks; the token travels in the query string,
    /// as Meta documents it.
    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        Plan::encode(
            batch,
            |d| encode_event(d, now).map(|event| ((), event)),
            |()| {
                let request = Request::new(&self.url, "data");
                match &self.test_event_code {
                    Some(code) => request.with("test_event_code", code.as_str()),
                    None => request,
                }
            },
        )
    }

    fn healthcheck<'a>(&'a self, _probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move {
            let (ok, text) = self.check().await;
            Health::only(ok, text)
        })
    }
}

mod classify;
pub use classify::classify;

#[cfg(test)]
mod tests;

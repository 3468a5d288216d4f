//! TikTok Events API 2.0: `POST {endpoint}/open_api/v1.3/event/track/` (platforms.md §3).
//!
//! TikTok answers HTTP 200 with a JSON `code` that decides the outcome: 0 is success; one bad event
//! fails the whole request, so rejected batches are bisected like Meta's. `event_source` is an envelope
//! field, so web and CRM events travel in separate requests: web events to the pixel (`pixel_code`),
//! CRM events (`action_source = "system_generated"`) to the CRM event set (`crm_event_set_id`), with
//! the TikTok lead as `lead.{lead_id, lead_event_source}` (platform-audit.md T4). TikTok cannot
//! retract (§7).
//!
//! Event names: the rule's event (or `[rules.tiktok] event`) is sent as is. TikTok's current standard
//! names are `Purchase` and `Lead` (renamed from `CompletePayment` and `SubmitForm` in May 2025; the
//! legacy names are still converted by TikTok), so a rule's `Purchase` needs no override.

use super::batch::{Body, Plan, Request};
use super::event_fields::{self, account_accessors, Account};
use super::health::{field, synthetic, unreachable, Health, HealthFuture, Probe};
use super::http::{base_url, Answer};
use super::{event_name, Destination, DestinationError, Outcome, SendFuture};
use crate::config::{ApiConfig, DispatchConfig, Secret, TiktokConfig};
use crate::event::Delivery;
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Production TikTok Business API host.
pub const DEFAULT_ENDPOINT: &str = "https://business-api.tiktok.com";
/// Business API version (§3).
pub const DEFAULT_API_VERSION: &str = "v1.3";
/// Events per request (§3).
pub const MAX_EVENTS: usize = 1_000;
/// TikTok publishes no event-age limit; platforms.md §3 calls anything older than 7 days risky.
pub const MAX_AGE_DAYS: i64 = 7;
/// Response code of a successful request.
const CODE_OK: i64 = 0;
/// Response code of an authentication error (§3).
const CODE_AUTH: i64 = 40_001;
/// Response code of rate limiting (§3).
const CODE_RATE_LIMIT: i64 = 40_100;

/// A TikTok pixel and the token that may write to it.
pub struct Tiktok {
    /// Name, batch size and client.
    account: Account,
    /// The Business API host, without a trailing slash.
    base: String,
    /// The events endpoint.
    url: String,
    /// The access token.
    access_token: Secret,
    /// `event_source_id` of web events.
    pixel_code: String,
    /// `event_source_id` of CRM events.
    crm_event_set_id: Option<String>,
    /// Routes events to the platform's test tool.
    test_event_code: Option<String>,
}

impl Tiktok {
    /// Builds the destination `name` at `api` (or TikTok's) for the pixel of `config`.
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &TiktokConfig,
        dispatch: &DispatchConfig,
    ) -> Result<Tiktok, DestinationError> {
        let version = api.api_version.as_deref().unwrap_or(DEFAULT_API_VERSION);
        let base = base_url(&api.endpoint, DEFAULT_ENDPOINT);
        Ok(Tiktok {
            account: Account::new(name, api, MAX_EVENTS, dispatch)?,
            url: format!("{base}/open_api/{version}/event/track/"),
            base,
            access_token: config.access_token.clone(),
            pixel_code: config.pixel_code.clone(),
            crm_event_set_id: config
                .crm_event_set_id
                .clone()
                .filter(|s| !s.trim().is_empty()),
            test_event_code: config.test_event_code.clone(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// TikTok's `user` name for a match key; `None` for keys TikTok's `user` does not take here.
fn user_field(key: MatchKey) -> Option<&'static str> {
    Some(match key {
        MatchKey::Email => "email",
        MatchKey::Phone => "phone",
        MatchKey::ExternalId => "external_id",
        MatchKey::Ttclid => "ttclid",
        MatchKey::Ttp => "ttp",
        MatchKey::ClientIp => "ip",
        MatchKey::UserAgent => "user_agent",
        _ => return None,
    })
}

/// `event_source`: `crm` for CRM events (`action_source = system_generated`), else `web` (§3).
pub fn event_source(d: &Delivery) -> &'static str {
    if d.action_source.as_deref() == Some("system_generated") {
        "crm"
    } else {
        "web"
    }
}

/// Builds one event, or the outcome that replaces sending it.
pub fn encode_event(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    event_fields::fresh_conversion(d, now, "tiktok", MAX_AGE_DAYS)?;
    let Some(name) = event_name(d) else {
        return Err(Outcome::failed("tiktok needs an event name (rule event)"));
    };
    let user = event_fields::plain_user(d, user_field);
    // A CRM event names TikTok's lead in `lead`, not in `user`.
    let lead = match (event_source(d), d.payload.keys.get(&MatchKey::LeadId)) {
        ("crm", Some(lead_id)) => {
            let mut lead = Map::new();
            lead.insert("lead_id".into(), json!(lead_id));
            if let Some(source) = d.payload.lead_event_source.as_deref() {
                lead.insert("lead_event_source".into(), json!(source));
            }
            Some(Value::Object(lead))
        }
        _ => None,
    };
    let has = |k: &str| user.contains_key(k);
    let usable = ["email", "phone", "external_id", "ttclid", "ttp"]
        .iter()
        .any(|k| has(k))
        || (has("ip") && has("user_agent"))
        || lead.is_some();
    if !usable {
        return Err(Outcome::skipped("no usable match key for tiktok"));
    }
    let mut event = Map::new();
    event.insert("event".into(), json!(name));
    event.insert("event_time".into(), json!(d.event_time.timestamp()));
    event.insert("event_id".into(), json!(d.event_id));
    event.insert("user".into(), Value::Object(user));
    if let Some(lead) = lead {
        event.insert("lead".into(), lead);
    }
    let mut properties = event_fields::custom_value(d, "tiktok", false)?;
    // Recommended Purchase parameters, when the rule maps them: the items and their type.
    if let Some(ids) = d.payload.content_ids.as_deref() {
        let contents: Vec<Value> = ids
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(|id| json!({ "content_id": id }))
            .collect();
        if !contents.is_empty() {
            properties.insert("contents".into(), Value::Array(contents));
        }
    }
    if let Some(kind) = d.payload.content_type.as_deref() {
        properties.insert("content_type".into(), json!(kind.trim()));
    }
    if !properties.is_empty() {
        event.insert("properties".into(), Value::Object(properties));
    }
    if let Some(url) = d.payload.event_source_url.as_deref() {
        event.insert("page".into(), json!({ "url": url }));
    }
    Ok(Value::Object(event))
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

impl Tiktok {
    /// The HTTP request of `request` carrying `body`, with the token in TikTok's header.
    fn build(&self, request: &Request, body: Body<'_>) -> reqwest::RequestBuilder {
        (self.account.http.post(&request.url))
            .header("Access-Token", self.access_token.expose())
            .json(&body)
    }

    /// The request of web events (`crm` false: to the pixel) or CRM events (to the CRM event set).
    fn request(&self, crm: bool) -> Request {
        let (source, id) = match (crm, &self.crm_event_set_id) {
            (true, Some(set)) => ("crm", set),
            (true, None) => ("crm", &self.pixel_code),
            (false, _) => ("web", &self.pixel_code),
        };
        let request = Request::new(&self.url, "data")
            .with("event_source", source)
            .with("event_source_id", id.as_str());
        match &self.test_event_code {
            Some(code) => request.with("test_event_code", code.as_str()),
            None => request,
        }
    }

    /// The health check. TikTok documents no read-only call: with `test_event_code` set, one
    /// synthetic event is sent with that code (it shows in the Test Events tool only); without it
    /// only the endpoint is reached and the token's presence is checked, and the line says the token
    /// was not verified.
    async fn check(&self) -> (bool, String) {
        let (base, pixel) = (&self.base, &self.pixel_code);
        let token = self.access_token.expose();
        if token.trim().is_empty() || token.chars().any(char::is_whitespace) {
            return (false, "access token is empty or contains whitespace".into());
        }
        let Some(code) = &self.test_event_code else {
            return match self.account.http.get(&self.url).send().await {
                Ok(r) => (
                    true,
                    format!(
                        "endpoint {base} reachable (HTTP {}); access token present but NOT \
                         verified: TikTok documents no read-only call; set test_event_code to \
                         verify it with a test event",
                        r.status().as_u16()
                    ),
                ),
                Err(e) => (false, unreachable(base, e)),
            };
        };
        let plan = self.plan(&[synthetic(&self.account.name, None)], Utc::now());
        if let Some((_, outcome)) = plan.not_sent.first() {
            return (false, format!("cannot build the test event: {outcome:?}"));
        }
        let request = &plan.requests[0];
        let body = request.body(&plan.items, &request.rows);
        let response = self.build(request, body).send().await;
        let answer = match response {
            Ok(r) => Answer::read(r).await,
            Err(e) => return (false, unreachable(base, e)),
        };
        let body = answer.json();
        let message = field(&body, "message");
        match body.get("code").and_then(Value::as_i64) {
            Some(0) => (
                true,
                format!(
                    "access token and pixel {pixel} accepted one synthetic test event \
                     (test_event_code {code}: it shows in the Test Events tool only)"
                ),
            ),
            Some(c @ 40001) => (
                false,
                format!("access token rejected (code {c}: {message})"),
            ),
            Some(c) => (false, format!("test event refused (code {c}: {message})")),
            None => (
                false,
                format!(
                    "HTTP {} from {base}: not an Events API answer",
                    answer.status
                ),
            ),
        }
    }
}

impl Destination for Tiktok {
    account_accessors!(Platform::Tiktok);

    /// Web events, then CRM events: `event_source` is an envelope field, so they travel apart. CRM
    /// events fail without a CRM event set.
    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        let crm_set = self.crm_event_set_id.is_some();
        Plan::encode(
            batch,
            |d| {
                let crm = event_source(d) == "crm";
                match encode_event(d, now) {
                    Ok(_) if crm && !crm_set => Err(Outcome::failed(
                        "tiktok: a CRM event (action_source system_generated) goes to a CRM event \
                         set: set crm_event_set_id in the destination",
                    )),
                    encoded => encoded.map(|event| (crm, event)),
                }
            },
            |&crm| self.request(crm),
        )
    }

    fn healthcheck<'a>(&'a self, _probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move {
            let (ok, text) = self.check().await;
            Health::only(ok, text)
        })
    }

    /// The planned requests, bisected when TikTok rejects one.
    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        let plan = (batch.len(), self.plan(batch, Utc::now()));
        let build = |r: &Request, body: Body<'_>| self.build(r, body);
        Box::pin(self.account.send_bisected("tiktok", plan, build, classify))
    }
}

mod classify;
pub use classify::classify;

#[cfg(test)]
mod tests;

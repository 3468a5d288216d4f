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

use super::batch::{in_order, observe_request, send_isolated, BatchAnswer, Plan, Request};
use super::health::{field, synthetic, unreachable, Health, HealthFuture, Probe};
use super::http::{base_url, excerpt, is_retryable_status, read_answer, Answer};
use super::{
    batch_size, event_name, value_number, Destination, DestinationError, Outcome, SendFuture,
    OPERATOR_RETRY_FLOOR,
};
use crate::config::{ApiConfig, DispatchConfig, Secret, TiktokConfig};
use crate::event::{Delivery, Kind};
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::{DateTime, TimeDelta, Utc};
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
    /// The config name.
    name: String,
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
    /// Events per request.
    max_batch: usize,
    /// The HTTP client.
    http: reqwest::Client,
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
            name: name.to_string(),
            url: format!("{base}/open_api/{version}/event/track/"),
            base,
            access_token: config.access_token.clone(),
            pixel_code: config.pixel_code.clone(),
            crm_event_set_id: config
                .crm_event_set_id
                .clone()
                .filter(|s| !s.trim().is_empty()),
            test_event_code: config.test_event_code.clone(),
            max_batch: batch_size(api, MAX_EVENTS),
            http: super::http::http_client(name, dispatch)?,
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
    if d.kind != Kind::Conversion {
        return Err(Outcome::skipped("platform cannot retract"));
    }
    if d.event_time < now - TimeDelta::days(MAX_AGE_DAYS) {
        return Err(Outcome::skipped(format!(
            "too old for tiktok ({MAX_AGE_DAYS} days)"
        )));
    }
    let Some(name) = event_name(d) else {
        return Err(Outcome::failed("tiktok needs an event name (rule event)"));
    };
    let mut user = Map::new();
    for (key, value) in &d.payload.keys {
        if let Some(field) = user_field(*key) {
            user.insert(field.to_string(), json!(value));
        }
    }
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
    let mut properties = Map::new();
    match value_number(d) {
        Ok(Some(v)) => {
            properties.insert("value".into(), Value::Number(v));
        }
        Ok(None) => {}
        Err(e) => return Err(Outcome::failed(format!("tiktok: {e}"))),
    }
    if let Some(c) = d.currency.as_deref().filter(|c| !c.is_empty()) {
        properties.insert("currency".into(), json!(c.to_ascii_uppercase()));
    }
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
    /// Sends one request with the events at `rows` of `items`.
    async fn post(&self, request: &Request, items: &[Value], rows: &[usize]) -> BatchAnswer {
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(&request.url)
            .header("Access-Token", self.access_token.expose())
            .json(&request.body(items, rows))
            .send()
            .await;
        let answer = read_answer("tiktok", response, classify).await;
        observe_request(&self.name, started, &answer);
        answer
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
            return match self.http.get(&self.url).send().await {
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
        let plan = self.plan(&[synthetic(&self.name, None)], Utc::now());
        if let Some((_, outcome)) = plan.not_sent.first() {
            return (false, format!("cannot build the test event: {outcome:?}"));
        }
        let request = &plan.requests[0];
        let response = self
            .http
            .post(&request.url)
            .header("Access-Token", token)
            .json(&request.body(&plan.items, &request.rows))
            .send()
            .await;
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
    fn name(&self) -> &str {
        &self.name
    }

    fn platform(&self) -> Platform {
        Platform::Tiktok
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let plan = self.plan(batch, Utc::now());
            let items = &plan.items;
            let sent = send_isolated(&plan, |request, part| async move {
                self.post(request, items, &part).await
            })
            .await;
            in_order(batch.len(), sent.into_iter().chain(plan.not_sent))
        })
    }

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
}

// ---------------------------------------------------------------------------------------------
// Response classification
// ---------------------------------------------------------------------------------------------

/// Turns TikTok's answer into a batch answer: the body's `code` decides (0 sent, 40100 and 5xxxx system
/// errors retried, 40001 held back for the operator, anything else blamed on the events and bisected).
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &str,
) -> BatchAnswer {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_i64);
    let (Some(code), true) = (code, status.is_success()) else {
        let message = match parsed
            .as_ref()
            .and_then(|v| v.get("message"))
            .and_then(Value::as_str)
        {
            Some(m) => format!("tiktok: HTTP {}: {m}", status.as_u16()),
            None => format!("tiktok: HTTP {}: {}", status.as_u16(), excerpt(body)),
        };
        return if is_retryable_status(status) {
            BatchAnswer::Retry {
                error: message,
                retry_after,
            }
        } else if matches!(status.as_u16(), 401 | 403) {
            BatchAnswer::Retry {
                error: message,
                retry_after: Some(retry_after.unwrap_or_default().max(OPERATOR_RETRY_FLOOR)),
            }
        } else {
            BatchAnswer::Rejected(message)
        };
    };
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
    };
    if code == CODE_OK {
        return BatchAnswer::Sent(field("request_id").map(str::to_string));
    }
    let mut message = format!(
        "tiktok: code {code}: {}",
        field("message").unwrap_or("(no message)")
    );
    if let Some(id) = field("request_id") {
        message.push_str(&format!(" [request_id {id}]"));
    }
    match code {
        CODE_RATE_LIMIT | 50_000..=59_999 => BatchAnswer::Retry {
            error: message,
            retry_after,
        },
        CODE_AUTH => BatchAnswer::Retry {
            error: message,
            retry_after: Some(retry_after.unwrap_or_default().max(OPERATOR_RETRY_FLOOR)),
        },
        _ => BatchAnswer::Rejected(message),
    }
}

#[cfg(test)]
mod tests;

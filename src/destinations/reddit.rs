//! Reddit Conversions API v3: `POST {endpoint}/api/v3/pixels/{pixel_id}/conversion_events` (platforms-next.md §5).
//!
//! Body `{"data": {"events": […], "test_id": …}}` with up to 1,000 events, `event_at` in epoch
//! **milliseconds**, a required `action_source`, `type.tracking_type` (a rule's `Purchase` becomes
//! `PURCHASE`; an event Reddit has no type for becomes `CUSTOM` with `custom_event_name`), the
//! `rdt_cid` as `click_id`, hashed email, phone and external id, and `metadata.conversion_id` = the
//! row's event id, Reddit's dedup key (within 2 days, per event type and action source).
//!
//! One invalid event fails the whole request ("There were N invalid conversion events. None were
//! processed."), so rejected batches are bisected until the bad event stands alone. Reddit throttles
//! library default user agents; pgcapi always sends its own. Events older than 7 days are skipped
//! (Reddit takes none older); Reddit cannot retract, so a refund of a sent conversion is skipped.
//! `test_event_code` is sent as `test_id` (Ads Manager → Event Testing).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::batch::{BatchAnswer, Body, Plan, Request};
use super::event_fields::{self, account_accessors, by_status, said, Account};
use super::health::{synthetic, Health, HealthFuture, Probe};
use super::http::base_url;
use super::{event_name, Destination, DestinationError, Outcome, Preview, SendFuture};
use crate::config::{ApiConfig, DispatchConfig, RedditConfig, Secret};
use crate::event::Delivery;
use crate::identity::MatchKey;
use crate::platform::Platform;

/// Production API host.
pub const DEFAULT_ENDPOINT: &str = "https://ads-api.reddit.com";
/// Events per request.
pub const MAX_EVENTS: usize = 1_000;
/// Reddit takes events up to this many days old.
pub const MAX_AGE_DAYS: i64 = 7;
/// Longest custom event name.
const MAX_CUSTOM_NAME: usize = 64;
/// Rule event names (any case, without `_`) and Reddit's tracking types.
const TRACKING_TYPES: &[(&str, &str)] = &[
    ("pagevisit", "PAGE_VISIT"),
    ("pageview", "PAGE_VISIT"),
    ("viewcontent", "VIEW_CONTENT"),
    ("search", "SEARCH"),
    ("addtocart", "ADD_TO_CART"),
    ("addtowishlist", "ADD_TO_WISHLIST"),
    ("purchase", "PURCHASE"),
    ("lead", "LEAD"),
    ("signup", "SIGN_UP"),
    ("completeregistration", "SIGN_UP"),
];

/// A Reddit pixel and its conversion access token.
pub struct Reddit {
    /// Name, batch size and client.
    account: Account,
    /// The conversion events URL.
    url: String,
    /// The conversion access token.
    access_token: Secret,
    /// Sent as `test_id`: routes events to Event Testing.
    test_id: Option<String>,
}

impl Reddit {
    /// Builds the destination.
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &RedditConfig,
        dispatch: &DispatchConfig,
    ) -> Result<Reddit, DestinationError> {
        Ok(Reddit {
            account: Account::new(name, api, MAX_EVENTS, dispatch)?,
            url: format!(
                "{}/api/v3/pixels/{}/conversion_events",
                base_url(&api.endpoint, DEFAULT_ENDPOINT),
                config.pixel_id
            ),
            access_token: config.access_token.clone(),
            test_id: config
                .test_event_code
                .clone()
                .filter(|c| !c.trim().is_empty()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// `type`: the tracking type of a known event name (or a tracking type itself), else a custom event.
pub fn event_type(name: &str) -> Result<Value, Outcome> {
    let name = name.trim();
    let folded: String = name
        .chars()
        .filter(|c| *c != '_' && *c != ' ')
        .flat_map(char::to_lowercase)
        .collect();
    if let Some((_, kind)) = TRACKING_TYPES.iter().find(|(n, _)| *n == folded) {
        return Ok(json!({ "tracking_type": kind }));
    }
    if name.is_empty() || name.chars().count() > MAX_CUSTOM_NAME {
        return Err(Outcome::failed(format!(
            "reddit: a custom event name must have 1 to {MAX_CUSTOM_NAME} characters"
        )));
    }
    Ok(json!({"tracking_type": "CUSTOM", "custom_event_name": name}))
}

/// `action_source` from the rule's (Meta-style) action source; Reddit's default is the website.
fn action_source(d: &Delivery) -> &'static str {
    match d.action_source.as_deref().map(str::trim) {
        Some("app") => "APP",
        Some("physical_store") => "PHYSICAL_STORE",
        Some("website") | None => "WEBSITE",
        Some(_) => "OTHER",
    }
}

/// Reddit's `user` name for a match key.
fn user_field(key: MatchKey) -> Option<&'static str> {
    Some(match key {
        MatchKey::Email => "email",
        MatchKey::Phone => "phone_number",
        MatchKey::ExternalId => "external_id",
        MatchKey::ClientIp => "ip_address",
        MatchKey::UserAgent => "user_agent",
        _ => return None,
    })
}

/// Builds one event, or the outcome that replaces sending it.
pub fn encode_event(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    event_fields::fresh_conversion(d, now, "reddit", MAX_AGE_DAYS)?;
    let Some(name) = event_name(d) else {
        return Err(Outcome::failed("reddit needs an event name (rule event)"));
    };
    let user = event_fields::plain_user(d, user_field);
    let click = d.payload.keys.get(&MatchKey::RdtCid);
    let has = |k: &str| user.contains_key(k);
    let usable = click.is_some()
        || ["email", "phone_number", "external_id"]
            .iter()
            .any(|k| has(k))
        || (has("ip_address") && has("user_agent"));
    if !usable {
        return Err(Outcome::skipped("no usable match key for reddit"));
    }
    let mut metadata = event_fields::custom_value(d, "reddit", false)?;
    metadata.insert("conversion_id".into(), json!(d.event_id));
    let mut event = Map::new();
    event.insert("event_at".into(), json!(d.event_time.timestamp_millis()));
    event.insert("action_source".into(), json!(action_source(d)));
    event.insert("type".into(), event_type(name)?);
    if let Some(click) = click {
        event.insert("click_id".into(), json!(click));
    }
    if let Some(url) = d.payload.event_source_url.as_deref() {
        event.insert("event_source_url".into(), json!(url));
    }
    if !user.is_empty() {
        event.insert("user".into(), Value::Object(user));
    }
    event.insert("metadata".into(), Value::Object(metadata));
    Ok(Value::Object(event))
}

// ---------------------------------------------------------------------------------------------
// Response classification
// ---------------------------------------------------------------------------------------------

/// Turns Reddit's answer into a batch answer: 2xx sent; 400 blamed on the events (bisected); 401 and
/// 403 held back for the operator; 429, 408 and 5xx retried.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &str,
) -> BatchAnswer {
    if status.is_success() {
        return BatchAnswer::Sent(None);
    }
    let error = format!(
        "reddit: HTTP {}: {}",
        status.as_u16(),
        said(body, "message")
    );
    by_status(status, retry_after, error, &[401, 403])
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Reddit's body wraps the request's fields and events in `data`.
#[derive(serde::Serialize)]
struct Wrapped<T> {
    data: T,
}

impl Reddit {
    /// The HTTP request of `request` carrying `body` wrapped in `data`, with the bearer token.
    fn build(&self, request: &Request, body: Body<'_>) -> reqwest::RequestBuilder {
        (self.account.http.post(&request.url))
            .bearer_auth(self.access_token.expose())
            .json(&Wrapped { data: body })
    }
}

impl Destination for Reddit {
    account_accessors!(Platform::Reddit);

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        let plan = (batch.len(), self.plan(batch, Utc::now()));
        let build = |r: &Request, body: Body<'_>| self.build(r, body);
        Box::pin(self.account.send_bisected("reddit", plan, build, classify))
    }

    /// One request with every event that can be sent (and the test id, in test mode).
    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        let request = match &self.test_id {
            Some(id) => Request::new(&self.url, "events").with("test_id", id.as_str()),
            None => Request::new(&self.url, "events"),
        };
        Plan::encode(
            batch,
            |d| encode_event(d, now).map(|event| ((), event)),
            |_| request.clone(),
        )
    }

    /// The plan's requests, each body wrapped in `data` as [`Reddit::build`] sends it.
    fn preview(&self, batch: &[Delivery]) -> Preview {
        let mut preview = self.plan(batch, Utc::now()).preview();
        for request in &mut preview.requests {
            request.body = json!({ "data": request.body.take() });
        }
        preview
    }

    /// Reddit documents no read-only call for conversion tokens. With `test_event_code` set, one
    /// synthetic event goes to Event Testing (never counted as a conversion); without it the token
    /// is not verified, and the line says so.
    fn healthcheck<'a>(&'a self, _probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move {
            let Some(test_id) = &self.test_id else {
                return Health::only(
                    true,
                    "access token present but NOT verified: Reddit documents no read-only call \
                     for conversion tokens; set test_event_code to verify it with an Event \
                     Testing event",
                );
            };
            let plan = self.plan(&[synthetic(&self.account.name, None)], Utc::now());
            let Some(request) = plan.requests.first() else {
                return Health::only(
                    false,
                    format!("cannot build the test event: {:?}", plan.not_sent),
                );
            };
            let body = request.body(&plan.items, &request.rows);
            match self
                .account
                .post("reddit", self.build(request, body), classify)
                .await
            {
                BatchAnswer::Sent(_) => Health::only(
                    true,
                    format!(
                        "access token and pixel accepted one synthetic event (test_id {test_id}: \
                         it shows in Event Testing only)"
                    ),
                ),
                answer => Health::only(false, answer.error()),
            }
        })
    }
}

#[cfg(test)]
mod tests;

//! Meta Conversions API: `POST {endpoint}/{version}/{pixel_id}/events` (platforms.md §1).
//!
//! Meta rejects a whole request for one bad event (§1.7) and one stale event fails the request (§1.3),
//! so events are checked before sending (age, usable match keys, website fields) and rejected batches
//! are bisected until the bad events stand alone. Meta cannot retract an event (§1.12, §7).

use super::batch::{in_order, observe_request, send_isolated, BatchAnswer, Plan, Request};
use super::health::{field, unreachable, Health, HealthFuture, Probe};
use super::http::{base_url, excerpt, is_retryable_status, read_answer, Answer};
use super::{
    batch_size, event_name, value_number, Destination, DestinationError, Outcome, SendFuture,
    OPERATOR_RETRY_FLOOR,
};
use crate::config::{ApiConfig, DispatchConfig, MetaConfig, Secret};
use crate::event::{Delivery, Kind};
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::{DateTime, TimeDelta, Utc};
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
    /// The config name.
    name: String,
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
    /// Events per request.
    max_batch: usize,
    /// The HTTP client.
    http: reqwest::Client,
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
            name: name.to_string(),
            url: format!("{base}/{version}/{pixel_id}/events"),
            pixel_path: format!("{version}/{pixel_id}"),
            pixel_id: pixel_id.clone(),
            base,
            access_token,
            test_event_code: config.test_event_code.clone(),
            max_batch: batch_size(api, MAX_EVENTS),
            http: super::http::http_client(name, dispatch)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// Meta's `user_data` name for a match key; `None` for keys Meta has no use for (other platforms' ids).
fn user_data_field(key: MatchKey) -> Option<&'static str> {
    Some(match key {
        MatchKey::Email => "em",
        MatchKey::Phone => "ph",
        MatchKey::FirstName => "fn",
        MatchKey::LastName => "ln",
        MatchKey::City => "ct",
        MatchKey::State => "st",
        MatchKey::Zip => "zp",
        MatchKey::Country => "country",
        MatchKey::ExternalId => "external_id",
        MatchKey::DateOfBirth => "db",
        MatchKey::Gender => "ge",
        MatchKey::ClientIp => "client_ip_address",
        MatchKey::UserAgent => "client_user_agent",
        MatchKey::Fbc => "fbc",
        MatchKey::Fbp => "fbp",
        MatchKey::LeadId => "lead_id",
        MatchKey::Gclid
        | MatchKey::Gbraid
        | MatchKey::Wbraid
        | MatchKey::Ttclid
        | MatchKey::Ttp
        | MatchKey::Msclkid
        | MatchKey::ObClickId
        | MatchKey::TaboolaClickId => return None,
        MatchKey::LiFatId | MatchKey::RdtCid => return None,
        MatchKey::ScClickId | MatchKey::Epik => return None,
    })
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
    if d.kind != Kind::Conversion {
        return Err(Outcome::skipped("platform cannot retract"));
    }
    let source = action_source(d);
    let max_age = if source == "physical_store" {
        MAX_AGE_PHYSICAL_STORE_DAYS
    } else {
        MAX_AGE_DAYS
    };
    if d.event_time < now - TimeDelta::days(max_age) {
        return Err(Outcome::skipped(format!(
            "too old for meta ({max_age} days)"
        )));
    }
    let Some(name) = event_name(d) else {
        return Err(Outcome::failed("meta needs an event name (rule event)"));
    };
    let mut user = Map::new();
    for (key, value) in &d.payload.keys {
        if let Some(field) = user_data_field(*key) {
            user.insert(field.to_string(), Value::String(value.clone()));
        }
    }
    if !has_usable_match_key(&user) {
        return Err(Outcome::skipped("no usable match key for meta"));
    }
    let mut event = Map::new();
    event.insert("event_name".into(), json!(name));
    event.insert("event_time".into(), json!(d.event_time.timestamp()));
    event.insert("event_id".into(), json!(d.event_id));
    event.insert("action_source".into(), json!(source));
    if source == "website" {
        let Some(url) = d.payload.event_source_url.as_deref() else {
            return Err(Outcome::failed(
                "meta website events need event_source_url (rule event_source_url)",
            ));
        };
        if !user.contains_key("client_user_agent") {
            return Err(Outcome::failed(
                "meta website events need client_user_agent (match key user_agent)",
            ));
        }
        event.insert("event_source_url".into(), json!(url));
    } else if let Some(url) = d.payload.event_source_url.as_deref() {
        event.insert("event_source_url".into(), json!(url));
    }
    event.insert("user_data".into(), Value::Object(user));
    let mut custom = Map::new();
    match value_number(d) {
        Ok(Some(v)) => {
            custom.insert("value".into(), Value::Number(v));
        }
        Ok(None) => {}
        Err(e) => return Err(Outcome::failed(format!("meta: {e}"))),
    }
    if let Some(c) = d.currency.as_deref().filter(|c| !c.is_empty()) {
        // Meta's SDK sends ISO 4217 codes lowercased (§1.4, §8 item 19).
        custom.insert("currency".into(), json!(c.to_ascii_lowercase()));
    }
    if source == "system_generated" {
        // CRM / Conversion Leads events (§1.11).
        custom.insert("event_source".into(), json!("crm"));
        if let Some(s) = d.payload.lead_event_source.as_deref() {
            custom.insert("lead_event_source".into(), json!(s));
        }
    }
    if !custom.is_empty() {
        event.insert("custom_data".into(), Value::Object(custom));
    }
    Ok(Value::Object(event))
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

impl Meta {
    /// Sends `batch` with the pre-send checks (event age above all) made against `now`. A clock
    /// behind Meta's lets a stale event through the checks: Meta then rejects the whole request and
    /// bisection fails that event alone.
    async fn send_at(&self, batch: &[Delivery], now: DateTime<Utc>) -> Vec<Outcome> {
        let plan = self.plan(batch, now);
        let items = &plan.items;
        let sent = send_isolated(&plan, |request, part| async move {
            self.post(request, items, &part).await
        })
        .await;
        in_order(batch.len(), sent.into_iter().chain(plan.not_sent))
    }

    /// Sends one request with the events at `rows` of `items`.
    async fn post(&self, request: &Request, items: &[Value], rows: &[usize]) -> BatchAnswer {
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(&request.url)
            .query(&[("access_token", self.access_token.expose())])
            .json(&request.body(items, rows))
            .send()
            .await;
        let answer = read_answer("meta", response, classify).await;
        observe_request(&self.name, started, &answer);
        answer
    }

    /// The health check: a read of the pixel with the token (`GET /{version}/{pixel}?fields=id`),
    /// so nothing is sent even when `test_event_code` is set (Meta does not promise that test events
    /// stay out of reporting).
    async fn check(&self) -> (bool, String) {
        let (base, path, pixel) = (&self.base, &self.pixel_path, &self.pixel_id);
        let response = self
            .http
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
    fn name(&self) -> &str {
        &self.name
    }

    fn platform(&self) -> Platform {
        Platform::Meta
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

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

// ---------------------------------------------------------------------------------------------
// Response classification
// ---------------------------------------------------------------------------------------------

/// Graph error codes that mean "try again later": unknown/temporary errors and throttling (§1.7).
fn is_transient_code(code: i64) -> bool {
    matches!(code, 1 | 2 | 4 | 17 | 32 | 341 | 613) || (80_000..=80_099).contains(&code)
}

/// Graph error codes about the token or its permissions: no event is to blame.
fn is_auth_code(code: i64) -> bool {
    matches!(code, 10 | 102 | 190) || (200..=299).contains(&code)
}

/// Turns Meta's answer into a batch answer. A 200 accepts the whole batch; a Graph error envelope is
/// retried when transient, held back (auth) when the token is at fault, and otherwise blamed on the
/// batch's events (to be bisected).
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &str,
) -> BatchAnswer {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if status.is_success() {
        let trace = parsed
            .as_ref()
            .and_then(|v| v.get("fbtrace_id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        return BatchAnswer::Sent(trace);
    }
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let Some(error) = error else {
        let message = format!("meta: HTTP {}: {}", status.as_u16(), excerpt(body));
        return if is_retryable_status(status) {
            BatchAnswer::Retry {
                error: message,
                retry_after,
            }
        } else {
            BatchAnswer::Rejected(message)
        };
    };
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let message = describe(status, error);
    let transient = error.get("is_transient").and_then(Value::as_bool) == Some(true);
    if is_retryable_status(status) || transient || is_transient_code(code) {
        BatchAnswer::Retry {
            error: message,
            retry_after,
        }
    } else if is_auth_code(code) || status == reqwest::StatusCode::UNAUTHORIZED {
        BatchAnswer::Retry {
            error: message,
            retry_after: Some(retry_after.unwrap_or_default().max(OPERATOR_RETRY_FLOOR)),
        }
    } else {
        BatchAnswer::Rejected(message)
    }
}

/// Meta's error, verbatim: type, code, subcode, message and the user-facing title and text.
fn describe(status: reqwest::StatusCode, error: &Value) -> String {
    let s = |k: &str| {
        error
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let n = |k: &str| error.get(k).and_then(Value::as_i64);
    let mut out = format!("meta: HTTP {}", status.as_u16());
    if let Some(t) = s("type") {
        out.push_str(&format!(" {t}"));
    }
    if let Some(c) = n("code") {
        out.push_str(&format!(" code {c}"));
    }
    if let Some(c) = n("error_subcode") {
        out.push_str(&format!(" subcode {c}"));
    }
    out.push_str(": ");
    out.push_str(s("message").unwrap_or("(no message)"));
    match (s("error_user_title"), s("error_user_msg")) {
        (Some(t), Some(m)) => out.push_str(&format!(" ({t}: {m})")),
        (None, Some(m)) | (Some(m), None) => out.push_str(&format!(" ({m})")),
        (None, None) => {}
    }
    if let Some(t) = s("fbtrace_id") {
        out.push_str(&format!(" [fbtrace_id {t}]"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::test_support::{h, purchase, t0};
    use axum::extract::State;
    use axum::routing::post;
    use axum::{Json, Router};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn a_website_purchase_becomes_meta_s_exact_event_shape() {
        // GIVEN a website purchase with hashed and plain keys (and a Google click id Meta does not use)
        let d = purchase(7, t0());
        // WHEN it is encoded
        let event = encode_event(&d, t0() + TimeDelta::hours(1)).unwrap();
        // THEN the fields carry Meta's names, seconds, and a lowercase currency
        assert_eq!(
            event,
            json!({
                "event_name": "Purchase",
                "event_time": t0().timestamp(),
                "event_id": "order-7",
                "action_source": "website",
                "event_source_url": "https://shop.example.com/orders/7",
                "user_data": {
                    "em": h('a'),
                    "ph": h('b'),
                    "client_ip_address": "203.0.113.7",
                    "client_user_agent": "Mozilla/5.0",
                },
                "custom_data": {"value": 49.9, "currency": "eur"},
            })
        );
        let config = MetaConfig {
            pixel_id: "123".into(),
            access_token: Secret::new("tok"),
            test_event_code: Some("TEST123".into()),
        };
        let meta = Meta::new(
            "meta",
            &ApiConfig::default(),
            &config,
            &DispatchConfig::default(),
        )
        .unwrap();
        let preview = meta.plan(&[d], t0() + TimeDelta::hours(1)).preview();
        let body = &preview.requests[0].body;
        assert_eq!(body["test_event_code"], "TEST123");
        assert_eq!(body["data"], json!([event]));
    }

    #[test]
    fn a_crm_event_carries_the_lead_id_and_crm_event_source() {
        let mut d = purchase(8, t0());
        d.action_source = Some("system_generated".into());
        d.payload.event_source_url = None;
        d.payload
            .keys
            .insert(MatchKey::LeadId, "123456789012345".into());
        d.payload.lead_event_source = Some("pgcapi".into());
        d.payload.platform_event = Some("Converted".into());
        let event = encode_event(&d, t0()).unwrap();
        assert_eq!(event["action_source"], "system_generated");
        assert_eq!(event["event_name"], "Converted");
        assert_eq!(event["user_data"]["lead_id"], "123456789012345");
        assert_eq!(event["custom_data"]["event_source"], "crm");
        assert_eq!(event["custom_data"]["lead_event_source"], "pgcapi");
        assert!(event.get("event_source_url").is_none());
    }

    #[test]
    fn events_older_than_seven_days_are_skipped_before_sending() {
        let d = purchase(1, t0());
        let out = encode_event(&d, t0() + TimeDelta::days(7) + TimeDelta::seconds(1));
        assert_eq!(out, Err(Outcome::skipped("too old for meta (7 days)")));
        let mut store = purchase(2, t0());
        store.action_source = Some("physical_store".into());
        assert!(encode_event(&store, t0() + TimeDelta::days(30)).is_ok());
    }

    #[test]
    fn events_without_a_usable_match_key_are_skipped() {
        let mut d = purchase(1, t0());
        d.payload
            .keys
            .retain(|k, _| *k == MatchKey::UserAgent || *k == MatchKey::Gclid);
        assert_eq!(
            encode_event(&d, t0()),
            Err(Outcome::skipped("no usable match key for meta"))
        );
    }

    #[test]
    fn retractions_are_skipped_because_meta_cannot_retract() {
        let mut d = purchase(1, t0());
        d.kind = Kind::Retraction;
        assert_eq!(
            encode_event(&d, t0()),
            Err(Outcome::skipped("platform cannot retract"))
        );
    }

    #[test]
    fn a_400_envelope_is_a_rejection_with_meta_s_code_and_message() {
        let body = r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,
            "error_subcode":2804003,"error_user_title":"Event Timestamp Too Old",
            "error_user_msg":"The timestamp for this event is too far in the past.","fbtrace_id":"AbC"}}"#;
        let answer = classify(reqwest::StatusCode::BAD_REQUEST, None, body);
        assert_eq!(
            answer,
            BatchAnswer::Rejected(
                "meta: HTTP 400 OAuthException code 100 subcode 2804003: Invalid parameter \
                 (Event Timestamp Too Old: The timestamp for this event is too far in the past.) \
                 [fbtrace_id AbC]"
                    .into()
            )
        );
    }

    #[test]
    fn throttling_and_server_errors_are_retried_with_retry_after() {
        let throttled = classify(
            reqwest::StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(12)),
            r#"{"error":{"message":"Too many calls","code":4}}"#,
        );
        assert!(matches!(
            throttled,
            BatchAnswer::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(12)
        ));
        let business = classify(
            reqwest::StatusCode::BAD_REQUEST,
            None,
            r#"{"error":{"message":"User request limit reached","code":80004}}"#,
        );
        assert!(matches!(business, BatchAnswer::Retry { .. }));
        assert!(matches!(
            classify(
                reqwest::StatusCode::BAD_GATEWAY,
                None,
                "<html>bad gateway</html>"
            ),
            BatchAnswer::Retry { .. }
        ));
        let token = classify(
            reqwest::StatusCode::BAD_REQUEST,
            None,
            r#"{"error":{"message":"Invalid OAuth access token","code":190}}"#,
        );
        assert!(matches!(
            token,
            BatchAnswer::Retry { retry_after: Some(d), .. } if d >= OPERATOR_RETRY_FLOOR
        ));
    }

    #[test]
    fn a_200_is_sent_with_the_trace_id_as_reference() {
        let answer = classify(
            reqwest::StatusCode::OK,
            None,
            r#"{"events_received":2,"messages":[],"fbtrace_id":"XyZ"}"#,
        );
        assert_eq!(answer, BatchAnswer::Sent(Some("XyZ".into())));
    }

    /// What the fake Meta saw: the event ids of every request, and the token.
    #[derive(Default)]
    struct Seen {
        requests: Vec<Vec<String>>,
        tokens: Vec<String>,
    }

    /// A Meta destination at `endpoint` for dataset 1234567890.
    fn test_meta(endpoint: &str) -> Meta {
        let api = ApiConfig {
            endpoint: Some(endpoint.to_string()),
            ..ApiConfig::default()
        };
        let config = MetaConfig {
            pixel_id: "1234567890".into(),
            access_token: Secret::new("tok"),
            test_event_code: None,
        };
        Meta::new("meta", &api, &config, &DispatchConfig::default()).unwrap()
    }

    /// A fake Meta that rejects every batch containing the event id `order-3`, as Meta does.
    async fn fake_meta(seen: Arc<Mutex<Seen>>) -> String {
        async fn events(
            State(seen): State<Arc<Mutex<Seen>>>,
            axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>,
            Json(body): Json<Value>,
        ) -> (axum::http::StatusCode, Json<Value>) {
            let ids: Vec<String> = body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_string())
                .collect();
            let bad = ids.iter().any(|id| id == "order-3");
            let mut seen = seen.lock().unwrap();
            seen.requests.push(ids);
            seen.tokens.extend(
                q.into_iter()
                    .filter(|(k, _)| k == "access_token")
                    .map(|(_, v)| v),
            );
            if bad {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    Json(
                        json!({"error": {"message": "Invalid parameter", "type": "OAuthException",
                        "code": 100, "error_subcode": 2804019, "fbtrace_id": "T"}}),
                    ),
                )
            } else {
                (
                    axum::http::StatusCode::OK,
                    Json(json!({"events_received": 1, "messages": [], "fbtrace_id": "OK"})),
                )
            }
        }
        let app = Router::new()
            .route("/{version}/{pixel}/events", post(events))
            .with_state(seen);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_rejected_batch_is_split_until_only_the_bad_event_fails() {
        // GIVEN a fake Meta that rejects any batch holding event order-3
        let seen = Arc::new(Mutex::new(Seen::default()));
        let endpoint = fake_meta(seen.clone()).await;
        let meta = test_meta(&endpoint);
        let now = Utc::now();
        let batch: Vec<Delivery> = (0..6).map(|i| purchase(i, now)).collect();
        // WHEN the batch of six is sent
        let out = meta.send(&batch).await;
        // THEN five are sent and order-3 alone failed with Meta's message
        for (i, o) in out.iter().enumerate() {
            if i == 3 {
                assert_eq!(
                    o,
                    &Outcome::failed(
                        "meta: HTTP 400 OAuthException code 100 subcode 2804019: Invalid parameter \
                         [fbtrace_id T]"
                    )
                );
            } else {
                assert_eq!(
                    o,
                    &Outcome::Sent {
                        platform_ref: Some("OK".into())
                    },
                    "row {i}"
                );
            }
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.requests[0].len(), 6);
        assert!(seen.requests.len() <= 7, "{:?}", seen.requests);
        assert!(seen.tokens.iter().all(|t| t == "tok"));
        // AND no good event was accepted twice
        let accepted: Vec<&String> = seen
            .requests
            .iter()
            .filter(|r| !r.iter().any(|id| id == "order-3"))
            .flatten()
            .collect();
        assert_eq!(accepted.len(), 5);
    }

    #[tokio::test]
    async fn a_stale_event_the_checks_missed_fails_alone_when_the_sandbox_rejects_its_batch() {
        // GIVEN the sandbox, and pgcapi's clock three hours behind it, so that an event 7 days and
        // one hour old passes the pre-send age check among five fresh ones
        let sandbox = crate::testbed::sandbox::Sandbox::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let meta = test_meta(&sandbox.base_url());
        let now = Utc::now();
        let mut batch: Vec<Delivery> = (0..6).map(|i| purchase(i, now)).collect();
        batch[2].event_time = now - TimeDelta::days(7) - TimeDelta::hours(1);
        let behind = now - TimeDelta::hours(3);
        assert!(encode_event(&batch[2], behind).is_ok());
        // WHEN the batch is sent
        let out = meta.send_at(&batch, behind).await;
        // THEN the sandbox refused the whole batch, and bisection failed the stale event alone, with
        // the platform's message naming the 7-day window
        for (i, o) in out.iter().enumerate() {
            match o {
                Outcome::Failed { error } if i == 2 => {
                    assert!(error.contains("older than 7 days"), "{error}")
                }
                Outcome::Sent { .. } if i != 2 => {}
                other => panic!("row {i}: {other:?}"),
            }
        }
        let records = sandbox.records().meta;
        assert!(records.counters.rejected_requests >= 1);
        let mut ids: Vec<_> = records
            .events
            .iter()
            .filter_map(|e| e.event_id.clone())
            .collect();
        ids.sort();
        assert_eq!(ids, ["order-0", "order-1", "order-3", "order-4", "order-5"]);
        // AND with the right clock the same event is skipped before sending, naming the window
        let out = meta.send(&batch[2..3]).await;
        assert_eq!(out, vec![Outcome::skipped("too old for meta (7 days)")]);
        assert_eq!(
            sandbox.records().meta.counters.requests,
            records.counters.requests
        );
        sandbox.shutdown().await;
    }
}

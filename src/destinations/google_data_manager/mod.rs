//! Google Ads conversions through the Data Manager API (platforms.md §2.4–2.5, platforms-next.md §6).
//!
//! `POST {endpoint}/v1/events:ingest` with the OAuth scope `…/auth/datamanager` and no developer
//! token. One request carries up to 2,000 events for one product destination (the conversion action
//! id) of the `operating_account`; the row's `event_id` is the `transactionId`, Data Manager's dedup
//! and adjustment key. Identifiers are the stored SHA-256 hex digests (`encoding: HEX`), the address
//! as hashed given and family name with the plain region and postal code.
//!
//! Data Manager fails fast: one invalid event rejects the whole request with a 400 whose field
//! violations name `events[i]…`. The named events are recorded `failed` with Google's words and the
//! others are sent again without them (a 400 naming no event is a destination problem: the rows wait
//! for an operator). The answer's `requestId` becomes the rows' `platform_ref`.
//!
//! A repeated `transactionId` is a restatement for Data Manager, so a request is a pure function of
//! its rows (a retry is byte for byte the first attempt), and a restatement row (a partial refund) is
//! the conversion's event again — same identifiers, which dispatch copies from the sent conversion —
//! with the new value. Of several events of one transaction in a batch only the last is sent. Data
//! Manager cannot retract: a full refund follows `refunds` — a Google Ads API RETRACTION by order id
//! through [`GoogleAds`] with the same credentials (`retract`), a restatement to 0 (`restate_zero`),
//! or `skipped` (`skip`).

use super::batch::{in_order, observe_request, BatchAnswer, Body, Plan, Request};
use super::google_ads::{self, GoogleAds};
use super::google_auth::{GoogleAuth, ADS_SCOPE, DATA_MANAGER_SCOPE};
use super::health::{field, synthetic, unreachable, Health, HealthFuture, Probe};
use super::http::{
    base_url, excerpt, is_retryable_status, operator_retry, transport_error, Answer,
};
use super::{batch_size, value_number, Destination, DestinationError, Outcome, SendFuture};
use crate::config::{
    ApiConfig, DispatchConfig, GoogleAdsConfig, GoogleDataManagerConfig, GoogleRefunds,
};
use crate::event::{Delivery, Kind};
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Production Data Manager API host.
pub const DEFAULT_ENDPOINT: &str = "https://datamanager.googleapis.com";
/// Events per `IngestEventsRequest` (§2.4).
pub const MAX_EVENTS: usize = 2_000;
/// Oldest click a conversion is imported for, in days (the longest click-through window).
pub const MAX_CLICK_AGE_DAYS: i64 = 90;
/// The reason recorded for rows Google accepted under `validate_only`.
pub const VALIDATE_ONLY_REASON: &str =
    "validate_only: Data Manager validated the event and recorded nothing";
/// The reason recorded for a full refund under `refunds = "skip"`.
pub const CANNOT_RETRACT: &str =
    "platform cannot retract (Data Manager has no retraction; refunds = \"skip\")";

/// A Google Ads account reached through the Data Manager API.
pub struct GoogleDataManager {
    /// The config name.
    name: String,
    /// The API host, without a trailing slash.
    base: String,
    /// `{endpoint}/v1/events:ingest`.
    ingest_url: String,
    /// The operating account (digits).
    operating_account: String,
    /// The login account (digits), when the credentials act through a manager.
    login_account: Option<String>,
    /// Access tokens (scope datamanager, plus adwords when retractions go to the Google Ads API).
    auth: Arc<GoogleAuth>,
    /// Send `validateOnly: true`.
    validate_only: bool,
    /// What a full refund becomes.
    refunds: GoogleRefunds,
    /// The Google Ads API for retractions (`refunds = "retract"`).
    ads: Option<GoogleAds>,
    /// Rows per batch.
    max_batch: usize,
    /// The HTTP client.
    http: reqwest::Client,
    /// Accepted requests whose processing result is still to be read.
    statuses: Arc<StatusPoller>,
}

/// How long after an accepted request its processing result is first asked for, and between asks.
pub const STATUS_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// How many times a request still `PROCESSING` is asked for before it is given up (about a day).
const STATUS_POLL_LIMIT: u32 = 2_880;

/// Polls `requestStatus:retrieve` for accepted requests until they are final, and counts the events
/// Google could not use per reason (`pgcapi_google_processing_errors_total`, and a warning in the log).
pub struct StatusPoller {
    name: String,
    url: String,
    auth: Arc<GoogleAuth>,
    http: reqwest::Client,
    /// (request id, when to ask next, asks so far).
    queue: std::sync::Mutex<Vec<(String, std::time::Instant, u32)>>,
    interval: Duration,
    /// Final reports with unusable events, until dispatch takes them.
    reports: std::sync::Mutex<Vec<crate::event::ProcessingReport>>,
}

impl StatusPoller {
    /// Remembers an accepted request.
    fn push(&self, request_id: String) {
        let at = std::time::Instant::now() + self.interval;
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((request_id, at, 0));
    }

    /// Asks for every due request once; returns how many are still waiting.
    pub async fn poll_due(&self) -> usize {
        let now = std::time::Instant::now();
        let due: Vec<(String, u32)> = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let (due, later): (Vec<_>, Vec<_>) = queue.drain(..).partition(|(_, at, _)| *at <= now);
            *queue = later;
            due.into_iter().map(|(id, _, n)| (id, n)).collect()
        };
        for (id, asks) in due {
            if !self.poll_one(&id).await && asks + 1 < STATUS_POLL_LIMIT {
                let at = std::time::Instant::now() + self.interval;
                self.queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((id, at, asks + 1));
            }
        }
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Asks for one request; true when it is final (or unknown for good).
    async fn poll_one(&self, request_id: &str) -> bool {
        let Ok(token) = self.auth.access_token().await else {
            return false;
        };
        let response = self
            .http
            .get(&self.url)
            .query(&[("requestId", request_id)])
            .bearer_auth(token.expose())
            .send()
            .await;
        let Ok(response) = response else {
            return false;
        };
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            self.auth.invalidate().await;
            return false;
        }
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::BAD_REQUEST {
            return true;
        }
        let Ok(body) = response.json::<Value>().await else {
            return false;
        };
        let statuses = body
            .get("requestStatusPerDestination")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if statuses
            .iter()
            .any(|s| s.get("requestStatus").and_then(Value::as_str) == Some("PROCESSING"))
        {
            return false;
        }
        let mut unusable: Vec<(String, i64)> = Vec::new();
        for s in &statuses {
            let counts = s
                .pointer("/errorInfo/errorCounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for c in counts {
                let reason = c.get("reason").and_then(Value::as_str).unwrap_or("UNKNOWN");
                let n = match c.get("recordCount") {
                    Some(Value::String(s)) => s.parse().unwrap_or(0),
                    Some(v) => v.as_u64().unwrap_or(0),
                    None => 0,
                };
                if n > 0 {
                    match unusable.iter_mut().find(|(r, _)| r == reason) {
                        Some((_, sum)) => *sum += n as i64,
                        None => unusable.push((reason.to_string(), n as i64)),
                    }
                    crate::metrics::google_processing_errors(&self.name, reason, n);
                    tracing::warn!(
                        destination = %self.name,
                        request_id,
                        reason,
                        events = n,
                        "Data Manager accepted the request but could not use some events"
                    );
                }
            }
        }
        if !unusable.is_empty() {
            self.reports.lock().unwrap_or_else(|p| p.into_inner()).push(
                crate::event::ProcessingReport {
                    destination: self.name.clone(),
                    request_id: request_id.to_string(),
                    unusable,
                },
            );
        }
        true
    }
}

impl GoogleDataManager {
    /// Builds the destination `name` at `api` (or Google's) for the account of `config`, with the
    /// credentials of [`GoogleAuth::from_config`].
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &GoogleDataManagerConfig,
        dispatch: &DispatchConfig,
    ) -> Result<GoogleDataManager, DestinationError> {
        let operating_account = google_ads::digits_only(&config.operating_account);
        let http = super::http::http_client(name, dispatch)?;
        let retract = config.refunds == GoogleRefunds::Retract;
        let scopes: &[&str] = if retract {
            &[DATA_MANAGER_SCOPE, ADS_SCOPE]
        } else {
            &[DATA_MANAGER_SCOPE]
        };
        let auth = Arc::new(GoogleAuth::from_config(
            name,
            &config.auth,
            scopes,
            http.clone(),
        )?);
        let base = base_url(&api.endpoint, DEFAULT_ENDPOINT);
        let statuses = Arc::new(StatusPoller {
            name: name.to_string(),
            url: format!("{base}/v1/requestStatus:retrieve"),
            auth: auth.clone(),
            http: http.clone(),
            queue: std::sync::Mutex::new(Vec::new()),
            interval: config.status_poll_ms.map_or(STATUS_POLL_INTERVAL, |ms| {
                Duration::from_millis(ms.max(100))
            }),
            reports: std::sync::Mutex::new(Vec::new()),
        });
        if !config.validate_only {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                // Ends with the destination: it holds only a weak reference.
                let weak = Arc::downgrade(&statuses);
                let interval = statuses.interval;
                runtime.spawn(async move {
                    loop {
                        tokio::time::sleep(interval).await;
                        let Some(poller) = weak.upgrade() else { break };
                        poller.poll_due().await;
                    }
                });
            }
        }
        let ads = retract.then(|| {
            // Retractions go through the Google Ads API, as the operating account, with this
            // destination's token, developer token, version and batch size.
            let ads_api = ApiConfig {
                endpoint: config.ads_endpoint.clone(),
                ..api.clone()
            };
            let ads_config = GoogleAdsConfig {
                customer_id: operating_account.clone(),
                login_customer_id: None,
                developer_token: config.developer_token.clone(),
                validate_only: config.validate_only,
                auth: config.auth.clone(),
            };
            GoogleAds::with_auth(name, &ads_api, &ads_config, auth.clone(), http.clone())
        });
        Ok(GoogleDataManager {
            name: name.to_string(),
            ingest_url: format!("{base}/v1/events:ingest"),
            base,
            operating_account,
            login_account: config
                .login_account
                .as_deref()
                .map(google_ads::digits_only)
                .filter(|s| !s.is_empty()),
            auth,
            validate_only: config.validate_only,
            refunds: config.refunds,
            ads,
            max_batch: batch_size(api, MAX_EVENTS),
            http,
            statuses,
        })
    }

    /// What kind of credentials it uses.
    pub fn credentials_kind(&self) -> &'static str {
        self.auth.describe()
    }

    /// The operating account (digits).
    pub fn operating_account(&self) -> &str {
        &self.operating_account
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// The product destination id of a conversion action: the id of
/// `customers/{cid}/conversionActions/{id}`, or a bare id as is.
pub fn product_destination_id(action: &str) -> Option<&str> {
    let id = action
        .rsplit_once("/conversionActions/")
        .map_or(action, |(_, id)| id)
        .trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

/// The row's product destination id, or the failure saying the rule lacks a usable one.
fn destination_id(d: &Delivery) -> Result<&str, Outcome> {
    d.payload
        .conversion_action
        .as_deref()
        .and_then(product_destination_id)
        .ok_or_else(|| {
            Outcome::failed(
                "google data manager needs a conversion action (rule google.conversion_action: \
                 customers/{id}/conversionActions/{id} or the bare id)",
            )
        })
}

/// `eventSource` for the rule's `action_source` (none when the rule has none).
pub fn event_source(action_source: Option<&str>) -> Option<&'static str> {
    Some(match action_source? {
        "website" => "WEB",
        "app" => "APP",
        "physical_store" => "IN_STORE",
        "phone_call" => "PHONE",
        _ => "OTHER",
    })
}

/// One `Event` for row `d`, with `value` as its conversion value (the row's own for conversions
/// and restatements, 0 for a restatement to zero), or the outcome that replaces sending it.
/// Depends on nothing but the row, so that a retry is byte for byte the first attempt.
pub fn encode_event(
    d: &Delivery,
    value: Option<serde_json::Number>,
    now: DateTime<Utc>,
) -> Result<Value, Outcome> {
    destination_id(d)?;
    let keys = &d.payload.keys;
    let mut e = Map::new();
    e.insert("transactionId".into(), json!(d.event_id));
    e.insert(
        "eventTimestamp".into(),
        json!(d.event_time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    if let Some(v) = value {
        e.insert("conversionValue".into(), Value::Number(v));
    }
    if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
        e.insert("currency".into(), json!(cur.to_ascii_uppercase()));
    }
    if let Some(source) = event_source(d.action_source.as_deref()) {
        e.insert("eventSource".into(), json!(source));
    }
    // One click id: gclid, else gbraid, else wbraid.
    let click = [
        (MatchKey::Gclid, "gclid"),
        (MatchKey::Gbraid, "gbraid"),
        (MatchKey::Wbraid, "wbraid"),
    ]
    .into_iter()
    .find_map(|(key, field)| keys.get(&key).map(|v| (field, v)));
    let mut ad = Map::new();
    if let Some((field, v)) = click {
        ad.insert(field.into(), json!(v));
    }
    let mut device = Map::new();
    if let Some(ua) = keys.get(&MatchKey::UserAgent) {
        device.insert("userAgent".into(), json!(ua));
    }
    if let Some(ip) = keys.get(&MatchKey::ClientIp) {
        device.insert("ipAddress".into(), json!(ip));
    }
    if !device.is_empty() {
        ad.insert("landingPageDeviceInfo".into(), Value::Object(device));
    }
    let mut ids = Vec::new();
    if let Some(v) = keys.get(&MatchKey::Email) {
        ids.push(json!({ "emailAddress": v }));
    }
    if let Some(v) = keys.get(&MatchKey::Phone) {
        ids.push(json!({ "phoneNumber": v }));
    }
    // An address is matched as a whole: all four parts or none (§2.5).
    if let (Some(given), Some(family), Some(region), Some(postal)) = (
        keys.get(&MatchKey::FirstName),
        keys.get(&MatchKey::LastName),
        keys.get(&MatchKey::Country),
        keys.get(&MatchKey::Zip),
    ) {
        ids.push(json!({"address": {
            "givenName": given, "familyName": family, "regionCode": region, "postalCode": postal,
        }}));
    }
    if click.is_none() && ids.is_empty() {
        return Err(Outcome::skipped(
            "no usable match key for google data manager",
        ));
    }
    let clicked = d.payload.click_time.unwrap_or(d.event_time);
    if d.kind == Kind::Conversion && clicked < now - TimeDelta::days(MAX_CLICK_AGE_DAYS) {
        return Err(Outcome::skipped(format!(
            "too old for google data manager ({MAX_CLICK_AGE_DAYS} days)"
        )));
    }
    if !ad.is_empty() {
        e.insert("adIdentifiers".into(), Value::Object(ad));
    }
    if !ids.is_empty() {
        e.insert("userData".into(), json!({ "userIdentifiers": ids }));
    }
    let consent = google_ads::ad_user_data_consent(d, ["CONSENT_GRANTED", "CONSENT_DENIED"]);
    if let Some(consent) = consent {
        e.insert("consent".into(), consent);
    }
    Ok(Value::Object(e))
}

impl GoogleDataManager {
    /// Encodes `batch` as of `now`: the ingest requests (one per product destination, of the last
    /// event of each transaction) and the rows to retract through the Google Ads API.
    fn encode(&self, batch: &[Delivery], now: DateTime<Utc>) -> (Plan, Vec<usize>) {
        let mut plan = Plan {
            items: Vec::with_capacity(batch.len()),
            ..Plan::default()
        };
        let mut retractions = Vec::new();
        // The last row of each (destination id, transaction id) in the batch: earlier ones would
        // be overwritten by it at Google (restatements of one conversion, last wins).
        let mut last: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, d) in batch.iter().enumerate() {
            let encoded = match (d.kind, self.refunds) {
                (Kind::Retraction, GoogleRefunds::Skip) => Err(Outcome::skipped(CANNOT_RETRACT)),
                (Kind::Retraction, GoogleRefunds::Retract) => match destination_id(d) {
                    Ok(_) => {
                        retractions.push(i);
                        plan.items.push(Value::Null);
                        continue;
                    }
                    Err(o) => Err(o),
                },
                (Kind::Retraction, GoogleRefunds::RestateZero) => {
                    encode_event(d, Some(0.into()), now)
                }
                (Kind::Restatement, _) => match value_number(d) {
                    Ok(Some(v)) => encode_event(d, Some(v), now),
                    Ok(None) => Err(Outcome::failed(
                        "google data manager: a restatement needs a value",
                    )),
                    Err(e) => Err(Outcome::failed(format!("google data manager: {e}"))),
                },
                (Kind::Conversion, _) => match value_number(d) {
                    Ok(v) => encode_event(d, v, now),
                    Err(e) => Err(Outcome::failed(format!("google data manager: {e}"))),
                },
            };
            match encoded {
                Ok(event) => {
                    let id = destination_id(d).unwrap_or_default();
                    if let Some(earlier) = last.insert((id, d.event_id.as_str()), i) {
                        plan.not_sent.push((
                            earlier,
                            Outcome::skipped(
                                "superseded by a later restatement of the same conversion in \
                                 the same batch (Data Manager keeps the last value)",
                            ),
                        ));
                        plan.items[earlier] = Value::Null;
                    }
                    plan.items.push(event);
                }
                Err(outcome) => {
                    plan.items.push(Value::Null);
                    plan.not_sent.push((i, outcome));
                }
            }
        }
        let mut kept: Vec<(&(&str, &str), &usize)> = last.iter().collect();
        kept.sort_by_key(|(_, i)| **i);
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for ((id, _), i) in kept {
            groups.entry(id).or_default().push(*i);
        }
        plan.requests = groups
            .into_iter()
            .map(|(id, rows)| Request {
                rows,
                ..self.request(id)
            })
            .collect();
        (plan, retractions)
    }

    /// The `IngestEventsRequest` of events to product destination `id`.
    fn request(&self, id: &str) -> Request {
        let mut destination = json!({
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": self.operating_account},
            "productDestinationId": id,
        });
        if let Some(login) = &self.login_account {
            destination["loginAccount"] = json!({"accountType": "GOOGLE_ADS", "accountId": login});
        }
        let request = Request::new(&self.ingest_url, "events")
            .with("destinations", json!([destination]))
            .with("encoding", "HEX");
        if self.validate_only {
            request.with("validateOnly", true)
        } else {
            request
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// What one ingest request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestAnswer {
    /// Accepted, with the request id.
    Accepted(Option<String>),
    /// Refused because of these events (indices into the request's events), with Google's words.
    Invalid(Vec<(usize, String)>),
    /// Refused as a whole, or no answer: a retry, or [`BatchAnswer::NeedsOperator`] where the setup
    /// is at fault.
    Whole(BatchAnswer),
    /// 401: the token was refused.
    Unauthorized(String),
}

/// The first `events[i]` index in a field path such as `events[3].user_data.user_identifiers[0]`.
fn event_index(path: &str) -> Option<usize> {
    let at = path.find("events[")? + "events[".len();
    let rest = &path[at..];
    rest[..rest.find(']')?].parse().ok()
}

/// Classifies Data Manager's answer to one ingest request of `len` events.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    len: usize,
) -> IngestAnswer {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if status.is_success() {
        let id = parsed
            .get("requestId")
            .and_then(Value::as_str)
            .map(str::to_string);
        return IngestAnswer::Accepted(id);
    }
    let error = parsed.get("error").unwrap_or(&Value::Null);
    let s = |k: &str| error.get(k).and_then(Value::as_str);
    let message = match (s("status"), s("message")) {
        (Some(st), Some(m)) => format!("google data manager: HTTP {} {st}: {m}", status.as_u16()),
        (None, Some(m)) => format!("google data manager: HTTP {}: {m}", status.as_u16()),
        _ => format!(
            "google data manager: HTTP {}: {}",
            status.as_u16(),
            excerpt(body)
        ),
    };
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return IngestAnswer::Unauthorized(message);
    }
    if is_retryable_status(status) {
        return IngestAnswer::Whole(BatchAnswer::Retry {
            error: message,
            retry_after,
        });
    }
    if status == reqwest::StatusCode::BAD_REQUEST {
        let mut invalid: Vec<(usize, String)> = Vec::new();
        for v in violations(error) {
            let (field, description) = (field(v, "field"), field(v, "description"));
            let reason = v.get("reason").and_then(Value::as_str);
            if let Some(i) = event_index(field).filter(|&i| i < len) {
                let words = match reason {
                    Some(r) => format!("google data manager: {r}: {field}: {description}"),
                    None => format!("google data manager: {field}: {description}"),
                };
                match invalid.iter_mut().find(|(j, _)| *j == i) {
                    Some((_, text)) => {
                        text.push_str("; ");
                        text.push_str(&words);
                    }
                    None => invalid.push((i, words)),
                }
            }
        }
        if !invalid.is_empty() {
            return IngestAnswer::Invalid(invalid);
        }
    }
    // The request as a whole (destination, account, permission, terms): an operator must act.
    IngestAnswer::Whole(operator_retry(message, retry_after))
}

impl GoogleDataManager {
    /// Sends one ingest request, refreshing the token once on a 401.
    async fn ingest(&self, body: &Body<'_>) -> IngestAnswer {
        let started = std::time::Instant::now();
        let mut refreshed = false;
        let answer = loop {
            let token = match self.auth.access_token().await {
                Ok(t) => t,
                Err(answer) => break IngestAnswer::Whole(answer),
            };
            let response = self
                .http
                .post(&self.ingest_url)
                .bearer_auth(token.expose())
                .json(body)
                .send()
                .await;
            let answer = match response {
                // No answer: a retry (transport errors blame no event).
                Err(e) => IngestAnswer::Whole(transport_error("google data manager", e)),
                Ok(r) => {
                    let answer = Answer::read(r).await;
                    classify(
                        answer.status,
                        answer.retry_after,
                        &answer.text,
                        body.items(),
                    )
                }
            };
            match answer {
                IngestAnswer::Unauthorized(error) => {
                    self.auth.invalidate().await;
                    if refreshed {
                        break IngestAnswer::Whole(operator_retry(error, None));
                    }
                    refreshed = true;
                }
                other => break other,
            }
        };
        let observed = match &answer {
            IngestAnswer::Accepted(id) => BatchAnswer::Sent(id.clone()),
            IngestAnswer::Invalid(_) => BatchAnswer::Rejected(String::new()),
            IngestAnswer::Whole(answer) => answer.clone(),
            IngestAnswer::Unauthorized(e) => BatchAnswer::Retry {
                error: e.clone(),
                retry_after: None,
            },
        };
        observe_request(&self.name, started, &observed);
        answer
    }

    /// Ingests the rows of `request` (`items` being the batch's events); events Google names as
    /// invalid fail, the others are sent again without them.
    async fn ingest_group(&self, request: &Request, items: &[Value]) -> Vec<(usize, Outcome)> {
        let mut indices = request.rows.clone();
        let mut out = Vec::with_capacity(indices.len());
        while !indices.is_empty() {
            let mut part = indices;
            indices = if part.len() > self.max_batch {
                part.split_off(self.max_batch)
            } else {
                Vec::new()
            };
            loop {
                match self.ingest(&request.body(items, &part)).await {
                    IngestAnswer::Accepted(request_id) => {
                        if let Some(id) = request_id.as_ref().filter(|_| !self.validate_only) {
                            self.statuses.push(id.clone());
                        }
                        out.extend(part.iter().map(|&i| {
                            (
                                i,
                                Outcome::Sent {
                                    platform_ref: request_id.clone(),
                                },
                            )
                        }));
                        break;
                    }
                    IngestAnswer::Invalid(bad) => {
                        let mut keep = vec![true; part.len()];
                        for (j, words) in bad {
                            keep[j] = false;
                            out.push((part[j], Outcome::failed(words)));
                        }
                        part = part
                            .iter()
                            .zip(keep)
                            .filter_map(|(&i, k)| k.then_some(i))
                            .collect();
                        if part.is_empty() {
                            break;
                        }
                    }
                    IngestAnswer::Whole(answer) => {
                        let outcome = answer.outcome();
                        out.extend(part.iter().map(|&i| (i, outcome.clone())));
                        break;
                    }
                    IngestAnswer::Unauthorized(error) => {
                        let outcome = Outcome::needs_operator(error);
                        out.extend(part.iter().map(|&i| (i, outcome.clone())));
                        break;
                    }
                }
            }
        }
        out
    }

    /// Retracts `indices` of `batch` through the Google Ads API, by order id = transaction id.
    async fn retract(&self, batch: &[Delivery], indices: &[usize]) -> Vec<(usize, Outcome)> {
        let Some(ads) = &self.ads else {
            return indices
                .iter()
                .map(|&i| (i, Outcome::skipped(CANNOT_RETRACT)))
                .collect();
        };
        let rows = self.ads_rows(batch, indices);
        let outcomes = ads.send(&rows).await;
        indices.iter().copied().zip(outcomes).collect()
    }

    /// The rows `indices` as Google Ads API adjustments: the conversion action as a resource name of
    /// the operating account.
    fn ads_rows(&self, batch: &[Delivery], indices: &[usize]) -> Vec<Delivery> {
        indices
            .iter()
            .map(|&i| {
                let mut d = batch[i].clone();
                if let Some(id) = d
                    .payload
                    .conversion_action
                    .as_deref()
                    .and_then(product_destination_id)
                {
                    d.payload.conversion_action = Some(format!(
                        "customers/{}/conversionActions/{id}",
                        self.operating_account
                    ));
                }
                d
            })
            .collect()
    }
}

/// Under `validate_only` an accepted row was not delivered: it becomes a skip saying so.
fn validated_only(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Sent { .. } => Outcome::skipped(VALIDATE_ONLY_REASON),
        other => other,
    }
}

impl Destination for GoogleDataManager {
    fn name(&self) -> &str {
        &self.name
    }

    fn platform(&self) -> Platform {
        Platform::GoogleDataManager
    }

    fn take_processing_reports(&self) -> Vec<crate::event::ProcessingReport> {
        std::mem::take(
            &mut *self
                .statuses
                .reports
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn can_retract(&self) -> bool {
        // With `refunds = "skip"` a refund withdraws nothing: like Meta, a refunded conversion that
        // is still pending is cancelled rather than finished and left standing.
        self.refunds != GoogleRefunds::Skip
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let (plan, retractions) = self.encode(batch, Utc::now());
            let mut outcomes = plan.not_sent;
            for request in &plan.requests {
                outcomes.extend(self.ingest_group(request, &plan.items).await);
            }
            if !retractions.is_empty() {
                outcomes.extend(self.retract(batch, &retractions).await);
            }
            let outcomes = in_order(batch.len(), outcomes);
            if self.validate_only {
                return outcomes.into_iter().map(validated_only).collect();
            }
            outcomes
        })
    }

    /// One ingest request per product destination, then the Google Ads API's adjustments of full
    /// refunds under `refunds = "retract"`.
    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        let (mut plan, retractions) = self.encode(batch, now);
        match &self.ads {
            Some(ads) => {
                let rows = self.ads_rows(batch, &retractions);
                plan.merge(ads.plan(&rows, now), &retractions);
            }
            None => plan.not_sent.extend(
                retractions
                    .iter()
                    .map(|&i| (i, Outcome::skipped(CANNOT_RETRACT))),
            ),
        }
        plan
    }

    fn healthcheck<'a>(&'a self, probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(self.check(probe.conversion_action()))
    }
}

// ---------------------------------------------------------------------------------------------
// Health check
// ---------------------------------------------------------------------------------------------

impl GoogleDataManager {
    /// The health check: the token, then a `validateOnly` ingest of one synthetic event to the
    /// conversion `action` of a rule, reported as three lines: the token, the operating account,
    /// the conversion action.
    async fn check(&self, action: Option<&str>) -> Vec<Health> {
        let account = &self.operating_account;
        let token = match self.auth.access_token().await {
            Ok(token) => token,
            Err(answer) => {
                return Health::only(false, format!("token: {}", self.auth.refusal(answer)))
            }
        };
        let mut out = vec![Health::pass(format!(
            "token: obtained with {} (scope datamanager)",
            self.auth.describe()
        ))];
        let Some(action) = action else {
            out.push(Health::pass(format!(
                "account {account}: not tried (no rule gives this destination a conversion \
                 action, so no validateOnly request was sent)"
            )));
            return out;
        };
        let Some(id) = product_destination_id(action) else {
            out.push(Health::fail(format!(
                "conversion action {action}: not a conversion action id"
            )));
            return out;
        };
        let event = match encode_event(
            &synthetic(&self.name, Some(action)),
            Some(0.into()),
            Utc::now(),
        ) {
            Ok(event) => event,
            Err(outcome) => {
                out.push(Health::fail(format!(
                    "cannot build the test event: {outcome:?}"
                )));
                return out;
            }
        };
        let request = self.request(id).with("validateOnly", true);
        let response = self
            .http
            .post(&request.url)
            .bearer_auth(token.expose())
            .json(&request.body(&[event], &[0]))
            .send()
            .await;
        match response {
            Ok(r) => self.judge_check(id, Answer::read(r).await, out),
            Err(e) => {
                out.push(Health::fail(unreachable(&self.base, e)));
                out
            }
        }
    }

    /// Adds to `out` (the token line) what the answer to the health check's ingest says.
    fn judge_check(&self, id: &str, answer: Answer, mut out: Vec<Health>) -> Vec<Health> {
        let account = &self.operating_account;
        let (status, body) = (answer.status, answer.json());
        if status.is_success() {
            out.push(Health::pass(format!(
                "account {account}: accepted a validateOnly request (nothing recorded)"
            )));
            out.push(Health::pass(format!(
                "conversion action {id}: accepted as product destination"
            )));
            return out;
        }
        let error = body.get("error").unwrap_or(&Value::Null);
        let mut words = vec![format!(
            "HTTP {status} {}: {}",
            field(error, "status"),
            field(error, "message")
        )];
        words.extend(
            violations(error)
                .map(|v| format!("{}: {}", field(v, "field"), field(v, "description"))),
        );
        let text = words.join("; ");
        let lower = text.to_ascii_lowercase();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            out[0] = Health::fail(format!("token: refused by Data Manager ({text})"));
        } else if lower.contains("product_destination") || lower.contains("productdestination") {
            out.push(Health::pass(format!("account {account}: reachable")));
            out.push(Health::fail(format!(
                "conversion action {id}: refused ({text})"
            )));
        } else if lower.contains("account") || status == reqwest::StatusCode::FORBIDDEN {
            out.push(Health::fail(format!("account {account}: refused ({text})")));
        } else {
            out.push(Health::fail(format!(
                "validateOnly request refused ({text})"
            )));
        }
        out
    }
}

/// The field violations of a Google error (`details[].fieldViolations[]`).
fn violations(error: &Value) -> impl Iterator<Item = &Value> {
    error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("fieldViolations").and_then(Value::as_array))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::test_support::{google_oauth, h, purchase, t0};

    fn config() -> GoogleDataManagerConfig {
        GoogleDataManagerConfig {
            operating_account: "123-456-7890".into(),
            login_account: None,
            refunds: GoogleRefunds::default(),
            ads_endpoint: None,
            developer_token: None,
            validate_only: false,
            status_poll_ms: None,
            auth: google_oauth(None),
        }
    }

    fn dm(d: &mut Delivery) {
        d.payload.conversion_action = Some("customers/1234567890/conversionActions/1001".into());
    }

    #[test]
    fn an_event_has_data_manager_s_shape_and_no_consent_without_a_column() {
        // GIVEN a website purchase with hashed email and phone, a gclid, IP and user agent
        let mut d = purchase(7, t0());
        dm(&mut d);
        // WHEN encoded
        let e = encode_event(&d, value_number(&d).unwrap(), t0()).unwrap();
        // THEN it carries Data Manager's fields, and no consent (the rule has no consent column)
        assert_eq!(
            e,
            json!({
                "transactionId": "order-7",
                "eventTimestamp": "2026-03-01T12:00:00Z",
                "conversionValue": 49.9,
                "currency": "EUR",
                "eventSource": "WEB",
                "adIdentifiers": {
                    "gclid": "Cj0KCQ-test",
                    "landingPageDeviceInfo": {"userAgent": "Mozilla/5.0", "ipAddress": "203.0.113.7"},
                },
                "userData": {"userIdentifiers": [{"emailAddress": h('a')}, {"phoneNumber": h('b')}]},
            })
        );
        // AND with a consent column the consent is sent as Data Manager's enum
        d.payload.consent_column = true;
        let e = encode_event(&d, None, t0()).unwrap();
        assert_eq!(e["consent"], json!({"adUserData": "CONSENT_GRANTED"}));
    }

    #[test]
    fn an_address_goes_whole_with_plain_region_and_postal_code() {
        let mut d = purchase(1, t0());
        dm(&mut d);
        d.payload.keys.insert(MatchKey::FirstName, h('c'));
        d.payload.keys.insert(MatchKey::LastName, h('d'));
        d.payload.keys.insert(MatchKey::Country, "US".into());
        let e = encode_event(&d, None, t0()).unwrap();
        assert_eq!(
            e["userData"]["userIdentifiers"].as_array().unwrap().len(),
            2
        );
        d.payload.keys.insert(MatchKey::Zip, "94105".into());
        let e = encode_event(&d, None, t0()).unwrap();
        assert_eq!(
            e["userData"]["userIdentifiers"][2],
            json!({"address": {"givenName": h('c'), "familyName": h('d'), "regionCode": "US", "postalCode": "94105"}})
        );
    }

    #[test]
    fn conversion_actions_give_the_product_destination_id() {
        assert_eq!(
            product_destination_id("customers/1234567890/conversionActions/1001"),
            Some("1001")
        );
        assert_eq!(product_destination_id("1002"), Some("1002"));
        assert_eq!(
            product_destination_id("customers/1/conversionActions/x"),
            None
        );
    }

    #[test]
    fn field_violations_name_the_events() {
        let body = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                {"field": "events[2].user_data.user_identifiers[0].email_address", "description": "not a hash"},
                {"field": "events[0].event_timestamp", "description": "required"},
            ]}]}})
        .to_string();
        let answer = classify(reqwest::StatusCode::BAD_REQUEST, None, &body, 3);
        let IngestAnswer::Invalid(bad) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0, 2);
        assert!(bad[0].1.contains("events[2].user_data"), "{}", bad[0].1);
        // A 400 naming no event waits for an operator; a 429 is retried when Google says.
        let whole = classify(
            reqwest::StatusCode::BAD_REQUEST,
            None,
            r#"{"error":{"code":400,"message":"bad destination","status":"INVALID_ARGUMENT"}}"#,
            3,
        );
        assert!(matches!(
            whole,
            IngestAnswer::Whole(BatchAnswer::NeedsOperator {
                retry_after: None,
                ..
            })
        ));
        let quota = classify(
            reqwest::StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(7)),
            r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
            3,
        );
        assert_eq!(
            quota,
            IngestAnswer::Whole(BatchAnswer::Retry {
                error: "google data manager: HTTP 429 RESOURCE_EXHAUSTED: quota".into(),
                retry_after: Some(Duration::from_secs(7))
            })
        );
    }

    #[test]
    fn refunds_follow_the_setting_and_restatements_of_one_order_keep_the_last() {
        let now = t0() + TimeDelta::days(1);
        let mut conv = purchase(1, t0());
        dm(&mut conv);
        let mut r1 = conv.clone();
        r1.id = 2;
        r1.kind = Kind::Restatement;
        r1.value = Some("30".into());
        let mut r2 = r1.clone();
        r2.id = 3;
        r2.value = Some("20".into());
        let mut full = conv.clone();
        full.id = 4;
        full.event_id = "order-9".into();
        full.kind = Kind::Retraction;
        let batch = [r1, r2, full];
        for (refunds, expect) in [
            (GoogleRefunds::Skip, "skip"),
            (GoogleRefunds::RestateZero, "zero"),
            (GoogleRefunds::Retract, "ads"),
        ] {
            let d = GoogleDataManager::new(
                "g",
                &ApiConfig::default(),
                &GoogleDataManagerConfig {
                    refunds,
                    ..config()
                },
                &DispatchConfig::default(),
            )
            .unwrap();
            let (plan, retractions) = d.encode(&batch, now);
            // The first restatement is superseded by the second
            assert!(matches!(
                plan.not_sent.iter().find(|(i, _)| *i == 0),
                Some((_, Outcome::Skipped { .. }))
            ));
            assert_eq!(plan.items[1]["conversionValue"], 20.0);
            match expect {
                "skip" => assert_eq!(
                    plan.not_sent.iter().find(|(i, _)| *i == 2).unwrap().1,
                    Outcome::skipped(CANNOT_RETRACT)
                ),
                "zero" => {
                    assert_eq!(plan.items[2]["conversionValue"], 0);
                    assert_eq!(plan.items[2]["transactionId"], "order-9");
                }
                _ => assert_eq!(retractions, vec![2]),
            }
        }
    }

    #[test]
    fn a_preview_shows_the_ingest_request_without_a_developer_token() {
        let d = GoogleDataManager::new(
            "g",
            &ApiConfig::default(),
            &GoogleDataManagerConfig {
                validate_only: true,
                login_account: Some("111-222-3333".into()),
                ..config()
            },
            &DispatchConfig::default(),
        )
        .unwrap();
        let mut row = purchase(1, Utc::now());
        dm(&mut row);
        let preview = d.preview(&[row]);
        assert_eq!(preview.requests.len(), 1);
        let body = &preview.requests[0].body;
        assert_eq!(
            preview.requests[0].url,
            "https://datamanager.googleapis.com/v1/events:ingest"
        );
        assert_eq!(body["encoding"], "HEX");
        assert_eq!(body["validateOnly"], true);
        assert_eq!(
            body["destinations"][0],
            json!({"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                   "productDestinationId": "1001",
                   "loginAccount": {"accountType": "GOOGLE_ADS", "accountId": "1112223333"}})
        );
        assert!(!body.to_string().contains("developer"));
    }

    #[tokio::test]
    async fn processing_errors_google_reports_later_are_counted_per_reason() {
        // GIVEN the sandbox, and a destination that asks for request statuses without waiting
        let sandbox = crate::testbed::sandbox::Sandbox::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = sandbox.base_url();
        let mut settings = GoogleDataManagerConfig {
            refunds: GoogleRefunds::Skip,
            ..config()
        };
        settings.auth.token_endpoint = Some(format!("{base}/token"));
        let api = ApiConfig {
            endpoint: Some(base.clone()),
            ..ApiConfig::default()
        };
        let mut d = GoogleDataManager::new(
            "dm-status-test",
            &api,
            &settings,
            &DispatchConfig::default(),
        )
        .unwrap();
        d.statuses = Arc::new(StatusPoller {
            name: d.name.clone(),
            url: format!("{base}/v1/requestStatus:retrieve"),
            auth: d.auth.clone(),
            http: d.http.clone(),
            queue: std::sync::Mutex::new(Vec::new()),
            interval: Duration::ZERO,
            reports: std::sync::Mutex::new(Vec::new()),
        });
        // WHEN two conversions are accepted, one of them for a click Google does not know
        let mut known = purchase(1, Utc::now());
        dm(&mut known);
        let mut unknown = purchase(2, Utc::now());
        dm(&mut unknown);
        unknown
            .payload
            .keys
            .insert(MatchKey::Gclid, "unknown-click".into());
        let out = d.send(&[known, unknown]).await;
        assert!(
            out.iter().all(|o| matches!(
                o,
                Outcome::Sent {
                    platform_ref: Some(_)
                }
            )),
            "{out:?}"
        );
        // THEN the status poll finds the request final and counts the unusable event by reason
        assert_eq!(d.statuses.poll_due().await, 0);
        let metrics = crate::metrics::global().encode();
        let line = metrics
            .lines()
            .find(|l| l.contains("google_processing_errors") && l.contains("dm-status-test"))
            .unwrap_or_else(|| panic!("{metrics}"));
        assert!(
            line.contains("PROCESSING_ERROR_REASON_INVALID_GCLID"),
            "{line}"
        );
        assert!(line.ends_with(" 1"), "{line}");
        sandbox.shutdown().await;
    }
}

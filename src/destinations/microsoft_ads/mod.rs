//! Microsoft Advertising: offline conversions and their adjustments over REST (platforms-next.md §1).
//!
//! Conversions go to `POST {endpoint}/CampaignManagement/v13/OfflineConversions/Apply` as
//! `{"OfflineConversions":[…]}`, refunds to `…/OfflineConversionAdjustments/Apply` as
//! `{"OfflineConversionAdjustments":[…]}` (`Retract` for a full refund, `Restate` with the new value for
//! a partial one), at most 1,000 per request. The headers carry an OAuth access token (Microsoft
//! identity platform, refresh-token grant), the developer token, the customer id and the account id.
//!
//! Microsoft deduplicates on click id + `ConversionTime` (+ goal) and identifies the conversion an
//! adjustment applies to by its goal name, `ConversionTime` and click id. `ConversionTime` is therefore
//! always written from the row's stored `event_time` (to the second, UTC), never from the clock: every
//! retry and every adjustment repeats it byte for byte. Adjustments get the conversion's time, goal
//! name and match keys from the dispatcher, as sent.
//!
//! Answers are read from the body whatever the status: a 200 may carry a fault. `PartialErrors` name
//! the failed rows by `Index`; error 117 `CallRateExceeded` is retried after 60 seconds.

use super::batch::{in_order, observe_request, BatchAnswer, Plan, Request};
use super::health::{Health, HealthFuture, Probe};
use super::http::{base_url, excerpt, is_retryable_status, operator_retry, transport_error};
use super::oauth::{self, first_line, Token};
use super::{batch_size, value_number, Destination, DestinationError, Outcome, SendFuture};
use crate::config::{ApiConfig, DispatchConfig, MicrosoftAdsConfig, Secret};
use crate::event::{Delivery, Kind};
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Production Campaign Management REST host.
pub const DEFAULT_ENDPOINT: &str = "https://campaign.api.bingads.microsoft.com";
/// Microsoft identity platform token endpoint.
pub const DEFAULT_TOKEN_ENDPOINT: &str =
    "https://login.microsoftonline.com/common/oauth2/v2.0/token";
/// The OAuth scope of the Microsoft Advertising API.
pub const SCOPE: &str = "https://ads.microsoft.com/msads.manage offline_access";
/// The conversions path under the endpoint.
pub const CONVERSIONS_PATH: &str = "/CampaignManagement/v13/OfflineConversions/Apply";
/// The adjustments path under the endpoint.
pub const ADJUSTMENTS_PATH: &str = "/CampaignManagement/v13/OfflineConversionAdjustments/Apply";
/// The conversion goals read of `pgcapi check`.
pub const GOALS_PATH: &str = "/CampaignManagement/v13/ConversionGoals/QueryByIds";
/// Offline conversions (or adjustments) per request.
pub const MAX_EVENTS: usize = 1_000;
/// Oldest conversion Microsoft takes, in days (within the last 90 days).
pub const MAX_AGE_DAYS: i64 = 90;
/// Error 117 `CallRateExceeded`: Microsoft's throttling window is 60 seconds.
pub const THROTTLE_DELAY: Duration = Duration::from_secs(60);
/// `OfflineConversionNotAcceptedForGoal`: a goal takes two hours to accept conversions.
pub const GOAL_NOT_READY_DELAY: Duration = Duration::from_secs(30 * 60);

/// A Microsoft Advertising account reached with an OAuth refresh token and a developer token.
pub struct MicrosoftAds {
    /// The config name.
    name: String,
    /// `{endpoint}` without a trailing slash.
    base: String,
    /// Where refresh tokens are exchanged.
    token_endpoint: String,
    /// OAuth client (application) id.
    client_id: Secret,
    /// OAuth client secret (web applications only).
    client_secret: Option<Secret>,
    /// The `DeveloperToken` header.
    developer_token: Secret,
    /// The `CustomerId` header.
    customer_id: String,
    /// The `CustomerAccountId` header.
    account_id: String,
    /// Rows per request.
    max_batch: usize,
    /// The HTTP client.
    http: reqwest::Client,
    /// The refresh token in use and the cached access token; the lock keeps senders from refreshing twice.
    token: tokio::sync::Mutex<TokenState>,
}

/// The OAuth state of one destination.
struct TokenState {
    /// The refresh token: the configured one, or the newer one Microsoft returned (kept for the
    /// process's lifetime).
    refresh_token: Secret,
    /// The access token and when to stop using it.
    cached: Option<Token>,
}

impl MicrosoftAds {
    /// Builds the destination `name` at `api` (or Microsoft's) for the account of `config`.
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &MicrosoftAdsConfig,
        dispatch: &DispatchConfig,
    ) -> Result<MicrosoftAds, DestinationError> {
        Ok(MicrosoftAds {
            name: name.to_string(),
            base: base_url(&api.endpoint, DEFAULT_ENDPOINT),
            token_endpoint: config
                .token_endpoint
                .clone()
                .unwrap_or_else(|| DEFAULT_TOKEN_ENDPOINT.to_string()),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            developer_token: config.developer_token.clone(),
            customer_id: config.customer_id.trim().to_string(),
            account_id: config.account_id.trim().to_string(),
            max_batch: batch_size(api, MAX_EVENTS),
            http: super::http::http_client(name, dispatch)?,
            token: tokio::sync::Mutex::new(TokenState {
                refresh_token: config.refresh_token.clone(),
                cached: None,
            }),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// Microsoft's UTC `dateTime`, to the second: `2026-03-01T12:00:00Z`.
pub fn date_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The goal name of a row, or the failure saying the rule lacks one.
fn conversion_name(d: &Delivery) -> Result<&str, Outcome> {
    d.payload
        .conversion_action
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            Outcome::failed(
                "microsoft ads needs an offline conversion goal name (rule microsoft.conversion_name)",
            )
        })
}

/// The identifying fields shared by conversions and adjustments: goal name, conversion time, click
/// id and hashed email/phone; or the outcome that replaces sending the row.
fn identity(d: &Delivery, now: DateTime<Utc>) -> Result<Map<String, Value>, Outcome> {
    let name = conversion_name(d)?;
    let keys = &d.payload.keys;
    let click = keys.get(&MatchKey::Msclkid);
    let email = keys.get(&MatchKey::Email);
    let phone = keys.get(&MatchKey::Phone);
    if click.is_none() && email.is_none() && phone.is_none() {
        return Err(Outcome::skipped(
            "no msclkid and no hashed email or phone for microsoft ads",
        ));
    }
    if d.event_time < now - TimeDelta::days(MAX_AGE_DAYS) {
        return Err(Outcome::skipped(format!(
            "too old for microsoft ads ({MAX_AGE_DAYS} days)"
        )));
    }
    let mut c = Map::new();
    c.insert("ConversionName".into(), json!(name));
    c.insert("ConversionTime".into(), json!(date_time(d.event_time)));
    if let Some(click) = click {
        c.insert("MicrosoftClickId".into(), json!(click));
    }
    if let Some(email) = email {
        c.insert("HashedEmailAddress".into(), json!(email));
    }
    if let Some(phone) = phone {
        c.insert("HashedPhoneNumber".into(), json!(phone));
    }
    Ok(c)
}

/// A conversion timed after `now` (to the second) waits until its time has come: Microsoft refuses a
/// future `ConversionTime` (`FutureConversionTimeCannotBeSet`) and an adjustment timed before its
/// conversion.
fn not_before(at: DateTime<Utc>, now: DateTime<Utc>, what: &str) -> Result<(), Outcome> {
    if at.timestamp() <= now.timestamp() {
        return Ok(());
    }
    let wait = DateTime::<Utc>::from_timestamp(at.timestamp(), 0).unwrap_or(at) - now;
    Err(Outcome::Retry {
        error: format!("microsoft ads: {what}"),
        retry_after: Some(
            wait.to_std()
                .unwrap_or_default()
                .max(Duration::from_millis(50)),
        ),
    })
}

/// Builds one `OfflineConversion`, or the outcome that replaces sending it.
pub fn encode_conversion(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    let mut c = identity(d, now)?;
    // With a known click time: the conversion must follow its click, within 90 days of it.
    if let (true, Some(clicked)) = (c.contains_key("MicrosoftClickId"), d.payload.click_time) {
        if d.event_time < clicked {
            return Err(Outcome::failed(
                "microsoft ads: the conversion time is earlier than the click time",
            ));
        }
        if clicked < now - TimeDelta::days(MAX_AGE_DAYS) {
            return Err(Outcome::skipped(format!(
                "click too old for microsoft ads ({MAX_AGE_DAYS} days)"
            )));
        }
    }
    not_before(
        d.event_time,
        now,
        "the conversion time is in the future; waiting for it",
    )?;
    match value_number(d) {
        Ok(Some(v)) => {
            c.insert("ConversionValue".into(), Value::Number(v));
        }
        Ok(None) => {}
        Err(e) => return Err(Outcome::failed(format!("microsoft ads: {e}"))),
    }
    if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
        c.insert(
            "ConversionCurrencyCode".into(),
            json!(cur.to_ascii_uppercase()),
        );
    }
    Ok(Value::Object(c))
}

/// Builds one `OfflineConversionAdjustment` (`Retract` or `Restate` of the conversion with the same
/// goal name, time and click id), or the outcome that replaces sending it. `event_time` of an
/// adjustment row is the adjusted conversion's time; the adjustment is timed `now`.
pub fn encode_adjustment(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    let mut a = identity(d, now)?;
    not_before(
        d.event_time,
        now,
        "an adjustment cannot be timed before its conversion; waiting",
    )?;
    a.insert("AdjustmentTime".into(), json!(date_time(now)));
    match d.kind {
        Kind::Retraction => {
            a.insert("AdjustmentType".into(), json!("Retract"));
        }
        Kind::Restatement => {
            a.insert("AdjustmentType".into(), json!("Restate"));
            // The restated value is the conversion's new value, not a difference.
            let value = match value_number(d) {
                Ok(Some(v)) => v,
                Ok(None) => return Err(Outcome::failed("microsoft ads restatement needs a value")),
                Err(e) => return Err(Outcome::failed(format!("microsoft ads: {e}"))),
            };
            a.insert("AdjustmentValue".into(), Value::Number(value));
            if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
                a.insert(
                    "AdjustmentCurrencyCode".into(),
                    json!(cur.to_ascii_uppercase()),
                );
            }
        }
        Kind::Conversion => return Err(Outcome::failed("internal: not an adjustment")),
    }
    Ok(Value::Object(a))
}

/// Which operation a group of rows goes to; conversions go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// `OfflineConversions/Apply`.
    Conversions,
    /// `OfflineConversionAdjustments/Apply`.
    Adjustments,
}

impl Operation {
    /// The path under the endpoint and the request field holding the rows.
    pub fn route(self) -> (&'static str, &'static str) {
        match self {
            Operation::Conversions => (CONVERSIONS_PATH, "OfflineConversions"),
            Operation::Adjustments => (ADJUSTMENTS_PATH, "OfflineConversionAdjustments"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// What one request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Microsoft processed the request: one outcome per row sent.
    Rows(Vec<Outcome>),
    /// The request as a whole failed (throttled, credentials, server error, no answer).
    Batch(BatchAnswer),
}

impl MicrosoftAds {
    /// A valid access token: the cached one, or a fresh one from the refresh token. A new refresh
    /// token in the answer replaces the one in use for the rest of the process.
    pub async fn access_token(&self) -> Result<Secret, BatchAnswer> {
        let mut state = self.token.lock().await;
        if let Some(token) = state.cached.as_ref().and_then(Token::fresh) {
            return Ok(token);
        }
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.expose()),
            ("refresh_token", state.refresh_token.expose()),
            ("scope", SCOPE),
        ];
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.expose()));
        }
        let request = self.http.post(&self.token_endpoint).form(&form);
        let grant = oauth::exchange(request, "microsoft oauth").await?;
        if let Some(rotated) = grant.refresh_token {
            if rotated != state.refresh_token.expose() {
                tracing::info!(
                    destination = %self.name,
                    "microsoft oauth returned a new refresh token; it is used until pgcapi stops \
                     (store it in the config's secret to keep it across restarts)"
                );
                state.refresh_token = Secret::new(rotated);
            }
        }
        state.cached = Some(grant.token.clone());
        Ok(grant.token.token)
    }

    /// A POST to `url` with the headers every Campaign Management call carries.
    fn authorized(&self, url: &str, token: &Secret) -> reqwest::RequestBuilder {
        self.http
            .post(url)
            .bearer_auth(token.expose())
            .header("DeveloperToken", self.developer_token.expose())
            .header("CustomerId", &self.customer_id)
            .header("CustomerAccountId", &self.account_id)
    }

    /// Sends one request carrying `rows` of `items` and classifies the answer.
    async fn post(&self, request: &Request, items: &[Value], rows: &[usize]) -> Answer {
        let started = Instant::now();
        let answer = self.post_untimed(request, items, rows).await;
        match &answer {
            Answer::Rows(_) => crate::metrics::dispatch_request(
                &self.name,
                crate::metrics::RequestOutcome::Accepted,
                started.elapsed(),
            ),
            Answer::Batch(batch) => observe_request(&self.name, started, batch),
        }
        answer
    }

    /// [`MicrosoftAds::post`] without the metrics.
    async fn post_untimed(&self, request: &Request, items: &[Value], rows: &[usize]) -> Answer {
        let count = rows.len();
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(answer) => return Answer::Batch(answer),
        };
        let response = match self
            .authorized(&request.url, &token)
            .json(&request.body(items, rows))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Answer::Batch(transport_error("microsoft ads", e)),
        };
        let status = response.status();
        let tracking = response
            .headers()
            .get("TrackingId")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.unwrap_or_default();
        let answer = classify(status, tracking, &text, count);
        if let Answer::Batch(
            BatchAnswer::Retry { error, .. } | BatchAnswer::NeedsOperator { error, .. },
        ) = &answer
        {
            if status == reqwest::StatusCode::UNAUTHORIZED || is_expired_token(error) {
                // Revoked or expired early: fetch a new access token next time.
                self.token.lock().await.cached = None;
            }
        }
        answer
    }

    /// Sends the rows of `request` in one request.
    async fn apply(&self, request: &Request, items: &[Value]) -> Vec<(usize, Outcome)> {
        let rows = &request.rows;
        match self.post(request, items, rows).await {
            Answer::Rows(outcomes) => rows.iter().copied().zip(outcomes).collect(),
            Answer::Batch(answer) => {
                let outcome = answer.outcome();
                rows.iter().map(|&i| (i, outcome.clone())).collect()
            }
        }
    }
}

impl Destination for MicrosoftAds {
    fn name(&self) -> &str {
        &self.name
    }

    fn platform(&self) -> Platform {
        Platform::MicrosoftAds
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let plan = self.plan(batch, Utc::now());
            let mut outcomes = plan.not_sent.clone();
            for request in &plan.requests {
                outcomes.extend(self.apply(request, &plan.items).await);
            }
            in_order(batch.len(), outcomes)
        })
    }

    /// Conversions to `OfflineConversions/Apply`, then adjustments to
    /// `OfflineConversionAdjustments/Apply`.
    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        Plan::encode(
            batch,
            |d| match d.kind {
                Kind::Conversion => {
                    encode_conversion(d, now).map(|row| (Operation::Conversions, row))
                }
                Kind::Retraction | Kind::Restatement => {
                    encode_adjustment(d, now).map(|row| (Operation::Adjustments, row))
                }
            },
            |&operation| {
                let (path, collection) = operation.route();
                Request::new(format!("{}{path}", self.base), collection)
            },
        )
    }

    fn healthcheck<'a>(&'a self, probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move {
            let wanted: std::collections::BTreeSet<&str> = probe
                .rules
                .iter()
                .filter_map(|r| r.microsoft.conversion_name.as_deref())
                .collect();
            let (ok, text) = self.check(wanted).await;
            Health::only(ok, text)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Health check
// ---------------------------------------------------------------------------------------------

impl MicrosoftAds {
    /// The health check: obtains an access token, then reads the customer's offline conversion
    /// goals (`ConversionGoals/QueryByIds` with no ids and type `OfflineConversion`), which sends
    /// nothing, proves the developer token, customer and account ids, and shows whether every goal
    /// the rules name (`wanted`) exists.
    async fn check(&self, wanted: std::collections::BTreeSet<&str>) -> (bool, String) {
        let token = match self.access_token().await {
            Ok(token) => token,
            Err(answer) => return (false, answer.error()),
        };
        let request =
            json!({"ConversionGoalIds": null, "ConversionGoalTypes": "OfflineConversion"});
        let url = format!("{}{GOALS_PATH}", self.base);
        let response = match self.authorized(&url, &token).json(&request).send().await {
            Ok(r) => r,
            Err(e) => {
                return (
                    false,
                    format!("microsoft ads: request failed: {}", e.without_url()),
                )
            }
        };
        let answer = super::http::Answer::read(response).await;
        let body = answer.json();
        let faults: Vec<MsError> = ["Errors", "OperationErrors", "BatchErrors"]
            .iter()
            .flat_map(|f| errors(&body, f))
            .collect();
        let Some(goals) = body.get("ConversionGoals").and_then(Value::as_array) else {
            let why = faults
                .first()
                .map(MsError::describe)
                .unwrap_or_else(|| excerpt(&answer.text));
            return (
                false,
                format!(
                    "cannot read the offline conversion goals: HTTP {}: {why}",
                    answer.status.as_u16()
                ),
            );
        };
        let names: Vec<&str> = goals
            .iter()
            .filter_map(|g| g.get("Name").and_then(Value::as_str))
            .collect();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !names.contains(w))
            .collect();
        if missing.is_empty() {
            (
            true,
            format!(
                "token, developer token, customer {} and account {} accepted; offline goals found: {}",
                self.customer_id,
                self.account_id,
                wanted.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
        } else {
            (
                false,
                format!(
                    "no offline conversion goal named {} (the account has: {})",
                    missing.join(", "),
                    names.join(", ")
                ),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Response classification
// ---------------------------------------------------------------------------------------------

/// One Microsoft error (`BatchError`, `OperationError` or `AdApiError`).
#[derive(Debug, Clone, PartialEq)]
pub struct MsError {
    /// The numeric code (`117`).
    pub code: Option<i64>,
    /// The symbolic code (`CallRateExceeded`).
    pub error_code: String,
    /// Microsoft's message.
    pub message: String,
    /// The row index, for batch errors.
    pub index: Option<usize>,
}

impl MsError {
    /// `ErrorCode (Code): Message`, Microsoft's own words.
    pub fn describe(&self) -> String {
        let mut out = self.error_code.clone();
        if let Some(code) = self.code {
            out.push_str(&format!(" ({code})"));
        }
        if !self.message.is_empty() {
            out.push_str(&format!(": {}", first_line(&self.message)));
        }
        out
    }

    /// Error 117: too many calls in the last 60 seconds.
    fn is_throttle(&self) -> bool {
        self.code == Some(117) || self.error_code == "CallRateExceeded"
    }
}

/// The errors of a JSON array field.
fn errors(body: &Value, field: &str) -> Vec<MsError> {
    body.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| MsError {
            code: e.get("Code").and_then(Value::as_i64),
            error_code: e
                .get("ErrorCode")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            message: e
                .get("Message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            index: e
                .get("Index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok()),
        })
        .collect()
}

/// Whether an error text says the access token expired (Microsoft answers this even with HTTP 200).
fn is_expired_token(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("authenticationtokenexpired") || lower.contains("authentication token expired")
}

/// What one row error means for its row.
pub fn row_outcome(e: &MsError) -> Outcome {
    let error = e.describe();
    if e.is_throttle() {
        return Outcome::Retry {
            error,
            retry_after: Some(THROTTLE_DELAY),
        };
    }
    match e.error_code.as_str() {
        // A goal created less than two hours ago does not take conversions yet.
        "OfflineConversionNotAcceptedForGoal" => Outcome::Retry {
            error,
            retry_after: Some(GOAL_NOT_READY_DELAY),
        },
        // Microsoft's own temporary failure.
        "OfflineConversionsApplyFailed" | "InternalError" => Outcome::retry(error),
        // Time-window, click-id, name, value and currency errors are the row's: they stay failed.
        _ => Outcome::failed(error),
    }
}

/// Turns Microsoft's answer to a request carrying `count` rows into per-row outcomes, or a
/// whole-request answer. The body decides, whatever the status: a 200 may carry a fault.
pub fn classify(
    status: reqwest::StatusCode,
    tracking: Option<String>,
    body: &str,
    count: usize,
) -> Answer {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let tracking = tracking.or_else(|| {
        parsed
            .get("TrackingId")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let request_errors: Vec<MsError> = ["Errors", "OperationErrors"]
        .iter()
        .flat_map(|f| errors(&parsed, f))
        .collect();
    let mut row_errors = errors(&parsed, "PartialErrors");
    let fault_rows = errors(&parsed, "BatchErrors");
    // Row errors inside a fault (not a 200 with `PartialErrors`): the call failed, so the rows it
    // names nothing against are not known to be applied.
    let failed_call = !fault_rows.is_empty() || !status.is_success();
    row_errors.extend(fault_rows);
    let all = request_errors.iter().chain(&row_errors);
    if all.clone().any(MsError::is_throttle) {
        let first = all.clone().find(|e| e.is_throttle()).map(MsError::describe);
        return Answer::Batch(BatchAnswer::Retry {
            error: format!(
                "microsoft ads: HTTP {}: {}",
                status.as_u16(),
                first.unwrap_or_default()
            ),
            retry_after: Some(THROTTLE_DELAY),
        });
    }
    let fault_code = parsed
        .get("ErrorCode")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    if !request_errors.is_empty() || fault_code.is_some() || !parsed.is_object() {
        // A fault (a request-level error, an authentication error, or no JSON at all): nothing of
        // the request was applied, and no row is to blame. Temporary or the operator's to fix: the
        // rows stay pending.
        let message = match (request_errors.first(), fault_code) {
            (Some(e), _) => e.describe(),
            (None, Some(code)) => {
                let text = parsed
                    .get("ErrorMessage")
                    .or_else(|| parsed.get("Message"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                format!("{code}: {}", first_line(text))
            }
            (None, None) => excerpt(body),
        };
        let error = format!("microsoft ads: HTTP {}: {message}", status.as_u16());
        let temporary = status.is_server_error()
            && request_errors
                .iter()
                .all(|e| e.error_code.is_empty() || e.error_code == "InternalError");
        return Answer::Batch(if is_expired_token(&error) || temporary {
            BatchAnswer::Retry {
                error,
                retry_after: None,
            }
        } else {
            operator_retry(error, None)
        });
    }
    if !status.is_success() && row_errors.is_empty() {
        let error = format!("microsoft ads: HTTP {}: {}", status.as_u16(), excerpt(body));
        return Answer::Batch(if is_retryable_status(status) {
            BatchAnswer::Retry {
                error,
                retry_after: None,
            }
        } else {
            operator_retry(error, None)
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; count];
    let mut unplaced = Vec::new();
    for e in &row_errors {
        match e.index.filter(|&i| i < count) {
            Some(i) => {
                let o = row_outcome(e);
                outcomes[i] = Some(match outcomes[i].take() {
                    Some(Outcome::Failed { error }) => match o {
                        Outcome::Failed { error: more } => {
                            Outcome::failed(format!("{error}; {more}"))
                        }
                        _ => Outcome::Failed { error },
                    },
                    Some(prev @ Outcome::Retry { .. }) if !matches!(o, Outcome::Failed { .. }) => {
                        prev
                    }
                    _ => o,
                });
            }
            None => unplaced.push(e),
        }
    }
    if let Some(e) = unplaced.first() {
        // An error naming no row of this request: no row can be said to have been applied.
        let error = format!("microsoft ads: {}", e.describe());
        for slot in outcomes.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(Outcome::needs_operator(error.clone()));
        }
    }
    Answer::Rows(
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    if failed_call {
                        // Resending is safe: Microsoft ignores a conversion it already has.
                        Outcome::retry(format!(
                            "microsoft ads: HTTP {}: the call failed for other rows of the request",
                            status.as_u16()
                        ))
                    } else {
                        Outcome::Sent {
                            platform_ref: tracking.clone(),
                        }
                    }
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::test_support::{h, purchase, t0};

    fn microsoft(d: &mut Delivery) {
        d.payload.conversion_action = Some("Offline purchase".into());
        d.payload.keys.clear();
        d.payload
            .keys
            .insert(MatchKey::Msclkid, "3d5a6b0c9e2f41a8b7c6d5e4f3a2b1c0".into());
        d.payload.keys.insert(MatchKey::Email, h('a'));
    }

    #[test]
    fn an_offline_conversion_has_microsoft_s_exact_shape() {
        let mut d = purchase(7, t0() + TimeDelta::milliseconds(730));
        microsoft(&mut d);
        let c = encode_conversion(&d, t0() + TimeDelta::days(1)).unwrap();
        assert_eq!(
            c,
            json!({
                "ConversionName": "Offline purchase",
                "ConversionTime": "2026-03-01T12:00:00Z",
                "MicrosoftClickId": "3d5a6b0c9e2f41a8b7c6d5e4f3a2b1c0",
                "HashedEmailAddress": h('a'),
                "ConversionValue": 49.9,
                "ConversionCurrencyCode": "EUR",
            })
        );
    }

    #[test]
    fn a_row_without_click_id_email_or_phone_is_skipped_with_the_reason() {
        let mut d = purchase(1, t0());
        microsoft(&mut d);
        d.payload.keys.clear();
        assert_eq!(
            encode_conversion(&d, t0()),
            Err(Outcome::skipped(
                "no msclkid and no hashed email or phone for microsoft ads"
            ))
        );
        d.payload.keys.insert(MatchKey::Phone, h('b'));
        let c = encode_conversion(&d, t0()).unwrap();
        assert_eq!(c["HashedPhoneNumber"], h('b'));
        assert!(c.get("MicrosoftClickId").is_none());
        assert_eq!(
            encode_conversion(&d, t0() + TimeDelta::days(91)),
            Err(Outcome::skipped("too old for microsoft ads (90 days)"))
        );
    }

    #[test]
    fn adjustments_repeat_the_conversion_s_name_time_and_click_id() {
        let mut d = purchase(7, t0() + TimeDelta::milliseconds(300));
        microsoft(&mut d);
        d.kind = Kind::Retraction;
        let now = t0() + TimeDelta::hours(5);
        let conversion = encode_conversion(&d, now).unwrap();
        let retract = encode_adjustment(&d, now).unwrap();
        for field in ["ConversionName", "ConversionTime", "MicrosoftClickId"] {
            assert_eq!(retract[field], conversion[field], "{field}");
        }
        assert_eq!(retract["AdjustmentType"], "Retract");
        assert_eq!(retract["AdjustmentTime"], "2026-03-01T17:00:00Z");
        assert!(retract.get("AdjustmentValue").is_none());
        assert!(retract.get("AdjustmentCurrencyCode").is_none());
        d.kind = Kind::Restatement;
        d.value = Some("30".into());
        let restate = encode_adjustment(&d, now).unwrap();
        assert_eq!(restate["AdjustmentType"], "Restate");
        assert_eq!(restate["AdjustmentValue"], 30.0);
        assert_eq!(restate["AdjustmentCurrencyCode"], "EUR");
        d.value = None;
        assert!(matches!(
            encode_adjustment(&d, now),
            Err(Outcome::Failed { .. })
        ));
    }

    #[test]
    fn a_known_click_time_bounds_the_conversion() {
        let mut d = purchase(1, t0());
        microsoft(&mut d);
        d.payload.click_time = Some(t0() + TimeDelta::minutes(5));
        assert!(matches!(
            encode_conversion(&d, t0() + TimeDelta::hours(1)),
            Err(Outcome::Failed { .. })
        ));
        d.payload.click_time = Some(t0() - TimeDelta::days(89));
        assert!(encode_conversion(&d, t0()).is_ok());
        assert_eq!(
            encode_conversion(&d, t0() + TimeDelta::days(2)),
            Err(Outcome::skipped(
                "click too old for microsoft ads (90 days)"
            ))
        );
    }

    #[test]
    fn a_future_conversion_time_waits_instead_of_being_refused() {
        let mut d = purchase(1, t0() + TimeDelta::seconds(3));
        microsoft(&mut d);
        match encode_conversion(&d, t0()) {
            Err(Outcome::Retry { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(3)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_rotated_refresh_token_is_used_for_the_next_refresh() {
        use axum::routing::post;
        use std::sync::{Arc, Mutex};
        // GIVEN a token endpoint that answers each refresh with a new refresh token
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/token",
            post(move |body: String| {
                let s = s.clone();
                async move {
                    assert!(body.contains("grant_type=refresh_token"), "{body}");
                    assert!(body.contains("msads.manage"), "{body}");
                    assert!(!body.contains("client_secret"), "{body}");
                    let n = {
                        let mut seen = s.lock().unwrap();
                        seen.push(body);
                        seen.len()
                    };
                    axum::Json(
                        json!({"access_token": format!("at-{n}"), "expires_in": 3600,
                        "refresh_token": format!("rt-{n}"), "token_type": "Bearer"}),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let config = MicrosoftAdsConfig {
            token_endpoint: Some(format!("http://{addr}/token")),
            customer_id: "1234567".into(),
            account_id: "7654321".into(),
            developer_token: Secret::new("dev"),
            client_id: Secret::new("cid"),
            client_secret: None,
            refresh_token: Secret::new("rt-0"),
        };
        let api = ApiConfig::default();
        let ms = MicrosoftAds::new("microsoft", &api, &config, &DispatchConfig::default()).unwrap();
        // WHEN a token is fetched, cached, and fetched again after the cache is dropped
        assert_eq!(ms.access_token().await.unwrap().expose(), "at-1");
        assert_eq!(ms.access_token().await.unwrap().expose(), "at-1");
        ms.token.lock().await.cached = None;
        assert_eq!(ms.access_token().await.unwrap().expose(), "at-2");
        // THEN the second refresh used the rotated token
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen[0].contains("refresh_token=rt-0"), "{}", seen[0]);
        assert!(seen[1].contains("refresh_token=rt-1"), "{}", seen[1]);
    }

    #[test]
    fn partial_errors_map_to_rows_by_index() {
        let body = json!({"PartialErrors": [
            {"Code": 5617, "ErrorCode": "ClickIdDateTimeOutsideGoalConversionWindow",
             "Message": "The click is outside the goal's conversion window.", "Index": 1,
             "FieldPath": null, "Details": null, "Type": "BatchError"},
            {"Code": 5615, "ErrorCode": "OfflineConversionNotAcceptedForGoal",
             "Message": "Not yet.", "Index": 2},
        ]})
        .to_string();
        let Answer::Rows(out) = classify(reqwest::StatusCode::OK, Some("trk".into()), &body, 3)
        else {
            panic!()
        };
        assert_eq!(
            out[0],
            Outcome::Sent {
                platform_ref: Some("trk".into())
            }
        );
        assert_eq!(
            out[1],
            Outcome::failed(
                "ClickIdDateTimeOutsideGoalConversionWindow (5617): The click is outside the goal's conversion window."
            )
        );
        assert!(matches!(
            out[2],
            Outcome::Retry {
                retry_after: Some(GOAL_NOT_READY_DELAY),
                ..
            }
        ));
    }

    #[test]
    fn row_errors_inside_a_fault_fail_their_rows_and_retry_the_others() {
        let body = json!({"TrackingId": "t", "Type": "ApiFaultDetail", "BatchErrors": [
            {"Code": null, "ErrorCode": "OfflineConversionMicrosoftClickIdInvalid",
             "Message": "Bad click.", "Index": 0}]})
        .to_string();
        let Answer::Rows(out) = classify(reqwest::StatusCode::BAD_REQUEST, None, &body, 2) else {
            panic!()
        };
        assert_eq!(
            out[0],
            Outcome::failed("OfflineConversionMicrosoftClickIdInvalid: Bad click.")
        );
        assert!(matches!(out[1], Outcome::Retry { .. }), "{:?}", out[1]);
    }

    #[test]
    fn throttling_and_faults_in_a_200_are_read_from_the_body() {
        let throttled = json!({"TrackingId": "t", "Errors": [
            {"Code": 117, "ErrorCode": "CallRateExceeded", "Message": "Too many calls."}]})
        .to_string();
        for status in [reqwest::StatusCode::OK, reqwest::StatusCode::BAD_REQUEST] {
            assert_eq!(
                classify(status, None, &throttled, 2),
                Answer::Batch(BatchAnswer::Retry {
                    error: format!(
                        "microsoft ads: HTTP {}: CallRateExceeded (117): Too many calls.",
                        status.as_u16()
                    ),
                    retry_after: Some(THROTTLE_DELAY),
                })
            );
        }
        let expired = json!({"Errors": [{"Code": 109, "ErrorCode": "AuthenticationTokenExpired",
            "Message": "Authentication token expired. Please renew it or obtain a new one."}]})
        .to_string();
        match classify(reqwest::StatusCode::OK, None, &expired, 1) {
            Answer::Batch(BatchAnswer::Retry { retry_after, error }) => {
                assert_eq!(retry_after, None, "{error}");
            }
            other => panic!("{other:?}"),
        }
        let soap = "<s:Envelope><s:Body><s:Fault>Authentication token expired</s:Fault></s:Body></s:Envelope>";
        assert!(matches!(
            classify(reqwest::StatusCode::OK, None, soap, 1),
            Answer::Batch(BatchAnswer::Retry { .. })
        ));
        let developer = json!({"Errors": [{"Code": 105, "ErrorCode": "InvalidCredentials",
            "Message": "Authentication failed."}]})
        .to_string();
        assert!(matches!(
            classify(reqwest::StatusCode::UNAUTHORIZED, None, &developer, 1),
            Answer::Batch(BatchAnswer::NeedsOperator {
                retry_after: None,
                ..
            })
        ));
    }
}

//! Google Ads API: click conversions and conversion adjustments over REST (platforms.md §2.1–2.3).
//!
//! Conversions go to `customers/{cid}:uploadClickConversions`, retractions and restatements to
//! `customers/{cid}:uploadConversionAdjustments`, both with `partialFailure: true`, keyed by `orderId`
//! (the row's `event_id`). Google answers per row: errors in `partialFailureError` carry the row's
//! index. An OAuth2 access token is obtained from the refresh token and cached until shortly before it
//! expires.

use super::batch::{bisect, in_order, observe_request, BatchAnswer, Plan, Request};
use super::google_auth::{GoogleAuth, ADS_SCOPE};
use super::health::{field, synthetic, unreachable, Health, HealthFuture, Probe};
use super::http::{
    base_url, excerpt, is_retryable_status, operator_retry, transport_error, Answer,
};
use super::{batch_size, value_number, Destination, DestinationError, Outcome, SendFuture};
use crate::config::{ApiConfig, DispatchConfig, GoogleAdsConfig, Secret};
use crate::event::{Delivery, Kind};
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Production Google Ads API host.
pub const DEFAULT_ENDPOINT: &str = "https://googleads.googleapis.com";
/// Google Ads API version, the one default: v26, the version Google's sunset-dates page recommends
/// to start with (released October 2026, projected sunset November 2027).
pub const DEFAULT_API_VERSION: &str = "v26";
/// Google's OAuth2 token endpoint.
pub use super::google_auth::DEFAULT_TOKEN_ENDPOINT;
/// Conversions (or adjustments) per request (§2.1, §2.2).
pub const MAX_EVENTS: usize = 2_000;
/// Longest click-through window of a conversion action, in days (§2.1).
pub const MAX_CLICK_AGE_DAYS: i64 = 90;
/// Youngest click Google accepts a conversion for, in hours (`TOO_RECENT_EVENT`, §2.1).
pub const MIN_CLICK_AGE_HOURS: i64 = 6;
/// Oldest conversion that can still be adjusted, in days (`CONVERSION_EXPIRED`, §2.2).
pub const MAX_ADJUSTMENT_AGE_DAYS: i64 = 54;

/// A Google Ads customer account reached with Google credentials (user OAuth, a service account
/// key or Application Default Credentials, see [`super::google_auth`]) and, when configured, a
/// developer token.
pub struct GoogleAds {
    /// The config name.
    name: String,
    /// The API host, without a trailing slash.
    base: String,
    /// The customer id, digits only.
    customer_id: String,
    /// `{endpoint}/{version}/customers/{customer_id}`.
    customer_url: String,
    /// Access tokens.
    auth: Arc<GoogleAuth>,
    /// The `developer-token` header, sent when configured (Google stopped requiring it in 2026).
    developer_token: Option<Secret>,
    /// The `login-customer-id` header (manager account), digits only.
    login_customer_id: Option<String>,
    /// Send `validateOnly: true`.
    validate_only: bool,
    /// Rows per request.
    max_batch: usize,
    /// The HTTP client.
    http: reqwest::Client,
}

/// Customer ids go into URLs and headers as digits only (§8 item 20).
pub(crate) fn digits_only(id: &str) -> String {
    id.chars().filter(char::is_ascii_digit).collect()
}

impl GoogleAds {
    /// Builds the destination `name` at `api` (or Google's) for the customer of `config`, with the
    /// credentials of [`GoogleAuth::from_config`].
    pub fn new(
        name: &str,
        api: &ApiConfig,
        config: &GoogleAdsConfig,
        dispatch: &DispatchConfig,
    ) -> Result<GoogleAds, DestinationError> {
        let http = super::http::http_client(name, dispatch)?;
        let auth = GoogleAuth::from_config(name, &config.auth, &[ADS_SCOPE], http.clone())?;
        Ok(GoogleAds::with_auth(
            name,
            api,
            config,
            Arc::new(auth),
            http,
        ))
    }

    /// The destination at `api` (or Google's) for the customer of `config`, with `auth` (`config`'s
    /// own credentials are not read: Data Manager shares its token for retractions).
    pub(crate) fn with_auth(
        name: &str,
        api: &ApiConfig,
        config: &GoogleAdsConfig,
        auth: Arc<GoogleAuth>,
        http: reqwest::Client,
    ) -> GoogleAds {
        let version = api.api_version.as_deref().unwrap_or(DEFAULT_API_VERSION);
        let base = base_url(&api.endpoint, DEFAULT_ENDPOINT);
        let customer_id = digits_only(&config.customer_id);
        GoogleAds {
            name: name.to_string(),
            customer_url: format!("{base}/{version}/customers/{customer_id}"),
            customer_id: customer_id.to_string(),
            base,
            auth,
            developer_token: config
                .developer_token
                .clone()
                .filter(|t| !t.expose().is_empty()),
            login_customer_id: config
                .login_customer_id
                .as_deref()
                .map(digits_only)
                .filter(|s| !s.is_empty()),
            validate_only: config.validate_only,
            max_batch: batch_size(api, MAX_EVENTS),
            http,
        }
    }

    /// What kind of credentials it uses.
    pub fn credentials_kind(&self) -> &'static str {
        self.auth.describe()
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

/// Google's date-time format with its mandatory offset: `yyyy-mm-dd hh:mm:ss+00:00` (§2.1).
pub fn date_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
}

/// The conversion action of a row, or the failure saying the rule lacks one.
fn conversion_action(d: &Delivery) -> Result<&str, Outcome> {
    d.payload
        .conversion_action
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Outcome::failed("google ads needs a conversion action (rule google.conversion_action)")
        })
}

/// Builds one `ClickConversion`, or the outcome that replaces sending it.
pub fn encode_conversion(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    let action = conversion_action(d)?;
    let keys = &d.payload.keys;
    // One click id only: gclid, else gbraid, else wbraid (never both braids, §2.1).
    let click = [
        (MatchKey::Gclid, "gclid"),
        (MatchKey::Gbraid, "gbraid"),
        (MatchKey::Wbraid, "wbraid"),
    ]
    .into_iter()
    .find_map(|(key, field)| keys.get(&key).map(|v| (field, v)));
    let mut identifiers = Vec::new();
    for (key, field) in [
        (MatchKey::Email, "hashedEmail"),
        (MatchKey::Phone, "hashedPhoneNumber"),
    ] {
        if let Some(v) = keys.get(&key) {
            identifiers.push(json!({ field: v, "userIdentifierSource": "FIRST_PARTY" }));
        }
    }
    if click.is_none() && identifiers.is_empty() {
        return Err(Outcome::skipped("no usable match key for google ads"));
    }
    let clicked = d.payload.click_time.unwrap_or(d.event_time);
    if clicked < now - TimeDelta::days(MAX_CLICK_AGE_DAYS) {
        return Err(Outcome::skipped(format!(
            "too old for google ads ({MAX_CLICK_AGE_DAYS} days)"
        )));
    }
    if let (Some(_), Some(click_time)) = (click, d.payload.click_time) {
        let ready = click_time + TimeDelta::hours(MIN_CLICK_AGE_HOURS);
        if ready > now {
            return Err(Outcome::Retry {
                error: format!(
                    "google ads accepts a conversion {MIN_CLICK_AGE_HOURS} hours after its click"
                ),
                retry_after: (ready - now).to_std().ok(),
            });
        }
    }
    let mut c = Map::new();
    if let Some((field, v)) = click {
        c.insert(field.into(), json!(v));
    }
    c.insert("conversionAction".into(), json!(action));
    c.insert("conversionDateTime".into(), json!(date_time(d.event_time)));
    match value_number(d) {
        Ok(Some(v)) => {
            c.insert("conversionValue".into(), Value::Number(v));
        }
        Ok(None) => {}
        Err(e) => return Err(Outcome::failed(format!("google ads: {e}"))),
    }
    if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
        c.insert("currencyCode".into(), json!(cur.to_ascii_uppercase()));
    }
    c.insert("orderId".into(), json!(d.event_id));
    if !identifiers.is_empty() {
        c.insert("userIdentifiers".into(), Value::Array(identifiers));
    }
    // Consent only from a real consent column: without one, the account default applies.
    if d.payload.consent_column {
        let consent = if d.payload.consent {
            "GRANTED"
        } else {
            "DENIED"
        };
        c.insert("consent".into(), json!({ "adUserData": consent }));
    }
    Ok(Value::Object(c))
}

/// Builds one `ConversionAdjustment` (retraction or restatement keyed by `orderId`), or the outcome
/// that replaces sending it. `event_time` of an adjustment row is the adjusted conversion's time.
pub fn encode_adjustment(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    let action = conversion_action(d)?;
    if d.event_time < now - TimeDelta::days(MAX_ADJUSTMENT_AGE_DAYS) {
        return Err(Outcome::skipped(format!(
            "too old for google ads adjustments ({MAX_ADJUSTMENT_AGE_DAYS} days)"
        )));
    }
    // The adjustment must be timed after the conversion (§2.2, `ADJUSTMENT_PRECEDES_CONVERSION`), and
    // both are written to the second: a refund of a conversion sent in the same second waits for the
    // next one rather than being refused for good. No other waiting period applies since Sep 2024.
    let conversion_second = d.event_time.timestamp();
    if now.timestamp() <= conversion_second {
        let next_second = DateTime::<Utc>::from_timestamp(conversion_second + 1, 0).unwrap_or(now);
        return Err(Outcome::Retry {
            error: "google ads: an adjustment must be timed after its conversion; waiting for the next second".into(),
            retry_after: Some(
                (next_second - now)
                    .to_std()
                    .unwrap_or_default()
                    .max(Duration::from_millis(50)),
            ),
        });
    }
    let mut a = Map::new();
    a.insert("conversionAction".into(), json!(action));
    a.insert("orderId".into(), json!(d.event_id));
    a.insert("adjustmentDateTime".into(), json!(date_time(now)));
    match d.kind {
        Kind::Retraction => {
            a.insert("adjustmentType".into(), json!("RETRACTION"));
        }
        Kind::Restatement => {
            a.insert("adjustmentType".into(), json!("RESTATEMENT"));
            // The restated value is the new total, not a delta (§2.2, §8 item 17).
            let value = match value_number(d) {
                Ok(Some(v)) => v,
                Ok(None) => return Err(Outcome::failed("google ads restatement needs a value")),
                Err(e) => return Err(Outcome::failed(format!("google ads: {e}"))),
            };
            let mut r = Map::new();
            r.insert("adjustedValue".into(), Value::Number(value));
            if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
                r.insert("currencyCode".into(), json!(cur.to_ascii_uppercase()));
            }
            a.insert("restatementValue".into(), Value::Object(r));
        }
        Kind::Conversion => return Err(Outcome::failed("internal: not an adjustment")),
    }
    Ok(Value::Object(a))
}

/// Which upload a group of rows goes to; conversions go first, so that a batch's conversion is
/// there before its adjustment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Upload {
    /// `:uploadClickConversions` with `conversions`.
    Conversions,
    /// `:uploadConversionAdjustments` with `conversionAdjustments`.
    Adjustments,
}

impl Upload {
    /// The REST method of the upload.
    fn method(self) -> &'static str {
        match self {
            Upload::Conversions => "uploadClickConversions",
            Upload::Adjustments => "uploadConversionAdjustments",
        }
    }

    /// The request field holding the rows.
    fn collection(self) -> &'static str {
        match self {
            Upload::Conversions => "conversions",
            Upload::Adjustments => "conversionAdjustments",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// What one upload request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadAnswer {
    /// Google processed the request: one outcome per row sent.
    Rows(Vec<Outcome>),
    /// The request as a whole was refused or did not get through.
    Batch(BatchAnswer),
}

impl GoogleAds {
    /// A valid access token.
    pub(crate) async fn access_token(&self) -> Result<Secret, BatchAnswer> {
        self.auth.access_token().await
    }

    /// A POST to `url` with the token and the developer and login customer headers.
    fn authorized(&self, url: &str, token: &Secret) -> reqwest::RequestBuilder {
        let mut request = self.http.post(url).bearer_auth(token.expose());
        if let Some(developer) = &self.developer_token {
            request = request.header("developer-token", developer.expose());
        }
        if let Some(login) = &self.login_customer_id {
            request = request.header("login-customer-id", login);
        }
        request
    }

    /// Sends one upload request carrying `rows` of `items`.
    async fn post(
        &self,
        request: &Request,
        items: &[Value],
        rows: &[usize],
        sent: &[&Delivery],
    ) -> UploadAnswer {
        let started = std::time::Instant::now();
        let answer = self.post_untimed(request, items, rows, sent).await;
        match &answer {
            UploadAnswer::Rows(_) => crate::metrics::dispatch_request(
                &self.name,
                crate::metrics::RequestOutcome::Accepted,
                started.elapsed(),
            ),
            UploadAnswer::Batch(batch) => observe_request(&self.name, started, batch),
        }
        answer
    }

    /// [`GoogleAds::post`] without the metrics.
    async fn post_untimed(
        &self,
        request: &Request,
        items: &[Value],
        rows: &[usize],
        sent: &[&Delivery],
    ) -> UploadAnswer {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(answer) => return UploadAnswer::Batch(answer),
        };
        let response = self
            .authorized(&request.url, &token)
            .json(&request.body(items, rows))
            .send()
            .await;
        let answer = match response {
            Ok(r) => Answer::read(r).await,
            Err(e) => return UploadAnswer::Batch(transport_error("google ads", e)),
        };
        if answer.status == reqwest::StatusCode::UNAUTHORIZED {
            // The token may have been revoked or expired early: fetch a new one next time.
            self.auth.invalidate().await;
        }
        classify(
            answer.status,
            answer.retry_after,
            &answer.text,
            sent,
            Utc::now(),
        )
    }

    /// Sends the rows of `request`, bisecting requests refused because of a row.
    async fn upload(
        &self,
        request: &Request,
        batch: &[Delivery],
        items: &[Value],
    ) -> Vec<(usize, Outcome)> {
        let mut out = Vec::with_capacity(request.rows.len());
        let mut todo = vec![request.rows.clone()];
        while let Some(part) = todo.pop() {
            if part.is_empty() {
                continue;
            }
            let sent: Vec<&Delivery> = part.iter().map(|&i| &batch[i]).collect();
            match self.post(request, items, &part, &sent).await {
                UploadAnswer::Rows(outcomes) => out.extend(part.into_iter().zip(outcomes)),
                UploadAnswer::Batch(BatchAnswer::Rejected(error)) if part.len() == 1 => {
                    out.push((part[0], Outcome::Failed { error }))
                }
                UploadAnswer::Batch(BatchAnswer::Rejected(_)) => bisect(part, &mut todo),
                UploadAnswer::Batch(answer) => {
                    let outcome = answer.outcome();
                    out.extend(part.into_iter().map(|i| (i, outcome.clone())));
                }
            }
        }
        out
    }

    /// The request of one upload kind.
    fn request(&self, upload: Upload) -> Request {
        let request = Request::new(
            format!("{}:{}", self.customer_url, upload.method()),
            upload.collection(),
        )
        .with("partialFailure", true);
        if self.validate_only {
            request.with("validateOnly", true)
        } else {
            request
        }
    }
}

impl Destination for GoogleAds {
    fn name(&self) -> &str {
        &self.name
    }

    fn platform(&self) -> Platform {
        Platform::GoogleAds
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let plan = self.plan(batch, Utc::now());
            let mut outcomes = Vec::with_capacity(batch.len());
            for request in &plan.requests {
                outcomes.extend(self.upload(request, batch, &plan.items).await);
            }
            let outcomes = in_order(batch.len(), outcomes.into_iter().chain(plan.not_sent));
            if self.validate_only {
                // Google checked the rows and recorded nothing: they were not delivered.
                return outcomes.into_iter().map(validated_only).collect();
            }
            outcomes
        })
    }

    /// Conversions to `uploadClickConversions`, then retractions and restatements to
    /// `uploadConversionAdjustments`, both with `partialFailure` (and `validateOnly` when set).
    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        Plan::encode(
            batch,
            |d| match d.kind {
                Kind::Conversion => encode_conversion(d, now).map(|r| (Upload::Conversions, r)),
                Kind::Retraction | Kind::Restatement => {
                    encode_adjustment(d, now).map(|r| (Upload::Adjustments, r))
                }
            },
            |&upload| self.request(upload),
        )
    }

    fn healthcheck<'a>(&'a self, probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move {
            let (ok, text) = self.check(probe.conversion_action()).await;
            Health::only(ok, text)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Health check
// ---------------------------------------------------------------------------------------------

impl GoogleAds {
    /// The health check: the OAuth exchange, then an `uploadClickConversions` of one synthetic
    /// conversion with `validateOnly: true` (Google validates it and records nothing), to the
    /// conversion `action` of a rule that sends to the destination.
    async fn check(&self, action: Option<&str>) -> (bool, String) {
        let token = match self.access_token().await {
            Ok(token) => token,
            Err(answer) => return (false, self.auth.refusal(answer)),
        };
        let Some(action) = action else {
            return (
                true,
                "OAuth refresh token accepted; no rule gives this destination a conversion action, \
                 so no validateOnly upload was tried"
                    .into(),
            );
        };
        let plan = self.plan(&[synthetic(&self.name, Some(action))], Utc::now());
        if let Some((_, outcome)) = plan.not_sent.first() {
            return (
                false,
                format!("cannot build the test conversion: {outcome:?}"),
            );
        }
        let request = plan.requests[0].clone().with("validateOnly", true);
        let response = self
            .authorized(&request.url, &token)
            .json(&request.body(&plan.items, &request.rows))
            .send()
            .await;
        match response {
            Ok(r) => self.judge_check(action, Answer::read(r).await),
            Err(e) => (false, unreachable(&self.base, e)),
        }
    }

    /// What the answer to the health check's upload says.
    fn judge_check(&self, action: &str, answer: Answer) -> (bool, String) {
        let (status, body) = (answer.status, answer.json());
        if status.is_success() {
            let failure = body.get("partialFailureError").unwrap_or(&Value::Null);
            let row_errors = error_words(failure);
            if let Some(e) = row_errors.iter().find(|e| e.starts_with(NOT_ALLOWLISTED)) {
                return (false, format!("{NOT_ALLOWLISTED_ADVICE} ({e})"));
            }
            if let Some(e) = row_errors.iter().find(|e| e.contains("CONVERSION_ACTION")) {
                return (
                    false,
                    format!("conversion action {action} refused in a validateOnly upload: {e}"),
                );
            }
            let credentials = match self.auth.describe() {
                kind if kind.starts_with("user OAuth") => "OAuth",
                kind => kind,
            };
            let developer = if self.developer_token.is_some() {
                ", developer token"
            } else {
                ""
            };
            let mut text = format!(
                "{credentials}{developer} and customer {} accepted a validateOnly upload of one \
                 synthetic conversion (nothing recorded)",
                self.customer_id
            );
            if let Some(e) = row_errors.first() {
                text.push_str(&format!(
                    "; the synthetic row itself was refused ({e}), as made-up data may be"
                ));
            }
            return (true, text);
        }
        let error = body.get("error").unwrap_or(&Value::Null);
        let codes = error_words(error);
        if codes.iter().any(|c| c.starts_with(NOT_ALLOWLISTED)) {
            let codes = codes.join("; ");
            return (
                false,
                format!("{NOT_ALLOWLISTED_ADVICE} (HTTP {status}: {codes})"),
            );
        }
        let detail = if codes.is_empty() {
            field(error, "message").to_string()
        } else {
            codes.join("; ")
        };
        let what = if codes.iter().any(|c| c.starts_with("DEVELOPER_TOKEN")) {
            "developer token rejected"
        } else if status == reqwest::StatusCode::UNAUTHORIZED {
            "access token rejected"
        } else if status == reqwest::StatusCode::FORBIDDEN {
            "no access to this customer"
        } else {
            "validateOnly upload refused"
        };
        (false, format!("{what} (HTTP {status}: {detail})"))
    }
}

/// `CODE: message` of each error in a Google Ads failure (`details[].errors[]`).
fn error_words(status: &Value) -> Vec<String> {
    ads_errors(status)
        .into_iter()
        .map(|e| {
            let code = if e.code.is_empty() {
                "UNKNOWN"
            } else {
                &e.code
            };
            format!("{code}: {}", e.message)
        })
        .collect()
}

/// The reason recorded for rows Google accepted under `validate_only`.
pub const VALIDATE_ONLY_REASON: &str =
    "validate_only: Google validated the row and recorded nothing";

/// Under `validate_only` an accepted row was not delivered: it becomes a skip saying so.
fn validated_only(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Sent { .. } => Outcome::skipped(VALIDATE_ONLY_REASON),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Response classification
// ---------------------------------------------------------------------------------------------

/// Google's code for an account or developer token that may not use a feature; since 15 June 2026 it
/// answers click conversion uploads of everyone who did not import offline conversions before.
pub const NOT_ALLOWLISTED: &str = "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE";

/// What a row refused with [`NOT_ALLOWLISTED`] is recorded with: what to do, then Google's words.
pub const NOT_ALLOWLISTED_ADVICE: &str = "this Google Ads API access cannot import offline \
     conversions since 15 June 2026: use platform = google_data_manager";

/// The failure of a row Google refused with [`NOT_ALLOWLISTED`].
fn not_allowlisted(google: &str) -> Outcome {
    Outcome::failed(format!(
        "{NOT_ALLOWLISTED_ADVICE} ({NOT_ALLOWLISTED}: {google})"
    ))
}

/// Answers meaning the platform already has the conversion or adjustment: sent (§2.1, §8 item 10).
const ALREADY_THERE: &[&str] = &[
    "ORDER_ID_ALREADY_IN_USE",
    "CLICK_CONVERSION_ALREADY_EXISTS",
    "RESTATEMENT_ALREADY_EXISTS",
    "CONVERSION_ALREADY_RETRACTED",
];

/// One Google Ads error: its family (`conversionUploadError`), code, message and row index.
#[derive(Debug, Clone, PartialEq)]
struct AdsError {
    /// The error family, e.g. `conversionUploadError`.
    family: String,
    /// The code, e.g. `EXPIRED_EVENT`.
    code: String,
    /// Google's message.
    message: String,
    /// The row index from `location.fieldPathElements`, if the error names a row.
    index: Option<usize>,
}

/// The errors of a `GoogleAdsFailure` list (`details[].errors[]`).
fn ads_errors(status: &Value) -> Vec<AdsError> {
    let mut out = Vec::new();
    let details = status.get("details").and_then(Value::as_array);
    for detail in details.into_iter().flatten() {
        for e in detail
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (family, code) = e
                .get("errorCode")
                .and_then(Value::as_object)
                .and_then(|m| m.iter().next())
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .unwrap_or_default();
            let index = e
                .pointer("/location/fieldPathElements")
                .and_then(Value::as_array)
                .and_then(|path| path.iter().find_map(|p| p.get("index")))
                .and_then(Value::as_u64)
                .map(|i| i as usize);
            out.push(AdsError {
                family,
                code,
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                index,
            });
        }
    }
    out
}

/// What one row error means for its row.
fn row_outcome(
    e: &AdsError,
    d: &Delivery,
    platform_ref: &Option<String>,
    now: DateTime<Utc>,
) -> Outcome {
    let error = format!("{}: {}", e.code, e.message);
    if ALREADY_THERE.contains(&e.code.as_str()) {
        return Outcome::Sent {
            platform_ref: platform_ref.clone(),
        };
    }
    match e.code.as_str() {
        NOT_ALLOWLISTED => not_allowlisted(&e.message),
        "TOO_RECENT_EVENT" => {
            let ready = d
                .payload
                .click_time
                .map(|c| c + TimeDelta::hours(MIN_CLICK_AGE_HOURS));
            let wait = ready
                .and_then(|r| (r - now).to_std().ok())
                .unwrap_or(Duration::from_secs(3600))
                .max(Duration::from_secs(600));
            Outcome::Retry {
                error,
                retry_after: Some(wait),
            }
        }
        "TOO_RECENT_CONVERSION_ACTION" => Outcome::Retry {
            error,
            retry_after: Some(Duration::from_secs(3600)),
        },
        // Google's error enum for adjustments still lists a conversion "too recent" to adjust (the
        // old 24 h wait, lifted in Sep 2024 per §2.2): should it come back, it is worth waiting for.
        "TOO_RECENT_CONVERSION" => Outcome::Retry {
            error,
            retry_after: Some(Duration::from_secs(3600)),
        },
        // Another row of the same request carried this order id; alone it is either new or a duplicate.
        "DUPLICATE_ORDER_ID" => Outcome::retry(error),
        // Enhanced conversions for leads without a Google click: expected, nothing to attribute (§2.3).
        "CLICK_NOT_FOUND" if !has_click_id(d) => Outcome::skipped(error),
        _ if matches!(e.family.as_str(), "internalError" | "quotaError") => Outcome::retry(error),
        _ => Outcome::failed(error),
    }
}

/// Whether the row carries a Google click id.
fn has_click_id(d: &Delivery) -> bool {
    [MatchKey::Gclid, MatchKey::Gbraid, MatchKey::Wbraid]
        .iter()
        .any(|k| d.payload.keys.contains_key(k))
}

/// Combines several outcomes for one row: a failure wins, then a retry, then a skip, then sent.
fn worst(a: Outcome, b: Outcome) -> Outcome {
    /// Severity order.
    fn rank(o: &Outcome) -> u8 {
        match o {
            Outcome::Failed { .. } => 3,
            Outcome::Retry { .. } | Outcome::NeedsOperator { .. } => 2,
            Outcome::Skipped { .. } => 1,
            Outcome::Sent { .. } => 0,
        }
    }
    match (a, b) {
        (Outcome::Failed { error: x }, Outcome::Failed { error: y }) => Outcome::Failed {
            error: format!("{x}; {y}"),
        },
        (a, b) if rank(&b) > rank(&a) => b,
        (a, _) => a,
    }
}

/// Turns Google's answer to an upload of `sent` into per-row outcomes, or a whole-request answer.
///
/// A 200 maps each `partialFailureError` error to its row by index (rows without one are sent). A
/// refused request is retried when temporary (5xx, 429) or when the credentials or account settings are
/// at fault (no row named), and bisected when its error names a row.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    sent: &[&Delivery],
    now: DateTime<Utc>,
) -> UploadAnswer {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if status.is_success() {
        let platform_ref = parsed
            .get("jobId")
            .map(|j| match j {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .or_else(|| {
                parsed
                    .get("results")
                    .is_none()
                    .then(|| "validate_only".to_string())
            });
        let mut outcomes: Vec<Option<Outcome>> = vec![None; sent.len()];
        if let Some(failure) = parsed.get("partialFailureError").filter(|f| !f.is_null()) {
            let errors = ads_errors(failure);
            let mut unplaced = Vec::new();
            for e in &errors {
                match e.index.filter(|&i| i < sent.len()) {
                    Some(i) => {
                        let o = row_outcome(e, sent[i], &platform_ref, now);
                        outcomes[i] = Some(match outcomes[i].take() {
                            Some(prev) => worst(prev, o),
                            None => o,
                        });
                    }
                    None => unplaced.push(e),
                }
            }
            let summary = failure
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("partial failure")
                .to_string();
            let results = parsed.get("results").and_then(Value::as_array);
            if errors.is_empty() || !unplaced.is_empty() {
                // Errors that name no row: blame the rows Google returned no result for.
                let message = unplaced
                    .first()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or(summary);
                for (i, slot) in outcomes.iter_mut().enumerate() {
                    let empty = results
                        .and_then(|r| r.get(i))
                        .is_none_or(|r| r.as_object().is_none_or(Map::is_empty));
                    if slot.is_none() && empty {
                        *slot = Some(Outcome::failed(message.clone()));
                    }
                }
            }
        }
        return UploadAnswer::Rows(
            outcomes
                .into_iter()
                .map(|o| {
                    o.unwrap_or_else(|| Outcome::Sent {
                        platform_ref: platform_ref.clone(),
                    })
                })
                .collect(),
        );
    }
    let error = parsed.get("error").unwrap_or(&Value::Null);
    let message = describe(status, error, body);
    if is_retryable_status(status) {
        return UploadAnswer::Batch(BatchAnswer::Retry {
            error: message,
            retry_after,
        });
    }
    let errors = ads_errors(error);
    if let Some(e) = errors.iter().find(|e| e.code == NOT_ALLOWLISTED) {
        // Not a retry: this access will not be allowed by waiting. Every row says what to do.
        return UploadAnswer::Rows(sent.iter().map(|_| not_allowlisted(&e.message)).collect());
    }
    let expired = errors.iter().any(|e| e.code == "OAUTH_TOKEN_EXPIRED");
    if status == reqwest::StatusCode::UNAUTHORIZED && expired {
        // The cached token has been dropped; the next attempt fetches a new one.
        return UploadAnswer::Batch(BatchAnswer::Retry {
            error: message,
            retry_after: None,
        });
    }
    let names_a_row = errors.iter().any(|e| e.index.is_some())
        || error
            .get("details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|d| {
                d.get("fieldViolations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .any(|v| {
                let text = format!(
                    "{} {}",
                    v.get("field").and_then(Value::as_str).unwrap_or_default(),
                    v.get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                );
                text.contains("conversions[")
                    || text.contains("conversion_adjustments[")
                    || text.contains("conversionAdjustments[")
            });
    if status == reqwest::StatusCode::BAD_REQUEST && names_a_row {
        UploadAnswer::Batch(BatchAnswer::Rejected(message))
    } else {
        UploadAnswer::Batch(operator_retry(message, retry_after))
    }
}

/// Google's request-level error, verbatim: status, message and each detailed error code and message.
fn describe(status: reqwest::StatusCode, error: &Value, body: &str) -> String {
    let Some(message) = error.get("message").and_then(Value::as_str) else {
        return format!("google ads: HTTP {}: {}", status.as_u16(), excerpt(body));
    };
    let mut out = format!("google ads: HTTP {}", status.as_u16());
    if let Some(s) = error.get("status").and_then(Value::as_str) {
        out.push_str(&format!(" {s}"));
    }
    out.push_str(&format!(": {message}"));
    let details: Vec<String> = ads_errors(error)
        .into_iter()
        .map(|e| format!("{}: {}", e.code, e.message))
        .collect();
    if !details.is_empty() {
        out.push_str(&format!(" [{}]", details.join("; ")));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{GoogleAuthConfig, GoogleCredentials};
    use crate::destinations::test_support::{h, purchase, t0};
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::post;
    use axum::{Json, Router};
    use std::sync::{Arc, Mutex};

    fn google(d: &mut Delivery) {
        d.payload.conversion_action = Some("customers/1234567890/conversionActions/1001".into());
    }

    #[test]
    fn a_click_conversion_has_google_s_exact_shape() {
        // GIVEN a purchase with a gclid, a hashed email and phone, and a plain IP Google does not take
        let mut d = purchase(7, t0());
        google(&mut d);
        d.payload.consent_column = true;
        let now = t0() + TimeDelta::days(1);
        // WHEN it is encoded
        let c = encode_conversion(&d, now).unwrap();
        // THEN it carries the click id, the action, Google's date format, the order id and consent
        assert_eq!(
            c,
            json!({
                "gclid": "Cj0KCQ-test",
                "conversionAction": "customers/1234567890/conversionActions/1001",
                "conversionDateTime": "2026-03-01 12:00:00+00:00",
                "conversionValue": 49.9,
                "currencyCode": "EUR",
                "orderId": "order-7",
                "userIdentifiers": [
                    {"hashedEmail": h('a'), "userIdentifierSource": "FIRST_PARTY"},
                    {"hashedPhoneNumber": h('b'), "userIdentifierSource": "FIRST_PARTY"},
                ],
                "consent": {"adUserData": "GRANTED"},
            })
        );
        // AND a rule without a consent column sends no consent at all
        d.payload.consent_column = false;
        assert!(encode_conversion(&d, now).unwrap().get("consent").is_none());
        let mut g = google_ads("http://google.test");
        g.validate_only = true;
        let body = g.plan(&[d], now).preview().requests[0].body.clone();
        assert_eq!(body["partialFailure"], true);
        assert_eq!(body["validateOnly"], true);
        assert_eq!(body["conversions"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn only_one_braid_is_sent_and_gclid_wins() {
        let mut d = purchase(1, t0());
        google(&mut d);
        d.payload.keys.remove(&MatchKey::Gclid);
        d.payload.keys.insert(MatchKey::Gbraid, "gb".into());
        d.payload.keys.insert(MatchKey::Wbraid, "wb".into());
        let c = encode_conversion(&d, t0()).unwrap();
        assert_eq!(c["gbraid"], "gb");
        assert!(c.get("wbraid").is_none() && c.get("gclid").is_none());
    }

    #[test]
    fn conversions_are_checked_against_google_s_time_rules() {
        let mut d = purchase(1, t0());
        google(&mut d);
        assert_eq!(
            encode_conversion(&d, t0() + TimeDelta::days(91)),
            Err(Outcome::skipped("too old for google ads (90 days)"))
        );
        d.payload.click_time = Some(t0() - TimeDelta::hours(2));
        match encode_conversion(&d, t0()) {
            Err(Outcome::Retry { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(4 * 3600)))
            }
            other => panic!("{other:?}"),
        }
        d.payload.conversion_action = None;
        assert!(matches!(
            encode_conversion(&d, t0()),
            Err(Outcome::Failed { .. })
        ));
    }

    #[test]
    fn retractions_and_restatements_are_keyed_by_order_id() {
        let mut d = purchase(7, t0());
        google(&mut d);
        d.kind = Kind::Retraction;
        let now = t0() + TimeDelta::days(2);
        assert_eq!(
            encode_adjustment(&d, now).unwrap(),
            json!({
                "conversionAction": "customers/1234567890/conversionActions/1001",
                "orderId": "order-7",
                "adjustmentDateTime": "2026-03-03 12:00:00+00:00",
                "adjustmentType": "RETRACTION",
            })
        );
        d.kind = Kind::Restatement;
        d.value = Some("30".into());
        let r = encode_adjustment(&d, now).unwrap();
        assert_eq!(r["adjustmentType"], "RESTATEMENT");
        assert_eq!(
            r["restatementValue"],
            json!({"adjustedValue": 30.0, "currencyCode": "EUR"})
        );
        assert_eq!(
            encode_adjustment(&d, t0() + TimeDelta::days(55)),
            Err(Outcome::skipped(
                "too old for google ads adjustments (54 days)"
            ))
        );
    }

    #[test]
    fn a_retraction_in_the_second_of_its_conversion_waits_for_the_next_second() {
        // GIVEN a conversion at 12:00:00.300 and a refund dispatched at 12:00:00.800
        let mut d = purchase(7, t0() + TimeDelta::milliseconds(300));
        google(&mut d);
        d.kind = Kind::Retraction;
        let now = t0() + TimeDelta::milliseconds(800);
        // THEN it is retried once 12:00:01 has come, not sent with an equal time and refused for good
        match encode_adjustment(&d, now) {
            Err(Outcome::Retry { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_millis(200)))
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        // AND a second later it is sent, timed after the conversion
        let later = encode_adjustment(&d, t0() + TimeDelta::milliseconds(1_000)).unwrap();
        assert_eq!(later["adjustmentDateTime"], "2026-03-01 12:00:01+00:00");
    }

    fn partial_failure(errors: Value) -> String {
        json!({
            "results": [{}, {"gclid": "x"}, {}],
            "partialFailureError": {
                "code": 3,
                "message": "summary",
                "details": [{
                    "@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                    "errors": errors,
                }],
            },
            "jobId": "42",
        })
        .to_string()
    }

    fn at(i: usize) -> Value {
        json!({"fieldPathElements": [{"fieldName": "conversions", "index": i}, {"fieldName": "gclid"}]})
    }

    #[test]
    fn partial_failure_errors_map_back_to_rows_by_index() {
        // GIVEN three rows of which row 0 is expired and row 2 was uploaded before
        let rows: Vec<Delivery> = (0..3).map(|i| purchase(i, t0())).collect();
        let sent: Vec<&Delivery> = rows.iter().collect();
        let body = partial_failure(json!([
            {"errorCode": {"conversionUploadError": "EXPIRED_EVENT"},
             "message": "The click associated with this conversion is too old.", "location": at(0)},
            {"errorCode": {"conversionUploadError": "ORDER_ID_ALREADY_IN_USE"},
             "message": "The order id is already in use.", "location": at(2)},
        ]));
        // WHEN the answer is classified
        let answer = classify(reqwest::StatusCode::OK, None, &body, &sent, t0());
        // THEN row 0 failed with Google's code and message, rows 1 and 2 count as sent
        let sent_42 = Outcome::Sent {
            platform_ref: Some("42".into()),
        };
        assert_eq!(
            answer,
            UploadAnswer::Rows(vec![
                Outcome::failed(
                    "EXPIRED_EVENT: The click associated with this conversion is too old."
                ),
                sent_42.clone(),
                sent_42,
            ])
        );
    }

    #[test]
    fn temporary_row_errors_are_retried() {
        let rows: Vec<Delivery> = (0..3).map(|i| purchase(i, t0())).collect();
        let sent: Vec<&Delivery> = rows.iter().collect();
        let body = partial_failure(json!([
            {"errorCode": {"conversionUploadError": "TOO_RECENT_EVENT"}, "message": "m", "location": at(0)},
            {"errorCode": {"internalError": "INTERNAL_ERROR"}, "message": "m", "location": at(2)},
        ]));
        let UploadAnswer::Rows(out) = classify(reqwest::StatusCode::OK, None, &body, &sent, t0())
        else {
            panic!()
        };
        assert!(matches!(
            out[0],
            Outcome::Retry {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(matches!(out[1], Outcome::Sent { .. }));
        assert!(matches!(out[2], Outcome::Retry { .. }));
    }

    #[test]
    fn request_level_errors_are_retried_or_bisected() {
        let rows = [purchase(0, t0())];
        let sent: Vec<&Delivery> = rows.iter().collect();
        let quota = classify(
            reqwest::StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(30)),
            r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#,
            &sent,
            t0(),
        );
        assert_eq!(
            quota,
            UploadAnswer::Batch(BatchAnswer::Retry {
                error: "google ads: HTTP 429 RESOURCE_EXHAUSTED: Resource has been exhausted"
                    .into(),
                retry_after: Some(Duration::from_secs(30)),
            })
        );
        let schema = classify(
            reqwest::StatusCode::BAD_REQUEST,
            None,
            r#"{"error":{"code":400,"message":"Invalid value at 'conversions[0].conversion_value' (TYPE_DOUBLE)","status":"INVALID_ARGUMENT",
               "details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"conversions[0].conversion_value","description":"Invalid value"}]}]}}"#,
            &sent,
            t0(),
        );
        assert!(matches!(
            schema,
            UploadAnswer::Batch(BatchAnswer::Rejected(_))
        ));
        let developer = classify(
            reqwest::StatusCode::UNAUTHORIZED,
            None,
            r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED",
               "details":[{"errors":[{"errorCode":{"authenticationError":"DEVELOPER_TOKEN_INVALID"},"message":"The developer token is not valid."}]}]}}"#,
            &sent,
            t0(),
        );
        assert_eq!(
            developer,
            UploadAnswer::Batch(BatchAnswer::NeedsOperator {
                error: "google ads: HTTP 401 UNAUTHENTICATED: Request had invalid authentication credentials. \
                        [DEVELOPER_TOKEN_INVALID: The developer token is not valid.]"
                    .into(),
                retry_after: None,
            })
        );
    }

    /// What the fake Google saw.
    #[derive(Default)]
    struct Seen {
        token_requests: usize,
        uploads: Vec<(String, String, Value)>,
    }

    async fn fake_google(seen: Arc<Mutex<Seen>>) -> String {
        async fn token(State(seen): State<Arc<Mutex<Seen>>>, body: String) -> Json<Value> {
            assert!(body.contains("grant_type=refresh_token"));
            assert!(body.contains("refresh_token=rt"));
            seen.lock().unwrap().token_requests += 1;
            Json(json!({"access_token": "at-1", "expires_in": 3600, "token_type": "Bearer"}))
        }
        async fn upload(
            State(seen): State<Arc<Mutex<Seen>>>,
            axum::extract::Path((_v, call)): axum::extract::Path<(String, String)>,
            headers: HeaderMap,
            Json(body): Json<Value>,
        ) -> Json<Value> {
            let auth = headers["authorization"].to_str().unwrap().to_string();
            assert_eq!(headers["developer-token"], "dev");
            assert_eq!(headers["login-customer-id"], "1112223333");
            seen.lock()
                .unwrap()
                .uploads
                .push((call, auth, body.clone()));
            let n = body
                .get("conversions")
                .or_else(|| body.get("conversionAdjustments"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            Json(json!({"results": vec![json!({"orderId": "x"}); n], "jobId": "7"}))
        }
        let app = Router::new()
            .route("/token", post(token))
            .route("/{version}/customers/{call}", post(upload))
            .with_state(seen);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    /// A Google destination pointed at `endpoint`.
    fn google_ads(endpoint: &str) -> GoogleAds {
        let api = ApiConfig {
            endpoint: Some(endpoint.to_string()),
            ..ApiConfig::default()
        };
        let config = GoogleAdsConfig {
            customer_id: "123-456-7890".into(),
            login_customer_id: Some("111-222-3333".into()),
            developer_token: Some(Secret::new("dev")),
            validate_only: false,
            auth: GoogleAuthConfig {
                credentials: GoogleCredentials::OAuth {
                    client_id: Secret::new("cid"),
                    client_secret: Secret::new("cs"),
                    refresh_token: Secret::new("rt"),
                },
                token_endpoint: Some(format!("{endpoint}/token")),
            },
        };
        GoogleAds::new("google", &api, &config, &DispatchConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn conversions_and_retractions_go_to_their_uploads_with_one_cached_token() {
        // GIVEN a fake Google and a batch with two conversions and a retraction
        let seen = Arc::new(Mutex::new(Seen::default()));
        let endpoint = fake_google(seen.clone()).await;
        let g = google_ads(&endpoint);
        let now = Utc::now();
        let mut batch: Vec<Delivery> = (0..3).map(|i| purchase(i, now)).collect();
        batch.iter_mut().for_each(google);
        batch[1].kind = Kind::Retraction;
        batch[1].event_time = now - TimeDelta::hours(1);
        // WHEN it is sent twice
        let out = g.send(&batch).await;
        let again = g.send(&batch[..1]).await;
        // THEN every row is sent, with one token request, and each kind went to its method
        let sent = Outcome::Sent {
            platform_ref: Some("7".into()),
        };
        assert_eq!(out, vec![sent.clone(), sent.clone(), sent.clone()]);
        assert_eq!(again, vec![sent]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.token_requests, 1);
        let calls: Vec<&str> = seen.uploads.iter().map(|(c, _, _)| c.as_str()).collect();
        assert_eq!(
            calls,
            [
                "1234567890:uploadClickConversions",
                "1234567890:uploadConversionAdjustments",
                "1234567890:uploadClickConversions"
            ]
        );
        assert!(seen
            .uploads
            .iter()
            .all(|(_, auth, _)| auth == "Bearer at-1"));
        assert_eq!(
            seen.uploads[0].2["conversions"].as_array().unwrap().len(),
            2
        );
        assert_eq!(
            seen.uploads[1].2["conversionAdjustments"][0]["adjustmentType"],
            "RETRACTION"
        );
    }
}

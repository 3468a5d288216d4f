//! Google Ads API: click conversions and conversion adjustments over REST (platforms.md §2.1–2.3).
//!
//! Conversions go to `customers/{cid}:uploadClickConversions`, retractions and restatements to
//! `customers/{cid}:uploadConversionAdjustments`, both with `partialFailure: true`, keyed by `orderId`
//! (the row's `event_id`). Google answers per row: errors in `partialFailureError` carry the row's
//! index. An OAuth2 access token is obtained from the refresh token and cached until shortly before it
//! expires.
//!
//! Here: the destination, its requests and `send`; `encoder` (rows to uploads), `classify`
//! (answers to outcomes), `health` (`pgcapi check`), `tests`.

use super::batch::{bisect, in_order, observe_request, BatchAnswer, Body, Plan, Request};
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

mod classify;
mod encoder;
mod health;
#[cfg(test)]
mod tests;

pub use classify::*;
pub use encoder::*;

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
    /// The REST method of the upload and the request field holding the rows.
    fn route(self) -> (&'static str, &'static str) {
        match self {
            Upload::Conversions => ("uploadClickConversions", "conversions"),
            Upload::Adjustments => ("uploadConversionAdjustments", "conversionAdjustments"),
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
        let answer = self
            .post_untimed(&request.url, &request.body(items, rows), sent)
            .await;
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

    /// [`GoogleAds::post`] without the metrics: `body` to `url`, answered for the rows `sent`.
    async fn post_untimed(&self, url: &str, body: &Body<'_>, sent: &[&Delivery]) -> UploadAnswer {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(answer) => return UploadAnswer::Batch(answer),
        };
        let response = self.authorized(url, &token).json(body).send().await;
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
        let (method, collection) = upload.route();
        let request = Request::new(format!("{}:{method}", self.customer_url), collection)
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

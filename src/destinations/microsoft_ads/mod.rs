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
//!
//! Here: the destination, its token and `send`; `encoder` (rows to requests), `classify` (answers
//! to outcomes), `health` (`pgcapi check`), `tests`.

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

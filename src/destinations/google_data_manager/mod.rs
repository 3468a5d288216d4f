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
//!
//! Here: the destination, its ingest and `send`; `encoder` (rows to requests), `classify` (answers
//! to outcomes), `status` (processing reports), `health` (`pgcapi check`), `tests`.

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

mod classify;
mod encoder;
mod health;
mod status;
#[cfg(test)]
mod tests;

pub use classify::*;
pub use encoder::*;
pub use status::*;

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
        let statuses = StatusPoller::start(
            name,
            format!("{base}/v1/requestStatus:retrieve"),
            (auth.clone(), http.clone()),
            config.status_poll_ms,
            !config.validate_only,
        );
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

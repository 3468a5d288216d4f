//! Outbrain S2S conversions: one `GET {endpoint}/unifiedPixel?ob_click_id=…&name=…` per conversion.
//!
//! What is confirmed, and what is not (searched 2026-12-05): Outbrain's help centre describes S2S
//! tracking as sending back to Outbrain's server the unique click id Outbrain generated for the
//! click, with the name of an event-based conversion created in its dashboard. The request format is
//! published only by third parties (Stape's Outbrain S2S tag and GTM templates): a GET of
//! `https://tr.outbrain.com/unifiedPixel` with `ob_click_id`, `name`, and optionally `orderId`,
//! `orderValue` and `currency`. Outbrain publishes no batch endpoint, no error codes, no dedup rule,
//! no rate limit and no event-age limit for it. Conservative choices, therefore:
//!
//! - one request per conversion, batches of [`MAX_BATCH`] rows sent at once; 2xx is accepted, 408/429/5xx are
//!   retried (with `Retry-After` when given), any other answer fails that conversion alone with
//!   Outbrain's words;
//! - the event name is sent exactly as configured (Outbrain's conversion names are case-sensitive as
//!   far as anyone documents), `orderValue` as the row's decimal text, `currency` only when it is
//!   three uppercase letters (another value fails the row before any request), `orderId` is the
//!   row's event id;
//! - no dedup can be relied on: a conversion whose request was in flight when pgcapi was killed is
//!   sent again and may count twice at Outbrain. The control table still records it once.
//!
//! A row without an Outbrain click id is `skipped` ("no click id") before any request: Outbrain takes
//! no hashed identifiers. Refunds: Outbrain cannot retract; a refund of a sent conversion is `skipped`
//! ("platform cannot retract"). `check` has nothing to verify: the postback takes no credential.

use super::batch::{in_order, BatchAnswer, Plan, Request};
use super::event_fields::{self, account_accessors, by_status, http_error, Account};
use super::health::{Health, HealthFuture, Probe};
use super::http::base_url;
use super::{Destination, DestinationError, Outcome, SendFuture};
use crate::config::{ApiConfig, DispatchConfig, OutbrainConfig};
use crate::event::Delivery;
use crate::identity::MatchKey;
use crate::platform::Platform;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use serde_json::{Map, Value};
use std::time::Duration;

/// Production host of Outbrain's conversion pixel.
pub const DEFAULT_ENDPOINT: &str = "https://tr.outbrain.com";
/// Rows claimed per dispatch batch, each its own request, all in flight at once. Small on purpose:
/// dispatch records a batch's outcomes when the whole batch is done, and Outbrain documents no
/// dedup, so a crash can count the already-answered rows of the batch in flight twice; ten bounds
/// that to ten conversions per crash.
pub const MAX_BATCH: usize = 10;
/// Requests in flight at once per batch.
pub const CONCURRENCY: usize = MAX_BATCH;

/// An Outbrain marketer's S2S conversions.
pub struct Outbrain {
    /// Name, batch size (rows per batch) and client.
    account: Account,
    /// The API base, for messages.
    base: String,
    /// The postback URL, without a query.
    url: String,
}

impl Outbrain {
    /// Builds the destination `name` at `api` (or Outbrain's); it needs no key of its own (the click
    /// id says whose conversion it is).
    pub fn new(
        name: &str,
        api: &ApiConfig,
        _config: &OutbrainConfig,
        dispatch: &DispatchConfig,
    ) -> Result<Outbrain, DestinationError> {
        let base = base_url(&api.endpoint, DEFAULT_ENDPOINT);
        Ok(Outbrain {
            account: Account::new(name, api, MAX_BATCH, dispatch)?,
            url: format!("{base}/unifiedPixel"),
            base,
        })
    }
}

/// The query parameters of one postback, in order, or the outcome that replaces sending it.
pub fn encode_postback(d: &Delivery) -> Result<Vec<(&'static str, String)>, Outcome> {
    let (click, name) = event_fields::click_and_name(d, MatchKey::ObClickId, "outbrain")?;
    let mut params = vec![
        ("ob_click_id", click.to_string()),
        ("name", name.to_string()),
        ("orderId", d.event_id.clone()),
    ];
    if let Some(value) = d.value.as_deref().map(str::trim) {
        if !plain_decimal(value) {
            return Err(Outcome::failed("value is not a plain decimal number"));
        }
        params.push(("orderValue", value.to_string()));
    }
    if let Some(currency) = d.currency.as_deref().map(str::trim) {
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Outcome::failed(format!(
                "currency {currency:?} is not a 3-letter uppercase ISO 4217 code"
            )));
        }
        params.push(("currency", currency.to_string()));
    }
    Ok(params)
}

/// `12`, `12.50`, `-3`: what PostgreSQL prints for a numeric, and what a pixel parameter can carry.
fn plain_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    !whole.is_empty()
        && !frac.is_empty()
        && whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
}

/// The URL of one postback, as sent (no credential exists to hide).
pub fn postback_url(base: &str, params: &[(&'static str, String)]) -> String {
    let mut url = reqwest::Url::parse(base).unwrap_or_else(|_| {
        reqwest::Url::parse(DEFAULT_ENDPOINT).expect("the default endpoint is a URL")
    });
    url.query_pairs_mut()
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
    url.to_string()
}

/// Classifies Outbrain's answer to one postback.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
) -> BatchAnswer {
    if status.is_success() {
        return BatchAnswer::Sent(None);
    }
    by_status(
        status,
        retry_after,
        http_error("outbrain", status, body),
        &[],
    )
}

impl Outbrain {
    /// Sends the postback of `request` (its URL carries the query) and turns the answer into the
    /// outcome of its one row.
    async fn postback(&self, request: &Request) -> (usize, Outcome) {
        let get = self.account.http.get(&request.url);
        let answer = self.account.post("outbrain", get, classify).await;
        (request.rows[0], answer.outcome())
    }

    /// The health check. The postback takes no credential and Outbrain has no call that answers
    /// without recording something, so there is nothing to verify: only the host is reached (its
    /// root, not the pixel, so that nothing is recorded).
    async fn check(&self) -> Health {
        let base = &self.base;
        let text = |status| {
            format!(
                "host {base} reachable (HTTP {status}); nothing to verify: Outbrain's S2S postback \
                 takes no credential, and no call checks the conversion names without recording one"
            )
        };
        self.account.reach(&format!("{base}/"), base, text).await
    }
}

impl Destination for Outbrain {
    account_accessors!(Platform::Outbrain);

    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a> {
        Box::pin(async move {
            let plan = self.plan(batch, Utc::now());
            let postbacks: Vec<_> = plan.requests.iter().map(|r| self.postback(r)).collect();
            let sent: Vec<(usize, Outcome)> = stream::iter(postbacks)
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            in_order(batch.len(), sent.into_iter().chain(plan.not_sent))
        })
    }

    /// One GET per row: the request's URL carries the query; its "body" (shown by `--dry-run`) lists
    /// the same parameters under `query`, and nothing is posted.
    fn plan(&self, batch: &[Delivery], _now: DateTime<Utc>) -> Plan {
        let mut row = 0;
        Plan::encode(
            batch,
            |d| {
                row += 1;
                let params = encode_postback(d)?;
                let url = postback_url(&self.url, &params);
                let query: Map<String, Value> = params
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v)))
                    .collect();
                Ok(((row, url), Value::Object(query)))
            },
            |(_, url)| Request::new(url, "query"),
        )
    }

    fn healthcheck<'a>(&'a self, _probe: &'a Probe<'a>) -> HealthFuture<'a> {
        Box::pin(async move { vec![self.check().await] })
    }
}

#[cfg(test)]
mod tests;

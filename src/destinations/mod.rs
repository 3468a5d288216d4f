//! Destinations: one module per ad platform behind the [`Destination`] trait, and the one `match` that builds them.
//!
//! A destination turns a batch of claimed control-table rows ([`Delivery`]) into the platform's request
//! and its answer back into one [`Outcome`] per row, in order. It never touches the control table: the
//! dispatcher records the outcomes. Values in [`Delivery::payload`] are already normalized and hashed
//! where the platform wants hashes; destinations only map them to the platform's field names.
//!
//! Platforms differ in how a batch fails (platforms.md §8 item 9): Meta and TikTok reject a whole request
//! for one bad event, so their modules bisect rejected batches ([`isolate`]) until the bad events stand
//! alone; Google Ads and Microsoft Advertising answer per row by index.

mod event_fields;
pub mod google_ads;
pub mod google_auth;
pub mod google_data_manager;
pub mod meta;
pub mod microsoft_ads;
pub mod pinterest;
pub mod snapchat;
pub mod tiktok;

use crate::config::{DestinationConfig, DispatchConfig};
use crate::event::Delivery;
use crate::platform::Platform;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long to wait at least before retrying after an error no event is to blame for (authentication,
/// permissions, a refused account or request setting): it needs an operator, so hammering the platform
/// helps nobody, but the rows stay pending (until `give_up_after_secs`) so that fixing the config loses
/// nothing.
pub const OPERATOR_RETRY_FLOOR: Duration = Duration::from_secs(60);

/// A boxed future, so that [`Destination`] stays object-safe without the `async_trait` crate.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>>;

/// What became of one row of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The platform accepted the event (or already had it: duplicate answers count as sent).
    Sent {
        /// The platform's reference for the request (`fbtrace_id`, `jobId`, `request_id`), if any.
        platform_ref: Option<String>,
    },
    /// The platform rejected the event for good; `error` holds its own code and message.
    Failed {
        /// The platform's code and message, verbatim.
        error: String,
    },
    /// A temporary problem (5xx, 429, timeout, connection error): try again later.
    Retry {
        /// What went wrong.
        error: String,
        /// The earliest moment worth retrying (`Retry-After`, or a platform rule), if known.
        retry_after: Option<Duration>,
    },
    /// Deliberately not sent: too old for the platform, no usable match key, cannot retract.
    Skipped {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// A permanent failure.
    pub fn failed(error: impl Into<String>) -> Outcome {
        Outcome::Failed {
            error: error.into(),
        }
    }

    /// A skip with its reason.
    pub fn skipped(reason: impl Into<String>) -> Outcome {
        Outcome::Skipped {
            reason: reason.into(),
        }
    }

    /// A retry without a platform-given delay.
    pub fn retry(error: impl Into<String>) -> Outcome {
        Outcome::Retry {
            error: error.into(),
            retry_after: None,
        }
    }
}

/// One platform account that events can be delivered to.
///
/// Contract: [`send`](Destination::send) returns exactly one outcome per row of `batch`, in the same
/// order; it never panics on odd rows (a row the platform cannot take becomes `Failed` or `Skipped`);
/// it may be called concurrently; a batch is never longer than [`max_batch`](Destination::max_batch).
/// Sending is at-least-once: a row may reach the platform again after a crash, which the platform
/// deduplicates on the row's `event_id` (Meta/TikTok `event_id`, Google `orderId`).
pub trait Destination: Send + Sync {
    /// The destination's name from the config (`[destinations.NAME]`), as stored in the control table.
    fn name(&self) -> &str;
    /// The destination's platform.
    fn platform(&self) -> Platform;
    /// The largest batch sent in one request.
    fn max_batch(&self) -> usize;
    /// Whether a conversion it accepted can still be withdrawn (decides whether a refund of a
    /// conversion that may have reached the platform waits for it or cancels it): the platform's
    /// rule unless the destination's settings say otherwise.
    fn can_retract(&self) -> bool {
        self.platform().can_retract()
    }
    /// What the platform reported since the last call, after accepting requests, about events it could
    /// not use (Data Manager's `requestStatus:retrieve`). Dispatch records them in the control table.
    fn take_processing_reports(&self) -> Vec<crate::event::ProcessingReport> {
        Vec::new()
    }
    /// Sends `batch` and classifies the answer, one [`Outcome`] per row in order.
    fn send<'a>(&'a self, batch: &'a [Delivery]) -> SendFuture<'a>;
    /// What [`send`](Destination::send) would do with `batch`, without sending anything: the requests
    /// of its first attempt (before any bisection), built exactly as `send` builds them, and the rows it
    /// would decide without a request. Used by `pgcapi run --dry-run`.
    fn preview(&self, batch: &[Delivery]) -> Preview {
        Preview {
            requests: Vec::new(),
            not_sent: (0..batch.len())
                .map(|i| {
                    (
                        i,
                        Outcome::skipped("this destination cannot show its requests"),
                    )
                })
                .collect(),
        }
    }
}

/// One request a destination would send, as `pgcapi run --dry-run` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRequest {
    /// The URL posted to, without credentials (they travel in headers or the query string).
    pub url: String,
    /// The rows the request carries (indices into the batch).
    pub rows: Vec<usize>,
    /// The JSON body, exactly as it would be sent.
    pub body: serde_json::Value,
}

/// What a destination would do with a batch (see [`Destination::preview`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preview {
    /// The requests it would send.
    pub requests: Vec<PlannedRequest>,
    /// Rows decided without a request (too old, no usable match key, cannot retract, ...).
    pub not_sent: Vec<(usize, Outcome)>,
}

/// A destination could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// A key the platform needs is missing.
    #[error("destinations.{destination}: missing {key}")]
    Missing {
        /// The destination's name.
        destination: String,
        /// The missing key.
        key: &'static str,
    },
    /// The Google credentials cannot be used (a key file that cannot be read, ...). Never a secret.
    #[error("destinations.{destination}: credentials: {message}")]
    Credentials {
        /// The destination's name.
        destination: String,
        /// What is wrong.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("destinations.{destination}: cannot build the HTTP client: {source}")]
    Client {
        /// The destination's name.
        destination: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
}

/// Builds the destination `name` described by `config`: the single place that knows every platform.
pub fn build(
    name: &str,
    config: &DestinationConfig,
    dispatch: &DispatchConfig,
) -> Result<Box<dyn Destination>, DestinationError> {
    Ok(match config.platform {
        Platform::Meta => Box::new(meta::Meta::new(name, config, dispatch)?),
        Platform::GoogleAds => Box::new(google_ads::GoogleAds::new(name, config, dispatch)?),
        Platform::Tiktok => Box::new(tiktok::Tiktok::new(name, config, dispatch)?),
        Platform::GoogleDataManager => Box::new(google_data_manager::GoogleDataManager::new(
            name, config, dispatch,
        )?),
        Platform::MicrosoftAds => {
            Box::new(microsoft_ads::MicrosoftAds::new(name, config, dispatch)?)
        }
        Platform::Snapchat => Box::new(snapchat::Snapchat::new(name, config, dispatch)?),
        Platform::Pinterest => Box::new(pinterest::Pinterest::new(name, config, dispatch)?),
    })
}

/// Builds every configured destination.
pub fn build_all(
    destinations: &BTreeMap<String, DestinationConfig>,
    dispatch: &DispatchConfig,
) -> Result<Vec<Box<dyn Destination>>, DestinationError> {
    destinations
        .iter()
        .map(|(name, config)| build(name, config, dispatch))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Shared plumbing for the platform modules
// ---------------------------------------------------------------------------------------------

/// The HTTP client every destination uses: the dispatch request timeout (which also bounds a hung
/// platform, turning it into a retry) and a user agent naming pgcapi.
pub(crate) fn http_client(
    destination: &str,
    dispatch: &DispatchConfig,
) -> Result<reqwest::Client, DestinationError> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(dispatch.request_timeout_ms.max(1)))
        .connect_timeout(Duration::from_millis(
            dispatch.request_timeout_ms.clamp(1, 10_000),
        ))
        .user_agent(concat!("pgcapi/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| DestinationError::Client {
            destination: destination.to_string(),
            source,
        })
}

/// A required config value, or the error naming its key.
pub(crate) fn required<'a, T>(
    destination: &str,
    key: &'static str,
    value: &'a Option<T>,
) -> Result<&'a T, DestinationError> {
    value.as_ref().ok_or_else(|| DestinationError::Missing {
        destination: destination.to_string(),
        key,
    })
}

/// `endpoint` without a trailing slash, or the platform's production default.
pub(crate) fn base_url(endpoint: &Option<String>, default: &str) -> String {
    endpoint
        .as_deref()
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_string()
}

/// Some of a batch's encoded items, serialized as a JSON array in the order of `indices` without
/// copying them (a request body borrows the items instead of cloning each one).
pub(crate) struct Picked<'a> {
    /// Every encoded item of the batch.
    pub items: &'a [serde_json::Value],
    /// The items the request carries.
    pub indices: &'a [usize],
}

impl serde::Serialize for Picked<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.indices.iter().map(|&i| &self.items[i]))
    }
}

/// The batch size: the configured `batch_max_events`, capped by the platform's limit, at least 1.
pub(crate) fn batch_size(config: &DestinationConfig, platform_limit: usize) -> usize {
    config
        .batch_max_events
        .unwrap_or(platform_limit)
        .clamp(1, platform_limit)
}

/// What one HTTP request carrying a whole batch came to, before it is spread over its rows.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchAnswer {
    /// Every event accepted.
    Sent(Option<String>),
    /// Temporary: retry the whole batch.
    Retry {
        /// What went wrong.
        error: String,
        /// The delay the platform asked for.
        retry_after: Option<Duration>,
    },
    /// Rejected, possibly because of one event: bisect to find it. Alone, the event failed.
    Rejected(String),
}

/// Sends `rows` (indices into the caller's batch) with `send_one`, bisecting rejected batches until the
/// rejected events stand alone, so that one bad event only fails itself. Returns one outcome per index.
///
/// Halves are sent one after the other; a batch of n events with one bad event costs about 2·log₂ n
/// extra requests. A retry answer for any part applies to that part only.
pub(crate) async fn isolate<'a, F, Fut>(rows: Vec<usize>, send_one: F) -> Vec<(usize, Outcome)>
where
    F: Fn(Vec<usize>) -> Fut + 'a,
    Fut: Future<Output = BatchAnswer> + 'a,
{
    let mut out = Vec::with_capacity(rows.len());
    let mut todo = vec![rows];
    while let Some(part) = todo.pop() {
        if part.is_empty() {
            continue;
        }
        match send_one(part.clone()).await {
            BatchAnswer::Sent(platform_ref) => out.extend(part.into_iter().map(|i| {
                (
                    i,
                    Outcome::Sent {
                        platform_ref: platform_ref.clone(),
                    },
                )
            })),
            BatchAnswer::Retry { error, retry_after } => out.extend(part.into_iter().map(|i| {
                (
                    i,
                    Outcome::Retry {
                        error: error.clone(),
                        retry_after,
                    },
                )
            })),
            BatchAnswer::Rejected(error) if part.len() == 1 => {
                out.push((part[0], Outcome::Failed { error }))
            }
            BatchAnswer::Rejected(_) => {
                let mut first = part;
                let second = first.split_off(first.len() / 2);
                // Pushed second-half first so that the first half is sent first.
                todo.push(second);
                todo.push(first);
            }
        }
    }
    out
}

/// Counts one platform request of `destination` that started at `started` and came to `answer`.
pub(crate) fn observe_request(
    destination: &str,
    started: std::time::Instant,
    answer: &BatchAnswer,
) {
    let outcome = match answer {
        BatchAnswer::Sent(_) => crate::metrics::RequestOutcome::Accepted,
        BatchAnswer::Rejected(_) => crate::metrics::RequestOutcome::Rejected,
        BatchAnswer::Retry { .. } => crate::metrics::RequestOutcome::Retry,
    };
    crate::metrics::dispatch_request(destination, outcome, started.elapsed());
}

/// Puts per-index outcomes back into row order; any index without an outcome (a bug) becomes a retry,
/// so that a row is never lost.
pub(crate) fn in_order(
    len: usize,
    outcomes: impl IntoIterator<Item = (usize, Outcome)>,
) -> Vec<Outcome> {
    let mut slots: Vec<Option<Outcome>> = vec![None; len];
    for (i, outcome) in outcomes {
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(outcome);
        }
    }
    slots
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::retry("internal: no outcome recorded for this row")))
        .collect()
}

/// The classification of a transport error (no answer from the platform): always retryable. The message
/// never carries the URL, which may hold a token (Meta's `access_token` query parameter).
pub(crate) fn transport_error(platform: &str, err: reqwest::Error) -> BatchAnswer {
    let what = if err.is_timeout() {
        "request timed out".to_string()
    } else if err.is_connect() {
        format!("connection failed: {}", err.without_url())
    } else {
        format!("request failed: {}", err.without_url())
    };
    BatchAnswer::Retry {
        error: format!("{platform}: {what}"),
        retry_after: None,
    }
}

/// Reads a platform's answer to one request and classifies it with the platform's `classify`: a
/// transport error (no answer) is retryable; otherwise the status, `Retry-After` and body decide.
pub(crate) async fn read_answer(
    platform: &str,
    response: Result<reqwest::Response, reqwest::Error>,
    classify: fn(reqwest::StatusCode, Option<Duration>, &str) -> BatchAnswer,
) -> BatchAnswer {
    match response {
        Err(e) => transport_error(platform, e),
        Ok(r) => {
            let status = r.status();
            let delay = retry_after(r.headers());
            let text = r.text().await.unwrap_or_default();
            classify(status, delay, &text)
        }
    }
}

/// Parses a `Retry-After` header: delay seconds or an HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    parse_retry_after(value, Utc::now())
}

/// Parses a `Retry-After` value relative to `now`; an HTTP date in the past means no delay.
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// True for HTTP statuses worth retrying: 408, 429 and 5xx.
pub(crate) fn is_retryable_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

/// The row's value as a JSON number; `Err` names the problem (never the value).
pub(crate) fn value_number(d: &Delivery) -> Result<Option<serde_json::Number>, String> {
    let Some(text) = d.value.as_deref() else {
        return Ok(None);
    };
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Some)
        .ok_or_else(|| "value is not a finite number".to_string())
}

/// A short, single-line excerpt of an unparseable response body for `last_error`.
pub(crate) fn excerpt(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// The event name sent to the platform: the platform-specific override, else the rule's event.
pub(crate) fn event_name(d: &Delivery) -> Option<&str> {
    d.payload
        .platform_event
        .as_deref()
        .or(d.event_name.as_deref())
        .filter(|s| !s.trim().is_empty())
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A known delivery row for the platform tests.

    use crate::event::{Delivery, Kind, Payload};
    use crate::identity::{MatchKey, MatchKeys};
    use chrono::{DateTime, TimeZone, Utc};

    /// 64 hex characters standing for a hash.
    pub fn h(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    /// A website purchase at `at`, with hashed email/phone and plain click ids.
    pub fn purchase(id: i64, at: DateTime<Utc>) -> Delivery {
        let mut keys = MatchKeys::new();
        keys.insert(MatchKey::Email, h('a'));
        keys.insert(MatchKey::Phone, h('b'));
        keys.insert(MatchKey::ClientIp, "203.0.113.7".into());
        keys.insert(MatchKey::UserAgent, "Mozilla/5.0".into());
        keys.insert(MatchKey::Gclid, "Cj0KCQ-test".into());
        keys.insert(MatchKey::Ttclid, "E.C.P.test".into());
        Delivery {
            id,
            rule: "order_paid".into(),
            destination: "dest".into(),
            event_id: format!("order-{id}"),
            kind: Kind::Conversion,
            adjusts_rule: None,
            event_name: Some("Purchase".into()),
            event_time: at,
            value: Some("49.90".into()),
            currency: Some("EUR".into()),
            action_source: Some("website".into()),
            payload: Payload {
                keys,
                event_source_url: Some(format!("https://shop.example.com/orders/{id}")),
                consent: true,
                ..Payload::default()
            },
            attempts: 0,
            created_at: at,
        }
    }

    /// A destination config with only the platform set.
    pub fn empty_config(platform: crate::platform::Platform) -> crate::config::DestinationConfig {
        crate::config::DestinationConfig {
            platform,
            endpoint: None,
            api_version: None,
            pixel_id: None,
            access_token: None,
            test_event_code: None,
            pixel_code: None,
            ad_account_id: None,
            test_mode: false,
            crm_event_set_id: None,
            account_id: None,
            customer_id: None,
            login_customer_id: None,
            developer_token: None,
            client_id: None,
            client_secret: None,
            refresh_token: None,
            token_endpoint: None,
            validate_only: false,
            service_account_key: None,
            operating_account: None,
            login_account: None,
            refunds: crate::config::GoogleRefunds::default(),
            ads_endpoint: None,
            batch_max_events: None,
            status_poll_ms: None,
        }
    }

    /// A fixed instant: 2026-03-01 12:00:00 UTC.
    pub fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::Mutex;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[tokio::test]
    async fn isolate_fails_only_the_rejected_events_and_sends_the_rest() {
        // GIVEN a platform that rejects any batch containing rows 3 or 6
        let requests = Mutex::new(0);
        let out = isolate((0..8).collect(), |part: Vec<usize>| {
            *requests.lock().unwrap() += 1;
            async move {
                if part.contains(&3) || part.contains(&6) {
                    BatchAnswer::Rejected(format!("bad event in {part:?}"))
                } else {
                    BatchAnswer::Sent(Some("ref".into()))
                }
            }
        })
        .await;
        // THEN exactly rows 3 and 6 failed, with the platform's message for them alone
        let out = in_order(8, out);
        for (i, o) in out.iter().enumerate() {
            match i {
                3 | 6 => assert_eq!(o, &Outcome::failed(format!("bad event in [{i}]"))),
                _ => assert!(matches!(o, Outcome::Sent { .. }), "{i}: {o:?}"),
            }
        }
        assert!(*requests.lock().unwrap() <= 11);
    }

    #[test]
    fn a_missing_outcome_becomes_a_retry_not_a_lost_row() {
        let out = in_order(2, vec![(1, Outcome::skipped("x"))]);
        assert!(matches!(out[0], Outcome::Retry { .. }));
        assert_eq!(out[1], Outcome::skipped("x"));
    }

    #[test]
    fn excerpts_are_single_line_and_bounded() {
        let long = "a\nb ".repeat(300);
        let e = excerpt(&long);
        assert!(!e.contains('\n'));
        assert!(e.chars().count() <= 201);
    }
}

#[cfg(test)]
mod preview_tests {
    use super::test_support::{empty_config, purchase};
    use super::*;
    use crate::config::Secret;
    use crate::event::Kind;
    use serde_json::{json, Value};

    fn meta_config() -> DestinationConfig {
        DestinationConfig {
            endpoint: Some("http://sandbox.test/".into()),
            pixel_id: Some("123".into()),
            access_token: Some(Secret::new("tok-s3cr3t")),
            test_event_code: Some("T1".into()),
            ..empty_config(Platform::Meta)
        }
    }

    #[test]
    fn a_meta_preview_is_the_request_send_would_make_without_the_token() {
        // GIVEN a fresh purchase and one too old for Meta
        let meta = build("meta", &meta_config(), &DispatchConfig::default()).unwrap();
        let mut old = purchase(2, Utc::now());
        old.event_time = Utc::now() - chrono::TimeDelta::days(30);
        // WHEN previewed
        let preview = meta.preview(&[purchase(1, Utc::now()), old]);
        // THEN one request carries the fresh one with the test code; the old one is skipped
        assert_eq!(preview.requests.len(), 1);
        let request = &preview.requests[0];
        assert_eq!(request.url, "http://sandbox.test/v26.0/123/events");
        assert_eq!(request.rows, vec![0]);
        assert_eq!(request.body["test_event_code"], "T1");
        assert_eq!(request.body["data"][0]["event_id"], "order-1");
        assert!(!request.body.to_string().contains("s3cr3t"));
        assert_eq!(preview.not_sent.len(), 1);
        assert_eq!(preview.not_sent[0].0, 1);
        assert!(matches!(preview.not_sent[0].1, Outcome::Skipped { .. }));
    }

    #[test]
    fn a_google_preview_splits_uploads_and_carries_validate_only() {
        let config = DestinationConfig {
            customer_id: Some("123-456-7890".into()),
            developer_token: Some(Secret::new("dev")),
            client_id: Some(Secret::new("id")),
            client_secret: Some(Secret::new("secret")),
            refresh_token: Some(Secret::new("rt")),
            validate_only: true,
            ..empty_config(Platform::GoogleAds)
        };
        let google = build("google", &config, &DispatchConfig::default()).unwrap();
        // A minute old: an adjustment must come after its conversion's second.
        let mut conversion = purchase(1, Utc::now() - chrono::Duration::minutes(1));
        conversion.payload.conversion_action =
            Some("customers/1234567890/conversionActions/1".into());
        let mut retraction = conversion.clone();
        retraction.id = 2;
        retraction.kind = Kind::Retraction;
        let preview = google.preview(&[conversion, retraction]);
        let urls: Vec<&str> = preview.requests.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://googleads.googleapis.com/v26/customers/1234567890:uploadClickConversions",
                "https://googleads.googleapis.com/v26/customers/1234567890:uploadConversionAdjustments"
            ]
        );
        for request in &preview.requests {
            assert_eq!(request.body["validateOnly"], true, "{}", request.body);
        }
        assert!(preview.not_sent.is_empty());
    }

    #[test]
    fn a_tiktok_preview_sends_web_and_crm_events_apart() {
        let config = DestinationConfig {
            pixel_code: Some("CPIX".into()),
            crm_event_set_id: Some("CRMSET".into()),
            access_token: Some(Secret::new("tok")),
            ..empty_config(Platform::Tiktok)
        };
        let tiktok = build("tiktok", &config, &DispatchConfig::default()).unwrap();
        let web = purchase(1, Utc::now());
        let mut crm = purchase(2, Utc::now());
        crm.action_source = Some("system_generated".into());
        let preview = tiktok.preview(&[web, crm]);
        let sources: Vec<&Value> = preview
            .requests
            .iter()
            .map(|r| &r.body["event_source"])
            .collect();
        assert_eq!(sources, [&json!("web"), &json!("crm")]);
        assert_eq!(preview.requests[1].rows, vec![1]);
        assert_eq!(preview.requests[0].body["event_source_id"], "CPIX");
        assert_eq!(preview.requests[1].body["event_source_id"], "CRMSET");
    }
}

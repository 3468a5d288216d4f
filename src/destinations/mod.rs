//! Destinations: one module per ad platform behind the [`Destination`] trait, and the one `match` that builds them.
//!
//! A destination turns a batch of claimed control-table rows ([`Delivery`]) into the platform's request
//! and its answer back into one [`Outcome`] per row, in order. It never touches the control table: the
//! dispatcher records the outcomes. Values in [`Delivery::payload`] are already normalized and hashed
//! where the platform wants hashes; destinations only map them to the platform's field names.
//!
//! # The seam
//!
//! Everything the rest of pgcapi knows of a platform goes through [`Destination`]:
//! - [`send`](Destination::send) sends a batch and returns one [`Outcome`] per row, in order (the
//!   contract is on the trait). How it gets there is the platform's: Meta and TikTok reject a whole
//!   request for one bad event, so they bisect rejected requests ([`batch::isolate`]); Google Ads
//!   and Microsoft Advertising answer per row by index, LinkedIn per element in order; Reddit rejects
//!   a whole request for one bad event and is bisected too; Data Manager names the invalid events.
//! - [`plan`](Destination::plan) encodes a batch into a [`Plan`]: each row's item, the [`Request`]s
//!   of the first attempt (URL, rows, body fields) and the rows decided without a request. `send`
//!   sends the plan's requests; [`preview`](Destination::preview) (`pgcapi run --dry-run`) is
//!   provided once from it, so what is previewed is what is sent.
//! - [`healthcheck`](Destination::healthcheck) is the platform's part of `pgcapi check`: proves the
//!   credentials and the account without recording a conversion, with the same token and request
//!   code as `send`, given a [`Probe`] (the rules sending to the destination). `check` prints each
//!   [`Health`] line after the destination's name.
//! - [`build`] is the one `match` from a config to a destination.
//!
//! Shared code: [`http`] (client, reading answers, `Retry-After`, status classes, transport errors),
//! [`batch`] (plans, bisection, order), [`health`] (probe, synthetic event), [`google_auth`] (Google
//! credentials of both Google platforms), `oauth` (the token exchange of Google and Microsoft).
//!
//! # Adding a platform
//!
//! 1. `src/platform.rs`: its [`Platform`] variant (name, whether it can retract).
//! 2. Its config variant and its required keys (`config`).
//! 3. The match keys it accepts (`identity`).
//! 4. Its module here, `NAME.rs` or, past ~600 lines, a folder `NAME/{mod, encoder, classify, ...}`:
//!    `new(name, config, dispatch)`, `impl Destination` with `send`, `plan` and `healthcheck`;
//!    requests through [`http`], batches through [`batch`], unit tests against a fake server.
//! 5. Its arm in [`build`].
//! 6. Its sandbox module (`testbed::sandbox`) and the integration cases against it.
//!
//! Nothing else: dispatch, dry-run and check only see the trait.

pub mod batch;
mod event_fields;
pub mod google_ads;
pub mod google_auth;
pub mod google_data_manager;
pub mod health;
pub mod http;
pub mod linkedin;
pub mod meta;
pub mod microsoft_ads;
pub(crate) mod oauth;
pub mod outbrain;
pub mod pinterest;
pub mod reddit;
pub mod snapchat;
pub mod taboola;
pub mod tiktok;

pub use batch::{Plan, PlannedRequest, Preview, Request};
pub use health::{Health, HealthFuture, Probe};

use crate::config::{ApiConfig, DestinationConfig, DispatchConfig, PlatformConfig};
use crate::event::Delivery;
use crate::platform::Platform;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

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
    /// Nothing can be sent until an operator acts: credentials, permissions, a refused account or
    /// request setting, a switched-off API version. No event is to blame, so the row stays pending;
    /// `dispatch/retry` decides how long to hold it back (at least its operator floor).
    NeedsOperator {
        /// What the operator must fix, in the platform's words.
        error: String,
        /// A delay the platform asked for on top, if any.
        retry_after: Option<Duration>,
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

    /// A wait for an operator, without a platform-given delay.
    pub fn needs_operator(error: impl Into<String>) -> Outcome {
        Outcome::NeedsOperator {
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
    /// Encodes `batch` as of `now`: the requests of [`send`](Destination::send)'s first attempt
    /// (before any bisection or retry), built exactly as `send` builds them, and the rows it would
    /// decide without a request. The default sends nothing (a wrapper that cannot show its requests).
    fn plan(&self, batch: &[Delivery], now: DateTime<Utc>) -> Plan {
        let _ = now;
        Plan::none(
            batch.len(),
            Outcome::skipped("this destination cannot show its requests"),
        )
    }
    /// What [`send`](Destination::send) would do with `batch`, without sending anything (`pgcapi run
    /// --dry-run`): the [`plan`](Destination::plan) with each request's body as sent.
    fn preview(&self, batch: &[Delivery]) -> Preview {
        self.plan(batch, Utc::now()).preview()
    }
    /// The platform's part of `pgcapi check`: credentials, account and whatever the [`Probe`]'s rules
    /// need, proven without recording a conversion. One or more lines; never a secret.
    fn healthcheck<'a>(&'a self, probe: &'a Probe<'a>) -> HealthFuture<'a> {
        let _ = probe;
        Box::pin(async { Health::only(false, "this destination has no health check") })
    }
}

/// A destination could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
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
    let api = &config.api;
    Ok(match &config.settings {
        PlatformConfig::Meta(meta) => Box::new(meta::Meta::new(name, api, meta, dispatch)?),
        PlatformConfig::GoogleAds(google) => {
            Box::new(google_ads::GoogleAds::new(name, api, google, dispatch)?)
        }
        PlatformConfig::Tiktok(tiktok) => {
            Box::new(tiktok::Tiktok::new(name, api, tiktok, dispatch)?)
        }
        PlatformConfig::GoogleDataManager(dm) => Box::new(
            google_data_manager::GoogleDataManager::new(name, api, dm, dispatch)?,
        ),
        PlatformConfig::MicrosoftAds(ms) => {
            Box::new(microsoft_ads::MicrosoftAds::new(name, api, ms, dispatch)?)
        }
        PlatformConfig::Outbrain(ob) => Box::new(outbrain::Outbrain::new(name, api, ob, dispatch)?),
        PlatformConfig::Taboola(tb) => Box::new(taboola::Taboola::new(name, api, tb, dispatch)?),
        PlatformConfig::Linkedin(li) => Box::new(linkedin::Linkedin::new(name, api, li, dispatch)?),
        PlatformConfig::Reddit(rd) => Box::new(reddit::Reddit::new(name, api, rd, dispatch)?),
        PlatformConfig::Snapchat(snap) => {
            Box::new(snapchat::Snapchat::new(name, api, snap, dispatch)?)
        }
        PlatformConfig::Pinterest(pin) => {
            Box::new(pinterest::Pinterest::new(name, api, pin, dispatch)?)
        }
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
// Small helpers of the platform modules (HTTP in [`http`], batches in [`batch`])
// ---------------------------------------------------------------------------------------------

/// The batch size: the configured `batch_max_events`, capped by the platform's limit, at least 1.
pub(crate) fn batch_size(config: &ApiConfig, platform_limit: usize) -> usize {
    config
        .batch_max_events
        .unwrap_or(platform_limit)
        .clamp(1, platform_limit)
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

    /// A fixed instant: 2026-03-01 12:00:00 UTC.
    pub fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    /// Google user OAuth credentials (made-up values), exchanged at `token_endpoint` or Google's.
    pub fn google_oauth(token_endpoint: Option<String>) -> crate::config::GoogleAuthConfig {
        crate::config::GoogleAuthConfig {
            credentials: crate::config::GoogleCredentials::OAuth {
                client_id: crate::config::Secret::new("id"),
                client_secret: crate::config::Secret::new("secret"),
                refresh_token: crate::config::Secret::new("rt"),
            },
            token_endpoint,
        }
    }
}

#[cfg(test)]
mod preview_tests {
    use super::test_support::purchase;
    use super::*;
    use crate::config::{GoogleAdsConfig, MetaConfig, Secret, TiktokConfig};
    use crate::event::Kind;
    use serde_json::{json, Value};

    fn meta_config() -> DestinationConfig {
        let mut config = DestinationConfig::new(PlatformConfig::Meta(MetaConfig {
            pixel_id: "123".into(),
            access_token: Secret::new("tok-s3cr3t"),
            test_event_code: Some("T1".into()),
        }));
        config.api.endpoint = Some("http://sandbox.test/".into());
        config
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
        let config = DestinationConfig::new(PlatformConfig::GoogleAds(GoogleAdsConfig {
            customer_id: "123-456-7890".into(),
            login_customer_id: None,
            developer_token: Some(Secret::new("dev")),
            validate_only: true,
            auth: test_support::google_oauth(None),
        }));
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
        let config = DestinationConfig::new(PlatformConfig::Tiktok(TiktokConfig {
            pixel_code: "CPIX".into(),
            crm_event_set_id: Some("CRMSET".into()),
            access_token: Secret::new("tok"),
            test_event_code: None,
        }));
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

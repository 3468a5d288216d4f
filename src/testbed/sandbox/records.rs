//! What the sandbox accepted, per platform, plus counters and the dedup memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::testbed::sandbox::Platform;

/// A snapshot of everything the sandbox accepted since start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Records {
    /// Meta Conversions API.
    pub meta: EventRecords,
    /// Google Ads click conversions and adjustments.
    pub google_ads: GoogleAdsRecords,
    /// TikTok Events API.
    pub tiktok: EventRecords,
    /// Google Data Manager API events.
    #[serde(default)]
    pub google_data_manager: DataManagerRecords,
    /// Microsoft Advertising offline conversions and adjustments.
    #[serde(default)]
    pub microsoft_ads: crate::testbed::sandbox::microsoft_ads::MicrosoftAdsRecords,
    /// Outbrain S2S postbacks.
    #[serde(default)]
    pub outbrain: crate::testbed::sandbox::OutbrainRecords,
    /// Taboola S2S conversions.
    #[serde(default)]
    pub taboola: crate::testbed::sandbox::TaboolaRecords,
    /// LinkedIn Conversions API events (`event_name` is the conversion rule URN).
    pub linkedin: EventRecords,
    /// Reddit Conversions API events (`event_id` is `metadata.conversion_id`).
    pub reddit: EventRecords,
    /// Snapchat Conversions API v3.
    pub snapchat: EventRecords,
    /// Pinterest Conversions API.
    pub pinterest: EventRecords,
}

impl Records {
    /// The counters of one platform.
    pub fn counters(&self, platform: Platform) -> &Counters {
        match platform {
            Platform::Meta => &self.meta.counters,
            Platform::GoogleAds => &self.google_ads.counters,
            Platform::Tiktok => &self.tiktok.counters,
            Platform::GoogleDataManager => &self.google_data_manager.counters,
            Platform::MicrosoftAds => &self.microsoft_ads.counters,
            Platform::Outbrain => &self.outbrain.counters,
            Platform::Taboola => &self.taboola.counters,
            Platform::Linkedin => &self.linkedin.counters,
            Platform::Reddit => &self.reddit.counters,
            Platform::Snapchat => &self.snapchat.counters,
            Platform::Pinterest => &self.pinterest.counters,
        }
    }

    /// The counters of one platform, for updating.
    pub(crate) fn counters_mut(&mut self, platform: Platform) -> &mut Counters {
        match platform {
            Platform::Meta => &mut self.meta.counters,
            Platform::GoogleAds => &mut self.google_ads.counters,
            Platform::Tiktok => &mut self.tiktok.counters,
            Platform::GoogleDataManager => &mut self.google_data_manager.counters,
            Platform::MicrosoftAds => &mut self.microsoft_ads.counters,
            Platform::Outbrain => &mut self.outbrain.counters,
            Platform::Taboola => &mut self.taboola.counters,
            Platform::Linkedin => &mut self.linkedin.counters,
            Platform::Reddit => &mut self.reddit.counters,
            Platform::Snapchat => &mut self.snapchat.counters,
            Platform::Pinterest => &mut self.pinterest.counters,
        }
    }
}

/// Counters of one platform. An "item" is an event, a conversion or an adjustment.
///
/// Raw traffic is `requests` and `received`; what the platform ends up counting once is `unique`. A
/// connector that delivers every event exactly once at the platform has `unique` equal to the number
/// of distinct events, whatever faults made it send some of them more than once (`duplicate_sends`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Requests that reached the platform's conversion endpoints, whatever their outcome.
    pub requests: u64,
    /// Items carried by the requests the platform processed (not those cut short by an injected
    /// 500, 429 or dropped connection), whether accepted, deduplicated or rejected.
    pub received: u64,
    /// Items the platform counted (these are the items listed in the records).
    pub accepted: u64,
    /// Items counted for the first time since the last reset: distinct dedup keys (Meta and TikTok
    /// event name + `event_id`, Google conversion action + order id or click, Google adjustment).
    /// Differs from `accepted` only when an event is counted again after the dedup window.
    pub unique: u64,
    /// Items in an accepted request that the platform's dedup dropped (within its window, or an
    /// already-used Google order id / click, or a Google adjustment ignored after a retraction).
    pub deduplicated: u64,
    /// Items whose id had been received before in a valid request, at any time since the last
    /// reset, whether or not inside the dedup window. This is what the connector resent.
    pub duplicate_sends: u64,
    /// Items refused for breaking a rule (for Meta and TikTok every item of a rejected batch).
    pub rejected: u64,
    /// Requests refused as a whole (credentials, envelope, batch size, any bad Meta/TikTok event).
    pub rejected_requests: u64,
    /// Requests that got an injected fault (500, 429, dropped connection, accept-then-drop).
    pub faulted: u64,
    /// Of the faulted requests, those processed and recorded whose response was then cut
    /// (accept-then-drop): the connector cannot know they arrived, so it sends their items again.
    #[serde(default)]
    pub responses_lost: u64,
}

/// The counters of every platform: what `GET /_sandbox/stats` serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Meta Conversions API.
    pub meta: Counters,
    /// Google Ads conversions and adjustments together.
    pub google_ads: Counters,
    /// TikTok Events API.
    pub tiktok: Counters,
    /// Google Data Manager API.
    #[serde(default)]
    pub google_data_manager: Counters,
    /// Microsoft Advertising conversions and adjustments together.
    #[serde(default)]
    pub microsoft_ads: Counters,
    /// Outbrain postbacks.
    #[serde(default)]
    pub outbrain: Counters,
    /// Taboola postbacks and bulk actions together.
    #[serde(default)]
    pub taboola: Counters,
    /// LinkedIn Conversions API.
    pub linkedin: Counters,
    /// Reddit Conversions API.
    pub reddit: Counters,
    /// Snapchat Conversions API v3.
    pub snapchat: Counters,
    /// Pinterest Conversions API.
    pub pinterest: Counters,
}

impl Stats {
    /// The counters of `records`.
    pub fn of(records: &Records) -> Stats {
        Stats {
            meta: records.meta.counters,
            google_ads: records.google_ads.counters,
            tiktok: records.tiktok.counters,
            google_data_manager: records.google_data_manager.counters,
            microsoft_ads: records.microsoft_ads.counters,
            outbrain: records.outbrain.counters,
            taboola: records.taboola.counters,
            linkedin: records.linkedin.counters,
            reddit: records.reddit.counters,
            snapchat: records.snapchat.counters,
            pinterest: records.pinterest.counters,
        }
    }

    /// The counters of one platform.
    pub fn platform(&self, platform: Platform) -> &Counters {
        match platform {
            Platform::Meta => &self.meta,
            Platform::GoogleAds => &self.google_ads,
            Platform::Tiktok => &self.tiktok,
            Platform::GoogleDataManager => &self.google_data_manager,
            Platform::MicrosoftAds => &self.microsoft_ads,
            Platform::Outbrain => &self.outbrain,
            Platform::Taboola => &self.taboola,
            Platform::Linkedin => &self.linkedin,
            Platform::Reddit => &self.reddit,
            Platform::Snapchat => &self.snapchat,
            Platform::Pinterest => &self.pinterest,
        }
    }
}

/// Accepted events of an event platform (Meta, TikTok, LinkedIn, Reddit, Snapchat, Pinterest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventRecords {
    /// Counters.
    pub counters: Counters,
    /// Every event the platform counted, in arrival order.
    pub events: Vec<AcceptedEvent>,
    /// Valid events received in the platform's test mode (Snapchat `/events/validate`, Pinterest
    /// `?test=true`): answered like real ones, never recorded or counted.
    #[serde(default)]
    pub tested: u64,
}

/// One event counted by Meta or TikTok.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptedEvent {
    /// Meta `event_name` or TikTok `event`.
    pub event_name: String,
    /// The dedup id, when sent.
    pub event_id: Option<String>,
    /// Unix seconds.
    pub event_time: i64,
    /// Meta `action_source` or TikTok `event_source`.
    pub source: String,
    /// Hashed match keys by the platform's field name (`em`, `ph`, … or `email`, `phone`, …).
    pub hashed: BTreeMap<String, Vec<String>>,
    /// Unhashed identifiers by field name (`fbc`, `fbp`, `lead_id`, `ttclid`, `ttp`, …).
    pub plain: BTreeMap<String, String>,
    /// Conversion value, when sent.
    pub value: Option<f64>,
    /// Currency, as sent.
    pub currency: Option<String>,
    /// The request's `test_event_code`, when sent.
    pub test_event_code: Option<String>,
    /// When the sandbox received it.
    pub received_at: DateTime<Utc>,
}

/// What the Data Manager sandbox accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataManagerRecords {
    /// Counters: `unique` counts conversions, `deduplicated` events that changed nothing (a resend of
    /// the same value), `accepted` every event of an accepted request.
    pub counters: Counters,
    /// Every event of every accepted (not validate-only) request, as received, in arrival order.
    pub events: Vec<DataManagerEvent>,
    /// The conversions as Google keeps them: one per (product destination id, transaction id),
    /// with the latest value.
    pub conversions: Vec<DataManagerConversion>,
    /// Requests, accepted or not, that carried a `developer-token` header.
    pub developer_token_headers: u64,
    /// Access tokens handed out for the JWT bearer grant (service accounts).
    pub jwt_tokens_issued: u64,
    /// Accepted validate-only requests (nothing recorded).
    pub validated: u64,
}

/// One event of an accepted ingest request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataManagerEvent {
    /// The request id the sandbox answered.
    pub request_id: String,
    /// `operatingAccount.accountId`.
    pub operating_account: String,
    /// `loginAccount.accountId`, when sent.
    pub login_account: Option<String>,
    /// The product destination id (conversion action id).
    pub product_destination_id: String,
    /// The request's `encoding`.
    pub encoding: String,
    /// The event as received (camelCase JSON).
    pub event: serde_json::Value,
    /// When the sandbox received it.
    pub received_at: DateTime<Utc>,
}

/// One conversion as Data Manager keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataManagerConversion {
    /// The product destination id.
    pub product_destination_id: String,
    /// The transaction id.
    pub transaction_id: String,
    /// The latest value.
    pub value: Option<f64>,
    /// The latest currency.
    pub currency: Option<String>,
    /// The values in the order they were set (the first is the original).
    pub history: Vec<Option<f64>>,
    /// How many times a later event restated it with another value.
    pub restatements: u64,
}

/// Accepted Google Ads conversions and adjustments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GoogleAdsRecords {
    /// Counters (conversions and adjustments together).
    pub counters: Counters,
    /// Every accepted click conversion, in arrival order.
    pub conversions: Vec<AcceptedConversion>,
    /// Every applied adjustment, in arrival order.
    pub adjustments: Vec<AcceptedAdjustment>,
    /// Access tokens handed out by the OAuth token endpoint.
    pub tokens_issued: u64,
}

/// One accepted Google Ads click conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptedConversion {
    /// Customer id from the URL.
    pub customer_id: String,
    /// `customers/{cid}/conversionActions/{id}`.
    pub conversion_action: String,
    /// The order id, when sent.
    pub order_id: Option<String>,
    /// Click ids, when sent.
    pub gclid: Option<String>,
    /// iOS app-to-web click id.
    pub gbraid: Option<String>,
    /// iOS web-to-app click id.
    pub wbraid: Option<String>,
    /// As sent: `yyyy-mm-dd hh:mm:ss+hh:mm`.
    pub conversion_date_time: String,
    /// Conversion value, when sent.
    pub value: Option<f64>,
    /// Currency, when sent.
    pub currency: Option<String>,
    /// `hashedEmail` user identifiers.
    pub hashed_emails: Vec<String>,
    /// `hashedPhoneNumber` user identifiers.
    pub hashed_phones: Vec<String>,
    /// `consent.adUserData`, when sent.
    pub ad_user_data_consent: Option<String>,
    /// When the sandbox received it.
    pub received_at: DateTime<Utc>,
}

/// One applied Google Ads conversion adjustment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptedAdjustment {
    /// Customer id from the URL.
    pub customer_id: String,
    /// The conversion action of the original conversion.
    pub conversion_action: String,
    /// `RETRACTION`, `RESTATEMENT` or `ENHANCEMENT`.
    pub adjustment_type: String,
    /// As sent: `yyyy-mm-dd hh:mm:ss+hh:mm`.
    pub adjustment_date_time: String,
    /// The original's order id, when the adjustment used it.
    pub order_id: Option<String>,
    /// The original's gclid, when the adjustment used a gclid/date-time pair.
    pub gclid: Option<String>,
    /// The new total value for a restatement.
    pub adjusted_value: Option<f64>,
    /// The restatement currency, when sent.
    pub currency: Option<String>,
    /// When the sandbox received it.
    pub received_at: DateTime<Utc>,
}

/// How a dedup key relates to what was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Never seen since the last reset.
    New,
    /// Seen, and the counted copy is inside the dedup window: drop it.
    WithinWindow,
    /// Seen, but the counted copy is older than the window: count it again.
    OutsideWindow,
}

/// Arrival-time dedup on a string key, as Meta and TikTok do on name + event id.
#[derive(Debug, Default)]
pub(crate) struct DedupMemory {
    /// Key → arrival time of the copy that was last counted.
    counted_at: HashMap<String, DateTime<Utc>>,
}

impl DedupMemory {
    /// Classifies `key` without changing the memory.
    pub(crate) fn check(&self, key: &str, now: DateTime<Utc>, window: Duration) -> Seen {
        match self.counted_at.get(key) {
            None => Seen::New,
            Some(at) => {
                let age = (now - *at).to_std().unwrap_or_default();
                if age < window {
                    Seen::WithinWindow
                } else {
                    Seen::OutsideWindow
                }
            }
        }
    }

    /// Remembers that `key` was counted at `now`.
    pub(crate) fn remember(&mut self, key: String, now: DateTime<Utc>) {
        self.counted_at.insert(key, now);
    }
}

/// The set of ids received so far, for the `duplicate_sends` counter.
#[derive(Debug, Default, Clone)]
pub(crate) struct SendLog {
    /// Every id received in a valid request.
    seen: HashSet<String>,
}

impl SendLog {
    /// Notes a received id; true when it had been received before.
    pub(crate) fn note(&mut self, key: &str) -> bool {
        !self.seen.insert(key.to_string())
    }
}

/// Dedup state of an event platform (Meta, TikTok, LinkedIn, Reddit, Snapchat, Pinterest).
#[derive(Debug, Default)]
pub(crate) struct EventMemory {
    /// Arrival-time dedup on name + event id.
    pub(crate) dedup: DedupMemory,
    /// Every name + event id received.
    pub(crate) sends: SendLog,
}

impl EventMemory {
    /// Applies the dedup of one valid event to `counters`; true when the platform counts it (and it
    /// is to be recorded), false when a copy was counted within `window`. An event without a dedup
    /// key is always counted.
    pub(crate) fn count(
        &mut self,
        counters: &mut Counters,
        key: Option<String>,
        now: DateTime<Utc>,
        window: Duration,
    ) -> bool {
        match key {
            None => counters.unique += 1,
            Some(key) => {
                if self.sends.note(&key) {
                    counters.duplicate_sends += 1;
                }
                match self.dedup.check(&key, now, window) {
                    Seen::WithinWindow => {
                        counters.deduplicated += 1;
                        return false;
                    }
                    Seen::New => counters.unique += 1,
                    Seen::OutsideWindow => {}
                }
                self.dedup.remember(key, now);
            }
        }
        counters.accepted += 1;
        true
    }

    /// Counts one valid event the platform cannot deduplicate (every copy counts): `key` only
    /// tells a resend (`duplicate_sends`) from a first send (`unique`).
    pub(crate) fn count_every(&mut self, counters: &mut Counters, key: &str) {
        if self.sends.note(key) {
            counters.duplicate_sends += 1;
        } else {
            counters.unique += 1;
        }
        counters.accepted += 1;
    }
}

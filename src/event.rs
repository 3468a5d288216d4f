//! The events that flow from capture to dispatch, as the control table stores them: a row change made
//! into a conversion or an adjustment ([`NewDelivery`]), and the same row claimed back for sending
//! ([`Delivery`]). Vocabulary shared by rules, outbox, dispatch and destinations; no SQL here.

use crate::identity::MatchKeys;
use crate::lsn::Lsn;
use crate::platform::Platform;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The suffix of the rule name of a retraction that a source row's DELETE produced: `order_paid:deleted`
/// retracts the `order_paid` conversion of the deleted row. Configured rule names hold only letters,
/// digits and `_`, so it never names a configured rule.
pub const DELETION_SUFFIX: &str = ":deleted";

/// The rule name of the retraction a DELETE produces for a conversion of `rule`.
pub fn deletion_rule(rule: &str) -> String {
    format!("{rule}{DELETION_SUFFIX}")
}

/// Whether `rule` names a retraction produced by a DELETE (see [`DELETION_SUFFIX`]).
pub fn is_deletion_rule(rule: &str) -> bool {
    rule.ends_with(DELETION_SUFFIX)
}

/// What a delivery row asks the platform to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Record a conversion.
    Conversion,
    /// Withdraw a conversion sent earlier (refund).
    Retraction,
    /// Replace the value of a conversion sent earlier (partial refund).
    Restatement,
}

impl Kind {
    /// The name stored in `deliveries.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Conversion => "conversion",
            Kind::Retraction => "retraction",
            Kind::Restatement => "restatement",
        }
    }

    /// Parses the stored name.
    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Conversion, Kind::Retraction, Kind::Restatement]
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

/// Where a delivery row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting to be sent (or retried at `next_attempt_at`).
    Pending,
    /// Accepted by the platform.
    Sent,
    /// Rejected for good; `last_error` holds the platform's message.
    Failed,
    /// Deliberately not sent; `last_error` says why (`no consent`, `no match keys`, ...).
    Skipped,
    /// Withdrawn before it was sent (a refund arrived first).
    Cancelled,
}

impl State {
    /// The name stored in `deliveries.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Sent => "sent",
            State::Failed => "failed",
            State::Skipped => "skipped",
            State::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name.
    pub fn from_name(name: &str) -> Option<State> {
        [
            State::Pending,
            State::Sent,
            State::Failed,
            State::Skipped,
            State::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// The `payload` column: everything the platform request needs besides the typed columns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Normalized match keys, hashed where the platform wants hashes; never raw identifiers.
    #[serde(default)]
    pub keys: MatchKeys,
    /// The page of a website event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_source_url: Option<String>,
    /// The platform's own event name where it differs from `event_name` (TikTok `CompletePayment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_event: Option<String>,
    /// Meta CRM events: the CRM's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_event_source: Option<String>,
    /// Google Ads conversion action resource name; for Microsoft Advertising, the offline conversion
    /// goal's name (`ConversionName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_action: Option<String>,
    /// The purchased items' ids, comma-separated, if the rule maps them (TikTok `contents`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_ids: Option<String>,
    /// The items' type (`product`, `product_group`), if the rule maps it (TikTok `content_type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// When the ad was clicked, if the rule maps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_time: Option<DateTime<Utc>>,
    /// Whether the person consented to ad use of their data (always true for rows that are sent).
    #[serde(default)]
    pub consent: bool,
    /// Whether `consent` came from the rule's consent column; without one it is assumed, and Google
    /// destinations send no consent field at all (the account default applies).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub consent_column: bool,
}

impl Payload {
    /// The `payload` column's JSON: byte for byte what `serde_json::to_string` gives, written without
    /// serde's per-character escaping pass for the (usual) strings that need no escape.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 + self.keys.len() * 80);
        out.push_str("{\"keys\":{");
        for (i, (key, value)) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(key.as_str());
            out.push_str("\":");
            push_json_string(&mut out, value);
        }
        out.push('}');
        let optional = [
            ("event_source_url", &self.event_source_url),
            ("platform_event", &self.platform_event),
            ("lead_event_source", &self.lead_event_source),
            ("conversion_action", &self.conversion_action),
            ("content_ids", &self.content_ids),
            ("content_type", &self.content_type),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                push_json_string(&mut out, value);
            }
        }
        if let Some(click_time) = &self.click_time {
            out.push_str(",\"click_time\":");
            out.push_str(&serde_json::to_string(click_time).expect("a time serializes"));
        }
        out.push_str(",\"consent\":");
        out.push_str(if self.consent { "true" } else { "false" });
        if self.consent_column {
            out.push_str(",\"consent_column\":true");
        }
        out.push('}');
        out
    }
}

/// Appends `value` as a JSON string; serde_json escapes only control characters, `"` and `\`.
fn push_json_string(out: &mut String, value: &str) {
    if !needs_json_escape(value.as_bytes()) {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(value).expect("a string serializes"));
    }
}

/// True when some byte is a control character, `"` or `\\`: the bytes JSON escapes inside a string.
/// Eight bytes at a time: `x - 0x01…` borrows into a byte's high bit exactly when some byte of `x` is
/// below the subtrahend (a borrow only starts at a byte that is itself a hit), so "any hit" is exact.
fn needs_json_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH != 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("chunks of eight"));
        if below(x, 0x20)
            || below(x ^ (ONES * u64::from(b'"')), 1)
            || below(x ^ (ONES * u64::from(b'\\')), 1)
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A delivery row as capture writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// The rule that produced it.
    pub rule: String,
    /// The destination name from the config.
    pub destination: String,
    /// The destination's platform.
    pub platform: Platform,
    /// The stable event id (for adjustments: the id of the adjusted conversion).
    pub event_id: String,
    /// Conversion, retraction or restatement.
    pub kind: Kind,
    /// For adjustments: the rule whose conversion is adjusted.
    pub adjusts_rule: Option<String>,
    /// The event name.
    pub event_name: Option<String>,
    /// When the conversion happened.
    pub event_time: DateTime<Utc>,
    /// The value as decimal text.
    pub value: Option<String>,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// Meta `action_source` and the like.
    pub action_source: Option<String>,
    /// Hashed keys and platform fields.
    pub payload: Payload,
    /// `pending`, or `skipped` with a reason in `last_error`.
    pub state: State,
    /// Why the row was skipped.
    pub last_error: Option<String>,
    /// `schema.table` of the source row.
    pub source_table: String,
    /// The replica-identity key of the source row ([`source_key`]), where a DELETE needs it to find
    /// the row's conversions. A retraction of a deleted row with an empty `event_id` and a
    /// `source_key` retracts the conversions recorded with that key (the event id is theirs).
    pub source_key: Option<String>,
    /// The commit end LSN of the source transaction.
    pub source_lsn: Lsn,
    /// The commit time of the source transaction.
    pub commit_time: DateTime<Utc>,
}

/// The `source_key` of a source row from the text values of its replica-identity key columns, in
/// column order (`None` for a null value): each `\` and `,` escaped with `\`, joined with `,`, a null
/// as `\N`. One encoding for the conversion (new tuple) and the DELETE (old key tuple), and
/// unambiguous: distinct keys never encode alike.
pub fn source_key<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> String {
    let mut key = String::new();
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        match value {
            None => key.push_str("\\N"),
            Some(v) => {
                for c in v.chars() {
                    if c == '\\' || c == ',' {
                        key.push('\\');
                    }
                    key.push(c);
                }
            }
        }
    }
    key
}

/// A delivery row as dispatch reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Primary key.
    pub id: i64,
    /// The rule that produced it.
    pub rule: String,
    /// The destination name.
    pub destination: String,
    /// The stable event id.
    pub event_id: String,
    /// Conversion, retraction or restatement.
    pub kind: Kind,
    /// For adjustments: the adjusted rule.
    pub adjusts_rule: Option<String>,
    /// The event name.
    pub event_name: Option<String>,
    /// When the conversion happened.
    pub event_time: DateTime<Utc>,
    /// The value as decimal text.
    pub value: Option<String>,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// Meta `action_source` and the like.
    pub action_source: Option<String>,
    /// Hashed keys and platform fields.
    pub payload: Payload,
    /// How many sends were attempted.
    pub attempts: i32,
    /// When capture recorded the row.
    pub created_at: DateTime<Utc>,
}

/// What a platform reported, after accepting a request, about events it could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessingReport {
    /// The config name of the destination.
    pub destination: String,
    /// The platform's request id.
    pub request_id: String,
    /// Events the platform could not use, per reason (its own names).
    pub unusable: Vec<(String, i64)>,
}

#[cfg(test)]
mod tests {
    use super::Payload;
    use crate::identity::MatchKey;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn optional_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            "[a-zA-Z0-9:/._ -]{0,30}",
            any::<String>(),
            "[\"\\\\\u{0}-\u{1f}\u{7f}é€😀a]{0,8}",
        ])
    }

    proptest! {
        /// The eight-bytes-at-a-time check answers as a byte-by-byte one.
        #[test]
        fn the_escape_check_answers_as_a_byte_loop(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), 0x1fu8..0x22, 0x5bu8..0x5e],
                0..40,
            ),
        ) {
            let naive = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(super::needs_json_escape(&bytes), naive);
        }

        /// The hand-written payload JSON is byte for byte serde_json's, escapes included.
        #[test]
        fn payload_json_is_serde_jsons(
            keys in proptest::collection::btree_map(
                proptest::sample::select(MatchKey::ALL.to_vec()),
                prop_oneof!["[0-9a-f]{64}", any::<String>(), "[\"\\\\\u{0}-\u{1f}a]{0,6}"],
                0..12,
            ),
            event_source_url in optional_text(),
            platform_event in optional_text(),
            lead_event_source in optional_text(),
            conversion_action in optional_text(),
            content_ids in optional_text(),
            content_type in optional_text(),
            click_micros in proptest::option::of(0i64..4_000_000_000_000_000),
            consent in any::<bool>(),
            consent_column in any::<bool>(),
        ) {
            let payload = Payload {
                keys,
                event_source_url,
                platform_event,
                lead_event_source,
                conversion_action,
                content_ids,
                content_type,
                click_time: click_micros.map(|m| Utc.timestamp_micros(m).unwrap()),
                consent,
                consent_column,
            };
            prop_assert_eq!(payload.to_json(), serde_json::to_string(&payload).unwrap());
        }
    }
}

//! The rules of one ingested event: its fields, timestamp, amounts, consent, and the ad and user
//! identifiers (hashed in the request's encoding, the address's region and postal code in clear).

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Map, Value};

use super::ingest::{Bad, Dest};
use super::MAX_IDENTIFIERS;
use crate::testbed::sandbox::FUTURE_TOLERANCE_SECS;

/// The fields an event may carry.
const KNOWN: &[&str] = &[
    "destinationReferences",
    "transactionId",
    "eventTimestamp",
    "lastUpdatedTimestamp",
    "userData",
    "consent",
    "adIdentifiers",
    "currency",
    "conversionValue",
    "eventSource",
    "eventDeviceInfo",
    "cartData",
    "customVariables",
    "experimentalFields",
    "userProperties",
];

/// Checks a consent object.
pub(super) fn check_consent(c: &Value, at: &str, bad: &mut Bad<'_>) {
    let Some(m) = c.as_object() else {
        bad(at.into(), "Must be an object.");
        return;
    };
    for (k, v) in m {
        let field = match k.as_str() {
            "adUserData" => "ad_user_data",
            "adPersonalization" => "ad_personalization",
            _ => {
                bad(format!("{at}.{k}"), "Unknown field.");
                continue;
            }
        };
        if !matches!(v.as_str(), Some("CONSENT_GRANTED" | "CONSENT_DENIED")) {
            bad(
                format!("{at}.{field}"),
                "Must be CONSENT_GRANTED or CONSENT_DENIED.",
            );
        }
    }
}

/// True for a SHA-256 digest in the request's encoding.
fn is_digest(s: &str, hex: bool) -> bool {
    if hex {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
    } else {
        s.len() == 44
            && s.ends_with('=')
            && s[..43]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    }
}

/// Checks event `i`; returns its timestamp when valid.
pub(super) fn check_event(
    e: &Value,
    i: usize,
    hex: bool,
    dests: &[Dest],
    now: DateTime<Utc>,
    bad: &mut Bad<'_>,
) -> Option<DateTime<FixedOffset>> {
    let at = |f: &str| format!("events[{i}].{f}");
    let Some(m) = e.as_object() else {
        bad(format!("events[{i}]"), "Must be an object.");
        return None;
    };
    for k in m.keys() {
        if !KNOWN.contains(&k.as_str()) {
            bad(at(k), "Unknown field.");
        }
    }
    let time = check_timestamp(m.get("eventTimestamp"), &at("event_timestamp"), now, bad);
    check_amounts(m, &at, bad);
    if let Some(c) = m.get("consent") {
        check_consent(c, &at("consent"), bad);
    }
    if let Some(refs) = m.get("destinationReferences").and_then(Value::as_array) {
        for (j, r) in refs.iter().enumerate() {
            let known = dests.iter().any(|d| d.reference.as_deref() == r.as_str());
            if !known {
                bad(
                    at(&format!("destination_references[{j}]")),
                    "Names no destination of the request.",
                );
            }
        }
    }
    let mut identifiers = 0;
    if let Some(ad) = m.get("adIdentifiers") {
        identifiers += check_ad_identifiers(ad, &at, bad);
    }
    if let Some(ud) = m.get("userData") {
        identifiers += check_user_data(ud, hex, &at, bad);
    }
    if identifiers == 0 {
        bad(
            format!("events[{i}]"),
            "At least one ad identifier or user identifier is required.",
        );
    }
    time
}

/// `eventTimestamp`: required, RFC 3339, not in the future.
fn check_timestamp(
    value: Option<&Value>,
    path: &str,
    now: DateTime<Utc>,
    bad: &mut Bad<'_>,
) -> Option<DateTime<FixedOffset>> {
    match value.and_then(Value::as_str) {
        None => {
            bad(path.into(), "Required field is missing.");
            None
        }
        Some(t) => match DateTime::parse_from_rfc3339(t) {
            Err(_) => {
                bad(path.into(), "Must be an RFC 3339 timestamp.");
                None
            }
            Ok(t)
                if t.with_timezone(&Utc)
                    > now + chrono::Duration::seconds(FUTURE_TOLERANCE_SECS) =>
            {
                bad(path.into(), "Must not be in the future.");
                None
            }
            Ok(t) => Some(t),
        },
    }
}

/// `transactionId`, `conversionValue`, `currency` and `eventSource`, when present.
fn check_amounts(m: &Map<String, Value>, at: &dyn Fn(&str) -> String, bad: &mut Bad<'_>) {
    if let Some(t) = m.get("transactionId") {
        if t.as_str().is_none_or(|s| s.trim().is_empty()) {
            bad(at("transaction_id"), "Must be a non-empty string.");
        }
    }
    if let Some(v) = m.get("conversionValue") {
        if !v.as_f64().is_some_and(|v| v.is_finite() && v >= 0.0) {
            bad(at("conversion_value"), "Must be a non-negative number.");
        }
    }
    if let Some(c) = m.get("currency") {
        let ok = c
            .as_str()
            .is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()));
        if !ok {
            bad(
                at("currency"),
                "Must be an ISO 4217 code (three uppercase letters).",
            );
        }
    }
    if let Some(s) = m.get("eventSource") {
        if !matches!(
            s.as_str(),
            Some("WEB" | "APP" | "IN_STORE" | "PHONE" | "OTHER")
        ) {
            bad(
                at("event_source"),
                "Must be WEB, APP, IN_STORE, PHONE or OTHER.",
            );
        }
    }
}

/// `adIdentifiers`: how many identifiers it carries (click ids, session attributes).
fn check_ad_identifiers(ad: &Value, at: &dyn Fn(&str) -> String, bad: &mut Bad<'_>) -> usize {
    let mut identifiers = 0;
    for k in ad
        .as_object()
        .map(|o| o.keys().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        match k.as_str() {
            "gclid" | "gbraid" | "wbraid" => {
                if ad[k].as_str().is_some_and(|s| !s.is_empty()) {
                    identifiers += 1;
                } else {
                    bad(
                        at(&format!("ad_identifiers.{k}")),
                        "Must be a non-empty string.",
                    );
                }
            }
            "sessionAttributes" => identifiers += 1,
            "landingPageDeviceInfo" => {
                let info = &ad[k];
                if let Some(ip) = info.get("ipAddress") {
                    if !crate::testbed::sandbox::is_ip_address(ip) {
                        bad(
                            at("ad_identifiers.landing_page_device_info.ip_address"),
                            "Must be an IPv4 or IPv6 address, in clear.",
                        );
                    }
                }
            }
            _ => bad(at(&format!("ad_identifiers.{k}")), "Unknown field."),
        }
    }
    identifiers
}

/// `userData.userIdentifiers`: 1 to 10, each exactly one of email, phone and address; how many
/// are well-formed enough to count as identifiers.
fn check_user_data(ud: &Value, hex: bool, at: &dyn Fn(&str) -> String, bad: &mut Bad<'_>) -> usize {
    let ids = ud
        .get("userIdentifiers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ids.is_empty() {
        bad(
            at("user_data.user_identifiers"),
            "Required field is missing.",
        );
    } else if ids.len() > MAX_IDENTIFIERS {
        bad(
            at("user_data.user_identifiers"),
            "At most 10 user identifiers are allowed.",
        );
    }
    let mut identifiers = 0;
    for (j, id) in ids.iter().enumerate() {
        let path = |f: &str| at(&format!("user_data.user_identifiers[{j}].{f}"));
        let set: Vec<&String> = id
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        if set.len() != 1 {
            bad(
                at(&format!("user_data.user_identifiers[{j}]")),
                "Exactly one of email_address, phone_number and address must be set.",
            );
            continue;
        }
        identifiers += 1;
        match set[0].as_str() {
            "emailAddress" | "phoneNumber" => {
                let field = if set[0] == "emailAddress" {
                    "email_address"
                } else {
                    "phone_number"
                };
                if !id[set[0]].as_str().is_some_and(|s| is_digest(s, hex)) {
                    bad(
                        path(field),
                        "Must be a SHA-256 hash in the request's encoding.",
                    );
                }
            }
            "address" => check_address(&id["address"], hex, &path, bad),
            other => bad(path(other), "Unknown field."),
        }
    }
    identifiers
}

/// An address identifier: hashed names, region and postal code in clear.
fn check_address(a: &Value, hex: bool, path: &dyn Fn(&str) -> String, bad: &mut Bad<'_>) {
    for (f, name) in [("givenName", "given_name"), ("familyName", "family_name")] {
        if !a
            .get(f)
            .and_then(Value::as_str)
            .is_some_and(|s| is_digest(s, hex))
        {
            bad(
                path(&format!("address.{name}")),
                "Must be a SHA-256 hash in the request's encoding.",
            );
        }
    }
    let region = a
        .get("regionCode")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !(region.len() == 2 && region.bytes().all(|b| b.is_ascii_uppercase())) {
        bad(
            path("address.region_code"),
            "Must be an ISO 3166-1 alpha-2 code in clear (two uppercase letters).",
        );
    }
    let postal = a
        .get("postalCode")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if postal.trim().is_empty() || is_digest(postal, true) {
        bad(
            path("address.postal_code"),
            "Must be the postal code in clear.",
        );
    }
}

//! The official SDKs' outputs (`tests/data/normalization_vectors.json`) checked against our rules.
//!
//! Every row is asserted except those in `DIFFERS`, where normalization.md deliberately departs from
//! the SDK; a second test proves each listed row really differs, so the list cannot go stale.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::*;

/// SHA-256 hex of a string, computed here independently of `hash` (no pass-through).
fn sha(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// One row of `tests/data/normalization_vectors.json`: what an official SDK produced.
#[derive(Debug, Deserialize)]
struct Vector {
    /// `meta` or `google`.
    platform: String,
    /// The SDK's field name.
    field: String,
    /// The input.
    raw: String,
    /// The pre-hash string, `null` on error.
    normalized: Option<String>,
    /// The digest sent, `null` when sent unhashed or on error.
    sha256: Option<String>,
    /// The SDK's error, if it refused or dropped the value.
    error: Option<String>,
    /// Package and version.
    sdk: String,
    /// Input id, shared across SDKs.
    id: String,
}

/// Rows where pgcapi deliberately differs from the SDK, and why (normalization.md wins).
///
/// (sdk package prefix, input id, reason)
#[rustfmt::skip]
const DIFFERS: &[(&str, &str, &str)] = &[
    ("facebook-business", "email_inner_space", "Email: whitespace inside makes an email invalid; the SDK hashes it"),
    ("facebook-business", "phone_us_local", "Phone: a national number gets its region's country code (16505551212)"),
    ("facebook-business", "phone_us_dots", "Phone: dots are formatting; the SDK raises on them"),
    ("facebook-business", "phone_uk_trunk_zero", "Phone: the trunk 0 in +44 (0)20 is not part of E.164"),
    ("facebook-business", "phone_uk_national", "Phone: read in GB it is 442079460958; the SDK drops the country"),
    ("facebook-business", "name_hyphen_spaces", "Names: Meta removes punctuation (maryjane); the SDK keeps it"),
    ("facebook-business", "name_accent_nfd", "Every text value: NFC first; the SDK hashes the decomposed form"),
    ("facebook-business", "name_apostrophe", "Names: Meta removes punctuation (obrien)"),
    ("facebook-business", "name_title_prefix", "Names: Meta removes punctuation and spaces (drsmithjonesjr)"),
    ("facebook-business", "state_full_name", "Address: US state names map to codes (ca)"),
    ("facebook-business", "country_full_name", "Address: English country names map to alpha-2 (us)"),
    ("facebook-business", "country_alpha3", "Address: alpha-3 codes map to alpha-2 (us)"),
    ("facebook-business", "country_dotted", "Address: U.K. maps to gb; the SDK raises"),
    ("facebook-business", "dob_iso", "Date of birth: YYYY-MM-DD becomes YYYYMMDD; the SDK does no date parsing"),
    ("facebook-business", "dob_us_slash", "Date of birth: MM/DD/YYYY in US rows becomes YYYYMMDD"),
    ("facebook-business", "dob_eu_dots", "Date of birth: DD.MM.YYYY becomes YYYYMMDD"),
    ("facebook-business", "gender_word", "Gender: female becomes f"),
    ("facebook-business", "external_id_mixed", "External id: trimmed, lowercased and hashed; the SDK sends it raw"),
    ("capi-param-builder", "phone_us_local", "Phone: a national number gets its region's country code"),
    ("capi-param-builder", "phone_us_dots", "Phone: a national number gets its region's country code"),
    ("capi-param-builder", "phone_uk_trunk_zero", "Phone: the trunk 0 in +44 (0)20 is not part of E.164"),
    ("capi-param-builder", "phone_uk_national", "Phone: read in GB it is 442079460958; the builder drops the country"),
    ("capi-param-builder", "name_accent_nfd", "Every text value: NFC first; the builder hashes the decomposed form"),
    ("capi-param-builder", "city_accent_hyphen", "Address: Meta cities keep accented letters (saintétienne)"),
    ("capi-param-builder", "zip_uk_space", "Address: Meta zips lose inner whitespace (sw1a1aa)"),
    ("capi-param-builder", "country_dotted", "Address: U.K. maps to gb; uk is not an ISO code"),
    ("google-ads-datamanager-util", "email_prehashed_upper", "Hash: a 64-hex value in a hashed field is pre-hashed and passed through; the SDK raises"),
    ("google-ads-datamanager-util", "phone_us_local", "Phone: a national number gets its region's country code (+16505551212)"),
    ("google-ads-datamanager-util", "phone_us_dots", "Phone: a national number gets its region's country code"),
    ("google-ads-datamanager-util", "phone_uk_trunk_zero", "Phone: the trunk 0 in +44 (0)20 is not part of E.164"),
    ("google-ads-datamanager-util", "phone_uk_00_prefix", "Phone: 00 is an international prefix (+44…, not +0044…)"),
    ("google-ads-datamanager-util", "phone_uk_national", "Phone: read in GB it is +442079460958"),
    ("google-ads-datamanager-util", "name_accent_nfd", "Every text value: NFC first; the SDK hashes the decomposed form"),
    ("google-ads-datamanager-util", "country_full_name", "Address: English country names map to alpha-2 (US)"),
    ("google-ads-datamanager-util", "country_alpha3", "Address: alpha-3 codes map to alpha-2 (US)"),
    ("google-ads-datamanager-util", "country_dotted", "Address: U.K. maps to GB"),
];

/// The platform and key a vector row exercises.
fn vector_target(row: &Vector) -> (Platform, MatchKey) {
    let platform = match row.platform.as_str() {
        "meta" => Platform::Meta,
        "google" => Platform::GoogleAds,
        other => panic!("unknown platform {other}"),
    };
    let key = match row.field.as_str() {
        "em" | "email_address" => MatchKey::Email,
        "ph" | "phone_number" => MatchKey::Phone,
        "fn" | "address.given_name" => MatchKey::FirstName,
        "ln" | "address.family_name" => MatchKey::LastName,
        "ct" | "address.city" => MatchKey::City,
        "st" | "address.administrative_area" => MatchKey::State,
        "zp" | "address.postal_code" => MatchKey::Zip,
        "country" | "address.region_code" => MatchKey::Country,
        "db" => MatchKey::DateOfBirth,
        "ge" => MatchKey::Gender,
        "external_id" => MatchKey::ExternalId,
        other => panic!("unknown field {other}"),
    };
    (platform, key)
}

/// The region the vector's input belongs to: UK inputs are GB rows, everything else US.
fn vector_region(row: &Vector) -> &'static str {
    if row.id.contains("_uk_") {
        "GB"
    } else {
        "US"
    }
}

/// What pgcapi makes of a vector row: (pre-hash string, value sent), or the drop reason.
fn ours(row: &Vector) -> Result<(String, String), Reason> {
    let (platform, key) = vector_target(row);
    let region = vector_region(row);
    let sent = match_key_value(platform, key, &row.raw, region)?;
    let plain = if is_sha256_hex(row.raw.trim()) {
        row.raw.trim().to_ascii_lowercase()
    } else {
        normalize_key(platform, key, &row.raw, region)?
    };
    Ok((plain, sent))
}

/// The vector rows, parsed from the copy inside the project.
fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("../../tests/data/normalization_vectors.json")).unwrap()
}

/// True when the row is listed in `DIFFERS`.
fn differs(row: &Vector) -> bool {
    DIFFERS
        .iter()
        .any(|(sdk, id, _)| row.sdk.starts_with(sdk) && row.id == *id)
}

#[test]
fn sdk_vectors_agree_with_our_rules_except_the_listed_differences() {
    let rows = vectors();
    assert_eq!(rows.len(), 115);
    let mut checked = 0;
    for row in rows.iter().filter(|row| !differs(row)) {
        let result = ours(row);
        let context = format!("{} {} {}", row.sdk, row.id, row.field);
        match (&row.error, &row.normalized, &row.sha256) {
            // The SDK refused or dropped it: so do we (rules: Email shape, gmail local part, Country).
            (Some(_), _, _) => assert!(result.is_err(), "{context}: we kept {result:?}"),
            // Sent hashed: the digest must match (rules: Email, Phone, Names, Address, DOB, Gender,
            // External id, Hash), and so must the pre-hash string.
            (None, Some(normalized), Some(digest)) => {
                let (plain, sent) = result.unwrap_or_else(|e| panic!("{context}: dropped, {e}"));
                assert_eq!(&sent, digest, "{context}");
                assert_eq!(
                    plain.to_ascii_lowercase(),
                    normalized.to_ascii_lowercase(),
                    "{context}"
                );
                if !is_sha256_hex(row.raw.trim()) {
                    assert_eq!(sha(&plain), sent, "{context}");
                }
            }
            // Sent in clear (Google address parts): the text must match (rule: Address, Google).
            (None, Some(normalized), None) => {
                let (plain, sent) = result.unwrap_or_else(|e| panic!("{context}: dropped, {e}"));
                assert_eq!(&plain, normalized, "{context}");
                assert_eq!(&sent, normalized, "{context}");
            }
            (None, None, _) => panic!("{context}: row without result"),
        }
        checked += 1;
    }
    assert_eq!(checked, 115 - DIFFERS.len());
}

#[test]
fn every_listed_difference_is_a_real_difference() {
    let rows = vectors();
    for (sdk, id, reason) in DIFFERS {
        let row = rows
            .iter()
            .find(|row| row.sdk.starts_with(sdk) && row.id == *id)
            .unwrap_or_else(|| panic!("no vector {sdk} {id}"));
        let same = match (ours(row), &row.sha256, &row.normalized) {
            (Err(_), _, None) => true,
            (Ok((_, sent)), Some(digest), _) => &sent == digest,
            (Ok((plain, _)), None, Some(normalized)) => &plain == normalized,
            _ => false,
        };
        assert!(
            !same,
            "{sdk} {id} is listed as different ({reason}) but agrees"
        );
    }
}

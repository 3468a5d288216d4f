//! The per-platform profiles of platforms-next.md §8.2 (`tests/data/profile_vectors.json`): for each
//! raw value, the string a profile hashes and what is sent. The digests were computed outside pgcapi
//! (Python's hashlib), and one Reddit row is Reddit's own published example, so a wrong rule and a
//! wrong hash both fail here. The end-to-end cases send the same rows through the sandbox.

use serde::Deserialize;

use super::*;

/// One row of `tests/data/profile_vectors.json`.
#[derive(Debug, Deserialize)]
struct Vector {
    /// The profile's name (`linkedin`, `reddit`).
    profile: String,
    /// The platforms that use the profile, by config name.
    platforms: Vec<String>,
    /// The match key, by config name.
    key: String,
    /// The input.
    raw: String,
    /// The row's region.
    region: String,
    /// The string before hashing.
    normalized: String,
    /// What is sent: the SHA-256 of `normalized`, or `normalized` for keys sent in clear.
    sent: String,
}

/// The vectors, parsed from the copy inside the project.
fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("../../tests/data/profile_vectors.json")).unwrap()
}

#[test]
fn every_profile_vector_holds_for_its_platforms() {
    let rows = vectors();
    assert!(rows.len() >= 11, "{} rows", rows.len());
    for row in &rows {
        let key = MatchKey::from_name(&row.key).unwrap_or_else(|| panic!("key {}", row.key));
        for name in &row.platforms {
            let platform = Platform::from_name(name).unwrap_or_else(|| panic!("platform {name}"));
            let context = format!("{} {name} {} {:?}", row.profile, row.key, row.raw);
            assert!(key.is_accepted_by(platform), "{context}: key not accepted");
            let plain = normalize_key(platform, key, &row.raw, &row.region);
            assert_eq!(plain.as_deref(), Ok(row.normalized.as_str()), "{context}");
            let sent = match_key_value(platform, key, &row.raw, &row.region);
            assert_eq!(sent.as_deref(), Ok(row.sent.as_str()), "{context}");
            assert_eq!(
                key.is_hashed(platform),
                row.sent != row.normalized,
                "{context}: hashed or not"
            );
        }
    }
}

#[test]
fn linkedin_takes_no_phone_and_reddit_no_names() {
    assert!(!MatchKey::Phone.is_accepted_by(Platform::Linkedin));
    assert!(!MatchKey::FirstName.is_accepted_by(Platform::Reddit));
    assert!(!MatchKey::LiFatId.is_accepted_by(Platform::Reddit));
    assert!(!MatchKey::RdtCid.is_accepted_by(Platform::Linkedin));
    // The click ids are only another platform's business: Meta and Google never get them.
    for platform in [Platform::Meta, Platform::GoogleAds, Platform::Tiktok] {
        assert!(!MatchKey::LiFatId.is_accepted_by(platform));
        assert!(!MatchKey::RdtCid.is_accepted_by(platform));
    }
}

//! Idempotence: normalizing an already-normalized value changes nothing, and no text makes a
//! normalizer panic.

use proptest::prelude::*;

use super::tests::PLATFORMS;
use super::*;

/// Text mixing ASCII, accented Latin (both forms), other scripts, punctuation, symbols and spaces.
pub(super) fn messy_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        "[ a-zA-Z0-9.,'\\-_+@#&/()\u{e9}\u{c9}\u{301}\u{308}\u{df}\u{130}\u{3a3}\u{416}\u{5d0}\u{4e2d}\u{a0}\u{2019}\u{20ac}\u{1f600}\t\u{200b}\u{202e}\u{ad}\u{ff30}\u{ff10}\u{fb01}\u{3000}]{0,24}",
    )
    .unwrap()
}

/// Plausible emails, with case, spaces and gmail tags.
fn emails() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        " ?[a-zA-Z0-9.+_\u{e9}\u{301}-]{0,12}@(gmail\\.com|GoogleMail\\.com|[a-zA-Z0-9-]{1,8}\\.[a-zA-Z]{2,4}) ?",
    )
    .unwrap()
}

/// Phone-like strings: national and international, with formatting.
fn phones() -> impl Strategy<Value = String> {
    proptest::string::string_regex("(\\+|00)?[1-9]?[ (]?[0-9]{2,4}[) .-]?[0-9]{3}[ .-]?[0-9]{3,5}")
        .unwrap()
}

/// Regions for phones and zips.
fn regions() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["US", "GB", "DE", "FR", "IN", "BR", "JP", "AU"])
}

/// Country spellings from the table's keys plus noise.
fn countries() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "us",
            "USA",
            "United States",
            "U.K.",
            "gb",
            "Deutschland",
            "Germany",
            "fra",
            "Côte d'Ivoire",
            "Bosnia & Herzegovina",
            "Türkiye",
            "japan",
            " nz ",
        ])
        .prop_map(str::to_owned),
        messy_text(),
    ]
}

proptest! {
    #[test]
    fn email_normalization_is_idempotent(raw in emails(), platform in prop::sample::select(PLATFORMS.to_vec())) {
        if let Some(once) = normalize_email(platform, &raw) {
            prop_assert_eq!(normalize_email(platform, &once), Some(once.clone()));
        }
    }

    #[test]
    fn phone_normalization_is_idempotent(raw in phones(), region in regions()) {
        for platform in [Platform::GoogleAds, Platform::Tiktok] {
            if let Some(once) = normalize_phone(platform, &raw, region) {
                prop_assert!(once.starts_with('+'));
                prop_assert_eq!(normalize_phone(platform, &once, region), Some(once.clone()));
            }
        }
        // Meta's form drops the `+`, so it is re-read as international with the `+` put back.
        if let Some(once) = normalize_phone(Platform::Meta, &raw, region) {
            prop_assert!(once.bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(normalize_phone(Platform::Meta, &format!("+{once}"), region), Some(once.clone()));
        }
    }

    #[test]
    fn name_normalization_is_idempotent(raw in messy_text(), platform in prop::sample::select(PLATFORMS.to_vec())) {
        if let Some(once) = normalize_name(platform, &raw) {
            prop_assert_eq!(normalize_name(platform, &once), Some(once.clone()));
        }
    }

    #[test]
    fn city_normalization_is_idempotent(raw in messy_text(), platform in prop::sample::select(PLATFORMS.to_vec())) {
        if let Some(once) = normalize_city(platform, &raw) {
            prop_assert_eq!(normalize_city(platform, &once), Some(once.clone()));
        }
    }

    #[test]
    fn state_normalization_is_idempotent(raw in messy_text(), platform in prop::sample::select(PLATFORMS.to_vec())) {
        if let Some(once) = normalize_state(platform, &raw) {
            prop_assert_eq!(normalize_state(platform, &once), Some(once.clone()));
        }
    }

    #[test]
    fn zip_normalization_is_idempotent(raw in messy_text(), region in regions(), platform in prop::sample::select(PLATFORMS.to_vec())) {
        if let Some(once) = normalize_zip(platform, &raw, region) {
            prop_assert_eq!(normalize_zip(platform, &once, region), Some(once.clone()));
        }
    }

    #[test]
    fn country_normalization_is_idempotent(raw in countries(), platform in prop::sample::select(PLATFORMS.to_vec())) {
        if let Some(once) = normalize_country(platform, &raw) {
            prop_assert_eq!(once.len(), 2);
            prop_assert_eq!(normalize_country(platform, &once), Some(once.clone()));
        }
    }

    #[test]
    fn normalizers_never_panic_on_arbitrary_text(raw in any::<String>(), region in regions()) {
        for platform in PLATFORMS {
            for key in MatchKey::ALL {
                let _ = match_key_value(platform, key, &raw, region);
            }
        }
    }

    #[test]
    fn hashed_values_are_always_64_lowercase_hex(raw in messy_text()) {
        let digest = hash(&raw);
        prop_assert!(is_sha256_hex(&digest));
        prop_assert_eq!(digest.to_ascii_lowercase(), digest.clone());
    }
}

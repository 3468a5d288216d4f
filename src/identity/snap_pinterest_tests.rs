//! The `snap/pinterest` normalization profile (platforms-next.md §8.2) against fixed vectors.
//!
//! The digests are literals, computed outside pgcapi (`printf %s … | sha256sum`); the Snapchat ones
//! for `Person@Example.com`, `+44 844 412 4653`, `John` and `Raphaël` are the examples of Snap's own
//! Parameters page.

use chrono::{TimeZone, Utc};

use super::*;

/// Both platforms of the profile.
const PROFILE: [Platform; 2] = [Platform::Snapchat, Platform::Pinterest];

/// The value `match_keys` produces for one key of a row with only that key set.
fn one(
    platform: Platform,
    key: MatchKey,
    raw: &str,
    country: Option<&str>,
) -> Result<String, Reason> {
    match_key_value(platform, key, raw, &row_region(country, "US"))
}

#[test]
fn snap_documented_examples_hash_as_snap_says() {
    let cases = [
        (
            MatchKey::Email,
            "Person@Example.com",
            "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345",
        ),
        (
            MatchKey::Phone,
            "+44 844 412 4653",
            "dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383",
        ),
        (
            MatchKey::FirstName,
            "John",
            "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a",
        ),
        (
            MatchKey::FirstName,
            "Raphaël",
            "e74bb89e718fe1e19c422a48382870399f8bf7ca8dfa008739e75b0be76627b7",
        ),
    ];
    for platform in PROFILE {
        for (key, raw, digest) in cases {
            assert_eq!(
                one(platform, key, raw, None).as_deref(),
                Ok(digest),
                "{platform:?} {raw}"
            );
        }
    }
}

#[test]
fn email_is_trimmed_and_lowercased_and_keeps_dots_and_tags() {
    // john.doe+promo@example.com
    let digest = "61355ba9fb44067b7d6a10e66925bbab40043ac739818f9f36c02bf178b80d30";
    for platform in PROFILE {
        assert_eq!(
            normalize_email(platform, " John.Doe+promo@Example.com ").as_deref(),
            Some("john.doe+promo@example.com")
        );
        let sent = one(
            platform,
            MatchKey::Email,
            "John.Doe+promo@Example.com",
            None,
        );
        assert_eq!(sent.as_deref(), Ok(digest));
    }
}

#[test]
fn phone_is_the_e164_digits_without_plus_double_zero_or_trunk_zero() {
    // 442079460958, then 16505551212
    let uk = "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823";
    let us = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176";
    for platform in PROFILE {
        for (raw, country) in [
            ("+44 (0)20 7946 0958", None),
            ("0044 20 7946 0958", None),
            ("020 7946 0958", Some("GB")),
        ] {
            assert_eq!(
                normalize_phone(platform, raw, "GB").as_deref(),
                Some("442079460958")
            );
            assert_eq!(
                one(platform, MatchKey::Phone, raw, country).as_deref(),
                Ok(uk),
                "{raw}"
            );
        }
        assert_eq!(
            one(platform, MatchKey::Phone, "(650) 555-1212", None).as_deref(),
            Ok(us)
        );
    }
}

#[test]
fn snapchat_gets_its_keys_and_the_sc_click_id_as_stored() {
    let row = RawIdentity {
        email: Some("Person@Example.com".into()),
        phone: Some("+1 650 555 1212".into()),
        city: Some("San Francisco".into()),
        state: Some("California".into()),
        zip: Some("94105-1234".into()),
        country: Some("United States".into()),
        gender: Some("Female".into()),
        external_id: Some("CRM-77".into()),
        date_of_birth: Some("1985-07-04".into()),
        sc_click_id: Some(" 5e6f7a8b-0c1d-4e2f-9a3b-4c5d6e7f8a9b ".into()),
        epik: Some("dj0yJnU9".into()),
        msclkid: Some("3d5a6b0c9e2f41a8b7c6d5e4f3a2b1c0".into()),
        ..RawIdentity::default()
    };
    let time = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
    let (keys, dropped) = match_keys(Platform::Snapchat, &row, "US", time);
    assert!(dropped.is_empty(), "{dropped:?}");
    let expected: MatchKeys = [
        (
            MatchKey::Email,
            "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345",
        ),
        (
            MatchKey::Phone,
            "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
        ),
        (
            MatchKey::City,
            "1a6bd4d9d79dc0a79b53795c70d3349fa9e38968a3fbefbfe8783efb1d2b6aac",
        ),
        (
            MatchKey::State,
            "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126",
        ),
        (
            MatchKey::Zip,
            "e73ac16e69f060ee98b0fda5f66f48c4648ee26950e9bab3a097389853fd859e",
        ),
        (
            MatchKey::Country,
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
        ),
        (
            MatchKey::Gender,
            "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111",
        ),
        (MatchKey::ScClickId, "5e6f7a8b-0c1d-4e2f-9a3b-4c5d6e7f8a9b"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    // No external_id or date of birth (not in Snap's SDK), no other platform's click id.
    assert_eq!(keys, expected);
}

#[test]
fn pinterest_gets_its_keys_and_the_epik_as_stored() {
    let row = RawIdentity {
        email: Some("Person@Example.com".into()),
        external_id: Some(" CRM-77 ".into()),
        date_of_birth: Some("07/04/1985".into()),
        country: Some("US".into()),
        epik: Some(" dj0yJnU9ZXBpa3ZhbHVl ".into()),
        sc_click_id: Some("5e6f7a8b".into()),
        ..RawIdentity::default()
    };
    let time = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
    let (keys, dropped) = match_keys(Platform::Pinterest, &row, "US", time);
    assert!(dropped.is_empty(), "{dropped:?}");
    let expected: MatchKeys = [
        (
            MatchKey::Email,
            "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345",
        ),
        (
            MatchKey::Country,
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
        ),
        (
            MatchKey::ExternalId,
            "63f6a679cf0efe653aedee206433f3f33ca8d7128ea1af01f0222907cbeb67d9",
        ),
        (
            MatchKey::DateOfBirth,
            "2168bbab13806c125ed1f35c8838fbe8483ce209a3e34ac1eda34c2bf56714e2",
        ),
        (MatchKey::Epik, "dj0yJnU9ZXBpa3ZhbHVl"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect();
    assert_eq!(keys, expected);
}

#[test]
fn pinterest_zips_are_digits_only_and_a_postcode_with_letters_is_left_out() {
    assert_eq!(
        normalize_zip(Platform::Pinterest, "94105-1234", "US").as_deref(),
        Some("94105")
    );
    assert_eq!(
        normalize_zip(Platform::Pinterest, "1234-567", "PT").as_deref(),
        Some("1234")
    );
    assert_eq!(
        one(Platform::Pinterest, MatchKey::Zip, "SW1A 1AA", Some("GB")),
        Err("zip is not numeric")
    );
    // Snapchat keeps Meta's rule.
    assert_eq!(
        normalize_zip(Platform::Snapchat, "SW1A 1AA", "GB").as_deref(),
        Some("sw1a1aa")
    );
}

#[test]
fn click_ids_are_never_hashed_and_blank_ones_are_dropped() {
    for (platform, key) in [
        (Platform::Snapchat, MatchKey::ScClickId),
        (Platform::Pinterest, MatchKey::Epik),
    ] {
        assert!(!key.is_hashed(platform) && !key.is_personal());
        assert!(key.is_accepted_by(platform));
        assert_eq!(MatchKey::from_name(key.as_str()), Some(key));
        assert_eq!(one(platform, key, "   ", None), Err(EMPTY));
    }
    assert!(!MatchKey::Epik.is_accepted_by(Platform::Snapchat));
    assert!(!MatchKey::ScClickId.is_accepted_by(Platform::Meta));
}

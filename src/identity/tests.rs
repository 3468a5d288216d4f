//! Tests of `match_keys`, hashing, match key names and `EventIdentity`; the helpers here serve the
//! sibling test modules (rules document examples, Unicode forms, idempotence).

use chrono::{DateTime, TimeZone, Utc};

use super::*;

/// The platforms, for loops.
pub(super) const PLATFORMS: [Platform; 3] = [Platform::Meta, Platform::GoogleAds, Platform::Tiktok];

/// A Taboola click id of the documented shape (Taboola's sample, 71 URL-safe characters).
const TABOOLA_CLICK: &str =
    "GiDxLZcEVjwEqkGfKQMQndUYMIeZXFHmZ0DrHIJhGS6kKiDzkGUos9GzkpqG-YHQATCwxlQ";

/// A fixed event time: 2024-05-01T12:00:00Z.
pub(super) fn event_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
}

/// SHA-256 hex of a string, computed here independently of `hash` (no pass-through).
pub(super) fn sha(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------------------------

#[test]
fn hash_is_lowercase_sha256_hex_of_the_utf8_bytes() {
    assert_eq!(
        hash("john.doe@example.com"),
        "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f"
    );
    // "josé" in NFC: U+00E9 is two UTF-8 bytes.
    assert_eq!(
        hash("jos\u{e9}"),
        "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866"
    );
    assert_eq!(hash(""), sha(""));
}

#[test]
fn hash_passes_a_digest_through_lowercased() {
    let upper = "836F82DB99121B3481011F16B49DFA5FBC714A0D1B1B9F784A1EBBBF5B39577F";
    assert_eq!(hash(upper), upper.to_ascii_lowercase());
    assert_eq!(hash(&hash("x")), hash("x"));
    // 63 or 65 hex chars, or a non-hex char, is not a digest.
    assert_eq!(hash(&upper[1..]), sha(&upper[1..]));
    let not_hex = format!("{}g", &upper[1..]);
    assert_eq!(hash(&not_hex), sha(&not_hex));
}

// ---------------------------------------------------------------------------------------------
// MatchKey
// ---------------------------------------------------------------------------------------------

#[test]
fn match_key_names_round_trip_and_agree_with_serde() {
    for key in MatchKey::ALL {
        assert_eq!(MatchKey::from_name(key.as_str()), Some(key));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{}\"", key.as_str()));
        assert_eq!(serde_json::from_str::<MatchKey>(&json).unwrap(), key);
    }
    assert_eq!(MatchKey::from_name("first_name"), Some(MatchKey::FirstName));
    assert_eq!(MatchKey::from_name("fbclid"), None);
    assert_eq!(MatchKey::from_name("click_time"), None);
    assert_eq!(MatchKey::from_name("Email"), None);
    let mut sorted = MatchKey::ALL;
    sorted.sort();
    assert_eq!(sorted, MatchKey::ALL);
}

#[test]
fn personal_data_is_hashed_except_google_address_parts() {
    for platform in PLATFORMS {
        for key in [
            MatchKey::Email,
            MatchKey::Phone,
            MatchKey::FirstName,
            MatchKey::LastName,
        ] {
            assert!(key.is_hashed(platform));
        }
        for key in [
            MatchKey::ClientIp,
            MatchKey::UserAgent,
            MatchKey::Fbc,
            MatchKey::Fbp,
            MatchKey::Gclid,
            MatchKey::Gbraid,
            MatchKey::Wbraid,
            MatchKey::Ttclid,
            MatchKey::Ttp,
            MatchKey::Msclkid,
            MatchKey::ObClickId,
            MatchKey::TaboolaClickId,
            MatchKey::LeadId,
        ] {
            assert!(!key.is_hashed(platform), "{key}");
        }
    }
    for key in [
        MatchKey::City,
        MatchKey::State,
        MatchKey::Zip,
        MatchKey::Country,
    ] {
        assert!(key.is_hashed(Platform::Meta));
        assert!(!key.is_hashed(Platform::GoogleAds));
    }
    assert!(MatchKey::ExternalId.is_hashed(Platform::Tiktok));
}

#[test]
fn every_accepted_key_is_listed_once_in_key_order() {
    for platform in PLATFORMS {
        let keys = accepted_keys(platform);
        assert!(
            keys.windows(2).all(|pair| pair[0] < pair[1]),
            "{platform:?}"
        );
    }
    assert!(MatchKey::Fbc.is_accepted_by(Platform::Meta));
    assert!(!MatchKey::Gclid.is_accepted_by(Platform::Meta));
    assert!(!MatchKey::FirstName.is_accepted_by(Platform::GoogleAds));
    assert!(MatchKey::Ttclid.is_accepted_by(Platform::Tiktok));
    assert!(!MatchKey::Msclkid.is_accepted_by(Platform::Tiktok));
}

// ---------------------------------------------------------------------------------------------
// RawIdentity
// ---------------------------------------------------------------------------------------------

/// A row with every field set to a distinctive value.
pub(super) fn full_row() -> RawIdentity {
    RawIdentity {
        email: Some("  Alice.Smith+news@Gmail.com ".into()),
        phone: Some("(415) 555-0132".into()),
        first_name: Some("Zoë-Anne".into()),
        last_name: Some("O'Hara".into()),
        city: Some("San Francisco".into()),
        state: Some("California".into()),
        zip: Some("94105-1234".into()),
        country: Some("United States".into()),
        external_id: Some(" CRM-77 ".into()),
        date_of_birth: Some("07/04/1985".into()),
        gender: Some("Female".into()),
        client_ip: Some("198.51.100.23".into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0".into()),
        fbc: None,
        fbclid: Some("IwAR0abcXYZ".into()),
        fbp: Some("fb.1.1714564800000.987654321".into()),
        gclid: Some("Cj0KCQjwgclidvalue".into()),
        gbraid: Some("0AAAAAgbraidvalue".into()),
        wbraid: Some("CkwbraidvalueQ".into()),
        ttclid: Some("E.C.P.ttclidvalue".into()),
        ttp: Some("ttpcookievalue".into()),
        msclkid: Some("msclkidvalue123".into()),
        ob_click_id: Some("00ab12cd34ef56ab78cd90ef12ab34cd56".into()),
        taboola_click_id: Some(TABOOLA_CLICK.into()),
        li_fat_id: Some("df5gf5-gh6t7-ph4j7h".into()),
        rdt_cid: Some("t2_rdtcidvalue".into()),
        sc_click_id: Some("5e6f7a8b-0c1d-4e2f-9a3b-4c5d6e7f8a9b".into()),
        epik: Some("dj0yJnU9ZXBpa3ZhbHVlJm49MSZtPTE".into()),
        lead_id: Some("123456789012345".into()),
        click_time: Some(Utc.with_ymd_and_hms(2024, 4, 30, 8, 0, 0).unwrap()),
    }
}

#[test]
fn debug_of_raw_identity_shows_field_names_but_no_value() {
    let row = full_row();
    let debug = format!("{row:?}");
    let pretty = format!("{row:#?}");
    for key in MatchKey::ALL {
        let value = row.get(key).unwrap_or_default();
        for part in value.split_whitespace().filter(|p| p.len() > 3) {
            assert!(!debug.contains(part), "{key} leaked in {debug}");
            assert!(!pretty.contains(part), "{key} leaked in {pretty}");
        }
    }
    for secret in ["IwAR0abcXYZ", "2024", "Alice", "415", "94105"] {
        assert!(!debug.contains(secret), "{secret} leaked in {debug}");
    }
    assert!(debug.contains("email") && debug.contains("fbclid") && debug.contains("click_time"));
    let empty = format!("{:?}", RawIdentity::default());
    assert_eq!(empty, "RawIdentity { present: [] }");
}

// ---------------------------------------------------------------------------------------------
// match_keys
// ---------------------------------------------------------------------------------------------

#[test]
fn meta_gets_every_personal_key_hashed_and_click_data_as_stored() {
    let (keys, dropped) = match_keys(Platform::Meta, &full_row(), "US", event_time());
    assert!(dropped.is_empty(), "{dropped:?}");
    let expected_plain = [
        (MatchKey::Email, "alice.smith+news@gmail.com"),
        (MatchKey::Phone, "14155550132"),
        (MatchKey::FirstName, "zoëanne"),
        (MatchKey::LastName, "ohara"),
        (MatchKey::City, "sanfrancisco"),
        (MatchKey::State, "ca"),
        (MatchKey::Zip, "94105"),
        (MatchKey::Country, "us"),
        (MatchKey::ExternalId, "crm-77"),
        (MatchKey::DateOfBirth, "19850704"),
        (MatchKey::Gender, "f"),
    ];
    for (key, plain) in expected_plain {
        assert_eq!(keys[&key], sha(plain), "{key}");
    }
    assert_eq!(keys[&MatchKey::ClientIp], "198.51.100.23");
    assert_eq!(
        keys[&MatchKey::UserAgent],
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
    );
    assert_eq!(keys[&MatchKey::Fbp], "fb.1.1714564800000.987654321");
    assert_eq!(keys[&MatchKey::LeadId], "123456789012345");
    // Built from fbclid with the click time (2024-04-30T08:00:00Z), not the event time.
    assert_eq!(keys[&MatchKey::Fbc], "fb.1.1714464000000.IwAR0abcXYZ");
    assert_eq!(keys.len(), 16);
    assert!(keys.keys().all(|key| key.is_accepted_by(Platform::Meta)));
}

#[test]
fn google_ads_gets_hashed_email_and_phone_and_its_click_ids() {
    let (keys, dropped) = match_keys(Platform::GoogleAds, &full_row(), "US", event_time());
    assert!(dropped.is_empty(), "{dropped:?}");
    let expected: MatchKeys = [
        (MatchKey::Email, sha("alicesmith@gmail.com")),
        (MatchKey::Phone, sha("+14155550132")),
        (MatchKey::Gclid, "Cj0KCQjwgclidvalue".to_owned()),
        (MatchKey::Gbraid, "0AAAAAgbraidvalue".to_owned()),
        (MatchKey::Wbraid, "CkwbraidvalueQ".to_owned()),
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
}

#[test]
fn tiktok_gets_hashed_email_phone_external_id_and_its_click_data() {
    let (keys, dropped) = match_keys(Platform::Tiktok, &full_row(), "US", event_time());
    assert!(dropped.is_empty(), "{dropped:?}");
    let expected: MatchKeys = [
        (MatchKey::Email, sha("alice.smith+news@gmail.com")),
        (MatchKey::Phone, sha("+14155550132")),
        (MatchKey::ExternalId, sha("crm-77")),
        (MatchKey::ClientIp, "198.51.100.23".to_owned()),
        (
            MatchKey::UserAgent,
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0".to_owned(),
        ),
        (MatchKey::Ttclid, "E.C.P.ttclidvalue".to_owned()),
        (MatchKey::Ttp, "ttpcookievalue".to_owned()),
        (MatchKey::LeadId, "123456789012345".to_owned()),
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
}

#[test]
fn an_empty_row_gives_nothing_and_drops_nothing() {
    for platform in PLATFORMS {
        let (keys, dropped) = match_keys(platform, &RawIdentity::default(), "US", event_time());
        assert!(keys.is_empty() && dropped.is_empty());
    }
}

#[test]
fn invalid_and_empty_values_are_dropped_with_a_reason_and_no_value() {
    let row = RawIdentity {
        email: Some("john doe@example.com".into()),
        phone: Some("555-1212".into()),
        first_name: Some("   ".into()),
        country: Some("Atlantis".into()),
        date_of_birth: Some("1990-02-30".into()),
        gender: Some("other".into()),
        client_ip: Some("not-an-ip".into()),
        fbc: Some("fb.1.123.abc".into()),
        ..RawIdentity::default()
    };
    let (keys, dropped) = match_keys(Platform::Meta, &row, "US", event_time());
    assert!(keys.is_empty(), "{keys:?}");
    let expected = vec![
        Dropped {
            key: MatchKey::Email,
            reason: "invalid email",
        },
        Dropped {
            key: MatchKey::Phone,
            reason: "not a valid phone number for region",
        },
        Dropped {
            key: MatchKey::FirstName,
            reason: "empty",
        },
        Dropped {
            key: MatchKey::Country,
            reason: "unknown country",
        },
        Dropped {
            key: MatchKey::DateOfBirth,
            reason: "invalid date of birth",
        },
        Dropped {
            key: MatchKey::Gender,
            reason: "unknown gender",
        },
        Dropped {
            key: MatchKey::ClientIp,
            reason: "invalid IP address",
        },
        Dropped {
            key: MatchKey::Fbc,
            reason: "invalid fbc",
        },
    ];
    assert_eq!(dropped, expected);
}

#[test]
fn keys_a_platform_does_not_take_are_ignored_not_dropped() {
    let row = RawIdentity {
        first_name: Some("!!!".into()),
        gclid: Some("abc".into()),
        ..RawIdentity::default()
    };
    let (keys, dropped) = match_keys(Platform::Tiktok, &row, "US", event_time());
    assert!(keys.is_empty() && dropped.is_empty());
}

#[test]
fn pre_hashed_values_pass_through_lowercased_for_hashed_keys_only() {
    let digest = "836F82DB99121B3481011F16B49DFA5FBC714A0D1B1B9F784A1EBBBF5B39577F";
    let row = RawIdentity {
        email: Some(format!(" {digest} ")),
        phone: Some(digest.to_owned()),
        external_id: Some(digest.to_owned()),
        lead_id: Some(digest.to_owned()),
        ..RawIdentity::default()
    };
    let lower = digest.to_ascii_lowercase();
    for platform in PLATFORMS {
        let (keys, dropped) = match_keys(platform, &row, "US", event_time());
        assert!(dropped.is_empty(), "{platform:?}: {dropped:?}");
        assert_eq!(keys[&MatchKey::Email], lower);
        assert_eq!(keys[&MatchKey::Phone], lower);
    }
    let (keys, _) = match_keys(Platform::Tiktok, &row, "US", event_time());
    assert_eq!(keys[&MatchKey::ExternalId], lower);
    // lead_id is never hashed, so a digest-looking lead id is just a value, kept as stored.
    assert_eq!(keys[&MatchKey::LeadId], digest);
}

#[test]
fn national_phones_are_read_in_the_row_country_before_the_default_region() {
    let mut row = RawIdentity {
        phone: Some("020 7946 0958".into()),
        country: Some("UK".into()),
        ..RawIdentity::default()
    };
    let (keys, _) = match_keys(Platform::GoogleAds, &row, "US", event_time());
    assert_eq!(keys[&MatchKey::Phone], sha("+442079460958"));
    // An unknown country falls back to the default region, where this number is invalid.
    row.country = Some("Atlantis".into());
    let (keys, dropped) = match_keys(Platform::GoogleAds, &row, "US", event_time());
    assert!(!keys.contains_key(&MatchKey::Phone));
    assert_eq!(dropped[0].key, MatchKey::Phone);
    // Antarctica is a country but has no phone metadata: the default region is used for the phone.
    row.country = Some("Antarctica".into());
    let (keys, _) = match_keys(Platform::GoogleAds, &row, "GB", event_time());
    assert_eq!(keys[&MatchKey::Phone], sha("+442079460958"));
}

#[test]
fn zip_and_date_rules_follow_the_row_country() {
    let row = RawIdentity {
        zip: Some("SW1A 1AA".into()),
        date_of_birth: Some("04/07/1985".into()),
        country: Some("GB".into()),
        ..RawIdentity::default()
    };
    let (keys, _) = match_keys(Platform::Meta, &row, "US", event_time());
    assert_eq!(keys[&MatchKey::Zip], sha("sw1a1aa"));
    assert_eq!(keys[&MatchKey::DateOfBirth], sha("19850704"));
    let us_row = RawIdentity {
        country: None,
        ..row
    };
    let (keys, _) = match_keys(Platform::Meta, &us_row, "US", event_time());
    assert_eq!(keys[&MatchKey::Zip], sha("sw1a1"));
    assert_eq!(keys[&MatchKey::DateOfBirth], sha("19850407"));
}

#[test]
fn fbc_prefers_a_valid_stored_value_then_fbclid_with_click_or_event_time() {
    let stored = "fb.1.1554763741205.IwAR2F4";
    let mut row = RawIdentity {
        fbc: Some(stored.into()),
        fbclid: Some("IwARother".into()),
        ..RawIdentity::default()
    };
    let fbc = |row: &RawIdentity| {
        let (keys, dropped) = match_keys(Platform::Meta, row, "US", event_time());
        (keys.get(&MatchKey::Fbc).cloned(), dropped)
    };
    assert_eq!(fbc(&row), (Some(stored.to_owned()), vec![]));
    // An invalid stored fbc gives way to the fbclid; the event time is used without a click time.
    row.fbc = Some("garbage".into());
    assert_eq!(
        fbc(&row),
        (Some("fb.1.1714564800000.IwARother".to_owned()), vec![])
    );
    row.fbc = None;
    row.click_time = Some(Utc.with_ymd_and_hms(2024, 4, 30, 8, 0, 0).unwrap());
    assert_eq!(fbc(&row).0.as_deref(), Some("fb.1.1714464000000.IwARother"));
    // Both unusable: the stored fbc's reason is reported.
    row.fbc = Some("garbage".into());
    row.fbclid = Some("Iw AR".into());
    let reasons: Vec<_> = fbc(&row).1.into_iter().map(|d| d.reason).collect();
    assert_eq!(reasons, ["invalid fbc"]);
    // fbclid is Meta-only.
    let (keys, _) = match_keys(Platform::Tiktok, &row, "US", event_time());
    assert!(!keys.contains_key(&MatchKey::Fbc));
}

#[test]
fn one_event_identity_for_every_platform_answers_as_separate_match_keys_calls() {
    let mut invalid_phone = full_row();
    invalid_phone.phone = Some("call me".into());
    let mut prehashed = full_row();
    prehashed.email = Some(hash("alice@example.com").to_ascii_uppercase());
    prehashed.country = Some("GB".into());
    prehashed.phone = Some("020 7946 0958".into());
    for row in [full_row(), invalid_phone, prehashed, RawIdentity::default()] {
        let mut shared = EventIdentity::new(&row, "US");
        // Twice around: the second round is served from the memo.
        for platform in [Platform::Meta, Platform::GoogleAds, Platform::Tiktok].repeat(2) {
            assert_eq!(
                shared.match_keys(platform, event_time()),
                match_keys(platform, &row, "US", event_time()),
                "{platform:?} {row:?}"
            );
            // One destination: nothing kept for later, same answer.
            assert_eq!(
                EventIdentity::new(&row, "US")
                    .for_destinations(1)
                    .match_keys(platform, event_time()),
                match_keys(platform, &row, "US", event_time()),
                "{platform:?} {row:?}"
            );
        }
    }
}

#[test]
fn microsoft_gets_hashed_email_and_e164_phone_and_the_bare_msclkid() {
    // The `microsoft` profile: email trimmed and lowercased (no gmail rule), phone E.164 with `+`.
    let mut row = full_row();
    row.msclkid = Some("_uet3D5A6B0C9E2F41A8B7C6D5E4F3A2B1C0-1".into());
    let (keys, dropped) = match_keys(Platform::MicrosoftAds, &row, "US", event_time());
    assert!(dropped.is_empty(), "{dropped:?}");
    let expected: MatchKeys = [
        (MatchKey::Email, sha("alice.smith+news@gmail.com")),
        (MatchKey::Phone, sha("+14155550132")),
        (
            MatchKey::Msclkid,
            "3D5A6B0C9E2F41A8B7C6D5E4F3A2B1C0".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    // A value that is no msclkid is left out with the reason, never sent.
    let (keys, dropped) = match_keys(Platform::MicrosoftAds, &full_row(), "US", event_time());
    assert!(!keys.contains_key(&MatchKey::Msclkid));
    assert_eq!(
        dropped,
        vec![Dropped {
            key: MatchKey::Msclkid,
            reason: "invalid msclkid"
        }]
    );
}

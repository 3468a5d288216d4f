//! Every example in normalization.md, through the public normalizers and `match_key_value`: one test
//! per section of the document.

use chrono::DateTime;

use super::tests::{sha, PLATFORMS};
use super::*;

use Platform::{GoogleAds as G, Meta as M, Tiktok as T};

#[test]
fn email_examples_hold() {
    for p in PLATFORMS {
        assert_eq!(
            normalize_email(p, "  John.Doe@Example.COM ").unwrap(),
            "john.doe@example.com"
        );
        assert_eq!(normalize_email(p, "john doe@example.com"), None);
    }
    // Only Google removes a Gmail address's dots and `+` tag.
    for (p, normalized) in [
        (M, "john.doe+promo@gmail.com"),
        (T, "john.doe+promo@gmail.com"),
        (G, "johndoe@gmail.com"),
    ] {
        assert_eq!(
            normalize_email(p, "John.Doe+promo@Gmail.com").unwrap(),
            normalized,
            "{p:?}"
        );
    }
}

#[test]
fn phone_examples_hold() {
    for (raw, region, e164) in [
        ("(650) 555-1212", "US", "+16505551212"),
        ("650.555.1212", "US", "+16505551212"),
        ("+44 (0)20 7946 0958", "US", "+442079460958"),
        ("0044 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
    ] {
        assert_eq!(normalize_phone(G, raw, region).unwrap(), e164);
        assert_eq!(normalize_phone(T, raw, region).unwrap(), e164);
        assert_eq!(normalize_phone(M, raw, region).unwrap(), e164[1..]);
    }
}

#[test]
fn name_examples_hold() {
    for p in [M, T] {
        for (raw, normalized) in [
            ("  Mary-Jane ", "maryjane"),
            ("O'Brien", "obrien"),
            ("Jos\u{e9}", "jos\u{e9}"),
            ("Jose\u{301}", "jos\u{e9}"),
        ] {
            assert_eq!(normalize_name(p, raw).unwrap(), normalized, "{p:?} {raw:?}");
        }
    }
    assert_eq!(normalize_name(G, "Mary-Jane").unwrap(), "mary-jane");
}

#[test]
fn address_examples_hold() {
    assert_eq!(normalize_city(M, "St. Louis").unwrap(), "stlouis");
    assert_eq!(
        normalize_city(M, "Saint-\u{c9}tienne").unwrap(),
        "saint\u{e9}tienne"
    );
    assert_eq!(normalize_state(M, "California").unwrap(), "ca");
    assert_eq!(normalize_state(M, "N.Y.").unwrap(), "ny");
    // Google: postal code trimmed as is, region code uppercase.
    for (p, raw, region, zip) in [
        (M, "94105-1234", "US", "94105"),
        (M, "SW1A 1AA", "GB", "sw1a1aa"),
        (G, " 94105-1234 ", "US", "94105-1234"),
    ] {
        assert_eq!(normalize_zip(p, raw, region).unwrap(), zip, "{p:?} {raw:?}");
    }
    for (p, raw, code) in [
        (M, "United States", "us"),
        (M, "usa", "us"),
        (M, "US", "us"),
        (M, "UK", "gb"),
        (M, "U.K.", "gb"),
        (M, "United Kingdom", "gb"),
        (G, "United Kingdom", "GB"),
    ] {
        assert_eq!(normalize_country(p, raw).unwrap(), code, "{p:?} {raw:?}");
    }
    assert_eq!(normalize_country(M, "Narnia"), None);
}

#[test]
fn date_of_birth_gender_and_external_id_examples_hold() {
    for (raw, region) in [
        ("1990-01-15", "US"),
        ("19900115", "FR"),
        ("01/15/1990", "US"),
        ("15/01/1990", "FR"),
        ("15.01.1990", "DE"),
    ] {
        assert_eq!(
            normalize_date_of_birth(raw, region).unwrap(),
            "19900115",
            "{raw} in {region}"
        );
    }
    assert_eq!(normalize_date_of_birth("1990-02-30", "US"), None);
    for (raw, gender) in [
        ("f", "f"),
        ("Female", "f"),
        ("WOMAN", "f"),
        ("M", "m"),
        ("male", "m"),
        ("Man", "m"),
    ] {
        assert_eq!(normalize_gender(raw).unwrap(), gender, "{raw}");
    }
    assert_eq!(normalize_gender("x"), None);
    // External id: trim, lowercase, remove whitespace, hash.
    assert_eq!(normalize_external_id(" CRM 00123 ").unwrap(), "crm00123");
    assert_eq!(
        match_key_value(M, MatchKey::ExternalId, " CRM-00123 ", "US").unwrap(),
        sha("crm-00123")
    );
}

#[test]
fn click_data_and_pre_hashed_examples_hold() {
    // Never hashed: sent as stored, trimmed.
    for p in PLATFORMS {
        assert_eq!(
            match_key_value(p, MatchKey::Gclid, " AbC ", "US").unwrap(),
            "AbC"
        );
        assert_eq!(
            match_key_value(p, MatchKey::LeadId, " 1234 ", "US").unwrap(),
            "1234"
        );
    }
    assert_eq!(
        normalize_fbc("fb.1.1554763741205.AbCd").unwrap(),
        "fb.1.1554763741205.AbCd"
    );
    let click = DateTime::from_timestamp_millis(1_554_763_741_205).unwrap();
    assert_eq!(
        fbc_from_fbclid("AbCd", click).unwrap(),
        "fb.1.1554763741205.AbCd"
    );
    // Hash: a 64-hex value in a hashed field is lowercased and passed through.
    let digest = sha("x").to_ascii_uppercase();
    assert_eq!(
        match_key_value(M, MatchKey::Email, &digest, "US").unwrap(),
        sha("x")
    );
}

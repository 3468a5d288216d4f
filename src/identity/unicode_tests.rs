//! Invisible format characters and compatibility forms: what copy-paste and web forms leave in a
//! value changes no match key, while values sent as stored keep their characters.

use proptest::prelude::*;

use super::idempotence_tests::messy_text;
use super::tests::{event_time, full_row, sha, PLATFORMS};
use super::*;

/// Invisible format characters (Unicode category Cf) that copy-paste and web forms leave in text:
/// zero-width space, non-joiner and joiner, left-to-right and right-to-left marks, bidi embedding,
/// override and isolate controls, word joiner, invisible operators, BOM and soft hyphen.
const FORMAT_CHARACTERS: &[char] = &[
    '\u{200b}', '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}',
    '\u{202d}', '\u{202e}', '\u{2060}', '\u{2061}', '\u{2062}', '\u{2063}', '\u{2064}', '\u{2066}',
    '\u{2067}', '\u{2068}', '\u{2069}', '\u{feff}', '\u{ad}', '\u{61c}', '\u{180e}',
];

/// The keys whose values are normalized (not sent as stored), with a clean example and a region.
const NORMALIZED_EXAMPLES: &[(MatchKey, &str)] = &[
    (MatchKey::Email, "john.doe@example.com"),
    (MatchKey::Phone, "+1 650 555 1212"),
    (MatchKey::FirstName, "Pat"),
    (MatchKey::LastName, "O'Brien"),
    (MatchKey::City, "St. Louis"),
    (MatchKey::State, "California"),
    (MatchKey::Zip, "94105-1234"),
    (MatchKey::Country, "United States"),
    (MatchKey::ExternalId, "CRM-00123"),
    (MatchKey::DateOfBirth, "1990-01-15"),
    (MatchKey::Gender, "female"),
];

#[test]
fn a_zero_width_space_in_a_name_hashes_like_the_name_without_it() {
    for platform in [Platform::Meta, Platform::Tiktok] {
        assert_eq!(
            normalize_name(platform, "Pa\u{200b}t").as_deref(),
            Some("pat")
        );
    }
    assert_eq!(
        match_key_value(Platform::Meta, MatchKey::FirstName, "Pa\u{200b}t", "US").unwrap(),
        sha("pat")
    );
    assert_eq!(
        normalize_name(Platform::GoogleAds, "Mary\u{200b}-Jane").as_deref(),
        Some("mary-jane")
    );
}

#[test]
fn format_characters_anywhere_in_a_value_change_no_key() {
    for platform in PLATFORMS {
        for &(key, clean) in NORMALIZED_EXAMPLES {
            let expected = match_key_value(platform, key, clean, "US");
            for &format in FORMAT_CHARACTERS {
                // Before, inside and after the value, and several at once.
                let middle = clean.len() / 2;
                for raw in [
                    format!("{format}{clean}"),
                    format!("{}{format}{}", &clean[..middle], &clean[middle..]),
                    format!("{clean}{format}"),
                    clean.chars().flat_map(|c| [c, format]).collect(),
                ] {
                    assert_eq!(
                        match_key_value(platform, key, &raw, "US"),
                        expected,
                        "{platform:?} {key:?} {raw:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_row_typed_with_invisible_and_fullwidth_characters_gives_the_same_keys_as_the_plain_row() {
    let plain = full_row();
    let mut messy = full_row();
    // Fullwidth "Alice" and "＠", a soft hyphen, a zero-width space, bidi isolates and marks, a BOM.
    messy.email = Some(
        "  \u{ff21}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}.Smith+news\u{ff20}Gmail.com\u{feff} ".into(),
    );
    messy.phone = Some("\u{2066}(415) 555-0132\u{2069}".into());
    messy.first_name = Some("Zo\u{eb}\u{ad}-Anne\u{200b}".into());
    messy.last_name = Some("\u{200f}O'Hara\u{200e}".into());
    messy.city = Some("San\u{a0}Fran\u{200c}cisco".into());
    messy.zip = Some("\u{ff19}\u{ff14}\u{ff11}\u{ff10}\u{ff15}-1234".into());
    messy.country = Some("\u{ff35}nited States".into());
    for platform in PLATFORMS {
        assert_eq!(
            EventIdentity::new(&messy, "US").match_keys(platform, event_time()),
            EventIdentity::new(&plain, "US").match_keys(platform, event_time()),
            "{platform:?}"
        );
    }
}

#[test]
fn a_format_character_between_a_letter_and_its_accent_is_removed_before_composing() {
    assert_eq!(
        normalize_name(Platform::Meta, "Jose\u{200b}\u{301}").as_deref(),
        Some("jos\u{e9}")
    );
}

#[test]
fn fullwidth_and_compatibility_forms_fold_to_their_plain_letters_and_digits() {
    use Platform::{GoogleAds as G, Meta as M, Tiktok as T};
    for p in [M, T] {
        assert_eq!(
            normalize_name(p, "\u{ff30}\u{ff41}\u{ff54}").as_deref(),
            Some("pat")
        );
        // A ligature is two letters; a no-break space is a space.
        assert_eq!(normalize_name(p, "\u{fb01}nn").as_deref(), Some("finn"));
        assert_eq!(
            normalize_city(p, "San\u{a0}Jos\u{e9}").as_deref(),
            Some("sanjos\u{e9}")
        );
    }
    assert_eq!(
        normalize_name(G, "\u{ff30}\u{ff41}\u{ff54}").as_deref(),
        Some("pat")
    );
    assert_eq!(
        match_key_value(M, MatchKey::FirstName, "\u{ff30}\u{ff41}\u{ff54}", "US").unwrap(),
        sha("pat")
    );
    // Fullwidth ＠ and ．, as typed with an East Asian input method.
    let fullwidth_email = "\u{ff2a}\u{ff2f}\u{ff28}\u{ff2e}\u{ff20}example\u{ff0e}com";
    for p in PLATFORMS {
        assert_eq!(
            normalize_email(p, fullwidth_email).as_deref(),
            Some("john@example.com")
        );
    }
    // Fullwidth digits and plus sign.
    let fullwidth_phone = "\u{ff0b}\u{ff11} \u{ff16}\u{ff15}\u{ff10} \u{ff15}\u{ff15}\u{ff15} \u{ff11}\u{ff12}\u{ff11}\u{ff12}";
    assert_eq!(
        normalize_phone(G, fullwidth_phone, "US").as_deref(),
        Some("+16505551212")
    );
    assert_eq!(
        normalize_phone(M, fullwidth_phone, "US").as_deref(),
        Some("16505551212")
    );
    assert_eq!(
        normalize_zip(M, "\u{ff19}\u{ff14}\u{ff11}\u{ff10}\u{ff15}", "US").as_deref(),
        Some("94105")
    );
    assert_eq!(
        normalize_zip(G, "\u{ff19}\u{ff14}\u{ff11}\u{ff10}\u{ff15}", "US").as_deref(),
        Some("94105")
    );
    assert_eq!(
        normalize_country(M, "\u{ff35}\u{ff33}").as_deref(),
        Some("us")
    );
    assert_eq!(
        normalize_date_of_birth("\u{ff11}\u{ff19}\u{ff19}\u{ff10}-01-15", "US").as_deref(),
        Some("19900115")
    );
    // The row's region is read from a fullwidth country too.
    assert_eq!(row_region(Some("\u{ff27}\u{ff22}"), "US"), "GB");
}

#[test]
fn values_sent_as_stored_keep_their_characters() {
    // Click ids, cookies and the user agent are the platform's own strings: only trimmed.
    for key in [
        MatchKey::Gclid,
        MatchKey::Fbp,
        MatchKey::UserAgent,
        MatchKey::LeadId,
    ] {
        for raw in ["Ab\u{200b}C", "\u{ff21}b"] {
            assert_eq!(
                match_key_value(Platform::Meta, key, &format!(" {raw} "), "US").unwrap(),
                raw,
                "{key:?}"
            );
        }
    }
}

#[test]
fn emails_with_an_empty_domain_label_are_dropped() {
    for raw in ["a@b..com", "a@.com", "a@com.", "a@b.com.", "a@\u{200b}.com"] {
        for platform in PLATFORMS {
            assert_eq!(
                match_key_value(platform, MatchKey::Email, raw, "US"),
                Err("invalid email"),
                "{raw:?}"
            );
        }
    }
}

/// One of [`FORMAT_CHARACTERS`].
fn format_character() -> impl Strategy<Value = char> {
    prop::sample::select(FORMAT_CHARACTERS.to_vec())
}

proptest! {
    #[test]
    fn inserted_format_characters_never_change_a_normalized_key(
        example in prop::sample::select(NORMALIZED_EXAMPLES.to_vec()),
        raw in messy_text(),
        inserts in prop::collection::vec((any::<prop::sample::Index>(), format_character()), 1..4),
        platform in prop::sample::select(PLATFORMS.to_vec()),
    ) {
        let key = example.0;
        let mut with_format: Vec<char> = raw.chars().collect();
        for (at, c) in inserts {
            with_format.insert(at.index(with_format.len() + 1), c);
        }
        let with_format: String = with_format.into_iter().collect();
        prop_assert_eq!(
            match_key_value(platform, key, &with_format, "US"),
            match_key_value(platform, key, &raw, "US")
        );
    }
}

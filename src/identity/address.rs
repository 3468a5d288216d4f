//! City, state and postal code normalization (Meta hashed form; Google's clear form).

use std::collections::HashMap;
use std::sync::LazyLock;

use super::text::{clean, fold, is_separator_like, lower, lower_words, nfc, retain};
use super::{Reason, EMPTY};
use crate::platform::Platform;

/// US states, DC and territories, then Canadian provinces and territories: (code, English name).
const STATES: &[(&str, &str)] = &[
    ("al", "Alabama"),
    ("ak", "Alaska"),
    ("az", "Arizona"),
    ("ar", "Arkansas"),
    ("ca", "California"),
    ("co", "Colorado"),
    ("ct", "Connecticut"),
    ("de", "Delaware"),
    ("fl", "Florida"),
    ("ga", "Georgia"),
    ("hi", "Hawaii"),
    ("id", "Idaho"),
    ("il", "Illinois"),
    ("in", "Indiana"),
    ("ia", "Iowa"),
    ("ks", "Kansas"),
    ("ky", "Kentucky"),
    ("la", "Louisiana"),
    ("me", "Maine"),
    ("md", "Maryland"),
    ("ma", "Massachusetts"),
    ("mi", "Michigan"),
    ("mn", "Minnesota"),
    ("ms", "Mississippi"),
    ("mo", "Missouri"),
    ("mt", "Montana"),
    ("ne", "Nebraska"),
    ("nv", "Nevada"),
    ("nh", "New Hampshire"),
    ("nj", "New Jersey"),
    ("nm", "New Mexico"),
    ("ny", "New York"),
    ("nc", "North Carolina"),
    ("nd", "North Dakota"),
    ("oh", "Ohio"),
    ("ok", "Oklahoma"),
    ("or", "Oregon"),
    ("pa", "Pennsylvania"),
    ("ri", "Rhode Island"),
    ("sc", "South Carolina"),
    ("sd", "South Dakota"),
    ("tn", "Tennessee"),
    ("tx", "Texas"),
    ("ut", "Utah"),
    ("vt", "Vermont"),
    ("va", "Virginia"),
    ("wa", "Washington"),
    ("wv", "West Virginia"),
    ("wi", "Wisconsin"),
    ("wy", "Wyoming"),
    ("dc", "District of Columbia"),
    ("dc", "Washington DC"),
    ("dc", "Washington D.C."),
    ("as", "American Samoa"),
    ("gu", "Guam"),
    ("mp", "Northern Mariana Islands"),
    ("pr", "Puerto Rico"),
    ("vi", "U.S. Virgin Islands"),
    ("vi", "United States Virgin Islands"),
    ("ab", "Alberta"),
    ("bc", "British Columbia"),
    ("mb", "Manitoba"),
    ("nb", "New Brunswick"),
    ("nl", "Newfoundland and Labrador"),
    ("nl", "Newfoundland"),
    ("ns", "Nova Scotia"),
    ("nt", "Northwest Territories"),
    ("nu", "Nunavut"),
    ("on", "Ontario"),
    ("pe", "Prince Edward Island"),
    ("qc", "Quebec"),
    ("sk", "Saskatchewan"),
    ("yt", "Yukon"),
];

/// Folded state/province name → two-letter code.
static STATE_BY_NAME: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    STATES
        .iter()
        .map(|(code, name)| (fold(name), *code))
        .collect()
});

/// Normalizes a city, or says why it is left out.
pub(crate) fn city_checked(platform: Platform, raw: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    // Google has its own address rule; every other platform that takes a city uses Meta's.
    if platform.is_google() {
        lower_words(&cleaned)
    } else {
        retain(&lower(&cleaned), |c| {
            !is_separator_like(c) && !c.is_numeric()
        })
    }
}

/// Normalizes a city: Meta/TikTok lowercase without whitespace, punctuation, symbols and digits
/// (`St. Louis` → `stlouis`); Google lowercase without punctuation, single spaces (`st louis`).
pub fn normalize_city(platform: Platform, raw: &str) -> Option<String> {
    city_checked(platform, raw).ok()
}

/// Normalizes a state, or says why it is left out.
pub(crate) fn state_checked(platform: Platform, raw: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    // As for cities: Google's rule, else Meta's (which maps state names to codes).
    if platform.is_google() {
        return lower_words(&cleaned);
    }
    match STATE_BY_NAME.get(&fold(&cleaned)) {
        Some(code) => Ok((*code).to_owned()),
        None => retain(&lower(&cleaned), |c| !is_separator_like(c)),
    }
}

/// Normalizes a state: Meta/TikTok map US state and Canadian province names to their codes, then
/// lowercase without whitespace and punctuation (`California` → `ca`, `N.Y.` → `ny`); Google
/// lowercase without punctuation, no name mapping.
pub fn normalize_state(platform: Platform, raw: &str) -> Option<String> {
    state_checked(platform, raw).ok()
}

/// Normalizes a postal code, or says why it is left out; `region` decides whether it is a US zip.
pub(crate) fn zip_checked(platform: Platform, raw: &str, region: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    if platform.is_google() {
        return Ok(cleaned.into_owned());
    }
    let compact = nfc(lower(&cleaned)
        .chars()
        .take_while(|c| *c != '-')
        .filter(|c| !c.is_whitespace())
        .collect());
    let zip: String = if region.eq_ignore_ascii_case("US") {
        compact.chars().take(5).collect()
    } else {
        compact
    };
    if zip.is_empty() {
        Err(EMPTY)
    } else if platform == Platform::Pinterest && !zip.bytes().all(|b| b.is_ascii_digit()) {
        // Pinterest takes "only digits"; stripping the letters of `SW1A 1AA` would hash a fragment.
        Err(NOT_NUMERIC_ZIP)
    } else {
        Ok(zip)
    }
}

/// Reason for a postal code with letters, for Pinterest (whose `zp` is digits only).
const NOT_NUMERIC_ZIP: Reason = "zip is not numeric";

/// Normalizes a postal code: Meta/TikTok lowercase, whitespace removed, cut at the first `-`, and the
/// first five characters for US rows (`94105-1234` → `94105`, `SW1A 1AA` → `sw1a1aa`); Google trimmed.
pub fn normalize_zip(platform: Platform, raw: &str, region: &str) -> Option<String> {
    zip_checked(platform, raw, region).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_cities_lose_spaces_punctuation_and_digits_but_keep_accents() {
        let cases = [
            ("San Francisco", "sanfrancisco"),
            ("St. Louis", "stlouis"),
            ("Saint-\u{c9}tienne", "saint\u{e9}tienne"),
            ("Saint-E\u{301}tienne", "saint\u{e9}tienne"),
            ("Paris 75001", "paris"),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                normalize_city(Platform::Meta, raw).as_deref(),
                Some(expected)
            );
        }
        assert_eq!(city_checked(Platform::Meta, "12345"), Err(EMPTY));
    }

    #[test]
    fn google_cities_keep_single_spaces() {
        assert_eq!(
            normalize_city(Platform::GoogleAds, "  St.  Louis ").as_deref(),
            Some("st louis")
        );
        assert_eq!(
            normalize_city(Platform::GoogleAds, "Saint-\u{c9}tienne").as_deref(),
            Some("saint\u{e9}tienne")
        );
    }

    #[test]
    fn state_names_map_to_codes_for_meta() {
        let cases = [
            ("California", "ca"),
            ("CA", "ca"),
            ("N.Y.", "ny"),
            ("new york", "ny"),
            ("Québec", "qc"),
            ("Quebec", "qc"),
            ("District of Columbia", "dc"),
            ("Bavaria", "bavaria"),
            ("Île-de-France", "îledefrance"),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                normalize_state(Platform::Meta, raw).as_deref(),
                Some(expected),
                "{raw}"
            );
        }
        assert_eq!(state_checked(Platform::Meta, " . "), Err(EMPTY));
    }

    #[test]
    fn google_states_are_not_mapped() {
        assert_eq!(
            normalize_state(Platform::GoogleAds, "California").as_deref(),
            Some("california")
        );
        assert_eq!(
            normalize_state(Platform::GoogleAds, "N.Y.").as_deref(),
            Some("ny")
        );
    }

    #[test]
    fn zips_follow_the_published_examples() {
        let cases = [
            (Platform::Meta, "94105-1234", "US", "94105"),
            (Platform::Meta, "941051234", "US", "94105"),
            (Platform::Meta, "SW1A 1AA", "GB", "sw1a1aa"),
            (Platform::Meta, " 02134 ", "US", "02134"),
            (Platform::Meta, "1234-567", "PT", "1234"),
            (Platform::GoogleAds, " 94105-1234 ", "US", "94105-1234"),
            (Platform::GoogleAds, "SW1A 1AA", "GB", "SW1A 1AA"),
        ];
        for (platform, raw, region, expected) in cases {
            assert_eq!(
                normalize_zip(platform, raw, region).as_deref(),
                Some(expected),
                "{platform:?} {raw:?} in {region}"
            );
        }
        assert_eq!(zip_checked(Platform::Meta, "-1234", "US"), Err(EMPTY));
        // Found by proptest: removing the space between "k" and U+0301 must re-compose them.
        assert_eq!(
            normalize_zip(Platform::Meta, "K \u{301}", "US").as_deref(),
            Some("\u{1e31}")
        );
    }
}

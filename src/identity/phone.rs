//! Phone normalization through libphonenumber's metadata (the `phonenumber` crate): E.164 per platform.

use phonenumber::{country, Mode, PhoneNumber};

use super::text::clean;
use super::{Reason, EMPTY};
use crate::config::Platform;

/// Reason for a number that does not parse or is not a valid number for its region.
const INVALID: Reason = "not a valid phone number for region";

/// Reason for a national number when neither the row nor the configuration gives a known region.
const NO_REGION: Reason = "national phone number without a known region";

/// The region to read national numbers in: `row_country` if the phone metadata knows it, else `default`.
pub fn phone_region<'a>(row_country: Option<&'a str>, default: &'a str) -> &'a str {
    match row_country {
        Some(code) if region_id(code).is_some() => code,
        _ => default,
    }
}

/// The phone-metadata id of an ISO alpha-2 region code (any case).
fn region_id(region: &str) -> Option<country::Id> {
    region.trim().to_ascii_uppercase().parse().ok()
}

/// Parses and validates a number; `+` or `00` makes it international, otherwise it is read in `region`.
fn parse(cleaned: &str, region: &str) -> Result<PhoneNumber, Reason> {
    let international = if let Some(rest) = cleaned.strip_prefix('+') {
        Some(format!("+{rest}"))
    } else {
        cleaned.strip_prefix("00").map(|rest| format!("+{rest}"))
    };
    let parsed = match international {
        // With a region given the crate applies that region's national prefix rules to a foreign
        // number (`+44 (0)20…` read with US keeps the 0), so international numbers get none.
        Some(number) => phonenumber::parse(None, number),
        None => phonenumber::parse(Some(region_id(region).ok_or(NO_REGION)?), cleaned),
    };
    let number = parsed.map_err(|_| INVALID)?;
    if phonenumber::is_valid(&number) {
        Ok(number)
    } else {
        Err(INVALID)
    }
}

/// Normalizes a phone number, or says why it is left out.
pub(crate) fn phone_checked(platform: Platform, raw: &str, region: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    let number = parse(&cleaned, region)?;
    let e164 = number.format().mode(Mode::E164).to_string();
    Ok(match platform {
        // Meta: the E.164 digits without `+`.
        Platform::Meta => e164.trim_start_matches('+').to_owned(),
        Platform::GoogleAds | Platform::Tiktok => e164,
    })
}

/// Normalizes a phone number to E.164: `+16505551212` for Google and TikTok, `16505551212` for Meta.
///
/// A number starting with `+` or `00` is international; any other is read in `region` (ISO alpha-2,
/// the row's country or the configured default). `None` when it is not a valid number.
pub fn normalize_phone(platform: Platform, raw: &str, region: &str) -> Option<String> {
    phone_checked(platform, raw, region).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_examples_give_e164_with_a_plus_for_google_and_tiktok() {
        let cases = [
            ("(650) 555-1212", "US", "+16505551212"),
            ("650.555.1212", "US", "+16505551212"),
            ("+44 (0)20 7946 0958", "US", "+442079460958"),
            ("0044 20 7946 0958", "US", "+442079460958"),
            ("020 7946 0958", "GB", "+442079460958"),
            ("+33 6 12 34 56 78", "US", "+33612345678"),
        ];
        for (raw, region, expected) in cases {
            for platform in [Platform::GoogleAds, Platform::Tiktok] {
                assert_eq!(
                    normalize_phone(platform, raw, region).as_deref(),
                    Some(expected),
                    "{raw:?}"
                );
            }
            assert_eq!(
                normalize_phone(Platform::Meta, raw, region).as_deref(),
                Some(&expected[1..]),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn a_national_number_that_is_invalid_in_its_region_is_left_out() {
        assert_eq!(
            phone_checked(Platform::Meta, "020 7946 0958", "US"),
            Err(INVALID)
        );
        assert_eq!(
            phone_checked(Platform::Meta, "555-1212", "US"),
            Err(INVALID)
        );
        assert_eq!(phone_checked(Platform::Meta, "123", "US"), Err(INVALID));
        assert_eq!(phone_checked(Platform::Meta, "call me", "US"), Err(INVALID));
        assert_eq!(phone_checked(Platform::Meta, "+", "US"), Err(INVALID));
        assert_eq!(phone_checked(Platform::Meta, "  ", "US"), Err(EMPTY));
    }

    #[test]
    fn region_codes_are_case_insensitive_and_unknown_ones_only_block_national_numbers() {
        assert_eq!(
            normalize_phone(Platform::GoogleAds, "030 12345678", "de").as_deref(),
            Some("+493012345678")
        );
        assert_eq!(
            phone_checked(Platform::GoogleAds, "(650) 555-1212", "ZZ"),
            Err(NO_REGION)
        );
        assert_eq!(
            phone_checked(Platform::GoogleAds, "(650) 555-1212", ""),
            Err(NO_REGION)
        );
        assert_eq!(
            normalize_phone(Platform::GoogleAds, "+1 650 555 1212", "ZZ").as_deref(),
            Some("+16505551212")
        );
    }

    #[test]
    fn phone_region_prefers_a_known_row_country() {
        assert_eq!(phone_region(Some("GB"), "US"), "GB");
        assert_eq!(phone_region(Some("XX"), "US"), "US");
        assert_eq!(phone_region(None, "US"), "US");
    }

    #[test]
    fn extensions_are_not_part_of_e164() {
        assert_eq!(
            normalize_phone(Platform::Tiktok, "+1 650 555 1212 ext. 12", "US").as_deref(),
            Some("+16505551212")
        );
    }
}

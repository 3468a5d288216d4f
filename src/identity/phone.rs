//! Phone normalization through libphonenumber's metadata (the `phonenumber` crate): E.164 per platform.

use std::sync::{Arc, OnceLock, RwLock};

use fnv::FnvHashMap;

use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
use phonenumber::{country, Mode, PhoneNumber, Type};

use super::text::clean;
use super::{Reason, EMPTY};
use crate::platform::Platform;

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

/// The number as the crate reads an international one (`+` first) when it starts with `+` or `00`.
fn international(cleaned: &str) -> Option<String> {
    international_rest(cleaned).map(|rest| format!("+{rest}"))
}

/// What follows the `+` or `00` of an international number.
fn international_rest(cleaned: &str) -> Option<&str> {
    cleaned
        .strip_prefix('+')
        .or_else(|| cleaned.strip_prefix("00"))
}

/// What [`parse`] and E.164 formatting answer for an international number written plainly, given
/// what follows its `+` (or `00`): ASCII digits and the separators space, `-`, `.`, `(` and `)`, with
/// at least one space unless it is digits only. `None` for any other shape, which takes the crate's
/// parser.
///
/// `phonenumber::parse(None, ..)` spends most of its time looking metadata patterns up in its shared
/// LRU cache (the region among those sharing a country code, national prefix rules). For this shape
/// its steps reduce to the ones below, done here on patterns compiled once. The shape is what keeps
/// the reduction exact: a space rules out the crate's RFC 3966 reading (which would take the digits
/// before the first separator as the country code), only separators and digits rule out letters,
/// extensions and second numbers, and a pure digit string is not RFC 3966 either.
fn plain_international_rest(rest: &str) -> Option<Result<String, Reason>> {
    let separator = |b: u8| matches!(b, b' ' | b'-' | b'.' | b'(' | b')');
    if !rest.bytes().all(|b| b.is_ascii_digit() || separator(b)) {
        return None;
    }
    if !rest.contains(' ') && !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = String::with_capacity(rest.len());
    digits.extend(rest.chars().filter(char::is_ascii_digit));
    Some(plain_international_digits(&digits))
}

/// [`plain_international_rest`] on the digits after the `+`.
fn plain_international_digits(digits: &str) -> Result<String, Reason> {
    // The crate's viability check needs three digits, its country code step more than two and no
    // leading zero.
    if digits.len() < 3 || digits.starts_with('0') {
        return Err(INVALID);
    }
    let database = &*DATABASE;
    let (code, code_len) = (1..=3)
        .find_map(|len| {
            let code: u16 = digits[..len].parse().ok()?;
            database.by_code(&code).is_some().then_some((code, len))
        })
        .ok_or(INVALID)?;
    let mut national = &digits[code_len..];
    let mut transformed = None;
    let without_zeros = national.trim_start_matches('0');
    let source = region_metadata_and_type(code, without_zeros);
    if let Some((meta, _)) = source {
        let mut potential = strip_national_prefix(meta, national, &mut transformed);
        if let Some(prefix) = meta.national_prefix() {
            potential = potential.strip_prefix(prefix).unwrap_or(potential);
        }
        if !is_too_short(meta, potential.len()) {
            national = potential;
        }
    }
    if !(2..=17).contains(&national.len()) {
        return Err(INVALID);
    }
    // `NationalNumber`: leading zeros counted apart, the rest a number below 2^56.
    let significant = national.trim_start_matches('0');
    match significant.parse::<u64>() {
        Ok(value) if value < 1 << 56 => {}
        _ => return Err(INVALID),
    }
    // The region depends only on the code and the text, so the one found above serves again when the
    // national part is that same text (the usual case: no prefix and no leading zero), and so does
    // its type check when choosing the region ran it.
    let found = if national == without_zeros {
        source
    } else {
        region_metadata_and_type(code, national)
    };
    let valid = found.is_some_and(|(meta, known)| known || has_known_type(meta, national));
    if valid {
        // `+`, the code as written (no leading zero), the national part.
        let mut e164 = String::with_capacity(1 + code_len + national.len());
        e164.push('+');
        e164.push_str(&digits[..code_len]);
        e164.push_str(national);
        Ok(e164)
    } else {
        Err(INVALID)
    }
}

/// The crate's `helper::national_number` on the national part (carrier codes are not kept):
/// the national prefix for parsing removed or transformed when the metadata says so.
fn strip_national_prefix<'a>(
    meta: &'static Metadata,
    national: &'a str,
    transformed: &'a mut Option<String>,
) -> &'a str {
    let Some(parsing) = meta.national_prefix_for_parsing() else {
        return match meta.national_prefix() {
            Some(prefix) => national.strip_prefix(prefix).unwrap_or(national),
            None => national,
        };
    };
    let parsing = compiled(parsing.as_str());
    let Some(found) = parsing.find(national) else {
        return national;
    };
    if found.start() != 0 {
        return national;
    }
    let general = meta.descriptors().general();
    let viable = descriptor_matches(general, national);
    let last_group = parsing
        .captures(national)
        .and_then(|c| c.get(c.len() - 1))
        .is_some();
    match meta.national_prefix_transform_rule() {
        Some(rule) if last_group => {
            let replaced = parsing.replace(national, rule).into_owned();
            if viable && !descriptor_matches(general, &replaced) {
                return national;
            }
            transformed.insert(replaced).as_str()
        }
        // The crate also compares with the text from the match start, which is 0 here: no change.
        _ => &national[found.end()..],
    }
}

/// `validator::length(meta, number, Type::Unknown) == Validation::TooShort` for a national part of
/// `len` digits.
fn is_too_short(meta: &'static Metadata, len: usize) -> bool {
    let general = meta.descriptors().general();
    let possible = general.possible_length();
    let len = len as u16;
    !possible.is_empty() && !general.possible_local_length().contains(&len) && len < possible[0]
}

/// Parses and validates a number; `+` or `00` makes it international, otherwise it is read in `region`.
fn parse(cleaned: &str, region: &str) -> Result<PhoneNumber, Reason> {
    let parsed = match international(cleaned) {
        // With a region given the crate applies that region's national prefix rules to a foreign
        // number (`+44 (0)20…` read with US keeps the 0), so international numbers get none.
        Some(number) => phonenumber::parse(None, number),
        None => phonenumber::parse(Some(region_id(region).ok_or(NO_REGION)?), cleaned),
    };
    let number = parsed.map_err(|_| INVALID)?;
    if is_valid(&number) {
        Ok(number)
    } else {
        Err(INVALID)
    }
}

/// The number types that make a number valid: `phonenumber::validator::number_type` answers one of
/// these exactly when the general descriptor and one of these descriptors match.
const VALID_TYPES: [Type; 10] = [
    Type::FixedLine,
    Type::Mobile,
    Type::TollFree,
    Type::PremiumRate,
    Type::SharedCost,
    Type::Voip,
    Type::PersonalNumber,
    Type::Pager,
    Type::Uan,
    Type::Voicemail,
];

/// The same answer as `phonenumber::is_valid`, with the metadata's patterns compiled once.
///
/// The crate looks every pattern up in a shared LRU cache keyed by the pattern text, hashing patterns
/// of up to a few kilobytes on each of the ~30 look-ups a number needs; that was most of capture's
/// CPU time. This follows the crate's `is_valid_with` step by step (region from the country code,
/// leading digits or number type for shared codes, then "has a known type") on the same metadata, with
/// the same regex engine and flags, and stops at the first type that matches.
fn is_valid(number: &PhoneNumber) -> bool {
    let national = number.national().to_string();
    let Some(meta) = region_metadata(number.code().value(), &national) else {
        return false;
    };
    has_known_type(meta, &national)
}

/// The metadata a number is validated against (the crate's `source_for`, then `by_id` / `by_code`).
fn region_metadata(code: u16, national: &str) -> Option<&'static Metadata> {
    region_metadata_and_type(code, national).map(|(meta, _)| meta)
}

/// [`region_metadata`], and whether choosing it already showed [`has_known_type`] to be true.
fn region_metadata_and_type(code: u16, national: &str) -> Option<(&'static Metadata, bool)> {
    let database = &*DATABASE;
    let regions = database.region(&code)?;
    if regions.len() == 1 {
        let meta = if regions[0] == "001" {
            database.by_code(&code)?.into_iter().next()
        } else {
            // The crate goes through `country::Id`, which knows every region of its own metadata.
            regions[0].parse::<country::Id>().ok()?;
            database.by_id(regions[0])
        };
        return meta.map(|meta| (meta, false));
    }
    regions.into_iter().find_map(|region| {
        let meta = database.by_id(region)?;
        match meta.leading_digits() {
            Some(pattern) => compiled(pattern.as_str())
                .find(national)
                .is_some_and(|m| m.start() == 0)
                .then_some((meta, false)),
            None => has_known_type(meta, national).then_some((meta, true)),
        }
    })
}

/// True when `phonenumber::validator::number_type` would not answer `Unknown`.
fn has_known_type(meta: &'static Metadata, national: &str) -> bool {
    let descriptors = meta.descriptors();
    descriptor_matches(descriptors.general(), national)
        && VALID_TYPES.iter().any(|kind| {
            descriptors
                .get(*kind)
                .is_some_and(|d| descriptor_matches(d, national))
        })
}

/// `Descriptor::is_match`, with the pattern compiled once.
fn descriptor_matches(descriptor: &'static Descriptor, national: &str) -> bool {
    let lengths = descriptor.possible_length();
    if !lengths.is_empty() && !lengths.contains(&(national.len() as u16)) {
        return false;
    }
    compiled(descriptor.national_number().as_str())
        .find(national)
        .is_some_and(|m| m.start() == 0)
}

/// The metadata pattern `source`, compiled as the crate compiles it (whitespace ignored), once per
/// process. Patterns live in the static metadata, so their address identifies them.
fn compiled(source: &'static str) -> Arc<regex::Regex> {
    static CACHE: OnceLock<RwLock<FnvHashMap<usize, Arc<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = source.as_ptr() as usize;
    if let Some(regex) = cache
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key)
    {
        return regex.clone();
    }
    let regex = Arc::new(
        regex::RegexBuilder::new(source)
            .ignore_whitespace(true)
            .build()
            // The crate compiled the same text with the same flags when it loaded its metadata.
            .expect("phone metadata patterns compile"),
    );
    cache
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(key)
        .or_insert(regex)
        .clone()
}

/// Normalizes a phone number, or says why it is left out.
pub(crate) fn phone_checked(platform: Platform, raw: &str, region: &str) -> Result<String, Reason> {
    phone_e164(raw, region).map(|e164| for_platform(platform, &e164))
}

/// The number in E.164 with its `+`, or why it is left out.
pub(crate) fn phone_e164(raw: &str, region: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    if let Some(e164) = international_rest(&cleaned).and_then(plain_international_rest) {
        return e164;
    }
    let number = parse(&cleaned, region)?;
    Ok(number.format().mode(Mode::E164).to_string())
}

/// E.164 as a platform takes it: Meta, Snapchat and Pinterest without the `+`; Google, TikTok and
/// Microsoft with it.
pub(crate) fn for_platform(platform: Platform, e164: &str) -> String {
    platform_form(platform, e164).to_owned()
}

/// [`for_platform`] without the copy.
pub(crate) fn platform_form(platform: Platform, e164: &str) -> &str {
    match platform {
        Platform::Meta | Platform::Snapchat | Platform::Pinterest => e164.trim_start_matches('+'),
        // LinkedIn takes no phone; with the `+` is the rule that would apply.
        Platform::GoogleAds
        | Platform::GoogleDataManager
        | Platform::Tiktok
        | Platform::MicrosoftAds
        | Platform::Outbrain
        | Platform::Taboola
        | Platform::Linkedin
        | Platform::Reddit => e164,
    }
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

    /// Every example number of the metadata, and near misses of each, parsed internationally and in
    /// their region: the compiled-once validator gives the crate's own answer for every one.
    #[test]
    fn the_fast_validator_agrees_with_the_crate_on_every_metadata_example_and_near_miss() {
        let mut checked = 0;
        let mut valid = 0;
        for meta in DATABASE.iter() {
            let code = meta.country_code();
            let region: Option<country::Id> = meta.id().parse().ok();
            for kind in VALID_TYPES.iter().copied().chain([Type::Unknown]) {
                let Some(example) = meta.descriptors().get(kind).and_then(|d| d.example()) else {
                    continue;
                };
                let mut variants = vec![example.to_string()];
                let last = example
                    .chars()
                    .last()
                    .and_then(|c| c.to_digit(10))
                    .unwrap_or(0);
                variants.push(format!(
                    "{}{}",
                    &example[..example.len() - 1],
                    (last + 1) % 10
                ));
                variants.push(format!("{example}7"));
                variants.push(example[..example.len().saturating_sub(1)].to_string());
                variants.push(format!("9{example}"));
                for variant in variants {
                    let mut inputs = vec![(None, format!("+{code}{variant}"))];
                    if let Some(region) = region {
                        inputs.push((Some(region), variant.clone()));
                    }
                    for (region, text) in inputs {
                        let Ok(number) = phonenumber::parse(region, &text) else {
                            continue;
                        };
                        let expected = phonenumber::is_valid(&number);
                        assert_eq!(is_valid(&number), expected, "{text} ({region:?})");
                        checked += 1;
                        valid += usize::from(expected);
                    }
                }
            }
        }
        // Both answers occur often, so agreement is not trivial.
        assert!(
            checked > 2_000 && valid > 500 && checked - valid > 500,
            "{checked} {valid}"
        );
    }

    /// The shortcut on a whole `+…` number.
    fn plain_international(number: &str) -> Option<Result<String, Reason>> {
        plain_international_rest(number.strip_prefix('+')?)
    }

    /// What the crate's own parser, validator and formatter answer for an international number.
    fn crate_e164(number: &str) -> Result<String, Reason> {
        let parsed = phonenumber::parse(None, number).map_err(|_| INVALID)?;
        if phonenumber::is_valid(&parsed) {
            Ok(parsed.format().mode(Mode::E164).to_string())
        } else {
            Err(INVALID)
        }
    }

    /// Every example number of the metadata and near misses of each (a digit changed, added or
    /// removed, a national prefix or a zero in front), written with the separators the shortcut
    /// takes: the shortcut answers exactly as the crate for every one.
    #[test]
    fn plain_international_numbers_get_the_crates_answer_on_every_metadata_example() {
        let mut checked = 0;
        let mut valid = 0;
        for meta in DATABASE.iter() {
            let code = meta.country_code();
            let prefix = meta.national_prefix().unwrap_or("0").to_string();
            for kind in VALID_TYPES.iter().copied().chain([Type::Unknown]) {
                let Some(example) = meta.descriptors().get(kind).and_then(|d| d.example()) else {
                    continue;
                };
                let last = example
                    .chars()
                    .last()
                    .and_then(|c| c.to_digit(10))
                    .unwrap_or(0);
                let variants = [
                    example.to_string(),
                    format!("{}{}", &example[..example.len() - 1], (last + 1) % 10),
                    format!("{example}7"),
                    example[..example.len().saturating_sub(1)].to_string(),
                    format!("9{example}"),
                    format!("{prefix}{example}"),
                    format!("0{example}"),
                    format!("({prefix}){example}"),
                ];
                for variant in variants {
                    let (head, tail) = variant.split_at(variant.len().min(3));
                    let texts = [
                        format!("+{code}{variant}"),
                        format!("+{code} {variant}"),
                        format!("+{code} {head} {tail}"),
                        format!("+({code}) {head}-{tail}."),
                        format!("+ {code} {head}.{tail}"),
                    ];
                    for text in texts {
                        let Some(fast) = plain_international(&text) else {
                            // Only the variant with parentheses around a prefix and no space may
                            // fall back.
                            assert!(!text.contains(' '), "{text}");
                            continue;
                        };
                        let expected = crate_e164(&text);
                        assert_eq!(fast, expected, "{text}");
                        checked += 1;
                        valid += usize::from(expected.is_ok());
                    }
                }
            }
        }
        assert!(
            checked > 10_000 && valid > 3_000 && checked - valid > 3_000,
            "{checked} {valid}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Any text of the shortcut's alphabet: the shortcut either declines or answers as the crate.
        #[test]
        fn plain_international_agrees_with_the_crate_on_any_text(
            text in "\\+[0-9 ().-]{0,20}",
        ) {
            if let Some(fast) = plain_international(&text) {
                proptest::prop_assert_eq!(fast, crate_e164(&text), "{}", text);
            }
        }

        /// Digit strings after a real country code, spaced or not.
        #[test]
        fn plain_international_agrees_with_the_crate_after_a_country_code(
            index in 0usize..1_000,
            national in "[0-9]{0,16}",
            space in proptest::bool::ANY,
        ) {
            let codes: Vec<u16> = DATABASE.iter().map(|m| m.country_code()).collect();
            let code = codes[index % codes.len()];
            let text = if space { format!("+{code} {national}") } else { format!("+{code}{national}") };
            let fast = plain_international(&text).expect("the shape the shortcut takes");
            proptest::prop_assert_eq!(fast, crate_e164(&text), "{}", text);
        }
    }

    #[test]
    fn extensions_are_not_part_of_e164() {
        assert_eq!(
            normalize_phone(Platform::Tiktok, "+1 650 555 1212 ext. 12", "US").as_deref(),
            Some("+16505551212")
        );
    }
}

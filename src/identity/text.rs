//! Text steps shared by all fields (format characters, NFKC/NFC, trim, case, Unicode categories) and
//! the name normalizer.

use std::borrow::Cow;

use unicode_normalization::{is_nfc_quick, is_nfkc_quick, IsNormalized, UnicodeNormalization};
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

use super::{Reason, EMPTY};
use crate::platform::Platform;

/// The first step of every normalized value: invisible format characters (Unicode category Cf:
/// zero-width space and joiners, bidi marks and isolates, soft hyphen, BOM, ...) removed, compatibility
/// forms folded (NFKC: fullwidth `Ｐａｔ` → `Pat`, ligature `ﬁ` → `fi`, no-break space → space), then
/// surrounding whitespace trimmed; `None` when nothing is left.
///
/// ASCII has no format characters and is its own NFKC, so for ASCII text this borrows the trimmed part
/// and does no other work; other text is borrowed too when a scan finds nothing to remove or fold.
pub(crate) fn clean(raw: &str) -> Option<Cow<'_, str>> {
    if raw.is_ascii() {
        return non_empty(raw.trim()).map(Cow::Borrowed);
    }
    clean_unicode(raw)
}

/// [`clean`] without the ASCII shortcut; borrows when nothing but trimming is needed.
fn clean_unicode(raw: &str) -> Option<Cow<'_, str>> {
    let has_format = raw.chars().any(is_format);
    if !has_format && is_nfkc_quick(raw.chars()) == IsNormalized::Yes {
        return non_empty(raw.trim()).map(Cow::Borrowed);
    }
    // Removed before composing: a format character between a letter and its accent kept them apart.
    let folded: String = raw.chars().filter(|c| !is_format(*c)).nfkc().collect();
    non_empty(folded.trim()).map(|trimmed| Cow::Owned(trimmed.to_owned()))
}

/// For values sent exactly as stored (click ids, cookies, user agent): Unicode NFC and trim only, so
/// nothing but encoding and surrounding whitespace is changed; `None` when nothing is left.
pub(crate) fn clean_as_stored(raw: &str) -> Option<Cow<'_, str>> {
    if raw.is_ascii() || is_nfc_quick(raw.chars()) == IsNormalized::Yes {
        return non_empty(raw.trim()).map(Cow::Borrowed);
    }
    let composed: String = raw.nfc().collect();
    non_empty(composed.trim()).map(|trimmed| Cow::Owned(trimmed.to_owned()))
}

/// `None` for an empty string.
fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

/// True for an invisible format character (general category Cf), e.g. U+200B, U+202E, U+FEFF, U+00AD.
pub(crate) fn is_format(c: char) -> bool {
    !c.is_ascii() && c.general_category() == GeneralCategory::Format
}

/// NFC of a string, skipping the work when a quick check says it is already NFC (the common case).
pub(crate) fn nfc(value: String) -> String {
    if value.is_ascii() || is_nfc_quick(value.chars()) == IsNormalized::Yes {
        value
    } else {
        value.nfc().collect()
    }
}

/// Unicode lowercase, re-composed: lowercasing and removing characters can leave decomposed sequences.
pub(crate) fn lower(value: &str) -> String {
    if value.is_ascii() {
        // Unicode lowercasing of ASCII is ASCII lowercasing, and ASCII is NFC.
        return value.to_ascii_lowercase();
    }
    nfc(value.to_lowercase())
}

/// True for Unicode punctuation (P*) and symbols (S*).
pub(crate) fn is_punct_or_symbol(c: char) -> bool {
    if c.is_ascii() {
        // The ASCII punctuation characters are exactly the ASCII ones in P* or S*.
        return c.is_ascii_punctuation();
    }
    is_punct_or_symbol_by_category(c)
}

/// [`is_punct_or_symbol`] from the Unicode general category, for every character.
fn is_punct_or_symbol_by_category(c: char) -> bool {
    matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Punctuation | GeneralCategoryGroup::Symbol
    )
}

/// True for characters that a "letters only" rule removes: whitespace, P*, S* and control characters.
pub(crate) fn is_separator_like(c: char) -> bool {
    c.is_whitespace() || c.is_control() || is_punct_or_symbol(c)
}

/// Keeps the characters `keep` accepts, re-composes, and turns an empty result into `EMPTY`.
pub(crate) fn retain(value: &str, keep: impl Fn(char) -> bool) -> Result<String, Reason> {
    let mut kept = String::with_capacity(value.len());
    kept.extend(value.chars().filter(|c| keep(*c)));
    let kept = nfc(kept);
    if kept.is_empty() {
        Err(EMPTY)
    } else {
        Ok(kept)
    }
}

/// Lowercase, punctuation and symbols removed, whitespace runs collapsed to one space (Google style).
pub(crate) fn lower_words(value: &str) -> Result<String, Reason> {
    let lowered = lower(value);
    let stripped: String = lowered
        .chars()
        .filter(|c| !is_punct_or_symbol(*c) && !c.is_control())
        .collect();
    let words = stripped.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.is_empty() {
        Err(EMPTY)
    } else {
        Ok(nfc(words))
    }
}

/// A key for table look-ups: accents removed, lowercase, `&` read as "and", letters and digits only.
///
/// `"Québec"`, `"QUEBEC"` and `"quebec"` all give `"quebec"`; `"U.K."` gives `"uk"`.
pub(crate) fn fold(value: &str) -> String {
    if value.is_ascii() {
        // For ASCII, NFD and the mark filter change nothing and lowercasing is ASCII lowercasing.
        let mut out = String::with_capacity(value.len());
        for b in value.bytes() {
            if b == b'&' {
                out.push_str("and");
            } else if b.is_ascii_alphanumeric() {
                out.push(char::from(b.to_ascii_lowercase()));
            }
        }
        return out;
    }
    fold_unicode(value)
}

/// [`fold`] without the ASCII shortcut; compatibility forms fold too (`ＵＳ` → `us`).
fn fold_unicode(value: &str) -> String {
    value
        .replace('&', " and ")
        .nfkd()
        .filter(|c| c.general_category_group() != GeneralCategoryGroup::Mark)
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Normalizes a first or last name, or says why it is left out.
pub(crate) fn name_checked(platform: Platform, raw: &str) -> Result<String, Reason> {
    let cleaned = clean(raw).ok_or(EMPTY)?;
    match platform {
        // Google: lowercase and trim only; inner punctuation is kept (§2.5).
        Platform::GoogleAds | Platform::GoogleDataManager => Ok(lower(&cleaned)),
        // LinkedIn takes names in clear in `userInfo`: cleaned, otherwise as written.
        Platform::Linkedin => Ok(cleaned.into_owned()),
        // Meta and TikTok: letters (and digits) only.
        Platform::Meta
        | Platform::Tiktok
        | Platform::MicrosoftAds
        | Platform::Outbrain
        | Platform::Taboola
        | Platform::Reddit
        | Platform::Snapchat
        | Platform::Pinterest => retain(&lower(&cleaned), |c| !is_separator_like(c)),
    }
}

/// Normalizes a first or last name: Meta/TikTok lowercase without whitespace, punctuation and symbols
/// (`"O'Brien"` → `"obrien"`); Google lowercase and trimmed (`"Mary-Jane"` → `"mary-jane"`).
pub fn normalize_name(platform: Platform, raw: &str) -> Option<String> {
    name_checked(platform, raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_composes_trims_and_empties() {
        assert_eq!(clean("  Jose\u{301} ").as_deref(), Some("Jos\u{e9}"));
        assert_eq!(clean(" \t\n "), None);
        assert_eq!(clean(""), None);
    }

    #[test]
    fn names_follow_the_published_examples() {
        for platform in [Platform::Meta, Platform::Tiktok] {
            assert_eq!(
                normalize_name(platform, "  Mary-Jane ").as_deref(),
                Some("maryjane")
            );
            assert_eq!(
                normalize_name(platform, "O'Brien").as_deref(),
                Some("obrien")
            );
            assert_eq!(
                normalize_name(platform, "Jos\u{e9}").as_deref(),
                Some("jos\u{e9}")
            );
            assert_eq!(
                normalize_name(platform, "Jose\u{301}").as_deref(),
                Some("jos\u{e9}")
            );
        }
        assert_eq!(
            normalize_name(Platform::GoogleAds, "Mary-Jane").as_deref(),
            Some("mary-jane")
        );
        assert_eq!(
            normalize_name(Platform::GoogleAds, "Jose\u{301}").as_deref(),
            Some("jos\u{e9}")
        );
    }

    #[test]
    fn names_of_only_punctuation_are_left_out() {
        assert_eq!(name_checked(Platform::Meta, " -.' "), Err(EMPTY));
        assert_eq!(name_checked(Platform::Meta, "   "), Err(EMPTY));
        assert_eq!(name_checked(Platform::GoogleAds, "   "), Err(EMPTY));
    }

    #[test]
    fn names_keep_non_latin_letters() {
        assert_eq!(
            normalize_name(Platform::Meta, "Zoë Ångström").as_deref(),
            Some("zoëångström")
        );
        assert_eq!(
            normalize_name(Platform::Meta, "Владимир").as_deref(),
            Some("владимир")
        );
        assert_eq!(
            normalize_name(Platform::Meta, "山田 太郎").as_deref(),
            Some("山田太郎")
        );
    }

    #[test]
    fn fold_removes_accents_case_and_punctuation() {
        assert_eq!(fold("Québec"), "quebec");
        assert_eq!(fold("U.K."), "uk");
        assert_eq!(fold("Bosnia & Herzegovina"), "bosniaandherzegovina");
        assert_eq!(fold("Côte d'Ivoire"), "cotedivoire");
        assert_eq!(fold("Trinidad & Tobago"), "trinidadandtobago");
    }

    #[test]
    fn the_ascii_punctuation_shortcut_answers_as_the_general_category() {
        for c in (0u8..=127).map(char::from) {
            assert_eq!(
                is_punct_or_symbol(c),
                is_punct_or_symbol_by_category(c),
                "{c:?}"
            );
        }
    }

    #[test]
    fn lower_of_ascii_is_unicode_lowercase() {
        let all: String = (0u8..=127).map(char::from).collect();
        assert_eq!(lower(&all), nfc(all.to_lowercase()));
    }

    proptest::proptest! {
        #[test]
        fn the_ascii_shortcuts_answer_as_the_unicode_paths(value in "[ -~\t\n]{0,24}") {
            proptest::prop_assert_eq!(fold(&value), fold_unicode(&value));
            proptest::prop_assert_eq!(
                clean(&value).map(Cow::into_owned),
                clean_unicode(&value).map(Cow::into_owned)
            );
        }
    }
}

//! Email normalization: lowercase, a strict shape check, Google's gmail rule and Reddit's all-domain rule.

use super::text::{clean, lower, nfc};
use super::{Reason, EMPTY};
use crate::platform::Platform;

/// Reason for an address that is not `local@domain.tld` (no empty domain label) without whitespace.
const INVALID: Reason = "invalid email";

/// Reason for a gmail address whose local part is empty once Google's rule has run (`+tag@gmail.com`).
const EMPTY_GMAIL: Reason = "invalid email: empty gmail local part";

/// Reason for an address whose local part is empty once Reddit's rule has run (`+tag@example.com`).
const EMPTY_LOCAL: Reason = "invalid email: empty local part without dots and +tag";

/// Normalizes an email, or says why it is left out.
pub(crate) fn email_checked(platform: Platform, raw: &str) -> Result<String, Reason> {
    let email = lower(&clean(raw).ok_or(EMPTY)?);
    if email.chars().any(char::is_whitespace) {
        return Err(INVALID);
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(INVALID);
    };
    // A domain is two or more non-empty labels ("a@b", "a@b.", "a@.com" and "a@b..com" are not).
    let domain_ok = domain.contains('.') && domain.split('.').all(|label| !label.is_empty());
    if local.is_empty() || !domain_ok {
        return Err(INVALID);
    }
    let gmail = matches!(domain, "gmail.com" | "googlemail.com");
    if platform == Platform::Reddit || (platform.is_google() && gmail) {
        // Google for gmail (which ignores both itself), Reddit for every domain: drop a +tag,
        // then every dot.
        let untagged = local.split('+').next().unwrap_or_default();
        // Re-composed: a dot between a letter and a combining accent kept them apart.
        let local = nfc(untagged.chars().filter(|c| *c != '.').collect());
        if local.is_empty() {
            return Err(if gmail { EMPTY_GMAIL } else { EMPTY_LOCAL });
        }
        return Ok(format!("{local}@{domain}"));
    }
    Ok(email)
}

/// Normalizes an email: format characters removed, NFKC, trim, lowercase; `None` unless it has exactly
/// one `@`, a non-empty local part, a domain of two or more non-empty labels and no whitespace. For
/// Google, gmail.com/googlemail.com addresses also lose their `+tag` and dots
/// (`John.Doe+promo@Gmail.com` → `johndoe@gmail.com`); for Reddit every address does.
pub fn normalize_email(platform: Platform, raw: &str) -> Option<String> {
    email_checked(platform, raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Platform; 3] = [Platform::Meta, Platform::GoogleAds, Platform::Tiktok];

    #[test]
    fn emails_are_trimmed_and_lowercased_for_every_platform() {
        for platform in ALL {
            assert_eq!(
                normalize_email(platform, "  John.Doe@Example.COM ").as_deref(),
                Some("john.doe@example.com")
            );
        }
    }

    #[test]
    fn gmail_dots_and_tags_are_removed_for_google_only() {
        let raw = "John.Doe+promo@Gmail.com";
        assert_eq!(
            normalize_email(Platform::Meta, raw).as_deref(),
            Some("john.doe+promo@gmail.com")
        );
        assert_eq!(
            normalize_email(Platform::Tiktok, raw).as_deref(),
            Some("john.doe+promo@gmail.com")
        );
        assert_eq!(
            normalize_email(Platform::GoogleAds, raw).as_deref(),
            Some("johndoe@gmail.com")
        );
        assert_eq!(
            normalize_email(Platform::GoogleAds, "j.o.h.n.d.o.e@googlemail.com").as_deref(),
            Some("johndoe@googlemail.com")
        );
        assert_eq!(
            normalize_email(Platform::GoogleAds, "user.name+NYC@Example.com").as_deref(),
            Some("user.name+nyc@example.com")
        );
    }

    #[test]
    fn a_gmail_address_of_only_a_tag_is_left_out_for_google() {
        assert_eq!(
            email_checked(Platform::GoogleAds, "+tag@gmail.com"),
            Err(EMPTY_GMAIL)
        );
        assert_eq!(
            email_checked(Platform::GoogleAds, "...@gmail.com"),
            Err(EMPTY_GMAIL)
        );
        assert_eq!(
            normalize_email(Platform::Meta, "+tag@gmail.com").as_deref(),
            Some("+tag@gmail.com")
        );
    }

    #[test]
    fn malformed_emails_are_left_out() {
        for raw in [
            "john doe@example.com",
            "not-an-email",
            "a@b@example.com",
            "@example.com",
            "john@localhost",
            "john@.com",
            "john@example.",
            "a@b..com",
            "a@.com",
            "a@com.",
            "a@b.com.",
            "a@.b.com",
            "john@exam\u{a0}ple.com",
        ] {
            for platform in ALL {
                assert_eq!(email_checked(platform, raw), Err(INVALID), "{raw:?}");
            }
        }
        assert_eq!(email_checked(Platform::Meta, "   "), Err(EMPTY));
    }

    #[test]
    fn reddit_removes_dots_and_tags_for_every_domain() {
        for (raw, want) in [
            ("John.Doe+promo@Example.com", "johndoe@example.com"),
            ("John.Doe+promo@Gmail.com", "johndoe@gmail.com"),
            ("Al.ice+Apple@Example.Com", "alice@example.com"),
            ("a.b+c+d@sub.example.org", "ab@sub.example.org"),
        ] {
            assert_eq!(
                normalize_email(Platform::Reddit, raw).as_deref(),
                Some(want)
            );
        }
        assert_eq!(
            email_checked(Platform::Reddit, "+tag@example.com"),
            Err(EMPTY_LOCAL)
        );
        assert_eq!(
            email_checked(Platform::Reddit, ".+x@gmail.com"),
            Err(EMPTY_GMAIL)
        );
        // LinkedIn keeps the address as written, lowercased.
        assert_eq!(
            normalize_email(Platform::Linkedin, " John.Doe+promo@Example.com ").as_deref(),
            Some("john.doe+promo@example.com")
        );
    }

    #[test]
    fn removing_gmail_dots_recomposes_accents() {
        // Found by proptest: the dot kept "a" and U+0301 apart, so removing it must re-compose.
        assert_eq!(
            normalize_email(Platform::GoogleAds, "a.\u{301}@gmail.com").as_deref(),
            Some("\u{e1}@gmail.com")
        );
    }

    #[test]
    fn decomposed_unicode_in_emails_is_composed() {
        assert_eq!(
            normalize_email(Platform::Meta, "Jose\u{301}@example.com").as_deref(),
            Some("jos\u{e9}@example.com")
        );
    }
}

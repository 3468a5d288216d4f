//! Per-platform normalization and SHA-256 hashing of match keys (rules: `normalization.md`).
//!
//! Raw identifiers arrive as a [`RawIdentity`] that lives only in memory. [`match_keys`] turns it into
//! the [`MatchKeys`] one platform accepts: normalized, and hashed where the platform requires, so that
//! what is stored in the control table and sent is never the raw value of an email, phone, name or
//! address. A present value that cannot be normalized is left out and reported as [`Dropped`], with a
//! reason but never the value.
//!
//! Which keys each platform takes (`platforms.md` §1.5, §2.1, §2.3, §3, §8):
//!
//! | platform | hashed | sent as stored |
//! |---|---|---|
//! | Meta | email, phone, first/last name, city, state, zip, country, external_id, date_of_birth, gender | client_ip, user_agent, fbc, fbp, lead_id |
//! | Google Ads | email, phone | gclid, gbraid, wbraid |
//! | TikTok | email, phone, external_id | client_ip, user_agent, ttclid, ttp, lead_id |
//! | Google Data Manager | email, phone, first/last name | zip, country (address), client_ip, user_agent, gclid, gbraid, wbraid |
//! | Microsoft Advertising | email, phone | msclkid |
//! | Outbrain | — | ob_click_id |
//! | Taboola | — | taboola_click_id |
//! | LinkedIn | email | first/last name (`userInfo`, both or neither), li_fat_id |
//! | Reddit | email, phone, external_id | client_ip, user_agent, rdt_cid |
//! | Snapchat | email, phone, first/last name, city, state, zip, country, gender | client_ip, user_agent, sc_click_id |
//! | Pinterest | email, phone, first/last name, city, state, zip, country, external_id, date_of_birth, gender | client_ip, user_agent, epik |
//!
//! Microsoft's `microsoft` profile: email trimmed and lowercased, phone E.164 with its `+`, then
//! SHA-256 (`HashedEmailAddress`, `HashedPhoneNumber`). Microsoft publishes no finer rule
//! (platforms-next.md §1.5, §8.2). The msclkid is stored as the bare 32-hex GUID: a `_uet` cookie
//! prefix and a `-0`/`-1` session suffix are removed.
//!
//! Outbrain and Taboola take no hashed identifier at all: a conversion is matched by the click id
//! their landing-page URL carried, sent as stored (so no normalization profile applies to them). The
//! Outbrain click id (`ob_click_id`, from the `{{OutbrainClickId}}` macro) has no published format:
//! trimmed, it must hold no whitespace. The Taboola click id (`taboola_click_id`, the `click-id` of
//! the S2S API) is "a case-sensitive string of 66 characters or more" (Taboola's postback page, whose
//! sample is URL-safe base64): pgcapi keeps it when it is 66–1,024 characters of `A–Z a–z 0–9 - _`,
//! because Taboola's bulk endpoint drops an unparsable one silently.
//! LinkedIn's profile (platforms-next.md §4, §8.2): email trimmed and lowercased, then SHA-256
//! (`SHA256_EMAIL`); no phone key. Names go in `userInfo` in clear — LinkedIn takes no hashed names —
//! cleaned (NFC, trimmed) but otherwise as written, and only as a pair: the destination sends both or
//! neither (a lone name is a 422 since version 202607). The `li_fat_id` (first-party ads tracking
//! UUID) is sent as stored.
//!
//! Reddit's profile (§5, §8.2): email lowercased, then for **every** domain the local part loses
//! everything from its first `+` and every `.` (`John.Doe+promo@Example.com` → `johndoe@example.com`);
//! phone E.164 **with** `+`; external id as for every platform; all three SHA-256. Reddit also takes
//! IP and user agent hashed, but normalization.md keeps them as stored for every platform, which
//! Reddit accepts. The `rdt_cid` click id is sent as stored.
//! Snapchat and Pinterest use Meta's rules (`snap/pinterest` profile, platforms-next.md §8.2): email
//! trimmed and lowercased; phone as the E.164 digits without `+` (so no `00` prefix and no national
//! trunk `0`); names, city and state as Meta's. Pinterest's zip is "only digits": a postcode that
//! has letters once Meta's zip rule has run is left out rather than hashed as a fragment.
//!
//! Google Ads click uploads accept only `hashed_email` and `hashed_phone_number` as user identifiers
//! (§2.1); names and address parts are accepted only by ENHANCEMENT adjustments (§2.3), which pgcapi does
//! not send, and `user_ip_address` is allow-listed. So they are not produced for Google Ads, which also
//! keeps unhashed city, state, zip and country out of the control table. The Google normalizers for those
//! fields still exist ([`normalize_city`] and friends) for a future enhancement path. TikTok's hashed
//! names/zip and plain city/state/country are only documented by third parties (§3), so they are left out.

mod address;
mod click;
mod country;
mod email;
mod key;
mod person;
mod phone;
mod text;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::platform::Platform;

pub use address::{normalize_city, normalize_state, normalize_zip};
pub use click::{
    fbc_from_fbclid, normalize_click_id, normalize_client_ip, normalize_fbc, normalize_msclkid,
};
pub use country::{country_code, normalize_country};
pub use email::normalize_email;
pub use key::{accepted_keys, no_keys_reason, MatchKey};
pub use person::{normalize_date_of_birth, normalize_external_id, normalize_gender};
pub use phone::{normalize_phone, phone_region};
pub use text::normalize_name;

/// Raw identifiers of one event as read from the row; lives only in memory.
///
/// `Debug` is written by hand and prints only which fields are present, never a value, so that a stray
/// `{:?}` in a log line cannot leak personal data.
#[derive(Default, Clone)]
pub struct RawIdentity {
    /// Email address.
    pub email: Option<String>,
    /// Phone number in any format; national numbers are read in the row's country or the default region.
    pub phone: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// City.
    pub city: Option<String>,
    /// State, province or region (name or code).
    pub state: Option<String>,
    /// Postal code.
    pub zip: Option<String>,
    /// Country as alpha-2, alpha-3 or English name; also the region for phones, zips and dates.
    pub country: Option<String>,
    /// The advertiser's own stable customer id.
    pub external_id: Option<String>,
    /// Date of birth as text (`YYYY-MM-DD`, `YYYYMMDD`, `MM/DD/YYYY` in US rows, ...).
    pub date_of_birth: Option<String>,
    /// Gender word or letter.
    pub gender: Option<String>,
    /// Client IP address (IPv4 or IPv6).
    pub client_ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Meta click cookie `fb.<n>.<ms>.<fbclid>`.
    pub fbc: Option<String>,
    /// Bare Meta click id from a landing URL; builds `fbc` when no valid `fbc` is present.
    pub fbclid: Option<String>,
    /// Meta browser cookie `_fbp`.
    pub fbp: Option<String>,
    /// Google click id.
    pub gclid: Option<String>,
    /// Google app-to-web click id (iOS).
    pub gbraid: Option<String>,
    /// Google web-to-app click id (iOS).
    pub wbraid: Option<String>,
    /// TikTok click id.
    pub ttclid: Option<String>,
    /// TikTok browser cookie `_ttp`.
    pub ttp: Option<String>,
    /// Microsoft click id.
    pub msclkid: Option<String>,
    /// Outbrain click id.
    pub ob_click_id: Option<String>,
    /// Taboola click id.
    pub taboola_click_id: Option<String>,
    /// LinkedIn first-party ads tracking UUID (`li_fat_id` URL parameter / cookie).
    pub li_fat_id: Option<String>,
    /// Reddit click id (`rdt_cid` URL parameter).
    pub rdt_cid: Option<String>,
    /// Snapchat click id (the `ScCid` landing-page parameter).
    pub sc_click_id: Option<String>,
    /// Pinterest click id (the `_epik` cookie or `epik` landing-page parameter).
    pub epik: Option<String>,
    /// Platform lead id (Meta lead ads, TikTok CRM).
    pub lead_id: Option<String>,
    /// When the ad was clicked; used as the `fbc` creation time when building it from `fbclid`.
    pub click_time: Option<DateTime<Utc>>,
}

impl RawIdentity {
    /// The raw text of one match key, if present (`Fbc` is the `fbc` column only, not `fbclid`).
    pub fn get(&self, key: MatchKey) -> Option<&str> {
        let value = match key {
            MatchKey::Email => &self.email,
            MatchKey::Phone => &self.phone,
            MatchKey::FirstName => &self.first_name,
            MatchKey::LastName => &self.last_name,
            MatchKey::City => &self.city,
            MatchKey::State => &self.state,
            MatchKey::Zip => &self.zip,
            MatchKey::Country => &self.country,
            MatchKey::ExternalId => &self.external_id,
            MatchKey::DateOfBirth => &self.date_of_birth,
            MatchKey::Gender => &self.gender,
            MatchKey::ClientIp => &self.client_ip,
            MatchKey::UserAgent => &self.user_agent,
            MatchKey::Fbc => &self.fbc,
            MatchKey::Fbp => &self.fbp,
            MatchKey::Gclid => &self.gclid,
            MatchKey::Gbraid => &self.gbraid,
            MatchKey::Wbraid => &self.wbraid,
            MatchKey::Ttclid => &self.ttclid,
            MatchKey::Ttp => &self.ttp,
            MatchKey::Msclkid => &self.msclkid,
            MatchKey::ObClickId => &self.ob_click_id,
            MatchKey::TaboolaClickId => &self.taboola_click_id,
            MatchKey::LiFatId => &self.li_fat_id,
            MatchKey::RdtCid => &self.rdt_cid,
            MatchKey::ScClickId => &self.sc_click_id,
            MatchKey::Epik => &self.epik,
            MatchKey::LeadId => &self.lead_id,
        };
        value.as_deref()
    }
}

impl fmt::Debug for RawIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names of present fields only: values are personal data.
        let mut present: Vec<&'static str> = MatchKey::ALL
            .iter()
            .filter(|key| self.get(**key).is_some())
            .map(|key| key.as_str())
            .collect();
        if self.fbclid.is_some() {
            present.push("fbclid");
        }
        if self.click_time.is_some() {
            present.push("click_time");
        }
        f.debug_struct("RawIdentity")
            .field("present", &present)
            .finish()
    }
}

/// Normalized values, hashed where the platform requires, ready to store and send.
pub type MatchKeys = BTreeMap<MatchKey, String>;

/// A present raw value that was left out, and why ("invalid email", "not a valid phone number for
/// region", "empty", ...). Never holds the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The key whose value was left out.
    pub key: MatchKey,
    /// Why, in a few words; safe to log.
    pub reason: &'static str,
}

/// Why a value that was present is not sent: a short static phrase, safe to log.
pub type Reason = &'static str;

/// Reason for a value that is empty after NFC and trimming.
pub const EMPTY: Reason = "empty";

/// Normalize and hash every present identifier for one platform.
///
/// Only keys the platform accepts are returned (see [`accepted_keys`]); present values of other keys
/// are ignored silently, present values of accepted keys that fail normalization are reported as
/// [`Dropped`]. `default_region` (ISO alpha-2, any case) is the region for phones, zips and dates when
/// the row's country is absent or not a known country. `event_time` is the `fbc` creation time when
/// `fbc` is built from `fbclid` and the row has no click time.
pub fn match_keys(
    platform: Platform,
    raw: &RawIdentity,
    default_region: &str,
    event_time: DateTime<Utc>,
) -> (MatchKeys, Vec<Dropped>) {
    EventIdentity::new(raw, default_region).match_keys(platform, event_time)
}

/// One event's identifiers, prepared once for all of its destinations.
///
/// The row's region is worked out once, the phone is parsed once (the platforms differ only in
/// whether E.164 keeps its `+`), and each digest is computed once and shared by the platforms that
/// normalize a value alike. [`EventIdentity::match_keys`] answers exactly what [`match_keys`] does.
pub struct EventIdentity<'a> {
    raw: &'a RawIdentity,
    region: String,
    phone_region: String,
    /// The phone as E.164 with `+`, or why it is left out; parsed on first use.
    phone: Option<Result<String, Reason>>,
    /// (normalized value, digest) pairs computed so far.
    digests: Vec<(String, String)>,
    /// Whether digests are kept for later platforms (off when only one platform will ask).
    memoize: bool,
}

impl std::fmt::Debug for EventIdentity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No values: they are personal data.
        f.debug_struct("EventIdentity")
            .field("raw", &self.raw)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl<'a> EventIdentity<'a> {
    /// Prepares `raw`; `default_region` as in [`match_keys`].
    pub fn new(raw: &'a RawIdentity, default_region: &str) -> EventIdentity<'a> {
        let region = row_region(raw.country.as_deref(), default_region);
        // A known country the phone metadata lacks (e.g. AQ) falls back to the default region for phones.
        let phone_region = phone_region(Some(&region), default_region).to_ascii_uppercase();
        EventIdentity {
            raw,
            region,
            phone_region,
            phone: None,
            digests: Vec::new(),
            memoize: true,
        }
    }

    /// Tells how many destinations will ask: with one there is nothing to share, so digests are not
    /// kept (the answers are the same).
    pub fn for_destinations(mut self, count: usize) -> EventIdentity<'a> {
        self.memoize = count > 1;
        self
    }

    /// Normalized and hashed keys for one platform, as [`match_keys`].
    pub fn match_keys(
        &mut self,
        platform: Platform,
        event_time: DateTime<Utc>,
    ) -> (MatchKeys, Vec<Dropped>) {
        let raw = self.raw;
        let mut keys = MatchKeys::new();
        let mut dropped = Vec::new();
        for &key in accepted_keys(platform) {
            let result = if key == MatchKey::Fbc {
                fbc_value(raw, event_time)
            } else {
                raw.get(key).map(|value| self.value(platform, key, value))
            };
            match result {
                Some(Ok(value)) => {
                    keys.insert(key, value);
                }
                Some(Err(reason)) => dropped.push(Dropped { key, reason }),
                None => {}
            }
        }
        (keys, dropped)
    }

    /// [`match_key_value`] with the phone parsed once and digests memoized.
    fn value(&mut self, platform: Platform, key: MatchKey, raw: &str) -> Result<String, Reason> {
        if !key.is_hashed(platform) {
            return normalize_key(platform, key, raw, &self.region);
        }
        let cleaned = text::clean(raw).ok_or(EMPTY)?;
        if is_sha256_hex(&cleaned) {
            return Ok(cleaned.to_ascii_lowercase());
        }
        let normalized: Cow<'_, str> = if key == MatchKey::Phone {
            let region = &self.phone_region;
            let e164 = self
                .phone
                .get_or_insert_with(|| phone::phone_e164(&cleaned, region))
                .as_deref()
                .map_err(|reason| *reason)?;
            Cow::Borrowed(phone::platform_form(platform, e164))
        } else {
            Cow::Owned(normalize_key(platform, key, &cleaned, &self.region)?)
        };
        if !self.memoize {
            return Ok(hash(&normalized));
        }
        if let Some((_, digest)) = self.digests.iter().find(|(n, _)| *n == *normalized) {
            return Ok(digest.clone());
        }
        let digest = hash(&normalized);
        self.digests.push((normalized.into_owned(), digest.clone()));
        Ok(digest)
    }
}

/// The region of a row: its country if that is a known country, else the default region (uppercase).
pub fn row_region(country: Option<&str>, default_region: &str) -> String {
    country
        .and_then(country_code)
        .unwrap_or(default_region)
        .to_ascii_uppercase()
}

/// The `fbc` to send: a valid stored `fbc`, else one built from `fbclid`, else the reason neither works.
fn fbc_value(raw: &RawIdentity, event_time: DateTime<Utc>) -> Option<Result<String, Reason>> {
    let stored = raw.fbc.as_deref().map(click::fbc_checked);
    if let Some(Ok(fbc)) = stored {
        return Some(Ok(fbc));
    }
    if let Some(fbclid) = raw.fbclid.as_deref() {
        let built = click::fbc_from_fbclid_checked(fbclid, raw.click_time.unwrap_or(event_time));
        // Report the stored fbc's problem rather than the fbclid's when both fail.
        if built.is_ok() || stored.is_none() {
            return Some(built);
        }
    }
    stored
}

/// The value of one key as sent to a platform: normalized, then hashed when [`MatchKey::is_hashed`].
///
/// A hashed key whose value already is 64 hex characters is taken as pre-hashed: lowercased and passed
/// through. `region` is the row's region (see [`row_region`]). `Fbc` here only validates a stored
/// value; [`match_keys`] also builds it from `fbclid`.
pub fn match_key_value(
    platform: Platform,
    key: MatchKey,
    raw: &str,
    region: &str,
) -> Result<String, Reason> {
    if key.is_hashed(platform) {
        let cleaned = text::clean(raw).ok_or(EMPTY)?;
        if is_sha256_hex(&cleaned) {
            return Ok(cleaned.to_ascii_lowercase());
        }
        normalize_key(platform, key, &cleaned, region).map(|value| hash(&value))
    } else {
        normalize_key(platform, key, raw, region)
    }
}

/// The normalized, unhashed value of one key for a platform, or why it is left out.
///
/// This is the plain-text stage only: it never hashes and does not detect pre-hashed input.
pub fn normalize_key(
    platform: Platform,
    key: MatchKey,
    raw: &str,
    region: &str,
) -> Result<String, Reason> {
    match key {
        MatchKey::Email => email::email_checked(platform, raw),
        MatchKey::Phone => phone::phone_checked(platform, raw, region),
        MatchKey::FirstName | MatchKey::LastName => text::name_checked(platform, raw),
        MatchKey::City => address::city_checked(platform, raw),
        MatchKey::State => address::state_checked(platform, raw),
        MatchKey::Zip => address::zip_checked(platform, raw, region),
        MatchKey::Country => country::country_checked(platform, raw),
        MatchKey::ExternalId => person::external_id_checked(raw),
        MatchKey::DateOfBirth => person::date_of_birth_checked(raw, region),
        MatchKey::Gender => person::gender_checked(raw),
        MatchKey::ClientIp => click::client_ip_checked(raw),
        MatchKey::Fbc => click::fbc_checked(raw),
        MatchKey::Msclkid => click::msclkid_checked(raw),
        MatchKey::ObClickId => click::ob_click_id_checked(raw),
        MatchKey::TaboolaClickId => click::taboola_click_id_checked(raw),
        MatchKey::UserAgent
        | MatchKey::Fbp
        | MatchKey::Gclid
        | MatchKey::Gbraid
        | MatchKey::Wbraid
        | MatchKey::Ttclid
        | MatchKey::Ttp
        | MatchKey::LiFatId
        | MatchKey::RdtCid
        | MatchKey::ScClickId
        | MatchKey::Epik
        | MatchKey::LeadId => click::as_stored_checked(raw),
    }
}

/// SHA-256 of the UTF-8 bytes, lowercase hex; a value that is already 64 hex chars is lowercased and
/// passed through, so nothing is ever hashed twice.
pub fn hash(normalized: &str) -> String {
    if is_sha256_hex(normalized) {
        return normalized.to_ascii_lowercase();
    }
    let mut text = [0u8; 64];
    for (pair, byte) in text
        .chunks_exact_mut(2)
        .zip(Sha256::digest(normalized.as_bytes()))
    {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    std::str::from_utf8(&text)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// The two lowercase hex digits of every byte value.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    pairs
};

/// True when the text is exactly 64 ASCII hex digits (either case), i.e. looks like a SHA-256 digest.
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod click_id_tests;
#[cfg(test)]
mod idempotence_tests;
#[cfg(test)]
mod rules_doc_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod unicode_tests;

#[cfg(test)]
mod vectors;

#[cfg(test)]
mod profile_vectors;
#[cfg(test)]
mod snap_pinterest_tests;

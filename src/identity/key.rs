//! The match keys pgcapi knows, their config names, and which keys each platform takes.
//!
//! A platform's key list is built from small named groups (contact, names, address, browser, Google
//! click ids) so that the lists say how the platforms differ; see the table in the module above.

use std::fmt;

use crate::platform::Platform;

/// Declares [`MatchKey`] from one list of `Variant = "config_name"` so that the variants,
/// [`MatchKey::ALL`] and [`MatchKey::as_str`] cannot drift apart.
macro_rules! declare_match_keys {
    ($($(#[doc = $doc:literal])* $key:ident = $name:literal,)*) => {
        /// A match key pgcapi knows (serde snake_case; `as_str` gives the same name, e.g. "first_name").
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(rename_all = "snake_case")]
        pub enum MatchKey {
            $($(#[doc = $doc])* $key,)*
        }

        impl MatchKey {
            /// Every key, in declaration (and `Ord`) order.
            pub const ALL: [MatchKey; [$($name),*].len()] = [$(MatchKey::$key),*];

            /// The config and storage name, identical to the serde name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(MatchKey::$key => $name,)*
                }
            }
        }
    };
}

declare_match_keys! {
    /// Email address.
    Email = "email",
    /// Phone number.
    Phone = "phone",
    /// Given name.
    FirstName = "first_name",
    /// Family name.
    LastName = "last_name",
    /// City.
    City = "city",
    /// State or province.
    State = "state",
    /// Postal code.
    Zip = "zip",
    /// Country.
    Country = "country",
    /// Advertiser customer id.
    ExternalId = "external_id",
    /// Date of birth.
    DateOfBirth = "date_of_birth",
    /// Gender.
    Gender = "gender",
    /// Client IP address.
    ClientIp = "client_ip",
    /// Client user agent.
    UserAgent = "user_agent",
    /// Meta click cookie.
    Fbc = "fbc",
    /// Meta browser cookie.
    Fbp = "fbp",
    /// Google click id.
    Gclid = "gclid",
    /// Google iOS app-to-web click id.
    Gbraid = "gbraid",
    /// Google iOS web-to-app click id.
    Wbraid = "wbraid",
    /// TikTok click id.
    Ttclid = "ttclid",
    /// TikTok browser cookie.
    Ttp = "ttp",
    /// Microsoft click id.
    Msclkid = "msclkid",
    /// Outbrain click id.
    ObClickId = "ob_click_id",
    /// Taboola click id.
    TaboolaClickId = "taboola_click_id",
    /// LinkedIn first-party ads tracking UUID.
    LiFatId = "li_fat_id",
    /// Reddit click id.
    RdtCid = "rdt_cid",
    /// Snapchat click id (`ScCid`).
    ScClickId = "sc_click_id",
    /// Pinterest click id (`_epik`).
    Epik = "epik",
    /// Platform lead id.
    LeadId = "lead_id",
}

impl MatchKey {
    /// The key with this config spelling; `fbclid` and `click_time` are inputs, not keys, so `None`.
    pub fn from_name(name: &str) -> Option<MatchKey> {
        MatchKey::ALL.into_iter().find(|key| key.as_str() == name)
    }

    /// True for personal data (hashed somewhere); false for click ids, cookies, lead id, IP, user agent.
    pub fn is_personal(self) -> bool {
        [CONTACT, NAMES, ADDRESS, PERSON]
            .iter()
            .any(|group| group.contains(&self))
    }

    /// True when the value sent to this platform is a SHA-256 hex digest.
    ///
    /// Every personal key is hashed except Google's address parts (city, state, zip, country), which
    /// Google takes in clear (§2.3, §2.5), and LinkedIn's names, which its `userInfo` takes in clear
    /// (platforms-next.md §4). For a key the platform does not accept this still answers with the
    /// rule that would apply, so personal data defaults to hashed.
    pub fn is_hashed(self, platform: Platform) -> bool {
        let google_clear = platform.is_google() && ADDRESS.contains(&self);
        let linkedin_clear = platform == Platform::Linkedin && NAMES.contains(&self);
        self.is_personal() && !google_clear && !linkedin_clear
    }

    /// True when [`match_keys`](super::match_keys) produces this key for the platform (see the module table).
    pub fn is_accepted_by(self, platform: Platform) -> bool {
        accepted_keys(platform).contains(&self)
    }
}

impl fmt::Display for MatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Email and phone: the hashed contact keys most platforms take.
const CONTACT: &[MatchKey] = &[MatchKey::Email, MatchKey::Phone];

/// Given and family name.
const NAMES: &[MatchKey] = &[MatchKey::FirstName, MatchKey::LastName];

/// The address parts (Google takes them in clear).
const ADDRESS: &[MatchKey] = &[
    MatchKey::City,
    MatchKey::State,
    MatchKey::Zip,
    MatchKey::Country,
];

/// The rest of the personal keys: customer id, date of birth, gender.
const PERSON: &[MatchKey] = &[
    MatchKey::ExternalId,
    MatchKey::DateOfBirth,
    MatchKey::Gender,
];

/// The landing page's browser: IP and user agent, sent as stored.
const BROWSER: &[MatchKey] = &[MatchKey::ClientIp, MatchKey::UserAgent];

/// Google's click ids (web, iOS app-to-web, iOS web-to-app).
const GOOGLE_CLICKS: &[MatchKey] = &[MatchKey::Gclid, MatchKey::Gbraid, MatchKey::Wbraid];

/// The groups joined in order into one list of `N` keys (checked when the constant is evaluated).
const fn join<const N: usize>(groups: &[&[MatchKey]]) -> [MatchKey; N] {
    let mut keys = [MatchKey::Email; N];
    let mut filled = 0;
    let mut group = 0;
    while group < groups.len() {
        let mut i = 0;
        while i < groups[group].len() {
            keys[filled] = groups[group][i];
            filled += 1;
            i += 1;
        }
        group += 1;
    }
    assert!(filled == N, "join: N is not the number of keys");
    keys
}

/// The keys Meta's `user_data` takes from us (§1.5).
const META_KEYS: &[MatchKey] = &join::<16>(&[
    CONTACT,
    NAMES,
    ADDRESS,
    PERSON,
    BROWSER,
    &[MatchKey::Fbc, MatchKey::Fbp, MatchKey::LeadId],
]);

/// The keys a Google Ads click conversion takes (§2.1: only hashed email and phone as identifiers).
const GOOGLE_ADS_KEYS: &[MatchKey] = &join::<5>(&[CONTACT, GOOGLE_CLICKS]);

/// The keys a Data Manager event takes (§2.4–2.5): hashed email, phone, given and family name, the
/// address's plain postal and region code, click ids, and the landing page's IP and user agent.
const GOOGLE_DATA_MANAGER_KEYS: &[MatchKey] = &join::<11>(&[
    CONTACT,
    NAMES,
    &[MatchKey::Zip, MatchKey::Country],
    BROWSER,
    GOOGLE_CLICKS,
]);

/// The keys TikTok's Events API `user` object takes (§3, officially documented ones only).
const TIKTOK_KEYS: &[MatchKey] = &join::<8>(&[
    CONTACT,
    &[MatchKey::ExternalId],
    BROWSER,
    &[MatchKey::Ttclid, MatchKey::Ttp, MatchKey::LeadId],
]);

/// The keys a Microsoft Advertising offline conversion takes: the click id and, for enhanced
/// conversions, the hashed email and phone (platforms-next.md §1.2).
const MICROSOFT_ADS_KEYS: &[MatchKey] = &join::<3>(&[CONTACT, &[MatchKey::Msclkid]]);

/// The one key an Outbrain postback takes: its click id (no hashed identifiers).
const OUTBRAIN_KEYS: &[MatchKey] = &[MatchKey::ObClickId];

/// The one key a Taboola S2S conversion takes: its click id (no hashed identifiers).
const TABOOLA_KEYS: &[MatchKey] = &[MatchKey::TaboolaClickId];

/// The keys a LinkedIn conversion event takes (platforms-next.md §4): `SHA256_EMAIL` and
/// `LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID` in `userIds`.
/// Names are left out on purpose: LinkedIn takes them only in clear (`userInfo`), and raw personal
/// data never leaves pgcapi.
const LINKEDIN_KEYS: &[MatchKey] = &[MatchKey::Email, MatchKey::LiFatId];

/// The keys a Reddit v3 conversion event takes (§5): hashed email, phone and external id, the
/// landing page's IP and user agent, and the click id.
const REDDIT_KEYS: &[MatchKey] = &join::<6>(&[
    CONTACT,
    &[MatchKey::ExternalId],
    BROWSER,
    &[MatchKey::RdtCid],
]);

/// The keys Snapchat's `user_data` takes (platforms-next.md §2: the hashed keys of the v3 SDK, the
/// click id and the browser's IP and user agent). `external_id` and `db` appear only in third-party
/// schemas, so they are left out.
const SNAPCHAT_KEYS: &[MatchKey] = &join::<12>(&[
    CONTACT,
    NAMES,
    ADDRESS,
    &[MatchKey::Gender],
    BROWSER,
    &[MatchKey::ScClickId],
]);

/// The keys Pinterest's `user_data` takes (platforms-next.md §3, from its OpenAPI description).
const PINTEREST_KEYS: &[MatchKey] =
    &join::<14>(&[CONTACT, NAMES, ADDRESS, PERSON, BROWSER, &[MatchKey::Epik]]);

/// The keys [`match_keys`](super::match_keys) can produce for a platform, in `MatchKey` order.
pub fn accepted_keys(platform: Platform) -> &'static [MatchKey] {
    match platform {
        Platform::Meta => META_KEYS,
        Platform::GoogleAds => GOOGLE_ADS_KEYS,
        Platform::GoogleDataManager => GOOGLE_DATA_MANAGER_KEYS,
        Platform::Tiktok => TIKTOK_KEYS,
        Platform::MicrosoftAds => MICROSOFT_ADS_KEYS,
        Platform::Outbrain => OUTBRAIN_KEYS,
        Platform::Taboola => TABOOLA_KEYS,
        Platform::Linkedin => LINKEDIN_KEYS,
        Platform::Reddit => REDDIT_KEYS,
        Platform::Snapchat => SNAPCHAT_KEYS,
        Platform::Pinterest => PINTEREST_KEYS,
    }
}

/// Why a row with no match key for `platform` is skipped: "no click id" where the platform takes
/// nothing but its click id (Outbrain, Taboola: no hashed identifiers), else "no match keys".
pub fn no_keys_reason(platform: Platform) -> &'static str {
    let click_ids_only = accepted_keys(platform).iter().all(|key| {
        matches!(
            key,
            MatchKey::Gclid
                | MatchKey::Gbraid
                | MatchKey::Wbraid
                | MatchKey::Ttclid
                | MatchKey::Msclkid
                | MatchKey::ObClickId
                | MatchKey::TaboolaClickId
        )
    });
    if click_ids_only {
        "no click id"
    } else {
        "no match keys"
    }
}

//! The platforms pgcapi delivers to: their stable names and the few facts every stage needs
//! (whether a platform can withdraw an accepted conversion, whether it is one of Google's).
//! A leaf: imports nothing from the crate, so config, identity and destinations can all use it.

use serde::{Deserialize, Serialize};

/// An ad platform pgcapi can deliver to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Meta Conversions API.
    Meta,
    /// Google Ads API click conversions.
    GoogleAds,
    /// TikTok Events API.
    Tiktok,
    /// Google Ads conversions through the Data Manager API (`datamanager.googleapis.com`).
    GoogleDataManager,
    /// Microsoft Advertising offline conversions (Campaign Management REST).
    MicrosoftAds,
    /// Outbrain S2S conversion postbacks (click id + event name; cannot retract).
    Outbrain,
    /// Taboola S2S conversions through its bulk endpoint (click id + event name; cannot retract).
    Taboola,
    /// LinkedIn Conversions API (`/rest/conversionEvents`).
    Linkedin,
    /// Reddit Conversions API v3 (`/api/v3/pixels/{pixel_id}/conversion_events`).
    Reddit,
    /// Snapchat Conversions API v3.
    Snapchat,
    /// Pinterest Conversions API (v5).
    Pinterest,
}

impl Platform {
    /// Every platform, in a stable order.
    pub const ALL: [Platform; 11] = [
        Platform::Meta,
        Platform::GoogleAds,
        Platform::Tiktok,
        Platform::GoogleDataManager,
        Platform::MicrosoftAds,
        Platform::Outbrain,
        Platform::Taboola,
        Platform::Linkedin,
        Platform::Reddit,
        Platform::Snapchat,
        Platform::Pinterest,
    ];

    /// The stable name used in config, logs, metrics and the control table.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Meta => "meta",
            Platform::GoogleAds => "google_ads",
            Platform::Tiktok => "tiktok",
            Platform::GoogleDataManager => "google_data_manager",
            Platform::MicrosoftAds => "microsoft_ads",
            Platform::Outbrain => "outbrain",
            Platform::Taboola => "taboola",
            Platform::Linkedin => "linkedin",
            Platform::Reddit => "reddit",
            Platform::Snapchat => "snapchat",
            Platform::Pinterest => "pinterest",
        }
    }

    /// The platform of a config name (`meta`, `google_ads`, `tiktok`, `linkedin`, …).
    pub fn from_name(name: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether the platform can retract a conversion it has already accepted (Data Manager through
    /// its `refunds` setting: a Google Ads API retraction, a restatement to zero, or a skip). Meta,
    /// TikTok, Outbrain and Taboola cannot: their S2S APIs have no way to withdraw a conversion.
    /// TikTok, LinkedIn and Reddit document no way to (platforms-next.md §8.3).
    pub fn can_retract(self) -> bool {
        matches!(
            self,
            Platform::GoogleAds | Platform::GoogleDataManager | Platform::MicrosoftAds
        )
    }

    /// Whether the platform is one of Google's (conversion actions, Google normalization).
    pub fn is_google(self) -> bool {
        matches!(self, Platform::GoogleAds | Platform::GoogleDataManager)
    }
}

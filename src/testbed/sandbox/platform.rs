//! The APIs the sandbox emulates. The sandbox's own names, not the product's `Platform`: the oracle
//! shares no code with the destinations it judges.

/// One emulated platform API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    /// Meta Conversions API.
    Meta,
    /// Google Ads API (click conversions and adjustments).
    GoogleAds,
    /// TikTok Events API.
    Tiktok,
    /// Google Data Manager API.
    GoogleDataManager,
    /// Microsoft Advertising Campaign Management (offline conversions).
    MicrosoftAds,
    /// Outbrain S2S conversion postbacks (`GET /unifiedPixel`).
    Outbrain,
    /// Taboola S2S conversions (postback URL and bulk endpoint).
    Taboola,
    /// LinkedIn Conversions API.
    Linkedin,
    /// Reddit Conversions API v3.
    Reddit,
    /// Snapchat Conversions API v3.
    Snapchat,
    /// Pinterest Conversions API (v5).
    Pinterest,
}

impl Platform {
    /// Every emulated platform.
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
}

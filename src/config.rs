//! The TOML configuration (see `examples/pgcapi.toml`).

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
}

impl Platform {
    /// The stable name used in config, logs, metrics and the control table.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Meta => "meta",
            Platform::GoogleAds => "google_ads",
            Platform::Tiktok => "tiktok",
        }
    }
}

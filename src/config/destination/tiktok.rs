//! `platform = "tiktok"`: a TikTok pixel (web events), optionally a CRM event set (CRM events), and
//! the Events API token.

use super::Settings;
use crate::config::Secret;
use serde::Deserialize;

/// A TikTok destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct TiktokConfig {
    /// The pixel code (`event_source_id` of web events).
    pub pixel_code: String,
    /// The Events API access token.
    pub access_token: Secret,
    /// Test event code: events show in the test tool only.
    #[serde(default)]
    pub test_event_code: Option<String>,
    /// The CRM event set id: the `event_source_id` of CRM events (`action_source =
    /// "system_generated"`); required when a rule sends such events here.
    #[serde(default)]
    pub crm_event_set_id: Option<String>,
}

impl Settings for TiktokConfig {
    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.access_token]
    }
}

//! `platform = "reddit"`: a Reddit pixel and its conversion access token.

use super::Settings;
use crate::config::Secret;
use serde::Deserialize;

/// A Reddit destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct RedditConfig {
    /// The pixel id (Events Manager).
    pub pixel_id: String,
    /// The conversion access token (Events Manager → Conversions API).
    pub access_token: Secret,
    /// Event Testing's test id, sent as `test_id`: events show in Event Testing. Remove in production.
    #[serde(default)]
    pub test_event_code: Option<String>,
}

impl Settings for RedditConfig {
    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.access_token]
    }
}

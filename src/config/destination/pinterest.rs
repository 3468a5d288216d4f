//! `platform = "pinterest"`: a Pinterest ad account and its conversion access token.

use super::Settings;
use crate::config::Secret;
use serde::Deserialize;

/// A Pinterest destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct PinterestConfig {
    /// The ad account id (digits).
    pub ad_account_id: String,
    /// The conversion access token (a bearer header).
    pub access_token: Secret,
    /// Add `?test=true` (Pinterest checks each event and records nothing).
    #[serde(default)]
    pub test_mode: bool,
}

impl Settings for PinterestConfig {
    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.access_token]
    }
}

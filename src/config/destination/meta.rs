//! `platform = "meta"`: a Meta dataset (pixel) and the Conversions API token that writes to it.

use super::Settings;
use crate::config::Secret;
use serde::Deserialize;

/// A Meta destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct MetaConfig {
    /// The pixel / dataset id.
    pub pixel_id: String,
    /// The Conversions API access token.
    pub access_token: Secret,
    /// Test event code: events show in Events Manager's test tool only.
    #[serde(default)]
    pub test_event_code: Option<String>,
}

impl Settings for MetaConfig {
    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.access_token]
    }
}

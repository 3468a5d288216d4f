//! `platform = "snapchat"`: a Snap pixel (or Snap app id) and its Conversions API token.

use super::Settings;
use crate::config::Secret;
use serde::Deserialize;

/// A Snapchat destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapchatConfig {
    /// The Snap pixel id (or Snap app id): the `{asset_id}` of the v3 endpoint.
    pub pixel_id: String,
    /// The Conversions API token (sent as the `access_token` query parameter).
    pub access_token: Secret,
    /// Send to `/events/validate` (Snap checks each event and records nothing).
    #[serde(default)]
    pub test_mode: bool,
}

impl Settings for SnapchatConfig {
    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.access_token]
    }
}

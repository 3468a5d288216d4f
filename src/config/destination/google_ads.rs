//! `platform = "google_ads"`: a Google Ads customer, reached through the Google Ads API
//! (`UploadClickConversions`, `UploadConversionAdjustments`).

use super::{GoogleAuthConfig, Reader, Settings};
use crate::config::Secret;
use serde::Deserialize;

/// A Google Ads API destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct GoogleAdsConfig {
    /// The customer id (dashes allowed; only the digits are sent).
    pub customer_id: String,
    /// The manager account id sent as `login-customer-id`.
    #[serde(default)]
    pub login_customer_id: Option<String>,
    /// The developer token (optional: Google accepts uploads without one for allowlisted access).
    #[serde(default)]
    pub developer_token: Option<Secret>,
    /// `validateOnly`: Google checks the requests without recording conversions.
    #[serde(default)]
    pub validate_only: bool,
    /// The credentials.
    #[serde(skip)]
    pub auth: GoogleAuthConfig,
}

impl Settings for GoogleAdsConfig {
    fn read(reader: &mut Reader) -> Option<Self> {
        let mut config: GoogleAdsConfig = reader.part()?;
        config.auth = GoogleAuthConfig::read(reader)?;
        Some(config)
    }

    fn secrets(&self) -> Vec<&Secret> {
        let mut secrets = self.auth.secrets();
        secrets.extend(&self.developer_token);
        secrets
    }
}

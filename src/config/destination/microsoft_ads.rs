//! `platform = "microsoft_ads"`: a Microsoft Advertising account, its developer token and the
//! Microsoft identity platform OAuth client (refresh token flow).

use super::{Reader, Settings};
use crate::config::Secret;
use serde::Deserialize;

/// A Microsoft Advertising destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct MicrosoftAdsConfig {
    /// The customer id, sent as `CustomerId`.
    pub customer_id: String,
    /// The account id, sent as `CustomerAccountId`.
    pub account_id: String,
    /// The developer token.
    pub developer_token: Secret,
    /// The OAuth client id.
    pub client_id: Secret,
    /// The OAuth client secret (public clients have none).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// The OAuth refresh token.
    pub refresh_token: Secret,
    /// The OAuth token endpoint; Microsoft's when absent.
    #[serde(default)]
    pub token_endpoint: Option<String>,
}

impl Settings for MicrosoftAdsConfig {
    fn read(reader: &mut Reader) -> Option<Self> {
        let config: MicrosoftAdsConfig = reader.part()?;
        reader.check_url("token_endpoint", config.token_endpoint.as_deref());
        Some(config)
    }

    fn secrets(&self) -> Vec<&Secret> {
        let mut secrets = vec![&self.developer_token, &self.client_id, &self.refresh_token];
        secrets.extend(&self.client_secret);
        secrets
    }
}

//! `platform = "linkedin"`: a LinkedIn member's OAuth token for the Conversions API (the conversion
//! rules are per rule, `[rules.linkedin] conversion_rule`). `api_version` is the `LinkedIn-Version`.

use super::{Reader, Settings};
use crate::config::Secret;
use serde::Deserialize;

/// A LinkedIn destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct LinkedinConfig {
    /// The OAuth access token (scopes `rw_conversions` and `r_ads`).
    pub access_token: Secret,
    /// The ad account that owns the conversion rules; `pgcapi check` names it when it reads them.
    #[serde(default)]
    pub ad_account_id: Option<String>,
}

impl Settings for LinkedinConfig {
    fn read(reader: &mut Reader) -> Option<Self> {
        let config: LinkedinConfig = reader.part()?;
        let account = config.ad_account_id.as_deref();
        if account.is_some_and(|a| a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit())) {
            reader.problem(Some("ad_account_id"), "must be the ad account's numeric id");
        }
        Some(config)
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.access_token]
    }
}

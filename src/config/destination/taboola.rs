//! `platform = "taboola"`: a Taboola advertiser account, whose numeric id is in the path of the S2S
//! bulk endpoint. Taboola's S2S endpoints take no credential.

use super::{Reader, Settings};
use crate::config::Secret;
use serde::Deserialize;

/// A Taboola destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct TaboolaConfig {
    /// The numeric Taboola account id (`123456`), or the network account's to send conversions of
    /// its sub-accounts.
    pub account_id: String,
}

impl Settings for TaboolaConfig {
    fn read(reader: &mut Reader) -> Option<Self> {
        let config: TaboolaConfig = reader.part()?;
        let id = config.account_id.trim();
        if !id.is_empty() && !id.bytes().all(|b| b.is_ascii_digit()) {
            reader.problem(
                Some("account_id"),
                "must be the numeric Taboola account id (digits only)",
            );
        }
        Some(config)
    }

    fn secrets(&self) -> Vec<&Secret> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{DestinationConfig, PlatformConfig};
    use crate::platform::Platform;

    #[test]
    fn a_taboola_destination_needs_its_numeric_account_id_and_outbrain_needs_nothing() {
        let ok: DestinationConfig =
            toml::from_str("platform = \"taboola\"\naccount_id = \"1234567\"").unwrap();
        assert!(
            matches!(&ok.settings, PlatformConfig::Taboola(t) if t.account_id == "1234567"),
            "{ok:?}"
        );
        assert!(ok.secrets().is_empty());
        let named =
            toml::from_str::<DestinationConfig>("platform = \"taboola\"\naccount_id = \"acme-sc\"")
                .unwrap_err()
                .to_string();
        assert!(named.contains("account_id: must be the numeric"), "{named}");
        let missing = toml::from_str::<DestinationConfig>("platform = \"taboola\"")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("account_id: is required"), "{missing}");
        let outbrain: DestinationConfig = toml::from_str("platform = \"outbrain\"").unwrap();
        assert_eq!(outbrain.platform(), Platform::Outbrain);
    }
}

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

//! `platform = "google_data_manager"`: Google Ads conversions through the Data Manager API, with what a
//! full refund becomes there (Data Manager itself cannot retract).

use super::{GoogleAuthConfig, Reader, Settings};
use crate::config::Secret;
use serde::Deserialize;

/// A Data Manager destination's own keys.
#[derive(Debug, Clone, Deserialize)]
pub struct GoogleDataManagerConfig {
    /// The Google Ads account that owns the conversion actions.
    pub operating_account: String,
    /// The account the credentials log in as (a manager of `operating_account`).
    #[serde(default)]
    pub login_account: Option<String>,
    /// What a full refund becomes.
    #[serde(default)]
    pub refunds: GoogleRefunds,
    /// With `refunds = "retract"`: the Google Ads API host for the retraction; Google's when absent.
    #[serde(default)]
    pub ads_endpoint: Option<String>,
    /// The Google Ads developer token, for the retractions sent through the Google Ads API.
    #[serde(default)]
    pub developer_token: Option<Secret>,
    /// `validateOnly`: Google checks the requests without recording conversions.
    #[serde(default)]
    pub validate_only: bool,
    /// How often an accepted request's processing result is asked for (default 30 s).
    #[serde(default)]
    pub status_poll_ms: Option<u64>,
    /// The credentials.
    #[serde(skip)]
    pub auth: GoogleAuthConfig,
}

/// `refunds` of a Data Manager destination: what a full refund (`retracts`) becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoogleRefunds {
    /// A Google Ads API `UploadConversionAdjustments` RETRACTION by order id (the transaction id).
    #[default]
    Retract,
    /// A Data Manager restatement to value 0: the conversion still counts once.
    RestateZero,
    /// Nothing is sent; the refund is recorded `skipped`.
    Skip,
}

impl Settings for GoogleDataManagerConfig {
    fn read(reader: &mut Reader) -> Option<Self> {
        let mut config: GoogleDataManagerConfig = reader.part()?;
        reader.check_url("ads_endpoint", config.ads_endpoint.as_deref());
        config.auth = GoogleAuthConfig::read(reader)?;
        Some(config)
    }

    fn secrets(&self) -> Vec<&Secret> {
        let mut secrets = self.auth.secrets();
        secrets.extend(&self.developer_token);
        secrets
    }
}

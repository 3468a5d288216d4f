//! `platform = "outbrain"`: Outbrain's S2S conversion postback. It has no key of its own: the
//! postback carries no credential and no account, the click id says whose conversion it is.

use super::Settings;
use crate::config::Secret;
use serde::Deserialize;

/// An Outbrain destination's own keys: none.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OutbrainConfig {}

impl Settings for OutbrainConfig {
    fn secrets(&self) -> Vec<&Secret> {
        Vec::new()
    }
}

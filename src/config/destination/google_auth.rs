//! How a Google destination (`google_ads`, `google_data_manager`) authenticates: a user OAuth client,
//! a service account key file, or Application Default Credentials; one of them, chosen by which keys
//! are set.

use super::Reader;
use crate::config::Secret;
use serde::Deserialize;

/// A Google destination's credentials and the token endpoint they are exchanged at.
#[derive(Debug, Clone, Default)]
pub struct GoogleAuthConfig {
    /// Which credentials.
    pub credentials: GoogleCredentials,
    /// The OAuth token endpoint; Google's (or the key file's `token_uri`) when absent.
    pub token_endpoint: Option<String>,
}

/// The kinds of Google credentials.
#[derive(Debug, Clone, Default)]
pub enum GoogleCredentials {
    /// `client_id`, `client_secret` and `refresh_token`: a user's OAuth grant.
    OAuth {
        /// The OAuth client id.
        client_id: Secret,
        /// The OAuth client secret.
        client_secret: Secret,
        /// The user's refresh token.
        refresh_token: Secret,
    },
    /// `service_account_key`: the path of a service account key file (JSON), for the JWT bearer flow.
    ServiceAccountKey(String),
    /// None of those keys: Application Default Credentials.
    #[default]
    ApplicationDefault,
}

/// The keys as written, any of them possibly missing.
#[derive(Deserialize)]
struct Keys {
    #[serde(default)]
    client_id: Option<Secret>,
    #[serde(default)]
    client_secret: Option<Secret>,
    #[serde(default)]
    refresh_token: Option<Secret>,
    #[serde(default)]
    service_account_key: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
}

impl GoogleAuthConfig {
    /// Reads the credential keys; a partial OAuth client, or both kinds at once, is a problem of the
    /// destination.
    pub(super) fn read(reader: &mut Reader) -> Option<GoogleAuthConfig> {
        let keys: Keys = reader.part()?;
        reader.check_url("token_endpoint", keys.token_endpoint.as_deref());
        let oauth = [
            ("client_id", keys.client_id.is_some()),
            ("client_secret", keys.client_secret.is_some()),
            ("refresh_token", keys.refresh_token.is_some()),
        ];
        let missing: Vec<&str> = oauth.iter().filter(|(_, s)| !*s).map(|(k, _)| *k).collect();
        let credentials = match (keys.client_id, keys.client_secret, keys.refresh_token) {
            (Some(client_id), Some(client_secret), Some(refresh_token)) => {
                if keys.service_account_key.is_some() {
                    reader.problem(
                        None,
                        "set either the OAuth client (client_id, client_secret, refresh_token) or \
                         service_account_key, not both",
                    );
                }
                GoogleCredentials::OAuth {
                    client_id,
                    client_secret,
                    refresh_token,
                }
            }
            (None, None, None) => match keys.service_account_key {
                Some(path) => GoogleCredentials::ServiceAccountKey(path),
                None => GoogleCredentials::ApplicationDefault,
            },
            _ => {
                reader.problem(
                    None,
                    format!(
                        "user OAuth needs client_id, client_secret and refresh_token together \
                         (missing {}); or use service_account_key, or neither for Application \
                         Default Credentials",
                        missing.join(", ")
                    ),
                );
                GoogleCredentials::ApplicationDefault
            }
        };
        Some(GoogleAuthConfig {
            credentials,
            token_endpoint: keys.token_endpoint,
        })
    }

    /// The OAuth client's secrets, if any.
    pub(super) fn secrets(&self) -> Vec<&Secret> {
        match &self.credentials {
            GoogleCredentials::OAuth {
                client_id,
                client_secret,
                refresh_token,
            } => vec![client_id, client_secret, refresh_token],
            GoogleCredentials::ServiceAccountKey(_) | GoogleCredentials::ApplicationDefault => {
                Vec::new()
            }
        }
    }
}

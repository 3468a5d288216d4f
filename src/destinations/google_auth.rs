//! Google credentials for both Google destinations (`google_ads`, `google_data_manager`).
//!
//! Three kinds, in the order they are looked for:
//! 1. user OAuth: `client_id`, `client_secret`, `refresh_token` (the refresh-token grant);
//! 2. a service account key file, `service_account_key` (JSON as the Cloud console downloads it): a
//!    JWT signed with the key (RS256) is exchanged at the key's `token_uri` (the JWT bearer grant,
//!    RFC 7523);
//! 3. neither: Application Default Credentials, as Google's client libraries resolve them: the file
//!    named by `GOOGLE_APPLICATION_CREDENTIALS` (a service account key or an `authorized_user` file),
//!    else gcloud's well-known file, else the metadata server of the Google Cloud machine.
//!
//! `token_endpoint` in the config replaces the token URL of 1 and 2 (the sandbox serves one). An
//! access token is cached until a minute before it expires; [`GoogleAuth::invalidate`] drops it after
//! a 401 so that the next request fetches a new one. Nothing here ever logs or returns a secret.

use super::batch::BatchAnswer;
use super::oauth::{self, Token};
use super::DestinationError;
use crate::config::{GoogleAuthConfig, GoogleCredentials, Secret};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Google's OAuth2 token endpoint.
pub const DEFAULT_TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";
/// The scope of the Google Ads API.
pub const ADS_SCOPE: &str = "https://www.googleapis.com/auth/adwords";
/// The scope of the Data Manager API.
pub const DATA_MANAGER_SCOPE: &str = "https://www.googleapis.com/auth/datamanager";
/// The JWT bearer grant type (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The metadata server's token URL on Google Cloud (host replaceable with `GCE_METADATA_HOST`).
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Lifetime asked for in a service account's JWT (Google's maximum).
const JWT_LIFETIME_SECS: i64 = 3600;

/// Where access tokens come from.
pub enum Credentials {
    /// The refresh-token grant of an OAuth client.
    UserOAuth {
        /// OAuth client id.
        client_id: Secret,
        /// OAuth client secret.
        client_secret: Secret,
        /// The refresh token.
        refresh_token: Secret,
        /// Where it is exchanged.
        token_uri: String,
    },
    /// A service account key: the JWT bearer grant.
    ServiceAccount {
        /// The service account's email (`iss` of the JWT).
        client_email: String,
        /// The key id (`kid` of the JWT header), if the file has one.
        key_id: Option<String>,
        /// The private key.
        key: Box<jsonwebtoken::EncodingKey>,
        /// Where the JWT is exchanged (also its `aud`).
        token_uri: String,
    },
    /// The Google Cloud metadata server (the machine's own service account).
    Metadata {
        /// The token URL.
        url: String,
    },
}

impl Credentials {
    /// What kind of credentials these are, for messages (never a value).
    pub fn describe(&self) -> &'static str {
        match self {
            Credentials::UserOAuth { .. } => "user OAuth (refresh token)",
            Credentials::ServiceAccount { .. } => "service account key",
            Credentials::Metadata { .. } => "metadata server (Application Default Credentials)",
        }
    }
}

/// Credentials, the scopes asked for, and the cached token.
pub struct GoogleAuth {
    credentials: Credentials,
    /// Space-separated scopes (service accounts and the metadata server; a refresh token carries the
    /// scopes it was granted).
    scopes: String,
    http: reqwest::Client,
    /// The cached token; the lock also keeps concurrent senders from fetching twice.
    token: tokio::sync::Mutex<Option<Token>>,
}

/// The config error for destination `name`.
fn credentials_error(name: &str, message: impl Into<String>) -> DestinationError {
    DestinationError::Credentials {
        destination: name.to_string(),
        message: message.into(),
    }
}

impl GoogleAuth {
    /// The credentials `config` describes (see the module docs), asking for `scopes`.
    pub fn from_config(
        name: &str,
        config: &GoogleAuthConfig,
        scopes: &[&str],
        http: reqwest::Client,
    ) -> Result<GoogleAuth, DestinationError> {
        let token_endpoint = config.token_endpoint.as_deref();
        let credentials = match &config.credentials {
            GoogleCredentials::OAuth {
                client_id,
                client_secret,
                refresh_token,
            } => Credentials::UserOAuth {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                refresh_token: refresh_token.clone(),
                token_uri: token_endpoint.unwrap_or(DEFAULT_TOKEN_ENDPOINT).to_string(),
            },
            GoogleCredentials::ServiceAccountKey(path) => {
                key_file(name, Path::new(path), token_endpoint)?
            }
            GoogleCredentials::ApplicationDefault => application_default(name, token_endpoint)?,
        };
        Ok(GoogleAuth::new(credentials, scopes, http))
    }

    /// Credentials asking for `scopes`.
    pub fn new(credentials: Credentials, scopes: &[&str], http: reqwest::Client) -> GoogleAuth {
        GoogleAuth {
            credentials,
            scopes: scopes.join(" "),
            http,
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// What kind of credentials are used.
    pub fn describe(&self) -> &'static str {
        self.credentials.describe()
    }

    /// What a refused token request means, then Google's words (for `pgcapi check`).
    pub fn refusal(&self, answer: BatchAnswer) -> String {
        let words = answer.error();
        let user = matches!(self.credentials, Credentials::UserOAuth { .. });
        let what = if words.contains("invalid_client") {
            "OAuth client id or client secret rejected"
        } else if words.contains("invalid_grant") && user {
            "OAuth refresh token rejected (expired or revoked)"
        } else if words.contains("invalid_grant") {
            "service account key rejected (deleted, disabled, or the JWT was refused)"
        } else {
            "no access token"
        };
        format!("{what} ({words})")
    }

    /// Forgets the cached token (after a 401: it may have been revoked or expired early).
    pub async fn invalidate(&self) {
        *self.token.lock().await = None;
    }

    /// A valid access token: the cached one, or a fresh one. A refusal is a retry, or
    /// [`BatchAnswer::NeedsOperator`] when an operator must fix the credentials.
    pub async fn access_token(&self) -> Result<Secret, BatchAnswer> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().and_then(Token::fresh) {
            return Ok(token);
        }
        let request = match &self.credentials {
            Credentials::UserOAuth {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => self.http.post(token_uri).form(&[
                ("grant_type", "refresh_token"),
                ("client_id", client_id.expose()),
                ("client_secret", client_secret.expose()),
                ("refresh_token", refresh_token.expose()),
            ]),
            Credentials::ServiceAccount {
                client_email,
                key_id,
                key,
                token_uri,
            } => {
                let assertion = signed_jwt(client_email, key_id, key, token_uri, &self.scopes)
                    .map_err(|e| BatchAnswer::NeedsOperator {
                        error: format!("google oauth: cannot sign the service account JWT: {e}"),
                        retry_after: None,
                    })?;
                self.http.post(token_uri).form(&[
                    ("grant_type", JWT_BEARER_GRANT),
                    ("assertion", assertion.as_str()),
                ])
            }
            Credentials::Metadata { url } => self
                .http
                .get(url)
                .query(&[("scopes", self.scopes.as_str())])
                .header("Metadata-Flavor", "Google"),
        };
        let who = format!("google oauth ({})", self.credentials.describe());
        let grant = oauth::exchange(request, &who).await?;
        *cached = Some(grant.token.clone());
        Ok(grant.token.token)
    }
}

/// The claims of a service account's JWT bearer assertion.
#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

/// A JWT for `client_email` asking for `scopes`, signed RS256 with `key`.
fn signed_jwt(
    client_email: &str,
    key_id: &Option<String>,
    key: &jsonwebtoken::EncodingKey,
    token_uri: &str,
    scopes: &str,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = key_id.clone();
    let claims = Claims {
        iss: client_email,
        scope: scopes,
        aud: token_uri,
        iat: now,
        exp: now + JWT_LIFETIME_SECS,
    };
    jsonwebtoken::encode(&header, &claims, key)
}

/// Reads a credentials file: a service account key, or an `authorized_user` file (gcloud's
/// application-default login). `token_endpoint` replaces the file's token URL.
fn key_file(
    name: &str,
    path: &Path,
    token_endpoint: Option<&str>,
) -> Result<Credentials, DestinationError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| credentials_error(name, format!("cannot read {shown}: {e}")))?;
    // Never serde's own message: it may quote a value of the file.
    let json: Value = serde_json::from_str(&text)
        .map_err(|_| credentials_error(name, format!("{shown} is not a JSON credentials file")))?;
    let field = |k: &str| {
        json.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let token_uri = |file: Option<&str>| {
        token_endpoint
            .or(file)
            .unwrap_or(DEFAULT_TOKEN_ENDPOINT)
            .to_string()
    };
    match field("type") {
        Some("service_account") => {
            let (Some(client_email), Some(pem)) = (field("client_email"), field("private_key"))
            else {
                return Err(credentials_error(
                    name,
                    format!("{shown}: a service account key needs client_email and private_key"),
                ));
            };
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                credentials_error(
                    name,
                    format!("{shown}: private_key is not an RSA private key in PEM"),
                )
            })?;
            Ok(Credentials::ServiceAccount {
                client_email: client_email.to_string(),
                key_id: field("private_key_id").map(str::to_string),
                key: Box::new(key),
                token_uri: token_uri(field("token_uri")),
            })
        }
        Some("authorized_user") => {
            let (Some(id), Some(secret), Some(refresh)) = (
                field("client_id"),
                field("client_secret"),
                field("refresh_token"),
            ) else {
                return Err(credentials_error(
                    name,
                    format!(
                        "{shown}: an authorized_user file needs client_id, client_secret and \
                         refresh_token"
                    ),
                ));
            };
            Ok(Credentials::UserOAuth {
                client_id: Secret::new(id),
                client_secret: Secret::new(secret),
                refresh_token: Secret::new(refresh),
                token_uri: token_uri(field("token_uri")),
            })
        }
        _ => Err(credentials_error(
            name,
            format!("{shown}: type must be service_account or authorized_user"),
        )),
    }
}

/// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's well-known file, or
/// the metadata server.
fn application_default(
    name: &str,
    token_endpoint: Option<&str>,
) -> Result<Credentials, DestinationError> {
    if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty())
    {
        return key_file(name, Path::new(&path), token_endpoint);
    }
    let well_known = std::env::var_os("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/gcloud")))
        .map(|dir| dir.join("application_default_credentials.json"));
    if let Some(path) = well_known.filter(|p| p.is_file()) {
        return key_file(name, &path, token_endpoint);
    }
    let host = std::env::var("GCE_METADATA_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "metadata.google.internal".to_string());
    Ok(Credentials::Metadata {
        url: format!("http://{host}{METADATA_TOKEN_PATH}"),
    })
}

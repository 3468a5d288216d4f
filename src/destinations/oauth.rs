//! The OAuth token exchange of both Google platforms and Microsoft Advertising: send the grant, read
//! the access token and its lifetime, or say why it was refused.
//!
//! What differs stays with the caller: which grant (refresh token, JWT bearer, metadata server), where
//! the token is cached, and what a rotated refresh token means. A refusal an operator must fix (a
//! revoked refresh token, a wrong client) is [`BatchAnswer::NeedsOperator`] with the endpoint's own
//! delay, if any; a 5xx or 429 is a retry after the delay the endpoint asks. Messages never carry the
//! form's secrets.

use super::batch::BatchAnswer;
use super::http::{excerpt, is_retryable_status, transport_error, Answer};
use crate::config::Secret;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A cached access token is renewed this long before the token endpoint says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// The lifetime assumed when the answer gives none.
const DEFAULT_LIFETIME_SECS: u64 = 3600;

/// An access token and when to stop using it.
#[derive(Clone)]
pub(crate) struct Token {
    /// The access token.
    pub token: Secret,
    /// When to fetch a new one.
    pub renew_at: Instant,
}

impl Token {
    /// The token while it is fresh.
    pub fn fresh(&self) -> Option<Secret> {
        (self.renew_at > Instant::now()).then(|| self.token.clone())
    }
}

/// What a token endpoint granted.
pub(crate) struct Grant {
    /// The access token.
    pub token: Token,
    /// A refresh token in the answer, when the endpoint sent one (Microsoft may rotate it).
    pub refresh_token: Option<String>,
}

/// Sends the token `request` and reads the grant. `who` names the exchange in messages
/// (`microsoft oauth`, `google oauth (service account key)`).
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
    who: &str,
) -> Result<Grant, BatchAnswer> {
    let response = request.send().await.map_err(|e| transport_error(who, e))?;
    let answer = Answer::read(response).await;
    let body = answer.json();
    let s = |k: &str| body.get(k).and_then(Value::as_str);
    match s("access_token") {
        Some(token) if answer.status.is_success() => {
            let lifetime = body
                .get("expires_in")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_LIFETIME_SECS);
            Ok(Grant {
                token: Token {
                    token: Secret::new(token),
                    renew_at: Instant::now()
                        + Duration::from_secs(lifetime).saturating_sub(TOKEN_MARGIN),
                },
                refresh_token: s("refresh_token")
                    .filter(|r| !r.is_empty())
                    .map(str::to_string),
            })
        }
        _ => {
            let code = answer.status.as_u16();
            // Microsoft's descriptions go on with trace and correlation ids on further lines.
            let error = match (s("error"), s("error_description")) {
                (Some(e), Some(d)) => format!("{who}: HTTP {code}: {e}: {}", first_line(d)),
                (Some(e), None) => format!("{who}: HTTP {code}: {e}"),
                _ => format!("{who}: HTTP {code}: {}", excerpt(&answer.text)),
            };
            let retry_after = answer.retry_after;
            Err(if is_retryable_status(answer.status) {
                BatchAnswer::Retry { error, retry_after }
            } else {
                BatchAnswer::NeedsOperator { error, retry_after }
            })
        }
    }
}

/// The first line of `s`, trimmed (control-table errors are single lines).
pub(crate) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

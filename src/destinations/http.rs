//! HTTP plumbing every destination shares: the client, reading an answer, `Retry-After`, status classes.
//!
//! A platform module sends its requests with [`http_client`] and hands the answer to [`read_answer`]
//! with its own `classify`; the helpers here never see a secret (URLs are dropped from transport
//! errors, as Meta's carries the token).

use super::batch::BatchAnswer;
use super::DestinationError;
use crate::config::DispatchConfig;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The HTTP client every destination uses: the dispatch request timeout (which also bounds a hung
/// platform, turning it into a retry) and a user agent naming pgcapi.
pub(crate) fn http_client(
    destination: &str,
    dispatch: &DispatchConfig,
) -> Result<reqwest::Client, DestinationError> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(dispatch.request_timeout_ms.max(1)))
        .connect_timeout(Duration::from_millis(
            dispatch.request_timeout_ms.clamp(1, 10_000),
        ))
        .user_agent(concat!("pgcapi/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| DestinationError::Client {
            destination: destination.to_string(),
            source,
        })
}

/// `endpoint` without a trailing slash, or the platform's production default.
pub(crate) fn base_url(endpoint: &Option<String>, default: &str) -> String {
    endpoint
        .as_deref()
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_string()
}

/// The classification of a transport error (no answer from the platform): always retryable. The message
/// never carries the URL, which may hold a token (Meta's `access_token` query parameter).
pub(crate) fn transport_error(platform: &str, err: reqwest::Error) -> BatchAnswer {
    let what = if err.is_timeout() {
        "request timed out".to_string()
    } else if err.is_connect() {
        format!("connection failed: {}", err.without_url())
    } else {
        format!("request failed: {}", err.without_url())
    };
    BatchAnswer::Retry {
        error: format!("{platform}: {what}"),
        retry_after: None,
    }
}

/// An answer read off the wire: status, `Retry-After` and the body text.
pub(crate) struct Answer {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// The delay the platform asked for, if any.
    pub retry_after: Option<Duration>,
    /// The body (empty when it could not be read).
    pub text: String,
}

impl Answer {
    /// Reads `response` to the end.
    pub async fn read(response: reqwest::Response) -> Answer {
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        Answer {
            status,
            retry_after,
            text,
        }
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }
}

/// Reads a platform's answer to one request and classifies it with the platform's `classify`: a
/// transport error (no answer) is retryable; otherwise the status, `Retry-After` and body decide.
pub(crate) async fn read_answer(
    platform: &str,
    response: Result<reqwest::Response, reqwest::Error>,
    classify: fn(reqwest::StatusCode, Option<Duration>, &str) -> BatchAnswer,
) -> BatchAnswer {
    match response {
        Err(e) => transport_error(platform, e),
        Ok(r) => {
            let answer = Answer::read(r).await;
            classify(answer.status, answer.retry_after, &answer.text)
        }
    }
}

/// Parses a `Retry-After` header: delay seconds or an HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    parse_retry_after(value, Utc::now())
}

/// Parses a `Retry-After` value relative to `now`; an HTTP date in the past means no delay.
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// A retry held back for an operator (credentials, permissions, a switched-off API version): hammering
/// the platform helps nobody, but the rows stay pending so that fixing the config loses nothing.
pub(crate) fn operator_retry(error: String, retry_after: Option<Duration>) -> BatchAnswer {
    BatchAnswer::NeedsOperator { error, retry_after }
}

/// True for HTTP statuses worth retrying: 408, 429 and 5xx.
pub(crate) fn is_retryable_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

/// A short, single-line excerpt of an unparseable response body for `last_error`.
pub(crate) fn excerpt(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn excerpts_are_single_line_and_bounded() {
        let long = "a\nb ".repeat(300);
        let e = excerpt(&long);
        assert!(!e.contains('\n'));
        assert!(e.chars().count() <= 201);
    }
}

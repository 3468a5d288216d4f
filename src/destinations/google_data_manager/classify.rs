//! Data Manager answers: accepted with a request id, invalid events named by their field paths, or
//! refused as a whole (retried, or left for an operator).

use super::*;

/// What one ingest request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestAnswer {
    /// Accepted, with the request id.
    Accepted(Option<String>),
    /// Refused because of these events (indices into the request's events), with Google's words.
    Invalid(Vec<(usize, String)>),
    /// Refused as a whole, or no answer: a retry, or [`BatchAnswer::NeedsOperator`] where the setup
    /// is at fault.
    Whole(BatchAnswer),
    /// 401: the token was refused.
    Unauthorized(String),
}

/// The first `events[i]` index in a field path such as `events[3].user_data.user_identifiers[0]`.
fn event_index(path: &str) -> Option<usize> {
    let at = path.find("events[")? + "events[".len();
    let rest = &path[at..];
    rest[..rest.find(']')?].parse().ok()
}

/// Classifies Data Manager's answer to one ingest request of `len` events.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    len: usize,
) -> IngestAnswer {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if status.is_success() {
        let id = parsed
            .get("requestId")
            .and_then(Value::as_str)
            .map(str::to_string);
        return IngestAnswer::Accepted(id);
    }
    let error = parsed.get("error").unwrap_or(&Value::Null);
    let s = |k: &str| error.get(k).and_then(Value::as_str);
    let message = match (s("status"), s("message")) {
        (Some(st), Some(m)) => format!("google data manager: HTTP {} {st}: {m}", status.as_u16()),
        (None, Some(m)) => format!("google data manager: HTTP {}: {m}", status.as_u16()),
        _ => format!(
            "google data manager: HTTP {}: {}",
            status.as_u16(),
            excerpt(body)
        ),
    };
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return IngestAnswer::Unauthorized(message);
    }
    if is_retryable_status(status) {
        return IngestAnswer::Whole(BatchAnswer::Retry {
            error: message,
            retry_after,
        });
    }
    if status == reqwest::StatusCode::BAD_REQUEST {
        let mut invalid: Vec<(usize, String)> = Vec::new();
        for v in violations(error) {
            let (field, description) = (field(v, "field"), field(v, "description"));
            let reason = v.get("reason").and_then(Value::as_str);
            if let Some(i) = event_index(field).filter(|&i| i < len) {
                let words = match reason {
                    Some(r) => format!("google data manager: {r}: {field}: {description}"),
                    None => format!("google data manager: {field}: {description}"),
                };
                match invalid.iter_mut().find(|(j, _)| *j == i) {
                    Some((_, text)) => {
                        text.push_str("; ");
                        text.push_str(&words);
                    }
                    None => invalid.push((i, words)),
                }
            }
        }
        if !invalid.is_empty() {
            return IngestAnswer::Invalid(invalid);
        }
    }
    // The request as a whole (destination, account, permission, terms): an operator must act.
    IngestAnswer::Whole(operator_retry(message, retry_after))
}

/// The field violations of a Google error (`details[].fieldViolations[]`).
pub(super) fn violations(error: &Value) -> impl Iterator<Item = &Value> {
    error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("fieldViolations").and_then(Value::as_array))
        .flatten()
}

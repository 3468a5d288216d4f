//! Meta's answers: a Graph error envelope is retried, held for the operator or blamed on the events.

use crate::destinations::batch::BatchAnswer;
use crate::destinations::event_fields::by_status;
use crate::destinations::http::{excerpt, is_retryable_status};
use serde_json::Value;

/// Graph error codes that mean "try again later": unknown/temporary errors and throttling (§1.7).
fn is_transient_code(code: i64) -> bool {
    matches!(code, 1 | 2 | 4 | 17 | 32 | 341 | 613) || (80_000..=80_099).contains(&code)
}

/// Graph error codes about the token or its permissions: no event is to blame.
fn is_auth_code(code: i64) -> bool {
    matches!(code, 10 | 102 | 190) || (200..=299).contains(&code)
}

/// Turns Meta's answer into a batch answer. A 200 accepts the whole batch; a Graph error envelope is
/// retried when transient, held back (auth) when the token is at fault, and otherwise blamed on the
/// batch's events (to be bisected).
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &str,
) -> BatchAnswer {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if status.is_success() {
        let trace = parsed
            .as_ref()
            .and_then(|v| v.get("fbtrace_id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        return BatchAnswer::Sent(trace);
    }
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let Some(error) = error else {
        let message = format!("meta: HTTP {}: {}", status.as_u16(), excerpt(body));
        return by_status(status, retry_after, message, &[]);
    };
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let message = describe(status, error);
    let transient = error.get("is_transient").and_then(Value::as_bool) == Some(true);
    if is_retryable_status(status) || transient || is_transient_code(code) {
        BatchAnswer::Retry {
            error: message,
            retry_after,
        }
    } else if is_auth_code(code) || status == reqwest::StatusCode::UNAUTHORIZED {
        BatchAnswer::NeedsOperator {
            error: message,
            retry_after,
        }
    } else {
        BatchAnswer::Rejected(message)
    }
}

/// Meta's error, verbatim: type, code, subcode, message and the user-facing title and text.
fn describe(status: reqwest::StatusCode, error: &Value) -> String {
    let s = |k: &str| {
        error
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let n = |k: &str| error.get(k).and_then(Value::as_i64);
    let mut out = format!("meta: HTTP {}", status.as_u16());
    if let Some(t) = s("type") {
        out.push_str(&format!(" {t}"));
    }
    if let Some(c) = n("code") {
        out.push_str(&format!(" code {c}"));
    }
    if let Some(c) = n("error_subcode") {
        out.push_str(&format!(" subcode {c}"));
    }
    out.push_str(": ");
    out.push_str(s("message").unwrap_or("(no message)"));
    match (s("error_user_title"), s("error_user_msg")) {
        (Some(t), Some(m)) => out.push_str(&format!(" ({t}: {m})")),
        (None, Some(m)) | (Some(m), None) => out.push_str(&format!(" ({m})")),
        (None, None) => {}
    }
    if let Some(t) = s("fbtrace_id") {
        out.push_str(&format!(" [fbtrace_id {t}]"));
    }
    out
}

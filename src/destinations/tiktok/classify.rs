//! TikTok's answers: the `code` of an HTTP 200 body decides, the status otherwise.

use super::{CODE_AUTH, CODE_OK, CODE_RATE_LIMIT};
use crate::destinations::batch::BatchAnswer;
use crate::destinations::event_fields::by_status;
use crate::destinations::http::excerpt;
use serde_json::Value;

/// Turns TikTok's answer into a batch answer: the body's `code` decides (0 sent, 40100 and 5xxxx system
/// errors retried, 40001 held back for the operator, anything else blamed on the events and bisected).
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &str,
) -> BatchAnswer {
    let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let field = |k: &str| answer.get(k).and_then(Value::as_str);
    let code = answer.get("code").and_then(Value::as_i64);
    let (Some(code), true) = (code, status.is_success()) else {
        let words = field("message").map_or_else(|| excerpt(body), str::to_string);
        let message = format!("tiktok: HTTP {}: {words}", status.as_u16());
        return by_status(status, retry_after, message, &[401, 403]);
    };
    if code == CODE_OK {
        return BatchAnswer::Sent(field("request_id").map(str::to_string));
    }
    let mut message = format!(
        "tiktok: code {code}: {}",
        field("message").unwrap_or("(no message)")
    );
    if let Some(id) = field("request_id") {
        message.push_str(&format!(" [request_id {id}]"));
    }
    match code {
        CODE_RATE_LIMIT | 50_000..=59_999 => BatchAnswer::Retry {
            error: message,
            retry_after,
        },
        CODE_AUTH => BatchAnswer::NeedsOperator {
            error: message,
            retry_after,
        },
        _ => BatchAnswer::Rejected(message),
    }
}

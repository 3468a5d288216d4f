//! Microsoft Advertising answers, read from the body whatever the status: throttling, faults (retried
//! or left for an operator), `PartialErrors` and `BatchErrors` mapped to their rows by `Index`.

use super::*;

/// One Microsoft error (`BatchError`, `OperationError` or `AdApiError`).
#[derive(Debug, Clone, PartialEq)]
pub struct MsError {
    /// The numeric code (`117`).
    pub code: Option<i64>,
    /// The symbolic code (`CallRateExceeded`).
    pub error_code: String,
    /// Microsoft's message.
    pub message: String,
    /// The row index, for batch errors.
    pub index: Option<usize>,
}

impl MsError {
    /// `ErrorCode (Code): Message`, Microsoft's own words.
    pub fn describe(&self) -> String {
        let mut out = self.error_code.clone();
        if let Some(code) = self.code {
            out.push_str(&format!(" ({code})"));
        }
        if !self.message.is_empty() {
            out.push_str(&format!(": {}", first_line(&self.message)));
        }
        out
    }

    /// Error 117: too many calls in the last 60 seconds.
    fn is_throttle(&self) -> bool {
        self.code == Some(117) || self.error_code == "CallRateExceeded"
    }
}

/// The errors of a JSON array field.
pub(super) fn errors(body: &Value, field: &str) -> Vec<MsError> {
    body.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| MsError {
            code: e.get("Code").and_then(Value::as_i64),
            error_code: e
                .get("ErrorCode")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            message: e
                .get("Message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            index: e
                .get("Index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok()),
        })
        .collect()
}

/// Whether an error text says the access token expired (Microsoft answers this even with HTTP 200).
pub(super) fn is_expired_token(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("authenticationtokenexpired") || lower.contains("authentication token expired")
}

/// What one row error means for its row.
pub fn row_outcome(e: &MsError) -> Outcome {
    let error = e.describe();
    if e.is_throttle() {
        return Outcome::Retry {
            error,
            retry_after: Some(THROTTLE_DELAY),
        };
    }
    match e.error_code.as_str() {
        // A goal created less than two hours ago does not take conversions yet.
        "OfflineConversionNotAcceptedForGoal" => Outcome::Retry {
            error,
            retry_after: Some(GOAL_NOT_READY_DELAY),
        },
        // Microsoft's own temporary failure.
        "OfflineConversionsApplyFailed" | "InternalError" => Outcome::retry(error),
        // Time-window, click-id, name, value and currency errors are the row's: they stay failed.
        _ => Outcome::failed(error),
    }
}

/// Turns Microsoft's answer to a request carrying `count` rows into per-row outcomes, or a
/// whole-request answer. The body decides, whatever the status: a 200 may carry a fault.
pub fn classify(
    status: reqwest::StatusCode,
    tracking: Option<String>,
    body: &str,
    count: usize,
) -> Answer {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let tracking = tracking.or_else(|| {
        parsed
            .get("TrackingId")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let request_errors: Vec<MsError> = ["Errors", "OperationErrors"]
        .iter()
        .flat_map(|f| errors(&parsed, f))
        .collect();
    let mut row_errors = errors(&parsed, "PartialErrors");
    let fault_rows = errors(&parsed, "BatchErrors");
    // Row errors inside a fault (not a 200 with `PartialErrors`): the call failed, so the rows it
    // names nothing against are not known to be applied.
    let failed_call = !fault_rows.is_empty() || !status.is_success();
    row_errors.extend(fault_rows);
    if let Some(answer) = whole_request(status, &parsed, body, &request_errors, &row_errors) {
        return Answer::Batch(answer);
    }
    let sent = Outcome::Sent {
        platform_ref: tracking,
    };
    Answer::Rows(per_row(status, &row_errors, count, failed_call, sent))
}

/// The answer for the whole request, when no row is to blame: throttling, a fault (a request-level
/// error, an authentication error, or no JSON at all), or a refused call naming no row.
fn whole_request(
    status: reqwest::StatusCode,
    parsed: &Value,
    body: &str,
    request_errors: &[MsError],
    row_errors: &[MsError],
) -> Option<BatchAnswer> {
    let all = request_errors.iter().chain(row_errors);
    if all.clone().any(MsError::is_throttle) {
        let first = all.clone().find(|e| e.is_throttle()).map(MsError::describe);
        return Some(BatchAnswer::Retry {
            error: format!(
                "microsoft ads: HTTP {}: {}",
                status.as_u16(),
                first.unwrap_or_default()
            ),
            retry_after: Some(THROTTLE_DELAY),
        });
    }
    let fault_code = parsed
        .get("ErrorCode")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    if !request_errors.is_empty() || fault_code.is_some() || !parsed.is_object() {
        // A fault (a request-level error, an authentication error, or no JSON at all): nothing of
        // the request was applied, and no row is to blame. Temporary or the operator's to fix: the
        // rows stay pending.
        let message = match (request_errors.first(), fault_code) {
            (Some(e), _) => e.describe(),
            (None, Some(code)) => {
                let text = parsed
                    .get("ErrorMessage")
                    .or_else(|| parsed.get("Message"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                format!("{code}: {}", first_line(text))
            }
            (None, None) => excerpt(body),
        };
        let error = format!("microsoft ads: HTTP {}: {message}", status.as_u16());
        let temporary = status.is_server_error()
            && request_errors
                .iter()
                .all(|e| e.error_code.is_empty() || e.error_code == "InternalError");
        return Some(retry_or_operator(
            is_expired_token(&error) || temporary,
            error,
        ));
    }
    if !status.is_success() && row_errors.is_empty() {
        let error = format!("microsoft ads: HTTP {}: {}", status.as_u16(), excerpt(body));
        return Some(retry_or_operator(is_retryable_status(status), error));
    }
    None
}

/// A retry when `temporary`, else a wait for an operator.
fn retry_or_operator(temporary: bool, error: String) -> BatchAnswer {
    if temporary {
        BatchAnswer::Retry {
            error,
            retry_after: None,
        }
    } else {
        operator_retry(error, None)
    }
}

/// One outcome per row of a request Microsoft processed: each row error on its row by `Index`, the
/// rows without one `sent` (or retried when the call failed for other rows).
fn per_row(
    status: reqwest::StatusCode,
    row_errors: &[MsError],
    count: usize,
    failed_call: bool,
    sent: Outcome,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; count];
    let mut unplaced = Vec::new();
    for e in row_errors {
        match e.index.filter(|&i| i < count) {
            Some(i) => {
                let o = row_outcome(e);
                outcomes[i] = Some(match outcomes[i].take() {
                    Some(Outcome::Failed { error }) => match o {
                        Outcome::Failed { error: more } => {
                            Outcome::failed(format!("{error}; {more}"))
                        }
                        _ => Outcome::Failed { error },
                    },
                    Some(prev @ Outcome::Retry { .. }) if !matches!(o, Outcome::Failed { .. }) => {
                        prev
                    }
                    _ => o,
                });
            }
            None => unplaced.push(e),
        }
    }
    if let Some(e) = unplaced.first() {
        // An error naming no row of this request: no row can be said to have been applied.
        let error = format!("microsoft ads: {}", e.describe());
        for slot in outcomes.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(Outcome::needs_operator(error.clone()));
        }
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                if failed_call {
                    // Resending is safe: Microsoft ignores a conversion it already has.
                    Outcome::retry(format!(
                        "microsoft ads: HTTP {}: the call failed for other rows of the request",
                        status.as_u16()
                    ))
                } else {
                    sent.clone()
                }
            })
        })
        .collect()
}

//! Google Ads answers: a 200's `partialFailureError` mapped back to rows by index; a refused request
//! retried, left for an operator, or bisected when its error names a row.

use super::*;

/// Google's code for an account or developer token that may not use a feature; since 15 June 2026 it
/// answers click conversion uploads of everyone who did not import offline conversions before.
pub const NOT_ALLOWLISTED: &str = "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE";

/// What a row refused with [`NOT_ALLOWLISTED`] is recorded with: what to do, then Google's words.
pub const NOT_ALLOWLISTED_ADVICE: &str = "this Google Ads API access cannot import offline \
     conversions since 15 June 2026: use platform = google_data_manager";

/// The failure of a row Google refused with [`NOT_ALLOWLISTED`].
fn not_allowlisted(google: &str) -> Outcome {
    Outcome::failed(format!(
        "{NOT_ALLOWLISTED_ADVICE} ({NOT_ALLOWLISTED}: {google})"
    ))
}

/// Answers meaning the platform already has the conversion or adjustment: sent (§2.1, §8 item 10).
const ALREADY_THERE: &[&str] = &[
    "ORDER_ID_ALREADY_IN_USE",
    "CLICK_CONVERSION_ALREADY_EXISTS",
    "RESTATEMENT_ALREADY_EXISTS",
    "CONVERSION_ALREADY_RETRACTED",
];

/// One Google Ads error: its family (`conversionUploadError`), code, message and row index.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AdsError {
    /// The error family, e.g. `conversionUploadError`.
    pub(super) family: String,
    /// The code, e.g. `EXPIRED_EVENT`.
    pub(super) code: String,
    /// Google's message.
    pub(super) message: String,
    /// The row index from `location.fieldPathElements`, if the error names a row.
    pub(super) index: Option<usize>,
}

/// The errors of a `GoogleAdsFailure` list (`details[].errors[]`).
pub(super) fn ads_errors(status: &Value) -> Vec<AdsError> {
    let mut out = Vec::new();
    let details = status.get("details").and_then(Value::as_array);
    for detail in details.into_iter().flatten() {
        for e in detail
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (family, code) = e
                .get("errorCode")
                .and_then(Value::as_object)
                .and_then(|m| m.iter().next())
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .unwrap_or_default();
            let index = e
                .pointer("/location/fieldPathElements")
                .and_then(Value::as_array)
                .and_then(|path| path.iter().find_map(|p| p.get("index")))
                .and_then(Value::as_u64)
                .map(|i| i as usize);
            out.push(AdsError {
                family,
                code,
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                index,
            });
        }
    }
    out
}

/// What one row error means for its row.
fn row_outcome(
    e: &AdsError,
    d: &Delivery,
    platform_ref: &Option<String>,
    now: DateTime<Utc>,
) -> Outcome {
    let error = format!("{}: {}", e.code, e.message);
    if ALREADY_THERE.contains(&e.code.as_str()) {
        return Outcome::Sent {
            platform_ref: platform_ref.clone(),
        };
    }
    match e.code.as_str() {
        NOT_ALLOWLISTED => not_allowlisted(&e.message),
        "TOO_RECENT_EVENT" => {
            let ready = d
                .payload
                .click_time
                .map(|c| c + TimeDelta::hours(MIN_CLICK_AGE_HOURS));
            let wait = ready
                .and_then(|r| (r - now).to_std().ok())
                .unwrap_or(Duration::from_secs(3600))
                .max(Duration::from_secs(600));
            Outcome::Retry {
                error,
                retry_after: Some(wait),
            }
        }
        "TOO_RECENT_CONVERSION_ACTION" => Outcome::Retry {
            error,
            retry_after: Some(Duration::from_secs(3600)),
        },
        // Google's error enum for adjustments still lists a conversion "too recent" to adjust (the
        // old 24 h wait, lifted in Sep 2024 per §2.2): should it come back, it is worth waiting for.
        "TOO_RECENT_CONVERSION" => Outcome::Retry {
            error,
            retry_after: Some(Duration::from_secs(3600)),
        },
        // Another row of the same request carried this order id; alone it is either new or a duplicate.
        "DUPLICATE_ORDER_ID" => Outcome::retry(error),
        // Enhanced conversions for leads without a Google click: expected, nothing to attribute (§2.3).
        "CLICK_NOT_FOUND" if !has_click_id(d) => Outcome::skipped(error),
        _ if matches!(e.family.as_str(), "internalError" | "quotaError") => Outcome::retry(error),
        _ => Outcome::failed(error),
    }
}

/// Whether the row carries a Google click id.
fn has_click_id(d: &Delivery) -> bool {
    [MatchKey::Gclid, MatchKey::Gbraid, MatchKey::Wbraid]
        .iter()
        .any(|k| d.payload.keys.contains_key(k))
}

/// Combines several outcomes for one row: a failure wins, then a retry, then a skip, then sent.
fn worst(a: Outcome, b: Outcome) -> Outcome {
    /// Severity order.
    fn rank(o: &Outcome) -> u8 {
        match o {
            Outcome::Failed { .. } => 3,
            Outcome::Retry { .. } | Outcome::NeedsOperator { .. } => 2,
            Outcome::Skipped { .. } => 1,
            Outcome::Sent { .. } => 0,
        }
    }
    match (a, b) {
        (Outcome::Failed { error: x }, Outcome::Failed { error: y }) => Outcome::Failed {
            error: format!("{x}; {y}"),
        },
        (a, b) if rank(&b) > rank(&a) => b,
        (a, _) => a,
    }
}

/// A 200: each `partialFailureError` error goes to its row by index (rows without one are sent);
/// errors naming no row fail the rows Google returned no result for.
fn accepted(parsed: &Value, sent: &[&Delivery], now: DateTime<Utc>) -> UploadAnswer {
    let platform_ref = parsed
        .get("jobId")
        .map(|j| match j {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .or_else(|| {
            parsed
                .get("results")
                .is_none()
                .then(|| "validate_only".to_string())
        });
    let mut outcomes: Vec<Option<Outcome>> = vec![None; sent.len()];
    if let Some(failure) = parsed.get("partialFailureError").filter(|f| !f.is_null()) {
        let errors = ads_errors(failure);
        let mut unplaced = Vec::new();
        for e in &errors {
            match e.index.filter(|&i| i < sent.len()) {
                Some(i) => {
                    let o = row_outcome(e, sent[i], &platform_ref, now);
                    outcomes[i] = Some(match outcomes[i].take() {
                        Some(prev) => worst(prev, o),
                        None => o,
                    });
                }
                None => unplaced.push(e),
            }
        }
        let summary = failure
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("partial failure")
            .to_string();
        let results = parsed.get("results").and_then(Value::as_array);
        if errors.is_empty() || !unplaced.is_empty() {
            // Errors that name no row: blame the rows Google returned no result for.
            let message = unplaced
                .first()
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or(summary);
            for (i, slot) in outcomes.iter_mut().enumerate() {
                let empty = results
                    .and_then(|r| r.get(i))
                    .is_none_or(|r| r.as_object().is_none_or(Map::is_empty));
                if slot.is_none() && empty {
                    *slot = Some(Outcome::failed(message.clone()));
                }
            }
        }
    }
    UploadAnswer::Rows(
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome::Sent {
                    platform_ref: platform_ref.clone(),
                })
            })
            .collect(),
    )
}

/// Whether a refused request's field violations point into the rows (`conversions[i]`, ...).
fn violations_name_a_row(error: &Value) -> bool {
    error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|d| {
            d.get("fieldViolations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .any(|v| {
            let text = format!(
                "{} {}",
                v.get("field").and_then(Value::as_str).unwrap_or_default(),
                v.get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
            text.contains("conversions[")
                || text.contains("conversion_adjustments[")
                || text.contains("conversionAdjustments[")
        })
}

/// Turns Google's answer to an upload of `sent` into per-row outcomes, or a whole-request answer.
///
/// A 200 maps each `partialFailureError` error to its row by index (rows without one are sent). A
/// refused request is retried when temporary (5xx, 429), left for an operator when the credentials
/// or account settings are at fault (no row named), and bisected when its error names a row.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    sent: &[&Delivery],
    now: DateTime<Utc>,
) -> UploadAnswer {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if status.is_success() {
        return accepted(&parsed, sent, now);
    }
    let error = parsed.get("error").unwrap_or(&Value::Null);
    let message = describe(status, error, body);
    if is_retryable_status(status) {
        return UploadAnswer::Batch(BatchAnswer::Retry {
            error: message,
            retry_after,
        });
    }
    let errors = ads_errors(error);
    if let Some(e) = errors.iter().find(|e| e.code == NOT_ALLOWLISTED) {
        // Not a retry: this access will not be allowed by waiting. Every row says what to do.
        return UploadAnswer::Rows(sent.iter().map(|_| not_allowlisted(&e.message)).collect());
    }
    let expired = errors.iter().any(|e| e.code == "OAUTH_TOKEN_EXPIRED");
    if status == reqwest::StatusCode::UNAUTHORIZED && expired {
        // The cached token has been dropped; the next attempt fetches a new one.
        return UploadAnswer::Batch(BatchAnswer::Retry {
            error: message,
            retry_after: None,
        });
    }
    let names_a_row = errors.iter().any(|e| e.index.is_some()) || violations_name_a_row(error);
    if status == reqwest::StatusCode::BAD_REQUEST && names_a_row {
        UploadAnswer::Batch(BatchAnswer::Rejected(message))
    } else {
        UploadAnswer::Batch(operator_retry(message, retry_after))
    }
}

/// Google's request-level error, verbatim: status, message and each detailed error code and message.
fn describe(status: reqwest::StatusCode, error: &Value, body: &str) -> String {
    let Some(message) = error.get("message").and_then(Value::as_str) else {
        return format!("google ads: HTTP {}: {}", status.as_u16(), excerpt(body));
    };
    let mut out = format!("google ads: HTTP {}", status.as_u16());
    if let Some(s) = error.get("status").and_then(Value::as_str) {
        out.push_str(&format!(" {s}"));
    }
    out.push_str(&format!(": {message}"));
    let details: Vec<String> = ads_errors(error)
        .into_iter()
        .map(|e| format!("{}: {}", e.code, e.message))
        .collect();
    if !details.is_empty() {
        out.push_str(&format!(" [{}]", details.join("; ")));
    }
    out
}

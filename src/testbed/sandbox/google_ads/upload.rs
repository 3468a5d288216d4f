//! What the two upload methods share: the request envelope (body shape, partial failure, 1 to
//! `max` rows), the run of the rows against the ledger (a scratch copy when `validateOnly`), the
//! counters, and the answer with `results` and `partialFailureError`.

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{json, Map, Value};

use super::{fail, failure_type, invalid_argument, schema, Call, Ledger, RowError};
use crate::testbed::sandbox::records::GoogleAdsRecords;
use crate::testbed::sandbox::{json_response, random_id, Shared};

/// What an upload endpoint checks before its rows: the body's shape, then that its `collection` array
/// (`conversions` or `conversionAdjustments`) holds 1 to `max` rows. A refused request is counted and
/// answered with Google's request-level error.
pub(super) struct UploadEnvelope<'a> {
    pub(super) kind: &'a schema::Kind,
    /// The JSON field holding the rows.
    pub(super) field: &'a str,
    /// The field path Google names in its errors.
    pub(super) collection: &'a str,
    pub(super) max: usize,
    /// The message for a row that is not a JSON object.
    pub(super) not_object: &'a str,
    /// The error family and code, and the message, for more than `max` rows.
    pub(super) too_many: (&'a str, &'a str, &'a str),
}

impl UploadEnvelope<'_> {
    /// The parsed request when its envelope is valid.
    fn check(&self, shared: &Shared, ctx: &Call<'_>, body: &[u8]) -> Result<Value, Box<Response>> {
        let reject = |response: Response| {
            shared.lock().records.google_ads.counters.rejected_requests += 1;
            Box::new(response)
        };
        let request = parse_body(ctx, body, self.kind).map_err(|r| reject(*r))?;
        let rows = request
            .get(self.field)
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if rows == 0 {
            return Err(reject(collection_error(
                ctx,
                self.collection,
                "fieldError",
                "REQUIRED",
                "The required field was not present.",
            )));
        }
        if rows > self.max {
            let (family, code, message) = self.too_many;
            return Err(reject(collection_error(
                ctx,
                self.collection,
                family,
                code,
                message,
            )));
        }
        Ok(request)
    }

    /// The rows of a request [`UploadEnvelope::check`] accepted.
    fn rows<'v>(&self, request: &'v Value) -> &'v [Value] {
        request
            .get(self.field)
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
}

/// A request-level error with one GoogleAdsFailure error located at the collection.
fn collection_error(
    ctx: &Call<'_>,
    collection: &str,
    family: &str,
    code: &str,
    message: &str,
) -> Response {
    let detail = json!({"errorCode": {family: code}, "message": message,
        "location": {"fieldPathElements": [{"fieldName": collection}]}});
    invalid_argument(ctx, detail)
}

/// The success body: `results` (empty objects for failed rows) and `partialFailureError` if any row failed.
pub(super) fn upload_response(
    ctx: &Call<'_>,
    collection: &str,
    results: Vec<Value>,
    errors: &[(usize, RowError)],
    job_id: Option<i64>,
) -> Response {
    let mut body = json!({ "results": results });
    if !errors.is_empty() {
        let mut details = Vec::with_capacity(errors.len());
        let mut summary = Vec::with_capacity(errors.len());
        for (index, err) in errors {
            let mut path = vec![json!({"fieldName": collection, "index": index})];
            let mut at = format!("{collection}[{index}]");
            if let Some(field) = err.field {
                path.push(json!({"fieldName": field}));
                at = format!("{at}.{field}");
            }
            summary.push(format!("{}, at {at}", err.message));
            details.push(json!({
                "errorCode": {err.family: err.code},
                "message": err.message,
                "location": {"fieldPathElements": path},
            }));
        }
        body["partialFailureError"] = json!({
            "code": 3,
            "message": summary.join(", "),
            "details": [{"@type": failure_type(ctx), "errors": details, "requestId": random_id(22)}],
        });
    }
    // Google assigns a job id when the request did not set one; int64 is a string in proto JSON.
    let job = job_id.unwrap_or_else(|| rand::rng().random_range(1..i64::from(i32::MAX)));
    body["jobId"] = json!(job.to_string());
    json_response(StatusCode::OK, body)
}

/// Parses, camel-cases and shape-checks an upload body; `Err` is a whole-request 400.
pub(super) fn parse_body(
    ctx: &Call<'_>,
    body: &[u8],
    kind: &schema::Kind,
) -> Result<Value, Box<Response>> {
    let bad_request = |message: String| {
        let violation = json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"description": message}]});
        json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": {
                "code": 400, "message": message, "status": "INVALID_ARGUMENT", "details": [violation],
            }}),
        )
    };
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => schema::camelize_keys(v),
        _ => {
            return fail(bad_request(
                "Invalid JSON payload received. Expected a JSON object.".into(),
            ))
        }
    };
    schema::check(&value, kind, "").map_err(|m| Box::new(bad_request(m)))?;
    if value.get("partialFailure") != Some(&Value::Bool(true)) {
        let detail = json!({"errorCode": {"partialFailureError": "PARTIAL_FAILURE_MODE_REQUIRED"},
            "message": "The partial failure field must be set to true."});
        return fail(invalid_argument(ctx, detail));
    }
    Ok(value)
}

/// What one row of an upload came to.
pub(super) enum RowOutcome<T> {
    /// Refused by a rule or by the dedup: an empty result and an entry in `partialFailureError`.
    Failed(RowError),
    /// Accepted but changing nothing (counted as deduplicated): its result.
    Ignored(Value),
    /// Accepted and counted: its result and its record.
    Counted(Value, T),
}

impl UploadEnvelope<'_> {
    /// Runs one upload: checks the envelope, passes each row to `row` with the ledger (a scratch
    /// copy under `validateOnly`, so nothing sticks), the time and the count of resent rows, then —
    /// unless validating — updates the counters and hands the counted records to `keep`.
    pub(super) fn run<T>(
        &self,
        shared: &Shared,
        ctx: &Call<'_>,
        body: &[u8],
        mut row: impl FnMut(&mut Ledger, &Map<String, Value>, DateTime<Utc>, &mut u64) -> RowOutcome<T>,
        keep: impl FnOnce(&mut GoogleAdsRecords, Vec<T>),
    ) -> Response {
        let request = match self.check(shared, ctx, body) {
            Ok(request) => request,
            Err(response) => return *response,
        };
        let rows = self.rows(&request);
        let validate_only = request.get("validateOnly") == Some(&Value::Bool(true));
        let now = Utc::now();
        let mut guard = shared.lock();
        let state = &mut *guard;
        let mut scratch = None;
        let ledger = if validate_only {
            scratch.insert(state.google.clone())
        } else {
            &mut state.google
        };
        let (mut results, mut errors, mut counted) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ignored, mut resent) = (0u64, 0u64);
        for (i, raw) in rows.iter().enumerate() {
            let outcome = match raw.as_object() {
                Some(obj) => row(ledger, obj, now, &mut resent),
                None => RowOutcome::Failed(RowError::new(
                    "fieldError",
                    "REQUIRED",
                    None,
                    self.not_object.to_string(),
                )),
            };
            match outcome {
                RowOutcome::Failed(e) => {
                    errors.push((i, e));
                    results.push(json!({}));
                }
                RowOutcome::Ignored(result) => {
                    ignored += 1;
                    results.push(result);
                }
                RowOutcome::Counted(result, record) => {
                    results.push(result);
                    counted.push(record);
                }
            }
        }
        if !validate_only {
            let records = &mut state.records.google_ads;
            let duplicates = errors.iter().filter(|(_, e)| e.is_duplicate()).count() as u64;
            records.counters.accepted += counted.len() as u64;
            records.counters.unique += counted.len() as u64;
            records.counters.received += rows.len() as u64;
            records.counters.deduplicated += duplicates + ignored;
            records.counters.rejected += errors.len() as u64 - duplicates;
            records.counters.duplicate_sends += resent;
            keep(records, counted);
        }
        drop(guard);
        let job_id = request
            .get("jobId")
            .and_then(crate::testbed::sandbox::as_unix_seconds);
        upload_response(ctx, self.collection, results, &errors, job_id)
    }
}

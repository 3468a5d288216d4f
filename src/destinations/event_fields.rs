//! What the event platforms with per-event answers share (Snapchat, Pinterest): the `user_data`
//! object of a row's match keys, the `value`/`currency` pair, one `{"data": […]}` request per batch,
//! and spreading the per-event statuses of its answer over the rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::{
    observe_request, retry_after, transport_error, value_number, BatchAnswer, Outcome, Picked,
    PlannedRequest, Preview,
};
use crate::event::Delivery;
use crate::identity::MatchKey;

/// The `user_data` object of a row: each key the platform names (`field` gives its name and whether
/// it is a hash) with hashes as one-element lists and clear values as strings.
pub(crate) fn user_data(
    d: &Delivery,
    field: fn(MatchKey) -> Option<(&'static str, bool)>,
) -> Map<String, Value> {
    let mut user = Map::new();
    for (key, value) in &d.payload.keys {
        match field(*key) {
            Some((name, true)) => user.insert(name.into(), json!([value])),
            Some((name, false)) => user.insert(name.into(), json!(value)),
            None => None,
        };
    }
    user
}

/// `custom_data` with the row's `value` (a JSON number, or a string where the platform wants one)
/// and upper-case `currency`; a value that is not a number fails the row.
pub(crate) fn custom_value(
    d: &Delivery,
    platform: &str,
    value_as_string: bool,
) -> Result<Map<String, Value>, Outcome> {
    let mut custom = Map::new();
    match value_number(d) {
        Ok(Some(v)) if value_as_string => {
            custom.insert("value".into(), json!(v.to_string()));
        }
        Ok(Some(v)) => {
            custom.insert("value".into(), Value::Number(v));
        }
        Ok(None) => {}
        Err(e) => return Err(Outcome::failed(format!("{platform}: {e}"))),
    }
    if let Some(c) = d
        .currency
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        custom.insert("currency".into(), json!(c.to_ascii_uppercase()));
    }
    Ok(custom)
}

/// Pairs each row of a request with the platform's verdict on it (`slots`, in request order); a row
/// the answer did not mention is retried, so that it is never lost.
pub(crate) fn spread(
    rows: &[usize],
    slots: Vec<Option<Outcome>>,
    platform: &str,
) -> Vec<(usize, Outcome)> {
    rows.iter()
        .copied()
        .zip(slots)
        .map(|(row, slot)| {
            let missing =
                || Outcome::retry(format!("{platform}: the answer did not mention this event"));
            (row, slot.unwrap_or_else(missing))
        })
        .collect()
}

/// A batch encoded for one request: each row's event (`Null` where none), the rows the request
/// carries, and the rows decided without a request.
pub(crate) struct Encoded {
    /// One event per row of the batch.
    pub events: Vec<Value>,
    /// The rows sent.
    pub rows: Vec<usize>,
    /// The rows not sent, with their outcome.
    pub outcomes: Vec<(usize, Outcome)>,
}

/// Encodes every row of `batch` with the platform's `encode`.
pub(crate) fn encode_all(
    batch: &[Delivery],
    now: DateTime<Utc>,
    encode: fn(&Delivery, DateTime<Utc>) -> Result<Value, Outcome>,
) -> Encoded {
    let mut encoded = Encoded {
        events: Vec::with_capacity(batch.len()),
        rows: Vec::with_capacity(batch.len()),
        outcomes: Vec::new(),
    };
    for (i, d) in batch.iter().enumerate() {
        match encode(d, now) {
            Ok(event) => {
                encoded.events.push(event);
                encoded.rows.push(i);
            }
            Err(outcome) => {
                encoded.events.push(Value::Null);
                encoded.outcomes.push((i, outcome));
            }
        }
    }
    encoded
}

/// The platform's verdict on one request: status, `Retry-After`, body and the rows it carried.
pub(crate) type Classify =
    fn(reqwest::StatusCode, Option<Duration>, &str, &[usize]) -> Vec<(usize, Outcome)>;

/// Sends `{"data": [the events of rows]}` with `request` (URL and credentials set) and spreads the
/// answer over the rows; a transport error retries them all. Counted in the request metrics.
pub(crate) async fn post_events(
    destination: &str,
    platform: &str,
    request: reqwest::RequestBuilder,
    encoded: &Encoded,
    classify: Classify,
) -> Vec<(usize, Outcome)> {
    if encoded.rows.is_empty() {
        return Vec::new();
    }
    let started = std::time::Instant::now();
    let body = DataEnvelope {
        data: Picked {
            items: &encoded.events,
            indices: &encoded.rows,
        },
    };
    let outcomes = match request.json(&body).send().await {
        Err(e) => {
            let error = match transport_error(platform, e) {
                BatchAnswer::Retry { error, .. } => error,
                other => format!("{other:?}"),
            };
            let retry = Outcome::retry(error);
            encoded.rows.iter().map(|&i| (i, retry.clone())).collect()
        }
        Ok(response) => {
            let status = response.status();
            let delay = retry_after(response.headers());
            let text = response.text().await.unwrap_or_default();
            classify(status, delay, &text, &encoded.rows)
        }
    };
    observe_request(destination, started, &summary(&outcomes));
    outcomes
}

/// `{"data": [...]}`, the events borrowed from the encoded batch.
#[derive(serde::Serialize)]
struct DataEnvelope<'a> {
    data: Picked<'a>,
}

/// The request as one answer, for the request metrics: retried if any row is, rejected if any failed.
fn summary(outcomes: &[(usize, Outcome)]) -> BatchAnswer {
    let any = |f: fn(&Outcome) -> bool| outcomes.iter().any(|(_, o)| f(o));
    if any(|o| matches!(o, Outcome::Retry { .. })) {
        BatchAnswer::Retry {
            error: String::new(),
            retry_after: None,
        }
    } else if any(|o| matches!(o, Outcome::Failed { .. })) {
        BatchAnswer::Rejected(String::new())
    } else {
        BatchAnswer::Sent(None)
    }
}

/// The dry-run view of an encoded batch: its one request, and the rows decided without it.
pub(crate) fn preview(url: String, encoded: Encoded) -> Preview {
    let requests = if encoded.rows.is_empty() {
        Vec::new()
    } else {
        let data: Vec<Value> = encoded
            .rows
            .iter()
            .map(|&i| encoded.events[i].clone())
            .collect();
        vec![PlannedRequest {
            url,
            rows: encoded.rows,
            body: json!({ "data": data }),
        }]
    };
    Preview {
        requests,
        not_sent: encoded.outcomes,
    }
}

//! Batches: the [`Plan`] of a batch's first attempt (shared by `send`, `preview` and `healthcheck`),
//! bisection of rejected requests ([`isolate`]), and putting per-row outcomes back in order.
//!
//! Every platform encodes a batch the same way: each row becomes one item of a request body, or an
//! outcome decided without a request (too old, no usable match key, cannot retract); the items are
//! grouped into requests (Meta one, TikTok web and CRM, Google conversions and adjustments, Data
//! Manager one per product destination). A [`Request`] is a URL plus a body made of fixed fields and
//! the items of its rows under one key, so that `preview` is written once and `send` serializes the
//! items straight from the plan without copying them.

use super::Outcome;
use crate::event::Delivery;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// One request a destination would send, as `pgcapi run --dry-run` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRequest {
    /// The URL posted to, without credentials (they travel in headers or the query string).
    pub url: String,
    /// The rows the request carries (indices into the batch).
    pub rows: Vec<usize>,
    /// The JSON body, exactly as it would be sent.
    pub body: Value,
}

/// What a destination would do with a batch (see [`super::Destination::preview`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preview {
    /// The requests it would send.
    pub requests: Vec<PlannedRequest>,
    /// Rows decided without a request (too old, no usable match key, cannot retract, ...).
    pub not_sent: Vec<(usize, Outcome)>,
}

/// One request of a plan: where it goes, which rows it carries, and its body's other fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The URL, without credentials.
    pub url: String,
    /// The rows it carries (indices into the batch), in batch order.
    pub rows: Vec<usize>,
    /// The body's field holding the rows' items (`data`, `conversions`, `events`, ...).
    pub items_key: &'static str,
    /// The body's other fields (test code, event source, `partialFailure`, destinations, ...).
    pub fields: Map<String, Value>,
}

impl Request {
    /// A request to `url` carrying its items under `items_key`, with no rows and no other field yet.
    pub fn new(url: impl Into<String>, items_key: &'static str) -> Request {
        Request {
            url: url.into(),
            rows: Vec::new(),
            items_key,
            fields: Map::new(),
        }
    }

    /// Adds the body field `key`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Request {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// The body carrying `rows` (a subset of [`Request::rows`] while bisecting) of `items`, borrowed.
    pub fn body<'a>(&'a self, items: &'a [Value], rows: &'a [usize]) -> Body<'a> {
        Body {
            request: self,
            items: Picked {
                items,
                indices: rows,
            },
        }
    }
}

/// A request body as sent: the request's fields and the items it carries, serialized without copies.
pub struct Body<'a> {
    request: &'a Request,
    items: Picked<'a>,
}

impl Body<'_> {
    /// How many items it carries.
    pub fn items(&self) -> usize {
        self.items.indices.len()
    }

    /// The body as a JSON value (copies the items).
    pub fn to_value(&self) -> Value {
        let mut body = self.request.fields.clone();
        let items = self
            .items
            .indices
            .iter()
            .map(|&i| self.items.items[i].clone());
        body.insert(self.request.items_key.to_string(), items.collect());
        Value::Object(body)
    }
}

impl serde::Serialize for Body<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.request.fields.len() + 1))?;
        map.serialize_entry(self.request.items_key, &self.items)?;
        for (key, value) in &self.request.fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// What a destination does with a batch on its first attempt (before any bisection): the encoded
/// items, the requests carrying them, and the rows decided without a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Each row's encoded item (`Null` for rows no request carries).
    pub items: Vec<Value>,
    /// The requests, in the order they are sent.
    pub requests: Vec<Request>,
    /// Rows decided without a request, with their outcome.
    pub not_sent: Vec<(usize, Outcome)>,
}

impl Plan {
    /// Encodes each row of `batch` with `encode`, which gives the row's group and item or the
    /// outcome that replaces sending it; then makes one request per non-empty group with `request`,
    /// groups in their order (so that, say, conversions go before the adjustments of the same batch).
    pub fn encode<G: Ord>(
        batch: &[Delivery],
        mut encode: impl FnMut(&Delivery) -> Result<(G, Value), Outcome>,
        request: impl Fn(&G) -> Request,
    ) -> Plan {
        let mut plan = Plan {
            items: Vec::with_capacity(batch.len()),
            ..Plan::default()
        };
        let mut groups: BTreeMap<G, Vec<usize>> = BTreeMap::new();
        for (i, d) in batch.iter().enumerate() {
            match encode(d) {
                Ok((group, item)) => {
                    plan.items.push(item);
                    groups.entry(group).or_default().push(i);
                }
                Err(outcome) => {
                    plan.items.push(Value::Null);
                    plan.not_sent.push((i, outcome));
                }
            }
        }
        plan.requests = groups
            .into_iter()
            .map(|(group, rows)| Request {
                rows,
                ..request(&group)
            })
            .collect();
        plan
    }

    /// A plan that sends nothing: every row of a batch of `len` gets `outcome`.
    pub fn none(len: usize, outcome: Outcome) -> Plan {
        Plan {
            items: vec![Value::Null; len],
            requests: Vec::new(),
            not_sent: (0..len).map(|i| (i, outcome.clone())).collect(),
        }
    }

    /// Adds `other`, the plan of a sub-batch whose row `j` is row `rows[j]` of this plan's batch.
    pub fn merge(&mut self, other: Plan, rows: &[usize]) {
        for (j, item) in other.items.into_iter().enumerate() {
            self.items[rows[j]] = item;
        }
        self.requests
            .extend(other.requests.into_iter().map(|mut request| {
                request.rows = request.rows.iter().map(|&j| rows[j]).collect();
                request
            }));
        self.not_sent
            .extend(other.not_sent.into_iter().map(|(j, o)| (rows[j], o)));
    }

    /// The plan as `pgcapi run --dry-run` shows it: each request with its body as sent.
    pub fn preview(self) -> Preview {
        let requests = self
            .requests
            .iter()
            .map(|request| PlannedRequest {
                url: request.url.clone(),
                rows: request.rows.clone(),
                body: request.body(&self.items, &request.rows).to_value(),
            })
            .collect();
        Preview {
            requests,
            not_sent: self.not_sent,
        }
    }
}

/// Some of a batch's encoded items, serialized as a JSON array in the order of `indices` without
/// copying them (a request body borrows the items instead of cloning each one).
pub(crate) struct Picked<'a> {
    /// Every encoded item of the batch.
    pub items: &'a [Value],
    /// The items the request carries.
    pub indices: &'a [usize],
}

impl serde::Serialize for Picked<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.indices.iter().map(|&i| &self.items[i]))
    }
}

/// What one HTTP request carrying a whole batch came to, before it is spread over its rows.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchAnswer {
    /// Every event accepted.
    Sent(Option<String>),
    /// Temporary: retry the whole batch.
    Retry {
        /// What went wrong.
        error: String,
        /// The delay the platform asked for.
        retry_after: Option<Duration>,
    },
    /// Rejected, possibly because of one event: bisect to find it. Alone, the event failed.
    Rejected(String),
    /// No event is to blame and an operator must act first: every row stays pending
    /// ([`Outcome::NeedsOperator`]).
    NeedsOperator {
        /// What the operator must fix.
        error: String,
        /// The delay the platform asked for, if any.
        retry_after: Option<Duration>,
    },
}

impl BatchAnswer {
    /// The answer's error words (`Sent` has none: the caller expected a refusal).
    pub fn error(self) -> String {
        match self {
            BatchAnswer::Retry { error, .. }
            | BatchAnswer::NeedsOperator { error, .. }
            | BatchAnswer::Rejected(error) => error,
            BatchAnswer::Sent(_) => "no error".into(),
        }
    }

    /// The outcome of every row of a request that came to this answer (a rejection fails them all).
    pub fn outcome(self) -> Outcome {
        match self {
            BatchAnswer::Sent(platform_ref) => Outcome::Sent { platform_ref },
            BatchAnswer::Retry { error, retry_after } => Outcome::Retry { error, retry_after },
            BatchAnswer::Rejected(error) => Outcome::Failed { error },
            BatchAnswer::NeedsOperator { error, retry_after } => {
                Outcome::NeedsOperator { error, retry_after }
            }
        }
    }
}

/// Sends `rows` (indices into the caller's batch) with `send_one`, bisecting rejected batches until the
/// rejected events stand alone, so that one bad event only fails itself. Returns one outcome per index.
///
/// Halves are sent one after the other; a batch of n events with one bad event costs about 2·log₂ n
/// extra requests. A retry answer for any part applies to that part only.
pub(crate) async fn isolate<'a, F, Fut>(rows: Vec<usize>, send_one: F) -> Vec<(usize, Outcome)>
where
    F: Fn(Vec<usize>) -> Fut + 'a,
    Fut: Future<Output = BatchAnswer> + 'a,
{
    let mut out = Vec::with_capacity(rows.len());
    let mut todo = vec![rows];
    while let Some(part) = todo.pop() {
        if part.is_empty() {
            continue;
        }
        match send_one(part.clone()).await {
            BatchAnswer::Rejected(error) if part.len() == 1 => {
                out.push((part[0], Outcome::Failed { error }))
            }
            BatchAnswer::Rejected(_) => bisect(part, &mut todo),
            answer => {
                let outcome = answer.outcome();
                out.extend(part.into_iter().map(|i| (i, outcome.clone())));
            }
        }
    }
    out
}

/// Sends every request of `plan` with `post` (the request, and the rows of it to carry), bisecting
/// rejected requests with [`isolate`]: the `send` of platforms that reject a whole request for one
/// bad event. Returns one outcome per row sent; the plan's `not_sent` are the caller's to add.
pub(crate) async fn send_isolated<'p, F, Fut>(plan: &'p Plan, post: F) -> Vec<(usize, Outcome)>
where
    F: Fn(&'p Request, Vec<usize>) -> Fut,
    Fut: Future<Output = BatchAnswer> + 'p,
{
    let mut out = Vec::with_capacity(plan.items.len());
    for request in &plan.requests {
        out.extend(isolate(request.rows.clone(), |part| post(request, part)).await);
    }
    out
}

/// Splits `part` in halves onto `todo`, the second half first so that the first half is sent first.
pub(crate) fn bisect(mut part: Vec<usize>, todo: &mut Vec<Vec<usize>>) {
    let second = part.split_off(part.len() / 2);
    todo.push(second);
    todo.push(part);
}

/// Counts one platform request of `destination` that started at `started` and came to `answer`.
pub(crate) fn observe_request(
    destination: &str,
    started: std::time::Instant,
    answer: &BatchAnswer,
) {
    let outcome = match answer {
        BatchAnswer::Sent(_) => crate::metrics::RequestOutcome::Accepted,
        BatchAnswer::Rejected(_) => crate::metrics::RequestOutcome::Rejected,
        BatchAnswer::Retry { .. } | BatchAnswer::NeedsOperator { .. } => {
            crate::metrics::RequestOutcome::Retry
        }
    };
    crate::metrics::dispatch_request(destination, outcome, started.elapsed());
}

/// Puts per-index outcomes back into row order; any index without an outcome (a bug) becomes a retry,
/// so that a row is never lost.
pub(crate) fn in_order(
    len: usize,
    outcomes: impl IntoIterator<Item = (usize, Outcome)>,
) -> Vec<Outcome> {
    let mut slots: Vec<Option<Outcome>> = vec![None; len];
    for (i, outcome) in outcomes {
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(outcome);
        }
    }
    slots
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::retry("internal: no outcome recorded for this row")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    #[tokio::test]
    async fn isolate_fails_only_the_rejected_events_and_sends_the_rest() {
        // GIVEN a platform that rejects any batch containing rows 3 or 6
        let requests = Mutex::new(0);
        let out = isolate((0..8).collect(), |part: Vec<usize>| {
            *requests.lock().unwrap() += 1;
            async move {
                if part.contains(&3) || part.contains(&6) {
                    BatchAnswer::Rejected(format!("bad event in {part:?}"))
                } else {
                    BatchAnswer::Sent(Some("ref".into()))
                }
            }
        })
        .await;
        // THEN exactly rows 3 and 6 failed, with the platform's message for them alone
        let out = in_order(8, out);
        for (i, o) in out.iter().enumerate() {
            match i {
                3 | 6 => assert_eq!(o, &Outcome::failed(format!("bad event in [{i}]"))),
                _ => assert!(matches!(o, Outcome::Sent { .. }), "{i}: {o:?}"),
            }
        }
        assert!(*requests.lock().unwrap() <= 11);
    }

    #[test]
    fn a_missing_outcome_becomes_a_retry_not_a_lost_row() {
        let out = in_order(2, vec![(1, Outcome::skipped("x"))]);
        assert!(matches!(out[0], Outcome::Retry { .. }));
        assert_eq!(out[1], Outcome::skipped("x"));
    }

    #[test]
    fn a_body_is_sent_as_previewed_and_groups_keep_their_order() {
        // GIVEN rows of group 2, 1, a refused row, and 2 again
        let rows = [2, 1, 0, 2];
        let batch: Vec<Delivery> = (0..4)
            .map(|i| super::super::test_support::purchase(i, chrono::Utc::now()))
            .collect();
        let mut next = rows.iter();
        let plan = Plan::encode(
            &batch,
            |d| match *next.next().unwrap() {
                0 => Err(Outcome::skipped("no")),
                g => Ok((g, json!(d.id))),
            },
            |g| Request::new(format!("http://x/{g}"), "data").with("group", *g),
        );
        // THEN group 1 goes first, and the serialized body is the previewed one
        let urls: Vec<&str> = plan.requests.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(urls, ["http://x/1", "http://x/2"]);
        let second = &plan.requests[1];
        let sent = serde_json::to_value(second.body(&plan.items, &second.rows)).unwrap();
        assert_eq!(sent, json!({"group": 2, "data": [0, 3]}));
        let preview = plan.preview();
        assert_eq!(preview.requests[1].body, sent);
        assert_eq!(preview.not_sent, vec![(2, Outcome::skipped("no"))]);
    }
}

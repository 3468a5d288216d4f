//! What the event platforms with per-event answers share (Snapchat, Pinterest): the `user_data`
//! object of a row's match keys, the `value`/`currency` pair, one `{"data": […]}` request per batch,
//! and spreading the per-event statuses of its answer over the rows (no bisection: these platforms
//! name the bad events themselves).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::batch::{observe_request, BatchAnswer, Plan, Request};
use super::http::{transport_error, Answer};
use super::{value_number, Outcome};
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

/// The plan of a batch: every row `encode`d as of `now`, all sent in one `{"data": […]}` request
/// to `url` (the dispatcher never hands over more rows than the platform takes at once).
pub(crate) fn plan(
    batch: &[Delivery],
    now: DateTime<Utc>,
    url: &str,
    encode: fn(&Delivery, DateTime<Utc>) -> Result<Value, Outcome>,
) -> Plan {
    Plan::encode(
        batch,
        |d| encode(d, now).map(|event| ((), event)),
        |()| Request::new(url, "data"),
    )
}

/// The platform's verdict on one request: status, `Retry-After`, body and the rows it carried.
pub(crate) type Classify =
    fn(reqwest::StatusCode, Option<Duration>, &str, &[usize]) -> Vec<(usize, Outcome)>;

/// Sends each request of `plan` with `request` (the platform's URL, query and credentials) and
/// spreads the answers over the rows; a transport error retries them all. Counted in the request
/// metrics.
pub(crate) async fn send_plan(
    destination: &str,
    platform: &str,
    plan: &Plan,
    request: impl Fn(&Request) -> reqwest::RequestBuilder,
    classify: Classify,
) -> Vec<(usize, Outcome)> {
    let mut out = Vec::with_capacity(plan.items.len());
    for req in &plan.requests {
        let started = std::time::Instant::now();
        let outcomes = match request(req)
            .json(&req.body(&plan.items, &req.rows))
            .send()
            .await
        {
            Err(e) => {
                let retry = transport_error(platform, e).outcome();
                req.rows.iter().map(|&i| (i, retry.clone())).collect()
            }
            Ok(response) => {
                let answer = Answer::read(response).await;
                classify(answer.status, answer.retry_after, &answer.text, &req.rows)
            }
        };
        observe_request(destination, started, &summary(&outcomes));
        out.extend(outcomes);
    }
    out
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

/// Under `test_mode` an accepted row was checked, not recorded: it becomes a skip saying so, rather
/// than a claim that it was sent.
pub(crate) fn tested_only(
    outcomes: Vec<(usize, Outcome)>,
    test_mode: bool,
    platform: &str,
) -> Vec<(usize, Outcome)> {
    if !test_mode {
        return outcomes;
    }
    let reason = format!("test_mode: {platform} checked the event and recorded nothing");
    outcomes
        .into_iter()
        .map(|(i, o)| match o {
            Outcome::Sent { .. } => (i, Outcome::skipped(reason.clone())),
            other => (i, other),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mode_turns_accepted_rows_into_skips_and_keeps_failures() {
        let outcomes = vec![
            (0, Outcome::Sent { platform_ref: None }),
            (1, Outcome::failed("pinterest: bad")),
        ];
        assert_eq!(tested_only(outcomes.clone(), false, "pinterest"), outcomes);
        let tested = tested_only(outcomes, true, "pinterest");
        assert_eq!(
            tested[0].1,
            Outcome::skipped("test_mode: pinterest checked the event and recorded nothing")
        );
        assert_eq!(tested[1].1, Outcome::failed("pinterest: bad"));
    }

    #[test]
    fn rows_the_answer_does_not_mention_are_retried() {
        let out = spread(
            &[4, 7],
            vec![Some(Outcome::Sent { platform_ref: None }), None],
            "snapchat",
        );
        assert_eq!(out[0], (4, Outcome::Sent { platform_ref: None }));
        assert!(matches!(out[1], (7, Outcome::Retry { .. })));
    }
}

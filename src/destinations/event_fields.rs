//! What the platform modules share beyond HTTP and batches: the [`Account`] every destination holds
//! (name, batch size, client) with its request sending (one request, or bisected requests), the
//! checks and fields of event-style platforms (cannot retract, too old, `user_data`,
//! `value`/`currency`, event names), the whole-request answer by HTTP status, and for the platforms
//! with per-event answers (Snapchat, Pinterest) one `{"data": […]}` request per batch whose
//! per-event statuses are spread over the rows (no bisection: they name the bad events themselves).

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Map, Value};

use super::batch::{in_order, observe_request, send_isolated, BatchAnswer, Body, Plan, Request};
use super::health::{unreachable, Health};
use super::http::{
    excerpt, http_client, is_retryable_status, read_answer, transport_error, Answer,
};
use super::{batch_size, event_name, value_number, DestinationError, Outcome};
use crate::config::{ApiConfig, DispatchConfig};
use crate::event::{Delivery, Kind};
use crate::identity::MatchKey;

// ---------------------------------------------------------------------------------------------
// The account: name, batch size, client, and sending
// ---------------------------------------------------------------------------------------------

/// What every destination holds besides its platform's settings.
pub(crate) struct Account {
    /// The config name (metrics, messages).
    pub name: String,
    /// Events per request.
    pub max_batch: usize,
    /// The HTTP client.
    pub http: reqwest::Client,
}

/// How a platform classifies the answer to a request carrying a whole batch.
pub(crate) type ClassifyWhole = fn(reqwest::StatusCode, Option<Duration>, &str) -> BatchAnswer;

impl Account {
    /// The account `name` of `api`, sending at most `limit` events a request (the platform's limit,
    /// or the smaller `batch_max_events`).
    pub fn new(
        name: &str,
        api: &ApiConfig,
        limit: usize,
        dispatch: &DispatchConfig,
    ) -> Result<Account, DestinationError> {
        Ok(Account {
            name: name.to_string(),
            max_batch: batch_size(api, limit),
            http: http_client(name, dispatch)?,
        })
    }

    /// Sends `request` (built with the platform's URL, credentials and body), classifies the
    /// answer with `classify` (a transport error is a retry) and counts it in the request metrics.
    pub async fn post(
        &self,
        platform: &str,
        request: reqwest::RequestBuilder,
        classify: ClassifyWhole,
    ) -> BatchAnswer {
        let started = Instant::now();
        let answer = read_answer(platform, request.send().await, classify).await;
        observe_request(&self.name, started, &answer);
        answer
    }

    /// The `send` of the platforms that reject a whole request for one bad event (Meta, TikTok,
    /// Reddit, Taboola): each request of `plan` goes out built by `build` (the request, and the
    /// body of the rows it carries this time), rejected ones are bisected until the bad events
    /// stand alone; one outcome per row of the batch of `len` rows, in order.
    pub async fn send_bisected(
        &self,
        platform: &str,
        (len, plan): (usize, Plan),
        build: impl Fn(&Request, Body<'_>) -> reqwest::RequestBuilder,
        classify: ClassifyWhole,
    ) -> Vec<Outcome> {
        let items = &plan.items;
        let build = &build;
        let sent = send_isolated(&plan, |request, part| {
            let http = build(request, request.body(items, &part));
            self.post(platform, http, classify)
        })
        .await;
        in_order(len, sent.into_iter().chain(plan.not_sent))
    }

    /// The health check of a platform with nothing to verify (no credential, no call that answers
    /// without recording a conversion): `url` is only reached, and `text` (given the HTTP status)
    /// says what that proves.
    pub async fn reach(&self, url: &str, base: &str, text: impl Fn(u16) -> String) -> Health {
        match self.http.get(url).send().await {
            Ok(r) => Health::pass(text(r.status().as_u16())),
            Err(e) => Health::fail(unreachable(base, e)),
        }
    }
}

/// A destination's `name`, `platform` and `max_batch` read off its [`Account`] (`self.account`).
macro_rules! account_accessors {
    ($platform:expr) => {
        fn name(&self) -> &str {
            &self.account.name
        }

        fn platform(&self) -> $crate::platform::Platform {
            $platform
        }

        fn max_batch(&self) -> usize {
            self.account.max_batch
        }
    };
}
pub(crate) use account_accessors;

// ---------------------------------------------------------------------------------------------
// Answers by HTTP status
// ---------------------------------------------------------------------------------------------

/// A whole request refused by its HTTP status: 408, 429 and 5xx are retried (after `retry_after`),
/// the platform's `operator` statuses (credentials, permissions, account) wait for an operator, any
/// other is a rejection.
pub(crate) fn by_status(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    error: String,
    operator: &[u16],
) -> BatchAnswer {
    if is_retryable_status(status) {
        BatchAnswer::Retry { error, retry_after }
    } else if operator.contains(&status.as_u16()) {
        BatchAnswer::NeedsOperator { error, retry_after }
    } else {
        BatchAnswer::Rejected(error)
    }
}

/// The platform's words in an error body: the string at `key` of its JSON, else an excerpt.
pub(crate) fn said(body: &str, key: &str) -> String {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    parsed[key]
        .as_str()
        .map_or_else(|| excerpt(body), str::to_string)
}

/// `{platform}: HTTP {status}`, with an excerpt of the body when there is one (the postback
/// platforms answer errors in plain text, if at all).
pub(crate) fn http_error(platform: &str, status: reqwest::StatusCode, body: &str) -> String {
    let text = excerpt(body);
    if text.is_empty() {
        format!("{platform}: HTTP {}", status.as_u16())
    } else {
        format!("{platform}: HTTP {}: {text}", status.as_u16())
    }
}

// ---------------------------------------------------------------------------------------------
// Event fields
// ---------------------------------------------------------------------------------------------

/// What every event platform checks first: it cannot retract, so anything but a conversion is
/// skipped; an event older than `max_age_days` is skipped before any request.
pub(crate) fn fresh_conversion(
    d: &Delivery,
    now: DateTime<Utc>,
    platform: &str,
    max_age_days: i64,
) -> Result<(), Outcome> {
    if d.kind != Kind::Conversion {
        return Err(Outcome::skipped("platform cannot retract"));
    }
    if d.event_time < now - TimeDelta::days(max_age_days) {
        return Err(Outcome::skipped(format!(
            "too old for {platform} ({max_age_days} days)"
        )));
    }
    Ok(())
}

/// The usual Meta-style rule events, and Snap's and Pinterest's names for them (`""`: none).
pub(crate) type EventNames = (&'static str, &'static str, &'static str);

/// The [`EventNames`] pgcapi knows.
const EVENT_NAMES: &[EventNames] = &[
    ("Purchase", "PURCHASE", "checkout"),
    ("Lead", "SIGN_UP", "lead"),
    ("CompleteRegistration", "SIGN_UP", "signup"),
    ("AddToCart", "ADD_CART", "add_to_cart"),
    ("InitiateCheckout", "START_CHECKOUT", "initiate_checkout"),
    ("AddPaymentInfo", "ADD_BILLING", "add_payment_info"),
    ("Subscribe", "SUBSCRIBE", "subscribe"),
    ("StartTrial", "START_TRIAL", ""),
    ("ViewContent", "VIEW_CONTENT", "view_content"),
    ("PageView", "PAGE_VIEW", "page_visit"),
    ("Search", "SEARCH", "search"),
    ("AddToWishlist", "ADD_TO_WISHLIST", "add_to_wishlist"),
    ("Contact", "", "contact"),
];

/// A Conversions-API event as Meta, Snap and Pinterest take it: name, time in seconds, id, action
/// source, the page when known, `user_data`, and `custom_data` unless empty.
pub(crate) fn capi_event(
    d: &Delivery,
    name: &str,
    source: &str,
    user: Map<String, Value>,
    custom: Map<String, Value>,
) -> Value {
    let mut event = Map::new();
    event.insert("event_name".into(), json!(name));
    event.insert("event_time".into(), json!(d.event_time.timestamp()));
    event.insert("event_id".into(), json!(d.event_id));
    event.insert("action_source".into(), json!(source));
    if let Some(url) = d.payload.event_source_url.as_deref() {
        event.insert("event_source_url".into(), json!(url));
    }
    event.insert("user_data".into(), Value::Object(user));
    if !custom.is_empty() {
        event.insert("custom_data".into(), Value::Object(custom));
    }
    Value::Object(event)
}

/// What a click-id postback platform (Outbrain, Taboola) needs of a row: a conversion (it cannot
/// retract), its click id (`key`, else the row is skipped) and an event name (else it fails).
pub(crate) fn click_and_name<'d>(
    d: &'d Delivery,
    key: MatchKey,
    platform: &str,
) -> Result<(&'d str, &'d str), Outcome> {
    if d.kind != Kind::Conversion {
        return Err(Outcome::skipped("platform cannot retract"));
    }
    let Some(click) = d.payload.keys.get(&key) else {
        return Err(Outcome::skipped("no click id"));
    };
    match event_name(d) {
        Some(name) => Ok((click, name)),
        None => Err(Outcome::failed(format!(
            "{platform} needs an event name (the rule's event or [rules.{platform}] event)"
        ))),
    }
}

/// The platform's name of a row's event: the rule's (or override) when it already is one of the
/// platform's `native` names (separated by white space), else the platform's name (`column` of
/// [`EVENT_NAMES`]) for a usual Meta-style name.
pub(crate) fn native_name(
    d: &Delivery,
    native: &'static str,
    column: fn(&EventNames) -> &'static str,
) -> Option<&'static str> {
    let name = event_name(d)?.trim();
    let meta_style = || EVENT_NAMES.iter().find(|n| n.0 == name).map(column);
    native
        .split_whitespace()
        .find(|n| *n == name)
        .or_else(meta_style)
        .filter(|n| !n.is_empty())
}

/// The name that the Conversions APIs of Meta, Snap and Pinterest share for a match key (`em`,
/// `ph`, …), and whether its value is a hash; `None` for the platforms' own ids.
pub(crate) fn capi_field(key: MatchKey) -> Option<(&'static str, bool)> {
    Some(match key {
        MatchKey::Email => ("em", true),
        MatchKey::Phone => ("ph", true),
        MatchKey::FirstName => ("fn", true),
        MatchKey::LastName => ("ln", true),
        MatchKey::City => ("ct", true),
        MatchKey::State => ("st", true),
        MatchKey::Zip => ("zp", true),
        MatchKey::Country => ("country", true),
        MatchKey::ExternalId => ("external_id", true),
        MatchKey::DateOfBirth => ("db", true),
        MatchKey::Gender => ("ge", true),
        MatchKey::ClientIp => ("client_ip_address", false),
        MatchKey::UserAgent => ("client_user_agent", false),
        _ => return None,
    })
}

/// The `user_data` object of a row: each key the platform names (`field` gives its name and whether
/// it is a hash) with hashes as one-element lists and clear values as strings.
pub(crate) fn user_data(
    d: &Delivery,
    field: impl Fn(MatchKey) -> Option<(&'static str, bool)>,
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

/// The user object of a platform that takes every key as a string (`field` names them).
pub(crate) fn plain_user(
    d: &Delivery,
    field: fn(MatchKey) -> Option<&'static str>,
) -> Map<String, Value> {
    user_data(d, |key| field(key).map(|name| (name, false)))
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

impl Account {
    /// The `send` of Snap and Pinterest: [`Account::send_per_event`], with accepted rows turned
    /// into skips under `test_mode` ([`tested_only`]); one outcome per row of the batch of `len`
    /// rows, in order.
    pub async fn send_tested(
        &self,
        platform: &str,
        (len, plan): (usize, Plan),
        test_mode: bool,
        build: impl Fn(&Request, Body<'_>) -> reqwest::RequestBuilder,
        classify: Classify,
    ) -> Vec<Outcome> {
        let sent = self.send_per_event(platform, &plan, build, classify).await;
        let sent = tested_only(sent, test_mode, platform);
        in_order(len, sent.into_iter().chain(plan.not_sent))
    }

    /// The `send` of the platforms with per-event answers: each request of `plan` goes out built by
    /// `build` and its answer is spread over its rows by `classify`; a transport error retries them
    /// all. Counted in the request metrics. The plan's `not_sent` are the caller's to add.
    pub async fn send_per_event(
        &self,
        platform: &str,
        plan: &Plan,
        build: impl Fn(&Request, Body<'_>) -> reqwest::RequestBuilder,
        classify: Classify,
    ) -> Vec<(usize, Outcome)> {
        let mut out = Vec::with_capacity(plan.items.len());
        for req in &plan.requests {
            let started = Instant::now();
            let outcomes = match build(req, req.body(&plan.items, &req.rows)).send().await {
                Err(e) => {
                    let retry = transport_error(platform, e).outcome();
                    req.rows.iter().map(|&i| (i, retry.clone())).collect()
                }
                Ok(response) => {
                    let answer = Answer::read(response).await;
                    classify(answer.status, answer.retry_after, &answer.text, &req.rows)
                }
            };
            observe_request(&self.name, started, &summary(&outcomes));
            out.extend(outcomes);
        }
        out
    }
}

/// The request as one answer, for the request metrics: retried if any row is, rejected if any failed.
fn summary(outcomes: &[(usize, Outcome)]) -> BatchAnswer {
    let any = |f: fn(&Outcome) -> bool| outcomes.iter().any(|(_, o)| f(o));
    if any(|o| matches!(o, Outcome::Retry { .. } | Outcome::NeedsOperator { .. })) {
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

/// Rows and checks the platforms' unit tests share.
#[cfg(test)]
pub(crate) mod test_rows {
    use super::*;
    use crate::destinations::test_support::purchase;
    use chrono::TimeZone;

    /// Serves `app` (a fake platform) on a free local port; its base URL.
    pub async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    /// A purchase at 2026-12-01 10:30:15 UTC whose only key is the click id `click` (as `key`).
    pub fn click_only(id: i64, key: MatchKey, click: &str) -> Delivery {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 10, 30, 15).unwrap();
        let mut d = purchase(id, at);
        d.payload.keys.clear();
        d.payload.keys.insert(key, click.to_string());
        d
    }

    /// Asserts that `encode` skips a retraction of `row`, and `row` once older than `max_age_days`,
    /// in the words of `platform`.
    pub fn assert_refunds_and_old_events_skipped(
        encode: fn(&Delivery, DateTime<Utc>) -> Result<Value, Outcome>,
        row: &Delivery,
        platform: &str,
        max_age_days: i64,
    ) {
        let mut refund = row.clone();
        refund.kind = Kind::Retraction;
        assert_eq!(
            encode(&refund, row.event_time),
            Err(Outcome::skipped("platform cannot retract"))
        );
        let later = row.event_time + TimeDelta::days(max_age_days) + TimeDelta::seconds(1);
        let too_old = format!("too old for {platform} ({max_age_days} days)");
        assert_eq!(encode(row, later), Err(Outcome::skipped(too_old)));
    }
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

//! Dispatch against a real control table and a local fake platform: retries, leases, retractions, wake-ups.

use crate::support::TestDb;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::Utc;
use pgcapi::config::{DestinationConfig, DispatchConfig};
use pgcapi::destinations::{self, Destination};
use pgcapi::dispatch::Dispatcher;
use pgcapi::event::{Kind, NewDelivery, Payload, State};
use pgcapi::identity::{MatchKey, MatchKeys};
use pgcapi::lsn::Lsn;
use pgcapi::outbox::{self};
use pgcapi::platform::Platform;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::Client;

const SCHEMA: &str = "pgcapi";

/// One scripted answer of the fake platform.
#[derive(Clone)]
struct Scripted {
    status: u16,
    body: Value,
    retry_after: Option<&'static str>,
}

impl Scripted {
    fn status(status: u16) -> Scripted {
        Scripted {
            status,
            body: json!({"error": {"message": format!("scripted {status}"), "code": 1}}),
            retry_after: None,
        }
    }
}

/// A fake Meta / Google Ads / TikTok on 127.0.0.1: answers from a script, then with success; records
/// every request's path and body.
#[derive(Default)]
struct Fake {
    script: Mutex<VecDeque<Scripted>>,
    requests: Mutex<Vec<(String, Value)>>,
    delay_ms: Mutex<u64>,
}

impl Fake {
    async fn start() -> (Arc<Fake>, String) {
        let fake = Arc::new(Fake::default());
        let state = fake.clone();
        let app = Router::new().fallback(move |uri: Uri, body: Bytes| {
            let fake = state.clone();
            async move { fake.answer(uri, body).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, format!("http://{addr}"))
    }

    fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.script.lock().unwrap().extend(answers);
    }

    fn requests(&self, path_contains: &str) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.contains(path_contains))
            .map(|(_, b)| b.clone())
            .collect()
    }

    async fn answer(&self, uri: Uri, body: Bytes) -> Response {
        let path = uri.path().to_string();
        let delay = *self.delay_ms.lock().unwrap();
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if path == "/token" {
            return axum::Json(json!({"access_token": "at", "expires_in": 3600})).into_response();
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.requests
            .lock()
            .unwrap()
            .push((path.clone(), body.clone()));
        if let Some(s) = self.script.lock().unwrap().pop_front() {
            let mut headers = HeaderMap::new();
            if let Some(r) = s.retry_after {
                headers.insert("retry-after", r.parse().unwrap());
            }
            return (
                StatusCode::from_u16(s.status).unwrap(),
                headers,
                axum::Json(s.body),
            )
                .into_response();
        }
        let ok = if path.contains("/customers/") {
            let n = body
                .get("conversions")
                .or_else(|| body.get("conversionAdjustments"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            json!({"results": vec![json!({"orderId": "x"}); n], "jobId": "9"})
        } else if path.contains("/event/track/") {
            json!({"code": 0, "message": "OK", "request_id": "req"})
        } else {
            json!({"events_received": 1, "messages": [], "fbtrace_id": "trace"})
        };
        axum::Json(ok).into_response()
    }
}

/// A database with the control schema installed.
async fn control_db() -> (TestDb, Client) {
    let db = TestDb::start().await;
    let client = db.connect().await;
    for (_, sql) in outbox::MIGRATIONS {
        client.batch_execute(sql).await.unwrap();
    }
    (db, client)
}

fn dispatch_config() -> DispatchConfig {
    DispatchConfig {
        retry_initial_ms: 100,
        retry_max_ms: 100,
        request_timeout_ms: 5_000,
        ..DispatchConfig::default()
    }
}

/// A destination of `platform` pointed at the fake platform.
fn destination(
    name: &str,
    platform: Platform,
    endpoint: &str,
    extra: &str,
) -> Box<dyn Destination> {
    let specific = match platform {
        Platform::Meta => "platform = \"meta\"\npixel_id = \"1234567890\"\naccess_token = \"tok\"",
        Platform::GoogleAds => {
            "platform = \"google_ads\"\ncustomer_id = \"1234567890\"\ndeveloper_token = \"dev\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\nrefresh_token = \"r\""
        }
        Platform::Tiktok => "platform = \"tiktok\"\npixel_code = \"CTEST\"\naccess_token = \"tok\"",
        Platform::GoogleDataManager => {
            "platform = \"google_data_manager\"\noperating_account = \"1234567890\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\nrefresh_token = \"r\""
        }
        Platform::MicrosoftAds => {
            "platform = \"microsoft_ads\"\ncustomer_id = \"1234567\"\naccount_id = \"7654321\"\n\
             developer_token = \"dev\"\nclient_id = \"c\"\nrefresh_token = \"r\""
        }
        Platform::Outbrain => "platform = \"outbrain\"",
        Platform::Taboola => "platform = \"taboola\"\naccount_id = \"1234567\"",
        Platform::Linkedin => "platform = \"linkedin\"\naccess_token = \"tok\"",
        Platform::Reddit => "platform = \"reddit\"\npixel_id = \"a2_test\"\naccess_token = \"tok\"",
        Platform::Snapchat => {
            "platform = \"snapchat\"\npixel_id = \"snap-pixel\"\naccess_token = \"tok\""
        }
        Platform::Pinterest => {
            "platform = \"pinterest\"\nad_account_id = \"549755885175\"\naccess_token = \"tok\""
        }
    };
    let text = format!(
        "{specific}\nendpoint = \"{endpoint}\"\ntoken_endpoint = \"{endpoint}/token\"\n{extra}"
    );
    let config: DestinationConfig = toml::from_str(&text).unwrap();
    destinations::build(name, &config, &dispatch_config()).unwrap()
}

async fn dispatcher(db: &TestDb, dests: Vec<Box<dyn Destination>>) -> Dispatcher {
    Dispatcher::connect(&db.url(), SCHEMA, dispatch_config(), dests)
        .await
        .unwrap()
}

/// A website purchase for `destination`, due now.
fn conversion(destination: &str, platform: Platform, event_id: &str) -> NewDelivery {
    let mut keys = MatchKeys::new();
    keys.insert(MatchKey::Email, "a".repeat(64));
    keys.insert(MatchKey::UserAgent, "Mozilla/5.0".into());
    keys.insert(MatchKey::ClientIp, "203.0.113.9".into());
    keys.insert(MatchKey::Gclid, "Cj0-test".into());
    NewDelivery {
        rule: "order_paid".into(),
        destination: destination.into(),
        platform,
        event_id: event_id.into(),
        kind: Kind::Conversion,
        adjusts_rule: None,
        event_name: Some("Purchase".into()),
        // A minute ago: a Google adjustment sent right after must be timed a second after it.
        event_time: Utc::now() - chrono::TimeDelta::minutes(1),
        value: Some("19.99".into()),
        currency: Some("USD".into()),
        action_source: Some("website".into()),
        payload: Payload {
            keys,
            event_source_url: Some("https://shop.example.com/o/1".into()),
            conversion_action: (platform == Platform::GoogleAds)
                .then(|| "customers/1234567890/conversionActions/1001".to_string()),
            consent: true,
            ..Payload::default()
        },
        state: State::Pending,
        last_error: None,
        source_table: "public.orders".into(),
        source_key: None,
        source_lsn: Lsn(0x16B3748),
        commit_time: Utc::now(),
    }
}

/// The retraction of `event_id`'s `order_paid` conversion.
fn retraction(destination: &str, platform: Platform, event_id: &str) -> NewDelivery {
    NewDelivery {
        rule: "order_refunded".into(),
        kind: Kind::Retraction,
        adjusts_rule: Some("order_paid".into()),
        value: None,
        payload: Payload {
            conversion_action: (platform == Platform::GoogleAds)
                .then(|| "customers/1234567890/conversionActions/1001".to_string()),
            consent: true,
            ..Payload::default()
        },
        ..conversion(destination, platform, event_id)
    }
}

async fn insert(client: &Client, rows: &[NewDelivery]) {
    outbox::insert_deliveries(client, SCHEMA, rows)
        .await
        .unwrap();
}

/// A row's state as the tests check it.
#[derive(Debug)]
struct Row {
    state: String,
    attempts: i32,
    last_error: Option<String>,
    /// `next_attempt_at - now()` in milliseconds.
    due_in_ms: f64,
    platform_ref: Option<String>,
    sent: bool,
}

async fn row(client: &Client, rule: &str, destination: &str, event_id: &str) -> Row {
    let r = client
        .query_one(
            "select state, attempts, last_error, \
               extract(epoch from next_attempt_at - now())::float8 * 1000, platform_ref, \
               sent_at is not null \
             from pgcapi.deliveries where rule = $1 and destination = $2 and event_id = $3",
            &[&rule, &destination, &event_id],
        )
        .await
        .unwrap();
    Row {
        state: r.get(0),
        attempts: r.get(1),
        last_error: r.get(2),
        due_in_ms: r.get(3),
        platform_ref: r.get(4),
        sent: r.get(5),
    }
}

#[tokio::test]
async fn a_row_failing_twice_with_500_is_retried_with_backoff_then_recorded_as_sent() {
    // GIVEN a pending Meta row and a platform that answers 500, 500, then 200
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    fake.script([Scripted::status(500), Scripted::status(500)]);
    insert(&client, &[conversion("meta", Platform::Meta, "order-1")]).await;
    let d = dispatcher(
        &db,
        vec![destination("meta", Platform::Meta, &endpoint, "")],
    )
    .await;

    // WHEN dispatch runs once
    assert_eq!(d.run_once().await.unwrap(), 1);
    // THEN the row is pending again with one attempt, the 500 recorded, and due within the backoff cap
    let r = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 1), "{r:?}");
    assert!(
        r.last_error.as_deref().unwrap().contains("HTTP 500"),
        "{r:?}"
    );
    assert!(r.due_in_ms <= 100.0 && r.due_in_ms > -1_000.0, "{r:?}");

    // WHEN it runs again after the backoff, twice
    tokio::time::sleep(Duration::from_millis(150)).await;
    d.run_once().await.unwrap();
    assert_eq!(
        row(&client, "order_paid", "meta", "order-1").await.attempts,
        2
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    d.run_once().await.unwrap();
    // THEN the row is sent after three attempts, with Meta's trace id and no error left
    let r = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("sent", 3), "{r:?}");
    assert!(r.sent && r.last_error.is_none());
    assert_eq!(r.platform_ref.as_deref(), Some("trace"));
    assert_eq!(fake.requests("/events").len(), 3);
    // AND nothing is left to claim
    assert_eq!(d.run_once().await.unwrap(), 0);
}

#[tokio::test]
async fn a_permanent_rejection_fails_the_row_with_the_platforms_message() {
    // GIVEN Meta rejecting the event with its error envelope
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    fake.script([Scripted {
        status: 400,
        body: json!({"error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100,
            "error_subcode": 2804019}}),
        retry_after: None,
    }]);
    insert(&client, &[conversion("meta", Platform::Meta, "order-1")]).await;
    let d = dispatcher(
        &db,
        vec![destination("meta", Platform::Meta, &endpoint, "")],
    )
    .await;
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN the row failed once, with Meta's code and message
    let r = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("failed", 1));
    assert_eq!(
        r.last_error.as_deref(),
        Some("meta: HTTP 400 OAuthException code 100 subcode 2804019: Invalid parameter")
    );
}

#[tokio::test]
async fn a_429_with_retry_after_reschedules_no_earlier_than_asked() {
    // GIVEN TikTok throttling with Retry-After: 30
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    fake.script([Scripted {
        retry_after: Some("30"),
        ..Scripted::status(429)
    }]);
    insert(
        &client,
        &[conversion("tiktok", Platform::Tiktok, "order-1")],
    )
    .await;
    let d = dispatcher(
        &db,
        vec![destination("tiktok", Platform::Tiktok, &endpoint, "")],
    )
    .await;
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN the row waits at least 30 s, far beyond the 100 ms backoff cap
    let r = row(&client, "order_paid", "tiktok", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 1));
    assert!(r.due_in_ms > 29_000.0, "{r:?}");
}

#[tokio::test]
async fn a_row_older_than_give_up_after_secs_fails_instead_of_retrying() {
    // GIVEN a row created two minutes ago, a one-minute give-up and a platform answering 503
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    fake.script([Scripted::status(503)]);
    insert(&client, &[conversion("meta", Platform::Meta, "order-1")]).await;
    client
        .batch_execute(
            "update pgcapi.deliveries set created_at = now() - interval '2 minutes',
             queued_at = now() - interval '2 minutes'",
        )
        .await
        .unwrap();
    let config = DispatchConfig {
        give_up_after_secs: 60,
        ..dispatch_config()
    };
    let dests = vec![destination("meta", Platform::Meta, &endpoint, "")];
    let d = Dispatcher::connect(&db.url(), SCHEMA, config, dests)
        .await
        .unwrap();
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN the row failed, saying it gave up and why
    let r = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!(r.state, "failed");
    let error = r.last_error.unwrap();
    assert!(
        error.starts_with("gave up after 60 s: meta: HTTP 503"),
        "{error}"
    );
}

#[tokio::test]
async fn two_dispatchers_on_one_table_never_send_a_row_twice() {
    // GIVEN 120 pending rows, small batches, a slow platform and two dispatchers
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    *fake.delay_ms.lock().unwrap() = 15;
    let rows: Vec<NewDelivery> = (0..120)
        .map(|i| conversion("meta", Platform::Meta, &format!("order-{i}")))
        .collect();
    insert(&client, &rows).await;
    let extra = "batch_max_events = 7";
    let a = dispatcher(
        &db,
        vec![destination("meta", Platform::Meta, &endpoint, extra)],
    )
    .await;
    let b = dispatcher(
        &db,
        vec![destination("meta", Platform::Meta, &endpoint, extra)],
    )
    .await;
    assert_ne!(a.owner(), b.owner());
    // WHEN both dispatch concurrently until nothing is pending
    let drain = |d: Dispatcher| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if d.run_once().await.unwrap() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if d.run_once().await.unwrap() == 0 {
                    break;
                }
            }
        }
    };
    tokio::join!(drain(a), drain(b));
    // THEN every event reached the platform exactly once and every row is sent after one attempt
    let mut seen: HashMap<String, usize> = HashMap::new();
    for body in fake.requests("/events") {
        for e in body["data"].as_array().unwrap() {
            *seen
                .entry(e["event_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 120);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let r = client
        .query_one(
            "select count(*) filter (where state = 'sent' and attempts = 1), count(*) \
             from pgcapi.deliveries",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (120, 120));
}

#[tokio::test]
async fn a_retraction_of_an_unsent_conversion_cancels_both_without_sending() {
    // GIVEN two pending conversions and their retractions: one claimed in the same batch, one not yet due
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    insert(
        &client,
        &[
            conversion("meta", Platform::Meta, "order-1"),
            retraction("meta", Platform::Meta, "order-1"),
            conversion("meta", Platform::Meta, "order-2"),
            retraction("meta", Platform::Meta, "order-2"),
        ],
    )
    .await;
    client
        .batch_execute(
            "update pgcapi.deliveries set next_attempt_at = now() + interval '1 hour' \
             where rule = 'order_paid' and event_id = 'order-2'",
        )
        .await
        .unwrap();
    let d = dispatcher(
        &db,
        vec![destination("meta", Platform::Meta, &endpoint, "")],
    )
    .await;
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN all four rows are cancelled with their reasons, and nothing reached the platform
    for id in ["order-1", "order-2"] {
        let c = row(&client, "order_paid", "meta", id).await;
        assert_eq!(c.state, "cancelled", "{id}: {c:?}");
        assert_eq!(
            c.last_error.as_deref(),
            Some("retracted before it was sent")
        );
        let r = row(&client, "order_refunded", "meta", id).await;
        assert_eq!(r.state, "cancelled", "{id}: {r:?}");
        assert_eq!(r.last_error.as_deref(), Some("conversion was not sent yet"));
        assert_eq!(c.attempts + r.attempts, 0);
    }
    assert!(fake.requests("").is_empty());
}

#[tokio::test]
async fn a_retraction_of_a_sent_conversion_is_sent_to_google_and_skipped_for_meta() {
    // GIVEN one order sent to Google and to Meta
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    insert(
        &client,
        &[
            conversion("google", Platform::GoogleAds, "order-1"),
            conversion("meta", Platform::Meta, "order-1"),
        ],
    )
    .await;
    let d = dispatcher(
        &db,
        vec![
            destination("google", Platform::GoogleAds, &endpoint, ""),
            destination("meta", Platform::Meta, &endpoint, ""),
        ],
    )
    .await;
    d.run_once().await.unwrap();
    assert_eq!(
        row(&client, "order_paid", "google", "order-1").await.state,
        "sent"
    );
    assert_eq!(
        row(&client, "order_paid", "meta", "order-1").await.state,
        "sent"
    );
    // WHEN the order is refunded and dispatch runs
    insert(
        &client,
        &[
            retraction("google", Platform::GoogleAds, "order-1"),
            retraction("meta", Platform::Meta, "order-1"),
        ],
    )
    .await;
    d.run_once().await.unwrap();
    // THEN Google got a RETRACTION keyed by the order id, and the Meta retraction is skipped
    let g = row(&client, "order_refunded", "google", "order-1").await;
    assert_eq!((g.state.as_str(), g.attempts), ("sent", 1), "{g:?}");
    let adjustments = fake.requests(":uploadConversionAdjustments");
    assert_eq!(adjustments.len(), 1);
    let adj = &adjustments[0]["conversionAdjustments"][0];
    assert_eq!(adj["adjustmentType"], "RETRACTION");
    assert_eq!(adj["orderId"], "order-1");
    assert_eq!(
        adj["conversionAction"],
        "customers/1234567890/conversionActions/1001"
    );
    assert_eq!(adjustments[0]["partialFailure"], true);
    let m = row(&client, "order_refunded", "meta", "order-1").await;
    assert_eq!(m.state, "skipped");
    assert_eq!(m.last_error.as_deref(), Some("platform cannot retract"));
    assert_eq!(fake.requests("/events").len(), 1);
}

#[tokio::test]
async fn a_retraction_waits_for_a_conversion_in_flight_and_skips_a_missing_one() {
    // GIVEN a conversion leased by another process, its retraction, and a retraction of nothing
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    insert(
        &client,
        &[
            conversion("meta", Platform::Meta, "order-1"),
            retraction("meta", Platform::Meta, "order-1"),
            retraction("meta", Platform::Meta, "order-9"),
        ],
    )
    .await;
    client
        .batch_execute(
            "update pgcapi.deliveries set lease_owner = 'other', lease_until = now() + interval '1 minute' \
             where rule = 'order_paid'",
        )
        .await
        .unwrap();
    let d = dispatcher(
        &db,
        vec![destination("meta", Platform::Meta, &endpoint, "")],
    )
    .await;
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN the first retraction stays pending (no attempt counted, due again shortly, lease released)
    let r = row(&client, "order_refunded", "meta", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 0), "{r:?}");
    assert!(r.due_in_ms > 0.0, "{r:?}");
    let c = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!(c.state, "pending");
    // AND the retraction of a conversion that never existed is skipped
    let none = row(&client, "order_refunded", "meta", "order-9").await;
    assert_eq!(none.state, "skipped");
    assert_eq!(none.last_error.as_deref(), Some("no conversion to retract"));
    assert!(fake.requests("").is_empty());
}

#[tokio::test]
async fn new_rows_are_picked_up_on_notify_without_waiting_for_the_poll() {
    // GIVEN a running dispatcher that would otherwise poll only once a minute
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    let d = dispatcher(
        &db,
        vec![destination("tiktok", Platform::Tiktok, &endpoint, "")],
    )
    .await
    .with_poll_interval(Duration::from_secs(60));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(d.run(shutdown));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // WHEN a row is inserted and capture's NOTIFY arrives
    let started = tokio::time::Instant::now();
    insert(
        &client,
        &[conversion("tiktok", Platform::Tiktok, "order-1")],
    )
    .await;
    client
        .batch_execute(&format!("notify {}", outbox::notify_channel(SCHEMA)))
        .await
        .unwrap();
    // THEN it is sent well before the next poll
    loop {
        if row(&client, "order_paid", "tiktok", "order-1").await.state == "sent" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.requests("/event/track/").len(), 1);
    // AND the dispatcher stops cleanly on shutdown
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("dispatcher stops")
        .unwrap()
        .unwrap();
}

/// The restatement of `event_id`'s `order_paid` conversion to a new total of `value`.
fn restatement(destination: &str, platform: Platform, event_id: &str, value: &str) -> NewDelivery {
    NewDelivery {
        rule: "order_partially_refunded".into(),
        kind: Kind::Restatement,
        value: Some(value.into()),
        ..retraction(destination, platform, event_id)
    }
}

#[tokio::test]
async fn a_restatement_updates_an_unsent_conversion_or_is_sent_to_google_after_it() {
    // GIVEN order-1 already sent to Google, and order-2 pending but not yet due
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    insert(
        &client,
        &[conversion("google", Platform::GoogleAds, "order-1")],
    )
    .await;
    let d = dispatcher(
        &db,
        vec![destination("google", Platform::GoogleAds, &endpoint, "")],
    )
    .await;
    d.run_once().await.unwrap();
    insert(
        &client,
        &[conversion("google", Platform::GoogleAds, "order-2")],
    )
    .await;
    client
        .batch_execute(
            "update pgcapi.deliveries set next_attempt_at = now() + interval '1 hour' \
             where event_id = 'order-2'",
        )
        .await
        .unwrap();
    // WHEN both are restated to a new total of 5 and dispatch runs
    insert(
        &client,
        &[
            restatement("google", Platform::GoogleAds, "order-1", "5"),
            restatement("google", Platform::GoogleAds, "order-2", "5"),
        ],
    )
    .await;
    d.run_once().await.unwrap();
    // THEN order-1's restatement went to Google as a RESTATEMENT with the new total
    let sent = row(&client, "order_partially_refunded", "google", "order-1").await;
    assert_eq!(sent.state, "sent", "{sent:?}");
    let adjustments = fake.requests(":uploadConversionAdjustments");
    assert_eq!(adjustments.len(), 1);
    let adj = &adjustments[0]["conversionAdjustments"][0];
    assert_eq!(adj["adjustmentType"], "RESTATEMENT");
    assert_eq!(adj["orderId"], "order-1");
    assert_eq!(
        adj["restatementValue"],
        json!({"adjustedValue": 5.0, "currencyCode": "USD"})
    );
    // AND order-2's unsent conversion now carries the new value, its restatement closed
    let applied = row(&client, "order_partially_refunded", "google", "order-2").await;
    assert_eq!(applied.state, "cancelled");
    let value: String = client
        .query_one(
            "select value::text from pgcapi.deliveries \
             where rule = 'order_paid' and event_id = 'order-2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(value, "5");
    assert_eq!(
        row(&client, "order_paid", "google", "order-2").await.state,
        "pending"
    );
}

#[tokio::test]
async fn a_batch_boundary_between_a_conversion_and_its_retraction_never_sends_the_conversion() {
    // GIVEN ten orders paid and refunded (conversion, then retraction, in id order) and batches of
    // three, so that a batch could end right after a conversion
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    let rows: Vec<NewDelivery> = (0..10)
        .flat_map(|i| {
            let id = format!("order-{i}");
            [
                conversion("meta", Platform::Meta, &id),
                retraction("meta", Platform::Meta, &id),
            ]
        })
        .collect();
    insert(&client, &rows).await;
    let d = dispatcher(
        &db,
        vec![destination(
            "meta",
            Platform::Meta,
            &endpoint,
            "batch_max_events = 3",
        )],
    )
    .await;
    // WHEN dispatch runs until nothing is left to claim
    while d.run_once().await.unwrap() > 0 {}
    // THEN every conversion and retraction is cancelled and nothing reached the platform
    let cancelled = crate::support::count(
        &client,
        "select count(*) from pgcapi.deliveries where state = 'cancelled' and attempts = 0",
    )
    .await;
    assert_eq!(cancelled, 20);
    assert!(fake.requests("").is_empty());
}

#[tokio::test]
async fn a_refund_of_a_conversion_that_may_have_reached_the_platform_is_sent_first_then_retracted_or_skipped(
) {
    // GIVEN a Google and a Meta conversion each attempted once already (the answer was lost), back
    // to pending, and then refunded
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    insert(
        &client,
        &[
            conversion("google", Platform::GoogleAds, "order-1"),
            retraction("google", Platform::GoogleAds, "order-1"),
            conversion("meta", Platform::Meta, "order-1"),
            retraction("meta", Platform::Meta, "order-1"),
        ],
    )
    .await;
    client
        .batch_execute("update pgcapi.deliveries set attempts = 1 where rule = 'order_paid'")
        .await
        .unwrap();
    let d = dispatcher(
        &db,
        vec![
            destination("google", Platform::GoogleAds, &endpoint, ""),
            destination("meta", Platform::Meta, &endpoint, ""),
        ],
    )
    .await;
    // WHEN dispatch runs until both refunds are settled (the Google one waits for its conversion)
    crate::support::wait_for(10, "the refunds to settle", || async {
        d.run_once().await.unwrap();
        let pending = crate::support::count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'pending'",
        )
        .await;
        (pending == 0).then_some(())
    })
    .await;
    // THEN Google got the conversion again (idempotent on its order id) and then its RETRACTION
    let g = row(&client, "order_paid", "google", "order-1").await;
    assert_eq!((g.state.as_str(), g.attempts), ("sent", 2), "{g:?}");
    let r = row(&client, "order_refunded", "google", "order-1").await;
    assert_eq!(r.state, "sent", "{r:?}");
    let adjustments = fake.requests(":uploadConversionAdjustments");
    assert_eq!(adjustments.len(), 1);
    assert_eq!(
        adjustments[0]["conversionAdjustments"][0]["adjustmentType"],
        "RETRACTION"
    );
    // AND Meta, which cannot retract, is never told "cancelled" about what it may count: the
    // conversion was finished (sent again, byte for byte what was stored), and the refund skipped
    let m = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!((m.state.as_str(), m.attempts), ("sent", 2), "{m:?}");
    let r = row(&client, "order_refunded", "meta", "order-1").await;
    assert_eq!(r.state, "skipped", "{r:?}");
    assert_eq!(r.last_error.as_deref(), Some("platform cannot retract"));
    let events = fake.requests("/events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"][0]["event_id"], "order-1");
}

#[tokio::test]
async fn a_retried_old_row_gets_the_full_retry_budget_again() {
    // GIVEN two Meta conversions recorded two days ago (past the give-up age): one failed and retried
    // with `pgcapi retry`, the other pending all along; and a platform answering 500.
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    outbox::insert_deliveries(
        &client,
        SCHEMA,
        &[
            conversion("meta", Platform::Meta, "order-retried"),
            conversion("meta", Platform::Meta, "order-waiting"),
        ],
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "update pgcapi.deliveries set created_at = now() - interval '2 days',
                 queued_at = now() - interval '2 days';
             update pgcapi.deliveries set state = 'failed', last_error = 'meta: HTTP 400'
             where event_id = 'order-retried';",
        )
        .await
        .unwrap();
    let mut repair_client = db.connect().await;
    let filters = pgcapi::ops::repair::Filters {
        ids: vec![],
        destination: None,
        rule: None,
        since: None,
        before: None,
    };
    let report = pgcapi::ops::repair::retry(&mut repair_client, SCHEMA, &filters, false)
        .await
        .unwrap();
    assert_eq!(report.requeued.len(), 1);
    fake.script(vec![Scripted::status(500); 2]);

    // WHEN dispatch meets the 500.
    let d = dispatcher(
        &db,
        vec![destination("meta", Platform::Meta, &endpoint, "")],
    )
    .await;
    d.run_once().await.unwrap();

    // THEN the retried row waits for another try (its clock restarted at the retry), while the row
    // that has been retrying for two days is given up.
    let rows = client
        .query(
            "select event_id, state, coalesce(last_error, '') from pgcapi.deliveries order by 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got[0].0, "order-retried");
    assert_eq!(got[0].1, "pending", "{got:?}");
    assert_eq!(got[1].0, "order-waiting");
    assert_eq!(got[1].1, "failed", "{got:?}");
    assert!(got[1].2.starts_with("gave up after"), "{got:?}");
}

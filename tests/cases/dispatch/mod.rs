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
use pgcapi::event::{Kind, NewDelivery, Payload};
use pgcapi::identity::{MatchKey, MatchKeys};
use pgcapi::outbox;
use pgcapi::platform::Platform;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::Client;

mod claims;
mod retractions;
mod retries;

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

/// A control database holding `rows`, and the fake platform with its endpoint.
async fn with_rows(rows: &[NewDelivery]) -> (TestDb, Client, Arc<Fake>, String) {
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    insert(&client, rows).await;
    (db, client, fake, endpoint)
}

/// A dispatcher for the Meta destination alone, at the fake platform.
async fn meta_dispatcher(db: &TestDb, endpoint: &str) -> Dispatcher {
    dispatcher(db, vec![destination("meta", Platform::Meta, endpoint, "")]).await
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
        // A minute ago: a Google adjustment sent right after must be timed a second after it.
        event_time: Utc::now() - chrono::TimeDelta::minutes(1),
        payload: Payload {
            keys,
            event_source_url: Some("https://shop.example.com/o/1".into()),
            conversion_action: (platform == Platform::GoogleAds)
                .then(|| "customers/1234567890/conversionActions/1001".to_string()),
            consent: true,
            ..Payload::default()
        },
        ..crate::support::purchase(destination, platform, event_id)
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

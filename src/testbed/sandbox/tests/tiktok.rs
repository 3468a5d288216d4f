//! TikTok Events API endpoint tests.

use serde_json::{json, Value};

use super::{client, now_secs, refusal_counts, sha, start, start_with};
use crate::testbed::sandbox::{SandboxConfig, SandboxHandle};

/// A valid web `CompletePayment` event with id `id`.
fn payment(id: &str) -> Value {
    json!({
        "event": "CompletePayment",
        "event_time": now_secs() - 60,
        "event_id": id,
        "user": {
            "email": sha("john.doe@example.com"),
            "phone": [sha("+16505551212")],
            "ttclid": "E.C.P.abc123",
            "ip": "2001:db8::1",
            "user_agent": "Mozilla/5.0",
        },
        "properties": {"value": 42.5, "currency": "USD"},
        "page": {"url": "https://shop.example.com/orders/1"},
    })
}

/// A track request body with `events`.
fn batch(events: Vec<Value>) -> Value {
    json!({"event_source": "web", "event_source_id": "CTEST12345", "data": events})
}

/// Posts `body` with `Access-Token: token`; returns HTTP status and JSON body.
async fn post(sandbox: &SandboxHandle, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = client()
        .post(format!("{}/open_api/v1.3/event/track/", sandbox.base_url()))
        .json(body);
    if let Some(token) = token {
        request = request.header("Access-Token", token);
    }
    let response = request.send().await.expect("request is answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Asserts TikTok's envelope with `code` (always HTTP 200) and returns the message.
fn expect_code(status: u16, body: &Value, code: u64) -> String {
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"].as_u64(), Some(code), "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    body["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_valid_batch_is_accepted_and_recorded() {
    let sandbox = start().await;
    let mut body = batch(vec![payment("order-1"), payment("order-2")]);
    body["test_event_code"] = json!("TEST123");
    let (status, reply) = post(&sandbox, Some("token"), &body).await;
    assert_eq!(expect_code(status, &reply, 0), "OK");

    let records = sandbox.records();
    assert_eq!(records.tiktok.counters.accepted, 2);
    let event = &records.tiktok.events[1];
    assert_eq!(event.event_name, "CompletePayment");
    assert_eq!(event.event_id.as_deref(), Some("order-2"));
    assert_eq!(event.source, "web");
    assert_eq!(event.hashed["phone"], vec![sha("+16505551212")]);
    assert_eq!(event.plain["ttclid"], "E.C.P.abc123");
    assert_eq!(event.test_event_code.as_deref(), Some("TEST123"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_unhashed_email_rejects_the_whole_batch_with_code_40002() {
    let sandbox = start().await;
    let mut bad = payment("order-2");
    bad["user"]["email"] = json!("john.doe@example.com");
    let (status, reply) = post(
        &sandbox,
        Some("token"),
        &batch(vec![payment("order-1"), bad]),
    )
    .await;
    let message = expect_code(status, &reply, 40_002);
    assert!(
        message.contains("data[1]") && message.contains("user.email"),
        "{message}"
    );
    assert!(!message.contains("john.doe"));
    let counters = sandbox.records().tiktok.counters;
    assert_eq!(refusal_counts(&counters), (0, 2, 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn missing_fields_are_rejected_and_named() {
    let sandbox = start().await;
    for field in ["event", "event_time", "user"] {
        let mut bad = payment("x");
        bad.as_object_mut().unwrap().remove(field);
        let (status, reply) = post(&sandbox, Some("token"), &batch(vec![bad])).await;
        assert!(
            expect_code(status, &reply, 40_002).contains(field),
            "{field}"
        );
    }
    for field in ["event_source", "event_source_id", "data"] {
        let mut body = batch(vec![payment("x")]);
        body.as_object_mut().unwrap().remove(field);
        let (status, reply) = post(&sandbox, Some("token"), &body).await;
        assert!(
            expect_code(status, &reply, 40_002).contains(field),
            "{field}"
        );
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_stale_event_is_rejected() {
    let sandbox = start().await;
    let mut stale = payment("old");
    stale["event_time"] = json!(now_secs() - 8 * 24 * 3600);
    let (status, reply) = post(&sandbox, Some("token"), &batch(vec![stale])).await;
    assert!(expect_code(status, &reply, 40_002).contains("data[0]: event_time"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn bad_values_are_rejected() {
    let sandbox = start().await;
    let cases = [
        ("properties", "currency", json!("usd")),
        ("user", "ip", json!(sha("2001:db8::1"))),
        ("user", "external_id", json!("CRM-1")),
    ];
    for (object, field, value) in cases {
        let mut bad = payment("x");
        bad[object][field] = value;
        let (status, reply) = post(&sandbox, Some("token"), &batch(vec![bad])).await;
        assert!(
            expect_code(status, &reply, 40_002).contains(field),
            "{field}"
        );
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn more_than_1000_events_are_rejected() {
    let sandbox = start().await;
    let events = (0..1001).map(|i| payment(&format!("e{i}"))).collect();
    let (status, reply) = post(&sandbox, Some("token"), &batch(events)).await;
    assert!(expect_code(status, &reply, 40_002).contains("1000"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn missing_and_wrong_access_tokens_get_code_40001() {
    let config = SandboxConfig {
        tiktok_access_token: Some("right".into()),
        ..SandboxConfig::default()
    };
    let sandbox = start_with(config).await;
    let body = batch(vec![payment("x")]);
    let (status, reply) = post(&sandbox, None, &body).await;
    expect_code(status, &reply, 40_001);
    let (status, reply) = post(&sandbox, Some("wrong"), &body).await;
    expect_code(status, &reply, 40_001);
    let (status, reply) = post(&sandbox, Some("right"), &body).await;
    expect_code(status, &reply, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_resent_event_id_is_deduplicated() {
    let sandbox = start().await;
    let body = batch(vec![payment("order-1"), payment("order-1")]);
    let (status, reply) = post(&sandbox, Some("token"), &body).await;
    expect_code(status, &reply, 0);
    let records = sandbox.records();
    assert_eq!(records.tiktok.events.len(), 1);
    let counters = records.tiktok.counters;
    assert_eq!(
        (
            counters.accepted,
            counters.deduplicated,
            counters.duplicate_sends
        ),
        (1, 1, 1)
    );
    assert_eq!((counters.received, counters.unique), (2, 1));
    sandbox.shutdown().await;
}

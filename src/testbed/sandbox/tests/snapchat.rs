//! Snapchat Conversions API v3 endpoint tests.

use serde_json::{json, Value};

use super::{client, now_secs, sha, start, start_with};
use crate::testbed::sandbox::{SandboxConfig, SandboxHandle};

/// A valid web `PURCHASE` with id `id`.
fn purchase(id: &str) -> Value {
    json!({
        "event_name": "PURCHASE",
        "event_time": now_secs() - 60,
        "event_id": id,
        "action_source": "WEB",
        "event_source_url": "https://shop.example.com/orders/1",
        "user_data": {
            "em": [sha("john.doe@example.com")],
            "ph": [sha("16505551212")],
            "sc_click_id": "5e6f7a8b-0c1d-4e2f-9a3b-4c5d6e7f8a9b",
            "client_ip_address": "2001:db8::1",
            "client_user_agent": "Mozilla/5.0",
        },
        "custom_data": {"value": "42.50", "currency": "USD", "order_id": id},
    })
}

/// Posts `events` to `path` (`events` or `events/validate`) with `token` in the query.
async fn post(
    sandbox: &SandboxHandle,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut url = format!("{}/v3/snap-pixel-1/{path}", sandbox.base_url());
    if let Some(token) = token {
        url.push_str(&format!("?access_token={token}"));
    }
    let response = client()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// `{"data": events}`.
fn batch(events: Vec<Value>) -> Value {
    json!({ "data": events })
}

#[tokio::test]
async fn a_valid_batch_is_recorded_with_hashes_and_click_id() {
    let sandbox = start().await;
    let body = batch(vec![purchase("order-1"), purchase("order-2")]);
    let (status, reply) = post(&sandbox, "events", Some("tok"), &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "VALID");
    assert_eq!(reply["events"][1]["status"], "VALID");
    let records = sandbox.records();
    assert_eq!(records.snapchat.counters.accepted, 2);
    let event = &records.snapchat.events[1];
    assert_eq!(event.event_name, "PURCHASE");
    assert_eq!(event.event_id.as_deref(), Some("order-2"));
    assert_eq!(event.source, "WEB");
    assert_eq!(event.hashed["ph"], vec![sha("16505551212")]);
    assert_eq!(
        event.plain["sc_click_id"],
        "5e6f7a8b-0c1d-4e2f-9a3b-4c5d6e7f8a9b"
    );
    assert_eq!(event.value, Some(42.5));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn one_bad_event_fails_alone_and_the_others_are_recorded() {
    let sandbox = start().await;
    let mut bad = purchase("order-2");
    bad["user_data"]["em"] = json!(["john.doe@example.com"]);
    let body = batch(vec![purchase("order-1"), bad, purchase("order-3")]);
    let (status, reply) = post(&sandbox, "events", Some("tok"), &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "INVALID");
    assert_eq!(reply["events"][1]["status"], "INVALID");
    assert_eq!(reply["events"][1]["event"], 1);
    let reason = reply["events"][1]["reason"].as_str().unwrap();
    assert!(reason.contains("user_data.em"), "{reason}");
    assert!(!reply.to_string().contains("john.doe"), "{reply}");
    let counters = sandbox.records().snapchat.counters;
    assert_eq!(
        (counters.received, counters.accepted, counters.rejected),
        (3, 2, 1)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn milliseconds_old_and_future_times_are_refused() {
    let sandbox = start().await;
    let cases = [
        (json!(now_secs() * 1000), "milliseconds"),
        (json!(now_secs() - 38 * 24 * 3600), "37 days"),
        (json!(now_secs() + 3600), "future"),
        (json!(now_secs().to_string()), "integer"),
    ];
    for (time, expected) in cases {
        let mut event = purchase("x");
        event["event_time"] = time;
        let (_, reply) = post(&sandbox, "events", Some("tok"), &batch(vec![event])).await;
        let reason = reply["events"][0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(expected), "{expected}: {reply}");
    }
    assert_eq!(sandbox.records().snapchat.counters.accepted, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn required_fields_and_values_are_named() {
    let sandbox = start().await;
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for field in ["event_name", "event_time", "action_source", "user_data"] {
        let mut event = purchase("x");
        event.as_object_mut().unwrap().remove(field);
        cases.push((event, field));
    }
    let mut lower = purchase("x");
    lower["event_name"] = json!("purchase");
    cases.push((lower, "event_name"));
    let mut no_url = purchase("x");
    no_url.as_object_mut().unwrap().remove("event_source_url");
    cases.push((no_url, "event_source_url"));
    let mut no_value = purchase("x");
    no_value["custom_data"]
        .as_object_mut()
        .unwrap()
        .remove("value");
    cases.push((no_value, "custom_data.value"));
    let mut hashed_ip = purchase("x");
    hashed_ip["user_data"]["client_ip_address"] = json!(sha("2001:db8::1"));
    cases.push((hashed_ip, "client_ip_address"));
    let mut unknown = purchase("x");
    unknown["eventTime"] = json!(1);
    cases.push((unknown, "eventTime"));
    let mut nobody = purchase("x");
    nobody["user_data"] = json!({"client_user_agent": "Mozilla/5.0"});
    cases.push((nobody, "identifier"));
    for (event, field) in cases {
        let (_, reply) = post(&sandbox, "events", Some("tok"), &batch(vec![event])).await;
        let reason = reply["events"][0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(field), "{field}: {reply}");
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_envelope_and_batch_size_fail_the_whole_request() {
    let sandbox = start().await;
    let events = (0..2001).map(|i| purchase(&format!("e{i}"))).collect();
    let (status, reply) = post(&sandbox, "events", Some("tok"), &batch(events)).await;
    assert_eq!(status, 400);
    assert!(
        reply["reason"].as_str().unwrap().contains("2000"),
        "{reply}"
    );
    let (status, _) = post(&sandbox, "events", Some("tok"), &json!({"data": []})).await;
    assert_eq!(status, 400);
    let body = json!({"data": [purchase("x")], "pixel_id": "p"});
    let (status, _) = post(&sandbox, "events", Some("tok"), &body).await;
    assert_eq!(status, 400);
    let counters = sandbox.records().snapchat.counters;
    assert_eq!((counters.rejected_requests, counters.accepted), (3, 0));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_wrong_token_gets_401_and_a_bearer_header_is_accepted() {
    let sandbox = start_with(SandboxConfig {
        snapchat_access_token: Some("right".into()),
        ..SandboxConfig::default()
    })
    .await;
    let body = batch(vec![purchase("x")]);
    for token in [None, Some("wrong")] {
        let (status, reply) = post(&sandbox, "events", token, &body).await;
        assert_eq!(status, 401, "{reply}");
    }
    let response = client()
        .post(format!("{}/v3/p/events", sandbox.base_url()))
        .bearer_auth("right")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let stats = |token: &str| {
        client()
            .get(format!(
                "{}/v3/p/events/validate/stats?access_token={token}",
                sandbox.base_url()
            ))
            .send()
    };
    assert_eq!(stats("wrong").await.unwrap().status().as_u16(), 401);
    assert_eq!(stats("right").await.unwrap().status().as_u16(), 200);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn validate_answers_like_events_and_records_nothing() {
    let sandbox = start().await;
    let mut bad = purchase("b");
    bad["event_time"] = json!(now_secs() * 1000);
    let body = batch(vec![purchase("a"), bad]);
    let (status, reply) = post(&sandbox, "events/validate", Some("tok"), &body).await;
    assert_eq!(status, 200);
    assert_eq!(reply["events"][0]["status"], "VALID");
    assert_eq!(reply["events"][1]["status"], "INVALID");
    let records = sandbox.records();
    assert!(records.snapchat.events.is_empty());
    assert_eq!(records.snapchat.tested, 1);
    assert_eq!(records.snapchat.counters.received, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_resent_event_id_counts_once() {
    let sandbox = start().await;
    let body = batch(vec![purchase("order-1")]);
    for _ in 0..2 {
        let (status, _) = post(&sandbox, "events", Some("tok"), &body).await;
        assert_eq!(status, 200);
    }
    let records = sandbox.records();
    assert_eq!(records.snapchat.events.len(), 1);
    let c = records.snapchat.counters;
    assert_eq!(
        (c.received, c.unique, c.deduplicated, c.duplicate_sends),
        (2, 1, 1, 1)
    );
    sandbox.shutdown().await;
}

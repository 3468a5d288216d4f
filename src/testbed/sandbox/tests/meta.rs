//! Meta Conversions API endpoint tests.

use std::time::Duration;

use serde_json::{json, Value};

use super::{client, now_secs, refusal_counts, sha, start, start_with};
use crate::testbed::sandbox::{SandboxConfig, SandboxHandle};

/// A valid website purchase event with id `id`.
fn purchase(id: &str) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now_secs() - 60,
        "event_id": id,
        "action_source": "website",
        "event_source_url": "https://shop.example.com/orders/1",
        "user_data": {
            "em": [sha("john.doe@example.com")],
            "ph": sha("16505551212"),
            "client_ip_address": "203.0.113.9",
            "client_user_agent": "Mozilla/5.0",
            "fbc": "fb.1.1700000000000.AbCdEf123",
        },
        "custom_data": {"value": 42.5, "currency": "USD"},
    })
}

/// Posts `body` as JSON with `access_token=token` in the query; returns status and JSON body.
async fn post(sandbox: &SandboxHandle, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut url = format!("{}/v21.0/1234567890/events", sandbox.base_url());
    if let Some(token) = token {
        url = format!("{url}?access_token={token}");
    }
    let response = client()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request is answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Asserts Graph's error envelope and returns the error object.
fn graph_error(body: &Value) -> &Value {
    let error = &body["error"];
    assert_eq!(error["type"], "OAuthException", "{body}");
    assert!(error["fbtrace_id"].is_string(), "{body}");
    assert!(error["message"].is_string(), "{body}");
    error
}

/// Posts `event` alone and asserts the batch is refused with a message naming `what`.
async fn assert_refused_naming(sandbox: &SandboxHandle, event: Value, what: &str) {
    let (status, reply) = post(sandbox, Some("token"), &json!({"data": [event]})).await;
    assert_eq!(status, 400, "{what}");
    let message = graph_error(&reply)["message"].as_str().unwrap().to_string();
    assert!(message.contains(what), "{what}: {reply}");
}

#[tokio::test]
async fn a_valid_batch_is_accepted_and_recorded() {
    let sandbox = start().await;
    let body =
        json!({"data": [purchase("order-1"), purchase("order-2")], "test_event_code": "TEST1"});
    let (status, reply) = post(&sandbox, Some("token"), &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["events_received"], 2);
    assert_eq!(reply["messages"], json!([]));
    assert!(reply["fbtrace_id"].is_string());

    let records = sandbox.records();
    assert_eq!(records.meta.counters.requests, 1);
    assert_eq!(records.meta.counters.accepted, 2);
    let event = &records.meta.events[0];
    assert_eq!(event.event_id.as_deref(), Some("order-1"));
    assert_eq!(event.hashed["em"], vec![sha("john.doe@example.com")]);
    assert_eq!(event.plain["fbc"], "fb.1.1700000000000.AbCdEf123");
    assert_eq!(event.value, Some(42.5));
    assert_eq!(event.test_event_code.as_deref(), Some("TEST1"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_form_post_with_the_token_in_the_body_is_accepted() {
    let sandbox = start().await;
    let data = serde_json::to_string(&json!([purchase("form-1")])).unwrap();
    let response = client()
        .post(format!("{}/v21.0/1234567890/events", sandbox.base_url()))
        .form(&[("access_token", "token"), ("data", data.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(sandbox.records().meta.events.len(), 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_unhashed_email_rejects_the_whole_batch_naming_its_index() {
    let sandbox = start().await;
    let mut bad = purchase("order-2");
    bad["user_data"]["em"] = json!("john.doe@example.com");
    let (status, reply) = post(
        &sandbox,
        Some("token"),
        &json!({"data": [purchase("order-1"), bad]}),
    )
    .await;
    assert_eq!(status, 400);
    let error = graph_error(&reply);
    assert_eq!(error["code"], 100);
    assert!(error["error_subcode"].is_u64());
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("data[1]") && message.contains("user_data.em"),
        "{message}"
    );
    assert!(
        !message.contains("john.doe"),
        "the message must not echo the value"
    );
    let counters = sandbox.records().meta.counters;
    assert_eq!(refusal_counts(&counters), (0, 2, 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn uppercase_hex_is_not_a_valid_hash() {
    let sandbox = start().await;
    let mut bad = purchase("order-1");
    bad["user_data"]["ph"] = json!(sha("16505551212").to_uppercase());
    let (status, reply) = post(&sandbox, Some("token"), &json!({"data": [bad]})).await;
    assert_eq!(status, 400);
    assert!(graph_error(&reply)["message"]
        .as_str()
        .unwrap()
        .contains("user_data.ph"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_website_event_without_a_user_agent_is_rejected() {
    let sandbox = start().await;
    let mut bad = purchase("order-1");
    bad["user_data"]
        .as_object_mut()
        .unwrap()
        .remove("client_user_agent");
    let (status, reply) = post(&sandbox, Some("token"), &json!({"data": [bad]})).await;
    assert_eq!(status, 400);
    let message = graph_error(&reply)["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("data[0]") && message.contains("client_user_agent"),
        "{message}"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn each_missing_required_field_is_named() {
    let sandbox = start().await;
    for field in [
        "event_name",
        "event_time",
        "action_source",
        "user_data",
        "event_source_url",
    ] {
        let mut bad = purchase("order-1");
        bad.as_object_mut().unwrap().remove(field);
        assert_refused_naming(&sandbox, bad, field).await;
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_event_older_than_seven_days_rejects_the_batch() {
    let sandbox = start().await;
    let mut stale = purchase("old");
    stale["event_time"] = json!(now_secs() - 8 * 24 * 3600);
    let (status, reply) = post(
        &sandbox,
        Some("token"),
        &json!({"data": [purchase("new"), stale]}),
    )
    .await;
    assert_eq!(status, 400);
    let error = graph_error(&reply);
    assert_eq!(error["error_subcode"], 2_804_003);
    assert!(error["message"].as_str().unwrap().contains("data[1]"));
    assert!(sandbox.records().meta.events.is_empty());
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_old_physical_store_event_is_accepted_within_62_days() {
    let sandbox = start().await;
    let mut store = purchase("store-1");
    store["action_source"] = json!("physical_store");
    store["event_time"] = json!(now_secs() - 30 * 24 * 3600);
    let (status, reply) = post(&sandbox, Some("token"), &json!({"data": [store]})).await;
    assert_eq!(status, 200, "{reply}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_millisecond_event_time_is_rejected_as_future() {
    let sandbox = start().await;
    let mut bad = purchase("ms");
    bad["event_time"] = json!(now_secs() * 1000);
    assert_refused_naming(&sandbox, bad, "future").await;
    sandbox.shutdown().await;
}

#[tokio::test]
async fn malformed_identifiers_are_rejected() {
    let sandbox = start().await;
    let cases = [
        ("fbc", json!("fb.1.1700000000.AbCdEf")), // seconds, not milliseconds
        ("fbc", json!("AbCdEf123")),
        ("client_ip_address", json!(sha("203.0.113.9"))),
        ("external_id", json!("CRM-00123")),
        ("lead_id", json!("lead-1")),
    ];
    for (field, value) in cases {
        let mut bad = purchase("id");
        bad["user_data"][field] = value;
        assert_refused_naming(&sandbox, bad, field).await;
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_event_without_usable_customer_information_is_rejected() {
    let sandbox = start().await;
    let event = json!({
        "event_name": "Lead", "event_time": now_secs(), "action_source": "system_generated",
        "user_data": {"ct": sha("sanfrancisco")},
    });
    let (status, reply) = post(&sandbox, Some("token"), &json!({"data": [event]})).await;
    assert_eq!(status, 400);
    assert_eq!(graph_error(&reply)["error_subcode"], 2_804_050);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_purchase_without_currency_is_rejected() {
    let sandbox = start().await;
    let mut bad = purchase("id");
    bad["custom_data"] = json!({"value": 10});
    let (status, reply) = post(&sandbox, Some("token"), &json!({"data": [bad]})).await;
    assert_eq!(status, 400);
    assert!(graph_error(&reply)["message"]
        .as_str()
        .unwrap()
        .contains("currency"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn more_than_1000_events_are_rejected() {
    let sandbox = start().await;
    let data: Vec<Value> = (0..1001).map(|i| purchase(&format!("e{i}"))).collect();
    let (status, reply) = post(&sandbox, Some("token"), &json!({"data": data})).await;
    assert_eq!(status, 400);
    assert_eq!(graph_error(&reply)["code"], 100);
    assert_eq!(sandbox.records().meta.counters.rejected, 1001);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn missing_and_wrong_tokens_get_graph_auth_errors() {
    let config = SandboxConfig {
        meta_access_token: Some("right".into()),
        ..SandboxConfig::default()
    };
    let sandbox = start_with(config).await;
    let body = json!({"data": [purchase("x")]});
    let (status, reply) = post(&sandbox, None, &body).await;
    assert_eq!(
        (status, graph_error(&reply)["code"].as_u64()),
        (400, Some(104))
    );
    let (status, reply) = post(&sandbox, Some("wrong"), &body).await;
    assert_eq!(
        (status, graph_error(&reply)["code"].as_u64()),
        (400, Some(190))
    );
    let (status, _) = post(&sandbox, Some("right"), &body).await;
    assert_eq!(status, 200);
    assert_eq!(sandbox.records().meta.counters.rejected_requests, 2);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_non_numeric_pixel_id_is_an_unsupported_post_request() {
    let sandbox = start().await;
    let response = client()
        .post(format!(
            "{}/v21.0/not-a-pixel/events?access_token=t",
            sandbox.base_url()
        ))
        .json(&json!({"data": [purchase("x")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(graph_error(&body)["error_subcode"], 33);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_resent_event_id_is_deduplicated_within_48_hours() {
    let sandbox = start().await;
    let body = json!({"data": [purchase("order-1")]});
    for _ in 0..2 {
        let (status, reply) = post(&sandbox, Some("token"), &body).await;
        assert_eq!((status, reply["events_received"].as_u64()), (200, Some(1)));
    }
    let records = sandbox.records();
    assert_eq!(records.meta.events.len(), 1);
    let counters = records.meta.counters;
    assert_eq!(
        (
            counters.accepted,
            counters.deduplicated,
            counters.duplicate_sends
        ),
        (1, 1, 1)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_resend_outside_the_dedup_window_is_counted_again_but_still_a_duplicate_send() {
    let config = SandboxConfig {
        dedup_window: Duration::ZERO,
        ..SandboxConfig::default()
    };
    let sandbox = start_with(config).await;
    let body = json!({"data": [purchase("order-1")]});
    post(&sandbox, Some("token"), &body).await;
    post(&sandbox, Some("token"), &body).await;
    let counters = sandbox.records().meta.counters;
    assert_eq!(
        (
            counters.accepted,
            counters.deduplicated,
            counters.duplicate_sends
        ),
        (2, 0, 1)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn reading_the_pixel_checks_the_token_and_records_nothing() {
    // GIVEN a sandbox that accepts only one Meta token
    let sandbox = start_with(SandboxConfig {
        meta_access_token: Some("good".into()),
        ..SandboxConfig::default()
    })
    .await;
    let get = |token: &'static str, pixel: &'static str| {
        let url = format!(
            "{}/v21.0/{pixel}?fields=id,name&access_token={token}",
            sandbox.base_url()
        );
        async move {
            let response = client().get(url).send().await.expect("answered");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON body"))
        }
    };
    // WHEN the pixel is read with the right token, a wrong one, and an unknown pixel id
    let (ok_status, ok_body) = get("good", "1234567890").await;
    let (bad_status, bad_body) = get("wrong", "1234567890").await;
    let (pixel_status, pixel_body) = get("good", "not-a-pixel").await;
    // THEN only the first succeeds, the token error is Graph's 190, and nothing is recorded
    assert_eq!(ok_status, 200, "{ok_body}");
    assert_eq!(ok_body["id"], "1234567890");
    assert!(ok_body["name"].is_string());
    assert_eq!(bad_status, 400);
    assert_eq!(graph_error(&bad_body)["code"], 190);
    assert_eq!(pixel_status, 400);
    assert_eq!(graph_error(&pixel_body)["code"], 100);
    let records = sandbox.records();
    assert!(records.meta.events.is_empty());
    assert_eq!(records.meta.counters.requests, 0);
}

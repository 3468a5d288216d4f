//! Reddit Conversions API v3 endpoint tests.

use chrono::Utc;
use serde_json::{json, Value};

use super::{client, sha, start, start_with};
use crate::testbed::sandbox::{SandboxConfig, SandboxHandle};

/// A valid website purchase with conversion id `id`, a minute old (milliseconds).
fn purchase(id: &str) -> Value {
    json!({
        "event_at": Utc::now().timestamp_millis() - 60_000,
        "action_source": "WEBSITE",
        "type": {"tracking_type": "PURCHASE"},
        "click_id": "t2_abc123",
        "user": {
            "email": sha("johndoe@example.com"),
            "phone_number": sha("+16505551212"),
            "ip_address": "203.0.113.5",
            "user_agent": "Mozilla/5.0",
        },
        "metadata": {"conversion_id": id, "currency": "USD", "value": 42.5, "item_count": 1},
    })
}

/// Posts `{"data": data}` for pixel `a2_test` with a bearer token and `user_agent`.
async fn post(
    sandbox: &SandboxHandle,
    data: Value,
    token: Option<&str>,
    user_agent: Option<&str>,
) -> (u16, Value) {
    let mut request = client()
        .post(format!(
            "{}/api/v3/pixels/a2_test/conversion_events",
            sandbox.base_url()
        ))
        .json(&json!({"data": data}));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    if let Some(agent) = user_agent {
        request = request.header("User-Agent", agent);
    }
    let response = request.send().await.expect("request is answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// [`post`] with a valid token and a descriptive user agent.
async fn send(sandbox: &SandboxHandle, data: Value) -> (u16, Value) {
    post(sandbox, data, Some("token"), Some("pgcapi-test/1")).await
}

#[tokio::test]
async fn a_valid_batch_is_processed_and_recorded_with_its_test_id() {
    let sandbox = start().await;
    let data = json!({"events": [purchase("o-1"), purchase("o-2")], "test_id": "t2_testing"});
    let (status, body) = send(&sandbox, data).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["message"],
        "Successfully processed 2 conversion events."
    );
    let records = sandbox.records();
    assert_eq!(records.reddit.counters.accepted, 2);
    let event = &records.reddit.events[1];
    assert_eq!(event.event_name, "PURCHASE");
    assert_eq!(event.event_id.as_deref(), Some("o-2"));
    assert_eq!(event.source, "WEBSITE");
    assert_eq!(event.hashed["phone_number"], [sha("+16505551212")]);
    assert_eq!(event.plain["click_id"], "t2_abc123");
    assert_eq!(event.plain["pixel_id"], "a2_test");
    assert_eq!(event.test_event_code.as_deref(), Some("t2_testing"));
    assert_eq!(event.value, Some(42.5));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn one_invalid_event_fails_the_whole_batch() {
    let sandbox = start().await;
    let mut seconds = purchase("o-2");
    seconds["event_at"] = json!(Utc::now().timestamp() - 60);
    let (status, body) = send(&sandbox, json!({"events": [purchase("o-1"), seconds]})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["message"],
        "There were 1 invalid conversion events. None were processed."
    );
    assert_eq!(body["details"][0]["index"], 1);
    assert!(body["details"][0]["message"]
        .as_str()
        .unwrap()
        .contains("milliseconds"));
    let counters = sandbox.records().reddit.counters;
    assert_eq!((counters.accepted, counters.rejected), (0, 2));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn each_rule_of_an_event_is_enforced() {
    let sandbox = start().await;
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut raw_email = purchase("o");
    raw_email["user"]["email"] = json!("john.doe@example.com");
    cases.push((raw_email, "user.email must be a SHA-256"));
    let mut no_source = purchase("o");
    no_source.as_object_mut().unwrap().remove("action_source");
    cases.push((no_source, "action_source is required"));
    let mut custom = purchase("o");
    custom["type"] = json!({"tracking_type": "CUSTOM"});
    cases.push((custom, "custom_event_name is required"));
    let mut v2_type = purchase("o");
    v2_type["type"] = json!({"tracking_type": "Purchase"});
    cases.push((v2_type, "v3 event type"));
    let mut string_value = purchase("o");
    string_value["metadata"]["value"] = json!("42.5");
    cases.push((string_value, "metadata.value must be a number"));
    let mut old = purchase("o");
    old["event_at"] = json!(Utc::now().timestamp_millis() - 8 * 24 * 3600 * 1000);
    cases.push((old, "older than 7 days"));
    let mut nothing = purchase("o");
    nothing.as_object_mut().unwrap().remove("click_id");
    nothing["user"] = json!({"user_agent": "Mozilla/5.0"});
    cases.push((nothing, "no match key"));
    for (event, expected) in cases {
        let (status, body) = send(&sandbox, json!({"events": [event]})).await;
        assert_eq!(status, 400, "{expected}: {body}");
        let message = body["details"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{expected}: {body}");
    }
    assert_eq!(sandbox.records().reddit.counters.accepted, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_conversion_id_counts_once_per_event_type_and_action_source() {
    let sandbox = start().await;
    let mut in_store = purchase("o-1");
    in_store["action_source"] = json!("PHYSICAL_STORE");
    send(&sandbox, json!({"events": [purchase("o-1")]})).await;
    let (status, _) = send(&sandbox, json!({"events": [purchase("o-1"), in_store]})).await;
    assert_eq!(status, 200);
    let counters = sandbox.records().reddit.counters;
    assert_eq!((counters.unique, counters.deduplicated), (2, 1));
    assert_eq!(counters.duplicate_sends, 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn tokens_user_agents_and_batch_size_are_checked() {
    let config = SandboxConfig {
        reddit_access_token: Some("right".into()),
        ..SandboxConfig::default()
    };
    let sandbox = start_with(config).await;
    let one = || json!({"events": [purchase("o-1")]});
    let agent = Some("pgcapi-test/1");
    let (status, body) = post(&sandbox, one(), None, agent).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("No bearer token provided"))
    );
    let (status, body) = post(&sandbox, one(), Some("wrong"), agent).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    for generic in [None, Some("python-requests/2.31"), Some("curl/8.5.0")] {
        let (status, body) = post(&sandbox, one(), Some("right"), generic).await;
        assert_eq!(status, 429, "{generic:?}");
        assert_eq!(
            body["message"],
            "Your user agent was automatically ratelimited."
        );
    }
    let many: Vec<Value> = (0..1_001).map(|i| purchase(&format!("o-{i}"))).collect();
    let (status, body) = post(&sandbox, json!({"events": many}), Some("right"), agent).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("Bad Request"))
    );
    assert_eq!(sandbox.records().reddit.counters.accepted, 0);
    sandbox.shutdown().await;
}

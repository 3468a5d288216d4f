//! Pinterest Conversions API v5 endpoint tests.

use serde_json::{json, Value};

use super::{client, now_secs, sha, start, start_with};
use crate::testbed::sandbox::{SandboxConfig, SandboxHandle};

/// A valid web `checkout` with id `id`.
fn checkout(id: &str) -> Value {
    json!({
        "event_name": "checkout",
        "action_source": "web",
        "event_time": now_secs() - 60,
        "event_id": id,
        "event_source_url": "https://shop.example.com/orders/1",
        "user_data": {
            "em": [sha("john.doe@example.com")],
            "ph": [sha("16505551212")],
            "click_id": "dj0yJnU9ZXBpa3ZhbHVl",
            "client_ip_address": "203.0.113.5",
            "client_user_agent": "Mozilla/5.0",
        },
        "custom_data": {"value": "42.50", "currency": "USD", "order_id": id},
    })
}

/// Posts `body` to the events endpoint of account `account`.
async fn post_to(
    sandbox: &SandboxHandle,
    account: &str,
    query: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let url = format!(
        "{}/v5/ad_accounts/{account}/events{query}",
        sandbox.base_url()
    );
    let mut request = client().post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Posts `events` with a good token.
async fn post(sandbox: &SandboxHandle, events: Vec<Value>) -> (u16, Value) {
    post_to(
        sandbox,
        "549755885175",
        "",
        Some("tok"),
        &json!({ "data": events }),
    )
    .await
}

#[tokio::test]
async fn a_valid_batch_is_recorded_in_request_order() {
    let sandbox = start().await;
    let (status, reply) = post(&sandbox, vec![checkout("o-1"), checkout("o-2")]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["num_events_received"], 2);
    assert_eq!(reply["num_events_processed"], 2);
    assert_eq!(reply["events"][0]["status"], "processed");
    let records = sandbox.records();
    let event = &records.pinterest.events[1];
    assert_eq!(
        (event.event_name.as_str(), event.event_id.as_deref()),
        ("checkout", Some("o-2"))
    );
    assert_eq!(event.hashed["em"], vec![sha("john.doe@example.com")]);
    assert_eq!(event.plain["click_id"], "dj0yJnU9ZXBpa3ZhbHVl");
    assert_eq!(event.value, Some(42.5));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn one_failed_event_makes_a_422_and_the_others_are_recorded() {
    let sandbox = start().await;
    let mut stale = checkout("o-2");
    stale["event_time"] = json!(now_secs() - 8 * 24 * 3600);
    let (status, reply) = post(&sandbox, vec![checkout("o-1"), stale, checkout("o-3")]).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["code"], 953);
    let details = &reply["details"];
    assert_eq!(details["num_events_processed"], 2);
    assert_eq!(details["events"][1]["status"], "failed");
    assert!(details["events"][1]["error_message"]
        .as_str()
        .unwrap()
        .contains("in the past"));
    let c = sandbox.records().pinterest.counters;
    assert_eq!((c.received, c.accepted, c.rejected), (3, 2, 1));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn content_errors_fail_their_event() {
    let sandbox = start().await;
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut raw_email = checkout("x");
    raw_email["user_data"]["em"] = json!(["john.doe@example.com"]);
    cases.push((raw_email, "user_data.em"));
    let mut millis = checkout("x");
    millis["event_time"] = json!(now_secs() * 1000);
    cases.push((millis, "future"));
    let mut phone_only = checkout("x");
    phone_only["user_data"] = json!({"ph": [sha("16505551212")], "click_id": "abc"});
    cases.push((phone_only, "needs em"));
    let mut value = checkout("x");
    value["custom_data"]["value"] = json!("forty");
    cases.push((value, "custom_data.value"));
    let mut page = checkout("x");
    page["event_source_url"] = json!("shop.example.com/orders/1");
    cases.push((page, "event_source_url"));
    for (event, expected) in cases {
        let (status, reply) = post(&sandbox, vec![event]).await;
        assert_eq!(status, 422, "{expected}: {reply}");
        let message = reply["details"]["events"][0]["error_message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains(expected), "{expected}: {reply}");
        assert!(!reply.to_string().contains("john.doe"));
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn schema_errors_fail_the_whole_request_with_400() {
    let sandbox = start().await;
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut no_id = checkout("x");
    no_id.as_object_mut().unwrap().remove("event_id");
    cases.push((no_id, "'event_id' is a required property"));
    let mut extra = checkout("x");
    extra["custom_data"]["category_name"] = json!("shoes");
    cases.push((extra, "('category_name' was unexpected)"));
    let mut numeric_value = checkout("x");
    numeric_value["custom_data"]["value"] = json!(42.5);
    cases.push((numeric_value, "custom_data.value must be a string"));
    let mut upper = checkout("x");
    upper["event_name"] = json!("Checkout");
    cases.push((upper, "event_name"));
    let mut single = checkout("x");
    single["user_data"]["em"] = json!(sha("john.doe@example.com"));
    cases.push((single, "user_data.em"));
    for (event, expected) in cases {
        let (status, reply) = post(&sandbox, vec![checkout("ok"), event]).await;
        assert_eq!(status, 400, "{expected}: {reply}");
        assert_eq!(reply["code"], 1);
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected) && message.contains("data[1]"),
            "{reply}"
        );
    }
    let events = (0..1001).map(|i| checkout(&format!("e{i}"))).collect();
    let (status, _) = post(&sandbox, events).await;
    assert_eq!(status, 400);
    assert_eq!(sandbox.records().pinterest.counters.accepted, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn tokens_and_ad_accounts_are_checked() {
    let sandbox = start_with(SandboxConfig {
        pinterest_access_token: Some("right".into()),
        pinterest_ad_account_id: Some("111".into()),
        ..SandboxConfig::default()
    })
    .await;
    let body = json!({"data": [checkout("x")]});
    let (status, reply) = post_to(&sandbox, "111", "", Some("wrong"), &body).await;
    assert_eq!((status, reply["code"].as_u64()), (401, Some(2)));
    let (status, reply) = post_to(&sandbox, "111", "", None, &body).await;
    assert_eq!((status, reply["code"].as_u64()), (401, Some(2)));
    let (status, reply) = post_to(&sandbox, "222", "", Some("right"), &body).await;
    assert_eq!((status, reply["code"].as_u64()), (403, Some(29)));
    let (status, _) = post_to(&sandbox, "111", "", Some("right"), &body).await;
    assert_eq!(status, 200);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn test_mode_answers_the_same_and_records_nothing() {
    let sandbox = start().await;
    let body = json!({"data": [checkout("x")]});
    let (status, reply) = post_to(&sandbox, "1", "?test=true", Some("tok"), &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["num_events_processed"], 1);
    let records = sandbox.records();
    assert!(records.pinterest.events.is_empty());
    assert_eq!(records.pinterest.tested, 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn web_events_dedup_on_event_id_but_offline_ones_cannot() {
    let sandbox = start().await;
    for _ in 0..2 {
        assert_eq!(post(&sandbox, vec![checkout("o-1")]).await.0, 200);
    }
    let c = sandbox.records().pinterest.counters;
    assert_eq!((c.accepted, c.deduplicated, c.unique), (1, 1, 1));
    let mut offline = checkout("o-9");
    offline["action_source"] = json!("offline");
    for _ in 0..2 {
        assert_eq!(post(&sandbox, vec![offline.clone()]).await.0, 200);
    }
    let c = sandbox.records().pinterest.counters;
    assert_eq!((c.accepted, c.duplicate_sends), (3, 2));
    sandbox.shutdown().await;
}

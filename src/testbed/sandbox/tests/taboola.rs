//! Taboola S2S endpoint tests: the postback URL and the bulk endpoint.

use serde_json::{json, Value};

use super::{client, start};
use crate::testbed::sandbox::SandboxHandle;

/// A click id of the documented shape (URL-safe, 66 characters or more).
fn click(n: u32) -> String {
    format!("GiDxLZcEVjwEqkGfKQMQndUYMIeZXFHmZ0DrHIJhGS6kKiDzkGUos9GzkpqG-YHQATC_{n:06}")
}

/// Milliseconds now.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A valid bulk action.
fn action(n: u32, order: &str) -> Value {
    json!({
        "click-id": click(n),
        "timestamp": now_ms() - 60_000,
        "name": "purchase",
        "revenue": 42.5,
        "currency": "EUR",
        "orderid": order,
        "quantity": 2,
    })
}

/// Posts a bulk body to account `account`; returns the status and the body text.
async fn bulk(sandbox: &SandboxHandle, account: &str, body: &Value) -> (u16, String) {
    let response = client()
        .post(format!(
            "{}/{account}/log/3/bulk-s2s-action",
            sandbox.base_url()
        ))
        .json(body)
        .send()
        .await
        .expect("answered");
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Sends a postback with `query`; returns the status and the body text.
async fn postback(sandbox: &SandboxHandle, query: &str) -> (u16, String) {
    let response = client()
        .get(format!(
            "{}/actions-handler/log/3/s2s-action?{query}",
            sandbox.base_url()
        ))
        .send()
        .await
        .expect("answered");
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_bulk_request_is_answered_204_and_recorded() {
    let sandbox = start().await;
    let body = json!({"actions": [action(1, "o-1"), action(2, "o-2")]});
    let (status, text) = bulk(&sandbox, "1234567", &body).await;
    assert_eq!((status, text.as_str()), (204, ""));
    let records = sandbox.records().taboola;
    assert_eq!(records.conversions.len(), 2);
    let first = &records.conversions[0];
    assert_eq!(first.account_id.as_deref(), Some("1234567"));
    assert_eq!(first.click_id, click(1));
    assert_eq!(first.name, "purchase");
    assert_eq!(first.revenue, Some(42.5));
    assert_eq!(first.currency.as_deref(), Some("EUR"));
    assert_eq!(first.orderid.as_deref(), Some("o-1"));
    assert_eq!(first.quantity, Some(2));
    assert!(first.timestamp_ms.is_some());
    assert_eq!((records.counters.accepted, records.counters.unique), (2, 2));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_bad_bulk_action_is_answered_204_but_not_counted() {
    let sandbox = start().await;
    let mut seconds = action(2, "o-2");
    seconds["timestamp"] = json!(now_ms() / 1000);
    let mut short = action(3, "o-3");
    short["click-id"] = json!("GiC3sJdfEHXrroWoRIMZNc");
    let mut currency = action(4, "o-4");
    currency["currency"] = json!("eur");
    let mut unknown = action(5, "o-5");
    unknown["orderId"] = json!("o-5");
    let mut nameless = action(6, "o-6");
    nameless.as_object_mut().unwrap().remove("name");
    let mut revenue = action(7, "o-7");
    revenue["revenue"] = json!("42.50");
    let body = json!({"actions": [action(1, "o-1"), seconds, short, currency, unknown, nameless, revenue]});
    let (status, _) = bulk(&sandbox, "1234567", &body).await;
    assert_eq!(status, 204, "Taboola does not validate bulk actions");
    let records = sandbox.records().taboola;
    assert_eq!(records.conversions.len(), 1);
    let reasons: Vec<(usize, &str)> = records
        .rejections
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    for (index, field) in [
        (1, "milliseconds"),
        (2, "click-id"),
        (3, "currency"),
        (4, "orderId"),
        (5, "name"),
        (6, "revenue"),
    ] {
        let (i, reason) = reasons[index - 1];
        assert_eq!(i, index);
        assert!(reason.contains(field), "{reason}");
    }
    let c = records.counters;
    assert_eq!(
        (c.received, c.accepted, c.rejected, c.rejected_requests),
        (7, 1, 6, 0)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_bad_bulk_envelope_is_refused_whole() {
    let sandbox = start().await;
    let too_many: Vec<Value> = (0..1001).map(|i| action(i, "o")).collect();
    for (account, body, word) in [
        ("acme", json!({"actions": [action(1, "o")]}), "numeric"),
        (
            "1234567",
            json!({"conversions": [action(1, "o")]}),
            "actions",
        ),
        ("1234567", json!({"actions": []}), "1 to 1000"),
        ("1234567", json!({"actions": too_many}), "1 to 1000"),
        ("1234567", json!([action(1, "o")]), "object"),
    ] {
        let (status, text) = bulk(&sandbox, account, &body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(word), "{word}: {text}");
    }
    let c = sandbox.records().taboola.counters;
    assert_eq!((c.accepted, c.rejected_requests), (0, 5));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_same_click_and_name_within_a_minute_count_once_in_bulk_whatever_the_order() {
    let sandbox = start().await;
    let first = action(1, "o-1");
    let mut other_order = first.clone();
    other_order["orderid"] = json!("o-2");
    other_order["revenue"] = json!(10);
    let mut next_minute = first.clone();
    next_minute["timestamp"] = json!(first["timestamp"].as_i64().unwrap() + 60_000);
    let body = json!({"actions": [first.clone(), other_order]});
    assert_eq!(bulk(&sandbox, "1", &body).await.0, 204);
    // A resend of the same request, as after a lost answer.
    assert_eq!(
        bulk(&sandbox, "1", &json!({"actions": [first]})).await.0,
        204
    );
    assert_eq!(
        bulk(&sandbox, "1", &json!({"actions": [next_minute]}))
            .await
            .0,
        204
    );
    let records = sandbox.records().taboola;
    assert_eq!(records.conversions.len(), 2);
    let c = records.counters;
    assert_eq!(
        (c.received, c.unique, c.deduplicated, c.duplicate_sends),
        (4, 2, 2, 2)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_postback_is_answered_204_and_recorded() {
    let sandbox = start().await;
    let query = format!(
        "click-id={}&name=purchase&revenue=9.99&currency=USD&orderid=o-1&quantity=3",
        click(1)
    );
    let (status, text) = postback(&sandbox, &query).await;
    assert_eq!((status, text.as_str()), (204, ""));
    let records = sandbox.records().taboola;
    let conversion = &records.conversions[0];
    assert_eq!(conversion.account_id, None);
    assert_eq!(conversion.timestamp_ms, None);
    assert_eq!(conversion.revenue, Some(9.99));
    assert_eq!(conversion.quantity, Some(3));
    assert_eq!(records.postbacks, 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_postback_without_click_id_or_name_or_with_an_unparsable_click_id_gets_400() {
    let sandbox = start().await;
    let good = click(1);
    for (query, word) in [
        (
            format!("clickid={good}&name=purchase"),
            "click-id param is missing",
        ),
        ("click-id=abc&name=purchase".to_string(), "not parsable"),
        (format!("click-id={good}"), "name param is missing"),
        (
            format!("click-id={good}&name=purchase&revenue=1e3"),
            "revenue",
        ),
        (
            format!("click-id={good}&name=purchase&currency=XYZ"),
            "currency",
        ),
        (
            format!("click-id={good}&name=purchase&quantity=1.5"),
            "quantity",
        ),
    ] {
        let (status, text) = postback(&sandbox, &query).await;
        assert_eq!(status, 400, "{query}");
        assert!(text.contains(word), "{word}: {text}");
        assert!(!text.contains(&good), "never the value: {text}");
    }
    let c = sandbox.records().taboola.counters;
    assert_eq!((c.accepted, c.rejected), (0, 6));
    sandbox.shutdown().await;
}

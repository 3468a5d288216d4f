//! Snapchat encoder and answer tests (the requests against the sandbox are in tests/cases).

use super::*;
use crate::destinations::event_fields::test_rows::assert_refunds_and_old_events_skipped;
use crate::destinations::test_support::{h, purchase, t0};
use reqwest::StatusCode;

#[test]
fn a_website_purchase_becomes_snap_s_event_in_seconds() {
    let mut d = purchase(7, t0());
    d.payload
        .keys
        .insert(MatchKey::ScClickId, "5e6f-click".into());
    let event = encode_event(&d, t0()).unwrap();
    assert_eq!(event["event_name"], "PURCHASE");
    assert_eq!(event["event_time"], json!(t0().timestamp()));
    assert_eq!(event["event_time"].to_string().len(), 10);
    assert_eq!(event["action_source"], "WEB");
    assert_eq!(event["event_id"], "order-7");
    assert_eq!(event["user_data"]["em"], json!([h('a')]));
    assert_eq!(event["user_data"]["ph"], json!([h('b')]));
    assert_eq!(event["user_data"]["sc_click_id"], "5e6f-click");
    assert_eq!(event["user_data"]["client_ip_address"], "203.0.113.7");
    assert!(event["user_data"].get("gclid").is_none());
    assert_eq!(event["custom_data"]["value"], json!(49.9));
    assert_eq!(event["custom_data"]["currency"], "EUR");
    assert_eq!(event["custom_data"]["order_id"], "order-7");
}

#[test]
fn refunds_old_events_and_anonymous_rows_are_not_sent() {
    assert_refunds_and_old_events_skipped(encode_event, &purchase(1, t0()), "snapchat", 37);
    let mut anonymous = purchase(3, t0());
    anonymous.payload.keys.clear();
    assert_eq!(
        encode_event(&anonymous, t0()),
        Err(Outcome::skipped("no usable match key for snapchat"))
    );
    let mut unnamed = purchase(4, t0());
    unnamed.event_name = Some("Refund".into());
    assert!(matches!(
        encode_event(&unnamed, t0()),
        Err(Outcome::Failed { .. })
    ));
    unnamed.payload.platform_event = Some("CUSTOM_EVENT_1".into());
    assert_eq!(
        encode_event(&unnamed, t0()).unwrap()["event_name"],
        "CUSTOM_EVENT_1"
    );
}

#[test]
fn a_row_without_a_page_is_an_offline_event() {
    let mut d = purchase(5, t0());
    d.payload.event_source_url = None;
    assert_eq!(encode_event(&d, t0()).unwrap()["action_source"], "OFFLINE");
}

#[test]
fn snap_s_answer_is_spread_per_event() {
    let body = json!({"status": "INVALID", "events": [
        {"status": "VALID", "event": 0},
        {"status": "INVALID", "event": 1, "reason": "custom_data.currency must be an upper-case ISO 4217 code"},
    ]})
    .to_string();
    let out = classify(StatusCode::OK, None, &body, &[3, 5, 8]);
    assert_eq!(out[0], (3, Outcome::Sent { platform_ref: None }));
    assert_eq!(
        out[1],
        (
            5,
            Outcome::failed("snapchat: custom_data.currency must be an upper-case ISO 4217 code")
        )
    );
    assert!(matches!(out[2], (8, Outcome::Retry { .. })));
    let denied = classify(StatusCode::UNAUTHORIZED, None, "{}", &[1]);
    assert!(matches!(
        &denied[0].1,
        Outcome::NeedsOperator { retry_after: None, error } if error.starts_with("snapchat: HTTP 401")
    ));
    let busy = classify(StatusCode::TOO_MANY_REQUESTS, None, "{}", &[1]);
    assert!(matches!(busy[0].1, Outcome::Retry { .. }));
}

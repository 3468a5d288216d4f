//! Pinterest encoder and answer tests (the requests against the sandbox are in tests/cases).

use super::*;
use crate::destinations::test_support::{h, purchase, t0};
use crate::event::Kind;
use chrono::TimeDelta;
use reqwest::StatusCode;

#[test]
fn a_website_purchase_becomes_a_pinterest_checkout_with_a_string_value() {
    let mut d = purchase(7, t0());
    d.payload.keys.insert(MatchKey::Epik, "dj0yJnU9".into());
    let event = encode_event(&d, t0()).unwrap();
    assert_eq!(event["event_name"], "checkout");
    assert_eq!(event["action_source"], "web");
    assert_eq!(event["event_time"], json!(t0().timestamp()));
    assert_eq!(event["event_id"], "order-7");
    assert_eq!(event["user_data"]["em"], json!([h('a')]));
    assert_eq!(event["user_data"]["click_id"], "dj0yJnU9");
    assert_eq!(event["custom_data"]["value"], "49.9");
    assert_eq!(event["custom_data"]["order_id"], "order-7");
}

#[test]
fn refunds_old_events_and_rows_without_email_or_browser_are_not_sent() {
    let mut refund = purchase(1, t0());
    refund.kind = Kind::Restatement;
    assert_eq!(
        encode_event(&refund, t0()),
        Err(Outcome::skipped("platform cannot retract"))
    );
    let old = purchase(2, t0() - TimeDelta::days(8));
    assert_eq!(
        encode_event(&old, t0()),
        Err(Outcome::skipped("too old for pinterest (7 days)"))
    );
    let mut phone_only = purchase(3, t0());
    phone_only.payload.keys.retain(|k, _| *k == MatchKey::Phone);
    assert!(matches!(
        encode_event(&phone_only, t0()),
        Err(Outcome::Skipped { .. })
    ));
}

#[test]
fn a_422_fails_only_the_failed_events() {
    let report = json!({"num_events_received": 2, "num_events_processed": 1, "events": [
        {"status": "processed", "error_message": null},
        {"status": "failed", "error_message": "custom_data.currency must be an upper-case ISO 4217 code"},
    ]});
    let body = json!({"code": 4, "message": "x", "details": report}).to_string();
    let out = classify(StatusCode::UNPROCESSABLE_ENTITY, None, &body, &[2, 4]);
    assert_eq!(out[0], (2, Outcome::Sent { platform_ref: None }));
    assert!(matches!(&out[1], (4, Outcome::Failed { error }) if error.contains("currency")));
    let ok = classify(StatusCode::OK, None, &report.to_string(), &[9]);
    assert_eq!(ok[0], (9, Outcome::Sent { platform_ref: None }));
    let schema = classify(
        StatusCode::BAD_REQUEST,
        None,
        r#"{"code":1,"message":"bad"}"#,
        &[1, 2],
    );
    assert_eq!(
        schema[1],
        (2, Outcome::failed("pinterest: HTTP 400: code 1: bad"))
    );
    let denied = classify(
        StatusCode::FORBIDDEN,
        None,
        r#"{"code":29,"message":"no"}"#,
        &[1],
    );
    assert!(matches!(
        denied[0].1,
        Outcome::NeedsOperator {
            retry_after: None,
            ..
        }
    ));
}

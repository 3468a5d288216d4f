//! Reddit encoder and answer classification.

use chrono::{TimeDelta, Utc};
use reqwest::StatusCode;
use serde_json::json;

use super::*;
use crate::destinations::event_fields::test_rows::assert_refunds_and_old_events_skipped;
use crate::destinations::test_support::{h, purchase};

/// A website purchase for Reddit: hashed email and phone, IP, user agent and an rdt_cid.
fn row() -> Delivery {
    let mut d = purchase(1, Utc::now() - TimeDelta::minutes(5));
    d.payload.keys.remove(&MatchKey::Gclid);
    d.payload.keys.remove(&MatchKey::Ttclid);
    d.payload
        .keys
        .insert(MatchKey::RdtCid, "3184742045291813272".into());
    d
}

#[test]
fn an_event_has_milliseconds_the_v3_type_and_the_conversion_id() {
    let d = row();
    let event = encode_event(&d, Utc::now()).unwrap();
    assert_eq!(
        event,
        json!({
            "event_at": d.event_time.timestamp_millis(),
            "action_source": "WEBSITE",
            "type": {"tracking_type": "PURCHASE"},
            "click_id": "3184742045291813272",
            "event_source_url": "https://shop.example.com/orders/1",
            "user": {
                "email": h('a'),
                "phone_number": h('b'),
                "ip_address": "203.0.113.7",
                "user_agent": "Mozilla/5.0",
            },
            "metadata": {"conversion_id": "order-1", "value": 49.9, "currency": "EUR"},
        })
    );
}

#[test]
fn event_names_map_to_tracking_types_or_custom_events() {
    for (name, kind) in [
        ("Purchase", "PURCHASE"),
        ("Lead", "LEAD"),
        ("SIGN_UP", "SIGN_UP"),
        ("CompleteRegistration", "SIGN_UP"),
        ("AddToCart", "ADD_TO_CART"),
    ] {
        assert_eq!(
            event_type(name).unwrap(),
            json!({"tracking_type": kind}),
            "{name}"
        );
    }
    assert_eq!(
        event_type("Won deal").unwrap(),
        json!({"tracking_type": "CUSTOM", "custom_event_name": "Won deal"})
    );
    assert!(event_type(&"x".repeat(65)).is_err());
    let mut app = row();
    app.action_source = Some("physical_store".into());
    assert_eq!(
        encode_event(&app, Utc::now()).unwrap()["action_source"],
        "PHYSICAL_STORE"
    );
}

#[test]
fn refunds_old_events_and_rows_without_match_keys_are_not_sent() {
    assert_refunds_and_old_events_skipped(encode_event, &row(), "reddit", 7);
    let mut bare = row();
    bare.payload.keys.clear();
    bare.payload
        .keys
        .insert(MatchKey::UserAgent, "Mozilla/5.0".into());
    assert_eq!(
        encode_event(&bare, Utc::now()),
        Err(Outcome::skipped("no usable match key for reddit"))
    );
}

#[test]
fn answers_are_classified_for_bisection_retry_or_the_operator() {
    assert_eq!(
        classify(StatusCode::OK, None, "{}"),
        BatchAnswer::Sent(None)
    );
    let invalid = r#"{"message":"There were 1 invalid conversion events. None were processed."}"#;
    assert_eq!(
        classify(StatusCode::BAD_REQUEST, None, invalid),
        BatchAnswer::Rejected(
            "reddit: HTTP 400: There were 1 invalid conversion events. None were processed.".into()
        )
    );
    let throttled = classify(
        StatusCode::TOO_MANY_REQUESTS,
        Some(std::time::Duration::from_secs(3)),
        r#"{"message":"Too many requests/events within timeframe."}"#,
    );
    assert!(
        matches!(throttled, BatchAnswer::Retry { retry_after: Some(d), .. } if d.as_secs() == 3)
    );
    let forbidden = classify(
        StatusCode::FORBIDDEN,
        None,
        r#"{"message":"Missing adsconversions scope"}"#,
    );
    assert!(matches!(forbidden, BatchAnswer::NeedsOperator { .. }));
}

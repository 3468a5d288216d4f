//! Outbrain encoder and answer tests (the requests against the sandbox are in tests/cases).

use super::*;
use crate::destinations::event_fields::test_rows::click_only;
use crate::event::Kind;
use reqwest::StatusCode;

/// An Outbrain click id, and (`row`) a purchase whose only key it is.
const CLICK: &str = "00ab12cd34ef56ab78cd90ef12ab34cd56";
fn row(id: i64) -> Delivery {
    click_only(id, MatchKey::ObClickId, CLICK)
}

#[test]
fn a_purchase_becomes_one_postback_with_the_click_id_name_order_value_and_currency() {
    let params = encode_postback(&row(7)).unwrap();
    let url = postback_url("https://tr.outbrain.com/unifiedPixel", &params);
    assert_eq!(
        url,
        format!(
            "https://tr.outbrain.com/unifiedPixel?ob_click_id={CLICK}&name=Purchase&orderId=order-7&orderValue=49.90&currency=EUR"
        )
    );
    let mut named = row(7);
    named.payload.platform_event = Some("Purchase S2S".into());
    let url = postback_url(
        "http://127.0.0.1:1/unifiedPixel",
        &encode_postback(&named).unwrap(),
    );
    assert!(url.contains("name=Purchase+S2S"), "{url}");
}

#[test]
fn rows_outbrain_cannot_use_are_decided_before_any_request() {
    let mut no_click = row(1);
    no_click.payload.keys.clear();
    no_click
        .payload
        .keys
        .insert(MatchKey::Email, "a".repeat(64));
    assert_eq!(
        encode_postback(&no_click),
        Err(Outcome::skipped("no click id"))
    );
    let mut refund = row(2);
    refund.kind = Kind::Retraction;
    assert_eq!(
        encode_postback(&refund),
        Err(Outcome::skipped("platform cannot retract"))
    );
    let mut currency = row(3);
    currency.currency = Some("euro".into());
    assert!(
        matches!(encode_postback(&currency), Err(Outcome::Failed { error }) if error.contains("ISO 4217"))
    );
    let mut value = row(4);
    value.value = Some("1e3".into());
    assert!(matches!(
        encode_postback(&value),
        Err(Outcome::Failed { .. })
    ));
    let mut bare = row(5);
    bare.value = None;
    bare.currency = None;
    let params = encode_postback(&bare).unwrap();
    let names: Vec<&str> = params.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, ["ob_click_id", "name", "orderId"]);
}

#[test]
fn the_status_decides_the_row() {
    assert_eq!(classify(StatusCode::OK, None, ""), BatchAnswer::Sent(None));
    assert!(matches!(
        classify(StatusCode::SERVICE_UNAVAILABLE, Some(Duration::from_secs(3)), ""),
        BatchAnswer::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(3)
    ));
    assert_eq!(
        classify(
            StatusCode::BAD_REQUEST,
            None,
            "{\"error\": \"name is required\"}"
        ),
        BatchAnswer::Rejected("outbrain: HTTP 400: {\"error\": \"name is required\"}".into())
    );
}

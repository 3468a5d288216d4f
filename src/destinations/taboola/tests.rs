//! Taboola encoder and answer tests (the requests against the sandbox are in tests/cases).

use super::*;
use crate::config::{ApiConfig, DispatchConfig, TaboolaConfig};
use crate::destinations::event_fields::test_rows::click_only;
use crate::event::Kind;
use chrono::Utc;
use reqwest::StatusCode;

/// Taboola's sample click id.
const CLICK: &str = "GiDxLZcEVjwEqkGfKQMQndUYMIeZXFHmZ0DrHIJhGS6kKiDzkGUos9GzkpqG-YHQATCwxlQ";

/// A purchase whose only key is a Taboola click id.
fn row(id: i64) -> Delivery {
    click_only(id, MatchKey::TaboolaClickId, CLICK)
}

#[test]
fn a_purchase_becomes_a_bulk_action_with_a_millisecond_timestamp() {
    let action = encode_action(&row(7)).unwrap();
    assert_eq!(
        action,
        json!({
            "click-id": CLICK,
            "timestamp": 1_796_121_015_000_i64,
            "name": "Purchase",
            "revenue": 49.9,
            "currency": "EUR",
            "orderid": "order-7",
        })
    );
    let mut named = row(7);
    named.payload.platform_event = Some("make_purchase".into());
    assert_eq!(encode_action(&named).unwrap()["name"], "make_purchase");
}

/// A Taboola destination of account 1234567 at the production host.
fn taboola() -> Taboola {
    let config = TaboolaConfig {
        account_id: "1234567".into(),
    };
    Taboola::new(
        "tb",
        &ApiConfig::default(),
        &config,
        &DispatchConfig::default(),
    )
    .unwrap()
}

#[test]
fn rows_taboola_cannot_use_are_decided_before_any_request() {
    let mut no_click = row(1);
    no_click.payload.keys.clear();
    no_click
        .payload
        .keys
        .insert(MatchKey::Email, "a".repeat(64));
    let mut refund = row(2);
    refund.kind = Kind::Retraction;
    let mut currency = row(3);
    currency.currency = Some("CHF".into());
    let mut nameless = row(4);
    nameless.event_name = None;
    let plan = taboola().plan(&[no_click, refund, currency, nameless, row(5)], Utc::now());
    assert_eq!(plan.requests.len(), 1);
    assert_eq!(plan.requests[0].rows, vec![4]);
    let preview = plan.preview();
    assert_eq!(
        preview.requests[0].url,
        "https://trc.taboola.com/1234567/log/3/bulk-s2s-action"
    );
    assert_eq!(preview.requests[0].body["actions"][0]["orderid"], "order-5");
    let decided: Vec<(usize, Outcome)> = preview.not_sent;
    assert_eq!(decided[0], (0, Outcome::skipped("no click id")));
    assert_eq!(decided[1], (1, Outcome::skipped("platform cannot retract")));
    assert!(matches!(&decided[2], (2, Outcome::Failed { error }) if error.contains("CHF")));
    assert!(matches!(&decided[3], (3, Outcome::Failed { error }) if error.contains("event name")));
}

#[test]
fn the_status_decides_the_batch() {
    assert_eq!(
        classify(StatusCode::NO_CONTENT, None, ""),
        BatchAnswer::Sent(None)
    );
    let wait = Some(Duration::from_secs(7));
    assert!(matches!(
        classify(StatusCode::TOO_MANY_REQUESTS, wait, ""),
        BatchAnswer::Retry { retry_after, .. } if retry_after == wait
    ));
    assert!(matches!(
        classify(StatusCode::BAD_GATEWAY, None, "<html>"),
        BatchAnswer::Retry { .. }
    ));
    assert!(matches!(
        classify(StatusCode::NOT_FOUND, None, ""),
        BatchAnswer::NeedsOperator { retry_after: None, ref error } if error.contains("account_id")
    ));
    assert_eq!(
        classify(StatusCode::BAD_REQUEST, None, "{\"error\":\"bad\"}"),
        BatchAnswer::Rejected("taboola: HTTP 400: {\"error\":\"bad\"}".into())
    );
}

#[test]
fn the_bulk_url_names_the_account() {
    assert_eq!(
        bulk_url("https://trc.taboola.com", " 1234567 "),
        "https://trc.taboola.com/1234567/log/3/bulk-s2s-action"
    );
}

//! Meta encoder, classification and bisection tests (against a fake Meta and the sandbox).

use super::*;
use crate::destinations::batch::BatchAnswer;
use crate::destinations::event_fields::test_rows::serve;
use crate::destinations::test_support::{h, purchase, t0};
use crate::event::Kind;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::TimeDelta;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn a_website_purchase_becomes_meta_s_exact_event_shape() {
    // GIVEN a website purchase with hashed and plain keys (and a Google click id Meta does not use)
    let d = purchase(7, t0());
    // WHEN it is encoded
    let event = encode_event(&d, t0() + TimeDelta::hours(1)).unwrap();
    // THEN the fields carry Meta's names, seconds, and a lowercase currency
    assert_eq!(
        event,
        json!({
            "event_name": "Purchase",
            "event_time": t0().timestamp(),
            "event_id": "order-7",
            "action_source": "website",
            "event_source_url": "https://shop.example.com/orders/7",
            "user_data": {
                "em": h('a'),
                "ph": h('b'),
                "client_ip_address": "203.0.113.7",
                "client_user_agent": "Mozilla/5.0",
            },
            "custom_data": {"value": 49.9, "currency": "eur"},
        })
    );
    let config = MetaConfig {
        pixel_id: "123".into(),
        access_token: Secret::new("tok"),
        test_event_code: Some("TEST123".into()),
    };
    let meta = Meta::new(
        "meta",
        &ApiConfig::default(),
        &config,
        &DispatchConfig::default(),
    )
    .unwrap();
    let preview = meta.plan(&[d], t0() + TimeDelta::hours(1)).preview();
    let body = &preview.requests[0].body;
    assert_eq!(body["test_event_code"], "TEST123");
    assert_eq!(body["data"], json!([event]));
}

#[test]
fn a_crm_event_carries_the_lead_id_and_crm_event_source() {
    let mut d = purchase(8, t0());
    d.action_source = Some("system_generated".into());
    d.payload.event_source_url = None;
    d.payload
        .keys
        .insert(MatchKey::LeadId, "123456789012345".into());
    d.payload.lead_event_source = Some("pgcapi".into());
    d.payload.platform_event = Some("Converted".into());
    let event = encode_event(&d, t0()).unwrap();
    assert_eq!(event["action_source"], "system_generated");
    assert_eq!(event["event_name"], "Converted");
    assert_eq!(event["user_data"]["lead_id"], "123456789012345");
    assert_eq!(event["custom_data"]["event_source"], "crm");
    assert_eq!(event["custom_data"]["lead_event_source"], "pgcapi");
    assert!(event.get("event_source_url").is_none());
}

#[test]
fn events_older_than_seven_days_are_skipped_before_sending() {
    let d = purchase(1, t0());
    let out = encode_event(&d, t0() + TimeDelta::days(7) + TimeDelta::seconds(1));
    assert_eq!(out, Err(Outcome::skipped("too old for meta (7 days)")));
    let mut store = purchase(2, t0());
    store.action_source = Some("physical_store".into());
    assert!(encode_event(&store, t0() + TimeDelta::days(30)).is_ok());
}

#[test]
fn events_without_a_usable_match_key_are_skipped() {
    let mut d = purchase(1, t0());
    d.payload
        .keys
        .retain(|k, _| *k == MatchKey::UserAgent || *k == MatchKey::Gclid);
    assert_eq!(
        encode_event(&d, t0()),
        Err(Outcome::skipped("no usable match key for meta"))
    );
}

#[test]
fn retractions_are_skipped_because_meta_cannot_retract() {
    let mut d = purchase(1, t0());
    d.kind = Kind::Retraction;
    assert_eq!(
        encode_event(&d, t0()),
        Err(Outcome::skipped("platform cannot retract"))
    );
}

#[test]
fn a_400_envelope_is_a_rejection_with_meta_s_code_and_message() {
    let body = r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,
        "error_subcode":2804003,"error_user_title":"Event Timestamp Too Old",
        "error_user_msg":"The timestamp for this event is too far in the past.","fbtrace_id":"AbC"}}"#;
    let answer = classify(reqwest::StatusCode::BAD_REQUEST, None, body);
    assert_eq!(
        answer,
        BatchAnswer::Rejected(
            "meta: HTTP 400 OAuthException code 100 subcode 2804003: Invalid parameter \
             (Event Timestamp Too Old: The timestamp for this event is too far in the past.) \
             [fbtrace_id AbC]"
                .into()
        )
    );
}

#[test]
fn throttling_and_server_errors_are_retried_with_retry_after() {
    let throttled = classify(
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_secs(12)),
        r#"{"error":{"message":"Too many calls","code":4}}"#,
    );
    assert!(matches!(
        throttled,
        BatchAnswer::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(12)
    ));
    let business = classify(
        reqwest::StatusCode::BAD_REQUEST,
        None,
        r#"{"error":{"message":"User request limit reached","code":80004}}"#,
    );
    assert!(matches!(business, BatchAnswer::Retry { .. }));
    assert!(matches!(
        classify(
            reqwest::StatusCode::BAD_GATEWAY,
            None,
            "<html>bad gateway</html>"
        ),
        BatchAnswer::Retry { .. }
    ));
    let token = classify(
        reqwest::StatusCode::BAD_REQUEST,
        None,
        r#"{"error":{"message":"Invalid OAuth access token","code":190}}"#,
    );
    assert!(matches!(
        token,
        BatchAnswer::NeedsOperator { retry_after: None, ref error } if error.contains("code 190")
    ));
}

#[test]
fn a_200_is_sent_with_the_trace_id_as_reference() {
    let answer = classify(
        reqwest::StatusCode::OK,
        None,
        r#"{"events_received":2,"messages":[],"fbtrace_id":"XyZ"}"#,
    );
    assert_eq!(answer, BatchAnswer::Sent(Some("XyZ".into())));
}

/// What the fake Meta saw: the event ids of every request, and the token.
#[derive(Default)]
struct Seen {
    requests: Vec<Vec<String>>,
    tokens: Vec<String>,
}

/// A Meta destination at `endpoint` for dataset 1234567890.
fn test_meta(endpoint: &str) -> Meta {
    let api = ApiConfig {
        endpoint: Some(endpoint.to_string()),
        ..ApiConfig::default()
    };
    let config = MetaConfig {
        pixel_id: "1234567890".into(),
        access_token: Secret::new("tok"),
        test_event_code: None,
    };
    Meta::new("meta", &api, &config, &DispatchConfig::default()).unwrap()
}

/// A fake Meta that rejects every batch containing the event id `order-3`, as Meta does.
async fn fake_meta(seen: Arc<Mutex<Seen>>) -> String {
    async fn events(
        State(seen): State<Arc<Mutex<Seen>>>,
        axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>,
        Json(body): Json<Value>,
    ) -> (axum::http::StatusCode, Json<Value>) {
        let ids: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect();
        let bad = ids.iter().any(|id| id == "order-3");
        let mut seen = seen.lock().unwrap();
        seen.requests.push(ids);
        seen.tokens.extend(
            q.into_iter()
                .filter(|(k, _)| k == "access_token")
                .map(|(_, v)| v),
        );
        if bad {
            (
                axum::http::StatusCode::BAD_REQUEST,
                Json(
                    json!({"error": {"message": "Invalid parameter", "type": "OAuthException",
                    "code": 100, "error_subcode": 2804019, "fbtrace_id": "T"}}),
                ),
            )
        } else {
            (
                axum::http::StatusCode::OK,
                Json(json!({"events_received": 1, "messages": [], "fbtrace_id": "OK"})),
            )
        }
    }
    let app = Router::new()
        .route("/{version}/{pixel}/events", post(events))
        .with_state(seen);
    serve(app).await
}

#[tokio::test]
async fn a_rejected_batch_is_split_until_only_the_bad_event_fails() {
    // GIVEN a fake Meta that rejects any batch holding event order-3
    let seen = Arc::new(Mutex::new(Seen::default()));
    let endpoint = fake_meta(seen.clone()).await;
    let meta = test_meta(&endpoint);
    let now = Utc::now();
    let batch: Vec<Delivery> = (0..6).map(|i| purchase(i, now)).collect();
    // WHEN the batch of six is sent
    let out = meta.send(&batch).await;
    // THEN five are sent and order-3 alone failed with Meta's message
    for (i, o) in out.iter().enumerate() {
        if i == 3 {
            assert_eq!(
                o,
                &Outcome::failed(
                    "meta: HTTP 400 OAuthException code 100 subcode 2804019: Invalid parameter \
                     [fbtrace_id T]"
                )
            );
        } else {
            assert_eq!(
                o,
                &Outcome::Sent {
                    platform_ref: Some("OK".into())
                },
                "row {i}"
            );
        }
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.requests[0].len(), 6);
    assert!(seen.requests.len() <= 7, "{:?}", seen.requests);
    assert!(seen.tokens.iter().all(|t| t == "tok"));
    // AND no good event was accepted twice
    let accepted: Vec<&String> = seen
        .requests
        .iter()
        .filter(|r| !r.iter().any(|id| id == "order-3"))
        .flatten()
        .collect();
    assert_eq!(accepted.len(), 5);
}

/// The test against the sandbox (`testbed`), marked `#[cfg(test)]` once more because the layer
/// check (tests/cases/architecture.rs) reads this file on its own and exempts only such items.
#[cfg(test)]
mod against_the_sandbox {
    use super::*;

    #[tokio::test]
    async fn a_stale_event_the_checks_missed_fails_alone_when_the_sandbox_rejects_its_batch() {
        // GIVEN the sandbox, and pgcapi's clock three hours behind it, so that an event 7 days and
        // one hour old passes the pre-send age check among five fresh ones
        let sandbox = crate::testbed::sandbox::Sandbox::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let meta = test_meta(&sandbox.base_url());
        let now = Utc::now();
        let mut batch: Vec<Delivery> = (0..6).map(|i| purchase(i, now)).collect();
        batch[2].event_time = now - TimeDelta::days(7) - TimeDelta::hours(1);
        let behind = now - TimeDelta::hours(3);
        assert!(encode_event(&batch[2], behind).is_ok());
        // WHEN the batch is sent
        let out = meta.send_at(&batch, behind).await;
        // THEN the sandbox refused the whole batch, and bisection failed the stale event alone, with
        // the platform's message naming the 7-day window
        for (i, o) in out.iter().enumerate() {
            match o {
                Outcome::Failed { error } if i == 2 => {
                    assert!(error.contains("older than 7 days"), "{error}")
                }
                Outcome::Sent { .. } if i != 2 => {}
                other => panic!("row {i}: {other:?}"),
            }
        }
        let records = sandbox.records().meta;
        assert!(records.counters.rejected_requests >= 1);
        let mut ids: Vec<_> = records
            .events
            .iter()
            .filter_map(|e| e.event_id.clone())
            .collect();
        ids.sort();
        assert_eq!(ids, ["order-0", "order-1", "order-3", "order-4", "order-5"]);
        // AND with the right clock the same event is skipped before sending, naming the window
        let out = meta.send(&batch[2..3]).await;
        assert_eq!(out, vec![Outcome::skipped("too old for meta (7 days)")]);
        assert_eq!(
            sandbox.records().meta.counters.requests,
            records.counters.requests
        );
        sandbox.shutdown().await;
    }
}

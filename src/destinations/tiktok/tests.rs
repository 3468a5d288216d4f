//! TikTok encoder, classification and request-splitting tests (against a fake TikTok).

use super::*;
use crate::destinations::batch::BatchAnswer;
use crate::destinations::event_fields::test_rows::serve;
use crate::destinations::test_support::{h, purchase, t0};
use crate::event::Kind;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use chrono::TimeDelta;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn a_website_purchase_becomes_tiktok_s_exact_event_shape() {
    // GIVEN a website purchase: the rule's `Purchase` is TikTok's current standard name
    let d = purchase(7, t0());
    // WHEN it is encoded into a request
    let config = TiktokConfig {
        pixel_code: "CTEST12345".into(),
        crm_event_set_id: None,
        access_token: Secret::new("tok"),
        test_event_code: None,
    };
    let tiktok = Tiktok::new(
        "tiktok",
        &ApiConfig::default(),
        &config,
        &DispatchConfig::default(),
    )
    .unwrap();
    let body = tiktok.plan(&[d], t0()).preview().requests[0].body.clone();
    // THEN names, seconds, plain click id/IP/UA, hashed email/phone and uppercase currency are as TikTok wants
    assert_eq!(
        body,
        json!({
            "event_source": "web",
            "event_source_id": "CTEST12345",
            "data": [{
                "event": "Purchase",
                "event_time": t0().timestamp(),
                "event_id": "order-7",
                "user": {
                    "email": h('a'),
                    "phone": h('b'),
                    "ip": "203.0.113.7",
                    "user_agent": "Mozilla/5.0",
                    "ttclid": "E.C.P.test",
                },
                "properties": {"value": 49.9, "currency": "EUR"},
                "page": {"url": "https://shop.example.com/orders/7"},
            }],
        })
    );
}

#[test]
fn crm_events_use_the_crm_event_source_and_retractions_are_skipped() {
    let mut d = purchase(1, t0());
    d.action_source = Some("system_generated".into());
    assert_eq!(event_source(&d), "crm");
    d.kind = Kind::Retraction;
    assert_eq!(
        encode_event(&d, t0()),
        Err(Outcome::skipped("platform cannot retract"))
    );
    let mut old = purchase(2, t0());
    old.kind = Kind::Conversion;
    assert_eq!(
        encode_event(&old, t0() + TimeDelta::days(8)),
        Err(Outcome::skipped("too old for tiktok (7 days)"))
    );
}

#[test]
fn the_code_in_a_200_body_decides_the_outcome() {
    let ok = classify(
        reqwest::StatusCode::OK,
        None,
        r#"{"code":0,"message":"OK","request_id":"r1","data":{}}"#,
    );
    assert_eq!(ok, BatchAnswer::Sent(Some("r1".into())));
    let bad = classify(
        reqwest::StatusCode::OK,
        None,
        r#"{"code":40002,"message":"Invalid parameter at data[0]: event is required","request_id":"r2"}"#,
    );
    assert_eq!(
        bad,
        BatchAnswer::Rejected(
            "tiktok: code 40002: Invalid parameter at data[0]: event is required [request_id r2]"
                .into()
        )
    );
    let limited = classify(
        reqwest::StatusCode::OK,
        None,
        r#"{"code":40100,"message":"Too many requests"}"#,
    );
    assert!(matches!(limited, BatchAnswer::Retry { .. }));
    let throttled = classify(
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_secs(5)),
        "",
    );
    assert!(matches!(
        throttled,
        BatchAnswer::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(5)
    ));
    let token = classify(
        reqwest::StatusCode::OK,
        None,
        r#"{"code":40001,"message":"Access token is incorrect"}"#,
    );
    assert!(matches!(
        token,
        BatchAnswer::NeedsOperator {
            retry_after: None,
            ..
        }
    ));
    let denied = classify(
        reqwest::StatusCode::FORBIDDEN,
        Some(Duration::from_secs(3)),
        "",
    );
    assert!(matches!(
        denied,
        BatchAnswer::NeedsOperator { retry_after: Some(d), .. } if d == Duration::from_secs(3)
    ));
}

#[tokio::test]
async fn a_rejected_batch_is_split_and_web_and_crm_events_travel_separately() {
    // GIVEN a fake TikTok rejecting (code 40002) any request holding event order-2
    let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let s = seen.clone();
    let app = Router::new().route(
        "/open_api/v1.3/event/track/",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let s = s.clone();
            async move {
                assert_eq!(headers["access-token"], "tok");
                let data = body["data"].as_array().unwrap();
                let bad = data.iter().any(|e| e["event_id"] == "order-2");
                s.lock()
                    .unwrap()
                    .push((body["event_source"].as_str().unwrap().into(), data.len()));
                Json(if bad {
                    json!({"code": 40002, "message": "Invalid parameter"})
                } else {
                    json!({"code": 0, "message": "OK", "request_id": "ok"})
                })
            }
        }),
    );
    let api = ApiConfig {
        endpoint: Some(serve(app).await),
        ..ApiConfig::default()
    };
    let config = TiktokConfig {
        pixel_code: "CTEST".into(),
        crm_event_set_id: Some("CRMSET1".into()),
        access_token: Secret::new("tok"),
        test_event_code: None,
    };
    let t = Tiktok::new("tiktok", &api, &config, &DispatchConfig::default()).unwrap();
    let now = Utc::now();
    let mut batch: Vec<Delivery> = (0..5).map(|i| purchase(i, now)).collect();
    batch[4].action_source = Some("system_generated".into());
    // WHEN the batch is sent
    let out = t.send(&batch).await;
    // THEN only order-2 failed, and the CRM event went in a request of its own
    for (i, o) in out.iter().enumerate() {
        if i == 2 {
            assert_eq!(o, &Outcome::failed("tiktok: code 40002: Invalid parameter"));
        } else {
            assert!(matches!(o, Outcome::Sent { .. }), "{i}: {o:?}");
        }
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], ("web".to_string(), 4));
    assert_eq!(seen.last().unwrap(), &("crm".to_string(), 1));
}

#[test]
fn a_crm_event_carries_its_lead_and_needs_a_crm_event_set() {
    // GIVEN a won deal (system_generated) with a TikTok lead id and the CRM's name
    let mut d = purchase(3, t0());
    d.action_source = Some("system_generated".into());
    d.payload
        .keys
        .insert(MatchKey::LeadId, "7212345678901234567".into());
    d.payload.lead_event_source = Some("pgcapi".into());
    // WHEN it is encoded
    let event = encode_event(&d, t0()).unwrap();
    // THEN the lead travels in `lead`, not in `user`
    assert_eq!(
        event["lead"],
        json!({"lead_id": "7212345678901234567", "lead_event_source": "pgcapi"})
    );
    assert!(event["user"].get("lead_id").is_none());
    // AND it goes to the CRM event set, or fails saying the key is missing
    let tiktok = |crm_event_set_id: Option<&str>| {
        let config = TiktokConfig {
            pixel_code: "CPIX".into(),
            crm_event_set_id: crm_event_set_id.map(str::to_string),
            access_token: Secret::new("tok"),
            test_event_code: None,
        };
        let api = ApiConfig::default();
        Tiktok::new("tiktok", &api, &config, &DispatchConfig::default()).unwrap()
    };
    let planned = tiktok(Some("CRMSET")).plan(std::slice::from_ref(&d), t0());
    assert_eq!(planned.requests[0].rows, vec![0]);
    assert_eq!(planned.requests[0].fields["event_source_id"], "CRMSET");
    let refused = tiktok(None).plan(&[d], t0());
    assert!(
        matches!(&refused.not_sent[0].1, Outcome::Failed { error } if error.contains("crm_event_set_id"))
    );
    // AND a web event never sends the lead id
    let mut web = purchase(4, t0());
    web.payload.keys.insert(MatchKey::LeadId, "1".into());
    let event = encode_event(&web, t0()).unwrap();
    assert!(event.get("lead").is_none() && event["user"].get("lead_id").is_none());
}

#[test]
fn purchases_carry_their_contents_and_type_when_the_rule_maps_them() {
    let mut d = purchase(5, t0());
    d.payload.content_ids = Some("sku-1, sku-2,".into());
    d.payload.content_type = Some("product".into());
    let event = encode_event(&d, t0()).unwrap();
    assert_eq!(
        event["properties"],
        json!({"value": 49.9, "currency": "EUR", "content_type": "product",
               "contents": [{"content_id": "sku-1"}, {"content_id": "sku-2"}]})
    );
}

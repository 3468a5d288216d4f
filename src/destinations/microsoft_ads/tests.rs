//! Microsoft Advertising unit tests: encoding, the token exchange with a rotated refresh token, and
//! answer classification.

use super::*;
use crate::destinations::test_support::{h, purchase, t0};

fn microsoft(d: &mut Delivery) {
    d.payload.conversion_action = Some("Offline purchase".into());
    d.payload.keys.clear();
    d.payload
        .keys
        .insert(MatchKey::Msclkid, "3d5a6b0c9e2f41a8b7c6d5e4f3a2b1c0".into());
    d.payload.keys.insert(MatchKey::Email, h('a'));
}

#[test]
fn an_offline_conversion_has_microsoft_s_exact_shape() {
    let mut d = purchase(7, t0() + TimeDelta::milliseconds(730));
    microsoft(&mut d);
    let c = encode_conversion(&d, t0() + TimeDelta::days(1)).unwrap();
    assert_eq!(
        c,
        json!({
            "ConversionName": "Offline purchase",
            "ConversionTime": "2026-03-01T12:00:00Z",
            "MicrosoftClickId": "3d5a6b0c9e2f41a8b7c6d5e4f3a2b1c0",
            "HashedEmailAddress": h('a'),
            "ConversionValue": 49.9,
            "ConversionCurrencyCode": "EUR",
        })
    );
}

#[test]
fn a_row_without_click_id_email_or_phone_is_skipped_with_the_reason() {
    let mut d = purchase(1, t0());
    microsoft(&mut d);
    d.payload.keys.clear();
    assert_eq!(
        encode_conversion(&d, t0()),
        Err(Outcome::skipped(
            "no msclkid and no hashed email or phone for microsoft ads"
        ))
    );
    d.payload.keys.insert(MatchKey::Phone, h('b'));
    let c = encode_conversion(&d, t0()).unwrap();
    assert_eq!(c["HashedPhoneNumber"], h('b'));
    assert!(c.get("MicrosoftClickId").is_none());
    assert_eq!(
        encode_conversion(&d, t0() + TimeDelta::days(91)),
        Err(Outcome::skipped("too old for microsoft ads (90 days)"))
    );
}

#[test]
fn adjustments_repeat_the_conversion_s_name_time_and_click_id() {
    let mut d = purchase(7, t0() + TimeDelta::milliseconds(300));
    microsoft(&mut d);
    d.kind = Kind::Retraction;
    let now = t0() + TimeDelta::hours(5);
    let conversion = encode_conversion(&d, now).unwrap();
    let retract = encode_adjustment(&d, now).unwrap();
    for field in ["ConversionName", "ConversionTime", "MicrosoftClickId"] {
        assert_eq!(retract[field], conversion[field], "{field}");
    }
    assert_eq!(retract["AdjustmentType"], "Retract");
    assert_eq!(retract["AdjustmentTime"], "2026-03-01T17:00:00Z");
    assert!(retract.get("AdjustmentValue").is_none());
    assert!(retract.get("AdjustmentCurrencyCode").is_none());
    d.kind = Kind::Restatement;
    d.value = Some("30".into());
    let restate = encode_adjustment(&d, now).unwrap();
    assert_eq!(restate["AdjustmentType"], "Restate");
    assert_eq!(restate["AdjustmentValue"], 30.0);
    assert_eq!(restate["AdjustmentCurrencyCode"], "EUR");
    d.value = None;
    assert!(matches!(
        encode_adjustment(&d, now),
        Err(Outcome::Failed { .. })
    ));
}

#[test]
fn a_known_click_time_bounds_the_conversion() {
    let mut d = purchase(1, t0());
    microsoft(&mut d);
    d.payload.click_time = Some(t0() + TimeDelta::minutes(5));
    assert!(matches!(
        encode_conversion(&d, t0() + TimeDelta::hours(1)),
        Err(Outcome::Failed { .. })
    ));
    d.payload.click_time = Some(t0() - TimeDelta::days(89));
    assert!(encode_conversion(&d, t0()).is_ok());
    assert_eq!(
        encode_conversion(&d, t0() + TimeDelta::days(2)),
        Err(Outcome::skipped(
            "click too old for microsoft ads (90 days)"
        ))
    );
}

#[test]
fn a_future_conversion_time_waits_instead_of_being_refused() {
    let mut d = purchase(1, t0() + TimeDelta::seconds(3));
    microsoft(&mut d);
    match encode_conversion(&d, t0()) {
        Err(Outcome::Retry { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(3)))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_rotated_refresh_token_is_used_for_the_next_refresh() {
    use axum::routing::post;
    use std::sync::{Arc, Mutex};
    // GIVEN a token endpoint that answers each refresh with a new refresh token
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/token",
        post(move |body: String| {
            let s = s.clone();
            async move {
                assert!(body.contains("grant_type=refresh_token"), "{body}");
                assert!(body.contains("msads.manage"), "{body}");
                assert!(!body.contains("client_secret"), "{body}");
                let n = {
                    let mut seen = s.lock().unwrap();
                    seen.push(body);
                    seen.len()
                };
                axum::Json(
                    json!({"access_token": format!("at-{n}"), "expires_in": 3600,
                    "refresh_token": format!("rt-{n}"), "token_type": "Bearer"}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = MicrosoftAdsConfig {
        token_endpoint: Some(format!("http://{addr}/token")),
        customer_id: "1234567".into(),
        account_id: "7654321".into(),
        developer_token: Secret::new("dev"),
        client_id: Secret::new("cid"),
        client_secret: None,
        refresh_token: Secret::new("rt-0"),
    };
    let api = ApiConfig::default();
    let ms = MicrosoftAds::new("microsoft", &api, &config, &DispatchConfig::default()).unwrap();
    // WHEN a token is fetched, cached, and fetched again after the cache is dropped
    assert_eq!(ms.access_token().await.unwrap().expose(), "at-1");
    assert_eq!(ms.access_token().await.unwrap().expose(), "at-1");
    ms.token.lock().await.cached = None;
    assert_eq!(ms.access_token().await.unwrap().expose(), "at-2");
    // THEN the second refresh used the rotated token
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].contains("refresh_token=rt-0"), "{}", seen[0]);
    assert!(seen[1].contains("refresh_token=rt-1"), "{}", seen[1]);
}

#[test]
fn partial_errors_map_to_rows_by_index() {
    let body = json!({"PartialErrors": [
        {"Code": 5617, "ErrorCode": "ClickIdDateTimeOutsideGoalConversionWindow",
         "Message": "The click is outside the goal's conversion window.", "Index": 1,
         "FieldPath": null, "Details": null, "Type": "BatchError"},
        {"Code": 5615, "ErrorCode": "OfflineConversionNotAcceptedForGoal",
         "Message": "Not yet.", "Index": 2},
    ]})
    .to_string();
    let Answer::Rows(out) = classify(reqwest::StatusCode::OK, Some("trk".into()), &body, 3) else {
        panic!()
    };
    assert_eq!(
        out[0],
        Outcome::Sent {
            platform_ref: Some("trk".into())
        }
    );
    assert_eq!(
        out[1],
        Outcome::failed(
            "ClickIdDateTimeOutsideGoalConversionWindow (5617): The click is outside the goal's conversion window."
        )
    );
    assert!(matches!(
        out[2],
        Outcome::Retry {
            retry_after: Some(GOAL_NOT_READY_DELAY),
            ..
        }
    ));
}

#[test]
fn row_errors_inside_a_fault_fail_their_rows_and_retry_the_others() {
    let body = json!({"TrackingId": "t", "Type": "ApiFaultDetail", "BatchErrors": [
        {"Code": null, "ErrorCode": "OfflineConversionMicrosoftClickIdInvalid",
         "Message": "Bad click.", "Index": 0}]})
    .to_string();
    let Answer::Rows(out) = classify(reqwest::StatusCode::BAD_REQUEST, None, &body, 2) else {
        panic!()
    };
    assert_eq!(
        out[0],
        Outcome::failed("OfflineConversionMicrosoftClickIdInvalid: Bad click.")
    );
    assert!(matches!(out[1], Outcome::Retry { .. }), "{:?}", out[1]);
}

#[test]
fn throttling_and_faults_in_a_200_are_read_from_the_body() {
    let throttled = json!({"TrackingId": "t", "Errors": [
        {"Code": 117, "ErrorCode": "CallRateExceeded", "Message": "Too many calls."}]})
    .to_string();
    for status in [reqwest::StatusCode::OK, reqwest::StatusCode::BAD_REQUEST] {
        assert_eq!(
            classify(status, None, &throttled, 2),
            Answer::Batch(BatchAnswer::Retry {
                error: format!(
                    "microsoft ads: HTTP {}: CallRateExceeded (117): Too many calls.",
                    status.as_u16()
                ),
                retry_after: Some(THROTTLE_DELAY),
            })
        );
    }
    let expired = json!({"Errors": [{"Code": 109, "ErrorCode": "AuthenticationTokenExpired",
        "Message": "Authentication token expired. Please renew it or obtain a new one."}]})
    .to_string();
    match classify(reqwest::StatusCode::OK, None, &expired, 1) {
        Answer::Batch(BatchAnswer::Retry { retry_after, error }) => {
            assert_eq!(retry_after, None, "{error}");
        }
        other => panic!("{other:?}"),
    }
    let soap =
        "<s:Envelope><s:Body><s:Fault>Authentication token expired</s:Fault></s:Body></s:Envelope>";
    assert!(matches!(
        classify(reqwest::StatusCode::OK, None, soap, 1),
        Answer::Batch(BatchAnswer::Retry { .. })
    ));
    let developer = json!({"Errors": [{"Code": 105, "ErrorCode": "InvalidCredentials",
        "Message": "Authentication failed."}]})
    .to_string();
    assert!(matches!(
        classify(reqwest::StatusCode::UNAUTHORIZED, None, &developer, 1),
        Answer::Batch(BatchAnswer::NeedsOperator {
            retry_after: None,
            ..
        })
    ));
}

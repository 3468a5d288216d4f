//! Google Ads unit tests: encoding and Google's time rules, answer classification, and a fake Google
//! for the uploads and the token cache.

use super::*;
use crate::destinations::test_support::{google_oauth, h, purchase, t0};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use std::sync::{Arc, Mutex};

fn google(d: &mut Delivery) {
    d.payload.conversion_action = Some("customers/1234567890/conversionActions/1001".into());
}

#[test]
fn a_click_conversion_has_google_s_exact_shape() {
    // GIVEN a purchase with a gclid, a hashed email and phone, and a plain IP Google does not take
    let mut d = purchase(7, t0());
    google(&mut d);
    d.payload.consent_column = true;
    let now = t0() + TimeDelta::days(1);
    // WHEN it is encoded
    let c = encode_conversion(&d, now).unwrap();
    // THEN it carries the click id, the action, Google's date format, the order id and consent
    assert_eq!(
        c,
        json!({
            "gclid": "Cj0KCQ-test",
            "conversionAction": "customers/1234567890/conversionActions/1001",
            "conversionDateTime": "2026-03-01 12:00:00+00:00",
            "conversionValue": 49.9,
            "currencyCode": "EUR",
            "orderId": "order-7",
            "userIdentifiers": [
                {"hashedEmail": h('a'), "userIdentifierSource": "FIRST_PARTY"},
                {"hashedPhoneNumber": h('b'), "userIdentifierSource": "FIRST_PARTY"},
            ],
            "consent": {"adUserData": "GRANTED"},
        })
    );
    // AND a rule without a consent column sends no consent at all
    d.payload.consent_column = false;
    assert!(encode_conversion(&d, now).unwrap().get("consent").is_none());
    let mut g = google_ads("http://google.test");
    g.validate_only = true;
    let body = g.plan(&[d], now).preview().requests[0].body.clone();
    assert_eq!(body["partialFailure"], true);
    assert_eq!(body["validateOnly"], true);
    assert_eq!(body["conversions"].as_array().unwrap().len(), 1);
}

#[test]
fn only_one_braid_is_sent_and_gclid_wins() {
    let mut d = purchase(1, t0());
    google(&mut d);
    d.payload.keys.remove(&MatchKey::Gclid);
    d.payload.keys.insert(MatchKey::Gbraid, "gb".into());
    d.payload.keys.insert(MatchKey::Wbraid, "wb".into());
    let c = encode_conversion(&d, t0()).unwrap();
    assert_eq!(c["gbraid"], "gb");
    assert!(c.get("wbraid").is_none() && c.get("gclid").is_none());
}

#[test]
fn conversions_are_checked_against_google_s_time_rules() {
    let mut d = purchase(1, t0());
    google(&mut d);
    assert_eq!(
        encode_conversion(&d, t0() + TimeDelta::days(91)),
        Err(Outcome::skipped("too old for google ads (90 days)"))
    );
    d.payload.click_time = Some(t0() - TimeDelta::hours(2));
    match encode_conversion(&d, t0()) {
        Err(Outcome::Retry { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(4 * 3600)))
        }
        other => panic!("{other:?}"),
    }
    d.payload.conversion_action = None;
    assert!(matches!(
        encode_conversion(&d, t0()),
        Err(Outcome::Failed { .. })
    ));
}

#[test]
fn retractions_and_restatements_are_keyed_by_order_id() {
    let mut d = purchase(7, t0());
    google(&mut d);
    d.kind = Kind::Retraction;
    let now = t0() + TimeDelta::days(2);
    assert_eq!(
        encode_adjustment(&d, now).unwrap(),
        json!({
            "conversionAction": "customers/1234567890/conversionActions/1001",
            "orderId": "order-7",
            "adjustmentDateTime": "2026-03-03 12:00:00+00:00",
            "adjustmentType": "RETRACTION",
        })
    );
    d.kind = Kind::Restatement;
    d.value = Some("30".into());
    let r = encode_adjustment(&d, now).unwrap();
    assert_eq!(r["adjustmentType"], "RESTATEMENT");
    assert_eq!(
        r["restatementValue"],
        json!({"adjustedValue": 30.0, "currencyCode": "EUR"})
    );
    assert_eq!(
        encode_adjustment(&d, t0() + TimeDelta::days(55)),
        Err(Outcome::skipped(
            "too old for google ads adjustments (54 days)"
        ))
    );
}

#[test]
fn a_retraction_in_the_second_of_its_conversion_waits_for_the_next_second() {
    // GIVEN a conversion at 12:00:00.300 and a refund dispatched at 12:00:00.800
    let mut d = purchase(7, t0() + TimeDelta::milliseconds(300));
    google(&mut d);
    d.kind = Kind::Retraction;
    let now = t0() + TimeDelta::milliseconds(800);
    // THEN it is retried once 12:00:01 has come, not sent with an equal time and refused for good
    match encode_adjustment(&d, now) {
        Err(Outcome::Retry { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_millis(200)))
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    // AND a second later it is sent, timed after the conversion
    let later = encode_adjustment(&d, t0() + TimeDelta::milliseconds(1_000)).unwrap();
    assert_eq!(later["adjustmentDateTime"], "2026-03-01 12:00:01+00:00");
}

fn partial_failure(errors: Value) -> String {
    json!({
        "results": [{}, {"gclid": "x"}, {}],
        "partialFailureError": {
            "code": 3,
            "message": "summary",
            "details": [{
                "@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                "errors": errors,
            }],
        },
        "jobId": "42",
    })
    .to_string()
}

fn at(i: usize) -> Value {
    json!({"fieldPathElements": [{"fieldName": "conversions", "index": i}, {"fieldName": "gclid"}]})
}

#[test]
fn partial_failure_errors_map_back_to_rows_by_index() {
    // GIVEN three rows of which row 0 is expired and row 2 was uploaded before
    let rows: Vec<Delivery> = (0..3).map(|i| purchase(i, t0())).collect();
    let sent: Vec<&Delivery> = rows.iter().collect();
    let body = partial_failure(json!([
        {"errorCode": {"conversionUploadError": "EXPIRED_EVENT"},
         "message": "The click associated with this conversion is too old.", "location": at(0)},
        {"errorCode": {"conversionUploadError": "ORDER_ID_ALREADY_IN_USE"},
         "message": "The order id is already in use.", "location": at(2)},
    ]));
    // WHEN the answer is classified
    let answer = classify(reqwest::StatusCode::OK, None, &body, &sent, t0());
    // THEN row 0 failed with Google's code and message, rows 1 and 2 count as sent
    let sent_42 = Outcome::Sent {
        platform_ref: Some("42".into()),
    };
    assert_eq!(
        answer,
        UploadAnswer::Rows(vec![
            Outcome::failed("EXPIRED_EVENT: The click associated with this conversion is too old."),
            sent_42.clone(),
            sent_42,
        ])
    );
}

#[test]
fn temporary_row_errors_are_retried() {
    let rows: Vec<Delivery> = (0..3).map(|i| purchase(i, t0())).collect();
    let sent: Vec<&Delivery> = rows.iter().collect();
    let body = partial_failure(json!([
        {"errorCode": {"conversionUploadError": "TOO_RECENT_EVENT"}, "message": "m", "location": at(0)},
        {"errorCode": {"internalError": "INTERNAL_ERROR"}, "message": "m", "location": at(2)},
    ]));
    let UploadAnswer::Rows(out) = classify(reqwest::StatusCode::OK, None, &body, &sent, t0())
    else {
        panic!()
    };
    assert!(matches!(
        out[0],
        Outcome::Retry {
            retry_after: Some(_),
            ..
        }
    ));
    assert!(matches!(out[1], Outcome::Sent { .. }));
    assert!(matches!(out[2], Outcome::Retry { .. }));
}

#[test]
fn request_level_errors_are_retried_or_bisected() {
    let rows = [purchase(0, t0())];
    let sent: Vec<&Delivery> = rows.iter().collect();
    let quota = classify(
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_secs(30)),
        r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#,
        &sent,
        t0(),
    );
    assert_eq!(
        quota,
        UploadAnswer::Batch(BatchAnswer::Retry {
            error: "google ads: HTTP 429 RESOURCE_EXHAUSTED: Resource has been exhausted".into(),
            retry_after: Some(Duration::from_secs(30)),
        })
    );
    let schema = classify(
        reqwest::StatusCode::BAD_REQUEST,
        None,
        r#"{"error":{"code":400,"message":"Invalid value at 'conversions[0].conversion_value' (TYPE_DOUBLE)","status":"INVALID_ARGUMENT",
           "details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"conversions[0].conversion_value","description":"Invalid value"}]}]}}"#,
        &sent,
        t0(),
    );
    assert!(matches!(
        schema,
        UploadAnswer::Batch(BatchAnswer::Rejected(_))
    ));
    let developer = classify(
        reqwest::StatusCode::UNAUTHORIZED,
        None,
        r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED",
           "details":[{"errors":[{"errorCode":{"authenticationError":"DEVELOPER_TOKEN_INVALID"},"message":"The developer token is not valid."}]}]}}"#,
        &sent,
        t0(),
    );
    assert_eq!(
        developer,
        UploadAnswer::Batch(BatchAnswer::NeedsOperator {
            error: "google ads: HTTP 401 UNAUTHENTICATED: Request had invalid authentication credentials. \
                    [DEVELOPER_TOKEN_INVALID: The developer token is not valid.]"
                .into(),
            retry_after: None,
        })
    );
}

/// What the fake Google saw.
#[derive(Default)]
struct Seen {
    token_requests: usize,
    uploads: Vec<(String, String, Value)>,
}

async fn fake_google(seen: Arc<Mutex<Seen>>) -> String {
    async fn token(State(seen): State<Arc<Mutex<Seen>>>, body: String) -> Json<Value> {
        assert!(body.contains("grant_type=refresh_token"));
        assert!(body.contains("refresh_token=rt"));
        seen.lock().unwrap().token_requests += 1;
        Json(json!({"access_token": "at-1", "expires_in": 3600, "token_type": "Bearer"}))
    }
    async fn upload(
        State(seen): State<Arc<Mutex<Seen>>>,
        axum::extract::Path((_v, call)): axum::extract::Path<(String, String)>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        let auth = headers["authorization"].to_str().unwrap().to_string();
        assert_eq!(headers["developer-token"], "dev");
        assert_eq!(headers["login-customer-id"], "1112223333");
        seen.lock()
            .unwrap()
            .uploads
            .push((call, auth, body.clone()));
        let n = body
            .get("conversions")
            .or_else(|| body.get("conversionAdjustments"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        Json(json!({"results": vec![json!({"orderId": "x"}); n], "jobId": "7"}))
    }
    let app = Router::new()
        .route("/token", post(token))
        .route("/{version}/customers/{call}", post(upload))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A Google destination pointed at `endpoint`.
fn google_ads(endpoint: &str) -> GoogleAds {
    let api = ApiConfig {
        endpoint: Some(endpoint.to_string()),
        ..ApiConfig::default()
    };
    let config = GoogleAdsConfig {
        customer_id: "123-456-7890".into(),
        login_customer_id: Some("111-222-3333".into()),
        developer_token: Some(Secret::new("dev")),
        validate_only: false,
        auth: google_oauth(Some(format!("{endpoint}/token"))),
    };
    GoogleAds::new("google", &api, &config, &DispatchConfig::default()).unwrap()
}

#[tokio::test]
async fn conversions_and_retractions_go_to_their_uploads_with_one_cached_token() {
    // GIVEN a fake Google and a batch with two conversions and a retraction
    let seen = Arc::new(Mutex::new(Seen::default()));
    let endpoint = fake_google(seen.clone()).await;
    let g = google_ads(&endpoint);
    let now = Utc::now();
    let mut batch: Vec<Delivery> = (0..3).map(|i| purchase(i, now)).collect();
    batch.iter_mut().for_each(google);
    batch[1].kind = Kind::Retraction;
    batch[1].event_time = now - TimeDelta::hours(1);
    // WHEN it is sent twice
    let out = g.send(&batch).await;
    let again = g.send(&batch[..1]).await;
    // THEN every row is sent, with one token request, and each kind went to its method
    let sent = Outcome::Sent {
        platform_ref: Some("7".into()),
    };
    assert_eq!(out, vec![sent.clone(), sent.clone(), sent.clone()]);
    assert_eq!(again, vec![sent]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.token_requests, 1);
    let calls: Vec<&str> = seen.uploads.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(
        calls,
        [
            "1234567890:uploadClickConversions",
            "1234567890:uploadConversionAdjustments",
            "1234567890:uploadClickConversions"
        ]
    );
    assert!(seen
        .uploads
        .iter()
        .all(|(_, auth, _)| auth == "Bearer at-1"));
    assert_eq!(
        seen.uploads[0].2["conversions"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        seen.uploads[1].2["conversionAdjustments"][0]["adjustmentType"],
        "RETRACTION"
    );
}

//! Data Manager unit tests: event shape and consent, addresses, refunds, field violations, the
//! preview, and processing reports from a fake Google.

use super::*;
use crate::destinations::test_support::{google_oauth, h, purchase, t0};

fn config() -> GoogleDataManagerConfig {
    GoogleDataManagerConfig {
        operating_account: "123-456-7890".into(),
        login_account: None,
        refunds: GoogleRefunds::default(),
        ads_endpoint: None,
        developer_token: None,
        validate_only: false,
        status_poll_ms: None,
        auth: google_oauth(None),
    }
}

fn dm(d: &mut Delivery) {
    d.payload.conversion_action = Some("customers/1234567890/conversionActions/1001".into());
}

#[test]
fn an_event_has_data_manager_s_shape_and_no_consent_without_a_column() {
    // GIVEN a website purchase with hashed email and phone, a gclid, IP and user agent
    let mut d = purchase(7, t0());
    dm(&mut d);
    // WHEN encoded
    let e = encode_event(&d, value_number(&d).unwrap(), t0()).unwrap();
    // THEN it carries Data Manager's fields, and no consent (the rule has no consent column)
    assert_eq!(
        e,
        json!({
            "transactionId": "order-7",
            "eventTimestamp": "2026-03-01T12:00:00Z",
            "conversionValue": 49.9,
            "currency": "EUR",
            "eventSource": "WEB",
            "adIdentifiers": {
                "gclid": "Cj0KCQ-test",
                "landingPageDeviceInfo": {"userAgent": "Mozilla/5.0", "ipAddress": "203.0.113.7"},
            },
            "userData": {"userIdentifiers": [{"emailAddress": h('a')}, {"phoneNumber": h('b')}]},
        })
    );
    // AND with a consent column the consent is sent as Data Manager's enum
    d.payload.consent_column = true;
    let e = encode_event(&d, None, t0()).unwrap();
    assert_eq!(e["consent"], json!({"adUserData": "CONSENT_GRANTED"}));
}

#[test]
fn an_address_goes_whole_with_plain_region_and_postal_code() {
    let mut d = purchase(1, t0());
    dm(&mut d);
    d.payload.keys.insert(MatchKey::FirstName, h('c'));
    d.payload.keys.insert(MatchKey::LastName, h('d'));
    d.payload.keys.insert(MatchKey::Country, "US".into());
    let e = encode_event(&d, None, t0()).unwrap();
    assert_eq!(
        e["userData"]["userIdentifiers"].as_array().unwrap().len(),
        2
    );
    d.payload.keys.insert(MatchKey::Zip, "94105".into());
    let e = encode_event(&d, None, t0()).unwrap();
    assert_eq!(
        e["userData"]["userIdentifiers"][2],
        json!({"address": {"givenName": h('c'), "familyName": h('d'), "regionCode": "US", "postalCode": "94105"}})
    );
}

#[test]
fn conversion_actions_give_the_product_destination_id() {
    assert_eq!(
        product_destination_id("customers/1234567890/conversionActions/1001"),
        Some("1001")
    );
    assert_eq!(product_destination_id("1002"), Some("1002"));
    assert_eq!(
        product_destination_id("customers/1/conversionActions/x"),
        None
    );
}

#[test]
fn field_violations_name_the_events() {
    let body = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad",
        "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
            {"field": "events[2].user_data.user_identifiers[0].email_address", "description": "not a hash"},
            {"field": "events[0].event_timestamp", "description": "required"},
        ]}]}})
    .to_string();
    let answer = classify(reqwest::StatusCode::BAD_REQUEST, None, &body, 3);
    let IngestAnswer::Invalid(bad) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(bad.len(), 2);
    assert_eq!(bad[0].0, 2);
    assert!(bad[0].1.contains("events[2].user_data"), "{}", bad[0].1);
    // A 400 naming no event waits for an operator; a 429 is retried when Google says.
    let whole = classify(
        reqwest::StatusCode::BAD_REQUEST,
        None,
        r#"{"error":{"code":400,"message":"bad destination","status":"INVALID_ARGUMENT"}}"#,
        3,
    );
    assert!(matches!(
        whole,
        IngestAnswer::Whole(BatchAnswer::NeedsOperator {
            retry_after: None,
            ..
        })
    ));
    let quota = classify(
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_secs(7)),
        r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
        3,
    );
    assert_eq!(
        quota,
        IngestAnswer::Whole(BatchAnswer::Retry {
            error: "google data manager: HTTP 429 RESOURCE_EXHAUSTED: quota".into(),
            retry_after: Some(Duration::from_secs(7))
        })
    );
}

#[test]
fn refunds_follow_the_setting_and_restatements_of_one_order_keep_the_last() {
    let now = t0() + TimeDelta::days(1);
    let mut conv = purchase(1, t0());
    dm(&mut conv);
    let mut r1 = conv.clone();
    r1.id = 2;
    r1.kind = Kind::Restatement;
    r1.value = Some("30".into());
    let mut r2 = r1.clone();
    r2.id = 3;
    r2.value = Some("20".into());
    let mut full = conv.clone();
    full.id = 4;
    full.event_id = "order-9".into();
    full.kind = Kind::Retraction;
    let batch = [r1, r2, full];
    for (refunds, expect) in [
        (GoogleRefunds::Skip, "skip"),
        (GoogleRefunds::RestateZero, "zero"),
        (GoogleRefunds::Retract, "ads"),
    ] {
        let d = GoogleDataManager::new(
            "g",
            &ApiConfig::default(),
            &GoogleDataManagerConfig {
                refunds,
                ..config()
            },
            &DispatchConfig::default(),
        )
        .unwrap();
        let (plan, retractions) = d.encode(&batch, now);
        // The first restatement is superseded by the second
        assert!(matches!(
            plan.not_sent.iter().find(|(i, _)| *i == 0),
            Some((_, Outcome::Skipped { .. }))
        ));
        assert_eq!(plan.items[1]["conversionValue"], 20.0);
        match expect {
            "skip" => assert_eq!(
                plan.not_sent.iter().find(|(i, _)| *i == 2).unwrap().1,
                Outcome::skipped(CANNOT_RETRACT)
            ),
            "zero" => {
                assert_eq!(plan.items[2]["conversionValue"], 0);
                assert_eq!(plan.items[2]["transactionId"], "order-9");
            }
            _ => assert_eq!(retractions, vec![2]),
        }
    }
}

#[test]
fn a_preview_shows_the_ingest_request_without_a_developer_token() {
    let d = GoogleDataManager::new(
        "g",
        &ApiConfig::default(),
        &GoogleDataManagerConfig {
            validate_only: true,
            login_account: Some("111-222-3333".into()),
            ..config()
        },
        &DispatchConfig::default(),
    )
    .unwrap();
    let mut row = purchase(1, Utc::now());
    dm(&mut row);
    let preview = d.preview(&[row]);
    assert_eq!(preview.requests.len(), 1);
    let body = &preview.requests[0].body;
    assert_eq!(
        preview.requests[0].url,
        "https://datamanager.googleapis.com/v1/events:ingest"
    );
    assert_eq!(body["encoding"], "HEX");
    assert_eq!(body["validateOnly"], true);
    assert_eq!(
        body["destinations"][0],
        json!({"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
               "productDestinationId": "1001",
               "loginAccount": {"accountType": "GOOGLE_ADS", "accountId": "1112223333"}})
    );
    assert!(!body.to_string().contains("developer"));
}

#[tokio::test]
async fn processing_errors_google_reports_later_are_counted_per_reason() {
    // GIVEN the sandbox, and a destination that asks for request statuses without waiting
    let sandbox = crate::testbed::sandbox::Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = sandbox.base_url();
    let mut settings = GoogleDataManagerConfig {
        refunds: GoogleRefunds::Skip,
        ..config()
    };
    settings.auth.token_endpoint = Some(format!("{base}/token"));
    let api = ApiConfig {
        endpoint: Some(base.clone()),
        ..ApiConfig::default()
    };
    let mut d = GoogleDataManager::new(
        "dm-status-test",
        &api,
        &settings,
        &DispatchConfig::default(),
    )
    .unwrap();
    d.statuses = Arc::new(StatusPoller {
        name: d.name.clone(),
        url: format!("{base}/v1/requestStatus:retrieve"),
        auth: d.auth.clone(),
        http: d.http.clone(),
        queue: std::sync::Mutex::new(Vec::new()),
        interval: Duration::ZERO,
        reports: std::sync::Mutex::new(Vec::new()),
    });
    // WHEN two conversions are accepted, one of them for a click Google does not know
    let mut known = purchase(1, Utc::now());
    dm(&mut known);
    let mut unknown = purchase(2, Utc::now());
    dm(&mut unknown);
    unknown
        .payload
        .keys
        .insert(MatchKey::Gclid, "unknown-click".into());
    let out = d.send(&[known, unknown]).await;
    assert!(
        out.iter().all(|o| matches!(
            o,
            Outcome::Sent {
                platform_ref: Some(_)
            }
        )),
        "{out:?}"
    );
    // THEN the status poll finds the request final and counts the unusable event by reason
    assert_eq!(d.statuses.poll_due().await, 0);
    let metrics = crate::metrics::global().encode();
    let line = metrics
        .lines()
        .find(|l| l.contains("google_processing_errors") && l.contains("dm-status-test"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        line.contains("PROCESSING_ERROR_REASON_INVALID_GCLID"),
        "{line}"
    );
    assert!(line.ends_with(" 1"), "{line}");
    sandbox.shutdown().await;
}

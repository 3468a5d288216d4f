//! Google Ads OAuth, click-conversion and adjustment endpoint tests.

use chrono::{Duration, Utc};
use serde_json::{json, Value};

use super::{client, google_token, sha, start, start_with};
use crate::testbed::sandbox::{SandboxConfig, SandboxHandle};

/// The conversion action used throughout.
const ACTION: &str = "customers/1234567890/conversionActions/1001";

/// `now - hours` as `yyyy-mm-dd hh:mm:ss+00:00`.
fn hours_ago(hours: i64) -> String {
    (Utc::now() - Duration::hours(hours))
        .format("%Y-%m-%d %H:%M:%S+00:00")
        .to_string()
}

/// A valid click conversion for `order` a day ago.
fn conversion(order: &str) -> Value {
    json!({
        "conversionAction": ACTION,
        "conversionDateTime": hours_ago(24),
        "gclid": "Cj0KCQiA_test-gclid",
        "orderId": order,
        "conversionValue": 42.5,
        "currencyCode": "USD",
        "userIdentifiers": [{"hashedEmail": sha("johndoe@gmail.com")}, {"hashedPhoneNumber": sha("+16505551212")}],
        "consent": {"adUserData": "GRANTED"},
    })
}

/// Calls `method` with a fresh token and developer token; returns status and JSON body.
async fn call(sandbox: &SandboxHandle, method: &str, body: &Value) -> (u16, Value) {
    let bearer = google_token(sandbox).await;
    let response = client()
        .post(format!(
            "{}/v21/customers/1234567890:{method}",
            sandbox.base_url()
        ))
        .bearer_auth(bearer)
        .header("developer-token", "dev")
        .header("login-customer-id", "9876543210")
        .json(body)
        .send()
        .await
        .expect("request is answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Uploads `rows` with partial failure on.
async fn upload(sandbox: &SandboxHandle, rows: Vec<Value>) -> (u16, Value) {
    call(
        sandbox,
        "uploadClickConversions",
        &json!({"conversions": rows, "partialFailure": true}),
    )
    .await
}

/// Uploads adjustments with partial failure on.
async fn adjust(sandbox: &SandboxHandle, rows: Vec<Value>) -> (u16, Value) {
    call(
        sandbox,
        "uploadConversionAdjustments",
        &json!({"conversionAdjustments": rows, "partialFailure": true}),
    )
    .await
}

/// The (index, error code) pairs of a partial failure, in order.
fn row_errors(body: &Value) -> Vec<(u64, String)> {
    let Some(failure) = body.get("partialFailureError") else {
        return Vec::new();
    };
    assert_eq!(failure["code"], 3);
    failure["details"][0]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let index = e["location"]["fieldPathElements"][0]["index"]
                .as_u64()
                .unwrap();
            let code = e["errorCode"]
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            (index, code)
        })
        .collect()
}

/// The first error code of a whole-request error.
fn request_error(body: &Value) -> String {
    let code = &body["error"]["details"][0]["errors"][0]["errorCode"];
    code.as_object()
        .and_then(|c| c.values().next())
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// An adjustment of `order` of `kind`, `hours` ago.
fn adjustment(order: &str, kind: &str, hours: i64, value: Option<f64>) -> Value {
    let mut row = json!({"conversionAction": ACTION, "orderId": order, "adjustmentType": kind, "adjustmentDateTime": hours_ago(hours)});
    if let Some(v) = value {
        row["restatementValue"] = json!({"adjustedValue": v, "currencyCode": "USD"});
    }
    row
}

#[tokio::test]
async fn a_valid_upload_is_accepted_and_recorded() {
    let sandbox = start().await;
    let (status, reply) = upload(&sandbox, vec![conversion("A1"), conversion("A2")]).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.get("partialFailureError").is_none(), "{reply}");
    assert_eq!(reply["results"][1]["conversionAction"], ACTION);
    assert_eq!(reply["results"][1]["gclid"], "Cj0KCQiA_test-gclid");
    assert!(reply["jobId"].is_string());

    let records = sandbox.records();
    assert_eq!(records.google_ads.counters.accepted, 2);
    assert_eq!(records.google_ads.tokens_issued, 1);
    let recorded = &records.google_ads.conversions[0];
    assert_eq!(recorded.order_id.as_deref(), Some("A1"));
    assert_eq!(recorded.hashed_emails, vec![sha("johndoe@gmail.com")]);
    assert_eq!(recorded.ad_user_data_consent.as_deref(), Some("GRANTED"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn snake_case_field_names_are_accepted_like_protobuf_json() {
    let sandbox = start().await;
    let row = json!({"conversion_action": ACTION, "conversion_date_time": hours_ago(2), "gclid": "abc", "order_id": "S1"});
    let (status, reply) = call(
        &sandbox,
        "uploadClickConversions",
        &json!({"conversions": [row], "partial_failure": true}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(reply.get("partialFailureError").is_none(), "{reply}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn bad_rows_fail_individually_by_index() {
    let sandbox = start().await;
    let mut bad_hash = conversion("B2");
    bad_hash["userIdentifiers"][0]["hashedEmail"] = json!("johndoe@gmail.com");
    let mut bad_time = conversion("B3");
    bad_time["conversionDateTime"] = json!("2024-01-01T10:00:00Z");
    let mut expired = conversion("B4");
    expired["conversionDateTime"] = json!(hours_ago(91 * 24));
    let mut lower_currency = conversion("B5");
    lower_currency["currencyCode"] = json!("usd");
    let rows = vec![
        conversion("B1"),
        bad_hash,
        bad_time,
        expired,
        lower_currency,
        conversion("B6"),
    ];
    let (status, reply) = upload(&sandbox, rows).await;
    assert_eq!(status, 200);
    let expected = vec![
        (1, "INVALID_USER_IDENTIFIER".to_string()),
        (
            2,
            "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET".to_string(),
        ),
        (3, "EXPIRED_EVENT".to_string()),
        (4, "UNSUPPORTED".to_string()),
    ];
    assert_eq!(row_errors(&reply), expected);
    assert_eq!(reply["results"][1], json!({}));
    assert_eq!(reply["results"][5]["conversionAction"], ACTION);
    let message = reply["partialFailureError"]["message"].as_str().unwrap();
    assert!(
        message.contains("at conversions[1].user_identifiers") && !message.contains("johndoe"),
        "{message}"
    );
    let counters = sandbox.records().google_ads.counters;
    assert_eq!((counters.accepted, counters.rejected), (2, 4));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn rows_without_a_click_id_or_identifiers_and_with_two_braids_fail() {
    let sandbox = start().await;
    let mut nothing = conversion("C1");
    let obj = nothing.as_object_mut().unwrap();
    obj.remove("gclid");
    obj.remove("userIdentifiers");
    let mut braids = conversion("C2");
    braids.as_object_mut().unwrap().remove("gclid");
    braids["gbraid"] = json!("gb1");
    braids["wbraid"] = json!("wb1");
    let mut malformed_action = conversion("C3");
    malformed_action["conversionAction"] = json!("1001");
    let (_, reply) = upload(&sandbox, vec![nothing, braids, malformed_action]).await;
    let codes: Vec<String> = row_errors(&reply).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        codes,
        [
            "REQUIRED",
            "GBRAID_WBRAID_BOTH_SET",
            "RESOURCE_NAME_MALFORMED"
        ]
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_resent_order_id_gets_order_id_already_in_use() {
    let sandbox = start().await;
    upload(&sandbox, vec![conversion("D1")]).await;
    let (status, reply) = upload(
        &sandbox,
        vec![conversion("D1"), conversion("D2"), conversion("D2")],
    )
    .await;
    assert_eq!(status, 200);
    let expected = vec![
        (0, "ORDER_ID_ALREADY_IN_USE".to_string()),
        (2, "DUPLICATE_ORDER_ID".to_string()),
    ];
    assert_eq!(row_errors(&reply), expected);
    let records = sandbox.records();
    assert_eq!(records.google_ads.conversions.len(), 2);
    let counters = records.google_ads.counters;
    assert_eq!(
        (
            counters.accepted,
            counters.deduplicated,
            counters.duplicate_sends,
            counters.rejected
        ),
        (2, 2, 2, 0)
    );
    // Four conversions received, two distinct orders counted.
    assert_eq!((counters.received, counters.unique), (4, 2));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_resent_click_without_order_id_gets_click_conversion_already_exists() {
    let sandbox = start().await;
    let mut row = conversion("unused");
    row.as_object_mut().unwrap().remove("orderId");
    upload(&sandbox, vec![row.clone()]).await;
    let (_, reply) = upload(&sandbox, vec![row]).await;
    assert_eq!(
        row_errors(&reply),
        vec![(0, "CLICK_CONVERSION_ALREADY_EXISTS".to_string())]
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn validate_only_checks_but_records_nothing() {
    let sandbox = start().await;
    let body =
        json!({"conversions": [conversion("V1")], "partialFailure": true, "validateOnly": true});
    let (status, reply) = call(&sandbox, "uploadClickConversions", &body).await;
    assert_eq!(status, 200);
    assert!(reply.get("partialFailureError").is_none());
    assert!(sandbox.records().google_ads.conversions.is_empty());
    let (_, reply) = upload(&sandbox, vec![conversion("V1")]).await;
    assert!(
        reply.get("partialFailureError").is_none(),
        "validate-only must not reserve the order id"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn request_level_problems_fail_the_whole_request() {
    let sandbox = start().await;
    let (status, reply) = call(
        &sandbox,
        "uploadClickConversions",
        &json!({"conversions": [conversion("E1")]}),
    )
    .await;
    assert_eq!(
        (status, request_error(&reply).as_str()),
        (400, "PARTIAL_FAILURE_MODE_REQUIRED")
    );

    let rows: Vec<Value> = (0..2001).map(|i| conversion(&format!("E{i}"))).collect();
    let (status, reply) = upload(&sandbox, rows).await;
    assert_eq!(
        (status, request_error(&reply).as_str()),
        (400, "TOO_MANY_CONVERSIONS_IN_REQUEST")
    );

    let mut unknown = conversion("E2");
    unknown["emailAddress"] = json!("x");
    let (status, reply) = upload(&sandbox, vec![unknown]).await;
    assert_eq!(
        (status, reply["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("email_address"));

    let mut wrong_type = conversion("E3");
    wrong_type["conversionValue"] = json!("forty");
    let (status, _) = upload(&sandbox, vec![wrong_type]).await;
    assert_eq!(status, 400);
    assert!(sandbox.records().google_ads.conversions.is_empty());
    assert_eq!(sandbox.records().google_ads.counters.rejected_requests, 4);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_get_google_auth_errors() {
    let config = SandboxConfig {
        google_developer_token: Some("dev-right".into()),
        google_refresh_token: Some("refresh".into()),
        google_client_secret: Some("secret".into()),
        ..SandboxConfig::default()
    };
    let sandbox = start_with(config).await;
    let url = format!(
        "{}/v21/customers/1234567890:uploadClickConversions",
        sandbox.base_url()
    );
    let body = json!({"conversions": [conversion("F1")], "partialFailure": true});
    let send = |bearer: Option<String>, dev: Option<&'static str>| {
        let mut request = client().post(&url).json(&body);
        if let Some(b) = bearer {
            request = request.bearer_auth(b);
        }
        if let Some(d) = dev {
            request = request.header("developer-token", d);
        }
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, reply) = send(None, Some("dev-right")).await;
    assert_eq!(
        (status, reply["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let (status, reply) = send(Some("made-up".into()), Some("dev-right")).await;
    assert_eq!(
        (status, request_error(&reply).as_str()),
        (401, "OAUTH_TOKEN_INVALID")
    );
    let bearer = google_token(&sandbox).await;
    // Since September 2026 the developer token is optional: a request without one is taken.
    let (status, _) = send(Some(bearer.clone()), None).await;
    assert_eq!(status, 200);
    let (status, reply) = send(Some(bearer.clone()), Some("dev-wrong")).await;
    assert_eq!(
        (status, request_error(&reply).as_str()),
        (401, "DEVELOPER_TOKEN_INVALID")
    );
    let (status, _) = send(Some(bearer), Some("dev-right")).await;
    assert_eq!(status, 200);

    let token_url = format!("{}/token", sandbox.base_url());
    let form = |secret: &'static str, refresh: &'static str| {
        client().post(&token_url).form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "id"),
            ("client_secret", secret),
            ("refresh_token", refresh),
        ])
    };
    let response = form("secret", "stale").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    let response = form("wrong", "refresh").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn adjustments_apply_only_to_known_orders() {
    let sandbox = start().await;
    upload(&sandbox, vec![conversion("G1")]).await;
    let rows = vec![
        adjustment("G1", "RESTATEMENT", 2, Some(30.0)),
        adjustment("UNKNOWN", "RETRACTION", 2, None),
        adjustment("G1", "RESTATEMENT", 48, Some(20.0)), // before the conversion
        adjustment("G1", "RESTATEMENT", 1, None),        // no value
    ];
    let (status, reply) = adjust(&sandbox, rows).await;
    assert_eq!(status, 200);
    let expected = vec![
        (1, "CONVERSION_NOT_FOUND".to_string()),
        (2, "ADJUSTMENT_PRECEDES_CONVERSION".to_string()),
        (3, "REQUIRED".to_string()),
    ];
    assert_eq!(row_errors(&reply), expected);
    assert_eq!(reply["results"][0]["orderId"], "G1");
    assert_eq!(reply["results"][0]["adjustmentType"], "RESTATEMENT");
    let adjustments = sandbox.records().google_ads.adjustments;
    assert_eq!(adjustments.len(), 1);
    assert_eq!(adjustments[0].adjusted_value, Some(30.0));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn restatements_need_newer_times_and_a_retraction_is_final() {
    let sandbox = start().await;
    upload(&sandbox, vec![conversion("H1")]).await;
    let restate = adjustment("H1", "RESTATEMENT", 3, Some(30.0));
    adjust(&sandbox, vec![restate.clone()]).await;
    let (_, reply) = adjust(
        &sandbox,
        vec![restate, adjustment("H1", "RESTATEMENT", 4, Some(25.0))],
    )
    .await;
    let expected = vec![
        (0, "RESTATEMENT_ALREADY_EXISTS".to_string()),
        (1, "MORE_RECENT_RESTATEMENT_FOUND".to_string()),
    ];
    assert_eq!(row_errors(&reply), expected);

    let (_, reply) = adjust(&sandbox, vec![adjustment("H1", "RETRACTION", 2, None)]).await;
    assert!(reply.get("partialFailureError").is_none(), "{reply}");
    // Later adjustments of a retracted conversion are accepted without effect.
    let (_, reply) = adjust(
        &sandbox,
        vec![adjustment("H1", "RESTATEMENT", 1, Some(10.0))],
    )
    .await;
    assert!(reply.get("partialFailureError").is_none(), "{reply}");
    let records = sandbox.records().google_ads;
    let kinds: Vec<&str> = records
        .adjustments
        .iter()
        .map(|a| a.adjustment_type.as_str())
        .collect();
    assert_eq!(kinds, ["RESTATEMENT", "RETRACTION"]);
    assert_eq!(records.counters.deduplicated, 2);
    // 1 conversion + 5 adjustments received; the conversion and two adjustments counted.
    assert_eq!((records.counters.received, records.counters.unique), (6, 3));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_gclid_pair_finds_only_conversions_uploaded_without_an_order_id() {
    let sandbox = start().await;
    let time = hours_ago(24);
    let mut click_only = conversion("unused");
    click_only.as_object_mut().unwrap().remove("orderId");
    click_only["conversionDateTime"] = json!(time);
    click_only["gclid"] = json!("click-only");
    let mut with_order = conversion("I1");
    with_order["conversionDateTime"] = json!(time);
    upload(&sandbox, vec![click_only, with_order]).await;
    let pair = |gclid: &str| {
        json!({
            "conversionAction": ACTION, "adjustmentType": "RETRACTION", "adjustmentDateTime": hours_ago(1),
            "gclidDateTimePair": {"gclid": gclid, "conversionDateTime": time},
        })
    };
    let mut both = pair("click-only");
    both["orderId"] = json!("I1");
    let (_, reply) = adjust(
        &sandbox,
        vec![pair("click-only"), pair("Cj0KCQiA_test-gclid"), both],
    )
    .await;
    let expected = vec![
        (1, "CONVERSION_NOT_FOUND".to_string()),
        (2, "GCLID_DATE_TIME_PAIR_AND_ORDER_ID_BOTH_SET".to_string()),
    ];
    assert_eq!(row_errors(&reply), expected);
    assert_eq!(
        reply["results"][0]["gclidDateTimePair"]["gclid"],
        "click-only"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_adjustment_in_the_same_second_as_its_conversion_is_refused() {
    // Google wants the adjustment after the conversion, and both are written to the second (§2.2).
    let sandbox = start().await;
    let original = conversion("S1");
    upload(&sandbox, vec![original.clone()]).await;
    let mut retraction = adjustment("S1", "RETRACTION", 0, None);
    retraction["adjustmentDateTime"] = original["conversionDateTime"].clone();
    let (status, reply) = adjust(&sandbox, vec![retraction]).await;
    assert_eq!(status, 200);
    assert_eq!(
        row_errors(&reply),
        vec![(0, "ADJUSTMENT_PRECEDES_CONVERSION".to_string())]
    );
    sandbox.shutdown().await;
}

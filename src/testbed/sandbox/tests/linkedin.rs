//! LinkedIn Conversions API endpoint tests.

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use super::{client, sha, start, start_with};
use crate::testbed::sandbox::{linkedin_version_active, SandboxConfig, SandboxHandle};

/// The newest version active today (this month's may not be released yet: take last month's).
fn version() -> String {
    (Utc::now() - chrono::Duration::days(31))
        .format("%Y%m")
        .to_string()
}

/// A valid event for rule 104012 with id `id`, happened a minute ago (milliseconds).
fn event(id: &str) -> Value {
    json!({
        "conversion": "urn:lla:llaPartnerConversion:104012",
        "conversionHappenedAt": Utc::now().timestamp_millis() - 60_000,
        "conversionValue": {"currencyCode": "USD", "amount": "42.50"},
        "eventId": id,
        "user": {
            "userIds": [
                {"idType": "SHA256_EMAIL", "idValue": sha("john.doe@example.com")},
                {"idType": "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", "idValue": "df5gf5-gh6t7-ph4j7h"},
            ],
            "userInfo": {"firstName": "John", "lastName": "Doe", "countryCode": "US"},
        },
    })
}

/// Posts a BATCH_CREATE of `events` with `headers` (name, value) on top of a valid token; returns
/// the status and JSON body (`null` when empty).
async fn post_batch(
    sandbox: &SandboxHandle,
    events: Vec<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let version = version();
    let mut all = vec![
        ("Authorization", "Bearer token"),
        ("X-Restli-Protocol-Version", "2.0.0"),
        ("LinkedIn-Version", version.as_str()),
        ("X-RestLi-Method", "BATCH_CREATE"),
    ];
    // A header given by the caller replaces the default of the same name.
    all.retain(|(name, _)| !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)));
    all.extend_from_slice(headers);
    let mut request = client()
        .post(format!("{}/rest/conversionEvents", sandbox.base_url()))
        .json(&json!({"elements": events}));
    for (name, value) in all {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("request is answered");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The per-element statuses of a batch answer.
fn statuses(body: &Value) -> Vec<u64> {
    body["elements"]
        .as_array()
        .expect("elements")
        .iter()
        .map(|e| e["status"].as_u64().expect("status"))
        .collect()
}

#[tokio::test]
async fn a_valid_batch_is_accepted_per_element_and_recorded() {
    let sandbox = start().await;
    let (status, body) = post_batch(&sandbox, vec![event("e-1"), event("e-2")], &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&body), [201, 201]);
    let records = sandbox.records();
    assert_eq!(records.linkedin.counters.accepted, 2);
    let recorded = &records.linkedin.events[1];
    assert_eq!(recorded.event_name, "urn:lla:llaPartnerConversion:104012");
    assert_eq!(recorded.event_id.as_deref(), Some("e-2"));
    assert_eq!(
        recorded.hashed["SHA256_EMAIL"],
        [sha("john.doe@example.com")]
    );
    assert_eq!(
        recorded.plain["LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID"],
        "df5gf5-gh6t7-ph4j7h"
    );
    assert_eq!(recorded.plain["lastName"], "Doe");
    assert_eq!(recorded.plain["linkedin_version"], version());
    assert_eq!(recorded.value, Some(42.5));
    assert!((Utc::now().timestamp() - recorded.event_time).abs() < 600);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_bad_element_fails_alone_and_names_its_field() {
    let sandbox = start().await;
    let mut seconds = event("e-2");
    seconds["conversionHappenedAt"] = json!(Utc::now().timestamp() - 60);
    let mut one_name = event("e-3");
    one_name["user"]["userInfo"] = json!({"lastName": "Doe"});
    let mut no_ids = event("e-4");
    no_ids["user"].as_object_mut().unwrap().remove("userIds");
    let mut number_amount = event("e-5");
    number_amount["conversionValue"]["amount"] = json!(42.5);
    let mut bad_rule = event("e-6");
    bad_rule["conversion"] = json!("104012");
    let events = vec![
        event("e-1"),
        seconds,
        one_name,
        no_ids,
        number_amount,
        bad_rule,
    ];
    let (status, body) = post_batch(&sandbox, events, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&body), [201, 400, 422, 422, 400, 400]);
    let message = |i: usize| {
        body["elements"][i]["error"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(message(1).contains("milliseconds"), "{body}");
    assert!(message(2).contains("both firstName and lastName"), "{body}");
    assert!(message(3).contains("userIds is required"), "{body}");
    assert!(message(4).contains("decimal string"), "{body}");
    let records = sandbox.records();
    assert_eq!(records.linkedin.counters.accepted, 1);
    assert_eq!(records.linkedin.counters.rejected, 5);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn user_ids_may_be_empty_when_both_names_are_sent_but_not_without_them() {
    let sandbox = start().await;
    let mut names_only = event("e-1");
    names_only["user"]["userIds"] = json!([]);
    let mut nothing = event("e-2");
    nothing["user"] = json!({"userIds": []});
    let mut unhashed = event("e-3");
    unhashed["user"]["userIds"][0]["idValue"] = json!("john.doe@example.com");
    let (_, body) = post_batch(&sandbox, vec![names_only, nothing, unhashed], &[]).await;
    assert_eq!(statuses(&body), [201, 422, 422], "{body}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_inactive_or_missing_version_fails_the_request() {
    let sandbox = start().await;
    let (status, body) = post_batch(
        &sandbox,
        vec![event("e-1")],
        &[("LinkedIn-Version", "202401")],
    )
    .await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(body["code"], "NONEXISTENT_VERSION");
    assert_eq!(body["message"], "Requested version 202401 is not active");
    let response = client()
        .post(format!("{}/rest/conversionEvents", sandbox.base_url()))
        .header("Authorization", "Bearer token")
        .header("X-Restli-Protocol-Version", "2.0.0")
        .json(&event("e-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(sandbox.records().linkedin.counters.accepted, 0);
    sandbox.shutdown().await;
}

#[test]
fn versions_are_active_for_about_a_year_after_release() {
    let on = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
    // 202511 was switched off on 16 Nov 2026.
    assert!(linkedin_version_active("202511", on(2026, 11, 15)));
    assert!(!linkedin_version_active("202511", on(2026, 11, 16)));
    assert!(linkedin_version_active("202512", on(2026, 12, 5)));
    assert!(linkedin_version_active("202612", on(2026, 12, 5)));
    assert!(
        !linkedin_version_active("202701", on(2026, 12, 5)),
        "not released yet"
    );
    for malformed in ["2026-11", "20261", "202613", "latest"] {
        assert!(
            !linkedin_version_active(malformed, on(2026, 12, 5)),
            "{malformed}"
        );
    }
}

#[tokio::test]
async fn the_same_rule_and_event_id_count_once() {
    let sandbox = start().await;
    let (_, first) = post_batch(&sandbox, vec![event("e-1")], &[]).await;
    let (_, again) = post_batch(&sandbox, vec![event("e-1"), event("e-2")], &[]).await;
    assert_eq!(statuses(&first), [201]);
    assert_eq!(statuses(&again), [201, 201], "a duplicate is not an error");
    let counters = sandbox.records().linkedin.counters;
    assert_eq!((counters.unique, counters.deduplicated), (2, 1));
    assert_eq!(counters.duplicate_sends, 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_single_create_answers_201_or_its_error() {
    let sandbox = start().await;
    let send = |body: Value| {
        client()
            .post(format!("{}/rest/conversionEvents", sandbox.base_url()))
            .header("Authorization", "Bearer token")
            .header("X-Restli-Protocol-Version", "2.0.0")
            .header("LinkedIn-Version", version())
            .json(&body)
            .send()
    };
    assert_eq!(send(event("e-1")).await.unwrap().status().as_u16(), 201);
    let mut bad = event("e-2");
    bad["user"]["userInfo"] = json!({"firstName": "John"});
    let response = send(bad).await.unwrap();
    assert_eq!(response.status().as_u16(), 422);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn credentials_batch_size_and_reads_are_checked() {
    let config = SandboxConfig {
        linkedin_access_token: Some("right".into()),
        ..SandboxConfig::default()
    };
    let sandbox = start_with(config).await;
    let (status, body) = post_batch(&sandbox, vec![event("e-1")], &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "INVALID_ACCESS_TOKEN");
    let auth = [("Authorization", "Bearer right")];
    let too_many = vec![event("e-1"); 5_001];
    let (status, _) = post_batch(&sandbox, too_many, &auth).await;
    assert_eq!(status, 400);
    let read = |path: &str, token: &str| {
        let request = client()
            .get(format!("{}{path}", sandbox.base_url()))
            .header("Authorization", format!("Bearer {token}"))
            .header("X-Restli-Protocol-Version", "2.0.0")
            .header("LinkedIn-Version", version());
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(read("/rest/adAccounts/507404993", "right").await, 200);
    assert_eq!(read("/rest/conversions/104012", "right").await, 200);
    assert_eq!(read("/rest/adAccounts/507404993", "wrong").await, 401);
    assert_eq!(sandbox.records().linkedin.counters.accepted, 0);
    sandbox.shutdown().await;
}

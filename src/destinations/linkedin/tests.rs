//! LinkedIn encoder and answer classification.

use chrono::{TimeDelta, Utc};
use reqwest::StatusCode;
use serde_json::json;

use super::*;
use crate::destinations::event_fields::test_rows::assert_refunds_and_old_events_skipped;
use crate::destinations::test_support::{h, purchase};

/// A purchase for LinkedIn: a hashed email, a li_fat_id and both names, for rule 104012.
fn row() -> Delivery {
    let mut d = purchase(1, Utc::now() - TimeDelta::minutes(5));
    d.payload.keys.clear();
    d.payload.keys.insert(MatchKey::Email, h('a'));
    d.payload
        .keys
        .insert(MatchKey::LiFatId, "df5gf5-gh6t7".into());
    d.payload
        .keys
        .insert(MatchKey::FirstName, "Mary-Jane".into());
    d.payload.keys.insert(MatchKey::LastName, "O'Brien".into());
    d.payload.conversion_action = Some("104012".into());
    d
}

#[test]
fn an_event_has_the_rule_urn_milliseconds_a_string_amount_and_both_names() {
    let d = row();
    let event = encode_event(&d, Utc::now()).unwrap();
    assert_eq!(
        event,
        json!({
            "conversion": "urn:lla:llaPartnerConversion:104012",
            "conversionHappenedAt": d.event_time.timestamp_millis(),
            "eventId": "order-1",
            "conversionValue": {"currencyCode": "EUR", "amount": "49.9"},
            "user": {
                "userIds": [
                    {"idType": "SHA256_EMAIL", "idValue": h('a')},
                    {"idType": "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", "idValue": "df5gf5-gh6t7"},
                ],
                "userInfo": {"firstName": "Mary-Jane", "lastName": "O'Brien"},
            },
        })
    );
    let mut urn = row();
    urn.payload.conversion_action = Some("urn:lla:llaPartnerConversion:77".into());
    let event = encode_event(&urn, Utc::now()).unwrap();
    assert_eq!(event["conversion"], "urn:lla:llaPartnerConversion:77");
}

#[test]
fn user_info_needs_both_names_and_user_ids_are_always_there() {
    let mut one_name = row();
    one_name.payload.keys.remove(&MatchKey::LastName);
    let event = encode_event(&one_name, Utc::now()).unwrap();
    assert!(event["user"].get("userInfo").is_none(), "{event}");
    let mut names_only = row();
    names_only.payload.keys.remove(&MatchKey::Email);
    names_only.payload.keys.remove(&MatchKey::LiFatId);
    let event = encode_event(&names_only, Utc::now()).unwrap();
    assert_eq!(event["user"]["userIds"], json!([]));
    assert_eq!(event["user"]["userInfo"]["lastName"], "O'Brien");
    names_only.payload.keys.remove(&MatchKey::FirstName);
    assert!(matches!(
        encode_event(&names_only, Utc::now()),
        Err(Outcome::Skipped { reason }) if reason.starts_with("no usable match key for linkedin")
    ));
}

#[test]
fn refunds_old_events_and_missing_rules_are_not_sent() {
    assert_refunds_and_old_events_skipped(encode_event, &row(), "linkedin", 90);
    let mut no_rule = row();
    no_rule.payload.conversion_action = None;
    assert!(matches!(
        encode_event(&no_rule, Utc::now()),
        Err(Outcome::Failed { .. })
    ));
    let mut bad_rule = row();
    bad_rule.payload.conversion_action = Some("Offline purchase".into());
    assert!(matches!(
        encode_event(&bad_rule, Utc::now()),
        Err(Outcome::Failed { .. })
    ));
}

#[test]
fn a_batch_answer_gives_each_element_its_outcome() {
    let body = json!({"elements": [
        {"status": 201},
        {"status": 422, "error": {"status": 422, "message": "user.userInfo requires both firstName and lastName"}},
        {"status": 429, "error": {"message": "throttled"}},
    ]})
    .to_string();
    let answer = classify(StatusCode::OK, None, &body, 3, ("li", "202611"));
    let Reply::PerElement(outcomes) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(outcomes[0], Outcome::Sent { platform_ref: None });
    assert_eq!(
        outcomes[1],
        Outcome::failed("linkedin: 422: user.userInfo requires both firstName and lastName")
    );
    assert!(matches!(outcomes[2], Outcome::Retry { .. }));
    // A count that does not match the request is not trusted.
    let answer = classify(StatusCode::OK, None, &body, 2, ("li", "202611"));
    assert!(matches!(answer, Reply::Whole(BatchAnswer::Retry { .. })));
}

#[test]
fn a_switched_off_version_is_one_operator_error_naming_the_key() {
    let body = r#"{"status":426,"code":"NONEXISTENT_VERSION","message":"Requested version 202401 is not active"}"#;
    let answer = classify(
        StatusCode::UPGRADE_REQUIRED,
        None,
        body,
        2,
        ("li", "202401"),
    );
    let Reply::Whole(BatchAnswer::NeedsOperator { error, retry_after }) = answer else {
        panic!("{answer:?}");
    };
    assert!(
        error.contains("LinkedIn-Version 202401 is no longer active"),
        "{error}"
    );
    assert!(
        error.contains("set api_version in destinations.li"),
        "{error}"
    );
    assert_eq!(retry_after, None);
    let unauthorized = classify(StatusCode::UNAUTHORIZED, None, "{}", 1, ("li", "202611"));
    assert!(matches!(
        unauthorized,
        Reply::Whole(BatchAnswer::NeedsOperator { .. })
    ));
    let server = classify(StatusCode::BAD_GATEWAY, None, "", 1, ("li", "202611"));
    assert!(matches!(
        server,
        Reply::Whole(BatchAnswer::Retry {
            retry_after: None,
            ..
        })
    ));
}

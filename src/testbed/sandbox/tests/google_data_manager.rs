//! The Data Manager endpoint and the JWT bearer grant of the token endpoint.

use serde_json::{json, Value};

use super::{client, google_token, json_of, sha, start, start_with};
use crate::testbed::sandbox::{SandboxConfig, SandboxHandle};

/// A test-only RSA key pair (tests/data), standing for a service account's.
const KEY: &str = include_str!("../../../../tests/data/test_service_account_key.pem");
const PUBLIC_KEY: &str = include_str!("../../../../tests/data/test_service_account_key.pub.pem");

/// A valid event with a hashed email and a gclid.
fn event(id: &str) -> Value {
    json!({
        "transactionId": id,
        "eventTimestamp": chrono::Utc::now().to_rfc3339(),
        "conversionValue": 10.0,
        "currency": "USD",
        "adIdentifiers": {"gclid": "Cj0-test"},
        "userData": {"userIdentifiers": [{"emailAddress": sha("a@example.com")}]},
    })
}

/// A request of `events` to conversion action 1001 of account 1234567890.
fn request(events: Vec<Value>) -> Value {
    json!({
        "destinations": [{
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
            "productDestinationId": "1001",
        }],
        "events": events,
        "encoding": "HEX",
    })
}

/// Posts `body` to the ingest endpoint; status and JSON reply.
async fn ingest(sandbox: &SandboxHandle, bearer: &str, body: &Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}/v1/events:ingest", sandbox.base_url()))
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// The field paths of a 400's violations.
fn fields(reply: &Value) -> Vec<String> {
    reply["error"]["details"][0]["fieldViolations"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|f| f["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn one_invalid_event_fails_the_whole_request_with_its_field_path() {
    let sandbox = start().await;
    let bearer = google_token(&sandbox).await;
    let mut bad = event("t-2");
    bad["userData"]["userIdentifiers"] = json!([
        {"address": {"givenName": sha("jane"), "familyName": sha("doe"),
                     "regionCode": "us", "postalCode": sha("94105")}},
    ]);
    bad["consent"] = json!({"adUserData": "GRANTED"});
    let (status, reply) = ingest(&sandbox, &bearer, &request(vec![event("t-1"), bad])).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        fields(&reply),
        [
            "events[1].consent.ad_user_data",
            "events[1].user_data.user_identifiers[0].address.region_code",
            "events[1].user_data.user_identifiers[0].address.postal_code",
        ]
    );
    // Nothing of the request was recorded
    assert!(sandbox.records().google_data_manager.conversions.is_empty());
    // More than 2,000 events, or user data without an encoding, fail too
    let (status, reply) = ingest(
        &sandbox,
        &bearer,
        &request((0..2_001).map(|i| event(&format!("t{i}"))).collect()),
    )
    .await;
    assert_eq!((status, fields(&reply)), (400, vec!["events".to_string()]));
    let mut plain = request(vec![event("t-3")]);
    plain.as_object_mut().unwrap().remove("encoding");
    let (status, reply) = ingest(&sandbox, &bearer, &plain).await;
    assert_eq!(
        (status, fields(&reply)),
        (400, vec!["encoding".to_string()])
    );
}

#[tokio::test]
async fn a_repeated_transaction_id_restates_and_the_same_value_changes_nothing() {
    let sandbox = start().await;
    let bearer = google_token(&sandbox).await;
    for value in [10.0, 10.0, 7.5] {
        let mut e = event("t-1");
        e["conversionValue"] = json!(value);
        let (status, reply) = ingest(&sandbox, &bearer, &request(vec![e])).await;
        assert_eq!(status, 200, "{reply}");
        assert!(reply["requestId"].as_str().is_some());
    }
    let records = sandbox.records().google_data_manager;
    assert_eq!(records.conversions.len(), 1);
    assert_eq!(records.conversions[0].value, Some(7.5));
    assert_eq!(records.conversions[0].history, [Some(10.0), Some(7.5)]);
    assert_eq!(records.counters.unique, 1);
    assert_eq!(records.counters.deduplicated, 1);
    assert_eq!(records.counters.duplicate_sends, 2);
    // BASE64 digests are accepted when declared
    let mut b64 = request(vec![json!({
        "transactionId": "t-b64",
        "eventTimestamp": chrono::Utc::now().to_rfc3339(),
        "userData": {"userIdentifiers": [{"phoneNumber": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}]},
    })]);
    b64["encoding"] = json!("BASE64");
    assert_eq!(ingest(&sandbox, &bearer, &b64).await.0, 200);
    // requestStatus:retrieve knows the request
    let id = sandbox.records().google_data_manager.events[0]
        .request_id
        .clone();
    let reply: Value = json_of(
        client()
            .get(format!("{}/v1/requestStatus:retrieve", sandbox.base_url()))
            .query(&[("requestId", id.as_str())])
            .bearer_auth(&bearer),
    )
    .await;
    assert_eq!(
        reply["requestStatusPerDestination"][0]["requestStatus"],
        "SUCCESS"
    );
}

/// A service account's JWT assertion signed with `key`, for `scope`, audience `aud`.
fn assertion(key: &str, scope: &str, aud: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"iss": "sa@p.iam.gserviceaccount.com", "scope": scope, "aud": aud,
                "iat": now, "exp": now + 3600}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_jwt_bearer_grant_checks_the_signature_and_the_scope_is_enforced() {
    let sandbox = start_with(SandboxConfig {
        google_service_account_public_key: Some(PUBLIC_KEY.into()),
        ..SandboxConfig::default()
    })
    .await;
    let url = format!("{}/token", sandbox.base_url());
    let grant = |assertion: String| {
        let url = url.clone();
        async move {
            let response = client()
                .post(url)
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    // A JWT signed with the service account's key gets a token
    let (status, reply) = grant(assertion(
        KEY,
        "https://www.googleapis.com/auth/datamanager",
        &url,
    ))
    .await;
    assert_eq!(status, 200, "{reply}");
    let good = reply["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        ingest(&sandbox, &good, &request(vec![event("t-1")]))
            .await
            .0,
        200
    );
    // A token for another scope may not ingest
    let (_, reply) = grant(assertion(
        KEY,
        "https://www.googleapis.com/auth/adwords",
        &url,
    ))
    .await;
    let adwords = reply["access_token"].as_str().unwrap().to_string();
    let (status, reply) = ingest(&sandbox, &adwords, &request(vec![event("t-2")])).await;
    assert_eq!(
        (status, reply["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    // A JWT that is not signed by the key is refused
    let mut forged = assertion(KEY, "https://www.googleapis.com/auth/datamanager", &url);
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let (status, reply) = grant(forged).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(sandbox.records().google_data_manager.jwt_tokens_issued, 2);
}

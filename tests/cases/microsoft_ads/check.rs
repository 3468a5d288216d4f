//! Microsoft Advertising: `pgcapi check` reads the offline goals and sends nothing, and the sandbox
//! holds requests to Microsoft's rules.

use super::*;
use serde_json::{json, Value};

#[tokio::test]
async fn check_reads_the_offline_goals_and_sends_nothing() {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = sandbox.base_url();
    let env: Vec<(String, String)> = [
        ("PGCAPI_DATABASE_URL", "postgres://unused/db".to_string()),
        ("MSADS_DEVELOPER_TOKEN", "dev".into()),
        ("MSADS_CLIENT_ID", "client".into()),
        ("MSADS_REFRESH_TOKEN", "refresh".into()),
        ("MSADS_ENDPOINT", base.clone()),
        (
            "MSADS_OAUTH_ENDPOINT",
            format!("{base}/common/oauth2/v2.0/token"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = config_from(CONFIG, &env);
    // GIVEN the goal the rules name exists: the check passes
    let (ok, text) = healthcheck(&config, "microsoft").await;
    assert!(ok, "{text}");
    assert!(text.contains("Offline purchase"), "{text}");
    // GIVEN it does not: the check fails and names it
    sandbox.microsoft_goals(&["Store visit"]);
    let (ok, text) = healthcheck(&config, "microsoft").await;
    assert!(!ok);
    assert!(
        text.contains("no offline conversion goal named Offline purchase"),
        "{text}"
    );
    assert!(!text.contains("dev") && !text.contains("refresh"), "{text}");
    // AND nothing was applied
    let records = sandbox.records().microsoft_ads;
    assert_eq!(records.counters.requests, 0);
    assert_eq!(records.tokens_issued, 2);
}

/// The health check of destination `name`, built afresh (as `pgcapi check` builds it): its one line.
async fn healthcheck(config: &pgcapi::config::Config, name: &str) -> (bool, String) {
    let dest =
        pgcapi::destinations::build(name, &config.destinations[name], &config.dispatch).unwrap();
    let probe = pgcapi::destinations::Probe::new(config, name);
    let mut lines = dest.healthcheck(&probe).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = lines.remove(0);
    (line.ok, line.text)
}

/// Calls the sandbox's Microsoft Apply `path` with a fresh token and `body`; returns status and JSON.
async fn apply(
    sandbox: &SandboxHandle,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let base = sandbox.base_url();
    let token: serde_json::Value = http
        .post(format!("{base}/common/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "c"),
            ("refresh_token", "r"),
            (
                "scope",
                "https://ads.microsoft.com/msads.manage offline_access",
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A rotated refresh token is accepted in turn.
    let rotated = token["refresh_token"].as_str().unwrap();
    let again = http
        .post(format!("{base}/common/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "c"),
            ("refresh_token", rotated),
            (
                "scope",
                "https://ads.microsoft.com/msads.manage offline_access",
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let response = http
        .post(format!("{base}/CampaignManagement/v13/{path}"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .header("DeveloperToken", "dev")
        .header("CustomerId", "1234567")
        .header("CustomerAccountId", "7654321")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The (index, error code) of each of an Apply answer's partial errors.
fn partial_errors(body: &Value) -> Vec<(u64, &str)> {
    body["PartialErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["Index"].as_u64().unwrap(),
                e["ErrorCode"].as_str().unwrap(),
            )
        })
        .collect()
}

/// A good row, an unknown field, an unknown goal, a bad click id: item errors by index, HTTP 200;
/// the duplicate (same goal, time and click) is ignored without an error.
async fn conversions_fail_item_by_item(sandbox: &SandboxHandle, time: &str, conversion: &Value) {
    let (status, body) = apply(
        sandbox,
        "OfflineConversions/Apply",
        json!({"OfflineConversions": [
            conversion,
            {"ConversionName": "Offline purchase", "ConversionTime": time, "MicrosoftClickId": LATE_CLICK, "OrderId": "x"},
            {"ConversionName": "Nope", "ConversionTime": time, "MicrosoftClickId": LATE_CLICK},
            {"ConversionName": "Offline purchase", "ConversionTime": time, "MicrosoftClickId": "not-a-click"},
            conversion,
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    let errors = partial_errors(&body);
    assert_eq!(
        errors,
        [
            (1, "SandboxUnknownField"),
            (2, "OfflineConversionNameInvalid"),
            (3, "OfflineConversionMicrosoftClickIdInvalid")
        ]
    );
    // The duplicate (same goal, time and click) was ignored without an error
    let records = sandbox.records().microsoft_ads;
    assert_eq!(records.conversions.len(), 1);
    assert_eq!(records.counters.deduplicated, 1);
}

/// Adjustments: Retract with a value, Restate without one, and one matching no conversion are
/// refused item by item; the good Restate restates the conversion.
async fn adjustments_fail_item_by_item(sandbox: &SandboxHandle, time: &str) {
    let now = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let adjust = |kind: &str, extra: serde_json::Value, click: &str| {
        let mut a = json!({"ConversionName": "Offline purchase", "ConversionTime": time,
            "MicrosoftClickId": click, "AdjustmentType": kind, "AdjustmentTime": now});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let (status, body) = apply(
        sandbox,
        "OfflineConversionAdjustments/Apply",
        json!({"OfflineConversionAdjustments": [
            adjust("Retract", json!({"AdjustmentValue": 1.0}), CLICK),
            adjust("Restate", json!({}), CLICK),
            adjust("Retract", json!({}), LATE_CLICK),
            adjust("Restate", json!({"AdjustmentValue": 4.5, "AdjustmentCurrencyCode": "USD"}), CLICK),
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    let errors = partial_errors(&body);
    assert_eq!(
        errors,
        [
            (0, "OfflineConversionAdjustmentValueNotExpected"),
            (1, "OfflineConversionAdjustmentValueRequired"),
            (2, "SandboxUnknownConversion")
        ]
    );
    assert_eq!(
        sandbox.records().microsoft_ads.conversions[0].restated_value,
        Some(4.5)
    );
}

/// An unknown request key and a missing bearer token are refused as a whole.
async fn whole_requests_are_refused(sandbox: &SandboxHandle, conversion: &Value) {
    let (status, body) = apply(
        sandbox,
        "OfflineConversions/Apply",
        json!({"OfflineConversions": [conversion], "PartialFailure": true}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let unauthenticated = reqwest::Client::new()
        .post(format!(
            "{}/CampaignManagement/v13/OfflineConversions/Apply",
            sandbox.base_url()
        ))
        .json(&json!({"OfflineConversions": [conversion]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn the_sandbox_holds_microsoft_to_its_rules() {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let time = (Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let conversion = json!({"ConversionName": "Offline purchase", "ConversionTime": time,
        "MicrosoftClickId": CLICK, "ConversionValue": 10.0, "ConversionCurrencyCode": "USD"});
    // A good row, an unknown field, an unknown goal, a bad click id: item errors by index, HTTP 200
    conversions_fail_item_by_item(&sandbox, &time, &conversion).await;
    // Adjustments: Retract with a value, Restate without one, and one matching no conversion are refused
    adjustments_fail_item_by_item(&sandbox, &time).await;
    // An unknown request key and a missing bearer token are refused as a whole
    whole_requests_are_refused(&sandbox, &conversion).await;
}

//! Data Manager destinations and the Google Ads API: the allowlist error, service account keys for
//! Google Ads, and kill -9 during delivery.

use super::*;

#[tokio::test]
async fn google_ads_access_without_the_allowlist_gets_one_actionable_error() {
    // GIVEN a Google Ads API that refuses click conversion uploads to this access (June 2026)
    let sandbox = Sandbox::start_with_config(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            google_ads_click_uploads_allowlisted: false,
            ..SandboxConfig::default()
        },
    )
    .await
    .unwrap();
    let base = sandbox.base_url();
    let config: pgcapi::config::DestinationConfig = toml::from_str(&format!(
        "platform = \"google_ads\"\ncustomer_id = \"1234567890\"\nclient_id = \"c\"\n\
         client_secret = \"s\"\nrefresh_token = \"r\"\nendpoint = \"{base}\"\n\
         token_endpoint = \"{base}/token\""
    ))
    .unwrap();
    let google = pgcapi::destinations::build(
        "google",
        &config,
        &pgcapi::config::DispatchConfig::default(),
    )
    .unwrap();
    // WHEN a conversion is sent (without a developer token: it is optional now)
    let mut row = row();
    row.payload.conversion_action = Some("customers/1234567890/conversionActions/1".into());
    let out = google.send(&[row]).await;
    // THEN the row fails for good with what to do
    match &out[0] {
        pgcapi::destinations::Outcome::Failed { error } => {
            assert!(
                error.starts_with(pgcapi::destinations::google_ads::NOT_ALLOWLISTED_ADVICE),
                "{error}"
            );
            assert!(
                error.contains("CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A website purchase row with a hashed email and a gclid.
fn row() -> pgcapi::event::Delivery {
    let mut keys = pgcapi::identity::MatchKeys::new();
    keys.insert(pgcapi::identity::MatchKey::Email, hash("a@example.com"));
    keys.insert(pgcapi::identity::MatchKey::Gclid, "Cj0-test".into());
    let now = chrono::Utc::now();
    pgcapi::event::Delivery {
        id: 1,
        rule: "order_paid".into(),
        destination: "google".into(),
        event_id: "order-1".into(),
        kind: pgcapi::event::Kind::Conversion,
        adjusts_rule: None,
        event_name: Some("Purchase".into()),
        event_time: now - chrono::TimeDelta::hours(1),
        value: Some("10".into()),
        currency: Some("USD".into()),
        action_source: Some("website".into()),
        payload: pgcapi::event::Payload {
            keys,
            consent: true,
            ..Default::default()
        },
        attempts: 0,
        created_at: now,
    }
}

#[tokio::test]
async fn google_ads_also_authenticates_with_a_service_account_key() {
    // GIVEN a sandbox verifying service account JWTs, and a key file whose token_uri is the sandbox
    let sandbox = Sandbox::start_with_config(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            google_service_account_public_key: Some(TEST_PUBLIC_KEY.into()),
            ..SandboxConfig::default()
        },
    )
    .await
    .unwrap();
    let base = sandbox.base_url();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.json");
    let key = json!({
        "type": "service_account",
        "private_key": TEST_KEY,
        "client_email": "pgcapi@pgcapi-test.iam.gserviceaccount.com",
        "token_uri": format!("{base}/token"),
    });
    std::fs::write(&key_path, key.to_string()).unwrap();
    let config: pgcapi::config::DestinationConfig = toml::from_str(&format!(
        "platform = \"google_ads\"\ncustomer_id = \"1234567890\"\nendpoint = \"{base}\"\n\
         service_account_key = \"{}\"",
        key_path.display()
    ))
    .unwrap();
    let google = pgcapi::destinations::build(
        "google",
        &config,
        &pgcapi::config::DispatchConfig::default(),
    )
    .unwrap();
    // WHEN a conversion is sent (no developer token)
    let mut row = row();
    row.payload.conversion_action = Some("customers/1234567890/conversionActions/1".into());
    let out = google.send(&[row]).await;
    // THEN it is accepted with a token from the JWT bearer grant
    assert!(
        matches!(out[0], pgcapi::destinations::Outcome::Sent { .. }),
        "{out:?}"
    );
    let records = sandbox.records();
    assert_eq!(records.google_data_manager.jwt_tokens_issued, 1);
    assert_eq!(records.google_ads.conversions.len(), 1);
}

#[tokio::test]
async fn kill_9_during_data_manager_delivery_counts_every_conversion_once_and_restates_nothing() {
    // GIVEN Google only, a slow Data Manager (requests in flight when the process dies), short leases
    let toml = format!(
        "{}\n[dispatch]\nlease_secs = 2\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        CONTRACT
            .replace(
                "destinations = [\"meta\", \"google\", \"tiktok\"]",
                "destinations = [\"google\"]"
            )
            .replace(
                "destinations = [\"meta\", \"google\"]",
                "destinations = [\"google\"]"
            )
    );
    let faults = pgcapi::testbed::sandbox::Faults {
        latency_ms: (20, 120),
        seed: Some(11),
        ..pgcapi::testbed::sandbox::Faults::default()
    };
    let mut g = start(
        &toml,
        SandboxConfig {
            faults,
            ..SandboxConfig::default()
        },
        &[],
    )
    .await;
    // WHEN orders are paid in many small transactions while pgcapi is killed with SIGKILL and restarted
    let orders = 240;
    for batch in 0..6 {
        for i in 0..orders / 6 {
            let n = batch * (orders / 6) + i;
            g.client
                .execute(
                    PAID,
                    &[&format!("9{n:04}"), &format!("{}.25", 5 + n), &"USD"],
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(40 + 30 * batch as u64)).await;
        g._run.kill();
        g._run = spawn_run(&g.path, &g.env);
    }
    // THEN every conversion is sent, and Google counts each once with its own value, never restated
    wait_state(&g.client, "google", "conversion", "sent", orders as i64).await;
    let records = g.sandbox.records().google_data_manager;
    assert_eq!(
        records.counters.unique, orders as u64,
        "{:?}",
        records.counters
    );
    assert_eq!(records.conversions.len(), orders);
    assert!(
        records.conversions.iter().all(|c| c.restatements == 0),
        "a resend restated a conversion"
    );
    assert_eq!(
        count(
            &g.client,
            "select count(*) from pgcapi.deliveries where destination = 'google' and state <> 'sent'"
        )
        .await,
        0
    );
}

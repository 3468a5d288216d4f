//! Google through the Data Manager API, end to end: `pgcapi run` on a real PostgreSQL with the
//! contract config (without its Microsoft parts, `tests/data/google_contract.toml`), delivering to
//! the sandbox's Data Manager and Google Ads endpoints.

use crate::support::{contract_env, count, spawn_run, wait_for, KillOnDrop, TestDb};
use pgcapi::identity::hash;
use pgcapi::testbed::sandbox::{
    DataManagerConversion, Records, Sandbox, SandboxConfig, SandboxHandle,
};
use serde_json::{json, Value};
use tokio_postgres::Client;

mod check;
mod google_ads;

/// The contract config without Microsoft.
const CONTRACT: &str = include_str!("../../data/google_contract.toml");
/// The contract's shop schema (with `net_total` and `msclkid`).
const SHOP: &str = crate::support::SHOP_SQL;
/// A test-only RSA key pair standing for a service account's (generated for these tests).
const TEST_KEY: &str = include_str!("../../data/test_service_account_key.pem");
const TEST_PUBLIC_KEY: &str = include_str!("../../data/test_service_account_key.pub.pem");

/// A running `pgcapi run` against the sandbox and a shop database.
struct Google {
    sandbox: SandboxHandle,
    _db: TestDb,
    client: Client,
    _dir: tempfile::TempDir,
    _run: KillOnDrop,
    env: Vec<(String, String)>,
    path: std::path::PathBuf,
}

/// Starts the sandbox with `sandbox_config`, a shop database set up for `toml`, and `pgcapi run`.
async fn start(toml: &str, sandbox_config: SandboxConfig, extra_env: &[(&str, &str)]) -> Google {
    let sandbox = Sandbox::start_with_config("127.0.0.1:0".parse().unwrap(), sandbox_config)
        .await
        .unwrap();
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP).await.unwrap();
    let mut env = contract_env(&db.url(), &sandbox.base_url());
    env.push(("GOOGLE_DM_ENDPOINT".into(), sandbox.base_url()));
    for (k, v) in extra_env {
        env.push((k.to_string(), v.to_string()));
    }
    let config = crate::support::config_from(toml, &env);
    pgcapi::ops::setup::setup(&config, pgcapi::ops::setup::SetupOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcapi.toml");
    std::fs::write(&path, toml).unwrap();
    let run = spawn_run(&path, &env);
    Google {
        sandbox,
        _db: db,
        client,
        _dir: dir,
        _run: run,
        env,
        path,
    }
}

/// Inserts a paid order with full identifiers.
const PAID: &str = "insert into orders (order_number, email, phone, first_name, last_name, city,
    region, postal_code, country, client_ip, user_agent, gclid, total, currency, status, ad_consent,
    paid_at) values ($1, 'Jane.Doe@Example.com', '(650) 555-1212', 'Jane', 'Doe', 'San Francisco',
    'California', '94105', 'US', '203.0.113.7', 'Mozilla/5.0 (X11) test', 'Cj0KCQiA-test_gclid',
    $2::text::numeric, $3::text, 'paid', true, now())";

/// Waits until `n` rows of `destination` are in `state`.
async fn wait_state(client: &Client, destination: &str, kind: &str, state: &str, n: i64) {
    let sql = format!(
        "select count(*) from pgcapi.deliveries where destination = '{destination}' \
         and kind = '{kind}' and state = '{state}'"
    );
    wait_for(30, &format!("{n} {kind} {state} for {destination}"), || {
        let sql = sql.clone();
        async move { (count(client, &sql).await >= n).then_some(()) }
    })
    .await;
}

/// The event the sandbox recorded for transaction `id`, the last one.
fn event(sandbox: &SandboxHandle, id: &str) -> Value {
    sandbox
        .records()
        .google_data_manager
        .events
        .iter()
        .rev()
        .find(|e| e.event["transactionId"] == id)
        .map(|e| e.event.clone())
        .unwrap_or_else(|| panic!("no event {id}"))
}

/// The Data Manager conversion the sandbox keeps for transaction `id`.
fn dm_conversion(records: &Records, id: &str) -> DataManagerConversion {
    records
        .google_data_manager
        .conversions
        .iter()
        .find(|c| c.transaction_id == id)
        .cloned()
        .unwrap()
}

/// Order 7001 is one Data Manager event, hashed as normalization.md says, with the consent
/// column's value, and its row's platform reference is the request id.
async fn assert_sent_hashed_with_request_id(g: &Google) {
    let e = event(&g.sandbox, "order-7001");
    assert_eq!(e["conversionValue"], 100.0);
    assert_eq!(e["currency"], "USD");
    assert_eq!(e["eventSource"], "WEB");
    assert_eq!(e["adIdentifiers"]["gclid"], "Cj0KCQiA-test_gclid");
    assert_eq!(
        e["adIdentifiers"]["landingPageDeviceInfo"],
        json!({"userAgent": "Mozilla/5.0 (X11) test", "ipAddress": "203.0.113.7"})
    );
    assert_eq!(
        e["userData"]["userIdentifiers"],
        json!([
            {"emailAddress": hash("jane.doe@example.com")},
            {"phoneNumber": hash("+16505551212")},
            {"address": {"givenName": hash("jane"), "familyName": hash("doe"),
                         "regionCode": "US", "postalCode": "94105"}},
        ])
    );
    assert_eq!(e["consent"], json!({"adUserData": "CONSENT_GRANTED"}));
    let records = g.sandbox.records();
    let dm = &records.google_data_manager;
    assert_eq!(
        dm.developer_token_headers, 0,
        "no developer token to Data Manager"
    );
    assert!(dm.events.iter().all(|e| e.encoding == "HEX"
        && e.operating_account == "1234567890"
        && e.product_destination_id == "1001"));
    let reference: Option<String> = g
        .client
        .query_one(
            "select platform_ref from pgcapi.deliveries where destination = 'google' \
             and event_id = 'order-7001' and kind = 'conversion'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reference.as_deref(), Some(dm.events[0].request_id.as_str()));
}

/// Partially refunds order 7001 to 70 then to 50 and checks that Data Manager restates it each time
/// (same transaction id, the new value, the original identifiers), keeping the last value.
async fn partial_refunds_restate(g: &Google) {
    let c = &g.client;
    c.batch_execute(
        "update orders set net_total = 70, status = 'partially_refunded' where order_number = '7001'",
    )
    .await
    .unwrap();
    wait_state(c, "google", "restatement", "sent", 1).await;
    let restated = dm_conversion(&g.sandbox.records(), "order-7001");
    assert_eq!(restated.value, Some(70.0));
    assert_eq!(restated.restatements, 1);
    assert_eq!(
        event(&g.sandbox, "order-7001")["userData"]["userIdentifiers"][0],
        json!({"emailAddress": hash("jane.doe@example.com")})
    );

    // The second partial refund keeps the status partially_refunded.
    c.batch_execute("update orders set net_total = 50 where order_number = '7001'")
        .await
        .unwrap();
    wait_for(30, "the second restatement", || async {
        let c = dm_conversion(&g.sandbox.records(), "order-7001");
        (c.restatements == 2).then_some(c)
    })
    .await;
    let restated = dm_conversion(&g.sandbox.records(), "order-7001");
    assert_eq!(restated.history, [Some(100.0), Some(70.0), Some(50.0)]);
    wait_state(c, "google", "restatement", "sent", 1).await;
    let value: String = c
        .query_one(
            "select value::text from pgcapi.deliveries where destination = 'google' \
             and kind = 'restatement' and event_id = 'order-7001'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(value, "50.00");
}

/// Order 7002's full refund is a Google Ads API RETRACTION by order id = the transaction id, Data
/// Manager is untouched, and every conversion is counted once.
fn assert_full_refund_retracted(records: &Records) {
    let adjustments = &records.google_ads.adjustments;
    assert_eq!(adjustments.len(), 1, "{adjustments:?}");
    assert_eq!(adjustments[0].adjustment_type, "RETRACTION");
    assert_eq!(adjustments[0].order_id.as_deref(), Some("order-7002"));
    assert_eq!(
        adjustments[0].conversion_action,
        "customers/1234567890/conversionActions/1001"
    );
    assert_eq!(dm_conversion(records, "order-7002").restatements, 0);
    assert_eq!(records.google_data_manager.counters.unique, 2);
    assert!(records.google_ads.conversions.is_empty());
}

#[tokio::test]
async fn orders_reach_data_manager_hashed_and_refunds_restate_then_retract() {
    // GIVEN pgcapi running the contract config, Google through Data Manager with refunds = "retract"
    let g = start(CONTRACT, SandboxConfig::default(), &[]).await;
    let c = &g.client;
    // WHEN two orders are paid
    c.execute(PAID, &[&"7001", &"100.00", &"USD"])
        .await
        .unwrap();
    c.execute(PAID, &[&"7002", &"80.00", &"USD"]).await.unwrap();
    wait_state(c, "google", "conversion", "sent", 2).await;
    // THEN each is one Data Manager event, hashed, with the consent column's value and request id
    assert_sent_hashed_with_request_id(&g).await;

    // WHEN order 7001 is partially refunded to 70, then to 50, THEN Data Manager restates it
    partial_refunds_restate(&g).await;

    // WHEN order 7002 is refunded in full
    c.batch_execute("update orders set status = 'refunded' where order_number = '7002'")
        .await
        .unwrap();
    wait_state(c, "google", "retraction", "sent", 1).await;
    // THEN a Google Ads API RETRACTION, Data Manager untouched, every conversion counted once
    assert_full_refund_retracted(&g.sandbox.records());
}

#[tokio::test]
async fn one_invalid_event_fails_alone_with_its_field_path_and_the_others_are_sent() {
    // GIVEN pgcapi running the contract config
    let g = start(CONTRACT, SandboxConfig::default(), &[]).await;
    let c = &g.client;
    // WHEN three orders are paid in one transaction, the middle one with a negative total (a data
    // entry error pgcapi's own checks let through), which Data Manager refuses
    c.batch_execute("begin").await.unwrap();
    c.execute(PAID, &[&"7101", &"10", &"USD"]).await.unwrap();
    c.execute(PAID, &[&"7102", &"-20", &"USD"]).await.unwrap();
    c.execute(PAID, &[&"7103", &"30", &"USD"]).await.unwrap();
    c.batch_execute("commit").await.unwrap();
    // THEN that one is failed with Google's field path, and the other two are sent
    wait_state(c, "google", "conversion", "sent", 2).await;
    wait_state(c, "google", "conversion", "failed", 1).await;
    let row = c
        .query_one(
            "select event_id, last_error from pgcapi.deliveries where destination = 'google' \
             and state = 'failed'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "order-7102");
    let error: String = row.get(1);
    assert!(
        error.contains("events[") && error.contains("].conversion_value"),
        "{error}"
    );
    let ids: Vec<String> = g
        .sandbox
        .records()
        .google_data_manager
        .conversions
        .iter()
        .map(|c| c.transaction_id.clone())
        .collect();
    assert_eq!(ids, ["order-7101", "order-7103"]);
}

#[tokio::test]
async fn a_service_account_key_authenticates_and_a_rule_without_consent_sends_no_consent() {
    // GIVEN a service account key file whose token_uri is the sandbox, and a sandbox that verifies
    // the JWT's signature with its public key
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.json");
    let sandbox_config = SandboxConfig {
        google_service_account_public_key: Some(TEST_PUBLIC_KEY.into()),
        ..SandboxConfig::default()
    };
    let toml = CONTRACT
        .replace(
            "client_id = \"${GOOGLE_ADS_CLIENT_ID}\"\nclient_secret = \"${GOOGLE_ADS_CLIENT_SECRET}\"\n\
             refresh_token = \"${GOOGLE_ADS_REFRESH_TOKEN}\"\nendpoint = \"${GOOGLE_DM_ENDPOINT",
            "service_account_key = \"${TEST_SA_KEY}\"\nendpoint = \"${GOOGLE_DM_ENDPOINT",
        )
        .replace("token_endpoint = \"${GOOGLE_OAUTH_ENDPOINT:-https://oauth2.googleapis.com/token}\"\nrefunds", "refunds")
        .replace("consent = \"consent\"\n", "");
    assert!(
        toml.contains("service_account_key"),
        "the replacement applies"
    );
    let g = start_with_key(&toml, sandbox_config, key_path.to_str().unwrap()).await;
    let c = &g.client;
    // WHEN a deal is won with a gclid (the deal rule has no consent column here)
    c.batch_execute(
        "insert into leads (email, gclid, deal_value, currency, stage, won_at, clicked_at, consent)
         values ('lead@example.com', 'Cj0-won-deal', 5000, 'EUR', 'won', now(), now() - interval '1 day', true)",
    )
    .await
    .unwrap();
    wait_state(c, "google", "conversion", "sent", 1).await;
    // THEN it reached Data Manager as an offline conversion with a service account token, without
    // any consent field
    let records = g.sandbox.records();
    let dm = &records.google_data_manager;
    assert!(dm.jwt_tokens_issued >= 1);
    let e = &dm.events[0].event;
    assert_eq!(e["adIdentifiers"]["gclid"], "Cj0-won-deal");
    assert_eq!(e["eventSource"], "OTHER");
    assert_eq!(e["conversionValue"], 5000.0);
    assert_eq!(dm.events[0].product_destination_id, "1002");
    assert!(e.get("consent").is_none(), "{e}");
}

/// [`start`] with a service account key file at `key_path` whose `token_uri` is the sandbox's.
async fn start_with_key(toml: &str, sandbox_config: SandboxConfig, key_path: &str) -> Google {
    // The sandbox address is only known after start; pgcapi reads the key when it starts, so the
    // file is written between the sandbox and `pgcapi run` by a wrapper of `start`.
    let sandbox = Sandbox::start_with_config("127.0.0.1:0".parse().unwrap(), sandbox_config)
        .await
        .unwrap();
    let key = json!({
        "type": "service_account",
        "project_id": "pgcapi-test",
        "private_key_id": "test-key-1",
        "private_key": TEST_KEY,
        "client_email": "pgcapi@pgcapi-test.iam.gserviceaccount.com",
        "token_uri": format!("{}/token", sandbox.base_url()),
    });
    std::fs::write(key_path, key.to_string()).unwrap();
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP).await.unwrap();
    let mut env = contract_env(&db.url(), &sandbox.base_url());
    env.push(("GOOGLE_DM_ENDPOINT".into(), sandbox.base_url()));
    env.push(("TEST_SA_KEY".into(), key_path.to_string()));
    let config = crate::support::config_from(toml, &env);
    pgcapi::ops::setup::setup(&config, pgcapi::ops::setup::SetupOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcapi.toml");
    std::fs::write(&path, toml).unwrap();
    let run = spawn_run(&path, &env);
    Google {
        sandbox,
        _db: db,
        client,
        _dir: dir,
        _run: run,
        env,
        path,
    }
}

#[tokio::test]
async fn full_refunds_restate_to_zero_or_are_skipped_as_configured() {
    // GIVEN two more Data Manager destinations (other accounts) with the other refund settings
    let extra = "
[destinations.google_zero]
platform = \"google_data_manager\"
operating_account = \"2222222222\"
client_id = \"c\"
client_secret = \"s\"
refresh_token = \"r\"
endpoint = \"${GOOGLE_DM_ENDPOINT}\"
token_endpoint = \"${GOOGLE_OAUTH_ENDPOINT}\"
refunds = \"restate_zero\"

[destinations.google_skip]
platform = \"google_data_manager\"
operating_account = \"3333333333\"
client_id = \"c\"
client_secret = \"s\"
refresh_token = \"r\"
endpoint = \"${GOOGLE_DM_ENDPOINT}\"
token_endpoint = \"${GOOGLE_OAUTH_ENDPOINT}\"
refunds = \"skip\"
";
    let toml = CONTRACT
        .replace(
            "destinations = [\"meta\", \"google\", \"tiktok\"]",
            "destinations = [\"google_zero\", \"google_skip\"]",
        )
        .replace(
            "[destinations.tiktok]",
            &format!("{extra}\n[destinations.tiktok]"),
        );
    let g = start(&toml, SandboxConfig::default(), &[]).await;
    let c = &g.client;
    c.execute(PAID, &[&"7201", &"55", &"USD"]).await.unwrap();
    wait_state(c, "google_zero", "conversion", "sent", 1).await;
    wait_state(c, "google_skip", "conversion", "sent", 1).await;
    // WHEN the order is refunded in full
    c.batch_execute("update orders set status = 'refunded' where order_number = '7201'")
        .await
        .unwrap();
    // THEN restate_zero sends the conversion again with value 0; skip records that it cannot retract
    wait_state(c, "google_zero", "retraction", "sent", 1).await;
    wait_state(c, "google_skip", "retraction", "skipped", 1).await;
    let records = g.sandbox.records();
    let zero: Vec<_> = records
        .google_data_manager
        .events
        .iter()
        .filter(|e| e.operating_account == "2222222222")
        .map(|e| e.event["conversionValue"].clone())
        .collect();
    assert_eq!(zero, [json!(55.0), json!(0)]);
    let skip: String = c
        .query_one(
            "select last_error from pgcapi.deliveries where destination = 'google_skip' \
             and kind = 'retraction'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(skip.contains("platform cannot retract"), "{skip}");
    assert!(records.google_ads.adjustments.is_empty());
}

#[tokio::test]
async fn lost_answers_resend_but_data_manager_counts_each_conversion_once_and_restates_nothing() {
    // GIVEN a sandbox that processes half of the ingest requests and then cuts the connection
    let faults = pgcapi::testbed::sandbox::Faults {
        accept_then_drop_ratio: 0.5,
        seed: Some(7),
        ..pgcapi::testbed::sandbox::Faults::default()
    };
    // One event per request, so that about half of 30 requests lose their answer.
    let toml = format!(
        "{}\n[dispatch]\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        CONTRACT.replace(
            "refunds = \"retract\"",
            "refunds = \"retract\"\nbatch_max_events = 1"
        )
    );
    let g = start(
        &toml,
        SandboxConfig {
            faults,
            ..SandboxConfig::default()
        },
        &[],
    )
    .await;
    let c = &g.client;
    // WHEN 30 orders are paid, in separate transactions
    for i in 0..30 {
        c.execute(
            PAID,
            &[&format!("8{i:03}"), &format!("{}.50", 10 + i), &"USD"],
        )
        .await
        .unwrap();
    }
    wait_state(c, "google", "conversion", "sent", 30).await;
    // THEN some were sent more than once, yet each counts once, with its own value, never restated
    let stats = g.sandbox.stats().google_data_manager;
    let records = g.sandbox.records().google_data_manager;
    assert!(stats.responses_lost > 0, "{stats:?}");
    assert_eq!(stats.unique, 30, "{stats:?}");
    assert_eq!(records.conversions.len(), 30);
    assert!(records.conversions.iter().all(|c| c.restatements == 0));
}

/// Waits until the health view counts one unusable event for Google, which the processing view
/// gives as an invalid GCLID.
async fn wait_health_counts_the_unusable_event(c: &Client) {
    wait_for(30, "platform_unusable_24h = 1", || async {
        let rows = c
            .query(
                "select platform_unusable_24h from pgcapi.health where destination = 'google'",
                &[],
            )
            .await
            .unwrap();
        (rows.first().map(|r| r.get::<_, i64>(0)) == Some(1)).then_some(())
    })
    .await;
    let reasons: Vec<(String, i64)> = c
        .query(
            "select reason, events from pgcapi.platform_processing where destination = 'google'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        reasons,
        [("PROCESSING_ERROR_REASON_INVALID_GCLID".to_string(), 1)]
    );
}

/// `pgcapi status` (text and JSON) warns with the reason, without calling the connector unhealthy.
fn assert_status_warns_not_unhealthy(g: &Google) {
    let status = |json: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pgcapi"));
        command.arg("status");
        if json {
            command.arg("--json");
        }
        command.arg("-c").arg(&g.path).env("RUST_LOG", "warn");
        for (k, v) in &g.env {
            command.env(k, v);
        }
        command.output().expect("run pgcapi status")
    };
    let output = status(false);
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        text.contains("google: Google accepted 2 events but could not use 1 of them in the last 24 h: INVALID_GCLID 1"),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = status(true);
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let google = json["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == "google")
        .unwrap()
        .clone();
    assert!(
        !json["reasons"].to_string().contains("INVALID_GCLID"),
        "not a reason to be unhealthy: {json}"
    );
    assert_eq!(google["platform_unusable_24h"], 1);
    assert_eq!(
        google["platform_unusable_reasons"],
        json!([{"reason": "PROCESSING_ERROR_REASON_INVALID_GCLID", "events": 1}])
    );
    assert!(
        json["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("could not use 1 of them")),
        "{json}"
    );
}

#[tokio::test]
async fn events_google_could_not_use_show_in_status_and_health() {
    // GIVEN pgcapi running the contract config, asking Data Manager for processing results every 200 ms
    let toml = CONTRACT.replacen(
        "platform = \"google_data_manager\"",
        "platform = \"google_data_manager\"\nstatus_poll_ms = 200",
        1,
    );
    assert_ne!(toml, CONTRACT);
    let g = start(&toml, SandboxConfig::default(), &[]).await;
    let c = &g.client;
    // WHEN two orders are paid, one with a click Google does not know
    c.execute(PAID, &[&"7301", &"10", &"USD"]).await.unwrap();
    let unknown_click = PAID.replace("'Cj0KCQiA-test_gclid'", "'unknown-click'");
    assert_ne!(unknown_click, PAID);
    c.execute(&unknown_click, &[&"7302", &"20", &"USD"])
        .await
        .unwrap();
    wait_state(c, "google", "conversion", "sent", 2).await;
    // THEN once Google's processing result is read, the health view counts the unusable event
    wait_health_counts_the_unusable_event(c).await;
    // AND `pgcapi status` warns with the reason, without calling the connector unhealthy for it
    assert_status_warns_not_unhealthy(&g);
}

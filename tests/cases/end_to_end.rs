//! End to end: `pgcapi run` (capture + dispatch) on a real PostgreSQL, delivering to the sandbox.

use crate::support::Shop;
use crate::support::{wait_count, CONTRACT_TOML};
use pgcapi::testbed::sandbox::SandboxHandle;
use std::process::{Command, Stdio};
use tokio_postgres::Client;

/// An order paid with full identifiers; `$1` is its number and `$2` its ad consent.
const PAID: &str = "insert into orders (order_number, email, phone, first_name, last_name, city, region,
        postal_code, country, client_ip, user_agent, fbc, fbp, gclid, ttclid, total, currency, status,
        ad_consent, paid_at) values ($1, 'Jane.Doe@Example.com', '(650) 555-1212', 'Jane', 'Doe',
        'San Francisco', 'California', '94105', 'US', '203.0.113.7', 'Mozilla/5.0 (X11) test',
        'fb.1.1700000000000.AbCdEf123', 'fb.1.1700000000000.987654321', 'Cj0KCQiA-test_gclid',
        'E.C.P.tt-click', 42.50, 'USD', 'paid', $2, now())";

/// Starts `pgcapi run` on the shop's config with debug logging into `log`.
fn spawn_logged_run(shop: &Shop, log: &std::path::Path) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgcapi"));
    command
        .args(["run", "--config"])
        .arg(&shop.config_path)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in &shop.env {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

/// Each platform received each consented conversion once (hashed), and nothing of the order
/// without consent.
fn assert_each_consented_conversion_sent_once(sandbox: &SandboxHandle) {
    let records = sandbox.records();
    for id in ["order-5001", "order-5002"] {
        let meta: Vec<_> = records
            .meta
            .events
            .iter()
            .filter(|e| e.event_id.as_deref() == Some(id))
            .collect();
        assert_eq!(meta.len(), 1, "meta {id}");
        assert_eq!(
            meta[0].hashed.get("em").map(|v| v[0].clone()),
            Some(pgcapi::identity::hash("jane.doe@example.com"))
        );
        assert_eq!(
            meta[0].hashed.get("ph").map(|v| v[0].clone()),
            Some(pgcapi::identity::hash("16505551212"))
        );
        let tiktok: Vec<_> = records
            .tiktok
            .events
            .iter()
            .filter(|e| e.event_id.as_deref() == Some(id))
            .collect();
        assert_eq!(tiktok.len(), 1, "tiktok {id}");
        assert_eq!(tiktok[0].event_name, "CompletePayment");
        let google: Vec<_> = records
            .google_ads
            .conversions
            .iter()
            .filter(|c| c.order_id.as_deref() == Some(id))
            .collect();
        assert_eq!(google.len(), 1, "google {id}");
    }
    assert!(records
        .meta
        .events
        .iter()
        .all(|e| e.event_id.as_deref() != Some("order-5003")));
}

/// Google got a RETRACTION of order 5001; Meta and TikTok recorded that they cannot retract.
async fn assert_only_google_retracted(client: &Client, sandbox: &SandboxHandle) {
    let states: Vec<(String, String, Option<String>)> = client
        .query(
            "select destination, state, last_error from pgcapi.deliveries where kind = 'retraction'
             order by destination",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(states[0].0, "google");
    assert_eq!(states[0].1, "sent");
    for (dest, state, error) in &states[1..] {
        assert_eq!(state, "skipped", "{dest}");
        assert!(
            error.as_deref().unwrap_or("").contains("cannot retract"),
            "{dest}: {error:?}"
        );
    }
    let adjustments = sandbox.records().google_ads.adjustments;
    assert_eq!(adjustments.len(), 1);
    assert_eq!(adjustments[0].adjustment_type, "RETRACTION");
    assert_eq!(adjustments[0].order_id.as_deref(), Some("order-5001"));
}

#[tokio::test]
async fn paid_orders_reach_every_platform_once_and_refunds_retract_where_possible() {
    // GIVEN the sandbox, a shop database and `pgcapi run` pointed at the sandbox.
    let shop = Shop::start(CONTRACT_TOML).await;
    let client = &shop.client;
    let log = shop.dir.path().join("pgcapi.log");
    let mut child = spawn_logged_run(&shop, &log);

    // WHEN two orders are paid with full identifiers (one later refunded), and one without consent.
    client.execute(PAID, &[&"5001", &true]).await.unwrap();
    client.execute(PAID, &[&"5002", &true]).await.unwrap();
    client.execute(PAID, &[&"5003", &false]).await.unwrap();

    // THEN each platform receives each consented conversion once.
    let sent = "select count(*) from pgcapi.deliveries where state = 'sent'";
    wait_count(client, 30, "the conversions to be sent", sent, 6).await;
    assert_each_consented_conversion_sent_once(&shop.sandbox);

    // WHEN an order is refunded after its conversion was sent.
    client
        .batch_execute("update orders set status = 'refunded' where order_number = '5001'")
        .await
        .unwrap();

    // THEN Google gets a RETRACTION; Meta and TikTok record that they cannot retract.
    let settled =
        "select count(*) from pgcapi.deliveries where kind = 'retraction' and state <> 'pending'";
    wait_count(client, 30, "the retractions to settle", settled, 3).await;
    assert_only_google_retracted(client, &shop.sandbox).await;

    child.kill().unwrap();
    child.wait().unwrap();
    // No raw identifier or secret in the process's debug log.
    let text = std::fs::read_to_string(&log).unwrap();
    for raw in ["Jane", "jane.doe", "555-1212", "s3cr3t"] {
        assert!(!text.contains(raw), "{raw:?} found in the log");
    }
}

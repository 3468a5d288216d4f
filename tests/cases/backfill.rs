//! `pgcapi backfill`: rows that existed before pgcapi watched the table become conversions through the
//! same control table and dedup as captured changes.

use crate::support::{
    config_from, contract_env, count, pgcapi_command, spawn_run, wait_for, TestDb, CONTRACT_TOML,
    SHOP_SQL,
};
use pgcapi::ops::backfill::{backfill, BackfillOptions};
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::testbed::sandbox::{Sandbox, SandboxHandle};
use std::process::Stdio;
use tokio_postgres::Client;

/// Inserts an order paid `days_ago` days ago with `status`.
async fn order(client: &Client, number: &str, status: &str, days_ago: i32) {
    client
        .execute(
            "insert into orders (order_number, email, client_ip, user_agent, gclid, total, status,
                 ad_consent, paid_at)
             values ($1, $1 || '@example.com', '203.0.113.5', 'Mozilla/5.0 (backfill)',
                 'Cj0-backfill-' || $1, 25, $2, true, now() - make_interval(days => $3))",
            &[&number, &status, &days_ago],
        )
        .await
        .unwrap();
}

async fn states(client: &Client, rule: &str) -> Vec<(String, String, String, String)> {
    client
        .query(
            "select event_id, destination, state, coalesce(last_error, '') from pgcapi.deliveries
             where rule = $1 order by 1, 2",
            &[&rule],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Inserts the orders that existed before pgcapi was set up: two paid this week, one paid ten days
/// ago, one paid a month ago, one still pending and one refunded (paid three days ago).
async fn existing_orders(client: &Client) {
    client.batch_execute(SHOP_SQL).await.unwrap();
    order(client, "bf-1", "paid", 2).await;
    order(client, "bf-2", "paid", 5).await;
    order(client, "bf-old", "paid", 10).await;
    order(client, "bf-ancient", "paid", 30).await;
    order(client, "bf-pending", "pending", 1).await;
    order(client, "bf-refunded", "refunded", 3).await;
}

/// Backfills the paid orders of the last two weeks (a dry run, then twice for real) and checks that
/// the dry run writes nothing, the first run records the three orders in range (paid_at, the rule's
/// event_time column) for each of the three destinations, and the second adds nothing.
async fn backfill_paid_orders_twice(config: &pgcapi::config::Config, client: &Client) {
    let options = BackfillOptions {
        rule: "order_paid".into(),
        since: chrono::Utc::now() - chrono::Duration::days(14),
        column: None,
        dry_run: false,
    };
    let dry = backfill(
        config,
        &BackfillOptions {
            dry_run: true,
            ..options.clone()
        },
    )
    .await
    .unwrap();
    let first = backfill(config, &options).await.unwrap();
    let second = backfill(config, &options).await.unwrap();

    assert_eq!(dry.deliveries, 9, "{dry:?}");
    assert_eq!(dry.inserted, 0);
    assert!(dry.render().contains("dry run"), "{}", dry.render());
    assert_eq!(first.column, "paid_at");
    assert_eq!(first.rows_read, 5, "all but bf-ancient are in range");
    assert_eq!((first.deliveries, first.inserted), (9, 9), "{first:?}");
    assert_eq!((second.deliveries, second.inserted), (9, 0), "{second:?}");
    let recorded = states(client, "order_paid").await;
    let ids: std::collections::BTreeSet<&str> = recorded.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        ["order-bf-1", "order-bf-2", "order-bf-old"]
    );
}

/// Backfills the refund rule through the CLI and checks that the refunded order (whose conversion
/// never existed) gets one retraction per destination.
async fn backfill_refunds_through_the_cli(
    path: &std::path::Path,
    env: &[(String, String)],
    client: &Client,
) {
    let output = pgcapi_command(env)
        .args([
            "backfill",
            "--rule",
            "order_refunded",
            "--since",
            "7d",
            "--config",
        ])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("3 new"), "{stdout}");
    assert_eq!(
        count(
            client,
            "select count(*) from pgcapi.deliveries where rule = 'order_refunded'
             and event_id = 'order-bf-refunded' and kind = 'retraction'"
        )
        .await,
        3
    );
}

/// Waits until capture has confirmed past the current WAL position and no row is pending.
async fn wait_captured_and_settled(client: &Client) {
    let after_update: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    wait_for(60, "capture to confirm past the update", || async {
        let behind: bool = client
            .query_one(
                "select confirmed_flush_lsn < $1::text::pg_lsn from pg_replication_slots
                 where slot_name = 'pgcapi'",
                &[&after_update],
            )
            .await
            .unwrap()
            .get(0);
        (!behind).then_some(())
    })
    .await;
    wait_for(60, "every backfilled row to reach an outcome", || async {
        (count(
            client,
            "select count(*) from pgcapi.deliveries where state = 'pending'",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
}

/// This week's orders are sent once everywhere, the ten-day-old one is sent to Google (90-day
/// window) and skipped by the 7-day platforms with the reason, and the retractions of a conversion
/// that never existed are skipped.
async fn assert_backfilled_outcomes(client: &Client, sandbox: &SandboxHandle) {
    assert_eq!(
        count(client, "select count(*) from pgcapi.deliveries").await,
        12,
        "the captured update added nothing"
    );
    for (event_id, destination, state, error) in states(client, "order_paid").await {
        match (event_id.as_str(), destination.as_str()) {
            ("order-bf-old", "meta" | "tiktok") => {
                assert_eq!(state, "skipped", "{event_id} {destination}: {error}");
                assert!(error.contains("day"), "{event_id} {destination}: {error}");
            }
            _ => assert_eq!(state, "sent", "{event_id} {destination}: {error}"),
        }
    }
    for (_, destination, state, error) in states(client, "order_refunded").await {
        assert_eq!(state, "skipped", "{destination}: {error}");
    }
    let records = sandbox.records();
    let mut meta: Vec<String> = records
        .meta
        .events
        .iter()
        .filter_map(|e| e.event_id.clone())
        .collect();
    meta.sort();
    assert_eq!(meta, ["order-bf-1", "order-bf-2"]);
    let mut google: Vec<String> = records
        .google_ads
        .conversions
        .iter()
        .filter_map(|c| c.order_id.clone())
        .collect();
    google.sort();
    assert_eq!(google, ["order-bf-1", "order-bf-2", "order-bf-old"]);
}

#[tokio::test]
async fn backfill_records_existing_rows_once_and_dispatch_sends_them() {
    // GIVEN orders that existed before pgcapi was set up.
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let db = TestDb::start().await;
    let client = db.connect().await;
    existing_orders(&client).await;
    let env = contract_env(&db.url(), &sandbox.base_url());
    let config = config_from(CONTRACT_TOML, &env);
    setup(&config, SetupOptions::default()).await.unwrap();

    // WHEN the paid orders of the last two weeks are backfilled, THEN each is recorded once.
    backfill_paid_orders_twice(&config, &client).await;

    // WHEN the refund rule is backfilled through the CLI, THEN each destination gets a retraction.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcapi.toml");
    std::fs::write(&path, CONTRACT_TOML).unwrap();
    backfill_refunds_through_the_cli(&path, &env, &client).await;

    // WHEN `pgcapi run` starts and a backfilled order is touched again (captured as a change) …
    let mut child = spawn_run(&path, &env);
    client
        .execute(
            "update orders set notes = 'touched' where order_number = 'bf-1'",
            &[],
        )
        .await
        .unwrap();

    // THEN every backfilled row reaches an outcome, and nothing is sent twice.
    wait_captured_and_settled(&client).await;
    child.kill();
    assert_backfilled_outcomes(&client, &sandbox).await;
}

#[tokio::test]
async fn backfill_names_a_wrong_rule_or_column() {
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    let env = contract_env(&db.url(), "http://127.0.0.1:9");
    let config = config_from(CONTRACT_TOML, &env);
    setup(&config, SetupOptions::default()).await.unwrap();
    let options = BackfillOptions {
        rule: "order_shipped".into(),
        since: chrono::Utc::now(),
        column: None,
        dry_run: false,
    };
    let err = backfill(&config, &options).await.unwrap_err().to_string();
    assert!(
        err.contains("order_shipped") && err.contains("order_paid"),
        "{err}"
    );
    let err = backfill(
        &config,
        &BackfillOptions {
            rule: "order_paid".into(),
            column: Some("shipped_at".into()),
            ..options
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("shipped_at") && err.contains("public.orders"),
        "{err}"
    );
}

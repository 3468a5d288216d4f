//! The hooks `pgcapi bench` relies on: capture that stops by itself at an LSN.

use crate::support::{config_from, contract_env, count, TestDb, CONTRACT_TOML, SHOP_SQL};
use pgcapi::capture::Capture;
use pgcapi::lsn::Lsn;
use pgcapi::ops::setup::{setup, SetupOptions};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn capture_with_stop_at_returns_once_everything_up_to_the_lsn_is_recorded_and_confirmed() {
    // GIVEN a shop with three paid orders committed one by one, and the WAL position after them
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    let text = CONTRACT_TOML.replacen(
        "destinations = [\"meta\", \"google\", \"tiktok\"]",
        "destinations = [\"meta\"]",
        1,
    );
    let config = config_from(&text, &contract_env(&db.url(), "http://127.0.0.1:9"));
    setup(&config, SetupOptions::default()).await.unwrap();
    for n in 1..=3 {
        client
            .execute(
                "insert into orders (order_number, email, total, status, ad_consent, paid_at, \
                   user_agent) values ($1, 'a@example.com', 10, 'paid', true, now(), 'test agent')",
                &[&format!("stop-{n}")],
            )
            .await
            .unwrap();
    }
    let end: String = client
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let end: Lsn = end.parse().unwrap();

    // WHEN capture runs with stop_at and no shutdown signal
    let capture = Capture::new(Arc::new(config)).unwrap().stop_at(end);
    let stats = capture.stats();
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    tokio::time::timeout(Duration::from_secs(60), capture.run(shutdown))
        .await
        .expect("capture stops by itself")
        .expect("capture succeeds");

    // THEN every order before the LSN is recorded, and the position is stored and confirmed
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where event_id like 'order-stop-%'"
        )
        .await,
        3
    );
    assert!(stats.borrow().changes >= 3);
    assert!(stats.borrow().confirmed >= end);
    let stored: String = client
        .query_one(
            "select lsn::text from pgcapi.checkpoints where slot = 'pgcapi'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.parse::<Lsn>().unwrap() >= end);
    let confirmed: String = client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'pgcapi'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(confirmed.parse::<Lsn>().unwrap() >= end);
}

//! `kill -9` of `pgcapi run` during a workload: after restarts, every expected row exists exactly once.

use crate::support::{
    config_from, contract_env, count, spawn_run, wait_for, TestDb, CONTRACT_TOML, SHOP_SQL,
};
use pgcapi::ops::setup::{setup, SetupOptions};
use std::time::Duration;

#[tokio::test]
async fn kill_9_at_several_points_loses_and_repeats_nothing() {
    // GIVEN the contract config on a shop database and `pgcapi run` as a separate process.
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    let env = contract_env(&db.url(), "http://127.0.0.1:9");
    let config = config_from(CONTRACT_TOML, &env);
    setup(&config, SetupOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("pgcapi.toml");
    std::fs::write(&config_path, CONTRACT_TOML).unwrap();

    // WHEN a workload of thousands of changes runs in batches while the process is killed with
    // SIGKILL at several points (right after start, mid-batch, between batches) and restarted.
    let batches = 8;
    let per_batch = 400;
    let mut child = spawn_run(&config_path, &env);
    for batch in 0..batches {
        let sql = format!(
            "insert into orders (order_number, email, phone, total, status, ad_consent, paid_at)
             select 'crash-' || g, 'user' || g || '@example.com', '+1650555' || lpad(g::text, 4, '0'),
                    g, 'paid', g % 5 <> 0, now()
             from generate_series({lo}, {hi}) g;
             update orders set notes = 'touched' where order_number like 'crash-%' and id % 7 = 0;
             insert into leads (email, stage, deal_value, consent)
             select 'lead' || g || '@example.com', 'won', g, 'granted' from generate_series({lo}, {hi}) g
             where g % 4 = 0;",
            lo = batch * per_batch + 1,
            hi = (batch + 1) * per_batch
        );
        // Small transactions too, so kills land between many commits.
        for chunk in sql.split_inclusive(';').filter(|s| !s.trim().is_empty()) {
            client.batch_execute(chunk).await.unwrap();
        }
        if batch % 2 == 1 {
            // Kill while capture is busy with the batch just written.
            tokio::time::sleep(Duration::from_millis(30 * batch as u64)).await;
            child.kill();
            child = spawn_run(&config_path, &env);
        }
    }

    // THEN after the last restart every expected row is recorded exactly once.
    let orders = (batches * per_batch) as i64;
    let leads = orders / 4;
    let expected = orders * 3 + leads * 2;
    wait_for(120, "every delivery row", || async {
        (count(&client, "select count(*) from pgcapi.deliveries").await == expected).then_some(())
    })
    .await;
    child.kill();
    assert_eq!(
        count(
            &client,
            "select count(distinct (rule, destination, event_id)) from pgcapi.deliveries"
        )
        .await,
        expected
    );
    // Consent: every fifth order was not consented.
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where last_error = 'no consent'"
        )
        .await,
        (orders / 5) * 3
    );
    // Every order and lead has its rows.
    assert_eq!(
        count(
            &client,
            "select count(*) from orders o where (select count(*) from pgcapi.deliveries d
               where d.event_id = 'order-' || o.order_number) <> 3"
        )
        .await,
        0
    );
}

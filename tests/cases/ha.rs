//! High availability: two `pgcapi run` processes on one slot. One captures, the other waits; both
//! dispatch. Killing the capturing process hands the slot to the standby, and nothing is lost or
//! counted twice by the platforms.

use crate::support::Shop;
use crate::support::{count, spawn_run, wait_for, CONTRACT_TOML};
use pgcapi::testbed::sandbox::Records;
use std::time::Instant;
use tokio_postgres::Client;

/// The backend pid of the walsender holding the slot, if any.
async fn slot_holder(client: &Client) -> Option<i32> {
    client
        .query_one(
            "select active_pid from pg_replication_slots where slot_name = 'pgcapi'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Pays `n` orders numbered from `from`, each in its own transaction.
async fn pay_orders(client: &Client, from: i32, n: i32) {
    for i in from..from + n {
        client
            .execute(
                "insert into orders (order_number, email, client_ip, user_agent, total, status,
                 ad_consent, paid_at)
                 values ($1, $2, '203.0.113.9', 'Mozilla/5.0 (ha test)', 10, 'paid', true, now())",
                &[&format!("ha-{i}"), &format!("ha{i}@example.com")],
            )
            .await
            .unwrap();
    }
}

/// Waits up to 60 s until `expected` deliveries are sent, panicking with a per-destination
/// summary of the control table otherwise.
async fn wait_all_sent(client: &Client, expected: i64) {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while count(
        client,
        "select count(*) from pgcapi.deliveries where state = 'sent'",
    )
    .await
        != expected
    {
        if Instant::now() > deadline {
            let rows = client
                .query(
                    "select destination, state, coalesce(last_error, ''), count(*)
                     from pgcapi.deliveries group by 1, 2, 3 order by 1, 2",
                    &[],
                )
                .await
                .unwrap();
            let summary: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {:?}: {}",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, i64>(3)
                    )
                })
                .collect();
            panic!("not every conversion was sent within 60 s: {summary:#?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Each platform counted each of the 600 orders exactly once.
fn assert_each_order_counted_once(records: &Records) {
    let mut meta: Vec<_> = records
        .meta
        .events
        .iter()
        .filter_map(|e| e.event_id.clone())
        .collect();
    let mut tiktok: Vec<_> = records
        .tiktok
        .events
        .iter()
        .filter_map(|e| e.event_id.clone())
        .collect();
    let mut google: Vec<_> = records
        .google_ads
        .conversions
        .iter()
        .filter_map(|c| c.order_id.clone())
        .collect();
    for (platform, ids) in [
        ("meta", &mut meta),
        ("tiktok", &mut tiktok),
        ("google", &mut google),
    ] {
        ids.sort();
        let total = ids.len();
        ids.dedup();
        assert_eq!(total, ids.len(), "{platform} counted an order twice");
        assert_eq!(ids.len(), 600, "{platform} counted every order");
    }
}

#[tokio::test]
async fn killing_the_capturing_process_hands_the_slot_to_the_standby_losing_nothing() {
    // GIVEN the sandbox, a shop database and two `pgcapi run` processes on the same slot, the first
    // holding it and the second waiting. A short lease brings the killed process's claims back fast.
    let text = format!("{CONTRACT_TOML}\n[dispatch]\nlease_secs = 2\nretry_initial_ms = 50\n");
    let shop = Shop::start(&text).await;
    let (sandbox, client, env, config_path) =
        (&shop.sandbox, &shop.client, &shop.env, &shop.config_path);

    let mut first = spawn_run(config_path, env);
    let first_holder = wait_for(60, "the first process to hold the slot", || async {
        slot_holder(client).await
    })
    .await;
    let mut second = spawn_run(config_path, env);

    // WHEN orders are paid, the capturing process is killed mid-stream, and more orders are paid.
    pay_orders(client, 0, 300).await;
    wait_for(60, "some deliveries to be sent", || async {
        (count(
            client,
            "select count(*) from pgcapi.deliveries where state = 'sent'",
        )
        .await
            > 0)
        .then_some(())
    })
    .await;
    first.kill();
    let killed_at = Instant::now();
    pay_orders(client, 300, 300).await;

    // THEN the standby takes the slot within seconds …
    let second_holder = wait_for(60, "the standby to take the slot", || async {
        slot_holder(client).await.filter(|pid| *pid != first_holder)
    })
    .await;
    let takeover = killed_at.elapsed();
    assert_ne!(second_holder, first_holder);
    assert!(
        takeover.as_secs() < 10,
        "the standby took {takeover:?} to take the slot"
    );

    // … every conversion is recorded once and sent (3 platforms per order) …
    let expected = 600 * 3;
    wait_all_sent(client, expected).await;
    assert_eq!(
        count(client, "select count(*) from pgcapi.deliveries").await,
        expected,
        "no extra delivery rows"
    );

    // … and each platform counted each order exactly once.
    let records = sandbox.records();
    assert_each_order_counted_once(&records);
    eprintln!(
        "takeover after {takeover:?}; raw duplicate sends: meta {}, google {}, tiktok {}",
        records.meta.counters.duplicate_sends,
        records.google_ads.counters.duplicate_sends,
        records.tiktok.counters.duplicate_sends
    );

    second.kill();
}

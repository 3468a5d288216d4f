//! Claiming rows: two dispatchers on one table, and new rows picked up on NOTIFY.

use super::*;
use pgcapi::dispatch::Dispatcher;
use pgcapi::event::NewDelivery;
use pgcapi::outbox;
use pgcapi::platform::Platform;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn two_dispatchers_on_one_table_never_send_a_row_twice() {
    // GIVEN 120 pending rows, small batches, a slow platform and two dispatchers
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    *fake.delay_ms.lock().unwrap() = 15;
    let rows: Vec<NewDelivery> = (0..120)
        .map(|i| conversion("meta", Platform::Meta, &format!("order-{i}")))
        .collect();
    insert(&client, &rows).await;
    let extra = "batch_max_events = 7";
    let a = dispatcher(
        &db,
        vec![destination("meta", Platform::Meta, &endpoint, extra)],
    )
    .await;
    let b = dispatcher(
        &db,
        vec![destination("meta", Platform::Meta, &endpoint, extra)],
    )
    .await;
    assert_ne!(a.owner(), b.owner());
    // WHEN both dispatch concurrently until nothing is pending
    let drain = |d: Dispatcher| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if d.run_once().await.unwrap() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if d.run_once().await.unwrap() == 0 {
                    break;
                }
            }
        }
    };
    tokio::join!(drain(a), drain(b));
    // THEN every event reached the platform exactly once and every row is sent after one attempt
    let mut seen: HashMap<String, usize> = HashMap::new();
    for body in fake.requests("/events") {
        for e in body["data"].as_array().unwrap() {
            *seen
                .entry(e["event_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 120);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let r = client
        .query_one(
            "select count(*) filter (where state = 'sent' and attempts = 1), count(*) \
             from pgcapi.deliveries",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (120, 120));
}

#[tokio::test]
async fn new_rows_are_picked_up_on_notify_without_waiting_for_the_poll() {
    // GIVEN a running dispatcher that would otherwise poll only once a minute
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    let d = dispatcher(
        &db,
        vec![destination("tiktok", Platform::Tiktok, &endpoint, "")],
    )
    .await
    .with_poll_interval(Duration::from_secs(60));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(d.run(shutdown));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // WHEN a row is inserted and capture's NOTIFY arrives
    let started = tokio::time::Instant::now();
    insert(
        &client,
        &[conversion("tiktok", Platform::Tiktok, "order-1")],
    )
    .await;
    client
        .batch_execute(&format!("notify {}", outbox::notify_channel(SCHEMA)))
        .await
        .unwrap();
    // THEN it is sent well before the next poll
    loop {
        if row(&client, "order_paid", "tiktok", "order-1").await.state == "sent" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.requests("/event/track/").len(), 1);
    // AND the dispatcher stops cleanly on shutdown
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("dispatcher stops")
        .unwrap()
        .unwrap();
}

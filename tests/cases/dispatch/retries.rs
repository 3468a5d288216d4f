//! Retries: backoff after 500s, permanent rejections, 429 with Retry-After, giving up, a fresh budget.

use super::*;
use pgcapi::config::DispatchConfig;
use pgcapi::dispatch::Dispatcher;
use pgcapi::outbox;
use pgcapi::platform::Platform;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_row_failing_twice_with_500_is_retried_with_backoff_then_recorded_as_sent() {
    // GIVEN a pending Meta row and a platform that answers 500, 500, then 200
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    fake.script([Scripted::status(500), Scripted::status(500)]);
    insert(&client, &[conversion("meta", Platform::Meta, "order-1")]).await;
    let d = meta_dispatcher(&db, &endpoint).await;

    // WHEN dispatch runs once
    assert_eq!(d.run_once().await.unwrap(), 1);
    // THEN the row is pending again with one attempt, the 500 recorded, and due within the backoff cap
    let r = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 1), "{r:?}");
    assert!(
        r.last_error.as_deref().unwrap().contains("HTTP 500"),
        "{r:?}"
    );
    assert!(r.due_in_ms <= 100.0 && r.due_in_ms > -1_000.0, "{r:?}");

    // WHEN it runs again after the backoff, twice
    tokio::time::sleep(Duration::from_millis(150)).await;
    d.run_once().await.unwrap();
    assert_eq!(
        row(&client, "order_paid", "meta", "order-1").await.attempts,
        2
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    d.run_once().await.unwrap();
    // THEN the row is sent after three attempts, with Meta's trace id and no error left
    let r = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("sent", 3), "{r:?}");
    assert!(r.sent && r.last_error.is_none());
    assert_eq!(r.platform_ref.as_deref(), Some("trace"));
    assert_eq!(fake.requests("/events").len(), 3);
    // AND nothing is left to claim
    assert_eq!(d.run_once().await.unwrap(), 0);
}

#[tokio::test]
async fn a_permanent_rejection_fails_the_row_with_the_platforms_message() {
    // GIVEN Meta rejecting the event with its error envelope
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    fake.script([Scripted {
        status: 400,
        body: json!({"error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100,
            "error_subcode": 2804019}}),
        retry_after: None,
    }]);
    insert(&client, &[conversion("meta", Platform::Meta, "order-1")]).await;
    let d = meta_dispatcher(&db, &endpoint).await;
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN the row failed once, with Meta's code and message
    let r = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("failed", 1));
    assert_eq!(
        r.last_error.as_deref(),
        Some("meta: HTTP 400 OAuthException code 100 subcode 2804019: Invalid parameter")
    );
}

#[tokio::test]
async fn a_429_with_retry_after_reschedules_no_earlier_than_asked() {
    // GIVEN TikTok throttling with Retry-After: 30
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    fake.script([Scripted {
        retry_after: Some("30"),
        ..Scripted::status(429)
    }]);
    insert(
        &client,
        &[conversion("tiktok", Platform::Tiktok, "order-1")],
    )
    .await;
    let d = dispatcher(
        &db,
        vec![destination("tiktok", Platform::Tiktok, &endpoint, "")],
    )
    .await;
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN the row waits at least 30 s, far beyond the 100 ms backoff cap
    let r = row(&client, "order_paid", "tiktok", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 1));
    assert!(r.due_in_ms > 29_000.0, "{r:?}");
}

#[tokio::test]
async fn a_row_older_than_give_up_after_secs_fails_instead_of_retrying() {
    // GIVEN a row created two minutes ago, a one-minute give-up and a platform answering 503
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    fake.script([Scripted::status(503)]);
    insert(&client, &[conversion("meta", Platform::Meta, "order-1")]).await;
    client
        .batch_execute(
            "update pgcapi.deliveries set created_at = now() - interval '2 minutes',
             queued_at = now() - interval '2 minutes'",
        )
        .await
        .unwrap();
    let config = DispatchConfig {
        give_up_after_secs: 60,
        ..dispatch_config()
    };
    let dests = vec![destination("meta", Platform::Meta, &endpoint, "")];
    let d = Dispatcher::connect(&db.url(), SCHEMA, config, dests)
        .await
        .unwrap();
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN the row failed, saying it gave up and why
    let r = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!(r.state, "failed");
    let error = r.last_error.unwrap();
    assert!(
        error.starts_with("gave up after 60 s: meta: HTTP 503"),
        "{error}"
    );
}

#[tokio::test]
async fn a_retried_old_row_gets_the_full_retry_budget_again() {
    // GIVEN two Meta conversions recorded two days ago (past the give-up age): one failed and retried
    // with `pgcapi retry`, the other pending all along; and a platform answering 500.
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    outbox::insert_deliveries(
        &client,
        SCHEMA,
        &[
            conversion("meta", Platform::Meta, "order-retried"),
            conversion("meta", Platform::Meta, "order-waiting"),
        ],
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "update pgcapi.deliveries set created_at = now() - interval '2 days',
                 queued_at = now() - interval '2 days';
             update pgcapi.deliveries set state = 'failed', last_error = 'meta: HTTP 400'
             where event_id = 'order-retried';",
        )
        .await
        .unwrap();
    let mut repair_client = db.connect().await;
    let filters = pgcapi::ops::repair::Filters {
        ids: vec![],
        destination: None,
        rule: None,
        since: None,
        before: None,
    };
    let report = pgcapi::ops::repair::retry(&mut repair_client, SCHEMA, &filters, false)
        .await
        .unwrap();
    assert_eq!(report.requeued.len(), 1);
    fake.script(vec![Scripted::status(500); 2]);

    // WHEN dispatch meets the 500.
    let d = meta_dispatcher(&db, &endpoint).await;
    d.run_once().await.unwrap();

    // THEN the retried row waits for another try (its clock restarted at the retry), while the row
    // that has been retrying for two days is given up.
    let rows = client
        .query(
            "select event_id, state, coalesce(last_error, '') from pgcapi.deliveries order by 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got[0].0, "order-retried");
    assert_eq!(got[0].1, "pending", "{got:?}");
    assert_eq!(got[1].0, "order-waiting");
    assert_eq!(got[1].1, "failed", "{got:?}");
    assert!(got[1].2.starts_with("gave up after"), "{got:?}");
}

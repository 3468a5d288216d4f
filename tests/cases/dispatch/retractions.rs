//! Retractions and restatements: cancelled before the send, sent or skipped after it, never across a batch.

use super::*;
use pgcapi::event::{Kind, NewDelivery};
use pgcapi::platform::Platform;
use serde_json::json;

#[tokio::test]
async fn a_retraction_of_an_unsent_conversion_cancels_both_without_sending() {
    // GIVEN two pending conversions and their retractions: one claimed in the same batch, one not yet due
    let (db, client, fake, endpoint) = with_rows(&[
        conversion("meta", Platform::Meta, "order-1"),
        retraction("meta", Platform::Meta, "order-1"),
        conversion("meta", Platform::Meta, "order-2"),
        retraction("meta", Platform::Meta, "order-2"),
    ])
    .await;
    client
        .batch_execute(
            "update pgcapi.deliveries set next_attempt_at = now() + interval '1 hour' \
             where rule = 'order_paid' and event_id = 'order-2'",
        )
        .await
        .unwrap();
    let d = meta_dispatcher(&db, &endpoint).await;
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN all four rows are cancelled with their reasons, and nothing reached the platform
    for id in ["order-1", "order-2"] {
        let c = row(&client, "order_paid", "meta", id).await;
        assert_eq!(c.state, "cancelled", "{id}: {c:?}");
        assert_eq!(
            c.last_error.as_deref(),
            Some("retracted before it was sent")
        );
        let r = row(&client, "order_refunded", "meta", id).await;
        assert_eq!(r.state, "cancelled", "{id}: {r:?}");
        assert_eq!(r.last_error.as_deref(), Some("conversion was not sent yet"));
        assert_eq!(c.attempts + r.attempts, 0);
    }
    assert!(fake.requests("").is_empty());
}

#[tokio::test]
async fn a_retraction_of_a_sent_conversion_is_sent_to_google_and_skipped_for_meta() {
    // GIVEN one order sent to Google and to Meta
    let (db, client, fake, endpoint) = with_rows(&[
        conversion("google", Platform::GoogleAds, "order-1"),
        conversion("meta", Platform::Meta, "order-1"),
    ])
    .await;
    let d = dispatcher(
        &db,
        vec![
            destination("google", Platform::GoogleAds, &endpoint, ""),
            destination("meta", Platform::Meta, &endpoint, ""),
        ],
    )
    .await;
    d.run_once().await.unwrap();
    assert_eq!(
        row(&client, "order_paid", "google", "order-1").await.state,
        "sent"
    );
    assert_eq!(
        row(&client, "order_paid", "meta", "order-1").await.state,
        "sent"
    );
    // WHEN the order is refunded and dispatch runs
    insert(
        &client,
        &[
            retraction("google", Platform::GoogleAds, "order-1"),
            retraction("meta", Platform::Meta, "order-1"),
        ],
    )
    .await;
    d.run_once().await.unwrap();
    // THEN Google got a RETRACTION keyed by the order id, and the Meta retraction is skipped
    let g = row(&client, "order_refunded", "google", "order-1").await;
    assert_eq!((g.state.as_str(), g.attempts), ("sent", 1), "{g:?}");
    let adjustments = fake.requests(":uploadConversionAdjustments");
    assert_eq!(adjustments.len(), 1);
    let adj = &adjustments[0]["conversionAdjustments"][0];
    assert_eq!(adj["adjustmentType"], "RETRACTION");
    assert_eq!(adj["orderId"], "order-1");
    assert_eq!(
        adj["conversionAction"],
        "customers/1234567890/conversionActions/1001"
    );
    assert_eq!(adjustments[0]["partialFailure"], true);
    let m = row(&client, "order_refunded", "meta", "order-1").await;
    assert_eq!(m.state, "skipped");
    assert_eq!(m.last_error.as_deref(), Some("platform cannot retract"));
    assert_eq!(fake.requests("/events").len(), 1);
}

#[tokio::test]
async fn a_retraction_waits_for_a_conversion_in_flight_and_skips_a_missing_one() {
    // GIVEN a conversion leased by another process, its retraction, and a retraction of nothing
    let (db, client, fake, endpoint) = with_rows(&[
        conversion("meta", Platform::Meta, "order-1"),
        retraction("meta", Platform::Meta, "order-1"),
        retraction("meta", Platform::Meta, "order-9"),
    ])
    .await;
    client
        .batch_execute(
            "update pgcapi.deliveries set lease_owner = 'other', lease_until = now() + interval '1 minute' \
             where rule = 'order_paid'",
        )
        .await
        .unwrap();
    let d = meta_dispatcher(&db, &endpoint).await;
    // WHEN dispatch runs
    d.run_once().await.unwrap();
    // THEN the first retraction stays pending (no attempt counted, due again shortly, lease released)
    let r = row(&client, "order_refunded", "meta", "order-1").await;
    assert_eq!((r.state.as_str(), r.attempts), ("pending", 0), "{r:?}");
    assert!(r.due_in_ms > 0.0, "{r:?}");
    let c = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!(c.state, "pending");
    // AND the retraction of a conversion that never existed is skipped
    let none = row(&client, "order_refunded", "meta", "order-9").await;
    assert_eq!(none.state, "skipped");
    assert_eq!(none.last_error.as_deref(), Some("no conversion to retract"));
    assert!(fake.requests("").is_empty());
}

/// The restatement of `event_id`'s `order_paid` conversion to a new total of `value`.
fn restatement(destination: &str, platform: Platform, event_id: &str, value: &str) -> NewDelivery {
    NewDelivery {
        rule: "order_partially_refunded".into(),
        kind: Kind::Restatement,
        value: Some(value.into()),
        ..retraction(destination, platform, event_id)
    }
}

#[tokio::test]
async fn a_restatement_updates_an_unsent_conversion_or_is_sent_to_google_after_it() {
    // GIVEN order-1 already sent to Google, and order-2 pending but not yet due
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    insert(
        &client,
        &[conversion("google", Platform::GoogleAds, "order-1")],
    )
    .await;
    let d = dispatcher(
        &db,
        vec![destination("google", Platform::GoogleAds, &endpoint, "")],
    )
    .await;
    d.run_once().await.unwrap();
    insert(
        &client,
        &[conversion("google", Platform::GoogleAds, "order-2")],
    )
    .await;
    client
        .batch_execute(
            "update pgcapi.deliveries set next_attempt_at = now() + interval '1 hour' \
             where event_id = 'order-2'",
        )
        .await
        .unwrap();
    // WHEN both are restated to a new total of 5 and dispatch runs
    insert(
        &client,
        &[
            restatement("google", Platform::GoogleAds, "order-1", "5"),
            restatement("google", Platform::GoogleAds, "order-2", "5"),
        ],
    )
    .await;
    d.run_once().await.unwrap();
    // THEN order-1's restatement went to Google as a RESTATEMENT with the new total
    let sent = row(&client, "order_partially_refunded", "google", "order-1").await;
    assert_eq!(sent.state, "sent", "{sent:?}");
    let adjustments = fake.requests(":uploadConversionAdjustments");
    assert_eq!(adjustments.len(), 1);
    let adj = &adjustments[0]["conversionAdjustments"][0];
    assert_eq!(adj["adjustmentType"], "RESTATEMENT");
    assert_eq!(adj["orderId"], "order-1");
    assert_eq!(
        adj["restatementValue"],
        json!({"adjustedValue": 5.0, "currencyCode": "USD"})
    );
    // AND order-2's unsent conversion now carries the new value, its restatement closed
    let applied = row(&client, "order_partially_refunded", "google", "order-2").await;
    assert_eq!(applied.state, "cancelled");
    let value: String = client
        .query_one(
            "select value::text from pgcapi.deliveries \
             where rule = 'order_paid' and event_id = 'order-2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(value, "5");
    assert_eq!(
        row(&client, "order_paid", "google", "order-2").await.state,
        "pending"
    );
}

#[tokio::test]
async fn a_batch_boundary_between_a_conversion_and_its_retraction_never_sends_the_conversion() {
    // GIVEN ten orders paid and refunded (conversion, then retraction, in id order) and batches of
    // three, so that a batch could end right after a conversion
    let (db, client) = control_db().await;
    let (fake, endpoint) = Fake::start().await;
    let rows: Vec<NewDelivery> = (0..10)
        .flat_map(|i| {
            let id = format!("order-{i}");
            [
                conversion("meta", Platform::Meta, &id),
                retraction("meta", Platform::Meta, &id),
            ]
        })
        .collect();
    insert(&client, &rows).await;
    let d = dispatcher(
        &db,
        vec![destination(
            "meta",
            Platform::Meta,
            &endpoint,
            "batch_max_events = 3",
        )],
    )
    .await;
    // WHEN dispatch runs until nothing is left to claim
    while d.run_once().await.unwrap() > 0 {}
    // THEN every conversion and retraction is cancelled and nothing reached the platform
    let cancelled = crate::support::count(
        &client,
        "select count(*) from pgcapi.deliveries where state = 'cancelled' and attempts = 0",
    )
    .await;
    assert_eq!(cancelled, 20);
    assert!(fake.requests("").is_empty());
}

#[tokio::test]
async fn a_refund_of_a_conversion_that_may_have_reached_the_platform_is_sent_first_then_retracted_or_skipped(
) {
    // GIVEN a Google and a Meta conversion each attempted once already (the answer was lost), back
    // to pending, and then refunded
    let (db, client, fake, endpoint) = with_rows(&[
        conversion("google", Platform::GoogleAds, "order-1"),
        retraction("google", Platform::GoogleAds, "order-1"),
        conversion("meta", Platform::Meta, "order-1"),
        retraction("meta", Platform::Meta, "order-1"),
    ])
    .await;
    client
        .batch_execute("update pgcapi.deliveries set attempts = 1 where rule = 'order_paid'")
        .await
        .unwrap();
    let d = dispatcher(
        &db,
        vec![
            destination("google", Platform::GoogleAds, &endpoint, ""),
            destination("meta", Platform::Meta, &endpoint, ""),
        ],
    )
    .await;
    // WHEN dispatch runs until both refunds are settled (the Google one waits for its conversion)
    crate::support::wait_for(10, "the refunds to settle", || async {
        d.run_once().await.unwrap();
        let pending = crate::support::count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'pending'",
        )
        .await;
        (pending == 0).then_some(())
    })
    .await;
    // THEN Google got the conversion again (idempotent on its order id) and then its RETRACTION
    let g = row(&client, "order_paid", "google", "order-1").await;
    assert_eq!((g.state.as_str(), g.attempts), ("sent", 2), "{g:?}");
    let r = row(&client, "order_refunded", "google", "order-1").await;
    assert_eq!(r.state, "sent", "{r:?}");
    let adjustments = fake.requests(":uploadConversionAdjustments");
    assert_eq!(adjustments.len(), 1);
    assert_eq!(
        adjustments[0]["conversionAdjustments"][0]["adjustmentType"],
        "RETRACTION"
    );
    // AND Meta, which cannot retract, is never told "cancelled" about what it may count: the
    // conversion was finished (sent again, byte for byte what was stored), and the refund skipped
    let m = row(&client, "order_paid", "meta", "order-1").await;
    assert_eq!((m.state.as_str(), m.attempts), ("sent", 2), "{m:?}");
    let r = row(&client, "order_refunded", "meta", "order-1").await;
    assert_eq!(r.state, "skipped", "{r:?}");
    assert_eq!(r.last_error.as_deref(), Some("platform cannot retract"));
    let events = fake.requests("/events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"][0]["event_id"], "order-1");
}

//! Refunds that race the send: right after it, and after a lost answer.

use super::*;
use crate::support::count;
use pgcapi::platform::Platform;
use pgcapi::testbed::sandbox::Faults;

#[tokio::test]
async fn a_refund_right_after_the_conversion_was_sent_is_retracted_on_google_not_failed() {
    // GIVEN capture and dispatch running, and an order whose payment time is two seconds ahead of
    // this clock (a source database whose clock runs ahead), sent to every platform
    let (sandbox, db, client, config) = shop(1_000).await;
    let pipeline = Pipeline::start(config, &db.url()).await;
    client
        .batch_execute(&paid_order("q1").replace("now())", "now() + interval '2 seconds')"))
        .await
        .unwrap();
    settled(&client, 3, 20).await;
    // WHEN it is refunded at once, in the second of its conversion time or before
    client
        .batch_execute("update orders set status = 'refunded' where order_number = 'q1'")
        .await
        .unwrap();
    // THEN Google's retraction waits for a time after the conversion and is accepted, instead of
    // failing with ADJUSTMENT_PRECEDES_CONVERSION; Meta and TikTok say they cannot retract
    settled(&client, 6, 20).await;
    let outcome: Vec<(String, String, Option<String>)> = client
        .query(
            "select destination, state, last_error from pgcapi.deliveries
             where kind = 'retraction' order by destination",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(outcome[0], ("google".into(), "sent".into(), None));
    for (destination, state, error) in &outcome[1..] {
        assert_eq!(
            (state.as_str(), error.as_deref()),
            ("skipped", Some("platform cannot retract")),
            "{destination}"
        );
    }
    let adjustments = sandbox.records().google_ads.adjustments;
    assert_eq!(adjustments.len(), 1);
    assert_eq!(adjustments[0].adjustment_type, "RETRACTION");
    assert_eq!(adjustments[0].order_id.as_deref(), Some("order-q1"));
    pipeline.stop().await;
}

#[tokio::test]
async fn a_refund_after_a_lost_answer_leaves_the_control_table_agreeing_with_the_platforms() {
    // GIVEN capture and dispatch running, and platforms that process every request but lose the
    // answer (the connection drops after the platform counted the events)
    let (sandbox, db, client, config) = shop(1_000).await;
    sandbox.set_faults(Faults {
        accept_then_drop_ratio: 1.0,
        ..Faults::default()
    });
    let pipeline = Pipeline::start(config, &db.url()).await;
    let mut sql = String::from("begin;");
    for i in 0..10 {
        sql.push_str(&paid_order(&format!("lost{i}")));
    }
    sql.push_str("commit;");
    client.batch_execute(&sql).await.unwrap();
    crate::support::wait_for(30, "every conversion to be attempted", || async {
        let attempted = count(
            &client,
            "select count(*) from pgcapi.deliveries where kind = 'conversion' and attempts > 0
               and state = 'pending'",
        )
        .await;
        (attempted == 30).then_some(())
    })
    .await;

    // WHEN the ten orders are refunded before any retry got an answer, and the platforms then
    // answer again
    client
        .batch_execute("update orders set status = 'refunded' where order_number like 'lost%'")
        .await
        .unwrap();
    crate::support::wait_for(30, "the refunds to be captured", || async {
        let refunds = count(
            &client,
            "select count(*) from pgcapi.deliveries where kind = 'retraction'",
        )
        .await;
        (refunds == 30).then_some(())
    })
    .await;
    sandbox.set_faults(Faults::none());

    // THEN no conversion is cancelled: each was finished (sent), and its refund retracted it at
    // Google and is skipped, saying why, at Meta and TikTok
    settled(&client, 60, 30).await;
    let retractions = sandbox.records().google_ads.adjustments;
    for (destination, platform) in DESTINATIONS {
        agrees_with_the_platform(&client, &sandbox, destination, platform).await;
    }
    let mut retracted: Vec<String> = retractions
        .iter()
        .filter(|a| a.adjustment_type == "RETRACTION")
        .filter_map(|a| a.order_id.clone())
        .collect();
    retracted.sort();
    retracted.dedup();
    assert_eq!(retracted.len(), 10, "{retracted:?}");
    // AND the lost answers really made pgcapi send the conversions again
    let stats = sandbox.stats();
    for platform in [Platform::Meta, Platform::GoogleAds, Platform::Tiktok] {
        let c = stats.platform(crate::support::sandbox_api(platform));
        assert!(c.responses_lost > 0 && c.duplicate_sends >= 10, "{stats:?}");
    }
    pipeline.stop().await;
}

/// At `destination`, the ten conversions are sent and their refunds retracted (Google) or skipped
/// saying why (Meta, TikTok); and what the platform counts is exactly what the control table says it
/// holds.
async fn agrees_with_the_platform(
    client: &Client,
    sandbox: &SandboxHandle,
    destination: &str,
    platform: Platform,
) {
    let by_state = states(client, destination).await;
    let get = |kind: &str, state: &str| state_count(&by_state, kind, state);
    assert_eq!(get("conversion", "sent"), 10, "{destination}: {by_state:?}");
    let refund_state = if platform == Platform::GoogleAds {
        "sent"
    } else {
        "skipped"
    };
    assert_eq!(
        get("retraction", refund_state),
        10,
        "{destination}: {by_state:?}"
    );
    if platform != Platform::GoogleAds {
        let with_reason = count(
            client,
            &format!(
                "select count(*) from pgcapi.deliveries where destination = '{destination}'
                   and kind = 'retraction' and last_error = 'platform cannot retract'"
            ),
        )
        .await;
        assert_eq!(with_reason, 10, "{destination}");
    }
    // AND what the platform counts is exactly what the control table says it holds
    let mut ids = counted_ids(sandbox, platform);
    ids.sort();
    let mut sent: Vec<String> = client
        .query(
            "select event_id from pgcapi.deliveries
             where destination = $1 and kind = 'conversion' and state = 'sent'",
            &[&destination],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    sent.sort();
    assert_eq!(ids, sent, "{destination}");
}

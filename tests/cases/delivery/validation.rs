//! Events refused before any request: a stale order for Meta, a future time, an absurd value, a bad currency.

use super::*;
use crate::support::count;
use pgcapi::platform::Platform;

#[tokio::test]
async fn a_stale_order_among_fresh_ones_is_skipped_for_meta_naming_the_window() {
    // GIVEN capture and dispatch running
    let (sandbox, db, client, config) = shop(1_000).await;
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN ten fresh orders and one paid eight days ago arrive in one transaction (one Meta batch)
    let mut sql = String::from("begin;");
    for i in 0..10 {
        sql.push_str(&paid_order(&format!("s{i}")));
    }
    sql.push_str(&paid_order("old").replace("now())", "now() - interval '8 days')"));
    sql.push_str("commit;");
    client.batch_execute(&sql).await.unwrap();

    // THEN the stale one is skipped for Meta (and TikTok) with a reason naming the 7-day window,
    // and did not poison the batch: the others are sent
    settled(&client, 33, 30).await;
    let stale = |destination: &'static str| {
        let client = &client;
        async move {
            let r = client
                .query_one(
                    "select state, last_error from pgcapi.deliveries
                     where destination = $1 and event_id = 'order-old'",
                    &[&destination],
                )
                .await
                .unwrap();
            (r.get::<_, String>(0), r.get::<_, Option<String>>(1))
        }
    };
    assert_eq!(
        stale("meta").await,
        (
            "skipped".to_string(),
            Some("too old for meta (7 days)".to_string())
        )
    );
    assert_eq!(
        stale("tiktok").await,
        (
            "skipped".to_string(),
            Some("too old for tiktok (7 days)".to_string())
        )
    );
    // Google takes conversions up to 90 days after the click.
    assert_eq!(stale("google").await.0, "sent");
    for (destination, platform) in DESTINATIONS {
        let fresh_sent = count(
            &client,
            &format!(
                "select count(*) from pgcapi.deliveries where destination = '{destination}'
                   and event_id like 'order-s%' and state = 'sent'"
            ),
        )
        .await;
        assert_eq!(fresh_sent, 10, "{destination}");
        let ids = counted_ids(&sandbox, platform);
        let expected = if platform == Platform::GoogleAds {
            11
        } else {
            10
        };
        assert_eq!(ids.len(), expected, "{destination}: {ids:?}");
    }
    let stats = sandbox.stats();
    assert_eq!(
        stats.meta.rejected_requests + stats.tiktok.rejected_requests,
        0
    );
    pipeline.stop().await;
}

#[tokio::test]
async fn a_future_event_time_an_absurd_value_and_an_unknown_currency_fail_before_any_request() {
    // GIVEN capture and dispatch running, on an orders table whose total takes any numeric
    let (sandbox, db, client, config) = shop(1_000).await;
    client
        .batch_execute("alter table orders alter column total type numeric")
        .await
        .unwrap();
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN one transaction pays an order in the year 9999, one worth 1e308, one in currency XXX
    // (ISO 4217's "no currency"), and an ordinary one
    let sql = format!(
        "begin; {} {} {} {} commit;",
        paid_order("future").replace("now())", "'9999-01-01 00:00:00+00')"),
        paid_order("huge").replace("25.00", "1e308"),
        paid_order("xxx")
            .replace("total, status", "currency, total, status")
            .replace("25.00,", "'XXX', 25.00,"),
        paid_order("fine"),
    );
    client.batch_execute(&sql).await.unwrap();

    // THEN each absurd order is recorded failed for every destination, with its reason, and only
    // the ordinary one reached the platforms
    settled(&client, 12, 30).await;
    for (reason, what) in [
        (
            "invalid row: event_time column \"paid_at\" is more than 10 minutes after the \
             transaction's commit (in the future)",
            "year 9999",
        ),
        (
            "invalid row: value column \"total\" is beyond 1e12 in magnitude, not a plausible \
             conversion value",
            "1e308",
        ),
        (
            "invalid row: currency \"XXX\" is not an ISO 4217 currency code",
            "XXX",
        ),
    ] {
        let failed = count(
            &client,
            &format!(
                "select count(*) from pgcapi.deliveries where state = 'failed' and attempts = 0
                   and last_error = '{}'",
                reason.replace('\'', "''")
            ),
        )
        .await;
        assert_eq!(failed, 3, "{what}");
    }
    for (destination, platform) in DESTINATIONS {
        assert_eq!(
            counted_ids(&sandbox, platform),
            vec!["order-fine".to_string()],
            "{destination}"
        );
    }
    pipeline.stop().await;
}

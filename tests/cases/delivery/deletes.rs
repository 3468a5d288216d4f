//! Deleted source rows: cancelled before they are sent, retracted after, under either replica identity.

use super::*;
use crate::support::count;
use pgcapi::platform::Platform;
use pgcapi::testbed::sandbox::SandboxHandle;
use tokio_postgres::Client;

/// Deletes the sent order `order_number` and checks its retractions once `settled` rows are
/// finished: sent to Google (the only Google Ads adjustment so far), skipped at Meta and TikTok.
async fn deleting_a_sent_order_retracts_it_where_the_platform_can(
    client: &Client,
    sandbox: &SandboxHandle,
    order_number: &str,
    settled_rows: i64,
) {
    client
        .execute(
            "delete from orders where order_number = $1",
            &[&order_number],
        )
        .await
        .unwrap();
    settled(client, settled_rows, 30).await;
    let event_id = format!("order-{order_number}");
    let retractions: Vec<(String, String, Option<String>)> = client
        .query(
            "select destination, state, last_error from pgcapi.deliveries
             where event_id = $1 and kind = 'retraction' order by destination",
            &[&event_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let cannot = Some("platform cannot retract".to_string());
    assert_eq!(
        retractions,
        [
            ("google".into(), "sent".into(), None),
            ("meta".into(), "skipped".into(), cannot.clone()),
            ("tiktok".into(), "skipped".into(), cannot),
        ]
    );
    let adjustments = sandbox.records().google_ads.adjustments;
    assert_eq!(adjustments.len(), 1);
    assert_eq!(adjustments[0].order_id.as_deref(), Some(event_id.as_str()));
}

/// The rows of `event_ids` are `n`, every conversion cancelled as deleted before it was sent and every
/// retraction as having nothing sent to retract.
async fn cancelled_as_deleted(client: &Client, event_ids: &[&str], n: usize) {
    let rows: Vec<(String, String, Option<String>)> = client
        .query(
            "select kind, state, last_error from pgcapi.deliveries
             where event_id = any($1) order by kind, destination",
            &[&event_ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), n, "{rows:?}");
    for (kind, state, error) in &rows {
        let reason = if kind == "conversion" {
            "source row deleted before it was sent"
        } else {
            "conversion was not sent yet"
        };
        assert_eq!(
            (state.as_str(), error.as_deref()),
            ("cancelled", Some(reason)),
            "{rows:?}"
        );
    }
}

/// Every platform counted each of `present` and none of `absent`.
fn counted_only(sandbox: &SandboxHandle, present: &[&str], absent: &[&str]) {
    for (destination, platform) in DESTINATIONS {
        let ids = counted_ids(sandbox, platform);
        assert!(
            absent.iter().all(|id| !ids.contains(&id.to_string()))
                && present.iter().all(|id| ids.contains(&id.to_string())),
            "{destination}: {ids:?}"
        );
    }
}

#[tokio::test]
async fn a_deleted_order_is_cancelled_before_it_is_sent_and_retracted_after() {
    // GIVEN capture and dispatch running; orders under REPLICA IDENTITY FULL (the event id reads
    // order_number, not the key), and won deals whose rule says on_delete = "ignore"
    let (sandbox, db, client, mut config) = shop(1_000).await;
    config
        .rules
        .iter_mut()
        .find(|r| r.name == "deal_won")
        .unwrap()
        .on_delete = pgcapi::config::OnDelete::Ignore;
    client
        .batch_execute("alter table orders replica identity full")
        .await
        .unwrap();
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN an order is paid and deleted in one transaction, an unpaid order is deleted, another
    // is paid, and a deal is won and deleted in one transaction
    client
        .batch_execute(&format!(
            "begin; {} delete from orders where order_number = 'd1'; commit;
             insert into orders (order_number, email, total) values ('d2', 'x@example.com', 5);
             delete from orders where order_number = 'd2';
             {}
             begin;
             insert into leads (email, gclid, clicked_at, stage, deal_value, consent, won_at)
               values ('lead@example.com', 'Cj0KCQiA-del', now() - interval '1 day', 'won', 900,
                 'granted', now());
             delete from leads;
             commit;",
            paid_order("d1"),
            paid_order("d3")
        ))
        .await
        .unwrap();

    // THEN the deleted paid order is cancelled everywhere with its reason and never sent, the
    // unpaid one left no row, and the other order and the deal (ignore) are sent
    settled(&client, 6 + 3 + 2, 30).await;
    cancelled_as_deleted(&client, &["order-d1"], 6).await;
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where event_id = 'order-d2'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'sent' and kind = 'conversion'"
        )
        .await,
        5
    );
    counted_only(&sandbox, &["order-d3"], &["order-d1"]);

    // WHEN the sent order is deleted, THEN Google retracts it, and Meta and TikTok say they cannot
    deleting_a_sent_order_retracts_it_where_the_platform_can(&client, &sandbox, "d3", 14).await;
    pipeline.stop().await;
}

#[tokio::test]
async fn a_deleted_order_is_cancelled_and_retracted_under_the_default_replica_identity() {
    // GIVEN capture and dispatch running; orders under REPLICA IDENTITY DEFAULT: the event id
    // (`order-{order_number}`) reads a column that the key-only old tuple of a DELETE lacks, so
    // capture records each conversion with its row's key (`id`) and a DELETE is matched by it
    let (sandbox, db, client, config) = shop(1_000).await;
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN two orders are paid and deleted in one transaction, an unpaid order is deleted, and
    // another is paid
    client
        .batch_execute(&format!(
            "begin; {} {} delete from orders where order_number in ('k1', 'k4'); commit;
             insert into orders (order_number, email, total) values ('k2', 'x@example.com', 5);
             delete from orders where order_number = 'k2';
             {}",
            paid_order("k1"),
            paid_order("k4"),
            paid_order("k3")
        ))
        .await
        .unwrap();

    // THEN the deleted paid orders are cancelled everywhere (their retractions took their event
    // ids from the conversions) and never sent, the unpaid one left no row, the other order is
    // sent, and the conversions hold their row's key
    settled(&client, 2 * 6 + 3, 30).await;
    cancelled_as_deleted(&client, &["order-k1", "order-k4"], 12).await;
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where event_id = 'order-k2' or event_id = ''"
        )
        .await,
        0
    );
    let k3_id: i64 = client
        .query_one(
            "select id::bigint from orders where order_number = 'k3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        count(
            &client,
            &format!(
                "select count(*) from pgcapi.deliveries where event_id = 'order-k3'
                 and kind = 'conversion' and state = 'sent' and source_key = '{k3_id}'"
            )
        )
        .await,
        3
    );
    counted_only(&sandbox, &["order-k3"], &["order-k1", "order-k4"]);

    // WHEN the sent order is deleted, THEN Google retracts it, and Meta and TikTok say they cannot
    deleting_a_sent_order_retracts_it_where_the_platform_can(&client, &sandbox, "k3", 18).await;
    pipeline.stop().await;
}

#[tokio::test]
async fn a_deal_won_and_deleted_in_one_transaction_is_cancelled_under_the_default_replica_identity()
{
    // GIVEN capture and dispatch running; leads under REPLICA IDENTITY DEFAULT, whose event id
    // (`deal-{id}`) reads only the primary key, so the key-only old tuple of a DELETE is enough
    let (sandbox, db, client, config) = shop(1_000).await;
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN a deal is won and deleted in one transaction, next to one that is only won
    client
        .batch_execute(
            "begin;
             insert into leads (id, email, gclid, clicked_at, stage, deal_value, consent, won_at)
               values (1, 'a@example.com', 'Cj0KCQiA-a', now() - interval '1 day', 'won', 900,
                 'granted', now()),
                      (2, 'b@example.com', 'Cj0KCQiA-b', now() - interval '1 day', 'won', 900,
                 'granted', now());
             delete from leads where id = 1;
             commit;",
        )
        .await
        .unwrap();

    // THEN the deleted deal is cancelled at both destinations and never sent; the other is sent
    settled(&client, 2 * 2 + 2, 30).await;
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where event_id = 'deal-1' and state = 'cancelled'"
        )
        .await,
        4
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where event_id = 'deal-2' and state = 'sent'"
        )
        .await,
        2
    );
    for platform in [Platform::Meta, Platform::GoogleAds] {
        assert_eq!(counted_ids(&sandbox, platform), ["deal-2"], "{platform:?}");
    }
    pipeline.stop().await;
}

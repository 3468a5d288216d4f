//! Source transactions of every shape: paid and refunded in one, larger than a capture group, a burst.

use super::*;
use crate::support::count;

#[tokio::test]
async fn orders_paid_and_refunded_in_one_transaction_are_cancelled_and_never_sent() {
    // GIVEN capture and dispatch running, with small batches so that batch boundaries fall between
    // a conversion and its retraction
    let (sandbox, db, client, config) = shop(7).await;
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN 200 orders are each paid and refunded in one source transaction, among 20 orders that
    // are only paid, arriving in bursts while dispatch runs
    for burst in 0..20 {
        let mut sql = String::new();
        for i in 0..10 {
            let number = format!("r{}", burst * 10 + i);
            sql.push_str(&format!(
                "begin; {} update orders set status = 'refunded' where order_number = '{number}'; commit;",
                paid_order(&number)
            ));
        }
        sql.push_str(&paid_order(&format!("c{burst}")));
        client.batch_execute(&sql).await.unwrap();
    }

    // THEN every conversion of a refunded order and its retraction end cancelled, the paid ones sent
    settled(&client, 200 * 3 * 2 + 20 * 3, 30).await;
    refunds_cancelled_and_only_paid_orders_counted(&client, &sandbox, 200, 20, |id| {
        id.starts_with("order-c")
    })
    .await;
    assert!(sandbox.records().google_ads.adjustments.is_empty());
    let cancelled_with_reason = count(
        &client,
        "select count(*) from pgcapi.deliveries where kind = 'conversion' and state = 'cancelled'
           and last_error = 'retracted before it was sent' and attempts = 0",
    )
    .await;
    assert_eq!(cancelled_with_reason, 600);
    pipeline.stop().await;
}

#[tokio::test]
async fn a_transaction_larger_than_a_capture_group_reaches_dispatch_whole() {
    // GIVEN capture groups of at most 10 rows (so one large source transaction is written in parts) and
    // dispatch running with batches of 5
    let (sandbox, db, client, mut config) = shop(5).await;
    config.capture.group_max_rows = 10;
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN one source transaction pays 40 orders and then refunds 30 of them: the refunds come 40
    // changes (120 delivery rows, a dozen parts) after the payments
    let mut sql = String::from("begin;");
    for i in 0..40 {
        sql.push_str(&paid_order(&format!("big{i}")));
    }
    sql.push_str(
        "update orders set status = 'refunded' \
         where order_number in (select 'big' || g from generate_series(0, 29) g); commit;",
    );
    client.batch_execute(&sql).await.unwrap();

    // THEN the 30 refunded orders end cancelled and the platforms only ever hear of the other 10:
    // no part of the transaction was visible to dispatch before its commit
    settled(&client, (40 + 30) * 3, 30).await;
    refunds_cancelled_and_only_paid_orders_counted(&client, &sandbox, 30, 10, |id| {
        (30..40).any(|i| id == format!("order-big{i}"))
    })
    .await;
    assert!(sandbox.records().google_ads.adjustments.is_empty());
    // AND the whole transaction went into one control transaction (`created_at` is its start time)
    let transactions = count(
        &client,
        "select count(distinct created_at) from pgcapi.deliveries",
    )
    .await;
    assert_eq!(transactions, 1);
    pipeline.stop().await;
}

#[tokio::test]
async fn a_burst_of_small_transactions_is_committed_group_by_group() {
    // GIVEN capture groups of at most 10 rows
    let (_sandbox, db, client, mut config) = shop(50).await;
    config.capture.group_max_rows = 10;
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN 40 transactions of 3 paid orders (9 deliveries each) arrive in one burst
    let mut sql = String::new();
    for t in 0..40 {
        sql.push_str("begin;");
        for i in 0..3 {
            sql.push_str(&paid_order(&format!("burst{t}-{i}")));
        }
        sql.push_str("commit;");
    }
    client.batch_execute(&sql).await.unwrap();
    settled(&client, 40 * 3 * 3, 30).await;

    // THEN no control transaction held more than a full group plus the rest of the transaction that
    // filled it (a full group commits its complete transactions; only a transaction larger than a
    // group is written in parts of one control transaction). `created_at` is the control
    // transaction's start time.
    let largest = count(
        &client,
        "select max(n) from (select count(*) as n from pgcapi.deliveries group by created_at) g",
    )
    .await;
    assert!(
        largest < 10 + 9,
        "a control transaction held {largest} rows"
    );
    pipeline.stop().await;
}

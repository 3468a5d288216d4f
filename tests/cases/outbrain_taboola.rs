//! Outbrain and Taboola end to end: `pgcapi run` on a real PostgreSQL delivering paid orders to the
//! sandbox's Outbrain postback and Taboola bulk endpoint by their click ids alone.

use crate::support::settled;
use crate::support::{count, spawn_run, KillOnDrop, Shop};
use tokio_postgres::Client;

/// Both destinations and the order rules; the sandbox stands in for both hosts.
const CONFIG: &str = r#"
[source]
url = "${PGCAPI_DATABASE_URL}"
publication = "pgcapi"
slot = "pgcapi"

[defaults]
region = "US"
currency = "USD"

[dispatch]
retry_initial_ms = 100
retry_max_ms = 500

[destinations.outbrain]
platform = "outbrain"
endpoint = "${OUTBRAIN_ENDPOINT:-https://tr.outbrain.com}"

[destinations.taboola]
platform = "taboola"
account_id = "1234567"
endpoint = "${TABOOLA_ENDPOINT:-https://trc.taboola.com}"

[[rules]]
name = "order_paid"
table = "public.orders"
when = { status = "paid" }
event = "Purchase"
event_id = "order-{order_number}"
event_time = "{paid_at}"
value = "{total}"
currency = "{currency}"
consent = "ad_consent"
destinations = ["outbrain", "taboola"]

[rules.match]
ob_click_id = "ob_click_id"
taboola_click_id = "taboola_click_id"

[rules.outbrain]
event = "Purchase S2S"

[rules.taboola]
event = "make_purchase"

[[rules]]
name = "order_refunded"
table = "public.orders"
when = { status = "refunded" }
retracts = "order_paid"
"#;

/// The click-id columns the shop gets for these platforms.
const COLUMNS: &str =
    "alter table public.orders add column ob_click_id text, add column taboola_click_id text;";

/// An Outbrain click id for order `n` (its format is not published; this one is hex).
fn ob_click(n: &str) -> String {
    format!("00{n}ab12cd34ef56ab78cd90ef12")
}

/// A Taboola click id for order `n`, of the documented shape (66+ URL-safe characters).
fn taboola_click(n: &str) -> String {
    format!("GiDxLZcEVjwEqkGfKQMQndUYMIeZXFHmZ0DrHIJhGS6kKiDzkGUos9GzkpqG-YHQATC_{n}")
}

/// (event id, state, last error) of `destination`'s rows of `kind`, by event id.
async fn rows(
    client: &Client,
    destination: &str,
    kind: &str,
) -> Vec<(String, String, Option<String>)> {
    client
        .query(
            "select event_id, state, last_error from pgcapi.deliveries
             where destination = $1 and kind = $2 order by event_id",
            &[&destination, &kind],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The state and error of the row of `event_id` in `rows`.
fn row<'a>(rows: &'a [(String, String, Option<String>)], event_id: &str) -> (&'a str, &'a str) {
    let (_, state, error) = rows
        .iter()
        .find(|(id, _, _)| id == event_id)
        .unwrap_or_else(|| panic!("no row {event_id}: {rows:?}"));
    (state.as_str(), error.as_deref().unwrap_or_default())
}

/// Pays four orders in one transaction: T1 with both click ids, T2 with none, T3 in a currency
/// Taboola does not list, T4 with a negative value Outbrain refuses.
async fn pay_four_orders(client: &Client) {
    let (ob1, tb1) = (ob_click("1"), taboola_click("1"));
    let (ob3, tb3) = (ob_click("3"), taboola_click("3"));
    let (ob4, tb4) = (ob_click("4"), taboola_click("4"));
    client
        .batch_execute(&format!(
            "begin;
             insert into orders (order_number, ob_click_id, taboola_click_id, total, currency, status, ad_consent, paid_at)
               values ('T1', ' {ob1} ', '{tb1}', 120.50, 'EUR', 'paid', true, now()),
                      ('T2', null, null, 80.00, 'USD', 'paid', true, now()),
                      ('T3', '{ob3}', '{tb3}', 10.00, 'CHF', 'paid', true, now()),
                      ('T4', '{ob4}', '{tb4}', -5.00, 'USD', 'paid', true, now());
             commit;"
        ))
        .await
        .unwrap();
}

/// Outbrain got one postback per order with a click id, and failed only the one it refused.
async fn assert_outbrain_postbacks(shop: &Shop) {
    let ob1 = ob_click("1");
    let outbrain = rows(&shop.client, "outbrain", "conversion").await;
    assert_eq!(row(&outbrain, "order-T1"), ("sent", ""));
    assert_eq!(row(&outbrain, "order-T2"), ("skipped", "no click id"));
    assert_eq!(row(&outbrain, "order-T3").0, "sent");
    let (state, error) = row(&outbrain, "order-T4");
    assert_eq!(state, "failed", "{outbrain:?}");
    assert!(
        error.contains("HTTP 400") && error.contains("negative"),
        "{error}"
    );
    let records = shop.sandbox.records().outbrain;
    assert_eq!(records.conversions.len(), 2, "{records:?}");
    let first = records
        .conversions
        .iter()
        .find(|c| c.order_id.as_deref() == Some("order-T1"))
        .unwrap();
    assert_eq!(first.ob_click_id, ob1, "the click id as stored, trimmed");
    assert_eq!(first.name, "Purchase S2S");
    assert_eq!(first.order_value, Some(120.5));
    assert_eq!(first.currency.as_deref(), Some("EUR"));
}

/// Taboola got the usable rows in one bulk request, and the CHF one failed before any request.
async fn assert_taboola_bulk(shop: &Shop) {
    let (tb1, tb4) = (taboola_click("1"), taboola_click("4"));
    let taboola = rows(&shop.client, "taboola", "conversion").await;
    assert_eq!(row(&taboola, "order-T1"), ("sent", ""));
    assert_eq!(row(&taboola, "order-T2"), ("skipped", "no click id"));
    let (state, error) = row(&taboola, "order-T3");
    assert_eq!(state, "failed");
    assert!(error.contains("currency CHF"), "{error}");
    assert_eq!(row(&taboola, "order-T4").0, "sent");
    let records = shop.sandbox.records().taboola;
    assert_eq!(records.bulk_requests, 1, "{records:?}");
    assert!(
        records.rejections.is_empty(),
        "nothing lost silently: {records:?}"
    );
    let mut clicks: Vec<&str> = records
        .conversions
        .iter()
        .map(|c| c.click_id.as_str())
        .collect();
    clicks.sort();
    assert_eq!(clicks, [tb1.as_str(), tb4.as_str()]);
    let first = records
        .conversions
        .iter()
        .find(|c| c.click_id == tb1)
        .unwrap();
    assert_eq!(first.name, "make_purchase");
    assert_eq!(first.account_id.as_deref(), Some("1234567"));
    assert_eq!(
        (first.revenue, first.currency.as_deref()),
        (Some(120.5), Some("EUR"))
    );
    assert_eq!(first.orderid.as_deref(), Some("order-T1"));
    let paid_ms: i64 = shop
        .client
        .query_one(
            "select (extract(epoch from date_trunc('milliseconds', paid_at)) * 1000)::bigint
             from orders where order_number = 'T1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        first.timestamp_ms,
        Some(paid_ms),
        "milliseconds, not seconds"
    );
}

#[tokio::test]
async fn click_ids_carry_the_conversions_rows_without_are_skipped_and_refunds_are_not_retracted() {
    let shop = Shop::start_after(CONFIG, COLUMNS).await;
    let _run = spawn_run(&shop.config_path, &shop.env);
    // WHEN four orders are paid in one transaction: one with both click ids, one with none, one in a
    // currency Taboola does not list, one whose negative value Outbrain refuses
    pay_four_orders(&shop.client).await;
    settled(&shop.client, "conversion", 8).await;

    // THEN Outbrain gets one postback per order with a click id, and fails only the one it refused
    assert_outbrain_postbacks(&shop).await;

    // AND Taboola gets the usable rows in one bulk request, and the CHF one fails before any request
    assert_taboola_bulk(&shop).await;

    // WHEN the sent order is refunded
    shop.client
        .batch_execute("update orders set status = 'refunded' where order_number = 'T1'")
        .await
        .unwrap();
    // THEN neither platform is asked to retract: both rows are skipped with the reason
    settled(&shop.client, "retraction", 2).await;
    for destination in ["outbrain", "taboola"] {
        let refunds = rows(&shop.client, destination, "retraction").await;
        assert_eq!(refunds.len(), 1, "{refunds:?}");
        assert_eq!(refunds[0].1, "skipped");
        assert_eq!(refunds[0].2.as_deref(), Some("platform cannot retract"));
    }
    let stats = shop.sandbox.stats();
    assert_eq!(stats.outbrain.accepted, 2, "{stats:?}");
    assert_eq!(stats.taboola.accepted, 2, "{stats:?}");
}

#[tokio::test]
async fn kill_9_mid_delivery_loses_nothing_and_taboola_counts_each_conversion_once() {
    // GIVEN short leases and slow platforms (requests in flight when the process dies)
    let toml = CONFIG.replace("[dispatch]\n", "[dispatch]\nlease_secs = 2\n");
    let shop = Shop::start_after(&toml, COLUMNS).await;
    shop.sandbox.set_faults(pgcapi::testbed::sandbox::Faults {
        latency_ms: (10, 60),
        seed: Some(17),
        ..pgcapi::testbed::sandbox::Faults::default()
    });
    let mut run: KillOnDrop = spawn_run(&shop.config_path, &shop.env);
    // WHEN orders are paid in many small transactions while pgcapi is killed with SIGKILL and restarted
    let orders: i64 = 180;
    let rounds = 6;
    for round in 0..rounds {
        for i in 0..orders / rounds {
            let n = format!("{:04}", round * (orders / rounds) + i);
            shop.client
                .execute(
                    "insert into orders (order_number, ob_click_id, taboola_click_id, total, status, ad_consent, paid_at)
                     values ($1, $2, $3, 5.25, 'paid', true, now())",
                    &[&n, &ob_click(&n), &taboola_click(&n)],
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(40 + 30 * round as u64)).await;
        run.kill();
        run = spawn_run(&shop.config_path, &shop.env);
    }
    // THEN every conversion is sent to both, none is lost
    settled(&shop.client, "conversion", 2 * orders).await;
    for destination in ["outbrain", "taboola"] {
        let states = rows(&shop.client, destination, "conversion").await;
        let unsent: Vec<_> = states.iter().filter(|(_, s, _)| s != "sent").collect();
        assert!(unsent.is_empty(), "{destination}: {unsent:?}");
        assert_eq!(states.len(), orders as usize);
    }
    // AND Taboola's dedup (click id + event name, per minute of the timestamp) counted each once
    let stats = shop.sandbox.stats();
    let taboola = stats.taboola;
    assert_eq!(taboola.unique, orders as u64, "{taboola:?}");
    assert_eq!(taboola.accepted, orders as u64, "{taboola:?}");
    assert_eq!(taboola.rejected, 0, "{taboola:?}");
    assert_eq!(taboola.deduplicated, taboola.duplicate_sends, "{taboola:?}");
    assert_eq!(taboola.received, orders as u64 + taboola.duplicate_sends);
    // AND Outbrain, which documents no dedup, got every conversion at least once; a resend counts
    // again there, and there are no more resends than the rows the killed processes had claimed
    let outbrain = stats.outbrain;
    assert_eq!(outbrain.unique, orders as u64, "{outbrain:?}");
    assert_eq!(outbrain.rejected, 0, "{outbrain:?}");
    assert_eq!(outbrain.accepted, orders as u64 + outbrain.duplicate_sends);
    let reclaims = count(
        &shop.client,
        "select coalesce(sum(attempts - 1), 0)::bigint from pgcapi.deliveries
         where kind = 'conversion' and destination = 'outbrain'",
    )
    .await;
    assert!(
        outbrain.duplicate_sends <= reclaims as u64,
        "{} resends but {reclaims} re-claims",
        outbrain.duplicate_sends
    );
    eprintln!("kill -9 x{rounds}: taboola {taboola:?}, outbrain {outbrain:?}");
}

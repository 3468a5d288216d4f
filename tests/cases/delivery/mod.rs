//! Delivery end to end, in process: capture and dispatch on a real PostgreSQL, the platforms played by
//! the sandbox. Refunds inside the paying transaction, a fault-loaded platform, a stale Meta event.

use crate::support::{config_from, contract_env, count, TestDb, CONTRACT_TOML, SHOP_SQL};
use pgcapi::capture::Capture;
use pgcapi::config::Config;
use pgcapi::dispatch::Dispatcher;
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::platform::Platform;
use pgcapi::testbed::sandbox::{EventRecords, Faults, Sandbox, SandboxHandle, Stats};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Capture and dispatch running in this process; stopped (and checked) by [`Pipeline::stop`], or
/// aborted when dropped by a failing test.
struct Pipeline {
    stop: watch::Sender<bool>,
    capture: Option<JoinHandle<Result<(), String>>>,
    dispatch: Option<JoinHandle<Result<(), String>>>,
}

impl Pipeline {
    /// Installs the control schema, publication and slot, then starts capture and dispatch.
    async fn start(config: Config, database_url: &str) -> Pipeline {
        setup(&config, SetupOptions::default()).await.unwrap();
        let config = Arc::new(config);
        let (stop, shutdown) = watch::channel(false);
        let capture = Capture::new(config.clone()).unwrap();
        let rx = shutdown.clone();
        let capture = tokio::spawn(async move { capture.run(rx).await.map_err(|e| e.to_string()) });
        let destinations =
            pgcapi::destinations::build_all(&config.destinations, &config.dispatch).unwrap();
        let dispatcher = Dispatcher::connect(
            database_url,
            &config.source.schema,
            config.dispatch.clone(),
            destinations,
        )
        .await
        .unwrap()
        .with_poll_interval(Duration::from_millis(200));
        let dispatch =
            tokio::spawn(async move { dispatcher.run(shutdown).await.map_err(|e| e.to_string()) });
        Pipeline {
            stop,
            capture: Some(capture),
            dispatch: Some(dispatch),
        }
    }

    /// Stops both and checks that neither failed.
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        for (what, task) in [
            ("capture", self.capture.take()),
            ("dispatch", self.dispatch.take()),
        ] {
            let task = task.expect("running");
            let ended = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap_or_else(|_| panic!("{what} did not stop"))
                .unwrap_or_else(|e| panic!("{what} task: {e}"));
            ended.unwrap_or_else(|e| panic!("{what} failed: {e}"));
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in [self.capture.take(), self.dispatch.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// The sandbox, a shop database and the contract config pointed at both, with fast retries and
/// `batch` events per request for every destination.
async fn shop(batch: usize) -> (SandboxHandle, TestDb, Client, Config) {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    let mut config = config_from(CONTRACT_TOML, &contract_env(&db.url(), &sandbox.base_url()));
    config.dispatch.retry_initial_ms = 20;
    config.dispatch.retry_max_ms = 200;
    config.dispatch.request_timeout_ms = 5_000;
    for destination in config.destinations.values_mut() {
        destination.api.batch_max_events = Some(batch);
    }
    (sandbox, db, client, config)
}

/// An order paid now by a consenting customer (email, user agent: enough for all three platforms).
fn paid_order(number: &str) -> String {
    format!(
        "insert into orders (order_number, email, user_agent, total, status, ad_consent, paid_at)
         values ('{number}', 'buyer{number}@example.com', 'Mozilla/5.0 (test)', 25.00, 'paid', true, now());"
    )
}

/// Waits until no row is pending and `total` rows exist; on timeout, says where the rows stand.
async fn settled(client: &Client, total: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let row = client
            .query_one(
                "select count(*), count(*) filter (where state = 'pending') from pgcapi.deliveries",
                &[],
            )
            .await
            .unwrap();
        let (all, pending): (i64, i64) = (row.get(0), row.get(1));
        if all == total && pending == 0 {
            return;
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = client
                .query(
                    "select destination, state, count(*), max(attempts), min(last_error)
                     from pgcapi.deliveries group by 1, 2 order by 1, 2",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {} (max attempts {}, e.g. {:?})",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i64>(2),
                        r.get::<_, i32>(3),
                        r.get::<_, Option<String>>(4)
                    )
                })
                .collect();
            panic!(
                "not settled after {secs}s: {all} of {total} rows, {pending} pending: {summary:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks every destination: `refunded` conversions and their retractions `cancelled`, `paid` conversions
/// `sent`, and the platform counted exactly `paid` events, each with an id `paid_id` accepts.
async fn refunds_cancelled_and_only_paid_orders_counted(
    client: &Client,
    sandbox: &SandboxHandle,
    refunded: i64,
    paid: i64,
    paid_id: impl Fn(&str) -> bool,
) {
    for (destination, platform) in DESTINATIONS {
        let by_state = states(client, destination).await;
        let get = |kind: &str, state: &str| {
            by_state
                .get(&(kind.to_string(), state.to_string()))
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(
            get("conversion", "cancelled"),
            refunded,
            "{destination}: {by_state:?}"
        );
        assert_eq!(
            get("retraction", "cancelled"),
            refunded,
            "{destination}: {by_state:?}"
        );
        assert_eq!(
            get("conversion", "sent"),
            paid,
            "{destination}: {by_state:?}"
        );
        // The platform never heard of a refunded order.
        let ids = counted_ids(sandbox, platform);
        assert_eq!(ids.len() as i64, paid, "{destination}: {ids:?}");
        assert!(ids.iter().all(|id| paid_id(id)), "{destination}: {ids:?}");
    }
}

/// How many rows of `destination` are in `state`, by kind.
async fn states(client: &Client, destination: &str) -> HashMap<(String, String), i64> {
    client
        .query(
            "select kind, state, count(*) from pgcapi.deliveries where destination = $1 group by 1, 2",
            &[&destination],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

/// Every event id the sandbox counted for `platform` (Google: conversions' order ids).
fn counted_ids(sandbox: &SandboxHandle, platform: Platform) -> Vec<String> {
    let records = sandbox.records();
    let event_ids = |events: &EventRecords| -> Vec<String> {
        events
            .events
            .iter()
            .filter_map(|e| e.event_id.clone())
            .collect()
    };
    match platform {
        Platform::Meta => event_ids(&records.meta),
        Platform::Tiktok => event_ids(&records.tiktok),
        Platform::Linkedin => event_ids(&records.linkedin),
        Platform::Reddit => event_ids(&records.reddit),
        Platform::Snapchat => records
            .snapchat
            .events
            .iter()
            .filter_map(|e| e.event_id.clone())
            .collect(),
        Platform::Pinterest => records
            .pinterest
            .events
            .iter()
            .filter_map(|e| e.event_id.clone())
            .collect(),
        Platform::GoogleAds => records
            .google_ads
            .conversions
            .iter()
            .filter_map(|c| c.order_id.clone())
            .collect(),
        Platform::GoogleDataManager => records
            .google_data_manager
            .conversions
            .iter()
            .map(|c| c.transaction_id.clone())
            .collect(),
        Platform::MicrosoftAds => records
            .microsoft_ads
            .conversions
            .iter()
            .map(|c| format!("{}@{}", c.conversion_name, c.conversion_time))
            .collect(),
        Platform::Outbrain => records
            .outbrain
            .conversions
            .iter()
            .filter_map(|c| c.order_id.clone())
            .collect(),
        Platform::Taboola => records
            .taboola
            .conversions
            .iter()
            .filter_map(|c| c.orderid.clone())
            .collect(),
    }
}

const DESTINATIONS: [(&str, Platform); 3] = [
    ("meta", Platform::Meta),
    ("google", Platform::GoogleAds),
    ("tiktok", Platform::Tiktok),
];

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

#[tokio::test]
async fn under_500s_429s_and_lost_answers_every_conversion_is_sent_and_counted_once() {
    // GIVEN platforms answering 20 % of requests with 500, 10 % with 429 (Retry-After: 1 s), and
    // losing the answer to 5 % after processing them; one event per request, so that attempts and
    // requests can be compared one to one
    let started = Instant::now();
    let (sandbox, db, client, config) = shop(1).await;
    sandbox.set_faults(Faults {
        error_500_ratio: 0.2,
        throttle_429_ratio: 0.1,
        retry_after_secs: 1,
        accept_then_drop_ratio: 0.05,
        latency_ms: (0, 2),
        seed: Some(2024),
        ..Faults::default()
    });
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN 200 orders are paid and 40 deals won, ten per source transaction
    for chunk in 0..24 {
        let mut sql = String::from("begin;");
        for i in 0..10 {
            let n = chunk * 10 + i;
            if n < 200 {
                sql.push_str(&paid_order(&format!("f{n}")));
            } else {
                sql.push_str(&format!(
                    "insert into leads (email, gclid, clicked_at, meta_lead_id, stage, deal_value,
                       consent, won_at)
                     values ('lead{n}@example.com', 'Cj0KCQiA-lead{n}', now() - interval '2 days',
                       '1234567890{n:05}', 'won', 900, 'granted', now());"
                ));
            }
        }
        sql.push_str("commit;");
        client.batch_execute(&sql).await.unwrap();
    }

    // THEN every conversion ends sent
    let expected = [("meta", 240), ("google", 240), ("tiktok", 200)];
    settled(&client, 680, 40).await;
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'sent'"
        )
        .await,
        680
    );
    let stats: Stats = sandbox.stats();
    for ((destination, rows), (_, platform)) in expected.into_iter().zip(DESTINATIONS) {
        let counters = *stats.platform(crate::support::sandbox_api(platform));
        // AND the platform counted each event exactly once, whatever was sent twice
        let ids = counted_ids(&sandbox, platform);
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!((ids.len(), distinct.len()), (rows, rows), "{destination}");
        assert_eq!(
            (counters.unique, counters.accepted),
            (rows as u64, rows as u64),
            "{destination}: {counters:?}"
        );
        assert!(counters.faulted > 0, "{destination}: {counters:?}");
        // AND the control table accounts for every request: one attempt per request, and every
        // attempt but the last of each row met a fault
        let row = client
            .query_one(
                "select sum(attempts)::bigint, count(*) filter (where attempts > 1),
                        min(attempts)
                 from pgcapi.deliveries where destination = $1",
                &[&destination],
            )
            .await
            .unwrap();
        let (attempts, retried, min): (i64, i64, i32) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            attempts as u64, counters.requests,
            "{destination}: {counters:?}"
        );
        assert_eq!(
            attempts as u64 - rows as u64,
            counters.faulted,
            "{destination}: {counters:?}"
        );
        assert!(
            retried > 0 && min >= 1,
            "{destination}: {retried} retried, min {min}"
        );
    }
    // AND answers lost after processing made pgcapi send some events again, which the platforms'
    // dedup absorbed
    let resent: u64 = [stats.meta, stats.google_ads, stats.tiktok]
        .iter()
        .map(|c| c.duplicate_sends)
        .sum();
    assert!(resent > 0, "{stats:?}");
    for c in [stats.meta, stats.tiktok] {
        assert_eq!(c.received, c.unique + c.deduplicated, "{c:?}");
    }
    pipeline.stop().await;
    eprintln!(
        "fault load: 680 conversions, {} requests, {} faulted, {resent} resent, {:.1}s",
        stats.meta.requests + stats.google_ads.requests + stats.tiktok.requests,
        stats.meta.faulted + stats.google_ads.faulted + stats.tiktok.faulted,
        started.elapsed().as_secs_f64()
    );
}

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
        let by_state = states(&client, destination).await;
        let get = |kind: &str, state: &str| {
            by_state
                .get(&(kind.to_string(), state.to_string()))
                .copied()
                .unwrap_or(0)
        };
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
                &client,
                &format!(
                    "select count(*) from pgcapi.deliveries where destination = '{destination}'
                       and kind = 'retraction' and last_error = 'platform cannot retract'"
                ),
            )
            .await;
            assert_eq!(with_reason, 10, "{destination}");
        }
        // AND what the platform counts is exactly what the control table says it holds
        let mut ids = counted_ids(&sandbox, platform);
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

#[tokio::test]
async fn after_an_outage_only_probes_meet_it_and_the_backlog_drains_at_full_speed() {
    // GIVEN platforms that answer every request with a 500, retries that start at 20 s (a row that
    // met the outage waits up to 20 s, and longer each time), and batches of 10
    let (sandbox, db, client, mut config) = shop(10).await;
    config.dispatch.retry_initial_ms = 20_000;
    config.dispatch.retry_max_ms = 300_000;
    sandbox.set_faults(Faults {
        error_500_ratio: 1.0,
        ..Faults::default()
    });
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN 100 orders are paid during the outage (10 batches per destination), and the outage
    // goes on until every platform has turned away a few probes
    let mut sql = String::from("begin;");
    for i in 0..100 {
        sql.push_str(&paid_order(&format!("o{i}")));
    }
    sql.push_str("commit;");
    client.batch_execute(&sql).await.unwrap();
    let platforms = [Platform::Meta, Platform::GoogleAds, Platform::Tiktok];
    crate::support::wait_for(60, "a few probes at every platform", || async {
        let stats = sandbox.stats();
        platforms
            .iter()
            .all(|p| stats.platform(crate::support::sandbox_api(*p)).faulted >= 5)
            .then_some(())
    })
    .await;
    // THEN the outage met probes, not the backlog: fewer requests than batches waiting
    let during = sandbox.stats();
    for p in platforms {
        let faulted = during.platform(crate::support::sandbox_api(p)).faulted;
        assert!(faulted < 10, "{p:?}: {faulted} requests during the outage");
    }
    let backed_off = count(
        &client,
        "select count(*) from pgcapi.deliveries
         where state = 'pending' and next_attempt_at > now() + interval '10 seconds'",
    )
    .await;
    assert!(backed_off > 0, "no row was waiting on a long backoff");

    // WHEN the platforms answer again
    sandbox.set_faults(Faults::none());
    let recovered = Instant::now();
    // THEN every row is sent within one probe interval plus a few seconds of draining, instead of
    // waiting out its own backoff (up to 20 s and more)
    settled(&client, 300, 60).await;
    let drained = recovered.elapsed();
    let bound = pgcapi::dispatch::PROBE_MAX_INTERVAL + Duration::from_secs(5);
    assert!(drained <= bound, "drained in {drained:?}, bound {bound:?}");
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'sent'"
        )
        .await,
        300
    );
    eprintln!(
        "outage: {} / {} / {} requests turned away (meta/google/tiktok), {backed_off} rows on a \
         long backoff; drained {drained:.1?} after recovery (bound {bound:?})",
        during.meta.faulted, during.google_ads.faulted, during.tiktok.faulted
    );
    pipeline.stop().await;
}

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
    let d1: Vec<(String, String, Option<String>)> = client
        .query(
            "select kind, state, last_error from pgcapi.deliveries where event_id = 'order-d1'
             order by kind, destination",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(d1.len(), 6, "{d1:?}");
    for (kind, state, error) in &d1 {
        let reason = if kind == "conversion" {
            "source row deleted before it was sent"
        } else {
            "conversion was not sent yet"
        };
        assert_eq!(
            (state.as_str(), error.as_deref()),
            ("cancelled", Some(reason)),
            "{d1:?}"
        );
    }
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
    for (destination, platform) in DESTINATIONS {
        let ids = counted_ids(&sandbox, platform);
        assert!(
            !ids.contains(&"order-d1".to_string()) && ids.contains(&"order-d3".to_string()),
            "{destination}: {ids:?}"
        );
    }

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
    let k1: Vec<(String, String, Option<String>)> = client
        .query(
            "select kind, state, last_error from pgcapi.deliveries
             where event_id in ('order-k1', 'order-k4') order by kind, destination",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(k1.len(), 12, "{k1:?}");
    for (kind, state, error) in &k1 {
        let reason = if kind == "conversion" {
            "source row deleted before it was sent"
        } else {
            "conversion was not sent yet"
        };
        assert_eq!(
            (state.as_str(), error.as_deref()),
            ("cancelled", Some(reason)),
            "{k1:?}"
        );
    }
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
    for (destination, platform) in DESTINATIONS {
        let ids = counted_ids(&sandbox, platform);
        assert!(
            !ids.contains(&"order-k1".to_string())
                && !ids.contains(&"order-k4".to_string())
                && ids.contains(&"order-k3".to_string()),
            "{destination}: {ids:?}"
        );
    }

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

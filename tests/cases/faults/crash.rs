//! Crashes at the worst moments: right after a send, and the control connection terminated under capture.

use super::*;
use crate::support::{connect_url, count, wait_for, CONTRACT_TOML, SHOP_SQL};
use pgcapi::testbed::sandbox::Sandbox;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// A destination that sends, then never answers: the process "dies" after the platform got the batch
/// and before the outcome is recorded.
struct SendThenHang(Box<dyn pgcapi::destinations::Destination>);

impl pgcapi::destinations::Destination for SendThenHang {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn platform(&self) -> pgcapi::platform::Platform {
        self.0.platform()
    }
    fn max_batch(&self) -> usize {
        self.0.max_batch()
    }
    fn send<'a>(
        &'a self,
        batch: &'a [pgcapi::event::Delivery],
    ) -> pgcapi::destinations::SendFuture<'a> {
        Box::pin(async move {
            let _ = self.0.send(batch).await;
            std::future::pending().await
        })
    }
}

/// Found by the suite: a conversion whose batch reached Google just before a `kill -9` (so no outcome
/// was recorded: attempts 0, the dead process's lease left behind) was cancelled by the refund that
/// came next as if it had never been sent, and Google kept counting the refunded order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_sent_just_before_a_crash_is_retracted_when_refunded() {
    // GIVEN capture running, and a paid order recorded for the three platforms.
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let capturing = Capturing::start(SHOP_SQL, CONTRACT_TOML, &sandbox.base_url()).await;
    let client = &capturing.client;
    client
        .batch_execute(
            "insert into orders (order_number, email, user_agent, total, status, ad_consent, paid_at)
             values ('c1', 'a@example.com', 'ua', 10, 'paid', true, now())",
        )
        .await
        .unwrap();
    capturing.wait_rows("the conversions", 3).await;

    // AND a pgcapi whose Google batch reached the platform, then died before recording the outcome.
    let google = || {
        let config = &capturing.config;
        pgcapi::destinations::build("google", &config.destinations["google"], &config.dispatch)
            .unwrap()
    };
    let dying = dispatcher(&capturing, Box::new(SendThenHang(google()))).await;
    let round = tokio::spawn(async move { dying.run_once().await });
    wait_for(30, "Google to count the conversion", || async {
        (sandbox.records().google_ads.conversions.len() == 1).then_some(())
    })
    .await;
    round.abort();
    // Its lease has run out (as after lease_secs).
    client
        .batch_execute(
            "update pgcapi.deliveries set lease_until = now() - interval '1 second'
             where destination = 'google' and lease_owner is not null",
        )
        .await
        .unwrap();

    // WHEN the order is refunded and a live pgcapi dispatches to Google.
    client
        .batch_execute("update orders set status = 'refunded' where order_number = 'c1'")
        .await
        .unwrap();
    capturing.wait_rows("the retractions", 6).await;
    let live = dispatcher(&capturing, google()).await;
    wait_for(30, "Google's rows to settle", || {
        let live = &live;
        async move {
            live.run_once().await.unwrap();
            (count(
                client,
                "select count(*) from pgcapi.deliveries where destination = 'google' and state = 'pending'",
            )
            .await
                == 0)
                .then_some(())
        }
    })
    .await;

    // THEN Google's conversion is recorded as sent, and retracted there.
    let google_rows = google_rows(client).await;
    assert_eq!(
        google_rows
            .iter()
            .map(|(k, s, _)| (k.as_str(), s.as_str()))
            .collect::<Vec<_>>(),
        [("conversion", "sent"), ("retraction", "sent")],
        "{google_rows:?}"
    );
    let records = sandbox.records();
    assert_eq!(records.google_ads.conversions.len(), 1);
    assert_eq!(records.google_ads.adjustments.len(), 1);
    assert_eq!(
        records.google_ads.adjustments[0].order_id.as_deref(),
        Some("order-c1")
    );
    capturing.stop().await;
}

/// A dispatcher of its own connection for the one destination `google`.
async fn dispatcher(
    capturing: &Capturing,
    google: Box<dyn pgcapi::destinations::Destination>,
) -> pgcapi::dispatch::Dispatcher {
    pgcapi::dispatch::Dispatcher::new(
        connect_url(&capturing.db.url()).await,
        "pgcapi",
        capturing.config.dispatch.clone(),
        vec![google],
    )
}

/// Google's control-table rows: (kind, state, last error), by kind.
async fn google_rows(client: &Client) -> Vec<(String, String, String)> {
    client
        .query(
            "select kind, state, coalesce(last_error, '') from pgcapi.deliveries
             where destination = 'google' order by kind",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Found by the suite: when PostgreSQL restarted (fast shutdown) while capture was writing, the control
/// connection answered "FATAL: terminating connection due to administrator command" (57P01), which
/// capture took for a statement error and stopped for good. Here the control connection is terminated
/// again and again while orders flow: capture must reconnect every time and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_reconnects_when_its_control_connection_is_terminated() {
    let capturing = Capturing::start(SHOP_SQL, CONTRACT_TOML, "http://127.0.0.1:9").await;
    let client = &capturing.client;

    // WHEN orders are paid in many small transactions while capture's control connection is
    // terminated again and again, each time once capture is busy writing again.
    let writer = capturing.db.connect().await;
    let writer_pid: i32 = writer
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inserts = pay_orders_until(writer, done.clone());
    let control_backends = "select pid from pg_stat_activity
         where datname = current_database() and pid not in (pg_backend_pid(), $1)
           and backend_type = 'client backend'";
    for round in 0..4 {
        let before = count(client, "select count(*) from pgcapi.deliveries").await;
        wait_for(30, "capture to reconnect and write", || async move {
            let connected = !client
                .query(control_backends, &[&writer_pid])
                .await
                .unwrap()
                .is_empty();
            let writing =
                count(client, "select count(*) from pgcapi.deliveries").await > before + 30;
            (connected && writing).then_some(())
        })
        .await;
        client
            .execute(
                &format!("select pg_terminate_backend(pid) from ({control_backends}) b"),
                &[&writer_pid],
            )
            .await
            .unwrap();
        assert!(
            !capturing.task.is_finished(),
            "capture stopped after {round} terminations"
        );
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let orders = inserts.await.unwrap();

    // THEN capture is still running and recorded every order.
    wait_for(60, "every order", || async move {
        (count(client, "select count(*) from pgcapi.deliveries").await == orders * 3).then_some(())
    })
    .await;
    assert!(!capturing.task.is_finished(), "capture stopped");
    capturing.stop().await;
}

/// Pays a new order at a time on `writer` until `done`; the task returns how many.
fn pay_orders_until(writer: Client, done: Arc<std::sync::atomic::AtomicBool>) -> JoinHandle<i64> {
    tokio::spawn(async move {
        let mut n: i64 = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            writer
                .execute(
                    "insert into orders (order_number, email, user_agent, total, status,
                                         ad_consent, paid_at)
                     values ($1, 'a@example.com', 'ua', 10, 'paid', true, now())",
                    &[&format!("t{n}")],
                )
                .await
                .unwrap();
            n += 1;
        }
        n
    })
}

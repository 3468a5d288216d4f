//! Delivery end to end, in process: capture and dispatch on a real PostgreSQL, the platforms played by
//! the sandbox. Refunds inside the paying transaction, a fault-loaded platform, a stale Meta event.

use crate::support::{config_from, contract_env, TestDb, CONTRACT_TOML, SHOP_SQL};
use pgcapi::capture::Capture;
use pgcapi::config::Config;
use pgcapi::dispatch::Dispatcher;
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::platform::Platform;
use pgcapi::testbed::sandbox::{EventRecords, Sandbox, SandboxHandle};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

mod deletes;
mod platform_faults;
mod refunds;
mod transactions;
mod validation;

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
        let get = |kind: &str, state: &str| state_count(&by_state, kind, state);
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

/// How many rows of `kind` are in `state` in `by_state` (from [`states`]).
fn state_count(by_state: &HashMap<(String, String), i64>, kind: &str, state: &str) -> i64 {
    by_state
        .get(&(kind.to_string(), state.to_string()))
        .copied()
        .unwrap_or(0)
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

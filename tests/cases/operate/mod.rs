//! Operating pgcapi: the SQL views (send log, health, lag), `status`, `retry`, `replay` and retention, on
//! real PostgreSQL with rows produced by the real pipeline (capture, dispatch, sandbox) or written with the
//! outbox functions and moved to the rarer states by SQL.

use crate::support::Shop;
use crate::support::{count, wait_for, TestDb};
use pgcapi::capture::Capture;
use pgcapi::config::Config;
use pgcapi::dispatch::Dispatcher;
use pgcapi::event::{Kind, NewDelivery, Payload};
use pgcapi::identity::{hash, MatchKey, MatchKeys};
use pgcapi::ops::repair;
use pgcapi::ops::setup::install_control_schema;
use pgcapi::outbox;
use pgcapi::platform::Platform;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

mod replay;
mod retention;
mod retry;
mod status;
mod views;

/// An in-process capture or dispatch worker and the switch that stops it.
struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Worker {
    /// Starts capture for `config`.
    fn capture(config: &Config) -> Worker {
        let capture = Capture::new(Arc::new(config.clone())).expect("capture");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            if let Err(e) = capture.run(rx).await {
                panic!("capture stopped: {e}");
            }
        });
        Worker { stop, task }
    }

    /// Starts dispatch for every destination of `config`, polling every `poll` besides NOTIFY.
    async fn dispatch(db: &TestDb, config: &Config, poll: Duration) -> Worker {
        let destinations =
            pgcapi::destinations::build_all(&config.destinations, &config.dispatch).unwrap();
        let dispatcher = Dispatcher::connect(
            &db.url(),
            &config.source.schema,
            config.dispatch.clone(),
            destinations,
        )
        .await
        .unwrap()
        .with_poll_interval(poll);
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            dispatcher.run(rx).await.expect("dispatch");
        });
        Worker { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.expect("worker task");
    }
}

impl Shop {
    /// Writes `toml` to a file in `dir` for the binary.
    fn config_file(&self, dir: &Path, toml: &str) -> std::path::PathBuf {
        let path = dir.join("pgcapi.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// The built binary with the config's environment (output captured by `output()`).
    fn binary(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pgcapi"));
        command.env("RUST_LOG", "warn");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    async fn count(&self, sql: &str) -> i64 {
        count(&self.client, sql).await
    }
}

/// An order paid with every identifier; `$1` order number, `$2` consent.
const PAID_ORDER: &str = "insert into orders (order_number, email, phone, first_name, last_name, city, \
    region, postal_code, country, client_ip, user_agent, fbc, fbp, gclid, ttclid, total, currency, \
    status, ad_consent, paid_at) values ($1, 'Jane.Doe@Example.com', '(650) 555-1212', 'Jane', 'Doe', \
    'San Francisco', 'California', '94105', 'US', '203.0.113.7', 'Mozilla/5.0 (X11) test', \
    'fb.1.1700000000000.AbCdEf123', 'fb.1.1700000000000.987654321', 'Cj0KCQiA-test_gclid', \
    'E.C.P.tt-click', 42.50, 'USD', 'paid', $2, now())";

/// An order paid with only an email, IP address and user agent; `$1` order number.
const THIN_ORDER: &str = "insert into orders (order_number, email, client_ip, user_agent, total, \
    currency, status, ad_consent, paid_at) values ($1, 'thin@example.com', '198.51.100.4', \
    'Mozilla/5.0 (Mac) thin', 10, 'USD', 'paid', true, now())";

/// Polls until no row is pending.
async fn settled(client: &Client, schema: &str) {
    let sql = format!("select count(*) from {schema}.deliveries where state = 'pending'");
    wait_for(30, "every delivery to settle", || async {
        (count(client, &sql).await == 0).then_some(())
    })
    .await;
}

/// A database with only the control schema, for the repair and retention tests.
async fn control_db() -> (TestDb, Client) {
    let db = TestDb::start().await;
    let client = db.connect().await;
    install_control_schema(&client, "pgcapi").await.unwrap();
    (db, client)
}

/// A conversion (or with `kind`, an adjustment) row as capture would write it.
fn delivery(
    rule: &str,
    destination: &str,
    platform: Platform,
    event_id: &str,
    kind: Kind,
) -> NewDelivery {
    let mut keys = MatchKeys::new();
    keys.insert(MatchKey::Email, hash("someone@example.com"));
    keys.insert(MatchKey::ClientIp, "203.0.113.9".into());
    keys.insert(MatchKey::UserAgent, "Mozilla/5.0".into());
    NewDelivery {
        rule: rule.into(),
        kind,
        adjusts_rule: (kind != Kind::Conversion).then(|| "order_paid".to_string()),
        payload: Payload {
            keys: if kind == Kind::Conversion {
                keys
            } else {
                MatchKeys::new()
            },
            consent: true,
            ..Payload::default()
        },
        ..crate::support::purchase(destination, platform, event_id)
    }
}

/// Inserts `row` and moves it to `state`, reached `age` ago (a PostgreSQL interval), with `error`.
async fn put(
    client: &Client,
    row: NewDelivery,
    state: &str,
    age: &str,
    error: Option<&str>,
) -> i64 {
    let (rule, destination, event_id) = (
        row.rule.clone(),
        row.destination.clone(),
        row.event_id.clone(),
    );
    assert_eq!(
        outbox::insert_deliveries(client, "pgcapi", &[row])
            .await
            .unwrap(),
        1
    );
    client
        .query_one(
            "update pgcapi.deliveries set state = $4, updated_at = now() - $5::text::interval, \
               last_error = $6, attempts = case when $4 in ('failed', 'sent') then 2 else 0 end, \
               sent_at = case when $4 = 'sent' then now() - $5::text::interval end \
             where rule = $1 and destination = $2 and event_id = $3 returning id",
            &[&rule, &destination, &event_id, &state, &age, &error],
        )
        .await
        .unwrap()
        .get(0)
}

fn ids(lines: &[repair::RowLine]) -> BTreeSet<i64> {
    lines.iter().map(|l| l.id).collect()
}

fn set<const N: usize>(ids: [i64; N]) -> BTreeSet<i64> {
    ids.into_iter().collect()
}

async fn state_of(client: &Client, id: i64) -> String {
    client
        .query_one("select state from pgcapi.deliveries where id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Receives the notifications of `channel` on a connection of its own.
async fn listen(db: &TestDb, channel: &str) -> (Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = tokio_postgres::connect(&db.url(), NoTls).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("listen {channel}"))
        .await
        .unwrap();
    (client, rx)
}

/// The payloads notified before the `marker` notification the test sends last.
async fn notifications_until_marker(
    client: &Client,
    rx: &mut mpsc::UnboundedReceiver<String>,
    channel: &str,
) -> Vec<String> {
    client
        .execute("select pg_notify($1, 'marker')", &[&channel])
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let payload = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a notification within 10 s")
            .expect("listener alive");
        if payload == "marker" {
            return seen;
        }
        seen.push(payload);
    }
}

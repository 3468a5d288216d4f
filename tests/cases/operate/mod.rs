//! Operating pgcapi: the SQL views (send log, health, lag), `status`, `retry`, `replay` and retention, on
//! real PostgreSQL with rows produced by the real pipeline (capture, dispatch, sandbox) or written with the
//! outbox functions and moved to the rarer states by SQL.

use crate::support::{config_from, count, wait_for, TestDb, CONTRACT_TOML};
use crate::support::{KillOnDrop, Shop};
use chrono::Utc;
use pgcapi::capture::Capture;
use pgcapi::config::Config;
use pgcapi::dispatch::Dispatcher;
use pgcapi::event::{Kind, NewDelivery, Payload, State};
use pgcapi::identity::{hash, MatchKey, MatchKeys};
use pgcapi::lsn::Lsn;
use pgcapi::ops::repair::{self, Filters, RepairError, ReplayState};
use pgcapi::ops::retention::{self, Batching, Target};
use pgcapi::ops::setup::{install_control_schema, setup, SetupOptions};
use pgcapi::ops::status::{self, StatusOptions};
use pgcapi::outbox::{self};
use pgcapi::platform::Platform;
use pgcapi::units::TimeRef;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

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
        destination: destination.into(),
        platform,
        event_id: event_id.into(),
        kind,
        adjusts_rule: (kind != Kind::Conversion).then(|| "order_paid".to_string()),
        event_name: Some("Purchase".into()),
        event_time: Utc::now(),
        value: Some("19.99".into()),
        currency: Some("USD".into()),
        action_source: Some("website".into()),
        payload: Payload {
            keys: if kind == Kind::Conversion {
                keys
            } else {
                MatchKeys::new()
            },
            consent: true,
            ..Payload::default()
        },
        state: State::Pending,
        last_error: None,
        source_table: "public.orders".into(),
        source_key: None,
        source_lsn: Lsn(0x16B3748),
        commit_time: Utc::now(),
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

// ---------------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_views_show_a_masked_send_log_per_destination_health_and_slot_lag() {
    // GIVEN orders captured and dispatched to the sandbox: two with every identifier, one with only an
    // email, IP and user agent, one without consent, and one refunded before dispatch ran.
    let shop = Shop::start(CONTRACT_TOML).await;
    let c = &shop.client;
    let capture = Worker::capture(&shop.config);
    for (order, consent) in [
        ("5001", true),
        ("5002", true),
        ("5004", false),
        ("5005", true),
    ] {
        c.execute(PAID_ORDER, &[&order, &consent]).await.unwrap();
    }
    c.execute(THIN_ORDER, &[&"5003"]).await.unwrap();
    c.batch_execute("update orders set status = 'refunded' where order_number = '5005'")
        .await
        .unwrap();
    wait_for(30, "18 recorded deliveries", || async {
        (shop.count("select count(*) from pgcapi.deliveries").await == 18).then_some(())
    })
    .await;
    let dispatch = Worker::dispatch(&shop.db, &shop.config, Duration::from_millis(200)).await;
    settled(c, "pgcapi").await;
    dispatch.stop().await;
    // The rarer states by SQL: one Meta row failed just now, one skipped two hours ago.
    c.batch_execute(
        "update pgcapi.deliveries set state = 'failed', updated_at = now(), \
           last_error = 'meta: HTTP 400 OAuthException code 100: scripted for the test' \
         where destination = 'meta' and event_id = 'order-5001' and kind = 'conversion';
         update pgcapi.deliveries set updated_at = now() - interval '2 hours' \
         where destination = 'meta' and event_id = 'order-5004'",
    )
    .await
    .unwrap();

    // THEN the send log has one line per delivery, with masked keys only.
    assert_eq!(
        shop.count("select count(*) from pgcapi.send_log").await,
        shop.count("select count(*) from pgcapi.deliveries").await
    );
    assert!(
        shop.count("select count(*) from pgcapi.deliveries d where d::text ~ '[0-9a-f]{64}'")
            .await
            > 0,
        "the control table holds full hashes, so the next check means something"
    );
    assert_eq!(
        shop.count("select count(*) from pgcapi.send_log s where s::text ~ '[0-9a-f]{64}'")
            .await,
        0,
        "no full hash in the send log"
    );
    for raw in [
        "203.0.113.7",
        "Mozilla",
        "Cj0KCQiA",
        "fb.1.17",
        "E.C.P",
        "Jane",
        "94105",
    ] {
        let n = count(
            c,
            &format!("select count(*) from pgcapi.send_log s where strpos(s::text, '{raw}') > 0"),
        )
        .await;
        assert_eq!(n, 0, "{raw:?} appears in the send log");
    }
    assert_eq!(
        shop.count(
            "select count(*) from pgcapi.send_log, unnest(match_keys) k \
             where k !~ '^[a-z_]+:[0-9a-f]{4}[.][.]$'"
        )
        .await,
        0,
        "every key is name:4 hex digits.."
    );
    let row = c
        .query_one(
            "select s.match_keys, d.match_keys, s.state, s.last_error, s.attempts \
             from pgcapi.send_log s join pgcapi.deliveries d using (id) \
             where s.destination = 'meta' and s.event_id = 'order-5002' and s.kind = 'conversion'",
            &[],
        )
        .await
        .unwrap();
    let masked: Vec<String> = row.get(0);
    let names: Vec<String> = row.get(1);
    let masked_names: BTreeSet<&str> = masked
        .iter()
        .map(|m| m.split(':').next().unwrap())
        .collect();
    assert_eq!(masked_names, names.iter().map(String::as_str).collect());
    assert!(
        masked.contains(&format!("email:{}..", &hash("jane.doe@example.com")[..4])),
        "{masked:?}"
    );
    assert!(
        masked.contains(&format!("client_ip:{}..", &hash("203.0.113.7")[..4])),
        "{masked:?}"
    );
    assert_eq!(row.get::<_, String>(2), "sent");

    // AND the health view counts outcomes by when they were reached, per destination.
    let health = |dest: &'static str| async move {
        c.query_one(
            "select pending, failed, sent_1h, failed_1h, skipped_1h, cancelled_1h, sent_24h, \
               skipped_24h, cancelled_24h, last_sent_at is not null, events_24h, \
               email_share::float8, phone_share::float8, match_score::float8, last_error, \
               oldest_pending_secs \
             from pgcapi.health where destination = $1",
            &[&dest],
        )
        .await
        .unwrap()
    };
    let meta = health("meta").await;
    let counts: Vec<i64> = (0..9).map(|i| meta.get(i)).collect();
    // pending, failed, sent 1h, failed 1h, skipped 1h, cancelled 1h, sent 24h, skipped 24h, cancelled 24h
    assert_eq!(counts, [0, 1, 2, 1, 0, 2, 2, 1, 2], "meta health");
    assert!(meta.get::<_, bool>(9), "last success time");
    assert_eq!(
        meta.get::<_, i64>(10),
        4,
        "scored: consented conversions of the day"
    );
    assert_eq!(
        meta.get::<_, f64>(11),
        1.0,
        "every scored event has an email"
    );
    assert_eq!(meta.get::<_, f64>(12), 0.75, "three of four have a phone");
    // Meta: three events with every key (10 points) and the thin one (email 3 + ip/ua 1): 34 / 4 = 8.5.
    assert_eq!(meta.get::<_, f64>(13), 8.5);
    assert_eq!(
        meta.get::<_, Option<String>>(14).as_deref(),
        Some("meta: HTTP 400 OAuthException code 100: scripted for the test")
    );
    assert_eq!(meta.get::<_, Option<i64>>(15), None, "nothing pending");
    // Google Ads takes only email, phone and click ids (at most 7 points): (7 + 7 + 3 + 7) / 4 / 7.
    assert_eq!(health("google").await.get::<_, f64>(13), 8.6);
    // TikTok takes no name or address (at most 9): (8 + 8 + 4 + 8) / 4 / 9.
    assert_eq!(health("tiktok").await.get::<_, f64>(13), 7.8);
    // Every destination's counts agree with the control table counted directly.
    for dest in ["meta", "google", "tiktok"] {
        let direct = c
            .query_one(
                "select count(*) filter (where state = 'pending'), count(*) filter (where state = 'failed'), \
                   count(*) filter (where state = 'sent' and updated_at > now() - interval '1 hour'), \
                   count(*) filter (where state = 'skipped' and updated_at > now() - interval '1 hour'), \
                   count(*) filter (where state = 'cancelled') \
                 from pgcapi.deliveries where destination = $1",
                &[&dest],
            )
            .await
            .unwrap();
        let h = health(dest).await;
        for (i, j) in [(0, 0), (1, 1), (2, 2), (3, 4), (4, 5)] {
            assert_eq!(
                h.get::<_, i64>(j),
                direct.get::<_, i64>(i),
                "{dest} column {j}"
            );
        }
    }

    // AND the README's example queries run as written.
    for (sql, rows) in [
        (
            "select id, destination, kind, state, attempts, sent_at, last_error, match_keys \
             from pgcapi.send_log where event_id = 'order-5002'",
            3,
        ),
        (
            "select destination, pending, oldest_pending_secs, sent_1h, failed_1h, last_sent_at, \
               match_score, last_error from pgcapi.health",
            3,
        ),
        (
            "select slot, active, pg_size_pretty(wal_retained_bytes), wal_status, \
               secs_since_checkpoint from pgcapi.lag",
            1,
        ),
    ] {
        assert_eq!(c.query(sql, &[]).await.unwrap().len(), rows, "{sql}");
    }

    // AND the lag view shows the slot, its stored position, and the WAL it retains, which grows by what
    // is written while nothing reads the slot.
    capture.stop().await;
    let lag = "select slot_exists, pgcapi_slot, wal_status, wal_retained_bytes, \
                 checkpoint_lsn::text, secs_since_checkpoint, active \
               from pgcapi.lag where slot = 'pgcapi'";
    wait_for(10, "the walsender to leave", || async {
        (!c.query_one(lag, &[]).await.unwrap().get::<_, bool>(6)).then_some(())
    })
    .await;
    let before = c.query_one(lag, &[]).await.unwrap();
    assert!(before.get::<_, bool>(0) && before.get::<_, bool>(1));
    assert_eq!(before.get::<_, String>(2), "reserved");
    let stored: String = c
        .query_one(
            "select lsn::text from pgcapi.checkpoints where slot = 'pgcapi'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(before.get::<_, String>(4), stored);
    assert!(before.get::<_, i64>(5) >= 0);
    let retained_before: i64 = before.get(3);
    c.batch_execute(
        "create table filler as select g, repeat('x', 200) as pad from generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    let retained_after: i64 = c.query_one(lag, &[]).await.unwrap().get(3);
    assert!(
        retained_after - retained_before > 2_000_000,
        "retained {retained_before} then {retained_after} bytes"
    );
    // Another tool's pgoutput slot and a stored position whose slot is gone show as such.
    c.batch_execute(
        "select pg_create_logical_replication_slot('other_tool', 'pgoutput');
         insert into pgcapi.checkpoints (slot, lsn) values ('ghost', '0/0')",
    )
    .await
    .unwrap();
    let other = c
        .query_one(
            "select slot_exists, pgcapi_slot from pgcapi.lag where slot = 'other_tool'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (other.get::<_, bool>(0), other.get::<_, bool>(1)),
        (true, false)
    );
    let ghost = c
        .query_one(
            "select slot_exists, pgcapi_slot from pgcapi.lag where slot = 'ghost'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (ghost.get::<_, bool>(0), ghost.get::<_, bool>(1)),
        (false, true)
    );
}

// ---------------------------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn status_is_healthy_then_unhealthy_for_a_recent_failure_retained_wal_and_a_dropped_slot() {
    // GIVEN pgcapi capturing and dispatching, and one paid order delivered everywhere.
    let shop = Shop::start(CONTRACT_TOML).await;
    let c = &shop.client;
    let capture = Worker::capture(&shop.config);
    let dispatch = Worker::dispatch(&shop.db, &shop.config, Duration::from_millis(200)).await;
    c.execute(PAID_ORDER, &[&"7001", &true]).await.unwrap();
    wait_for(30, "three sent rows", || async {
        (shop
            .count("select count(*) from pgcapi.deliveries where state = 'sent'")
            .await
            == 3)
            .then_some(())
    })
    .await;
    let options = StatusOptions::default();

    // THEN status is healthy (exit 0), with the slot active and one send per destination this hour.
    let report = status::status(&shop.config, &options).await.unwrap();
    assert!(report.healthy, "{}", report.render());
    assert_eq!(report.exit_code(), 0);
    assert!(
        report.slot.exists && report.slot.active == Some(true),
        "{:?}",
        report.slot
    );
    assert!(report.slot.checkpoint_lsn.is_some());
    let names: Vec<&str> = report
        .destinations
        .iter()
        .map(|d| d.destination.as_str())
        .collect();
    assert_eq!(names, ["google", "meta", "tiktok"]);
    assert!(report
        .destinations
        .iter()
        .all(|d| d.sent_1h == 1 && d.failed_1h == 0));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["healthy"], true);
    assert_eq!(json["destinations"][1]["sent_1h"], 1);
    let text = report.render();
    assert!(text.starts_with("pgcapi status: HEALTHY"), "{text}");

    // WHEN a delivery failed in the last hour
    let failed_id: i64 = c
        .query_one(
            "update pgcapi.deliveries set state = 'failed', updated_at = now(), \
               last_error = 'meta: HTTP 400: scripted' where destination = 'meta' returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // THEN status is unhealthy (exit 2) and says why, listing the failure; --allow-failures accepts it.
    let report = status::status(&shop.config, &options).await.unwrap();
    assert_eq!(report.exit_code(), 2);
    assert!(
        report.reasons[0].starts_with("1 delivery(ies) failed in the last hour (meta 1)"),
        "{:?}",
        report.reasons
    );
    assert_eq!(report.recent_failures.len(), 1);
    assert_eq!(report.recent_failures[0].id, failed_id);
    assert_eq!(
        report.recent_failures[0].last_error.as_deref(),
        Some("meta: HTTP 400: scripted")
    );
    assert!(report.render().contains("meta: HTTP 400: scripted"));
    let allowing = StatusOptions {
        allow_failures: true,
        ..StatusOptions::default()
    };
    let report = status::status(&shop.config, &allowing).await.unwrap();
    assert!(report.healthy && report.warnings[0].contains("failed in the last hour"));

    // WHEN pgcapi stops and WAL piles up beyond the threshold
    dispatch.stop().await;
    capture.stop().await;
    c.batch_execute(
        "create table filler as select g, repeat('x', 200) as pad from generate_series(1, 5000) g",
    )
    .await
    .unwrap();
    let tight = StatusOptions {
        allow_failures: true,
        max_wal_retained: 64 * 1024,
        ..StatusOptions::default()
    };
    let report = wait_for(10, "the slot to be inactive", || async {
        let r = status::status(&shop.config, &tight).await.unwrap();
        (r.slot.active == Some(false)).then_some(r)
    })
    .await;
    // THEN status is unhealthy for the retained WAL, and because nothing reads the slot.
    assert_eq!(report.exit_code(), 2);
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("of WAL, over the limit of 64.0 KiB")),
        "{:?}",
        report.reasons
    );
    assert!(report
        .reasons
        .iter()
        .any(|r| r.starts_with("no process reads replication slot \"pgcapi\"")));

    // WHEN the slot is dropped
    c.batch_execute("select pg_drop_replication_slot('pgcapi')")
        .await
        .unwrap();
    let report = status::status(&shop.config, &allowing).await.unwrap();
    assert_eq!(report.exit_code(), 2);
    assert!(
        report.reasons[0].contains("does not exist"),
        "{:?}",
        report.reasons
    );

    // AND the built binary says the same: exit code 2, JSON on stdout, readable text without --json.
    let dir = tempfile::tempdir().unwrap();
    let path = shop.config_file(dir.path(), CONTRACT_TOML);
    let output = shop
        .binary()
        .args(["status", "--allow-failures", "--json", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["healthy"], false);
    assert_eq!(json["slot"]["exists"], false);
    assert!(json["reasons"][0]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    let output = shop
        .binary()
        .args(["status", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("pgcapi status: UNHEALTHY"), "{text}");
    assert!(text.contains("failed in the last hour"), "{text}");
    for secret in [String::from("s3cr3t"), shop.db.url()] {
        assert!(!text.contains(secret.as_str()));
    }
}

// ---------------------------------------------------------------------------------------------
// retry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_requeues_failed_rows_by_each_filter_and_dry_run_changes_nothing() {
    // GIVEN failed rows of several destinations, rules and ages, a failed conversion that was refunded,
    // a failed invalid row (recorded without consent), and a sent row.
    let (db, c) = control_db().await;
    let conv =
        |rule: &str, dest: &str, p: Platform, e: &str| delivery(rule, dest, p, e, Kind::Conversion);
    let old_meta = put(
        &c,
        conv("order_paid", "meta", Platform::Meta, "o-1"),
        "failed",
        "3 hours",
        Some("meta: HTTP 400 old"),
    )
    .await;
    let meta = put(
        &c,
        conv("order_paid", "meta", Platform::Meta, "o-2"),
        "failed",
        "30 minutes",
        Some("meta: HTTP 400"),
    )
    .await;
    let google = put(
        &c,
        conv("order_paid", "google", Platform::GoogleAds, "o-2"),
        "failed",
        "30 minutes",
        Some("google: INVALID"),
    )
    .await;
    let deal = put(
        &c,
        conv("deal_won", "tiktok", Platform::Tiktok, "d-1"),
        "failed",
        "10 minutes",
        Some("tiktok: 40002"),
    )
    .await;
    let refunded = put(
        &c,
        conv("order_paid", "meta", Platform::Meta, "o-3"),
        "failed",
        "20 minutes",
        Some("meta: HTTP 400"),
    )
    .await;
    put(
        &c,
        delivery(
            "order_refunded",
            "meta",
            Platform::Meta,
            "o-3",
            Kind::Retraction,
        ),
        "skipped",
        "5 minutes",
        Some("no conversion to retract"),
    )
    .await;
    let mut invalid_row = conv("order_paid", "meta", Platform::Meta, "invalid-0/1-0");
    invalid_row.payload = Payload::default();
    let invalid = put(
        &c,
        invalid_row,
        "failed",
        "20 minutes",
        Some("invalid row: bad value"),
    )
    .await;
    let sent = put(
        &c,
        conv("order_paid", "meta", Platform::Meta, "o-4"),
        "sent",
        "5 minutes",
        None,
    )
    .await;
    let (listener, mut notes) = listen(&db, "pgcapi_deliveries").await;
    let mut client = db.connect().await;

    // WHEN dry runs select rows by each filter
    let all = dry(&mut client, Filters::default()).await;
    // THEN they list the failed rows, hold back the refunded conversion and the invalid row
    assert_eq!(ids(&all.requeued), set([old_meta, meta, google, deal]));
    assert_eq!(ids(&all.held_back), set([refunded, invalid]));
    let reasons: Vec<&str> = all
        .held_back
        .iter()
        .map(|l| l.held_back_because.as_deref().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("retracted")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("without consent")),
        "{reasons:?}"
    );
    assert!(all.dry_run && all.render().contains("would requeue 4 row(s)"));
    let by_id = dry(
        &mut client,
        Filters {
            ids: vec![old_meta, deal, sent],
            ..Filters::default()
        },
    )
    .await;
    assert_eq!(
        ids(&by_id.requeued),
        set([old_meta, deal]),
        "a sent row is never retried"
    );
    let by_dest = dry(
        &mut client,
        Filters {
            destination: Some("meta".into()),
            ..Filters::default()
        },
    )
    .await;
    assert_eq!(ids(&by_dest.requeued), set([old_meta, meta]));
    let by_rule = dry(
        &mut client,
        Filters {
            rule: Some("deal_won".into()),
            ..Filters::default()
        },
    )
    .await;
    assert_eq!(ids(&by_rule.requeued), set([deal]));
    let recent = dry(
        &mut client,
        Filters {
            since: Some("1h".parse().unwrap()),
            ..Filters::default()
        },
    )
    .await;
    assert_eq!(ids(&recent.requeued), set([meta, google, deal]));
    let an_hour_ago: chrono::DateTime<Utc> = c
        .query_one("select now() - interval '1 hour'", &[])
        .await
        .unwrap()
        .get(0);
    let window = dry(
        &mut client,
        Filters {
            since: Some(TimeRef::At(an_hour_ago)),
            before: Some("15m".parse().unwrap()),
            ..Filters::default()
        },
    )
    .await;
    assert_eq!(ids(&window.requeued), set([meta, google]));
    let combined = dry(
        &mut client,
        Filters {
            destination: Some("meta".into()),
            rule: Some("order_paid".into()),
            since: Some("2h".parse().unwrap()),
            ..Filters::default()
        },
    )
    .await;
    assert_eq!(ids(&combined.requeued), set([meta]));
    // AND nothing changed.
    assert_eq!(
        count(
            &c,
            "select count(*) from pgcapi.deliveries where state = 'failed'"
        )
        .await,
        6
    );

    // WHEN the Google row is retried for real
    let before: (i32, Option<String>) = {
        let r = c
            .query_one(
                "select attempts, last_error from pgcapi.deliveries where id = $1",
                &[&google],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let report = repair::retry(
        &mut client,
        "pgcapi",
        &Filters {
            destination: Some("google".into()),
            ..Filters::default()
        },
        false,
    )
    .await
    .unwrap();
    // THEN only it is pending, due now, with its attempts and last message kept, and dispatchers were
    // notified exactly once (the dry runs notified nobody).
    assert_eq!(ids(&report.requeued), set([google]));
    let r = c
        .query_one(
            "select state, next_attempt_at <= now(), attempts, last_error, lease_owner is null \
             from pgcapi.deliveries where id = $1",
            &[&google],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "pending");
    assert!(r.get::<_, bool>(1) && r.get::<_, bool>(4));
    assert_eq!((r.get::<_, i32>(2), r.get::<_, Option<String>>(3)), before);
    assert_eq!(
        notifications_until_marker(&listener, &mut notes, "pgcapi_deliveries").await,
        [""]
    );
    assert!(report.render().starts_with("retry: requeued 1 row(s)"));

    // WHEN everything is retried
    let report = repair::retry(&mut client, "pgcapi", &Filters::default(), false)
        .await
        .unwrap();
    // THEN the remaining failed rows are pending, and the held-back rows still failed.
    assert_eq!(ids(&report.requeued), set([old_meta, meta, deal]));
    for id in [old_meta, meta, deal] {
        assert_eq!(state_of(&c, id).await, "pending");
    }
    for id in [refunded, invalid] {
        assert_eq!(state_of(&c, id).await, "failed");
    }
    assert_eq!(state_of(&c, sent).await, "sent");
}

/// Waits until the in-process dispatcher has finished its first rounds and sleeps: its connection is
/// idle after asking when the next row is due.
async fn dispatcher_idle(c: &Client) {
    wait_for(10, "the dispatcher to go idle", || async {
        (count(
            c,
            "select count(*) from pg_stat_activity where state = 'idle' \
               and query like '%min(greatest(next_attempt_at%'",
        )
        .await
            > 0)
        .then_some(())
    })
    .await;
}

/// `pgcapi retry --dry-run` with `filters`.
async fn dry(client: &mut Client, filters: Filters) -> repair::RepairReport {
    repair::retry(client, "pgcapi", &filters, true)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_row_rejected_for_a_wrong_pixel_is_sent_exactly_once_after_the_fix_and_pgcapi_retry() {
    // GIVEN pgcapi configured with a Meta pixel id the platform rejects (a permanent error)
    let wrong = CONTRACT_TOML.replace("pixel_id = \"1234567890\"", "pixel_id = \"12345x\"");
    assert_ne!(wrong, CONTRACT_TOML);
    let shop = Shop::start(&wrong).await;
    let c = &shop.client;
    let capture = Worker::capture(&shop.config);
    let dispatch = Worker::dispatch(&shop.db, &shop.config, Duration::from_millis(200)).await;
    c.execute(PAID_ORDER, &[&"8001", &true]).await.unwrap();
    wait_for(30, "three recorded deliveries", || async {
        (shop.count("select count(*) from pgcapi.deliveries").await == 3).then_some(())
    })
    .await;
    settled(c, "pgcapi").await;
    let meta_row = "select state, last_error from pgcapi.deliveries where destination = 'meta'";
    let r = c.query_one(meta_row, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), "failed");
    assert!(
        r.get::<_, String>(1).contains("does not exist"),
        "{:?}",
        r.get::<_, String>(1)
    );
    assert!(shop.sandbox.records().meta.events.is_empty());
    dispatch.stop().await;

    // WHEN the setting is fixed (pgcapi restarted with the right pixel; it polls only every minute, so
    // only the retry's NOTIFY can wake it quickly) and the operator runs `pgcapi retry`
    let fixed = config_from(CONTRACT_TOML, &shop.env);
    let dispatch = Worker::dispatch(&shop.db, &fixed, Duration::from_secs(60)).await;
    dispatcher_idle(c).await;
    let dir = tempfile::tempdir().unwrap();
    let path = shop.config_file(dir.path(), CONTRACT_TOML);
    let mut retry = shop.binary();
    retry
        .args(["retry", "--destination", "meta", "-c"])
        .arg(&path);
    // Off the runtime's thread, so that the in-process dispatcher keeps running meanwhile.
    let output = tokio::task::spawn_blocking(move || retry.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("retry: requeued 1 row(s)"), "{stdout}");
    assert!(stdout.contains("order-8001"), "{stdout}");

    // THEN the row is sent, and the sandbox counted the event exactly once.
    wait_for(20, "the retried row to be sent", || async {
        let state: String = c.query_one(meta_row, &[]).await.unwrap().get(0);
        (state == "sent").then_some(())
    })
    .await;
    let meta = shop.sandbox.records().meta;
    let events: Vec<_> = meta
        .events
        .iter()
        .filter(|e| e.event_id.as_deref() == Some("order-8001"))
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(meta.counters.accepted, 1);
    assert_eq!(meta.counters.duplicate_sends, 0);

    // AND a second retry finds nothing to do.
    let output = shop
        .binary()
        .args(["retry", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("retry: no row to requeue"));

    // WHEN the sent row is replayed (as after a wrong destination setting)
    let mut client = shop.db.connect().await;
    let report = repair::replay(
        &mut client,
        "pgcapi",
        &[ReplayState::Sent],
        &Filters {
            destination: Some("meta".into()),
            since: Some("1h".parse().unwrap()),
            ..Filters::default()
        },
        false,
    )
    .await
    .unwrap();
    assert_eq!(report.requeued.len(), 1);
    settled(c, "pgcapi").await;
    // THEN Meta received it again and deduplicated it on the event id, as the help text warns.
    let meta = shop.sandbox.records().meta;
    assert_eq!(meta.counters.duplicate_sends, 1);
    assert_eq!(meta.counters.deduplicated, 1);
    assert_eq!(meta.events.len(), 1);
    dispatch.stop().await;
    capture.stop().await;
}

// ---------------------------------------------------------------------------------------------
// replay
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn replay_requeues_skipped_and_failed_rows_since_a_time_and_never_cancelled_or_retracted_ones(
) {
    // GIVEN rows in every state for Meta
    let (db, c) = control_db().await;
    let conv = |e: &str| delivery("order_paid", "meta", Platform::Meta, e, Kind::Conversion);
    let skipped = put(
        &c,
        conv("r-1"),
        "skipped",
        "30 minutes",
        Some("event too old for meta"),
    )
    .await;
    let failed = put(
        &c,
        conv("r-2"),
        "failed",
        "30 minutes",
        Some("meta: HTTP 400"),
    )
    .await;
    let sent = put(&c, conv("r-3"), "sent", "30 minutes", None).await;
    let cancelled = put(
        &c,
        conv("r-4"),
        "cancelled",
        "30 minutes",
        Some("retracted before it was sent"),
    )
    .await;
    let retracted = put(&c, conv("r-5"), "sent", "30 minutes", None).await;
    let retraction = put(
        &c,
        delivery(
            "order_refunded",
            "meta",
            Platform::Meta,
            "r-5",
            Kind::Retraction,
        ),
        "skipped",
        "20 minutes",
        Some("meta cannot retract"),
    )
    .await;
    let mut no_consent_row = conv("r-6");
    no_consent_row.payload = Payload::default();
    let no_consent = put(
        &c,
        no_consent_row,
        "skipped",
        "30 minutes",
        Some("no consent"),
    )
    .await;
    let old = put(
        &c,
        conv("r-7"),
        "skipped",
        "3 hours",
        Some("event too old for meta"),
    )
    .await;
    let pending = put(&c, conv("r-8"), "pending", "1 minute", None).await;
    let mut client = db.connect().await;
    let since = |t: &str| Filters {
        since: Some(t.parse().unwrap()),
        ..Filters::default()
    };
    let default_states = [ReplayState::Skipped, ReplayState::Failed];

    // WHEN replay runs without --since THEN it refuses, naming the flag.
    let err = repair::replay(
        &mut client,
        "pgcapi",
        &default_states,
        &Filters::default(),
        true,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RepairError::Usage(m) if m.contains("--since")),
        "{err}"
    );

    // WHEN it runs (dry) over the last hour with the default states
    let report = repair::replay(&mut client, "pgcapi", &default_states, &since("1h"), true)
        .await
        .unwrap();
    // THEN it takes the skipped and failed rows of the hour, holds back the one without consent, and
    // leaves sent, cancelled, pending and older rows alone.
    assert_eq!(ids(&report.requeued), set([skipped, failed, retraction]));
    assert_eq!(ids(&report.held_back), set([no_consent]));

    // WHEN sent rows are asked for too
    let report = repair::replay(
        &mut client,
        "pgcapi",
        &[ReplayState::Sent],
        &Filters {
            rule: Some("order_paid".into()),
            ..since("1h")
        },
        true,
    )
    .await
    .unwrap();
    // THEN the retracted conversion is held back.
    assert_eq!(ids(&report.requeued), set([sent]));
    assert_eq!(ids(&report.held_back), set([retracted]));
    assert!(report.held_back[0]
        .held_back_because
        .as_deref()
        .unwrap()
        .contains("retracted"));

    // WHEN the default replay runs for real
    let report = repair::replay(&mut client, "pgcapi", &default_states, &since("1h"), false)
        .await
        .unwrap();
    assert_eq!(ids(&report.requeued), set([skipped, failed, retraction]));
    // THEN exactly those are pending again.
    for (id, state) in [
        (skipped, "pending"),
        (failed, "pending"),
        (retraction, "pending"),
        (sent, "sent"),
        (cancelled, "cancelled"),
        (retracted, "sent"),
        (no_consent, "skipped"),
        (old, "skipped"),
        (pending, "pending"),
    ] {
        assert_eq!(state_of(&c, id).await, state, "row {id}");
    }
}

#[test]
fn replay_states_parse_from_a_comma_list_with_skipped_and_failed_by_default() {
    use clap::Parser;
    let parse = |args: &[&str]| match pgcapi::cli::Cli::try_parse_from(args).unwrap().command {
        pgcapi::cli::Command::Replay(args) => args,
        other => panic!("{other:?}"),
    };
    let args = parse(&["pgcapi", "replay", "-c", "x.toml", "--since", "2h"]);
    assert_eq!(args.states, [ReplayState::Skipped, ReplayState::Failed]);
    assert_eq!(
        args.filters.since,
        Some(TimeRef::Ago(Duration::from_secs(7_200)))
    );
    let args = parse(&[
        "pgcapi",
        "replay",
        "-c",
        "x",
        "--since",
        "2025-01-31",
        "--state",
        "sent,failed",
        "--id",
        "4",
        "--id",
        "9",
    ]);
    assert_eq!(args.states, [ReplayState::Sent, ReplayState::Failed]);
    assert_eq!(args.filters.ids, [4, 9]);
    assert!(pgcapi::cli::Cli::try_parse_from([
        "pgcapi",
        "replay",
        "-c",
        "x",
        "--state",
        "cancelled"
    ])
    .is_err());
    assert!(
        pgcapi::cli::Cli::try_parse_from(["pgcapi", "retry", "-c", "x", "--since", "soon"])
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// retention
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retention_deletes_old_finished_rows_in_batches_keeps_failed_ones_and_retires_their_keys() {
    // GIVEN rows of every state, old and recent
    let (_db, c) = control_db().await;
    let conv =
        |dest: &str, p: Platform, e: &str| delivery("order_paid", dest, p, e, Kind::Conversion);
    let mut doomed = Vec::new();
    for (e, state) in [("k-1", "sent"), ("k-2", "skipped"), ("k-3", "cancelled")] {
        doomed.push(put(&c, conv("meta", Platform::Meta, e), state, "40 days", None).await);
    }
    let old_failed = put(
        &c,
        conv("meta", Platform::Meta, "k-4"),
        "failed",
        "40 days",
        Some("x"),
    )
    .await;
    let old_pending = put(
        &c,
        conv("meta", Platform::Meta, "k-5"),
        "pending",
        "40 days",
        None,
    )
    .await;
    let recent_sent = put(
        &c,
        conv("meta", Platform::Meta, "k-6"),
        "sent",
        "10 days",
        None,
    )
    .await;
    // Google can still retract a 40-day-old conversion, so it stays; a 60-day-old one goes.
    let google_40 = put(
        &c,
        conv("google", Platform::GoogleAds, "k-7"),
        "sent",
        "40 days",
        None,
    )
    .await;
    doomed.push(
        put(
            &c,
            conv("google", Platform::GoogleAds, "k-8"),
            "sent",
            "60 days",
            None,
        )
        .await,
    );
    doomed.push(
        put(
            &c,
            conv("google", Platform::GoogleAds, "k-9"),
            "skipped",
            "40 days",
            None,
        )
        .await,
    );
    doomed.push(
        put(
            &c,
            delivery(
                "order_refunded",
                "google",
                Platform::GoogleAds,
                "k-7",
                Kind::Retraction,
            ),
            "sent",
            "40 days",
            None,
        )
        .await,
    );
    let keep = Target::Finished {
        keep: Duration::from_secs(30 * 86_400),
    };
    let batching = Batching {
        rows: 2,
        pause: Duration::from_millis(10),
    };

    // WHEN a dry run counts THEN nothing is deleted.
    let dry = retention::purge(&c, "pgcapi", keep, &Filters::default(), batching, true)
        .await
        .unwrap();
    assert_eq!(dry.deleted, 6);
    assert_eq!(
        count(&c, "select count(*) from pgcapi.deliveries").await,
        10
    );

    // WHEN retention runs with batches of two
    let report = retention::purge(&c, "pgcapi", keep, &Filters::default(), batching, false)
        .await
        .unwrap();
    // THEN the six old finished rows are gone in three full batches and a last empty one
    assert_eq!((report.deleted, report.batches), (6, 4));
    let left: BTreeSet<i64> = c
        .query("select id from pgcapi.deliveries", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, set([old_failed, old_pending, recent_sent, google_40]));
    assert!(doomed.iter().all(|id| !left.contains(id)));
    // AND their keys are retired, so capture cannot record them again.
    assert_eq!(count(&c, "select count(*) from pgcapi.retired").await, 6);
    let again = conv("meta", Platform::Meta, "k-1");
    assert_eq!(
        outbox::insert_deliveries(&c, "pgcapi", &[again])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        outbox::insert_deliveries(&c, "pgcapi", &[conv("meta", Platform::Meta, "k-new")])
            .await
            .unwrap(),
        1
    );

    // WHEN failed rows are purged explicitly, for one destination
    put(
        &c,
        conv("tiktok", Platform::Tiktok, "k-10"),
        "failed",
        "1 hour",
        Some("y"),
    )
    .await;
    let report = retention::purge(
        &c,
        "pgcapi",
        Target::Failed,
        &Filters {
            destination: Some("tiktok".into()),
            ..Filters::default()
        },
        batching,
        false,
    )
    .await
    .unwrap();
    // THEN only that one goes; Meta's old failed row stays.
    assert_eq!(report.deleted, 1);
    assert_eq!(state_of(&c, old_failed).await, "failed");
    assert_eq!(
        count(
            &c,
            "select count(*) from pgcapi.deliveries where destination = 'tiktok'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn pgcapi_run_purges_old_rows_at_start_and_a_later_update_of_the_order_sends_nothing_again() {
    // GIVEN pgcapi with its control schema named `ops`, and an order delivered by `pgcapi run`
    let toml = CONTRACT_TOML.replace("slot = \"pgcapi\"", "slot = \"pgcapi\"\nschema = \"ops\"");
    assert_ne!(toml, CONTRACT_TOML);
    let shop = Shop::start(&toml).await;
    let c = &shop.client;
    assert_eq!(
        count(
            c,
            "select count(*) from pg_namespace where nspname = 'pgcapi'"
        )
        .await,
        0,
        "nothing is installed under the default name"
    );
    // Setup is idempotent with the views in place.
    setup(&shop.config, SetupOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = shop.config_file(dir.path(), &toml);
    let run = |log: &str| {
        let child = shop
            .binary()
            .args(["run", "-c"])
            .arg(&path)
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    };
    let first = run("first.log");
    c.execute(PAID_ORDER, &[&"9001", &true]).await.unwrap();
    wait_for(30, "three sent rows", || async {
        (count(
            c,
            "select count(*) from ops.deliveries where state = 'sent'",
        )
        .await
            == 3)
            .then_some(())
    })
    .await;
    assert_eq!(
        count(c, "select count(*) from ops.send_log where state = 'sent'").await,
        3
    );
    assert_eq!(
        count(c, "select sum(sent_1h)::bigint from ops.health").await,
        3
    );
    assert_eq!(
        count(
            c,
            "select count(*) from ops.lag where slot = 'pgcapi' and pgcapi_slot"
        )
        .await,
        1
    );
    drop(first);

    // WHEN the rows are 40 days old and pgcapi starts again
    c.batch_execute(
        "update ops.deliveries set updated_at = now() - interval '40 days', \
                       sent_at = now() - interval '40 days' where destination <> 'google'",
    )
    .await
    .unwrap();
    let _second = run("second.log");
    // THEN its retention pass deletes them at once (Google's stays: it can still be retracted), keeping
    // their keys.
    wait_for(30, "retention to delete the old rows", || async {
        (count(c, "select count(*) from ops.deliveries").await == 1).then_some(())
    })
    .await;
    assert_eq!(count(c, "select count(*) from ops.retired").await, 2);

    // WHEN the old order is edited (still paid), then a new order is paid
    c.batch_execute("update orders set notes = 'gift wrap' where order_number = '9001'")
        .await
        .unwrap();
    c.execute(PAID_ORDER, &[&"9002", &true]).await.unwrap();
    wait_for(30, "the new order to be sent", || async {
        (count(
            c,
            "select count(*) from ops.deliveries where event_id = 'order-9002' and state = 'sent'",
        )
        .await
            == 3)
            .then_some(())
    })
    .await;
    // THEN the edit recorded nothing, and each platform counted order 9001 once.
    assert_eq!(
        count(
            c,
            "select count(*) from ops.deliveries where event_id = 'order-9001'"
        )
        .await,
        1
    );
    let records = shop.sandbox.records();
    let meta_9001 = records
        .meta
        .events
        .iter()
        .filter(|e| e.event_id.as_deref() == Some("order-9001"))
        .count();
    let tiktok_9001 = records
        .tiktok
        .events
        .iter()
        .filter(|e| e.event_id.as_deref() == Some("order-9001"))
        .count();
    assert_eq!((meta_9001, tiktok_9001), (1, 1));
    assert_eq!(records.meta.counters.duplicate_sends, 0);

    // AND `pgcapi purge` (on demand, with its own age) reports what it would delete: order 9002's Meta
    // and TikTok rows once they are two days old (Google's are kept for retractions).
    c.batch_execute(
        "update ops.deliveries set updated_at = now() - interval '2 days' \
                       where event_id = 'order-9002'",
    )
    .await
    .unwrap();
    let output = shop
        .binary()
        .args(["purge", "--keep", "1d", "--dry-run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("would delete 2 sent, skipped and cancelled rows older than 1d"),
        "{stdout}"
    );
}

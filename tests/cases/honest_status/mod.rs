//! Honest status (issue 12, item 5) and least privilege (item 6): `pgcapi status`, `/readyz` and
//! `pgcapi_unhealthy` say when conversions do not flow, each within a minute, and `pgcapi setup` run as
//! the documented role that owns nothing prints the SQL for the DBA and succeeds once it was applied.
//! Real PostgreSQL, the real binary and the sandbox; capture's own reports (`capture_state`) are written
//! by hand where this file needs a state a healthy capture does not reach.

use crate::support::{
    contract_env, count, pgcapi_command, spawn_run, wait_count, wait_for, Shop, TestDb,
    CONTRACT_TOML, SHOP_SQL,
};
use pgcapi::ops::status::{self, FlowThresholds, Reason, StatusOptions, StatusReport};
use pgcapi::testbed::sandbox::{Faults, Sandbox};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod least_privilege;

/// A paid order; `$1` is the order number.
const PAID: &str =
    "insert into orders (order_number, email, phone, first_name, last_name, country, client_ip,
    user_agent, fbc, gclid, ttclid, total, currency, status, ad_consent, paid_at) values ($1,
    'jane.doe@example.com', '+16505551212', 'Jane', 'Doe', 'US', '203.0.113.7', 'Mozilla/5.0 test',
    'fb.1.1700000000000.AbCdEf123', 'Cj0KCQiA-test_gclid', 'E.C.P.tt-click', 42.50, 'USD', 'paid',
    true, now())";

/// Status with `--allow-failures` (these tests are about flow, not about single rejected rows).
fn options(failing_after: Duration) -> StatusOptions {
    StatusOptions {
        allow_failures: true,
        flow: FlowThresholds {
            failing_after,
            ..FlowThresholds::default()
        },
        ..StatusOptions::default()
    }
}

fn reasons(report: &StatusReport) -> Vec<Reason> {
    report.problems.iter().map(|p| p.reason).collect()
}

/// The message of the first problem of `reason`.
fn message(report: &StatusReport, reason: Reason) -> String {
    report
        .problems
        .iter()
        .find(|p| p.reason == reason)
        .map(|p| p.message.clone())
        .unwrap_or_else(|| panic!("no {reason:?} in {:?}", report.problems))
}

impl Shop {
    async fn status(&self, options: &StatusOptions) -> StatusReport {
        status::status(&self.config, options).await.unwrap()
    }

    /// Writes capture's report by hand, as a capture process would.
    async fn report_capture(&self, state: &str, error_since: &str, seen_at: &str) {
        self.client
            .batch_execute(&format!(
                "insert into pgcapi.capture_state (slot, state, error, error_lsn, error_since, seen_at) \
                 values ('pgcapi', '{state}', \
                   case when '{state}' <> 'streaming' then 'column \"email\" of table orders was dropped' end, \
                   case when '{state}' = 'stuck' then '0/1234ABC'::pg_lsn end, {error_since}, {seen_at}) \
                 on conflict (slot) do update set state = excluded.state, error = excluded.error, \
                   error_lsn = excluded.error_lsn, error_since = excluded.error_since, \
                   seen_at = excluded.seen_at"
            ))
            .await
            .unwrap();
    }

    /// `pgcapi status --json` from the binary: its exit code and the JSON.
    fn status_json(&self, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
        let output = pgcapi_command(&self.env)
            .args(["status", "--json", "--allow-failures", "-c"])
            .arg(&self.config_path)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code(), json)
    }

    async fn sent(&self) -> i64 {
        count(
            &self.client,
            "select count(*) from pgcapi.deliveries where state = 'sent'",
        )
        .await
    }
}

/// A last report 20 s old of retrying is fine; "streaming" with nothing holding the slot, or any
/// report 90 s old, means capture is not running, and the last report is quoted.
async fn last_reports_show_whether_capture_runs(shop: &Shop, opts: &StatusOptions) {
    shop.report_capture("retrying", "now()", "now() - interval '20 seconds'")
        .await;
    assert!(shop.status(opts).await.healthy);
    // WHEN the last report says "streaming" but nothing holds the slot, THEN that process is gone
    shop.report_capture("streaming", "null", "now() - interval '20 seconds'")
        .await;
    assert_eq!(
        reasons(&shop.status(opts).await),
        [Reason::CaptureNotRunning]
    );
    shop.report_capture("stuck", "now()", "now() - interval '90 seconds'")
        .await;
    let report = shop.status(opts).await;
    assert_eq!(reasons(&report), [Reason::CaptureNotRunning]);
    assert!(
        message(&report, Reason::CaptureNotRunning).contains("(stuck: column \"email\""),
        "{:?}",
        report.problems
    );
}

/// A stuck report is a problem at once (with the error, the LSN and since when); retrying an
/// outage is one after 2 minutes, not after 30 s.
async fn stuck_and_long_retries_are_problems(shop: &Shop, opts: &StatusOptions) {
    shop.report_capture("stuck", "now() - interval '5 minutes'", "now()")
        .await;
    let report = shop.status(opts).await;
    assert_eq!(reasons(&report), [Reason::CaptureStuck]);
    let text = message(&report, Reason::CaptureStuck);
    assert!(
        text.contains("stuck at LSN 0/1234ABC since ")
            && text.contains("(5m ago)")
            && text.contains("column \"email\" of table orders was dropped"),
        "{text}"
    );
    assert!(report
        .render()
        .contains("Capture (as it last reported)\n  state"));

    // WHEN capture retries an outage for 30 s, THEN that is fine; for 2 minutes it is not
    shop.report_capture("retrying", "now() - interval '30 seconds'", "now()")
        .await;
    assert!(shop.status(opts).await.healthy);
    shop.report_capture("retrying", "now() - interval '2 minutes'", "now()")
        .await;
    let report = shop.status(opts).await;
    assert_eq!(reasons(&report), [Reason::CaptureRetrying]);
    assert!(message(&report, Reason::CaptureRetrying).contains("retrying for 2m"));
}

#[tokio::test]
async fn status_says_when_capture_is_not_running_stuck_or_retrying() {
    // GIVEN a database set up, with no pgcapi running
    let shop = Shop::start(CONTRACT_TOML).await;
    let opts = options(Duration::from_secs(600));

    // THEN status is unhealthy: nothing reads the slot (no longer just a warning)
    let report = shop.status(&opts).await;
    assert_eq!(report.exit_code(), 2, "{}", report.render());
    assert_eq!(reasons(&report), [Reason::CaptureNotRunning]);
    assert!(message(&report, Reason::CaptureNotRunning).contains("start `pgcapi run`"));

    // WHEN pgcapi runs and delivers an order, THEN status is healthy
    let mut run = spawn_run(&shop.config_path, &shop.env);
    shop.client.execute(PAID, &[&"9001"]).await.unwrap();
    wait_for(60, "three sent rows and a healthy status", || async {
        (shop.sent().await == 3 && shop.status(&opts).await.healthy).then_some(())
    })
    .await;

    // WHEN the process is killed, THEN status says capture is not running within a minute
    run.kill();
    let killed = Instant::now();
    let report = wait_for(70, "capture_not_running", || async {
        let r = shop.status(&opts).await;
        reasons(&r)
            .contains(&Reason::CaptureNotRunning)
            .then_some(r)
    })
    .await;
    assert!(killed.elapsed() <= Duration::from_secs(65));
    assert_eq!(report.exit_code(), 2);

    // WHEN a capture process reported 20 s ago that it retries an outage (between two connections),
    // THEN that is fine; 90 s ago it is not running, and the last report is quoted
    last_reports_show_whether_capture_runs(&shop, &opts).await;
    // WHEN capture reports it is stuck on a change, THEN status says so at once, with the error, the
    // LSN and since when
    stuck_and_long_retries_are_problems(&shop, &opts).await;
    // AND the binary exits 2 with the same problems in JSON, and the capture report
    let (code, json) = shop.status_json(&[]);
    assert_eq!(code, Some(2), "{json}");
    assert_eq!(json["problems"][0]["reason"], "capture_retrying");
    assert_eq!(json["reasons"][0], json["problems"][0]["message"]);
    assert_eq!(json["capture"]["phase"], "retrying");
}

#[tokio::test]
async fn status_says_when_the_slot_is_ahead_of_the_stored_position() {
    // GIVEN pgcapi ran, delivered an order and stored its position, then stopped
    let shop = Shop::start(CONTRACT_TOML).await;
    let opts = options(Duration::from_secs(600));
    let mut run = spawn_run(&shop.config_path, &shop.env);
    shop.client.execute(PAID, &[&"9101"]).await.unwrap();
    wait_for(60, "three sent rows", || async {
        (shop.sent().await == 3).then_some(())
    })
    .await;
    run.kill();
    let released =
        "select count(*) from pg_replication_slots where slot_name = 'pgcapi' and not active";
    wait_count(&shop.client, 30, "the slot to be released", released, 1).await;
    // WHEN orders are paid meanwhile and someone advances the slot past them
    shop.client.execute(PAID, &[&"9102"]).await.unwrap();
    shop.client
        .batch_execute("select pg_replication_slot_advance('pgcapi', pg_current_wal_lsn())")
        .await
        .unwrap();

    // THEN status says the changes in between were never captured, and what to do
    let report = shop.status(&opts).await;
    assert_eq!(report.exit_code(), 2);
    assert!(
        reasons(&report).contains(&Reason::SlotAhead),
        "{:?}",
        report.problems
    );
    let text = message(&report, Reason::SlotAhead);
    assert!(
        text.contains("never captured") && text.contains("`pgcapi backfill`"),
        "{text}"
    );
    // AND the update it advises, once run, clears it (after the backfill an operator would do)
    let update = text
        .split("accept the slot's position: ")
        .nth(1)
        .unwrap()
        .to_string();
    shop.client.batch_execute(&update).await.unwrap();
    let report = shop.status(&opts).await;
    assert!(
        !reasons(&report).contains(&Reason::SlotAhead),
        "{:?}",
        report.problems
    );
}

/// Runs the binary with `args` and `-c config` (without blocking this test's runtime, where the sandbox
/// answers): its exit code, and its stdout followed by its stderr.
async fn pgcapi(
    env: &[(String, String)],
    args: &[&str],
    config: &std::path::Path,
) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgcapi"));
    command
        .args(args)
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `url`: status and body.
async fn get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// The contract config with a metrics server on `port` and destinations called failing after 3 s.
fn failing_after_3s_with_metrics(port: u16) -> String {
    format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nrefresh_ms = 200\n",
        CONTRACT_TOML.replace(
            "[destinations.meta]",
            "[dispatch]\nfailing_after_secs = 3\n\n[destinations.meta]"
        )
    )
}

/// The binary reads the failing window from the config, or from --failing-after.
fn binary_reads_the_window(shop: &Shop) {
    let (code, json) = shop.status_json(&[]);
    assert_eq!(code, Some(2), "{json}");
    assert!(json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["reason"] == "destination_failing"));
    let (code, json) = shop.status_json(&["--failing-after", "1h"]);
    assert_eq!(code, Some(0), "{json}");
}

/// /readyz (at `url`) answers 503 with the failing message, and the metric names the reason.
async fn readyz_and_metric_say_failing(url: &str) {
    let body = wait_for(30, "/readyz to answer 503", || async {
        let (status, body) = get(&format!("{url}/readyz")).await?;
        (status == 503 && body.contains("has delivered nothing")).then_some(body)
    })
    .await;
    assert!(body.starts_with("not ready: "), "{body}");
    let scrape = get(&format!("{url}/metrics")).await.unwrap().1;
    assert!(
        scrape.contains(r#"pgcapi_unhealthy{reason="destination_failing"} 1"#),
        "{scrape}"
    );
    assert!(scrape.contains("pgcapi_healthy 0"), "{scrape}");
}

#[tokio::test]
async fn status_readyz_and_the_metric_say_when_a_destination_only_fails() {
    // GIVEN pgcapi running with a metrics server, destinations called failing after 3 s
    let port = free_port();
    let toml = failing_after_3s_with_metrics(port);
    let shop = Shop::start(&toml).await;
    let url = format!("http://127.0.0.1:{port}");
    let _run = spawn_run(&shop.config_path, &shop.env);
    wait_for(60, "/readyz to answer 200", || async {
        (get(&format!("{url}/readyz")).await?.0 == 200).then_some(())
    })
    .await;

    // WHEN every platform answers 500 and an order is paid
    shop.sandbox.set_faults(Faults {
        error_500_ratio: 1.0,
        ..Faults::default()
    });
    shop.client.execute(PAID, &[&"9201"]).await.unwrap();
    let paid = Instant::now();

    // THEN within a minute status says each destination delivered nothing (exit 2, reason named)
    let opts = options(Duration::from_secs(3));
    let report = wait_for(60, "destination_failing for all three", || async {
        let r = shop.status(&opts).await;
        (r.problems
            .iter()
            .filter(|p| p.reason == Reason::DestinationFailing)
            .count()
            == 3)
            .then_some(r)
    })
    .await;
    assert!(paid.elapsed() < Duration::from_secs(60));
    assert_eq!(report.exit_code(), 2);
    let text = message(&report, Reason::DestinationFailing);
    assert!(
        text.contains("has delivered nothing for 3s") && text.contains("last error"),
        "{text}"
    );
    // AND the binary reads the window from the config, or from --failing-after
    binary_reads_the_window(&shop);
    // AND /readyz answers 503 with the same message, and the metric names the reason
    readyz_and_metric_say_failing(&url).await;
    // WHEN the platforms recover, THEN the rows are sent and everything is healthy again
    shop.sandbox.set_faults(Faults::default());
    wait_for(60, "three sent rows, healthy status and readyz", || async {
        let ready = get(&format!("{url}/readyz")).await?.0 == 200;
        (shop.sent().await == 3 && ready && shop.status(&opts).await.healthy).then_some(())
    })
    .await;
    let scrape = get(&format!("{url}/metrics")).await.unwrap().1;
    assert!(
        scrape.contains(r#"pgcapi_unhealthy{reason="destination_failing"} 0"#),
        "{scrape}"
    );
}

#[tokio::test]
async fn an_invalidated_slot_gives_the_servers_detail_and_what_to_do() {
    // GIVEN a slot the server invalidated (max_slot_wal_keep_size exceeded, wal_status lost)
    let db = TestDb::start().await;
    let client = db.connect().await;
    client
        .batch_execute("alter system set max_slot_wal_keep_size = '1MB'")
        .await
        .unwrap();
    client
        .batch_execute("select pg_reload_conf()")
        .await
        .unwrap();
    client
        .batch_execute(
            "create table t (id int primary key, pad text); \
             create publication p for table t;",
        )
        .await
        .unwrap();
    client
        .batch_execute("select pg_create_logical_replication_slot('s', 'pgoutput')")
        .await
        .unwrap();
    wait_for(60, "the slot to be lost", || async {
        client
            .batch_execute(
                "insert into t select g, repeat('x', 100) from generate_series(1, 5000) g \
                 on conflict (id) do update set pad = excluded.pad || 'y'; \
                 select pg_switch_wal();",
            )
            .await
            .unwrap();
        client.batch_execute("checkpoint").await.unwrap();
        let status: Option<String> = client
            .query_one(
                "select wal_status from pg_replication_slots where slot_name = 's'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (status.as_deref() == Some("lost")).then_some(())
    })
    .await;

    // WHEN capture's replication connection starts streaming from it
    let info: pgcapi::pg::ConnInfo = db.url().parse().unwrap();
    let conn = pgcapi::source::ReplicationConnection::connect(&info, "")
        .await
        .unwrap();
    let err = match conn.start_logical("s", pgcapi::lsn::Lsn::ZERO, "p").await {
        Ok(mut stream) => stream.next().await.map(|_| ()).unwrap_err(),
        Err(e) => e,
    };
    // THEN the error carries the server's detail and says what to do, and is not retried
    let text = err.to_string();
    assert!(err.is_slot_invalidated() && !err.is_retryable(), "{text}");
    assert!(
        text.contains("server error 55000: cannot read from logical replication slot \"s\"")
            && text.contains("DETAIL: This slot has been invalidated")
            && text.contains("SELECT pg_drop_replication_slot('s');")
            && text.contains("`pgcapi setup`")
            && text.contains("`pgcapi backfill`"),
        "{text}"
    );
}

//! Operating `pgcapi run`: metrics and health endpoints, JSON logs, dry run, Google `validate_only`, and
//! `pgcapi check` — each through the real binary, a real PostgreSQL and the sandbox.

use crate::support::Shop;
use crate::support::{config_from, contract_env, count, wait_for, TestDb, CONTRACT_TOML, SHOP_SQL};
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::testbed::sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The contract config with a metrics server on a free port, refreshed every 200 ms.
fn with_metrics(toml: &str) -> String {
    format!("{toml}\n[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_ms = 200\n")
}

/// A paid order with every identifier; `$1` is the order number, `$2` the consent.
const PAID: &str =
    "insert into orders (order_number, email, phone, first_name, last_name, city, region,
    postal_code, country, client_ip, user_agent, fbc, fbp, gclid, ttclid, total, currency, status,
    ad_consent, paid_at) values ($1, 'Jane.Doe@Example.com', '(650) 555-1212', 'Jane', 'Doe',
    'San Francisco', 'California', '94105', 'US', '203.0.113.7', 'Mozilla/5.0 (X11) test',
    'fb.1.1700000000000.AbCdEf123', 'fb.1.1700000000000.987654321', 'Cj0KCQiA-test_gclid',
    'E.C.P.tt-click', 42.50, 'USD', 'paid', $2, now())";

/// Raw identifiers of [`PAID`] that must never appear in a log line or a request.
const RAW_PII: &[&str] = &[
    "Jane",
    "jane.doe",
    "Example.com",
    "555-1212",
    "6505551212",
    "San Francisco",
    "California",
    "94105",
];

impl Shop {
    /// Starts `pgcapi run` with `args` after `--config FILE`, logging JSON to `log` (in the temp dir).
    fn run(&self, args: &[&str], log: &str) -> Running {
        let log = self.dir.path().join(log);
        let mut command = Command::new(env!("CARGO_BIN_EXE_pgcapi"));
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(&self.config_path)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        Running {
            child: command.spawn().expect("spawn pgcapi run"),
            log,
        }
    }

    /// Pays order `number` (with or without consent).
    async fn pay(&self, number: &str, consent: bool) {
        self.client
            .execute(PAID, &[&number, &consent])
            .await
            .unwrap();
    }

    /// Waits until the control table holds `rows` rows and none is pending.
    async fn settled(&self, rows: i64) {
        wait_for(30, &format!("{rows} settled deliveries"), || async {
            let total = count(&self.client, "select count(*) from pgcapi.deliveries").await;
            (total == rows && self.pending().await == 0).then_some(())
        })
        .await;
    }

    /// Rows not yet settled.
    async fn pending(&self) -> i64 {
        count(
            &self.client,
            "select count(*) from pgcapi.deliveries where state = 'pending'",
        )
        .await
    }
}

/// A `pgcapi run` process; killed if still running when dropped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// The log lines so far, each parsed as JSON (panics on a line that is not JSON).
    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// The metrics server's base URL, from the process's log.
    async fn metrics_url(&self) -> String {
        wait_for(30, "the metrics server to listen", || async {
            self.log_lines().iter().find_map(|l| {
                (l["fields"]["message"] == "metrics server listening")
                    .then(|| format!("http://{}", l["fields"]["addr"].as_str().unwrap()))
            })
        })
        .await
    }

    /// Stops the process with SIGTERM and waits for it; returns whether it exited successfully.
    fn terminate(&mut self) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pgcapi run did not stop on SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `url`; returns the status and body (`None` when nothing answers).
async fn get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// The value of the sample `series` (name and labels exactly as exposed) in a scrape; 0 when absent.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn metrics_match_the_control_table_and_readyz_follows_capture_and_the_database() {
    // GIVEN `pgcapi run` with a metrics server, delivering to the sandbox
    let shop = Shop::start(&with_metrics(CONTRACT_TOML)).await;
    let _sandbox = &shop.sandbox;
    let mut active = shop.run(&[], "active.log");
    let url = active.metrics_url().await;
    assert_eq!(get(&format!("{url}/healthz")).await.unwrap().0, 200);
    wait_for(30, "/readyz to answer 200", || async {
        (get(&format!("{url}/readyz")).await?.0 == 200).then_some(())
    })
    .await;

    // WHEN orders are paid (one without consent) and one is refunded after it was sent
    shop.pay("7001", true).await;
    shop.pay("7002", true).await;
    shop.pay("7003", false).await;
    shop.settled(9).await;
    shop.client
        .batch_execute("update orders set status = 'refunded' where order_number = '7001'")
        .await
        .unwrap();
    wait_for(30, "the retractions to settle", || async {
        let settled = count(
            &shop.client,
            "select count(*) from pgcapi.deliveries where kind = 'retraction' and state <> 'pending'",
        )
        .await;
        (settled == 3).then_some(())
    })
    .await;

    // THEN the counters equal what the control table says this process did
    let scrape = wait_for(10, "the pending gauges to read 0", || async {
        let (_, scrape) = get(&format!("{url}/metrics")).await?;
        let zero = ["meta", "google", "tiktok"].iter().all(|d| {
            scrape.contains(&format!(
                "pgcapi_pending_deliveries{{destination=\"{d}\"}} 0\n"
            ))
        });
        zero.then_some(scrape)
    })
    .await;
    for dest in ["meta", "google", "tiktok"] {
        let sent = count(
            &shop.client,
            &format!(
                "select count(*) from pgcapi.deliveries where destination = '{dest}' and state = 'sent'"
            ),
        )
        .await;
        assert!(sent >= 2, "{dest}: {sent}");
        assert_eq!(
            sample(
                &scrape,
                &format!("pgcapi_deliveries_total{{destination=\"{dest}\",state=\"sent\"}}")
            ),
            sent as f64,
            "{dest} sent\n{scrape}"
        );
        assert!(
            sample(
                &scrape,
                &format!(
                    "pgcapi_dispatch_requests_total{{destination=\"{dest}\",outcome=\"accepted\"}}"
                )
            ) >= 1.0,
            "{scrape}"
        );
        assert!(
            scrape.contains(&format!(
                "pgcapi_dispatch_request_duration_seconds_count{{destination=\"{dest}\"}}"
            )),
            "{scrape}"
        );
    }
    // Meta cannot retract: dispatch skipped its retraction (consent skips are decided by capture).
    let meta_skipped = count(
        &shop.client,
        "select count(*) from pgcapi.deliveries where destination = 'meta' and state = 'skipped'
         and kind = 'retraction'",
    )
    .await;
    assert_eq!(meta_skipped, 1);
    assert_eq!(
        sample(
            &scrape,
            "pgcapi_deliveries_total{destination=\"meta\",state=\"skipped\"}"
        ),
        1.0,
        "{scrape}"
    );
    let rows = count(&shop.client, "select count(*) from pgcapi.deliveries").await;
    assert_eq!(sample(&scrape, "pgcapi_events_captured_total"), rows as f64);
    assert!(sample(&scrape, "pgcapi_transactions_total") >= 4.0);
    assert!(sample(&scrape, "pgcapi_changes_decoded_total") >= 4.0);
    assert_eq!(sample(&scrape, "pgcapi_capture_active"), 1.0);
    assert!(sample(&scrape, "pgcapi_confirmed_flush_lsn") > 0.0);
    assert!(scrape.contains("pgcapi_replication_lag_bytes "), "{scrape}");
    assert!(
        scrape.contains("pgcapi_dispatch_latency_seconds_count{destination=\"meta\"} 2"),
        "{scrape}"
    );
    assert!(!scrape.contains("order-7001"), "an event id became a label");

    // WHEN a second process starts on the same slot, THEN it is a ready standby, not capturing
    let standby = shop.run(&[], "standby.log");
    let standby_url = standby.metrics_url().await;
    wait_for(30, "the standby to be ready", || async {
        (get(&format!("{standby_url}/readyz")).await?.0 == 200).then_some(())
    })
    .await;
    let (_, standby_scrape) = get(&format!("{standby_url}/metrics")).await.unwrap();
    assert_eq!(sample(&standby_scrape, "pgcapi_capture_active"), 0.0);
    drop(standby);

    // WHEN the database goes down, THEN /readyz answers 503 and says why, and /healthz stays 200
    shop.db.cluster.stop("fast").unwrap();
    let body = wait_for(30, "/readyz to answer 503 naming the database", || async {
        let (status, body) = get(&format!("{url}/readyz")).await?;
        (status == 503 && body.contains("control database")).then_some(body)
    })
    .await;
    assert!(body.starts_with("not ready: "), "{body}");
    assert_eq!(get(&format!("{url}/healthz")).await.unwrap().0, 200);
    assert!(active.terminate(), "pgcapi run exits 0 on SIGTERM");
}

#[tokio::test]
async fn json_logs_name_their_workers_and_hold_no_identifier_or_secret() {
    // GIVEN `pgcapi run --log-format json` at debug level with a metrics server
    let shop = Shop::start(&with_metrics(CONTRACT_TOML)).await;
    let _sandbox = &shop.sandbox;
    let mut run = shop.run(&[], "run.log");
    run.metrics_url().await;

    // WHEN a short workload of paid orders with every identifier goes through
    shop.pay("8001", true).await;
    shop.pay("8002", false).await;
    wait_for(30, "the conversions to be sent", || async {
        let sent = count(
            &shop.client,
            "select count(*) from pgcapi.deliveries where state = 'sent'",
        )
        .await;
        (sent == 3).then_some(())
    })
    .await;
    assert!(run.terminate());

    // THEN every line is JSON, the workers' spans appear, and no raw identifier or secret does
    let lines = run.log_lines();
    assert!(lines.len() > 10, "only {} log lines", lines.len());
    let in_span = |name: &str, destination: Option<&str>| {
        lines.iter().any(|l| {
            l["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|s| {
                    s["name"] == name
                        && destination.is_none_or(|d| s["destination"].as_str() == Some(d))
                })
            })
        })
    };
    assert!(in_span("capture", None), "no line in the capture span");
    for dest in ["meta", "google", "tiktok"] {
        assert!(
            in_span("dispatch", Some(dest)),
            "no line in dispatch {dest}"
        );
    }
    assert!(
        lines.iter().any(|l| l["span"]["name"] == "metrics"),
        "no line of the metrics server"
    );
    let text = std::fs::read_to_string(&run.log).unwrap();
    for raw in RAW_PII {
        assert!(!text.contains(raw), "{raw:?} found in the log");
    }
    let secrets: Vec<&str> = shop
        .env
        .iter()
        .filter(|(k, _)| k.ends_with("TOKEN") || k.contains("CLIENT"))
        .map(|(_, v)| v.as_str())
        .collect();
    // Meta, the four Google ones, TikTok, LinkedIn and Reddit.
    assert_eq!(secrets.len(), 8);
    for secret in secrets {
        assert!(!text.contains(secret), "a secret was logged");
    }
}

#[tokio::test]
async fn a_dry_run_sends_nothing_writes_the_would_be_requests_and_leaves_rows_for_a_real_run() {
    // GIVEN `pgcapi run --dry-run --dry-run-output DIR`
    let shop = Shop::start(CONTRACT_TOML).await;
    let sandbox = &shop.sandbox;
    let out = shop.dir.path().join("dry-run");
    let mut run = shop.run(
        &["--dry-run", "--dry-run-output", out.to_str().unwrap()],
        "dry.log",
    );

    // WHEN two orders are paid
    shop.pay("9001", true).await;
    shop.pay("9002", true).await;

    // THEN each destination's would-be request is written, with hashes and no raw identifier
    let read = |dest: &str| -> Vec<Value> {
        std::fs::read_to_string(out.join(format!("{dest}.jsonl")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let shown = |lines: &[Value]| -> Vec<String> {
        lines
            .iter()
            .flat_map(|l| l["requests"].as_array().unwrap().clone())
            .flat_map(|r| r["event_ids"].as_array().unwrap().clone())
            .map(|id| id.as_str().unwrap().to_string())
            .collect()
    };
    for dest in ["meta", "google", "tiktok"] {
        wait_for(30, &format!("the {dest} dry-run output"), || async {
            let mut ids = shown(&read(dest));
            ids.sort();
            (ids == ["order-9001", "order-9002"]).then_some(())
        })
        .await;
    }
    let email_hash = pgcapi::identity::hash("jane.doe@example.com");
    let meta = read("meta");
    let body = &meta[0]["requests"][0]["body"];
    assert_eq!(body["data"][0]["user_data"]["em"], email_hash, "{body}");
    let google = read("google");
    let upload = &google[0]["requests"][0];
    assert!(upload["url"]
        .as_str()
        .unwrap()
        .ends_with("/customers/1234567890:uploadClickConversions"));
    assert_eq!(
        upload["body"]["conversions"][0]["userIdentifiers"][0]["hashedEmail"],
        email_hash
    );
    let tiktok = read("tiktok");
    assert_eq!(
        tiktok[0]["requests"][0]["body"]["data"][0]["user"]["email"],
        email_hash
    );
    for dest in ["meta", "google", "tiktok"] {
        let text = std::fs::read_to_string(out.join(format!("{dest}.jsonl"))).unwrap();
        for raw in RAW_PII.iter().chain(&["s3cr3t"]) {
            assert!(!text.contains(raw), "{raw:?} in the {dest} dry-run output");
        }
    }
    // ... nothing reached the platforms, and the rows are untouched (pending, no lease, no attempt)
    let records = sandbox.records();
    for platform in pgcapi::platform::Platform::ALL {
        assert_eq!(
            records
                .counters(crate::support::sandbox_api(platform))
                .requests,
            0,
            "{platform:?}"
        );
    }
    assert_eq!(shop.pending().await, 6);
    assert_eq!(
        count(
            &shop.client,
            "select count(*) from pgcapi.deliveries where lease_owner is not null or attempts > 0"
        )
        .await,
        0
    );
    // ... and each row was shown once, however long the dry run goes on.
    assert!(run.terminate());
    assert_eq!(shown(&read("meta")).len(), 2);

    // WHEN pgcapi runs again without --dry-run, THEN the same rows are sent for real
    let _real = shop.run(&[], "real.log");
    shop.settled(6).await;
    assert_eq!(
        count(
            &shop.client,
            "select count(*) from pgcapi.deliveries where state = 'sent'"
        )
        .await,
        6
    );
    assert_eq!(sandbox.records().meta.events.len(), 2);
}

#[tokio::test]
async fn google_validate_only_reaches_the_sandbox_and_records_nothing() {
    // GIVEN the Google destination with validate_only = true
    let toml = CONTRACT_TOML.replace(
        "platform = \"google_ads\"\n",
        "platform = \"google_ads\"\nvalidate_only = true\n",
    );
    assert_ne!(toml, CONTRACT_TOML);
    let shop = Shop::start(&toml).await;
    let sandbox = &shop.sandbox;
    let _run = shop.run(&[], "run.log");

    // WHEN an order is paid
    shop.pay("9101", true).await;
    shop.settled(3).await;

    // THEN Google validated the conversion (a request reached it) but recorded nothing, and the row
    // says so instead of claiming it was sent; Meta and TikTok were not affected.
    let google = sandbox.records().google_ads;
    assert!(google.counters.requests >= 1);
    assert_eq!(google.counters.accepted, 0);
    assert!(google.conversions.is_empty());
    let row = shop
        .client
        .query_one(
            "select state, last_error from pgcapi.deliveries where destination = 'google'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "skipped");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some(pgcapi::destinations::google_ads::VALIDATE_ONLY_REASON)
    );
    assert_eq!(sandbox.records().meta.events.len(), 1);
}

/// Runs `pgcapi check` on `config` with `env`; returns whether it succeeded and its stdout. (Async:
/// the sandbox answers from this test's runtime.)
async fn check(config: &Path, env: &[(String, String)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgcapi"));
    command
        .args(["check", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().await.expect("run pgcapi check");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    for secret in ["s3cr3t", "wrong-token-value"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
    }
    (output.status.success(), stdout)
}

/// The env with `key` set to `value`.
fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
    env
}

#[tokio::test]
async fn check_passes_against_the_sandbox_and_names_what_is_wrong() {
    // GIVEN a sandbox that accepts only the test env's credentials, and TikTok with a test event code
    let env0 = contract_env("", "");
    let secret = |k: &str| env0.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let sandbox = Sandbox::start_with_config(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            meta_access_token: secret("META_ACCESS_TOKEN"),
            google_client_id: secret("GOOGLE_ADS_CLIENT_ID"),
            google_client_secret: secret("GOOGLE_ADS_CLIENT_SECRET"),
            google_refresh_token: secret("GOOGLE_ADS_REFRESH_TOKEN"),
            google_developer_token: secret("GOOGLE_ADS_DEVELOPER_TOKEN"),
            tiktok_access_token: secret("TIKTOK_ACCESS_TOKEN"),
            ..SandboxConfig::default()
        },
    )
    .await
    .unwrap();
    let toml = CONTRACT_TOML.replace(
        "pixel_code = \"CTEST12345\"\n",
        "pixel_code = \"CTEST12345\"\ntest_event_code = \"TEST42\"\n",
    );
    assert_ne!(toml, CONTRACT_TOML);
    let db = TestDb::start().await;
    db.connect().await.batch_execute(SHOP_SQL).await.unwrap();
    let env = contract_env(&db.url(), &sandbox.base_url());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcapi.toml");
    std::fs::write(&path, &toml).unwrap();

    // WHEN check runs before setup, THEN it fails naming what setup would do
    let (ok, out) = check(&path, &env).await;
    assert!(!ok, "{out}");
    for expected in [
        "✓ wal_level = logical",
        "✗ publication pgcapi does not exist: run pgcapi setup",
        "✗ replication slot pgcapi does not exist: run pgcapi setup",
        "✗ control schema pgcapi is not installed: run pgcapi setup",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }

    // WHEN check runs after setup, THEN every item passes
    setup(&config_from(&toml, &env), SetupOptions::default())
        .await
        .unwrap();
    sandbox.reset();
    let (ok, out) = check(&path, &env).await;
    assert!(ok, "{out}");
    assert!(!out.contains('✗'), "{out}");
    assert!(
        out.contains("✓ meta (meta): access token accepted, pixel 1234567890 readable"),
        "{out}"
    );
    assert!(
        out.contains("✓ google (google_ads): OAuth, developer token"),
        "{out}"
    );
    assert!(
        out.contains("✓ tiktok (tiktok): access token and pixel CTEST12345 accepted"),
        "{out}"
    );
    assert!(out.ends_with("All checks passed.\n"), "{out}");
    // ... without recording a conversion (TikTok's one test event carries the test code)
    let records = sandbox.records();
    assert!(records.meta.events.is_empty());
    assert_eq!(records.meta.counters.requests, 0);
    assert!(records.google_ads.conversions.is_empty());
    assert!(records.google_ads.counters.requests >= 1);
    assert_eq!(records.tiktok.events.len(), 1);
    assert_eq!(
        records.tiktok.events[0].test_event_code.as_deref(),
        Some("TEST42")
    );

    // WHEN a token is wrong or an endpoint unreachable, THEN check fails and says which and why
    let (ok, out) = check(&path, &with(&env, "META_ACCESS_TOKEN", "wrong-token-value")).await;
    assert!(!ok);
    assert!(
        out.contains("✗ meta (meta): access token rejected (Graph error 190"),
        "{out}"
    );
    let (ok, out) = check(
        &path,
        &with(&env, "GOOGLE_ADS_REFRESH_TOKEN", "wrong-token-value"),
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains("✗ google (google_ads): OAuth refresh token rejected"),
        "{out}"
    );
    let (ok, out) = check(&path, &with(&env, "TIKTOK_ENDPOINT", "http://127.0.0.1:9")).await;
    assert!(!ok);
    assert!(
        out.contains("✗ tiktok (tiktok): cannot reach http://127.0.0.1:9"),
        "{out}"
    );
    assert!(out.contains("✓ meta (meta)"), "{out}");
}

/// Runs `pgcapi setup` with `RUST_LOG` as given (unset: the default level), stderr into a file (not a
/// terminal); returns whether it succeeded and what it logged.
fn setup_logging_to_a_file(
    config: &Path,
    env: &[(String, String)],
    rust_log: Option<&str>,
    log: &Path,
) -> (bool, Vec<u8>) {
    let mut command = crate::support::pgcapi_command(env);
    command.env_remove("RUST_LOG").env_remove("NO_COLOR");
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let file = std::fs::File::create(log).unwrap();
    let status = command
        .args(["setup", "--config"])
        .arg(config)
        .stderr(file)
        .status()
        .expect("run pgcapi setup");
    (status.success(), std::fs::read(log).unwrap())
}

#[tokio::test]
async fn setup_run_again_logs_no_colours_and_no_skipping_notices_at_the_default_level() {
    // GIVEN a shop database and the contract config
    let db = TestDb::start().await;
    db.connect().await.batch_execute(SHOP_SQL).await.unwrap();
    let env = contract_env(&db.url(), "http://127.0.0.1:9");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgcapi.toml");
    std::fs::write(&config, CONTRACT_TOML).unwrap();
    let log = dir.path().join("stderr.log");
    // WHEN setup runs twice, its stderr going to a file
    for run in 1..=2 {
        let (ok, stderr) = setup_logging_to_a_file(&config, &env, None, &log);
        let text = String::from_utf8_lossy(&stderr);
        assert!(ok, "setup run {run} failed: {text}");
        // THEN the file has no ANSI escape and no "already exists, skipping" lines
        assert!(
            !stderr.contains(&0x1b),
            "ANSI escape in run {run}: {text:?}"
        );
        assert!(!text.contains("skipping"), "run {run}: {text}");
    }
    // AND the notices are still there at debug level, still without colours
    let (ok, stderr) = setup_logging_to_a_file(&config, &env, Some("debug"), &log);
    let text = String::from_utf8_lossy(&stderr);
    assert!(ok, "{text}");
    assert!(!stderr.contains(&0x1b), "{text:?}");
    assert!(
        text.lines().any(|l| l.contains("DEBUG")
            && l.contains("notice from the server")
            && l.contains("skipping")),
        "{text}"
    );
}

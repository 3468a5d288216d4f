//! `pgcapi check` against the sandbox, and `setup` logging at the default level.

use crate::support::{config_from, contract_env, TestDb, CONTRACT_TOML, SHOP_SQL};
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::testbed::sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use std::path::Path;

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

/// A sandbox that accepts only the test env's credentials.
async fn strict_sandbox() -> SandboxHandle {
    let env0 = contract_env("", "");
    let secret = |k: &str| env0.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Sandbox::start_with_config(
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
    .unwrap()
}

#[tokio::test]
async fn check_passes_against_the_sandbox_and_names_what_is_wrong() {
    // GIVEN a sandbox that accepts only the test env's credentials, and TikTok with a test event code
    let sandbox = strict_sandbox().await;
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
    check_names_a_wrong_token_or_an_unreachable_endpoint(&path, &env).await;
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

/// With a token wrong or an endpoint unreachable, check fails and says which and why.
async fn check_names_a_wrong_token_or_an_unreachable_endpoint(
    path: &Path,
    env: &[(String, String)],
) {
    let (ok, out) = check(path, &with(env, "META_ACCESS_TOKEN", "wrong-token-value")).await;
    assert!(!ok);
    assert!(
        out.contains("✗ meta (meta): access token rejected (Graph error 190"),
        "{out}"
    );
    let (ok, out) = check(
        path,
        &with(env, "GOOGLE_ADS_REFRESH_TOKEN", "wrong-token-value"),
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains("✗ google (google_ads): OAuth refresh token rejected"),
        "{out}"
    );
    let (ok, out) = check(path, &with(env, "TIKTOK_ENDPOINT", "http://127.0.0.1:9")).await;
    assert!(!ok);
    assert!(
        out.contains("✗ tiktok (tiktok): cannot reach http://127.0.0.1:9"),
        "{out}"
    );
    assert!(out.contains("✓ meta (meta)"), "{out}");
}

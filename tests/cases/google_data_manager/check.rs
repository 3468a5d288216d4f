//! Data Manager: `pgcapi check` reports the token, the account and the conversion action.

use super::*;

/// Runs `pgcapi check`; returns whether it passed and its output.
async fn check(g: &Google, env: &[(String, String)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgcapi"));
    command
        .args(["check", "--config"])
        .arg(&g.path)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().await.expect("run pgcapi check");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(!stdout.contains("s3cr3t"), "{stdout}");
    (output.status.success(), stdout)
}

#[tokio::test]
async fn check_reports_token_account_and_conversion_action_of_data_manager() {
    // GIVEN a sandbox that takes only the test refresh token
    let g = start(
        CONTRACT,
        SandboxConfig {
            google_refresh_token: Some("test-refresh-token-s3cr3t".into()),
            ..SandboxConfig::default()
        },
        &[],
    )
    .await;
    // WHEN pgcapi check runs
    let (ok, out) = check(&g, &g.env).await;
    // THEN the token, the account and the conversion action each pass, and nothing was recorded
    let google: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("(google_data_manager)"))
        .collect();
    assert!(ok, "{out}");
    assert_eq!(google.len(), 3, "{out}");
    assert!(
        google[0].contains("✓") && google[0].contains("token"),
        "{out}"
    );
    assert!(
        google[1].contains("✓") && google[1].contains("account 1234567890"),
        "{out}"
    );
    assert!(
        google[2].contains("✓") && google[2].contains("conversion action 1001"),
        "{out}"
    );
    assert_eq!(g.sandbox.records().google_data_manager.validated, 1);
    assert!(g.sandbox.records().google_data_manager.events.is_empty());
    // WHEN the refresh token is wrong
    let mut env = g.env.clone();
    env.retain(|(k, _)| k != "GOOGLE_ADS_REFRESH_TOKEN");
    env.push(("GOOGLE_ADS_REFRESH_TOKEN".into(), "stale".into()));
    let (ok, out) = check(&g, &env).await;
    // THEN the token line fails with Google's words
    assert!(!ok);
    let line = out
        .lines()
        .find(|l| l.contains("(google_data_manager)"))
        .unwrap();
    assert!(
        line.contains("✗") && line.contains("invalid_grant"),
        "{out}"
    );
}

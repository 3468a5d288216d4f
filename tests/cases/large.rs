//! One transaction of a million matching rows (run by hand: `cargo test --release -- --ignored`).

use crate::support::{config_from, contract_env, count, wait_for, TestDb, CONTRACT_TOML, SHOP_SQL};
use pgcapi::ops::setup::{setup, SetupOptions};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The peak resident set of a process in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
#[ignore = "slow: about a minute in release mode; run by hand to observe memory"]
async fn one_transaction_of_a_million_matching_rows_completes_in_bounded_memory() {
    let rows: i64 = std::env::var("PGCAPI_LARGE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    let env = contract_env(&db.url(), "http://127.0.0.1:9");
    // One destination per order keeps the control table at one row per source row.
    let text = CONTRACT_TOML.replacen(
        "destinations = [\"meta\", \"google\", \"tiktok\"]",
        "destinations = [\"meta\"]",
        1,
    );
    let config = config_from(&text, &env);
    setup(&config, SetupOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcapi.toml");
    std::fs::write(&path, &text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgcapi"));
    command
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    for (k, v) in &env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "insert into orders (order_number, email, phone, total, status, ad_consent, paid_at)
             select 'big-' || g, 'user' || g || '@example.com', '+1650555' || lpad((g % 10000)::text, 4, '0'),
                    g % 1000, 'paid', true, now()
             from generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    let committed = started.elapsed();
    wait_for(1800, "every row of the large transaction", || async {
        (count(&client, "select count(*) from pgcapi.deliveries").await == rows).then_some(())
    })
    .await;
    let captured = started.elapsed();
    let peak = peak_rss_kib(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{rows} rows in one transaction: committed after {committed:?}, recorded after {captured:?}, \
         pgcapi peak RSS {} MiB",
        peak / 1024
    );
    assert!(peak > 0);
}

//! Runs that record nothing: a dry run writing the would-be requests, Google `validate_only`.

use super::*;
use crate::support::Shop;
use crate::support::{count, wait_for, CONTRACT_TOML};
use serde_json::Value;
use std::path::Path;

/// The dry-run output lines of `dest` in `out`, as JSON (none yet: empty).
fn read(out: &Path, dest: &str) -> Vec<Value> {
    std::fs::read_to_string(out.join(format!("{dest}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The event ids of every request of dry-run output `lines`.
fn shown(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .flat_map(|l| l["requests"].as_array().unwrap().clone())
        .flat_map(|r| r["event_ids"].as_array().unwrap().clone())
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
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
    let read = |dest: &str| read(&out, dest);
    for dest in ["meta", "google", "tiktok"] {
        wait_for(30, &format!("the {dest} dry-run output"), || async {
            let mut ids = shown(&read(dest));
            ids.sort();
            (ids == ["order-9001", "order-9002"]).then_some(())
        })
        .await;
    }
    requests_hold_hashes_and_no_raw_identifier(&out);
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

/// Each destination's would-be request holds the hashed email and no raw identifier or secret.
fn requests_hold_hashes_and_no_raw_identifier(out: &Path) {
    let read = |dest: &str| read(out, dest);
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
}

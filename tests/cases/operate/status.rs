//! `pgcapi status`: healthy, then unhealthy for a recent failure, retained WAL and a dropped slot.

use super::*;
use crate::support::Shop;
use crate::support::{wait_for, CONTRACT_TOML};
use pgcapi::ops::status::{self, StatusOptions};
use std::time::Duration;

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

    // THEN status is healthy (exit 0), with the slot active and one send per destination this hour.
    healthy_with_one_send_per_destination(&shop).await;

    // WHEN a delivery failed in the last hour
    unhealthy_for_a_recent_failure(&shop).await;

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
    unhealthy_for_retained_wal_and_an_unread_slot(&report);

    // WHEN the slot is dropped
    let allowing = StatusOptions {
        allow_failures: true,
        ..StatusOptions::default()
    };
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
    the_binary_says_unhealthy(&shop).await;
}

/// The built binary says the same: exit code 2, JSON on stdout, readable text without --json.
async fn the_binary_says_unhealthy(shop: &Shop) {
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

/// Status is healthy (exit 0), with the slot active and one send per destination this hour.
async fn healthy_with_one_send_per_destination(shop: &Shop) {
    let options = StatusOptions::default();
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
}

/// After a delivery failed in the last hour, status is unhealthy (exit 2) and says why, listing the
/// failure; `--allow-failures` accepts it.
async fn unhealthy_for_a_recent_failure(shop: &Shop) {
    let c = &shop.client;
    let options = StatusOptions::default();
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
}

/// Status is unhealthy for the retained WAL, and because nothing reads the slot.
fn unhealthy_for_retained_wal_and_an_unread_slot(report: &status::StatusReport) {
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
}

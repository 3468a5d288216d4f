//! Retention: old finished rows deleted in batches, failed ones kept, their keys retired.

use super::*;
use crate::support::{count, wait_count, wait_for, CONTRACT_TOML};
use crate::support::{KillOnDrop, Shop};
use pgcapi::event::Kind;
use pgcapi::ops::repair::Filters;
use pgcapi::ops::retention::{self, Batching, Target};
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::outbox;
use pgcapi::platform::Platform;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_postgres::Client;

#[tokio::test]
async fn retention_deletes_old_finished_rows_in_batches_keeps_failed_ones_and_retires_their_keys() {
    // GIVEN rows of every state, old and recent
    let (_db, c) = control_db().await;
    let ([old_failed, old_pending, recent_sent, google_40], doomed) = rows_of_every_age(&c).await;
    let conv =
        |dest: &str, p: Platform, e: &str| delivery("order_paid", dest, p, e, Kind::Conversion);
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
    purging_failed_rows_of_one_destination(&c, old_failed, batching).await;
}

/// A row of [`AGES`].
type Aged = (
    &'static str,
    Platform,
    &'static str,
    Kind,
    &'static str,
    &'static str,
    Option<&'static str>,
    bool,
);

/// Rows of every state, old and recent: destination, platform, event id, kind, state, age, last error,
/// and whether retention deletes it.
#[rustfmt::skip]
const AGES: [Aged; 10] = [
    ("meta", Platform::Meta, "k-1", Kind::Conversion, "sent", "40 days", None, true),
    ("meta", Platform::Meta, "k-2", Kind::Conversion, "skipped", "40 days", None, true),
    ("meta", Platform::Meta, "k-3", Kind::Conversion, "cancelled", "40 days", None, true),
    ("meta", Platform::Meta, "k-4", Kind::Conversion, "failed", "40 days", Some("x"), false),
    ("meta", Platform::Meta, "k-5", Kind::Conversion, "pending", "40 days", None, false),
    ("meta", Platform::Meta, "k-6", Kind::Conversion, "sent", "10 days", None, false),
    ("google", Platform::GoogleAds, "k-7", Kind::Conversion, "sent", "40 days", None, false),
    ("google", Platform::GoogleAds, "k-8", Kind::Conversion, "sent", "60 days", None, true),
    ("google", Platform::GoogleAds, "k-9", Kind::Conversion, "skipped", "40 days", None, true),
    ("google", Platform::GoogleAds, "k-7", Kind::Retraction, "sent", "40 days", None, true),
];

/// Rows of every state, old and recent, by id: the four retention keeps (Meta's old failed and old
/// pending rows, its recent sent row, Google's 40-day-old conversion, which Google can still retract),
/// and the six it deletes (a 60-day-old Google conversion goes).
async fn rows_of_every_age(c: &Client) -> ([i64; 4], Vec<i64>) {
    let (mut kept, mut doomed) = (Vec::new(), Vec::new());
    for (dest, platform, e, kind, state, age, error, goes) in AGES {
        let rule = if kind == Kind::Conversion {
            "order_paid"
        } else {
            "order_refunded"
        };
        let id = put(
            c,
            delivery(rule, dest, platform, e, kind),
            state,
            age,
            error,
        )
        .await;
        if goes {
            doomed.push(id)
        } else {
            kept.push(id)
        }
    }
    (kept.try_into().unwrap(), doomed)
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
    let sent = "select count(*) from ops.deliveries where state = 'sent'";
    wait_count(c, 30, "three sent rows", sent, 3).await;
    the_views_live_under_ops(c).await;
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
    let sent =
        "select count(*) from ops.deliveries where event_id = 'order-9002' and state = 'sent'";
    wait_count(c, 30, "the new order to be sent", sent, 3).await;
    // THEN the edit recorded nothing, and each platform counted order 9001 once.
    the_edit_recorded_nothing(&shop).await;

    // AND `pgcapi purge` reports what it would delete.
    purge_reports_what_it_would_delete(&shop, &path).await;
}

/// When failed rows are purged explicitly, for one destination, only that one goes; Meta's old failed row
/// stays.
async fn purging_failed_rows_of_one_destination(c: &Client, old_failed: i64, batching: Batching) {
    let conv =
        |dest: &str, p: Platform, e: &str| delivery("order_paid", dest, p, e, Kind::Conversion);
    put(
        c,
        conv("tiktok", Platform::Tiktok, "k-10"),
        "failed",
        "1 hour",
        Some("y"),
    )
    .await;
    let report = retention::purge(
        c,
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
    assert_eq!(state_of(c, old_failed).await, "failed");
    assert_eq!(
        count(
            c,
            "select count(*) from pgcapi.deliveries where destination = 'tiktok'"
        )
        .await,
        0
    );
}

/// The views live in the configured schema too: the send log, health and lag under `ops`.
async fn the_views_live_under_ops(c: &Client) {
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
}

/// The edit recorded nothing, and each platform counted order 9001 once.
async fn the_edit_recorded_nothing(shop: &Shop) {
    let c = &shop.client;
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
}

/// `pgcapi purge` (on demand, with its own age) reports what it would delete: order 9002's Meta and TikTok
/// rows once they are two days old (Google's are kept for retractions).
async fn purge_reports_what_it_would_delete(shop: &Shop, path: &std::path::Path) {
    let c = &shop.client;
    c.batch_execute(
        "update ops.deliveries set updated_at = now() - interval '2 days' \
                       where event_id = 'order-9002'",
    )
    .await
    .unwrap();
    let output = shop
        .binary()
        .args(["purge", "--keep", "1d", "--dry-run", "-c"])
        .arg(path)
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

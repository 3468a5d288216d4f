//! `pgcapi retry`: failed rows requeued by each filter, dry runs that change nothing, a fixed pixel.

use super::*;
use crate::support::Shop;
use crate::support::{config_from, count, wait_for, CONTRACT_TOML};
use chrono::Utc;
use pgcapi::event::{Kind, Payload};
use pgcapi::ops::repair::{self, Filters, ReplayState};
use pgcapi::platform::Platform;
use pgcapi::units::TimeRef;
use std::time::Duration;
use tokio_postgres::Client;

/// The failed conversions of the retry test: rule, destination, platform, event id, age, last error.
const FAILED: [(&str, &str, Platform, &str, &str, &str); 5] = [
    (
        "order_paid",
        "meta",
        Platform::Meta,
        "o-1",
        "3 hours",
        "meta: HTTP 400 old",
    ),
    (
        "order_paid",
        "meta",
        Platform::Meta,
        "o-2",
        "30 minutes",
        "meta: HTTP 400",
    ),
    (
        "order_paid",
        "google",
        Platform::GoogleAds,
        "o-2",
        "30 minutes",
        "google: INVALID",
    ),
    (
        "deal_won",
        "tiktok",
        Platform::Tiktok,
        "d-1",
        "10 minutes",
        "tiktok: 40002",
    ),
    (
        "order_paid",
        "meta",
        Platform::Meta,
        "o-3",
        "20 minutes",
        "meta: HTTP 400",
    ),
];

/// The rows of the retry test, by id.
#[derive(Clone, Copy)]
struct Rows {
    old_meta: i64,
    meta: i64,
    google: i64,
    deal: i64,
    refunded: i64,
    invalid: i64,
    sent: i64,
}

impl Rows {
    /// Failed rows of several destinations, rules and ages, a failed conversion that was refunded, a
    /// failed invalid row (recorded without consent), and a sent row.
    async fn put(c: &Client) -> Rows {
        let conv = |rule: &str, dest: &str, p: Platform, e: &str| {
            delivery(rule, dest, p, e, Kind::Conversion)
        };
        let mut failed = Vec::new();
        for (rule, dest, platform, event_id, age, error) in FAILED {
            let row = conv(rule, dest, platform, event_id);
            failed.push(put(c, row, "failed", age, Some(error)).await);
        }
        let retraction = delivery(
            "order_refunded",
            "meta",
            Platform::Meta,
            "o-3",
            Kind::Retraction,
        );
        put(
            c,
            retraction,
            "skipped",
            "5 minutes",
            Some("no conversion to retract"),
        )
        .await;
        let mut invalid_row = conv("order_paid", "meta", Platform::Meta, "invalid-0/1-0");
        invalid_row.payload = Payload::default();
        let invalid = put(
            c,
            invalid_row,
            "failed",
            "20 minutes",
            Some("invalid row: bad value"),
        )
        .await;
        let sent_row = conv("order_paid", "meta", Platform::Meta, "o-4");
        let sent = put(c, sent_row, "sent", "5 minutes", None).await;
        Rows {
            old_meta: failed[0],
            meta: failed[1],
            google: failed[2],
            deal: failed[3],
            refunded: failed[4],
            invalid,
            sent,
        }
    }
}

#[tokio::test]
async fn retry_requeues_failed_rows_by_each_filter_and_dry_run_changes_nothing() {
    // GIVEN failed rows of several destinations, rules and ages, a failed conversion that was refunded,
    // a failed invalid row (recorded without consent), and a sent row.
    let (db, c) = control_db().await;
    let rows = Rows::put(&c).await;
    let (listener, mut notes) = listen(&db, "pgcapi_deliveries").await;
    let mut client = db.connect().await;

    dry_runs_select_by_each_filter(&c, &mut client, rows).await;

    // WHEN the Google row is retried for real
    let before: (i32, Option<String>) = {
        let r = c
            .query_one(
                "select attempts, last_error from pgcapi.deliveries where id = $1",
                &[&rows.google],
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
    assert_eq!(ids(&report.requeued), set([rows.google]));
    let r = c
        .query_one(
            "select state, next_attempt_at <= now(), attempts, last_error, lease_owner is null \
             from pgcapi.deliveries where id = $1",
            &[&rows.google],
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
    assert_eq!(
        ids(&report.requeued),
        set([rows.old_meta, rows.meta, rows.deal])
    );
    for id in [rows.old_meta, rows.meta, rows.deal] {
        assert_eq!(state_of(&c, id).await, "pending");
    }
    for id in [rows.refunded, rows.invalid] {
        assert_eq!(state_of(&c, id).await, "failed");
    }
    assert_eq!(state_of(&c, rows.sent).await, "sent");
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
    meta_failed_it_as_permanent(&shop, meta_row).await;
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
    a_replayed_row_is_deduplicated_by_meta(&shop).await;
    dispatch.stop().await;
    capture.stop().await;
}

/// Dry runs select rows by each filter: they list the failed rows, hold back the refunded conversion
/// and the invalid row, and change nothing.
async fn dry_runs_select_by_each_filter(c: &Client, client: &mut Client, rows: Rows) {
    let Rows {
        old_meta,
        meta,
        google,
        deal,
        refunded,
        invalid,
        sent,
    } = rows;
    // WHEN dry runs select rows by each filter
    let all = dry(client, Filters::default()).await;
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
        client,
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
        client,
        Filters {
            destination: Some("meta".into()),
            ..Filters::default()
        },
    )
    .await;
    assert_eq!(ids(&by_dest.requeued), set([old_meta, meta]));
    let by_rule = dry(
        client,
        Filters {
            rule: Some("deal_won".into()),
            ..Filters::default()
        },
    )
    .await;
    assert_eq!(ids(&by_rule.requeued), set([deal]));
    dry_runs_by_time(c, client, rows).await;
}

/// Dry runs by time (since, a window, combined with other filters) select by when rows failed; and
/// none of the dry runs changed anything.
async fn dry_runs_by_time(c: &Client, client: &mut Client, rows: Rows) {
    let Rows {
        meta, google, deal, ..
    } = rows;
    let recent = dry(
        client,
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
        client,
        Filters {
            since: Some(TimeRef::At(an_hour_ago)),
            before: Some("15m".parse().unwrap()),
            ..Filters::default()
        },
    )
    .await;
    assert_eq!(ids(&window.requeued), set([meta, google]));
    let combined = dry(
        client,
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
            c,
            "select count(*) from pgcapi.deliveries where state = 'failed'"
        )
        .await,
        6
    );
}

/// When the sent row is replayed (as after a wrong destination setting), Meta receives it again and
/// deduplicates it on the event id, as the help text warns.
async fn a_replayed_row_is_deduplicated_by_meta(shop: &Shop) {
    let c = &shop.client;
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
}

/// The Meta row failed for the pixel the platform does not know, and Meta counted nothing.
async fn meta_failed_it_as_permanent(shop: &Shop, meta_row: &str) {
    let c = &shop.client;
    let r = c.query_one(meta_row, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), "failed");
    assert!(
        r.get::<_, String>(1).contains("does not exist"),
        "{:?}",
        r.get::<_, String>(1)
    );
    assert!(shop.sandbox.records().meta.events.is_empty());
}

//! The SQL views an operator reads: the masked send log, per-destination health and slot lag.

use super::*;
use crate::support::Shop;
use crate::support::{count, wait_for, CONTRACT_TOML};
use pgcapi::identity::hash;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_postgres::Client;

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
    fail_and_age_two_meta_rows(c).await;

    // THEN the send log has one line per delivery, with masked keys only.
    the_send_log_is_masked(&shop).await;

    // AND the health view counts outcomes by when they were reached, per destination.
    health_counts_outcomes_per_destination(c).await;

    // AND the README's example queries run as written.
    the_readme_queries_run(c).await;

    // AND the lag view shows the slot, its stored position, and the WAL it retains, which grows by what
    // is written while nothing reads the slot.
    capture.stop().await;
    lag_shows_the_slot_and_the_wal_it_retains(c).await;
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

/// The rarer states by SQL: one Meta row failed just now, one skipped two hours ago.
async fn fail_and_age_two_meta_rows(c: &Client) {
    c.batch_execute(
        "update pgcapi.deliveries set state = 'failed', updated_at = now(), \
           last_error = 'meta: HTTP 400 OAuthException code 100: scripted for the test' \
         where destination = 'meta' and event_id = 'order-5001' and kind = 'conversion';
         update pgcapi.deliveries set updated_at = now() - interval '2 hours' \
         where destination = 'meta' and event_id = 'order-5004'",
    )
    .await
    .unwrap();
}

/// The send log has one line per delivery, with masked keys only.
async fn the_send_log_is_masked(shop: &Shop) {
    let c = &shop.client;
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
}

/// The health view counts outcomes by when they were reached, per destination.
async fn health_counts_outcomes_per_destination(c: &Client) {
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
}

/// The README's example queries run as written.
async fn the_readme_queries_run(c: &Client) {
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
}

/// The lag view shows the slot, its stored position, and the WAL it retains, which grows by what is
/// written while nothing reads the slot.
async fn lag_shows_the_slot_and_the_wal_it_retains(c: &Client) {
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
}

//! Platforms that fail: 500s, 429s and lost answers, and an outage met only by probes.

use super::*;
use crate::support::count;
use pgcapi::platform::Platform;
use pgcapi::testbed::sandbox::{Faults, SandboxHandle, Stats};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

#[tokio::test]
async fn under_500s_429s_and_lost_answers_every_conversion_is_sent_and_counted_once() {
    // GIVEN platforms answering 20 % of requests with 500, 10 % with 429 (Retry-After: 1 s), and
    // losing the answer to 5 % after processing them; one event per request, so that attempts and
    // requests can be compared one to one
    let started = Instant::now();
    let (sandbox, db, client, config) = shop(1).await;
    sandbox.set_faults(Faults {
        error_500_ratio: 0.2,
        throttle_429_ratio: 0.1,
        retry_after_secs: 1,
        accept_then_drop_ratio: 0.05,
        latency_ms: (0, 2),
        seed: Some(2024),
        ..Faults::default()
    });
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN 200 orders are paid and 40 deals won, ten per source transaction
    for chunk in 0..24 {
        let mut sql = String::from("begin;");
        for i in 0..10 {
            let n = chunk * 10 + i;
            if n < 200 {
                sql.push_str(&paid_order(&format!("f{n}")));
            } else {
                sql.push_str(&format!(
                    "insert into leads (email, gclid, clicked_at, meta_lead_id, stage, deal_value,
                       consent, won_at)
                     values ('lead{n}@example.com', 'Cj0KCQiA-lead{n}', now() - interval '2 days',
                       '1234567890{n:05}', 'won', 900, 'granted', now());"
                ));
            }
        }
        sql.push_str("commit;");
        client.batch_execute(&sql).await.unwrap();
    }

    // THEN every conversion ends sent
    let expected = [("meta", 240), ("google", 240), ("tiktok", 200)];
    settled(&client, 680, 40).await;
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'sent'"
        )
        .await,
        680
    );
    let stats: Stats = sandbox.stats();
    for ((destination, rows), (_, platform)) in expected.into_iter().zip(DESTINATIONS) {
        counted_once_and_every_request_accounted(
            &client,
            &sandbox,
            &stats,
            destination,
            platform,
            rows,
        )
        .await;
    }
    // AND answers lost after processing made pgcapi send some events again, which the platforms'
    // dedup absorbed
    let resent: u64 = [stats.meta, stats.google_ads, stats.tiktok]
        .iter()
        .map(|c| c.duplicate_sends)
        .sum();
    assert!(resent > 0, "{stats:?}");
    for c in [stats.meta, stats.tiktok] {
        assert_eq!(c.received, c.unique + c.deduplicated, "{c:?}");
    }
    pipeline.stop().await;
    eprintln!(
        "fault load: 680 conversions, {} requests, {} faulted, {resent} resent, {:.1}s",
        stats.meta.requests + stats.google_ads.requests + stats.tiktok.requests,
        stats.meta.faulted + stats.google_ads.faulted + stats.tiktok.faulted,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn after_an_outage_only_probes_meet_it_and_the_backlog_drains_at_full_speed() {
    // GIVEN platforms that answer every request with a 500, retries that start at 20 s (a row that
    // met the outage waits up to 20 s, and longer each time), and batches of 10
    let (sandbox, db, client, mut config) = shop(10).await;
    config.dispatch.retry_initial_ms = 20_000;
    config.dispatch.retry_max_ms = 300_000;
    sandbox.set_faults(Faults {
        error_500_ratio: 1.0,
        ..Faults::default()
    });
    let pipeline = Pipeline::start(config, &db.url()).await;

    // WHEN 100 orders are paid during the outage (10 batches per destination), and the outage
    // goes on until every platform has turned away a few probes
    let mut sql = String::from("begin;");
    for i in 0..100 {
        sql.push_str(&paid_order(&format!("o{i}")));
    }
    sql.push_str("commit;");
    client.batch_execute(&sql).await.unwrap();
    let platforms = [Platform::Meta, Platform::GoogleAds, Platform::Tiktok];
    crate::support::wait_for(60, "a few probes at every platform", || async {
        let stats = sandbox.stats();
        platforms
            .iter()
            .all(|p| stats.platform(crate::support::sandbox_api(*p)).faulted >= 5)
            .then_some(())
    })
    .await;
    // THEN the outage met probes, not the backlog: fewer requests than batches waiting
    let during = sandbox.stats();
    for p in platforms {
        let faulted = during.platform(crate::support::sandbox_api(p)).faulted;
        assert!(faulted < 10, "{p:?}: {faulted} requests during the outage");
    }
    let backed_off = count(
        &client,
        "select count(*) from pgcapi.deliveries
         where state = 'pending' and next_attempt_at > now() + interval '10 seconds'",
    )
    .await;
    assert!(backed_off > 0, "no row was waiting on a long backoff");

    // WHEN the platforms answer again
    sandbox.set_faults(Faults::none());
    let recovered = Instant::now();
    // THEN every row is sent within one probe interval plus a few seconds of draining, instead of
    // waiting out its own backoff (up to 20 s and more)
    settled(&client, 300, 60).await;
    let drained = recovered.elapsed();
    let bound = pgcapi::dispatch::PROBE_MAX_INTERVAL + Duration::from_secs(5);
    assert!(drained <= bound, "drained in {drained:?}, bound {bound:?}");
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'sent'"
        )
        .await,
        300
    );
    eprintln!(
        "outage: {} / {} / {} requests turned away (meta/google/tiktok), {backed_off} rows on a \
         long backoff; drained {drained:.1?} after recovery (bound {bound:?})",
        during.meta.faulted, during.google_ads.faulted, during.tiktok.faulted
    );
    pipeline.stop().await;
}

/// The platform counted each of `destination`'s `rows` events exactly once, whatever was sent twice;
/// and the control table accounts for every request: one attempt per request, and every attempt but
/// the last of each row met a fault.
async fn counted_once_and_every_request_accounted(
    client: &Client,
    sandbox: &SandboxHandle,
    stats: &Stats,
    destination: &str,
    platform: Platform,
    rows: usize,
) {
    let counters = *stats.platform(crate::support::sandbox_api(platform));
    // AND the platform counted each event exactly once, whatever was sent twice
    let ids = counted_ids(sandbox, platform);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((ids.len(), distinct.len()), (rows, rows), "{destination}");
    assert_eq!(
        (counters.unique, counters.accepted),
        (rows as u64, rows as u64),
        "{destination}: {counters:?}"
    );
    assert!(counters.faulted > 0, "{destination}: {counters:?}");
    // AND the control table accounts for every request: one attempt per request, and every
    // attempt but the last of each row met a fault
    let row = client
        .query_one(
            "select sum(attempts)::bigint, count(*) filter (where attempts > 1),
                    min(attempts)
             from pgcapi.deliveries where destination = $1",
            &[&destination],
        )
        .await
        .unwrap();
    let (attempts, retried, min): (i64, i64, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        attempts as u64, counters.requests,
        "{destination}: {counters:?}"
    );
    assert_eq!(
        attempts as u64 - rows as u64,
        counters.faulted,
        "{destination}: {counters:?}"
    );
    assert!(
        retried > 0 && min >= 1,
        "{destination}: {retried} retried, min {min}"
    );
}

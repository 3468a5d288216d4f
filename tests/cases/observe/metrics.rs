//! Metrics and health endpoints, and JSON logs without identifiers or secrets.

use super::*;
use crate::support::Shop;
use crate::support::{count, wait_for, CONTRACT_TOML};

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
    counters_match_the_control_table(&shop, &scrape).await;

    // WHEN a second process starts on the same slot, THEN it is a ready standby, not capturing
    a_second_process_is_a_ready_standby(&shop).await;

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

/// The counters of `scrape` equal what the control table says this process did.
async fn counters_match_the_control_table(shop: &Shop, scrape: &str) {
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
                scrape,
                &format!("pgcapi_deliveries_total{{destination=\"{dest}\",state=\"sent\"}}")
            ),
            sent as f64,
            "{dest} sent\n{scrape}"
        );
        assert!(
            sample(
                scrape,
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
            scrape,
            "pgcapi_deliveries_total{destination=\"meta\",state=\"skipped\"}"
        ),
        1.0,
        "{scrape}"
    );
    let rows = count(&shop.client, "select count(*) from pgcapi.deliveries").await;
    assert_eq!(sample(scrape, "pgcapi_events_captured_total"), rows as f64);
    assert!(sample(scrape, "pgcapi_transactions_total") >= 4.0);
    assert!(sample(scrape, "pgcapi_changes_decoded_total") >= 4.0);
    assert_eq!(sample(scrape, "pgcapi_capture_active"), 1.0);
    assert!(sample(scrape, "pgcapi_confirmed_flush_lsn") > 0.0);
    assert!(scrape.contains("pgcapi_replication_lag_bytes "), "{scrape}");
    assert!(
        scrape.contains("pgcapi_dispatch_latency_seconds_count{destination=\"meta\"} 2"),
        "{scrape}"
    );
    assert!(!scrape.contains("order-7001"), "an event id became a label");
}

/// A second process on the same slot is a ready standby, not capturing.
async fn a_second_process_is_a_ready_standby(shop: &Shop) {
    let standby = shop.run(&[], "standby.log");
    let standby_url = standby.metrics_url().await;
    wait_for(30, "the standby to be ready", || async {
        (get(&format!("{standby_url}/readyz")).await?.0 == 200).then_some(())
    })
    .await;
    let (_, standby_scrape) = get(&format!("{standby_url}/metrics")).await.unwrap();
    assert_eq!(sample(&standby_scrape, "pgcapi_capture_active"), 0.0);
    drop(standby);
}

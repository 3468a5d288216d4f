//! Admin endpoints, fault injection and lifecycle tests.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{client, json_of, now_secs, sha, start};
use crate::testbed::sandbox::{Counters, Faults, Records, SandboxHandle};

/// A minimal valid Meta request body.
fn meta_body() -> Value {
    json!({"data": [{
        "event_name": "Lead", "event_time": now_secs(), "event_id": "lead-1",
        "action_source": "system_generated", "user_data": {"em": sha("a@example.com")},
    }]})
}

/// A minimal valid TikTok request body.
fn tiktok_body() -> Value {
    json!({"event_source": "crm", "event_source_id": "CRM1", "data": [{
        "event": "Lead", "event_time": now_secs(), "event_id": "lead-1", "user": {"email": sha("a@example.com")},
    }]})
}

/// Sends a valid Meta request; the result is the raw reqwest outcome so faults can be observed.
async fn send_meta(sandbox: &SandboxHandle) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!(
            "{}/v21.0/1234567890/events?access_token=t",
            sandbox.base_url()
        ))
        .json(&meta_body())
        .send()
        .await
}

#[tokio::test]
async fn the_records_endpoint_matches_the_snapshot_and_reset_clears_it() {
    let sandbox = start().await;
    send_meta(&sandbox).await.unwrap();
    let served: Records =
        json_of(client().get(format!("{}/_sandbox/records", sandbox.base_url()))).await;
    assert_eq!(served, sandbox.records());
    assert_eq!(served.meta.events.len(), 1);

    let reset = client()
        .post(format!("{}/_sandbox/reset", sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(sandbox.records(), Records::default());
    // Dedup memory is gone too: the same event counts again.
    send_meta(&sandbox).await.unwrap();
    assert_eq!(sandbox.records().meta.counters.deduplicated, 0);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_injected_500_records_nothing() {
    let sandbox = start().await;
    sandbox.set_faults(Faults {
        error_500_ratio: 1.0,
        ..Faults::default()
    });
    let response = send_meta(&sandbox).await.unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["is_transient"], true);
    let counters = sandbox.records().meta.counters;
    assert_eq!(
        (counters.requests, counters.faulted, counters.accepted),
        (1, 1, 0)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_injected_429_carries_retry_after_in_each_platform_shape() {
    let sandbox = start().await;
    let faults = json!({"throttle_429_ratio": 1.0, "retry_after_secs": 7});
    let set = client()
        .post(format!("{}/_sandbox/faults", sandbox.base_url()))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);

    let response = send_meta(&sandbox).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], 4);

    let response = client()
        .post(format!("{}/open_api/v1.3/event/track/", sandbox.base_url()))
        .header("Access-Token", "t")
        .json(&tiktok_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 40_100);

    let response = client()
        .post(format!(
            "{}/v21/customers/1234567890:uploadClickConversions",
            sandbox.base_url()
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["status"],
        "RESOURCE_EXHAUSTED"
    );
    let records = sandbox.records();
    assert!(records.meta.events.is_empty() && records.tiktok.events.is_empty());
    sandbox.shutdown().await;
}

/// Starts a sandbox with `faults`, sends one Meta batch whose answer the fault must lose, and
/// returns the sandbox with Meta's counters after it.
async fn meta_send_lost(faults: Faults) -> (SandboxHandle, Counters) {
    let sandbox = start().await;
    sandbox.set_faults(faults);
    assert!(send_meta(&sandbox).await.is_err());
    let counters = sandbox.records().meta.counters;
    (sandbox, counters)
}

#[tokio::test]
async fn a_dropped_connection_is_a_client_error_and_records_nothing() {
    let (sandbox, counters) = meta_send_lost(Faults {
        drop_connection_ratio: 1.0,
        ..Faults::default()
    })
    .await;
    assert_eq!((counters.faulted, counters.accepted), (1, 0));
    // The server keeps serving once the fault is lifted.
    sandbox.set_faults(Faults::none());
    assert_eq!(send_meta(&sandbox).await.unwrap().status(), 200);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn accept_then_drop_records_the_events_but_loses_the_response() {
    let (sandbox, counters) = meta_send_lost(Faults {
        accept_then_drop_ratio: 1.0,
        ..Faults::default()
    })
    .await;
    assert_eq!((counters.faulted, counters.accepted), (1, 1));
    assert_eq!(counters.responses_lost, 1);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let sandbox = start().await;
    sandbox.set_faults(Faults {
        latency_ms: (150, 200),
        ..Faults::default()
    });
    let started = Instant::now();
    assert_eq!(send_meta(&sandbox).await.unwrap().status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_get_a_sandbox_404() {
    let sandbox = start().await;
    let response = client()
        .get(format!("{}/nope", sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = client()
        .post(format!(
            "{}/v21/customers/1234567890:mutate",
            sandbox.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn run_until_serves_until_the_signal_fires() {
    let sandbox = start().await;
    let url = format!("{}/_sandbox/health", sandbox.base_url());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sandbox.run_until(async {
        let _ = rx.await;
    }));
    assert_eq!(
        client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(client().get(&url).send().await.is_err());
}

/// A Meta request body with one event per id.
fn meta_events(ids: &[&str]) -> Value {
    let data: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "event_name": "Lead", "event_time": now_secs(), "event_id": id,
                "action_source": "system_generated", "user_data": {"em": sha("a@example.com")},
            })
        })
        .collect();
    json!({ "data": data })
}

/// Posts a Meta body; `Err` when the connection broke.
async fn post_meta(sandbox: &SandboxHandle, body: &Value) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!(
            "{}/v21.0/1234567890/events?access_token=t",
            sandbox.base_url()
        ))
        .json(body)
        .send()
        .await
}

/// What a client saw for one request: the HTTP status, or 0 for a broken connection.
async fn status_of(sandbox: &SandboxHandle) -> u16 {
    match send_meta(sandbox).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Posts `faults` as JSON to the admin endpoint; returns the status and body.
async fn post_faults(sandbox: &SandboxHandle, faults: &Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}/_sandbox/faults", sandbox.base_url()))
        .json(faults)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[test]
fn the_same_seed_rolls_the_same_faults_and_ratios_hold() {
    let faults = Faults {
        error_500_ratio: 0.2,
        throttle_429_ratio: 0.1,
        accept_then_drop_ratio: 0.05,
        latency_ms: (0, 30),
        seed: Some(7),
        ..Faults::default()
    };
    let run = |faults: &Faults| {
        let mut rng = faults.rng();
        (0..2_000)
            .map(|_| crate::testbed::sandbox::faults::roll(faults, &mut rng))
            .collect::<Vec<_>>()
    };
    let first = run(&faults);
    assert_eq!(first, run(&faults), "a seed must give the same sequence");
    let other = run(&Faults {
        seed: Some(8),
        ..faults.clone()
    });
    assert_ne!(first, other, "another seed gives another sequence");

    use crate::testbed::sandbox::faults::Roll;
    let share = |kind: Roll| first.iter().filter(|(_, r)| *r == kind).count() as f64 / 2_000.0;
    // 20 % of all, then 10 % of the remaining 80 %, then 5 % of the remaining 72 %.
    assert!((share(Roll::ServerError) - 0.20).abs() < 0.03);
    assert!((share(Roll::Throttle) - 0.08).abs() < 0.03);
    assert!((share(Roll::AcceptThenDrop) - 0.036).abs() < 0.02);
    assert_eq!(share(Roll::Drop), 0.0);
    assert!(first.iter().all(|(d, _)| *d <= Duration::from_millis(30)));
    assert!(first.iter().any(|(d, _)| *d >= Duration::from_millis(20)));
}

#[tokio::test]
async fn seeded_faults_set_over_http_replay_the_same_statuses() {
    let sandbox = start().await;
    let faults = json!({"error_500_ratio": 0.3, "throttle_429_ratio": 0.3, "retry_after_secs": 2, "seed": 42});
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (status, echoed) = post_faults(&sandbox, &faults).await;
        assert_eq!(status, 200);
        assert_eq!(echoed["seed"], 42);
        let mut statuses = Vec::new();
        for _ in 0..30 {
            statuses.push(status_of(&sandbox).await);
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    for code in [200, 429, 500] {
        assert!(runs[0].contains(&code), "{code} missing from {:?}", runs[0]);
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn faults_over_http_accept_a_fixed_latency_and_refuse_bad_ratios() {
    let sandbox = start().await;
    let (status, echoed) = post_faults(&sandbox, &json!({"latency_ms": 40})).await;
    assert_eq!(status, 200);
    assert_eq!(echoed["latency_ms"], json!([40, 40]));
    assert_eq!(sandbox.faults().latency_ms, (40, 40));
    let (status, _) = post_faults(&sandbox, &json!({"latency_ms": [90, 10]})).await;
    assert_eq!(status, 200);
    assert_eq!(sandbox.faults().latency_ms, (10, 90));

    let (status, body) = post_faults(&sandbox, &json!({"error_500_ratio": 1.5})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("error_500_ratio"),
        "{body}"
    );
    // The refused faults did not replace the active ones.
    assert_eq!(sandbox.faults().latency_ms, (10, 90));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn stats_count_raw_traffic_apart_from_unique_events() {
    let sandbox = start().await;
    // Two events, then the same two plus a new one: 5 received, 3 unique, 2 deduplicated.
    assert_eq!(
        post_meta(&sandbox, &meta_events(&["o-1", "o-2"]))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post_meta(&sandbox, &meta_events(&["o-1", "o-2", "o-3"]))
            .await
            .unwrap()
            .status(),
        200
    );
    // A response lost on the way back: processed and counted, then the client resends it.
    sandbox.set_faults(Faults {
        accept_then_drop_ratio: 1.0,
        ..Faults::default()
    });
    assert!(post_meta(&sandbox, &meta_events(&["o-4"])).await.is_err());
    sandbox.set_faults(Faults {
        error_500_ratio: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        post_meta(&sandbox, &meta_events(&["o-4"]))
            .await
            .unwrap()
            .status(),
        500
    );
    sandbox.set_faults(Faults::none());
    assert_eq!(
        post_meta(&sandbox, &meta_events(&["o-4"]))
            .await
            .unwrap()
            .status(),
        200
    );

    let stats = sandbox.stats();
    let meta = stats.meta;
    assert_eq!(meta.requests, 5);
    assert_eq!(meta.faulted, 2);
    assert_eq!(meta.received, 7, "the 500 carried no processed event");
    assert_eq!((meta.accepted, meta.unique), (4, 4));
    assert_eq!((meta.deduplicated, meta.duplicate_sends), (3, 3));
    assert_eq!(stats.tiktok, Default::default());

    let url = format!("{}/_sandbox/stats", sandbox.base_url());
    let served: crate::testbed::sandbox::Stats = json_of(client().get(url)).await;
    assert_eq!(served, stats);
    assert_eq!(sandbox.records().meta.counters, meta);
    sandbox.shutdown().await;
}

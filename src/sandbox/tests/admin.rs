//! Admin endpoints, fault injection and lifecycle tests.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{client, now_secs, sha, start};
use crate::sandbox::{Faults, Records, SandboxHandle};

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
    let served: Records = client()
        .get(format!("{}/_sandbox/records", sandbox.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

#[tokio::test]
async fn a_dropped_connection_is_a_client_error_and_records_nothing() {
    let sandbox = start().await;
    sandbox.set_faults(Faults {
        drop_connection_ratio: 1.0,
        ..Faults::default()
    });
    assert!(send_meta(&sandbox).await.is_err());
    let counters = sandbox.records().meta.counters;
    assert_eq!((counters.faulted, counters.accepted), (1, 0));
    // The server keeps serving once the fault is lifted.
    sandbox.set_faults(Faults::none());
    assert_eq!(send_meta(&sandbox).await.unwrap().status(), 200);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn accept_then_drop_records_the_events_but_loses_the_response() {
    let sandbox = start().await;
    sandbox.set_faults(Faults {
        accept_then_drop_ratio: 1.0,
        ..Faults::default()
    });
    assert!(send_meta(&sandbox).await.is_err());
    let counters = sandbox.records().meta.counters;
    assert_eq!((counters.faulted, counters.accepted), (1, 1));
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

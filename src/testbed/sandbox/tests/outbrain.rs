//! Outbrain S2S postback tests.

use super::{client, start};
use crate::testbed::sandbox::SandboxHandle;

/// Sends a postback with `query`; returns the status and the body text.
async fn postback(sandbox: &SandboxHandle, query: &str) -> (u16, String) {
    let response = client()
        .get(format!("{}/unifiedPixel?{query}", sandbox.base_url()))
        .send()
        .await
        .expect("answered");
    (response.status().as_u16(), response.text().await.unwrap())
}

const CLICK: &str = "00a1b2c3d4e5f60718293a4b5c6d7e8f9a";

#[tokio::test]
async fn a_postback_is_answered_200_and_recorded() {
    let sandbox = start().await;
    let query = format!(
        "ob_click_id={CLICK}&name=Purchase%20S2S&orderId=o-1&orderValue=120.50&currency=EUR"
    );
    let (status, text) = postback(&sandbox, &query).await;
    assert_eq!((status, text.as_str()), (200, ""));
    let records = sandbox.records().outbrain;
    let conversion = &records.conversions[0];
    assert_eq!(conversion.ob_click_id, CLICK);
    assert_eq!(conversion.name, "Purchase S2S");
    assert_eq!(conversion.order_id.as_deref(), Some("o-1"));
    assert_eq!(conversion.order_value, Some(120.5));
    assert_eq!(conversion.currency.as_deref(), Some("EUR"));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn bad_postbacks_get_400_naming_the_parameter() {
    let sandbox = start().await;
    for (query, word) in [
        ("name=Purchase".to_string(), "ob_click_id is required"),
        (format!("ob_click_id={CLICK}"), "name is required"),
        (
            format!("ob_click_id={CLICK}&name=Purchase&orderValue=12,50"),
            "orderValue",
        ),
        (
            format!("ob_click_id={CLICK}&name=Purchase&orderValue=-5.00"),
            "negative",
        ),
        (
            format!("ob_click_id={CLICK}&name=Purchase&currency=eur"),
            "currency",
        ),
        (
            format!("ob_click_id={CLICK}&name=Purchase&orderid=o-1"),
            "orderid is not a parameter",
        ),
        (
            format!("ob_click_id={CLICK}&name=Purchase&name=Lead"),
            "twice",
        ),
        ("ob_click_id=a%20b&name=Purchase".to_string(), "whitespace"),
    ] {
        let (status, text) = postback(&sandbox, &query).await;
        assert_eq!(status, 400, "{query}");
        assert!(text.contains(word), "{word}: {text}");
    }
    let c = sandbox.records().outbrain.counters;
    assert_eq!((c.accepted, c.rejected, c.rejected_requests), (0, 8, 8));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn outbrain_documents_no_dedup_so_a_resend_counts_again_and_shows_as_a_duplicate_send() {
    let sandbox = start().await;
    let query = format!("ob_click_id={CLICK}&name=Purchase&orderId=o-1");
    assert_eq!(postback(&sandbox, &query).await.0, 200);
    assert_eq!(postback(&sandbox, &query).await.0, 200);
    let other = format!("ob_click_id={CLICK}&name=Purchase&orderId=o-2");
    assert_eq!(postback(&sandbox, &other).await.0, 200);
    let records = sandbox.records().outbrain;
    assert_eq!(records.conversions.len(), 3);
    let c = records.counters;
    assert_eq!(
        (
            c.received,
            c.accepted,
            c.unique,
            c.duplicate_sends,
            c.deduplicated
        ),
        (3, 3, 2, 1, 0)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn injected_faults_apply_to_outbrain() {
    let sandbox = start().await;
    sandbox.set_faults(crate::testbed::sandbox::Faults {
        error_500_ratio: 1.0,
        ..crate::testbed::sandbox::Faults::default()
    });
    let (status, _) = postback(&sandbox, &format!("ob_click_id={CLICK}&name=Purchase")).await;
    assert_eq!(status, 500);
    let c = sandbox.stats().outbrain;
    assert_eq!((c.requests, c.faulted, c.accepted), (1, 1, 0));
    sandbox.shutdown().await;
}

//! `pgcapi demo`, as a new user runs it.

use std::process::Command;

#[test]
fn the_demo_tells_its_story_and_exits_cleanly() {
    let output = Command::new(env!("CARGO_BIN_EXE_pgcapi"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pgcapi demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row = |event_id: &str, rule: &str, dest: &str, kind: &str, state: &str| {
        stdout.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() >= 5 && cols[..5] == [event_id, rule, dest, kind, state]
        })
    };
    for dest in ["meta", "google", "tiktok"] {
        assert!(
            row("order-1001", "order_paid", dest, "conversion", "sent"),
            "{stdout}"
        );
        assert!(
            row("order-1002", "order_paid", dest, "conversion", "skipped"),
            "{stdout}"
        );
        // Paid and refunded in one transaction: both cancelled, nothing sent.
        assert!(
            row("order-1004", "order_paid", dest, "conversion", "cancelled"),
            "{stdout}"
        );
        assert!(
            row(
                "order-1004",
                "order_refunded",
                dest,
                "retraction",
                "cancelled"
            ),
            "{stdout}"
        );
    }
    assert!(
        row(
            "order-1001",
            "order_refunded",
            "google",
            "retraction",
            "sent"
        ),
        "{stdout}"
    );
    assert!(
        row(
            "order-1001",
            "order_refunded",
            "meta",
            "retraction",
            "skipped"
        ),
        "{stdout}"
    );
    assert!(
        row("deal-1", "deal_won", "google", "conversion", "sent"),
        "{stdout}"
    );
    assert!(
        row(
            "order-1001",
            "order_refunded",
            "tiktok",
            "retraction",
            "skipped"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("RETRACTION"), "{stdout}");
    // The platforms never heard of order 1004 (the received list comes before the table).
    let received = stdout.split("pgcapi.deliveries:").next().unwrap_or("");
    assert!(!received.contains("order-1004"), "{stdout}");
    assert!(!stdout.lines().any(|l| l.contains(" pending ")), "{stdout}");
    assert!(
        !stdout.contains("Jane.Doe@Example.com") && !stdout.contains("555-1212"),
        "{stdout}"
    );
}

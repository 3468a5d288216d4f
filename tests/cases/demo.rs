//! `pgcapi demo`, as a new user runs it: the contract's four platforms, and all 11 with
//! `--all-platforms`.

use std::process::Command;

/// Runs `pgcapi demo` with `args`, checks that it succeeded, and returns what it printed.
fn demo(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_pgcapi"))
        .arg("demo")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pgcapi demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Whether the control-table section has a row starting with `cols` (event id, rule, destination,
/// kind, state).
fn row(stdout: &str, cols: [&str; 5]) -> bool {
    stdout.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.len() >= 5 && words[..5] == cols
    })
}

/// The "what each platform received" section (it comes before the control table).
fn received(stdout: &str) -> &str {
    stdout.split("pgcapi.deliveries:").next().unwrap_or("")
}

/// What no demo prints: pending rows, raw identifiers.
fn assert_settled_and_hashed(stdout: &str) {
    assert!(!stdout.lines().any(|l| l.contains(" pending ")), "{stdout}");
    assert!(
        !stdout.contains("Jane.Doe@Example.com") && !stdout.contains("555-1212"),
        "{stdout}"
    );
}

#[test]
fn the_demo_tells_its_story_and_exits_cleanly() {
    let stdout = demo(&[]);
    let row = |cols| row(&stdout, cols);
    for dest in ["meta", "google", "tiktok"] {
        assert!(
            row(["order-1001", "order_paid", dest, "conversion", "sent"]),
            "{stdout}"
        );
        assert!(
            row(["order-1002", "order_paid", dest, "conversion", "skipped"]),
            "{stdout}"
        );
        // Paid and refunded in one transaction: both cancelled, nothing sent.
        let cancelled = ["order-1004", "order_paid", dest, "conversion", "cancelled"];
        assert!(row(cancelled), "{stdout}");
        let cancelled = [
            "order-1004",
            "order_refunded",
            dest,
            "retraction",
            "cancelled",
        ];
        assert!(row(cancelled), "{stdout}");
    }
    let retracted = [
        "order-1001",
        "order_refunded",
        "google",
        "retraction",
        "sent",
    ];
    assert!(row(retracted), "{stdout}");
    for dest in ["meta", "tiktok"] {
        let skipped = [
            "order-1001",
            "order_refunded",
            dest,
            "retraction",
            "skipped",
        ];
        assert!(row(skipped), "{stdout}");
    }
    assert!(
        row(["deal-1", "deal_won", "google", "conversion", "sent"]),
        "{stdout}"
    );
    assert!(stdout.contains("RETRACTION"), "{stdout}");
    // The platforms never heard of order 1004.
    assert!(!received(&stdout).contains("order-1004"), "{stdout}");
    // Only the contract's platforms.
    assert!(!stdout.contains("snapchat"), "{stdout}");
    assert_settled_and_hashed(&stdout);
}

#[test]
fn the_all_platforms_demo_shows_what_each_of_the_11_platforms_received() {
    let stdout = demo(&["--all-platforms"]);
    assert!(stdout.contains("examples/all-platforms.toml"), "{stdout}");
    // THEN each platform's records hold order 1001 (Microsoft's, its goal: it takes no order id)
    let received = received(&stdout);
    for (platform, what, id) in [
        ("meta", "Purchase", "order-1001"),
        ("tiktok", "Purchase", "order-1001"),
        ("google", "dm conversion", "order-1001"), // google_data_manager
        ("google", "RETRACTION", "order-1001"),    // google_ads, the refund
        ("msads", "conversion", "Offline purchase"),
        ("snapchat", "PURCHASE", "order-1001"),
        ("pinterest", "checkout", "order-1001"),
        (
            "linkedin",
            "urn:lla:llaPartnerConversion:104012",
            "order-1001",
        ),
        ("reddit", "PURCHASE", "order-1001"),
        ("outbrain", "Purchase S2S", "order-1001"),
        ("taboola", "make_purchase", "order-1001"),
    ] {
        let line = format!("{platform} {what} {id}");
        let found = received.lines().any(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .starts_with(&line)
        });
        assert!(found, "{platform} did not receive {what} {id}:\n{stdout}");
    }
    assert!(!received.contains("order-1004"), "{stdout}");
    // AND the control table agrees, destination by destination
    let six = [
        "snapchat",
        "pinterest",
        "linkedin",
        "reddit",
        "outbrain",
        "taboola",
    ];
    for dest in ["meta", "google", "tiktok", "microsoft"]
        .into_iter()
        .chain(six)
    {
        let sent = ["order-1001", "order_paid", dest, "conversion", "sent"];
        assert!(row(&stdout, sent), "{dest}: {stdout}");
        let skipped = ["order-1002", "order_paid", dest, "conversion", "skipped"];
        assert!(row(&stdout, skipped), "{dest}: {stdout}");
    }
    for dest in six {
        let skipped = [
            "order-1001",
            "order_refunded",
            dest,
            "retraction",
            "skipped",
        ];
        assert!(row(&stdout, skipped), "{dest}: {stdout}");
    }
    // Outbrain and Taboola take click ids alone: order 1003 has none.
    for dest in ["outbrain", "taboola"] {
        let skipped = ["order-1003", "order_paid", dest, "conversion", "skipped"];
        assert!(row(&stdout, skipped), "{dest}: {stdout}");
    }
    assert_settled_and_hashed(&stdout);
}

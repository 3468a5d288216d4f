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

/// Whether the control-table section has a row starting with `cols`, "event_id rule destination kind
/// state" separated by spaces.
fn row(stdout: &str, cols: &str) -> bool {
    let cols: Vec<&str> = cols.split(' ').collect();
    stdout.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.len() >= cols.len() && words[..cols.len()] == cols[..]
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
    let expect = |cols: &str| assert!(row(&stdout, cols), "no row {cols}:\n{stdout}");
    for dest in ["meta", "google", "tiktok"] {
        expect(&format!("order-1001 order_paid {dest} conversion sent"));
        expect(&format!("order-1002 order_paid {dest} conversion skipped"));
        // Paid and refunded in one transaction: both cancelled, nothing sent.
        expect(&format!(
            "order-1004 order_paid {dest} conversion cancelled"
        ));
        expect(&format!(
            "order-1004 order_refunded {dest} retraction cancelled"
        ));
    }
    expect("order-1001 order_refunded google retraction sent");
    for dest in ["meta", "tiktok"] {
        expect(&format!(
            "order-1001 order_refunded {dest} retraction skipped"
        ));
    }
    expect("deal-1 deal_won google conversion sent");
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
        assert!(
            row(received, &format!("{platform} {what} {id}")),
            "{platform} did not receive {what} {id}:\n{stdout}"
        );
    }
    assert!(!received.contains("order-1004"), "{stdout}");
    // AND the control table agrees, destination by destination
    let expect = |cols: &str| assert!(row(&stdout, cols), "no row {cols}:\n{stdout}");
    let six = "snapchat pinterest linkedin reddit outbrain taboola";
    for dest in "meta google tiktok microsoft"
        .split(' ')
        .chain(six.split(' '))
    {
        expect(&format!("order-1001 order_paid {dest} conversion sent"));
        expect(&format!("order-1002 order_paid {dest} conversion skipped"));
    }
    for dest in six.split(' ') {
        expect(&format!(
            "order-1001 order_refunded {dest} retraction skipped"
        ));
    }
    // Outbrain and Taboola take click ids alone: order 1003 has none.
    for dest in ["outbrain", "taboola"] {
        expect(&format!("order-1003 order_paid {dest} conversion skipped"));
    }
    assert_settled_and_hashed(&stdout);
}

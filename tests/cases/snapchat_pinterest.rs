//! Snapchat and Pinterest end to end: `pgcapi run` on a real PostgreSQL with the shop schema, paid
//! orders delivered to the sandbox's Snapchat (v3) and Pinterest (v5) modules.
//!
//! Per platform: the hashes the sandbox records equal the `snap/pinterest` profile's vectors, one bad
//! event in a batch fails alone (both answer per event), a refund of a sent conversion is skipped
//! ("platform cannot retract"), and after `kill -9` mid-delivery the sandbox counts every order once.

use crate::support::{config_from, count, spawn_run, KillOnDrop, TestDb, SHOP_SQL};
use crate::support::{deliveries as rows, settled};
use pgcapi::testbed::sandbox::{AcceptedEvent, Counters, Faults, Sandbox, SandboxHandle};
use tokio_postgres::Client;

/// One platform under test.
#[derive(Clone, Copy)]
struct Spec {
    /// The destination section (without the rules).
    destination: &'static str,
    /// The orders column holding the platform's click id, and its match key.
    click_column: &'static str,
    /// The platform's `user_data` name of the click id.
    click_field: &'static str,
    /// The platform's purchase event name.
    purchase: &'static str,
    /// The events and counters the sandbox recorded.
    records: fn(&SandboxHandle) -> (Vec<AcceptedEvent>, Counters),
}

const SNAPCHAT: Spec = Spec {
    destination: r#"
[destinations.ads]
platform = "snapchat"
pixel_id = "snap-pixel-1"
access_token = "${ADS_TOKEN}"
endpoint = "${ADS_ENDPOINT}"
"#,
    click_column: "sc_click_id",
    click_field: "sc_click_id",
    purchase: "PURCHASE",
    records: |s| {
        let r = s.records().snapchat;
        (r.events, r.counters)
    },
};

const PINTEREST: Spec = Spec {
    destination: r#"
[destinations.ads]
platform = "pinterest"
ad_account_id = "549755885175"
access_token = "${ADS_TOKEN}"
endpoint = "${ADS_ENDPOINT}"
"#,
    click_column: "epik",
    click_field: "click_id",
    purchase: "checkout",
    records: |s| {
        let r = s.records().pinterest;
        (r.events, r.counters)
    },
};

/// The order rules, matching email, phone, the browser and the platform's click id (`{click}`).
const RULES: &str = r#"
[source]
url = "${PGCAPI_DATABASE_URL}"
publication = "pgcapi"
slot = "pgcapi"

[defaults]
region = "US"
currency = "USD"

[dispatch]
retry_initial_ms = 100
retry_max_ms = 500

[[rules]]
name = "order_paid"
table = "public.orders"
when = { status = "paid" }
event = "Purchase"
event_id = "order-{order_number}"
event_time = "{paid_at}"
value = "{total}"
currency = "{currency}"
consent = "ad_consent"
action_source = "website"
event_source_url = "{landing_page}"
destinations = ["ads"]

[rules.match]
email = "email"
phone = "phone"
client_ip = "client_ip"
user_agent = "user_agent"
{click} = "{click}"

[[rules]]
name = "order_refunded"
table = "public.orders"
when = { status = "refunded" }
retracts = "order_paid"
"#;

/// SHA-256 of `john.doe+promo@example.com` (the profile keeps dots and `+tags`).
const EMAIL_DIGEST: &str = "61355ba9fb44067b7d6a10e66925bbab40043ac739818f9f36c02bf178b80d30";
/// SHA-256 of `442079460958` (E.164 digits, no `+`, no trunk `0`).
const PHONE_DIGEST: &str = "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823";

/// A sandbox, a database set up for the platform's config, and `pgcapi run` on it.
struct Setup {
    sandbox: SandboxHandle,
    _db: TestDb,
    client: Client,
    _dir: tempfile::TempDir,
    run: KillOnDrop,
    env: Vec<(String, String)>,
    path: std::path::PathBuf,
}

async fn start(spec: Spec, dispatch_extra: &str) -> Setup {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    client
        .batch_execute(&format!(
            "alter table orders add column {} text, add column landing_page text",
            spec.click_column
        ))
        .await
        .unwrap();
    let toml = RULES
        .replace("{click}", spec.click_column)
        .replace("[dispatch]\n", &format!("[dispatch]\n{dispatch_extra}"))
        + spec.destination;
    let env: Vec<(String, String)> = vec![
        ("PGCAPI_DATABASE_URL".into(), db.url()),
        ("ADS_TOKEN".into(), "token-s3cr3t".into()),
        ("ADS_ENDPOINT".into(), sandbox.base_url()),
    ];
    let config = config_from(&toml, &env);
    pgcapi::ops::setup::setup(&config, pgcapi::ops::setup::SetupOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcapi.toml");
    std::fs::write(&path, &toml).unwrap();
    let run = spawn_run(&path, &env);
    Setup {
        sandbox,
        _db: db,
        client,
        _dir: dir,
        run,
        env,
        path,
    }
}

/// Hashes equal to the profile's vectors, one bad event failing alone, a refund skipped.
async fn profile_hashes_one_bad_event_and_a_refund(spec: Spec) {
    let s = start(spec, "").await;
    // WHEN three orders are paid in one transaction; the third's landing page lacks its scheme, which
    // both platforms refuse for that event only
    s.client
        .batch_execute(&format!(
            "begin;
             insert into orders (order_number, email, phone, {click}, client_ip, user_agent, total,
                                 currency, status, ad_consent, paid_at, landing_page)
               values ('8001', ' John.Doe+promo@Example.com ', '+44 (0)20 7946 0958', ' clk-8001 ',
                       '203.0.113.5', 'Mozilla/5.0', 120.00, 'EUR', 'paid', true, now(),
                       'https://shop.example.com/p/1');
             insert into orders (order_number, email, total, status, ad_consent, paid_at, landing_page)
               values ('8002', 'jane@example.com', 80.00, 'paid', true, now(),
                       'https://shop.example.com/p/2');
             insert into orders (order_number, email, total, status, ad_consent, paid_at, landing_page)
               values ('8003', 'late@example.com', 10.00, 'paid', true, now(), 'shop.example.com/p/3');
             commit;",
            click = spec.click_column
        ))
        .await
        .unwrap();
    // THEN two are sent and the third failed with the platform's reason
    settled(&s.client, "conversion", 3).await;
    let conversions = rows(&s.client, "conversion").await;
    assert_eq!(conversions[0].1, "sent", "{conversions:?}");
    assert_eq!(conversions[1].1, "sent", "{conversions:?}");
    assert_eq!(conversions[2].1, "failed", "{conversions:?}");
    let error = conversions[2].2.as_deref().unwrap_or_default();
    assert!(error.contains("event_source_url"), "{error}");
    let (events, counters) = (spec.records)(&s.sandbox);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (counters.accepted, counters.rejected),
        (2, 1),
        "{counters:?}"
    );
    let first = events
        .iter()
        .find(|e| e.event_id.as_deref() == Some("order-8001"))
        .expect("order 8001 recorded");
    assert_eq!(first.event_name, spec.purchase);
    assert_eq!(first.hashed["em"], vec![EMAIL_DIGEST.to_string()]);
    assert_eq!(first.hashed["ph"], vec![PHONE_DIGEST.to_string()]);
    assert_eq!(first.plain[spec.click_field], "clk-8001");
    assert_eq!(first.plain["client_ip_address"], "203.0.113.5");
    assert_eq!(first.plain["order_id"], "order-8001");
    assert_eq!(
        (first.value, first.currency.as_deref()),
        (Some(120.0), Some("EUR"))
    );
    let paid_at: i64 = s
        .client
        .query_one(
            "select floor(extract(epoch from paid_at))::bigint from orders where order_number = '8001'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(first.event_time, paid_at, "Unix seconds");

    // WHEN the sent order is refunded
    s.client
        .batch_execute("update orders set status = 'refunded' where order_number = '8001'")
        .await
        .unwrap();
    // THEN the refund is skipped: the platform cannot retract, and nothing more is sent
    settled(&s.client, "retraction", 1).await;
    let refund = &rows(&s.client, "retraction").await[0];
    assert_eq!(
        (refund.1.as_str(), refund.2.as_deref()),
        ("skipped", Some("platform cannot retract"))
    );
    assert_eq!((spec.records)(&s.sandbox).1.received, 3);
}

/// Orders paid while pgcapi is killed with SIGKILL and restarted: each counted once.
async fn kill_9_counts_each_order_once(spec: Spec) {
    let mut s = start(spec, "lease_secs = 2\n").await;
    s.sandbox.set_faults(Faults {
        latency_ms: (20, 120),
        seed: Some(17),
        ..Faults::default()
    });
    let orders: i64 = 180;
    let rounds = 6;
    for round in 0..rounds {
        for i in 0..orders / rounds {
            let n = round * (orders / rounds) + i;
            s.client
                .execute(
                    &format!(
                        "insert into orders (order_number, email, {}, total, status, ad_consent, paid_at)
                         values ($1, $1 || '@example.com', md5($1), 5.25, 'paid', true, now())",
                        spec.click_column
                    ),
                    &[&format!("9{n:04}")],
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(40 + 30 * round as u64)).await;
        s.run.kill();
        s.run = spawn_run(&s.path, &s.env);
    }
    settled(&s.client, "conversion", orders).await;
    let states = rows(&s.client, "conversion").await;
    let unsent: Vec<_> = states.iter().filter(|(_, st, _)| st != "sent").collect();
    assert!(unsent.is_empty(), "{unsent:?}");
    let (events, c) = (spec.records)(&s.sandbox);
    assert_eq!(c.unique, orders as u64, "{c:?}");
    let mut ids: Vec<String> = events.iter().filter_map(|e| e.event_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), orders as usize, "each order's conversion, once");
    assert_eq!((c.rejected, c.rejected_requests), (0, 0), "{c:?}");
    assert_eq!(c.received, orders as u64 + c.duplicate_sends, "{c:?}");
    assert_eq!(c.deduplicated, c.duplicate_sends, "{c:?}");
    let reclaims = count(
        &s.client,
        "select coalesce(sum(attempts - 1), 0)::bigint from pgcapi.deliveries where kind = 'conversion'",
    )
    .await;
    assert!(
        c.duplicate_sends <= reclaims as u64,
        "{reclaims} re-claims: {c:?}"
    );
    eprintln!("kill -9 x{rounds}: {c:?}, re-claims {reclaims}");
}

#[tokio::test]
async fn snapchat_gets_profile_hashes_fails_one_bad_event_alone_and_skips_refunds() {
    profile_hashes_one_bad_event_and_a_refund(SNAPCHAT).await;
}

#[tokio::test]
async fn pinterest_gets_profile_hashes_fails_one_bad_event_alone_and_skips_refunds() {
    profile_hashes_one_bad_event_and_a_refund(PINTEREST).await;
}

#[tokio::test]
async fn kill_9_mid_delivery_counts_every_snapchat_conversion_once() {
    kill_9_counts_each_order_once(SNAPCHAT).await;
}

#[tokio::test]
async fn kill_9_mid_delivery_counts_every_pinterest_conversion_once() {
    kill_9_counts_each_order_once(PINTEREST).await;
}

/// The one health line of destination `ads` of the platform's config, with token `token`.
async fn health(spec: Spec, sandbox: &SandboxHandle, token: &str) -> (bool, String) {
    let toml = RULES.replace("{click}", spec.click_column) + spec.destination;
    let env: Vec<(String, String)> = vec![
        ("PGCAPI_DATABASE_URL".into(), "postgres://unused/db".into()),
        ("ADS_TOKEN".into(), token.into()),
        ("ADS_ENDPOINT".into(), sandbox.base_url()),
    ];
    let config = config_from(&toml, &env);
    let dest =
        pgcapi::destinations::build("ads", &config.destinations["ads"], &config.dispatch).unwrap();
    let probe = pgcapi::destinations::Probe::new(&config, "ads");
    let mut lines = dest.healthcheck(&probe).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = lines.remove(0);
    (line.ok, line.text)
}

#[tokio::test]
async fn check_proves_each_token_and_records_no_conversion() {
    let sandbox = Sandbox::start_with_config(
        "127.0.0.1:0".parse().unwrap(),
        pgcapi::testbed::sandbox::SandboxConfig {
            snapchat_access_token: Some("right-s3cr3t".into()),
            pinterest_access_token: Some("right-s3cr3t".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for spec in [SNAPCHAT, PINTEREST] {
        let (ok, text) = health(spec, &sandbox, "right-s3cr3t").await;
        assert!(ok, "{text}");
        assert!(text.contains("nothing recorded"), "{text}");
        let (ok, text) = health(spec, &sandbox, "wrong-s3cr3t").await;
        assert!(!ok, "{text}");
        assert!(
            text.contains("HTTP 401") && !text.contains("s3cr3t"),
            "{text}"
        );
    }
    let records = sandbox.records();
    assert!(records.snapchat.events.is_empty() && records.pinterest.events.is_empty());
    // Snapchat's check is a read; Pinterest's one synthetic event went to test mode.
    assert_eq!(records.snapchat.counters.requests, 0);
    assert_eq!(records.pinterest.tested, 1);
}

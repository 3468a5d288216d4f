//! Microsoft Advertising end to end: `pgcapi run` on a real PostgreSQL with the contract's schema,
//! delivering offline conversions, retractions and restatements to the sandbox's Microsoft module.

use crate::support::{config_from, count, spawn_run, wait_for, KillOnDrop, TestDb, SHOP_SQL};
use crate::support::{deliveries as rows, settled};
use chrono::Utc;
use pgcapi::testbed::sandbox::{MicrosoftAdsRecords, Sandbox, SandboxHandle};
use tokio_postgres::Client;

mod check;

/// The contract's Microsoft destination and its order rules (paid, refunded, partially refunded).
const CONFIG: &str = r#"
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

[destinations.microsoft]
platform = "microsoft_ads"
customer_id = "1234567"
account_id = "7654321"
developer_token = "${MSADS_DEVELOPER_TOKEN}"
client_id = "${MSADS_CLIENT_ID}"
refresh_token = "${MSADS_REFRESH_TOKEN}"
endpoint = "${MSADS_ENDPOINT:-https://campaign.api.bingads.microsoft.com}"
token_endpoint = "${MSADS_OAUTH_ENDPOINT:-https://login.microsoftonline.com/common/oauth2/v2.0/token}"

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
destinations = ["microsoft"]

[rules.match]
email = "email"
phone = "phone"
msclkid = "msclkid"

[rules.microsoft]
conversion_name = "Offline purchase"

[[rules]]
name = "order_refunded"
table = "public.orders"
when = { status = "refunded" }
retracts = "order_paid"

[[rules]]
name = "order_partially_refunded"
table = "public.orders"
when = { status = "partially_refunded" }
restates = "order_paid"
value = "{net_total}"
"#;

/// A sandbox, a database with the schema set up for `toml`, and `pgcapi run` on it.
struct Setup {
    sandbox: SandboxHandle,
    _db: TestDb,
    client: Client,
    _dir: tempfile::TempDir,
    _run: KillOnDrop,
    env: Vec<(String, String)>,
    path: std::path::PathBuf,
}

async fn start(toml: &str, extra_env: &[(&str, &str)]) -> Setup {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    let base = sandbox.base_url();
    let mut env = vec![
        ("PGCAPI_DATABASE_URL".to_string(), db.url()),
        ("MSADS_DEVELOPER_TOKEN".into(), "dev-token-s3cr3t".into()),
        ("MSADS_CLIENT_ID".into(), "client-id".into()),
        ("MSADS_REFRESH_TOKEN".into(), "refresh-s3cr3t".into()),
        ("MSADS_ENDPOINT".into(), base.clone()),
        (
            "MSADS_OAUTH_ENDPOINT".into(),
            format!("{base}/common/oauth2/v2.0/token"),
        ),
    ];
    for (k, v) in extra_env {
        env.push((k.to_string(), v.replace("{base}", &base)));
    }
    let config = config_from(toml, &env);
    pgcapi::ops::setup::setup(&config, pgcapi::ops::setup::SetupOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcapi.toml");
    std::fs::write(&path, toml).unwrap();
    let run = spawn_run(&path, &env);
    Setup {
        sandbox,
        _db: db,
        client,
        _dir: dir,
        _run: run,
        env,
        path,
    }
}

const CLICK: &str = "3d5a6b0c9e2f41a8b7c6d5e4f3a2b1c0";
const LATE_CLICK: &str = "0123456789abcdef0123456789abcdef";

/// Pays three orders in one transaction: 7001 with an msclkid as the UET cookie stores it, 7002
/// with only an email, and 7003 whose conversion is timed before its click.
async fn pay_three_orders(client: &Client) {
    client
        .batch_execute(&format!(
            "begin;
             insert into orders (order_number, msclkid, total, status, ad_consent, paid_at)
               values ('7001', '_uet{CLICK}-1', 120.00, 'paid', true, now());
             insert into orders (order_number, email, total, net_total, currency, status, ad_consent, paid_at)
               values ('7002', ' Jane.Doe@Example.com ', 80.00, 80.00, 'EUR', 'paid', true, now());
             insert into orders (order_number, msclkid, total, status, ad_consent, paid_at)
               values ('7003', '{LATE_CLICK}', 10.00, 'paid', true, now());
             commit;"
        ))
        .await
        .unwrap();
}

/// Two conversions were sent, as stored, and the late one failed with Microsoft's own words.
/// Returns the conversion times of the msclkid and of the email-only conversion.
async fn assert_sent_as_stored_but_the_late_one(s: &Setup) -> (String, String) {
    let conversions = rows(&s.client, "conversion").await;
    assert_eq!(conversions[0].1, "sent", "{conversions:?}");
    assert_eq!(conversions[1].1, "sent", "{conversions:?}");
    assert_eq!(conversions[2].1, "failed", "{conversions:?}");
    assert!(
        conversions[2]
            .2
            .as_deref()
            .unwrap_or_default()
            .starts_with("ConversionTimeEarlierThanClickTime: The conversion time is earlier than the click time."),
        "{conversions:?}"
    );
    let records = s.sandbox.records().microsoft_ads;
    assert_eq!(records.conversions.len(), 2, "{records:?}");
    let by_click = records
        .conversions
        .iter()
        .find(|c| c.microsoft_click_id.as_deref() == Some(CLICK))
        .expect("the msclkid conversion, with the bare click id");
    assert_eq!(by_click.conversion_name, "Offline purchase");
    assert_eq!(by_click.value, Some(120.0));
    assert_eq!(by_click.currency.as_deref(), Some("USD"));
    let by_email = records
        .conversions
        .iter()
        .find(|c| c.microsoft_click_id.is_none())
        .expect("the email-only conversion");
    assert_eq!(
        by_email.hashed_email.as_deref(),
        Some(pgcapi::identity::hash("jane.doe@example.com").as_str())
    );
    assert_eq!(by_email.currency.as_deref(), Some("EUR"));
    // The stored time is what was sent, to the second, in UTC.
    let paid_at: String = s
        .client
        .query_one(
            "select to_char(paid_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') from orders where order_number = '7001'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(by_click.conversion_time, paid_at);

    (
        by_click.conversion_time.clone(),
        by_email.conversion_time.clone(),
    )
}

/// Microsoft got a Retract of the msclkid conversion and a Restate of the email-only one that match
/// the recorded conversions (of `click_time` and `email_time`) exactly, each counted once.
fn assert_adjustments_match(records: MicrosoftAdsRecords, click_time: &str, email_time: &str) {
    assert_eq!(records.adjustments.len(), 2, "{records:?}");
    let retract = records
        .adjustments
        .iter()
        .find(|a| a.adjustment_type == "Retract")
        .unwrap();
    assert_eq!(retract.microsoft_click_id.as_deref(), Some(CLICK));
    assert_eq!(retract.conversion_time, click_time);
    assert_eq!(retract.conversion_name, "Offline purchase");
    assert_eq!(retract.value, None);
    let restate = records
        .adjustments
        .iter()
        .find(|a| a.adjustment_type == "Restate")
        .unwrap();
    assert_eq!(restate.conversion_time, email_time);
    assert_eq!(restate.value, Some(30.0));
    assert_eq!(restate.currency.as_deref(), Some("EUR"));
    let conversions = records.conversions;
    assert!(conversions
        .iter()
        .any(|c| c.microsoft_click_id.as_deref() == Some(CLICK) && c.retracted));
    assert!(conversions.iter().any(|c| c.restated_value == Some(30.0)));
    // Counted once each: nothing was sent twice.
    assert_eq!(records.counters.unique, 4);
    assert_eq!(records.counters.duplicate_sends, 0);
}

#[tokio::test]
async fn orders_become_offline_conversions_and_refunds_retract_or_restate_them() {
    let s = start(CONFIG, &[]).await;
    // A click the sandbox knows happened after the order below says it was paid: Microsoft refuses it.
    s.sandbox
        .microsoft_click(LATE_CLICK, Utc::now() + chrono::Duration::hours(1));

    // WHEN three orders are paid in one transaction: one with an msclkid as the UET cookie stores it,
    // one with only an email, and one whose conversion is timed before its click
    pay_three_orders(&s.client).await;

    // THEN two conversions are sent and the bad one failed with Microsoft's own words
    settled(&s.client, "conversion", 3).await;
    let (click_time, email_time) = assert_sent_as_stored_but_the_late_one(&s).await;

    // WHEN the first order is refunded in full and the second in part
    s.client
        .batch_execute(
            "update orders set status = 'refunded' where order_number = '7001';
             update orders set status = 'partially_refunded', net_total = 30.00 where order_number = '7002';",
        )
        .await
        .unwrap();

    // THEN Microsoft gets a Retract and a Restate that match the recorded conversions exactly
    settled(&s.client, "retraction", 1).await;
    settled(&s.client, "restatement", 1).await;
    assert_eq!(rows(&s.client, "retraction").await[0].1, "sent");
    assert_eq!(rows(&s.client, "restatement").await[0].1, "sent");
    assert_adjustments_match(s.sandbox.records().microsoft_ads, &click_time, &email_time);
}

#[tokio::test]
async fn error_117_is_retried_after_a_minute_and_counted_once() {
    let s = start(CONFIG, &[]).await;
    // GIVEN Microsoft answers the next Apply call with 117 CallRateExceeded
    s.sandbox.microsoft_throttle(1);
    s.client
        .batch_execute(&format!(
            "insert into orders (order_number, msclkid, total, status, ad_consent, paid_at)
               values ('8001', '{CLICK}', 50.00, 'paid', true, now())"
        ))
        .await
        .unwrap();

    // THEN the row stays pending with Microsoft's error, due again no sooner than 60 s later
    let wait: f64 = wait_for(30, "the throttled attempt", || async {
        let found = s
            .client
            .query(
                "select attempts, coalesce(last_error, ''),
                        extract(epoch from next_attempt_at - now())::float8
                 from pgcapi.deliveries where event_id = 'order-8001'",
                &[],
            )
            .await
            .unwrap();
        let row = found.first()?;
        let (attempts, error, wait): (i32, String, f64) = (row.get(0), row.get(1), row.get(2));
        (attempts >= 1).then(|| {
            assert!(error.contains("CallRateExceeded (117)"), "{error}");
            wait
        })
    })
    .await;
    assert!(wait > 50.0, "due again in {wait} s");
    assert_eq!(s.sandbox.records().microsoft_ads.conversions.len(), 0);

    // WHEN the minute has passed (brought forward here)
    s.client
        .batch_execute(
            "update pgcapi.deliveries set next_attempt_at = now() where event_id = 'order-8001';
             select pg_notify('pgcapi_deliveries', '');",
        )
        .await
        .unwrap();

    // THEN it is sent, and Microsoft counted it once
    settled(&s.client, "conversion", 1).await;
    assert_eq!(rows(&s.client, "conversion").await[0].1, "sent");
    let records = s.sandbox.records().microsoft_ads;
    assert_eq!(records.conversions.len(), 1);
    assert_eq!(records.counters.faulted, 1);
    assert_eq!(records.counters.unique, 1);
}

/// TikTok with a pixel for web events and a CRM event set for won deals.
const TIKTOK_CONFIG: &str = r#"
[source]
url = "${PGCAPI_DATABASE_URL}"
publication = "pgcapi"
slot = "pgcapi"

[defaults]
region = "US"
currency = "USD"

[destinations.tiktok]
platform = "tiktok"
pixel_code = "CTEST12345"
crm_event_set_id = "7300000000000000001"
access_token = "${TIKTOK_ACCESS_TOKEN}"
endpoint = "${TIKTOK_ENDPOINT}"

[[rules]]
name = "order_paid"
table = "public.orders"
when = { status = "paid" }
event = "Purchase"
event_id = "order-{order_number}"
event_time = "{paid_at}"
value = "{total}"
currency = "{currency}"
action_source = "website"
content_ids = "sku-{order_number}"
content_type = "product"
destinations = ["tiktok"]

[rules.match]
email = "email"
ttclid = "ttclid"

[[rules]]
name = "deal_won"
table = "public.leads"
when = { stage = "won" }
event = "Purchase"
event_id = "deal-{id}"
event_time = "{won_at}"
value = "{deal_value}"
currency = "{currency}"
action_source = "system_generated"
destinations = ["tiktok"]

[rules.match]
email = "email"
lead_id = "meta_lead_id"

[rules.meta]
lead_event_source = "pgcapi"
"#;

#[tokio::test]
async fn a_won_deal_goes_to_tiktok_s_crm_event_set_with_its_lead() {
    let s = start(
        TIKTOK_CONFIG,
        &[
            ("TIKTOK_ACCESS_TOKEN", "tiktok-s3cr3t"),
            ("TIKTOK_ENDPOINT", "{base}"),
        ],
    )
    .await;
    // WHEN an order is paid and a deal with a TikTok lead id is won
    s.client
        .batch_execute(
            "insert into orders (order_number, email, ttclid, total, status, paid_at)
               values ('9001', 'a@example.com', 'E.C.P.click', 20.00, 'paid', now());
             insert into leads (email, meta_lead_id, stage, deal_value, won_at)
               values ('b@example.com', '7212345678901234567', 'won', 900.00, now());",
        )
        .await
        .unwrap();
    settled(&s.client, "conversion", 2).await;
    let conversions = rows(&s.client, "conversion").await;
    assert!(
        conversions.iter().all(|(_, state, _)| state == "sent"),
        "{conversions:?}"
    );
    // THEN the order went to the pixel as a web Purchase, and the deal to the CRM event set as a CRM
    // Purchase with its lead (not user.lead_id)
    let events = s.sandbox.records().tiktok.events;
    let order = events
        .iter()
        .find(|e| e.event_id.as_deref() == Some("order-9001"))
        .unwrap();
    assert_eq!(order.event_name, "Purchase");
    assert_eq!(order.source, "web");
    assert_eq!(order.plain["event_source_id"], "CTEST12345");
    assert!(!order.plain.contains_key("lead_id"));
    assert_eq!(order.plain["content_type"], "product");
    assert_eq!(order.plain["content_ids"], "sku-9001");
    let deal = events
        .iter()
        .find(|e| {
            e.event_id
                .as_deref()
                .is_some_and(|id| id.starts_with("deal-"))
        })
        .unwrap();
    assert_eq!(deal.event_name, "Purchase");
    assert_eq!(deal.source, "crm");
    assert_eq!(deal.plain["event_source_id"], "7300000000000000001");
    assert_eq!(deal.plain["lead_id"], "7212345678901234567");
    assert_eq!(deal.plain["lead_event_source"], "pgcapi");
    assert_eq!(deal.value, Some(900.0));
}

#[tokio::test]
async fn lost_answers_are_resent_and_microsoft_counts_each_conversion_once() {
    let s = start(CONFIG, &[]).await;
    // GIVEN half of Microsoft's answers are lost after the conversions were recorded
    s.sandbox.set_faults(pgcapi::testbed::sandbox::Faults {
        accept_then_drop_ratio: 0.5,
        seed: Some(11),
        ..pgcapi::testbed::sandbox::Faults::default()
    });
    // WHEN 20 orders are paid in separate transactions
    for i in 0..20 {
        s.client
            .execute(
                "insert into orders (order_number, msclkid, total, status, ad_consent, paid_at)
                 values ($1, md5($1), 5.00, 'paid', true, now())",
                &[&format!("61{i:02}")],
            )
            .await
            .unwrap();
    }
    // THEN all are sent, and the sandbox counted each one once whatever was resent
    settled(&s.client, "conversion", 20).await;
    let states = rows(&s.client, "conversion").await;
    assert!(
        states.iter().all(|(_, state, _)| state == "sent"),
        "{states:?}"
    );
    let records = s.sandbox.records().microsoft_ads;
    assert_eq!(records.conversions.len(), 20);
    assert_eq!(records.counters.unique, 20);
    assert!(
        records.counters.responses_lost > 0,
        "{:?}",
        records.counters
    );
    assert!(
        records.counters.duplicate_sends > 0,
        "{:?}",
        records.counters
    );
}

/// Pays `orders` orders in `rounds` rounds of small transactions, killing `pgcapi run` with SIGKILL
/// and restarting it after each round.
async fn pay_while_killing(s: &mut Setup, orders: i64, rounds: i64) {
    for round in 0..rounds {
        for i in 0..orders / rounds {
            let n = round * (orders / rounds) + i;
            s.client
                .execute(
                    "insert into orders (order_number, msclkid, total, status, ad_consent, paid_at)
                     values ($1, md5($1), $2::text::numeric, 'paid', true, now())",
                    &[&format!("7{n:04}"), &format!("{}.25", 5 + n)],
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(40 + 30 * round as u64)).await;
        s._run.kill();
        s._run = spawn_run(&s.path, &s.env);
    }
}

/// Every conversion was sent, none lost, and Microsoft counted each exactly once; resends are raw
/// resends of re-claimed rows.
async fn assert_each_conversion_counted_once(s: &Setup, orders: i64, rounds: i64) {
    let states = rows(&s.client, "conversion").await;
    assert_eq!(states.len(), orders as usize);
    let unsent: Vec<_> = states
        .iter()
        .filter(|(_, state, _)| state != "sent")
        .collect();
    assert!(unsent.is_empty(), "{unsent:?}");
    let records = s.sandbox.records().microsoft_ads;
    let counters = &records.counters;
    assert_eq!(counters.unique, orders as u64, "{counters:?}");
    let mut clicks: Vec<String> = records
        .conversions
        .iter()
        .map(|c| c.microsoft_click_id.clone().unwrap_or_default())
        .collect();
    clicks.sort();
    let expected: Vec<String> = s
        .client
        .query("select md5(order_number) from orders order by 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(clicks, expected, "each order's conversion, once");
    assert_eq!(counters.rejected, 0, "{counters:?}");
    assert_eq!(counters.rejected_requests, 0, "{counters:?}");
    // Resends are raw resends of rows a killed process had claimed: the sandbox received each item
    // once plus once per duplicate, and no more duplicates than the re-claims the control table counted.
    assert_eq!(
        counters.received,
        orders as u64 + counters.duplicate_sends,
        "{counters:?}"
    );
    assert_eq!(
        counters.deduplicated, counters.duplicate_sends,
        "{counters:?}"
    );
    let reclaims = count(
        &s.client,
        "select coalesce(sum(attempts - 1), 0)::bigint from pgcapi.deliveries where kind = 'conversion'",
    )
    .await;
    assert!(
        counters.duplicate_sends <= reclaims as u64,
        "{} duplicate sends but {reclaims} re-claims: {counters:?}",
        counters.duplicate_sends
    );
    eprintln!("kill -9 x{rounds}: {counters:?}, re-claims {reclaims}");
}

/// Exactly one Retract was applied, matching order 70007's conversion.
async fn assert_one_retract_of_70007(s: &Setup, orders: i64) {
    let records = s.sandbox.records().microsoft_ads;
    let click: String = s
        .client
        .query_one("select md5('70007')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(records.adjustments.len(), 1, "{:?}", records.adjustments);
    let retract = &records.adjustments[0];
    assert_eq!(retract.adjustment_type, "Retract");
    assert_eq!(retract.microsoft_click_id.as_deref(), Some(click.as_str()));
    let retracted: Vec<_> = records.conversions.iter().filter(|c| c.retracted).collect();
    assert_eq!(retracted.len(), 1);
    assert_eq!(
        retracted[0].microsoft_click_id.as_deref(),
        Some(click.as_str())
    );
    assert_eq!(retracted[0].conversion_time, retract.conversion_time);
    assert_eq!(records.counters.unique, orders as u64 + 1);
}

#[tokio::test]
async fn kill_9_mid_delivery_counts_every_microsoft_conversion_once_and_a_refund_retracts_once() {
    // GIVEN short leases and a slow Microsoft (requests in flight when the process dies)
    let toml = CONFIG.replace("[dispatch]\n", "[dispatch]\nlease_secs = 2\n");
    let mut s = start(&toml, &[]).await;
    s.sandbox.set_faults(pgcapi::testbed::sandbox::Faults {
        latency_ms: (20, 120),
        seed: Some(13),
        ..pgcapi::testbed::sandbox::Faults::default()
    });
    // WHEN orders are paid in many small transactions while pgcapi is killed with SIGKILL and restarted
    let orders: i64 = 240;
    let rounds = 6;
    pay_while_killing(&mut s, orders, rounds).await;
    // THEN every conversion is sent, none is lost, and Microsoft counts each exactly once
    settled(&s.client, "conversion", orders).await;
    assert_each_conversion_counted_once(&s, orders, rounds).await;

    // WHEN one of the orders is refunded after the kills
    s.client
        .batch_execute("update orders set status = 'refunded' where order_number = '70007'")
        .await
        .unwrap();
    // THEN exactly one Retract is applied, matching that order's conversion
    settled(&s.client, "retraction", 1).await;
    assert_eq!(rows(&s.client, "retraction").await[0].1, "sent");
    assert_one_retract_of_70007(&s, orders).await;
}

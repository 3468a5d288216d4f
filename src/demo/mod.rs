//! `pgcapi demo`: a throwaway PostgreSQL, the sandbox, the contract config and a short story.

use crate::capture::Capture;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::ops::setup::{self, SetupOptions};
use crate::testbed::cluster::{Cluster, ClusterOptions};
use crate::testbed::sandbox::{Sandbox, SandboxHandle};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const SHOP_SQL: &str = include_str!("../../examples/shop.sql");
const CONTRACT_TOML: &str = include_str!("../../examples/pgcapi.toml");

/// The story, one step at a time: (what happens, SQL).
const STORY: &[(&str, &str)] = &[
    (
        "order 1001 is paid by a customer who consented (email, phone, gclid, fbc, ttclid)",
        "insert into orders (order_number, email, phone, first_name, last_name, city, region, postal_code,
           country, client_ip, user_agent, fbc, fbp, gclid, ttclid, total, status, ad_consent, paid_at)
         values ('1001', 'Jane.Doe@Example.com', '(650) 555-1212', 'Jane', 'Doe', 'San Francisco',
           'California', '94105', 'US', '203.0.113.7', 'Mozilla/5.0 (demo)', 'fb.1.1700000000000.AbCd123',
           'fb.1.1700000000000.42', 'Cj0KCQiA-demo_gclid', 'E.C.P.demo', 120.00, 'paid', true, now())",
    ),
    (
        "order 1002 is paid by a customer who did not consent",
        "insert into orders (order_number, email, total, status, ad_consent, paid_at, user_agent)
         values ('1002', 'no.consent@example.com', 35.00, 'paid', false, now(), 'Mozilla/5.0 (demo)')",
    ),
    (
        "order 1003 is paid with an invalid phone number (only the email is used)",
        "insert into orders (order_number, email, phone, total, status, ad_consent, paid_at, user_agent)
         values ('1003', 'bob@example.org', 'call me maybe', 60.00, 'paid', true, now(),
           'Mozilla/5.0 (demo)')",
    ),
    (
        "a sales rep marks deal 1 won: the lead came from a Google click and a Meta click",
        "insert into leads (email, phone, first_name, last_name, country, gclid, fbclid, clicked_at,
           meta_lead_id, stage, deal_value, consent, won_at)
         values ('buyer@corp.example', '+44 20 7946 0958', 'Ann', 'Lee', 'GB', 'Cj0KCQiA-lead_gclid',
           'IwAR2demo', now() - interval '2 days', '123456789012345', 'won', 5000, 'granted', now())",
    ),
    (
        "order 1004 is paid and refunded before pgcapi could send it",
        "begin; insert into orders (order_number, email, total, status, ad_consent, paid_at, user_agent)
           values ('1004', 'quick@example.com', 80.00, 'paid', true, now(), 'Mozilla/5.0 (demo)');
         update orders set status = 'refunded' where order_number = '1004'; commit",
    ),
];

/// Runs the demo and returns the report to print.
pub async fn run() -> Result<String, String> {
    let started = Instant::now();
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("starting a throwaway PostgreSQL: {e}"))?;
    let sandbox = Sandbox::start("127.0.0.1:0".parse().expect("address"))
        .await
        .map_err(|e| format!("starting the sandbox: {e}"))?;
    let result = story(&cluster, &sandbox).await;
    sandbox.shutdown().await;
    drop(cluster);
    let mut report = result?;
    let _ = writeln!(
        report,
        "\ndemo finished in {:.1}s; the throwaway database and sandbox are gone.",
        started.elapsed().as_secs_f64()
    );
    Ok(report)
}

async fn story(cluster: &Cluster, sandbox: &SandboxHandle) -> Result<String, String> {
    let admin = setup::connect(&cluster.url("postgres"), "demo database")
        .await
        .map_err(|e| e.to_string())?;
    admin
        .batch_execute("create database shop")
        .await
        .map_err(|e| e.to_string())?;
    let url = cluster.url("shop");
    let client = setup::connect(&url, "demo database")
        .await
        .map_err(|e| e.to_string())?;
    client
        .batch_execute(SHOP_SQL)
        .await
        .map_err(|e| e.to_string())?;
    let base = sandbox.base_url();
    let env = |name: &str| -> Option<String> {
        Some(match name {
            "PGCAPI_DATABASE_URL" => url.clone(),
            "META_ENDPOINT" | "GOOGLE_ADS_ENDPOINT" | "GOOGLE_DM_ENDPOINT" | "TIKTOK_ENDPOINT" => {
                base.clone()
            }
            "GOOGLE_OAUTH_ENDPOINT" => format!("{base}/token"),
            "MSADS_ENDPOINT" => base.clone(),
            "MSADS_OAUTH_ENDPOINT" => format!("{base}/common/oauth2/v2.0/token"),
            _ => "demo-secret".to_string(),
        })
    };
    let config = Config::from_toml(CONTRACT_TOML, "examples/pgcapi.toml", &env)
        .map_err(|e| e.to_string())?;
    let report = setup::setup(&config, SetupOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::from(
        "pgcapi demo: throwaway PostgreSQL + platform sandbox + examples/pgcapi.toml\n\nsetup:\n",
    );
    out.push_str(&report.render());
    let config = Arc::new(config);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let capture = Capture::new(config.clone()).map_err(|e| e.to_string())?;
    let capture_task = tokio::spawn({
        let rx = stop_rx.clone();
        async move { capture.run(rx).await }
    });
    let destinations = crate::destinations::build_all(&config.destinations, &config.dispatch)
        .map_err(|e| e.to_string())?;
    let info: crate::pg::ConnInfo = url.parse().map_err(|e| format!("{e}"))?;
    let (dispatch_client, connection) = crate::pg::client::connect_parts(&info)
        .await
        .map_err(|e| e.to_string())?;
    let dispatcher = Dispatcher::with_connection(
        dispatch_client,
        connection,
        &config.source.schema,
        config.dispatch.clone(),
        destinations,
    );
    let dispatch_task = tokio::spawn(dispatcher.run(stop_rx));

    out.push_str("\nthe story:\n");
    for (what, sql) in STORY {
        let _ = writeln!(out, "  - {what}");
        client.batch_execute(sql).await.map_err(|e| e.to_string())?;
    }
    settle(&client, 2).await?;
    let _ = writeln!(
        out,
        "  - order 1001 is refunded after its conversion was sent"
    );
    client
        .batch_execute("update orders set status = 'refunded' where order_number = '1001'")
        .await
        .map_err(|e| e.to_string())?;
    settle(&client, 6).await?;

    let _ = stop.send(true);
    let _ = capture_task.await;
    let _ = dispatch_task.await;
    out.push_str(&received(sandbox));
    out.push_str(&rows(&client).await?);
    Ok(out)
}

/// Waits until no row is pending and at least `retractions` retraction rows exist.
async fn settle(client: &Client, retractions: i64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = client
            .query_one(
                "select count(*) filter (where state = 'pending'),
                        count(*) filter (where kind = 'retraction'), count(*)
                 from pgcapi.deliveries",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let (pending, retracts, all): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if pending == 0 && retracts >= retractions && all > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the demo did not settle: {pending} rows still pending"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn received(sandbox: &SandboxHandle) -> String {
    let records = sandbox.records();
    let mut out = String::from("\nwhat each platform received (hashes shortened):\n");
    let short = |h: &str| h.chars().take(12).collect::<String>();
    for (platform, events) in [
        ("meta", &records.meta.events),
        ("tiktok", &records.tiktok.events),
    ] {
        for e in events {
            let keys: Vec<String> = e
                .hashed
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}…",
                        short(v.first().map(String::as_str).unwrap_or(""))
                    )
                })
                .chain(e.plain.keys().map(|k| format!("{k}=(as stored)")))
                .collect();
            let _ = writeln!(
                out,
                "  {platform:<7} {:<16} {:<18} value={:<8} {}",
                e.event_name,
                e.event_id.as_deref().unwrap_or("-"),
                e.value.map(|v| v.to_string()).unwrap_or_default(),
                keys.join(" ")
            );
        }
    }
    for c in &records.google_ads.conversions {
        let _ = writeln!(
            out,
            "  {:<7} {:<16} {:<18} gclid={}",
            "google",
            "conversion",
            c.order_id.as_deref().unwrap_or("-"),
            c.gclid.as_deref().unwrap_or("-")
        );
    }
    // Google through the Data Manager API (the contract's path since June 2026): the conversions
    // as Google keeps them, with every value they had.
    for c in &records.google_data_manager.conversions {
        let values: Vec<String> = c
            .history
            .iter()
            .map(|v| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into()))
            .collect();
        let _ = writeln!(
            out,
            "  {:<7} {:<16} {:<18} value={}",
            "google",
            "dm conversion",
            c.transaction_id,
            values.join(" → ")
        );
    }
    for a in &records.google_ads.adjustments {
        let _ = writeln!(
            out,
            "  {:<7} {:<16} {:<18}",
            "google",
            a.adjustment_type,
            a.order_id.as_deref().unwrap_or("-")
        );
    }
    let microsoft = &records.microsoft_ads;
    for c in &microsoft.conversions {
        let _ = writeln!(
            out,
            "  {:<7} {:<16} {:<18} msclkid={} time={}",
            "msads",
            "conversion",
            c.conversion_name,
            c.microsoft_click_id.as_deref().unwrap_or("-"),
            c.conversion_time
        );
    }
    for a in &microsoft.adjustments {
        let _ = writeln!(
            out,
            "  {:<7} {:<16} {:<18} msclkid={} time={}",
            "msads",
            a.adjustment_type,
            a.conversion_name,
            a.microsoft_click_id.as_deref().unwrap_or("-"),
            a.conversion_time
        );
    }
    out
}

async fn rows(client: &Client) -> Result<String, String> {
    let rows = client
        .query(
            "select event_id, rule, destination, kind, state, attempts,
                    coalesce(last_error, ''), array_to_string(match_keys, ',')
             from pgcapi.deliveries order by event_id, kind, destination",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::from("\npgcapi.deliveries:\n");
    let _ = writeln!(
        out,
        "  {:<10} {:<15} {:<8} {:<11} {:<9} {:<3} {:<40} keys",
        "event_id", "rule", "dest", "kind", "state", "try", "last_error"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "  {:<10} {:<15} {:<8} {:<11} {:<9} {:<3} {:<40} {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4),
            r.get::<_, i32>(5),
            r.get::<_, String>(6).chars().take(40).collect::<String>(),
            r.get::<_, String>(7)
        );
    }
    Ok(out)
}

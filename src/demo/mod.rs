//! `pgcapi demo`: a throwaway PostgreSQL, the sandbox, the contract config (or the all-platforms one)
//! and a short story.

mod received;

use crate::capture::Capture;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::ops::setup::{self, SetupOptions};
use crate::testbed::cluster::ClusterOptions;
use crate::testbed::stage::Stage;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

const SHOP_SQL: &str = include_str!("../../examples/shop.sql");
const CONTRACT_TOML: &str = include_str!("../../examples/pgcapi.toml");
const ALL_PLATFORMS_TOML: &str = include_str!("../../examples/all-platforms.toml");
const ALL_PLATFORMS_SQL: &str = include_str!("../../examples/all-platforms.sql");

/// Which config the demo runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `examples/pgcapi.toml`, the contract: Meta, Google, TikTok and Microsoft Advertising.
    Contract,
    /// `examples/all-platforms.toml`: the contract plus Snapchat, Pinterest, LinkedIn, Reddit,
    /// Outbrain and Taboola, with the click-id columns of `examples/all-platforms.sql`.
    AllPlatforms,
}

impl Scope {
    /// The config's file name and text.
    fn config(self) -> (&'static str, &'static str) {
        match self {
            Scope::Contract => ("examples/pgcapi.toml", CONTRACT_TOML),
            Scope::AllPlatforms => ("examples/all-platforms.toml", ALL_PLATFORMS_TOML),
        }
    }

    /// The SQL run after `shop.sql`, before the set-up.
    fn schema(self) -> &'static str {
        match self {
            Scope::Contract => "",
            Scope::AllPlatforms => ALL_PLATFORMS_SQL,
        }
    }

    /// What order 1001 has beyond the contract's, the six platforms' click ids: what the story says
    /// of them, their columns and their values.
    fn click_ids(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Scope::Contract => ("", "", ""),
            Scope::AllPlatforms => (
                " and a click id for each of the six others",
                ", sc_click_id, epik, li_fat_id, rdt_cid, ob_click_id, taboola_click_id",
                ", 'demo-sc-click-id', 'dj0yJnU9demo-epik', 'demo-li-fat-id', 'demo-rdt-cid',
                 '00ab12cd34ef56ab78cd90ef12',
                 'GiDxLZcEVjwEqkGfKQMQndUYMIeZXFHmZ0DrHIJhGS6kKiDzkGUos9GzkpqG-YHQATC_demo'",
            ),
        }
    }
}

/// The story, one step at a time: (what happens, SQL). `{more_columns}` and `{more_values}` are the
/// scope's click ids ([`Scope::click_ids`]).
const STORY: &[(&str, &str)] = &[
    (
        "order 1001 is paid by a customer who consented (email, phone, gclid, fbc, ttclid)",
        "insert into orders (order_number, email, phone, first_name, last_name, city, region, postal_code,
           country, client_ip, user_agent, fbc, fbp, gclid, ttclid, total, status, ad_consent, paid_at
           {more_columns})
         values ('1001', 'Jane.Doe@Example.com', '(650) 555-1212', 'Jane', 'Doe', 'San Francisco',
           'California', '94105', 'US', '203.0.113.7', 'Mozilla/5.0 (demo)', 'fb.1.1700000000000.AbCd123',
           'fb.1.1700000000000.42', 'Cj0KCQiA-demo_gclid', 'E.C.P.demo', 120.00, 'paid', true, now()
           {more_values})",
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
pub async fn run(scope: Scope) -> Result<String, String> {
    let started = Instant::now();
    let stage = Stage::start(ClusterOptions::default()).await?;
    let result = play(&stage, scope).await;
    stage.stop().await;
    let mut report = result?;
    let _ = writeln!(
        report,
        "\ndemo finished in {:.1}s; the throwaway database and sandbox are gone.",
        started.elapsed().as_secs_f64()
    );
    Ok(report)
}

/// Sets the shop up, tells the story with capture and dispatch running, and reports.
async fn play(stage: &Stage, scope: Scope) -> Result<String, String> {
    let (client, config, mut out) = prepare(stage, scope).await?;
    // Every refund retracts order_paid at each of its destinations (sent, skipped or cancelled).
    let fanout = config
        .rules
        .iter()
        .find(|r| r.name == "order_paid")
        .map_or(0, |r| r.destinations.len() as i64);
    let workers = Workers::start(Arc::new(config), &stage.cluster.url("shop")).await?;
    let told = tell(&client, scope, fanout, &mut out).await;
    // Stopped before anything is returned, so that no worker outlives the cluster.
    workers.stop().await;
    told?;
    out.push_str(&received::render(&stage.sandbox.records()));
    out.push_str(&rows(&client).await?);
    Ok(out)
}

/// Plays the story with the workers running, and waits after each part until nothing is pending and
/// each refund's `fanout` retractions are written.
async fn tell(client: &Client, scope: Scope, fanout: i64, out: &mut String) -> Result<(), String> {
    out.push_str("\nthe story:\n");
    let (more_said, more_columns, more_values) = scope.click_ids();
    for (i, (what, sql)) in STORY.iter().enumerate() {
        let more_said = if i == 0 { more_said } else { "" };
        let _ = writeln!(out, "  - {what}{more_said}");
        let sql = sql
            .replace("{more_columns}", more_columns)
            .replace("{more_values}", more_values);
        client.batch_execute(&sql).await.map_err(sql_error)?;
    }
    settle(client, fanout).await?;
    let _ = writeln!(
        out,
        "  - order 1001 is refunded after its conversion was sent"
    );
    client
        .batch_execute("update orders set status = 'refunded' where order_number = '1001'")
        .await
        .map_err(sql_error)?;
    settle(client, 2 * fanout).await
}

/// Creates the shop database with the scope's schema, loads the scope's config with every endpoint on
/// the sandbox, and sets pgcapi up; returns a connection, the config and the report's beginning.
async fn prepare(stage: &Stage, scope: Scope) -> Result<(Client, Config, String), String> {
    let admin = setup::connect(&stage.cluster.url("postgres"), "demo database")
        .await
        .map_err(|e| e.to_string())?;
    admin
        .batch_execute("create database shop")
        .await
        .map_err(sql_error)?;
    let url = stage.cluster.url("shop");
    let client = setup::connect(&url, "demo database")
        .await
        .map_err(|e| e.to_string())?;
    for sql in [SHOP_SQL, scope.schema()] {
        client.batch_execute(sql).await.map_err(sql_error)?;
    }
    let base = stage.sandbox.base_url();
    let env = |name: &str| -> Option<String> {
        Some(match name {
            "PGCAPI_DATABASE_URL" => url.clone(),
            "GOOGLE_OAUTH_ENDPOINT" => format!("{base}/token"),
            "MSADS_OAUTH_ENDPOINT" => format!("{base}/common/oauth2/v2.0/token"),
            // Every platform's endpoint: the demo never reaches a real platform.
            n if n.ends_with("_ENDPOINT") => base.clone(),
            _ => "demo-secret".to_string(),
        })
    };
    let (file, toml) = scope.config();
    let config = Config::from_toml(toml, file, &env).map_err(|e| e.to_string())?;
    let report = setup::setup(&config, SetupOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut out =
        format!("pgcapi demo: throwaway PostgreSQL + platform sandbox + {file}\n\nsetup:\n");
    out.push_str(&report.render());
    Ok((client, config, out))
}

/// Capture and dispatch, running until [`Workers::stop`].
struct Workers {
    stop: watch::Sender<bool>,
    capture: JoinHandle<()>,
    dispatch: JoinHandle<()>,
}

impl Workers {
    /// Starts both on `config`, dispatch with its own connection to `url`.
    async fn start(config: Arc<Config>, url: &str) -> Result<Workers, String> {
        let (stop, stop_rx) = watch::channel(false);
        let capture = Capture::new(config.clone()).map_err(|e| e.to_string())?;
        let capture = tokio::spawn({
            let rx = stop_rx.clone();
            async move {
                let _ = capture.run(rx).await;
            }
        });
        let destinations = crate::destinations::build_all(&config.destinations, &config.dispatch)
            .map_err(|e| e.to_string())?;
        let info: crate::pg::ConnInfo = url.parse().map_err(|e| format!("{e}"))?;
        let (client, connection) = crate::pg::client::connect_parts(&info)
            .await
            .map_err(|e| e.to_string())?;
        let dispatcher = Dispatcher::with_connection(
            client,
            connection,
            &config.source.schema,
            config.dispatch.clone(),
            destinations,
        );
        let dispatch = tokio::spawn(async move {
            let _ = dispatcher.run(stop_rx).await;
        });
        Ok(Workers {
            stop,
            capture,
            dispatch,
        })
    }

    /// Asks both to stop and waits for them.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.capture.await;
        let _ = self.dispatch.await;
    }
}

/// A SQL error with the server's message (tokio-postgres alone says `db error`).
fn sql_error(e: tokio_postgres::Error) -> String {
    crate::pg::error_chain(&e)
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
            .map_err(sql_error)?;
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

async fn rows(client: &Client) -> Result<String, String> {
    let rows = client
        .query(
            "select event_id, rule, destination, kind, state, attempts,
                    coalesce(last_error, ''), array_to_string(match_keys, ',')
             from pgcapi.deliveries order by event_id, kind, destination",
            &[],
        )
        .await
        .map_err(sql_error)?;
    let mut out = String::from("\npgcapi.deliveries:\n");
    let _ = writeln!(
        out,
        "  {:<10} {:<15} {:<9} {:<11} {:<9} {:<3} {:<40} keys",
        "event_id", "rule", "dest", "kind", "state", "try", "last_error"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "  {:<10} {:<15} {:<9} {:<11} {:<9} {:<3} {:<40} {}",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The six platforms `examples/all-platforms.toml` adds.
    const SIX: &str = "snapchat pinterest linkedin reddit outbrain taboola";

    #[test]
    fn all_platforms_is_the_contract_plus_six_destinations_on_order_paid() {
        let contract: toml::Table = toml::from_str(CONTRACT_TOML).unwrap();
        let mut all: toml::Table = toml::from_str(ALL_PLATFORMS_TOML).unwrap();
        // WHEN the six destinations and what order_paid has for them are taken away
        let destinations = all["destinations"].as_table_mut().unwrap();
        for name in SIX.split(' ') {
            assert!(destinations.remove(name).is_some(), "{name}");
        }
        let paid = all["rules"].as_array_mut().unwrap()[0]
            .as_table_mut()
            .unwrap();
        assert_eq!(paid["name"].as_str(), Some("order_paid"));
        let to = paid["destinations"].as_array_mut().unwrap();
        to.retain(|d| !SIX.split(' ').any(|six| d.as_str() == Some(six)));
        let keys = paid["match"].as_table_mut().unwrap();
        for key in ALL_PLATFORMS_SQL.split("add column ").skip(1) {
            let column = key.split_whitespace().next().unwrap();
            assert_eq!(keys.remove(column).unwrap().as_str(), Some(column));
        }
        for section in ["linkedin", "outbrain", "taboola"] {
            assert!(paid.remove(section).is_some(), "{section}");
        }
        // THEN what is left is the contract
        assert_eq!(all, contract);
    }
}

//! Test harness: throwaway PostgreSQL clusters, one database per test, and small SQL helpers.

#![allow(dead_code)]

use pgcapi::testbed::cluster::{Cluster, ClusterOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_postgres::{Client, NoTls};

/// A database of its own in a throwaway cluster of its own.
pub struct TestDb {
    /// The cluster; stopped and deleted when the test ends.
    pub cluster: Cluster,
    /// The database name.
    pub name: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    /// Starts a fresh cluster and creates a database in it.
    pub async fn start() -> TestDb {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Starts a fresh cluster with `options` and creates a database in it.
    pub async fn start_with(options: ClusterOptions) -> TestDb {
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(options))
            .await
            .expect("cluster start task")
            .unwrap_or_else(|e| panic!("starting a throwaway PostgreSQL cluster: {e}"));
        let name = format!("t{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        let admin = connect_url(&cluster.url("postgres")).await;
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
        TestDb { cluster, name }
    }

    /// A URL for this database.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// A plain SQL connection to this database.
    pub async fn connect(&self) -> Client {
        connect_url(&self.url()).await
    }
}

/// Connects with tokio-postgres without TLS and drives the connection in the background.
pub async fn connect_url(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The shop schema of the contract (`examples/shop.sql`).
pub const SHOP_SQL: &str = include_str!("../../examples/shop.sql");

/// The three-platform config the suite runs on (`examples/pgcapi-google-ads-api.toml`: the contract's
/// shop sent to Meta, TikTok and the Google Ads API). The contract itself (`examples/pgcapi.toml`, with
/// Data Manager and Microsoft) is loaded by the config tests and runs end to end in `pgcapi demo`
/// (cases::demo).
pub const CONTRACT_TOML: &str = include_str!("../../examples/pgcapi-google-ads-api.toml");

/// Environment for the contract config: the database URL, dummy secrets, and `endpoint` for every
/// platform (a local sandbox, or an unreachable address when nothing should be sent).
pub fn contract_env(database_url: &str, endpoint: &str) -> Vec<(String, String)> {
    let mut env = vec![("PGCAPI_DATABASE_URL".to_string(), database_url.to_string())];
    for (name, value) in [
        ("META_ACCESS_TOKEN", "test-meta-token-s3cr3t"),
        ("GOOGLE_ADS_DEVELOPER_TOKEN", "test-google-dev-token-s3cr3t"),
        ("GOOGLE_ADS_CLIENT_ID", "test-client-id"),
        ("GOOGLE_ADS_CLIENT_SECRET", "test-client-secret-s3cr3t"),
        ("GOOGLE_ADS_REFRESH_TOKEN", "test-refresh-token-s3cr3t"),
        ("TIKTOK_ACCESS_TOKEN", "test-tiktok-token-s3cr3t"),
        ("LINKEDIN_ACCESS_TOKEN", "test-linkedin-token-s3cr3t"),
        ("REDDIT_ACCESS_TOKEN", "test-reddit-token-s3cr3t"),
    ] {
        env.push((name.to_string(), value.to_string()));
    }
    for name in [
        "META_ENDPOINT",
        "GOOGLE_ADS_ENDPOINT",
        "TIKTOK_ENDPOINT",
        "OUTBRAIN_ENDPOINT",
        "TABOOLA_ENDPOINT",
        "LINKEDIN_ENDPOINT",
        "REDDIT_ENDPOINT",
    ] {
        env.push((name.to_string(), endpoint.to_string()));
    }
    env.push((
        "GOOGLE_OAUTH_ENDPOINT".to_string(),
        format!("{endpoint}/token"),
    ));
    env
}

/// Parses a config text with `env` as the environment.
pub fn config_from(text: &str, env: &[(String, String)]) -> pgcapi::config::Config {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    pgcapi::config::Config::from_toml(text, "test config", &lookup)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `secs` seconds with `what`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The (event id, state, last error) of each control-table row of `kind`, by event id.
pub async fn deliveries(client: &Client, kind: &str) -> Vec<(String, String, Option<String>)> {
    client
        .query(
            "select event_id, state, last_error from pgcapi.deliveries where kind = $1 order by event_id",
            &[&kind],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Waits until `n` control-table rows of `kind` are no longer pending.
pub async fn settled(client: &Client, kind: &str, n: i64) {
    let sql = format!(
        "select count(*) from pgcapi.deliveries where kind = '{kind}' and state <> 'pending'"
    );
    wait_for(60, &format!("{n} {kind} rows to settle"), || async {
        (count(client, &sql).await == n).then_some(())
    })
    .await;
}

/// Waits (`secs` at most) until the query `sql`, returning one bigint, returns `n`.
pub async fn wait_count(client: &Client, secs: u64, what: &str, sql: &str, n: i64) {
    wait_for(secs, what, || async {
        (count(client, sql).await == n).then_some(())
    })
    .await;
}

/// Counts rows of a query returning one bigint.
pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The built `pgcapi` binary with `env` in its environment, `RUST_LOG=warn`, and its output discarded
/// (callers change any of these).
pub fn pgcapi_command(env: &[(String, String)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pgcapi"));
    command
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing test leaves no
/// `pgcapi` behind.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `pgcapi run --config {config_path}` with `env`.
pub fn spawn_run(config_path: &std::path::Path, env: &[(String, String)]) -> KillOnDrop {
    let child = pgcapi_command(env)
        .args(["run", "--config"])
        .arg(config_path)
        .spawn()
        .expect("spawn pgcapi run");
    KillOnDrop(child)
}

/// The common end-to-end setting: the sandbox standing in for every platform, a shop database set up
/// (control schema, publication, slot) for a config, and that config written to a file for the binary.
pub struct Shop {
    /// The sandbox; every destination's endpoint points at it.
    pub sandbox: pgcapi::testbed::sandbox::SandboxHandle,
    /// The database.
    pub db: TestDb,
    /// A SQL connection to it.
    pub client: Client,
    /// The environment the config reads (database URL, dummy secrets, endpoints).
    pub env: Vec<(String, String)>,
    /// The config, as `pgcapi` reads it.
    pub config: pgcapi::config::Config,
    /// Holds the config file (and any logs a test writes there).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config_path: std::path::PathBuf,
}

impl Shop {
    /// Starts it all for `toml` (the contract config, perhaps with sections appended).
    pub async fn start(toml: &str) -> Shop {
        Shop::start_after(toml, "").await
    }

    /// [`Shop::start`], running `sql` on the shop schema before the set-up (extra columns, ...).
    pub async fn start_after(toml: &str, sql: &str) -> Shop {
        let sandbox = pgcapi::testbed::sandbox::Sandbox::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let db = TestDb::start().await;
        let client = db.connect().await;
        client.batch_execute(SHOP_SQL).await.unwrap();
        client.batch_execute(sql).await.unwrap();
        let env = contract_env(&db.url(), &sandbox.base_url());
        let config = config_from(toml, &env);
        pgcapi::ops::setup::setup(&config, pgcapi::ops::setup::SetupOptions::default())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("pgcapi.toml");
        std::fs::write(&config_path, toml).unwrap();
        Shop {
            sandbox,
            db,
            client,
            env,
            config,
            dir,
            config_path,
        }
    }
}

/// The sandbox's name for a product platform (the sandbox has its own enum: it shares no code with
/// the destinations it judges).
pub fn sandbox_api(platform: pgcapi::platform::Platform) -> pgcapi::testbed::sandbox::Platform {
    use pgcapi::platform::Platform as P;
    use pgcapi::testbed::sandbox::Platform as S;
    match platform {
        P::Meta => S::Meta,
        P::GoogleAds => S::GoogleAds,
        P::Tiktok => S::Tiktok,
        P::GoogleDataManager => S::GoogleDataManager,
        P::MicrosoftAds => S::MicrosoftAds,
        P::Outbrain => S::Outbrain,
        P::Taboola => S::Taboola,
        P::Linkedin => S::Linkedin,
        P::Reddit => S::Reddit,
        P::Snapchat => S::Snapchat,
        P::Pinterest => S::Pinterest,
    }
}

/// A pending website purchase of 19.99 USD in `public.orders` for `destination`, as capture records it:
/// a conversion of `order_paid` timed now, with an empty payload but consent. Tests change what they
/// need with struct update syntax.
pub fn purchase(
    destination: &str,
    platform: pgcapi::platform::Platform,
    event_id: &str,
) -> pgcapi::event::NewDelivery {
    pgcapi::event::NewDelivery {
        rule: "order_paid".into(),
        destination: destination.into(),
        platform,
        event_id: event_id.into(),
        kind: pgcapi::event::Kind::Conversion,
        adjusts_rule: None,
        event_name: Some("Purchase".into()),
        event_time: chrono::Utc::now(),
        value: Some("19.99".into()),
        currency: Some("USD".into()),
        action_source: Some("website".into()),
        payload: pgcapi::event::Payload {
            consent: true,
            ..pgcapi::event::Payload::default()
        },
        state: pgcapi::event::State::Pending,
        last_error: None,
        source_table: "public.orders".into(),
        source_key: None,
        source_lsn: pgcapi::lsn::Lsn(0x16B3748),
        commit_time: chrono::Utc::now(),
    }
}

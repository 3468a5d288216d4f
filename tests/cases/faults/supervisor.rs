//! The process under test in the fault suite: `pgcapi run` killed with SIGKILL and restarted, PostgreSQL restarted.

use crate::support::{config_from, connect_url, contract_env, count, wait_count, TestDb};
use chrono::{DateTime, Utc};
use pgcapi::config::Config;
use pgcapi::ops::setup::{setup, SetupOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// `pgcapi run` as a child process, killed and restarted on demand; every incarnation logs to a file.
pub(super) struct Supervisor {
    pub(super) config_path: PathBuf,
    pub(super) env: Vec<(String, String)>,
    pub(super) logs: PathBuf,
    pub(super) child: Option<Child>,
    /// When the current incarnation was started.
    pub(super) spawned_at: DateTime<Utc>,
    pub(super) incarnations: u32,
    pub(super) kills: u32,
    /// Incarnations that ended by themselves, with their log tail.
    pub(super) unexpected_exits: Vec<String>,
}

impl Supervisor {
    pub(super) fn new(
        config_path: PathBuf,
        env: Vec<(String, String)>,
        logs: PathBuf,
    ) -> Supervisor {
        let mut s = Supervisor {
            config_path,
            env,
            logs,
            child: None,
            spawned_at: Utc::now(),
            incarnations: 0,
            kills: 0,
            unexpected_exits: Vec::new(),
        };
        s.spawn();
        s
    }

    pub(super) fn log_path(&self, incarnation: u32) -> PathBuf {
        self.logs.join(format!("run-{incarnation}.log"))
    }

    pub(super) fn spawn(&mut self) {
        self.incarnations += 1;
        let log = std::fs::File::create(self.log_path(self.incarnations)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_pgcapi"));
        command
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("PGCAPI_FAULT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.spawned_at = Utc::now();
        self.child = Some(command.spawn().expect("spawn pgcapi run"));
    }

    /// Notes (and replaces) an incarnation that exited by itself.
    pub(super) fn check_alive(&mut self) {
        let child = self.child.as_mut().expect("a child");
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(self.log_path(self.incarnations)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            self.unexpected_exits.push(format!(
                "incarnation {} exited by itself ({status}):\n{}",
                self.incarnations,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
            self.spawn();
        }
    }

    /// SIGKILL, then start a new incarnation at once (if the current one already ended by itself, it is
    /// noted and replaced instead).
    pub(super) fn kill_and_restart(&mut self) {
        let exits = self.unexpected_exits.len();
        self.check_alive();
        if self.unexpected_exits.len() > exits {
            return;
        }
        let child = self.child.as_mut().expect("a child");
        child.kill().unwrap();
        child.wait().unwrap();
        self.kills += 1;
        self.spawn();
    }

    pub(super) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------------------

/// The slot's confirmed_flush_lsn and the current WAL insert position, as byte offsets.
pub(super) async fn slot_and_wal(client: &Client) -> (i64, i64) {
    let row = client
        .query_one(
            "select (confirmed_flush_lsn - '0/0')::bigint, (pg_current_wal_lsn() - '0/0')::bigint \
             from pg_replication_slots where slot_name = 'pgcapi'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// True when the slot is held by a walsender that started after `since`.
pub(super) async fn slot_held_since(url: &str, since: DateTime<Utc>) -> bool {
    let client = connect_url(url).await;
    client
        .query_opt(
            "select 1 from pg_replication_slots s join pg_stat_activity a on a.pid = s.active_pid \
             where s.slot_name = 'pgcapi' and a.backend_start >= $1",
            &[&since],
        )
        .await
        .unwrap()
        .is_some()
}

/// Restarts PostgreSQL with `pg_ctl restart -m fast` while pgcapi runs, and checks that the running
/// incarnation survives it (reconnects and holds the slot again) instead of exiting.
pub(super) async fn restart_postgres(db: &TestDb, supervisor: &Mutex<Supervisor>) -> Duration {
    let url = db.url();
    let mut s = supervisor.lock().await;
    // Restart only once the current incarnation is past its start-up checks and streaming.
    let since = s.spawned_at;
    wait_for_slot(&url, &mut s, since, true, "before the restart").await;
    let pid = s.child.as_ref().unwrap().id();
    let started = Instant::now();
    // Taken before the restart: pgcapi may reconnect before `pg_ctl restart` returns (pg_ctl polls),
    // and every backend that outlives the restart started after this instant.
    let restarting_at = Utc::now();
    tokio::task::block_in_place(|| db.cluster.restart_with_mode("fast"))
        .unwrap_or_else(|e| panic!("pg_ctl restart -m fast: {e}"));
    wait_for_slot(&url, &mut s, restarting_at, false, "after the restart").await;
    let back = started.elapsed();
    let alive = s.child.as_mut().unwrap().try_wait().unwrap().is_none();
    assert!(
        alive && s.child.as_ref().unwrap().id() == pid,
        "pgcapi run exited during the PostgreSQL restart instead of reconnecting"
    );
    back
}

/// Waits until a walsender started after `since` holds the slot; replaces an incarnation that exited
/// when `respawn`; panics after 60 s with the slot's state and the current incarnation's log.
pub(super) async fn wait_for_slot(
    url: &str,
    s: &mut Supervisor,
    since: DateTime<Utc>,
    respawn: bool,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !slot_held_since(url, since).await {
        if respawn {
            s.check_alive();
        }
        if Instant::now() > deadline {
            let client = connect_url(url).await;
            let slot: Vec<String> = client
                .query(
                    "select format('%s active=%s pid=%s start=%s now=%s', s.slot_name, s.active, \
                     s.active_pid, a.backend_start, now()) from pg_replication_slots s \
                     left join pg_stat_activity a on a.pid = s.active_pid",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let status = s.child.as_mut().map(|c| c.try_wait());
            panic!(
                "pgcapi does not hold the slot {what} (since {since}): {slot:?}; child {status:?}; \
                 exits: {:?}\nlog of incarnation {}:\n{}",
                s.unexpected_exits,
                s.incarnations,
                std::fs::read_to_string(s.log_path(s.incarnations)).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One line on how far capture and dispatch have come, for the suite's progress reports.
pub(super) async fn progress(client: &Client) -> String {
    let (c, w) = slot_and_wal(client).await;
    let rows = count(client, "select count(*) from pgcapi.deliveries").await;
    let pending = count(
        client,
        "select count(*) from pgcapi.deliveries where state = 'pending'",
    )
    .await;
    format!(
        "slot behind {} kB, rows {rows}, pending {pending}",
        (w - c) / 1024
    )
}

/// Capture running on a database of `schema`, for the config `toml` with every destination at `endpoint`.
pub(super) struct Capturing {
    pub(super) db: TestDb,
    pub(super) client: Client,
    pub(super) config: Config,
    stop: tokio::sync::watch::Sender<bool>,
    pub(super) task: JoinHandle<Result<(), pgcapi::capture::CaptureError>>,
}

impl Capturing {
    pub(super) async fn start(schema: &str, toml: &str, endpoint: &str) -> Capturing {
        let db = TestDb::start().await;
        let client = db.connect().await;
        client.batch_execute(schema).await.unwrap();
        let config = config_from(toml, &contract_env(&db.url(), endpoint));
        setup(&config, SetupOptions::default()).await.unwrap();
        let capture = pgcapi::capture::Capture::new(Arc::new(config.clone())).unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { capture.run(stop_rx).await });
        Capturing {
            db,
            client,
            config,
            stop,
            task,
        }
    }

    /// Waits until the control table holds `n` rows.
    pub(super) async fn wait_rows(&self, what: &str, n: i64) {
        self.wait_count(what, "select count(*) from pgcapi.deliveries", n)
            .await;
    }

    /// Waits (30 s at most) until the count `sql` is `n`.
    pub(super) async fn wait_count(&self, what: &str, sql: &str, n: i64) {
        wait_count(&self.client, 30, what, sql, n).await;
    }

    /// Stops capture, which must end without an error.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
    }
}

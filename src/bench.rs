//! `pgcapi bench`: throughput, latency and memory on a throwaway PostgreSQL, printed as a table.
//!
//! What is measured (issue 5):
//!
//! 1. **Decode ratio**: rows/s of pgcapi capture when no rule matches (decode and rule evaluation only)
//!    divided by rows/s of `pg_recvlogical` (pgoutput v1, to `/dev/null`) on the same WAL, for (a) many
//!    small transactions and (b) one large one.
//! 2. **Capture ratio**: the same with every row matching one rule and one destination (decode, rules,
//!    hashing and the control-table insert; dispatch off).
//! 3. **End-to-end**: conversions/s from a backlog of committed orders to `sent` through the sandbox, with
//!    one and with three destinations.
//! 4. **Latency** at a steady 1,000 changes/s: from the commit to the sandbox receiving the request.
//! 5. **Peak RSS** of the capture process during (b).
//!
//! "Same WAL" is literal: the replication slots of every timed run are created before the workload is
//! written, so `pg_recvlogical` and pgcapi read exactly the same stretch of WAL, up to the same end LSN.
//! Capture runs as a child process (`pgcapi bench-capture`, hidden) that stops at that LSN
//! ([`Capture::stop_at`]) and reports its own peak RSS and CPU time; both programs are timed from spawn
//! to exit by this process.

use crate::capture::Capture;
use crate::config::Config;
use crate::lsn::Lsn;
use crate::ops::setup::{self, SetupOptions};
use crate::testbed::cluster::{Cluster, ClusterOptions};
use crate::testbed::sandbox::{Sandbox, SandboxHandle};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const SHOP_SQL: &str = include_str!("../examples/shop.sql");
const CONTRACT_TOML: &str = include_str!("../examples/pgcapi-google-ads-api.toml");

/// Server settings of the benchmark cluster, besides those every throwaway cluster has
/// (`fsync = off`, `synchronous_commit = off`, `full_page_writes = off`: see [`crate::testbed::cluster`]).
pub const CLUSTER_SETTINGS: &[&str] = &[
    "shared_buffers = '256MB'",
    "max_wal_size = '8GB'",
    "checkpoint_timeout = '30min'",
];

/// How big a run is.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// A smaller run (a tenth of the rows, a shorter latency run) to check that everything works.
    pub quick: bool,
    /// How many times each ratio measurement is repeated (the best run of each program is reported).
    pub repeats: usize,
    /// Run only these measurements (`decode`, `capture`, `e2e`, `latency`); all when empty.
    pub only: Vec<String>,
}

impl BenchOptions {
    /// True when the measurement `name` is to run.
    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// Environment variable: a command (split on spaces) that wraps every `pgcapi bench-capture` child, e.g.
/// `valgrind --tool=callgrind` to profile capture on exactly the benchmark's WAL.
pub const CAPTURE_WRAPPER_ENV: &str = "PGCAPI_BENCH_CAPTURE_WRAPPER";

/// Workload sizes.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// (a): number of transactions.
    small_txs: usize,
    /// (a): rows per transaction.
    rows_per_tx: usize,
    /// (b): rows of the one transaction.
    big_rows: usize,
    /// End-to-end: conversions in the backlog.
    e2e_conversions: usize,
    /// Latency: how long the producer runs.
    latency_secs: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                small_txs: 1_000,
                rows_per_tx: 100,
                big_rows: 100_000,
                e2e_conversions: 20_000,
                latency_secs: 5,
            }
        } else {
            Sizes {
                small_txs: 10_000,
                rows_per_tx: 100,
                big_rows: 1_000_000,
                e2e_conversions: 100_000,
                latency_secs: 30,
            }
        }
    }
}

/// The figures of one `pgcapi bench` run.
#[derive(Debug, Default)]
struct Results {
    machine: String,
    ratios: Vec<RatioResult>,
    e2e: Vec<EndToEnd>,
    latency: Option<Latency>,
}

/// One ratio measurement: pgcapi against `pg_recvlogical` on the same WAL.
#[derive(Debug)]
struct RatioResult {
    /// "decode" or "capture".
    measure: &'static str,
    /// "(a) 10000 tx × 100 rows" and the like.
    workload: String,
    /// Is this the (a) shape?
    small: bool,
    rows: usize,
    /// Best (shortest) run of each, in seconds.
    pgcapi_secs: f64,
    recvlogical_secs: f64,
    /// Of the best pgcapi run.
    pgcapi_cpu_secs: f64,
    /// Server CPU during the best pgcapi run.
    capture_server: ServerCpu,
    /// Server CPU during the best `pg_recvlogical` run.
    recvlogical_server: ServerCpu,
    /// Highest peak RSS over the pgcapi runs, KiB.
    peak_rss_kib: u64,
}

impl RatioResult {
    fn ratio(&self) -> f64 {
        self.recvlogical_secs / self.pgcapi_secs
    }
}

/// One end-to-end measurement.
#[derive(Debug)]
struct EndToEnd {
    destinations: usize,
    conversions: usize,
    /// From pgcapi's start until the last control row was written.
    captured_secs: f64,
    /// From pgcapi's start until the last row was sent.
    sent_secs: f64,
    /// Rows not `sent` at the end (failed, skipped) — should be none.
    not_sent: i64,
    /// CPU seconds of the `pgcapi run` process.
    pgcapi_cpu: f64,
    /// CPU seconds of this process (the sandbox, and the benchmark's polling) during the run.
    sandbox_cpu: f64,
    /// CPU seconds of the server processes.
    server: ServerCpu,
}

/// The latency measurement.
#[derive(Debug)]
struct Latency {
    changes: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// What `pgcapi bench-capture` prints on its last line.
#[derive(Debug, Serialize, Deserialize)]
pub struct CaptureReport {
    /// Row changes decoded.
    pub changes: u64,
    /// Control-table rows written.
    pub rows_inserted: u64,
    /// Wall time inside the process, from before connecting to the stop.
    pub seconds: f64,
    /// User + system CPU time of the process.
    pub cpu_seconds: f64,
    /// Peak resident set (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
}

/// Runs the benchmark and returns the report (a Markdown table and notes).
pub async fn run(options: BenchOptions) -> Result<String, String> {
    for name in &options.only {
        if !["decode", "capture", "e2e", "latency"].contains(&name.as_str()) {
            return Err(format!(
                "--only {name}: expected decode, capture, e2e or latency"
            ));
        }
    }
    let sizes = Sizes::new(options.quick);
    let repeats = options.repeats.max(1);
    let exe = std::env::current_exe().map_err(|e| format!("locating the pgcapi binary: {e}"))?;
    let recvlogical = crate::testbed::cluster::find_bin_dir()
        .map(|d| d.join("pg_recvlogical"))
        .filter(|p| p.is_file())
        .ok_or("pg_recvlogical not found beside initdb (install the PostgreSQL client tools)")?;
    eprintln!("bench: starting a throwaway PostgreSQL");
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(ClusterOptions {
            extra_conf: CLUSTER_SETTINGS.iter().map(|s| s.to_string()).collect(),
            ..ClusterOptions::default()
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("starting a throwaway PostgreSQL: {e}"))?;
    let sandbox = Sandbox::start("127.0.0.1:0".parse().expect("address"))
        .await
        .map_err(|e| format!("starting the sandbox: {e}"))?;
    let work = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let bench = Bench {
        cluster: &cluster,
        sandbox: &sandbox,
        exe,
        recvlogical,
        dir: work.path().to_path_buf(),
        sizes,
        repeats,
        options: options.clone(),
    };
    let result = bench.all().await;
    sandbox.shutdown().await;
    drop(cluster);
    Ok(result?.render(&options, sizes))
}

/// Everything a benchmark step needs.
struct Bench<'a> {
    cluster: &'a Cluster,
    sandbox: &'a SandboxHandle,
    exe: PathBuf,
    recvlogical: PathBuf,
    dir: PathBuf,
    sizes: Sizes,
    repeats: usize,
    options: BenchOptions,
}

/// Which rows the workload writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// `status = 'pending'`: no rule matches.
    Unmatched,
    /// `status = 'paid'`: every row matches `order_paid`.
    Paid,
}

impl Bench<'_> {
    async fn all(&self) -> Result<Results, String> {
        let mut results = Results {
            machine: self.machine().await?,
            ..Results::default()
        };
        let admin = self.connect("postgres").await?;
        admin
            .batch_execute("create database ratios")
            .await
            .map_err(|e| e.to_string())?;
        let client = self.connect("ratios").await?;
        client
            .batch_execute(SHOP_SQL)
            .await
            .map_err(|e| e.to_string())?;
        let config = self.config_text("bench_setup", &["meta"]);
        setup::setup(
            &self.parse_config(&config, "ratios")?,
            SetupOptions::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        client
            .batch_execute("select pg_drop_replication_slot('bench_setup')")
            .await
            .map_err(|e| e.to_string())?;
        let small = format!(
            "(a) {} tx × {} rows",
            self.sizes.small_txs, self.sizes.rows_per_tx
        );
        let big = format!("(b) 1 tx × {} rows", self.sizes.big_rows);
        for (measure, rows) in [("decode", Rows::Unmatched), ("capture", Rows::Paid)] {
            if !self.options.runs(measure) {
                continue;
            }
            for (workload, is_small) in [(&small, true), (&big, false)] {
                eprintln!("bench: {measure} ratio, {workload}");
                let r = self
                    .ratio(&client, measure, rows, workload.clone(), is_small)
                    .await?;
                eprintln!(
                    "bench:   pgcapi {:.2}s, pg_recvlogical {:.2}s, ratio {:.2}, peak RSS {} MiB",
                    r.pgcapi_secs,
                    r.recvlogical_secs,
                    r.ratio(),
                    r.peak_rss_kib / 1024
                );
                results.ratios.push(r);
            }
        }
        drop(client);
        admin
            .batch_execute("drop database ratios")
            .await
            .map_err(|e| e.to_string())?;
        for destinations in [1, 3] {
            if !self.options.runs("e2e") {
                break;
            }
            eprintln!("bench: end-to-end, {destinations} destination(s)");
            let e = self.end_to_end(&admin, destinations).await?;
            eprintln!(
                "bench:   {} conversions sent in {:.2}s",
                e.conversions, e.sent_secs
            );
            results.e2e.push(e);
        }
        if self.options.runs("latency") {
            eprintln!("bench: latency at 1,000 changes/s");
            results.latency = Some(self.latency(&admin).await?);
        }
        Ok(results)
    }

    /// CPU, cores, memory, PostgreSQL version and load: the context of the figures.
    async fn machine(&self) -> Result<String, String> {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown CPU".to_string());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let load = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let version: String = self
            .connect("postgres")
            .await?
            .query_one("show server_version", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        Ok(format!(
            "{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, PostgreSQL {version}, load average at start {load}"
        ))
    }

    async fn connect(&self, database: &str) -> Result<Client, String> {
        setup::connect(&self.cluster.url(database), "benchmark database")
            .await
            .map_err(|e| e.to_string())
    }

    /// The contract config with its own slot and the given destinations for `order_paid`.
    fn config_text(&self, slot: &str, destinations: &[&str]) -> String {
        let list = destinations
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ");
        CONTRACT_TOML
            .replacen("slot = \"pgcapi\"", &format!("slot = \"{slot}\""), 1)
            .replacen(
                "destinations = [\"meta\", \"google\", \"tiktok\"]",
                &format!("destinations = [{list}]"),
                1,
            )
    }

    /// The environment the config reads: database URL, dummy secrets, the sandbox as every endpoint.
    fn env(&self, database: &str) -> Vec<(String, String)> {
        let base = self.sandbox.base_url();
        let mut env = vec![
            (
                "PGCAPI_DATABASE_URL".to_string(),
                self.cluster.url(database),
            ),
            ("GOOGLE_OAUTH_ENDPOINT".to_string(), format!("{base}/token")),
        ];
        for name in ["META_ENDPOINT", "GOOGLE_ADS_ENDPOINT", "TIKTOK_ENDPOINT"] {
            env.push((name.to_string(), base.clone()));
        }
        for name in [
            "META_ACCESS_TOKEN",
            "GOOGLE_ADS_DEVELOPER_TOKEN",
            "GOOGLE_ADS_CLIENT_ID",
            "GOOGLE_ADS_CLIENT_SECRET",
            "GOOGLE_ADS_REFRESH_TOKEN",
            "TIKTOK_ACCESS_TOKEN",
        ] {
            env.push((name.to_string(), "bench-secret".to_string()));
        }
        env
    }

    fn parse_config(&self, text: &str, database: &str) -> Result<Config, String> {
        let env = self.env(database);
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Config::from_toml(text, "bench config", &lookup).map_err(|e| e.to_string())
    }

    /// Writes a config file for a child process.
    fn write_config(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// A `pgcapi` child process with the config's environment; stderr goes to a log file.
    fn pgcapi(&self, database: &str, args: &[&str], log: &str) -> Result<Command, String> {
        let wrapper = std::env::var(CAPTURE_WRAPPER_ENV).unwrap_or_default();
        let mut wrapper = wrapper
            .split_whitespace()
            .filter(|_| args[0] == "bench-capture");
        let mut command = match wrapper.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(wrapper).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        command.args(args).stdin(Stdio::null());
        let log_path = self.dir.join(log);
        let log_file = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        command
            .stderr(log_file)
            .env("RUST_LOG", "warn")
            .env_remove("PGHOST");
        for (k, v) in self.env(database) {
            command.env(k, v);
        }
        Ok(command)
    }

    fn log_tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// One ratio measurement: slots first, then the workload, then each program on its own slot.
    async fn ratio(
        &self,
        client: &Client,
        measure: &'static str,
        rows: Rows,
        workload: String,
        small: bool,
    ) -> Result<RatioResult, String> {
        let tag = format!("{measure}_{}", if small { "a" } else { "b" });
        let mut slots = Vec::new();
        for k in 0..self.repeats {
            for program in ["recv", "cap"] {
                let slot = format!("bench_{tag}_{program}_{k}");
                client
                    .execute(
                        "select pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[&slot],
                    )
                    .await
                    .map_err(|e| {
                        format!("creating slot {slot}: {}", crate::pg::client::describe(&e))
                    })?;
                slots.push(slot);
            }
        }
        let total = if small {
            self.write_small_txs(client, &tag, rows).await?
        } else {
            self.write_big_tx(client, &tag, rows).await?
        };
        let end: String = client
            .query_one("select pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let mut best_recv: Option<Run> = None;
        let mut best_cap: Option<(Run, CaptureReport)> = None;
        let mut peak = 0;
        for k in 0..self.repeats {
            let recv = self
                .time_recvlogical(client, &format!("bench_{tag}_recv_{k}"), &end)
                .await?;
            if best_recv.as_ref().is_none_or(|b| recv.secs < b.secs) {
                best_recv = Some(recv);
            }
            client
                .batch_execute("truncate pgcapi.deliveries")
                .await
                .map_err(|e| e.to_string())?;
            let (run, report) = self
                .time_capture(client, &format!("bench_{tag}_cap_{k}"), &end)
                .await?;
            if report.changes != total as u64 {
                return Err(format!(
                    "pgcapi capture decoded {} changes of {total} before {end}",
                    report.changes
                ));
            }
            let expected = if rows == Rows::Paid { total as u64 } else { 0 };
            if report.rows_inserted != expected {
                return Err(format!(
                    "pgcapi capture wrote {} control rows, expected {expected}",
                    report.rows_inserted
                ));
            }
            peak = peak.max(report.peak_rss_kib);
            if best_cap.as_ref().is_none_or(|(b, _)| run.secs < b.secs) {
                best_cap = Some((run, report));
            }
        }
        let recv = best_recv.ok_or("no run")?;
        let (cap, report) = best_cap.ok_or("no run")?;
        for slot in &slots {
            client
                .execute("select pg_drop_replication_slot($1)", &[slot])
                .await
                .map_err(|e| {
                    format!("dropping slot {slot}: {}", crate::pg::client::describe(&e))
                })?;
        }
        client
            .batch_execute("truncate orders; truncate pgcapi.deliveries; checkpoint")
            .await
            .map_err(|e| e.to_string())?;
        Ok(RatioResult {
            measure,
            workload,
            small,
            rows: total,
            pgcapi_secs: cap.secs,
            recvlogical_secs: recv.secs,
            pgcapi_cpu_secs: report.cpu_seconds,
            capture_server: cap.server,
            recvlogical_server: recv.server,
            peak_rss_kib: peak,
        })
    }

    /// (a): many transactions of `rows_per_tx` rows, committed one by one in a `DO` block.
    async fn write_small_txs(
        &self,
        client: &Client,
        tag: &str,
        rows: Rows,
    ) -> Result<usize, String> {
        let (txs, per) = (self.sizes.small_txs, self.sizes.rows_per_tx);
        let select = order_select(tag, rows, "g");
        let sql = format!(
            "do $$ begin for t in 0..{last} loop \
               insert into orders {COLUMNS} {select} \
               from generate_series(t * {per} + 1, (t + 1) * {per}) g; \
               commit; \
             end loop; end $$",
            last = txs - 1
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| e.to_string())?;
        Ok(txs * per)
    }

    /// (b): one transaction of `big_rows` rows.
    async fn write_big_tx(&self, client: &Client, tag: &str, rows: Rows) -> Result<usize, String> {
        let n = self.sizes.big_rows;
        let select = order_select(tag, rows, "g");
        client
            .batch_execute(&format!(
                "insert into orders {COLUMNS} {select} from generate_series(1, {n}) g"
            ))
            .await
            .map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// Runs `pg_recvlogical` on `slot` up to `end`, output to /dev/null.
    async fn time_recvlogical(
        &self,
        client: &Client,
        slot: &str,
        end: &str,
    ) -> Result<Run, String> {
        let mut command = Command::new(&self.recvlogical);
        command
            .args([
                "--dbname",
                &format!(
                    "host=127.0.0.1 port={} dbname=ratios user={} sslmode=disable",
                    self.cluster.port(),
                    crate::testbed::cluster::SUPERUSER
                ),
                "--slot",
                slot,
                "--start",
                "--no-loop",
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=pgcapi",
                "--endpos",
                end,
                "-f",
                "/dev/null",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
            command.env_remove(var);
        }
        let (run, output) = watched(client, command).await?;
        if !output.status.success() {
            return Err(format!(
                "pg_recvlogical failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(run)
    }

    /// Runs `pgcapi bench-capture` on `slot` up to `end`.
    async fn time_capture(
        &self,
        client: &Client,
        slot: &str,
        end: &str,
    ) -> Result<(Run, CaptureReport), String> {
        let config = self.write_config(slot, &self.config_text(slot, &["meta"]))?;
        let log = format!("{slot}.log");
        let mut command = self.pgcapi(
            "ratios",
            &[
                "bench-capture",
                "--config",
                config.to_str().unwrap_or_default(),
                "--stop-at",
                end,
            ],
            &log,
        )?;
        command.stdout(Stdio::piped());
        let (run, output) = watched(client, command).await?;
        if !output.status.success() {
            return Err(format!(
                "pgcapi bench-capture failed ({}): {}",
                output.status,
                self.log_tail(&log)
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: CaptureReport = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| format!("pgcapi bench-capture printed no report: {stdout}"))?;
        Ok((run, report))
    }

    /// A database with the shop schema and pgcapi set up for `destinations` (slot `slot`).
    async fn prepared_database(
        &self,
        admin: &Client,
        database: &str,
        slot: &str,
        destinations: &[&str],
    ) -> Result<(Client, PathBuf), String> {
        admin
            .batch_execute(&format!("create database {database}"))
            .await
            .map_err(|e| e.to_string())?;
        let client = self.connect(database).await?;
        client
            .batch_execute(SHOP_SQL)
            .await
            .map_err(|e| e.to_string())?;
        let text = self.config_text(slot, destinations);
        setup::setup(
            &self.parse_config(&text, database)?,
            SetupOptions::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let path = self.write_config(database, &text)?;
        Ok((client, path))
    }

    /// Drops a database and its slot once its pgcapi has stopped.
    async fn drop_database(
        &self,
        admin: &Client,
        database: &str,
        slot: &str,
    ) -> Result<(), String> {
        admin
            .execute("select pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(|e| format!("dropping slot {slot}: {}", crate::pg::client::describe(&e)))?;
        admin
            .batch_execute(&format!("drop database {database}"))
            .await
            .map_err(|e| e.to_string())
    }

    /// End-to-end: a backlog of committed paid orders, then `pgcapi run` until every row is `sent`.
    async fn end_to_end(&self, admin: &Client, destinations: usize) -> Result<EndToEnd, String> {
        let names: &[&str] = if destinations == 1 {
            &["meta"]
        } else {
            &["meta", "google", "tiktok"]
        };
        let database = format!("e2e{destinations}");
        let slot = format!("bench_e2e_{destinations}");
        let (client, config) = self
            .prepared_database(admin, &database, &slot, names)
            .await?;
        let n = self.sizes.e2e_conversions;
        let per = 100;
        client
            .batch_execute(&format!(
                "do $$ begin for t in 0..{last} loop \
                   insert into orders {COLUMNS} {select} \
                   from generate_series(t * {per} + 1, (t + 1) * {per}) g; \
                   commit; \
                 end loop; end $$",
                last = n / per - 1,
                select = order_select("e2e", Rows::Paid, "g")
            ))
            .await
            .map_err(|e| e.to_string())?;
        let n = n / per * per;
        self.sandbox.reset();
        let log = format!("{database}.log");
        let started: DateTime<Utc> = Utc::now();
        let child = self
            .pgcapi(
                &database,
                &["run", "--config", config.to_str().unwrap_or_default()],
                &log,
            )?
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting pgcapi run: {e}"))?;
        let mut child = ChildGuard(Some(child));
        let expected = (n * destinations) as i64;
        let deadline = Instant::now() + Duration::from_secs(1800);
        let hz = clock_ticks_per_second();
        let bench_cpu_before = process_cpu_ticks("/proc/self/stat").unwrap_or(0.0) / hz;
        let mut seen = HashMap::new();
        // Cheap polls (primary key and the partial index of pending rows), so that measuring adds
        // little work to the server being measured.
        loop {
            let row = client
                .query_one(
                    "select (select coalesce(max(id), 0) from pgcapi.deliveries), \
                       (select count(*) from pgcapi.deliveries where state = 'pending')",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            let (recorded, pending): (i64, i64) = (row.get(0), row.get(1));
            sample_server_cpu(&client, hz, &mut seen).await?;
            if recorded >= expected && pending == 0 {
                break;
            }
            if let Some(status) = child.exited() {
                return Err(format!(
                    "pgcapi run exited ({status}) with {recorded} of {expected} rows recorded, \
                     {pending} pending: {}",
                    self.log_tail(&log)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "end-to-end run timed out with {recorded} of {expected} rows recorded, \
                     {pending} pending"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let pgcapi_cpu = child
            .id()
            .and_then(|pid| process_cpu_ticks(&format!("/proc/{pid}/stat")))
            .unwrap_or(0.0)
            / hz;
        let bench_cpu = process_cpu_ticks("/proc/self/stat").unwrap_or(0.0) / hz - bench_cpu_before;
        let row = client
            .query_one(
                "select max(created_at), max(sent_at), count(*) filter (where state <> 'sent'), \
                   count(*) from pgcapi.deliveries",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let (captured, sent): (DateTime<Utc>, Option<DateTime<Utc>>) = (row.get(0), row.get(1));
        let (not_sent, total): (i64, i64) = (row.get(2), row.get(3));
        child.stop();
        // Statistics reach the shared view when backends flush them (at the latest on exit): shown as a
        // diagnostic of how many dispatch updates were HOT (no new index entries).
        if let Ok(row) = client
            .query_one(
                "select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables \
                 where schemaname = 'pgcapi' and relname = 'deliveries'",
                &[],
            )
            .await
        {
            let (updates, hot): (i64, i64) = (row.get(0), row.get(1));
            eprintln!("bench: deliveries updates: {updates}, of them HOT: {hot}");
        }
        drop(client);
        self.drop_database(admin, &database, &slot).await?;
        if total != expected {
            return Err(format!(
                "end-to-end: {total} control rows, expected {expected}"
            ));
        }
        let secs = |t: DateTime<Utc>| (t - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
        Ok(EndToEnd {
            destinations,
            conversions: n,
            captured_secs: secs(captured),
            sent_secs: sent.map_or(f64::NAN, secs),
            not_sent,
            pgcapi_cpu,
            sandbox_cpu: bench_cpu,
            server: server_cpu(seen),
        })
    }

    /// Latency at a steady 1,000 changes/s: 10 paid orders every 10 ms, commit time against the time the
    /// sandbox received each event.
    async fn latency(&self, admin: &Client) -> Result<Latency, String> {
        let database = "latency";
        let slot = "bench_latency";
        let (client, config) = self
            .prepared_database(admin, database, slot, &["meta"])
            .await?;
        self.sandbox.reset();
        let log = "latency.log";
        let child = self
            .pgcapi(
                database,
                &["run", "--config", config.to_str().unwrap_or_default()],
                log,
            )?
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting pgcapi run: {e}"))?;
        let mut child = ChildGuard(Some(child));
        // As an application would commit: flushed at commit, so the walsender sees it at once (the
        // throwaway cluster defaults to synchronous_commit = off, which delays WAL by up to
        // wal_writer_delay; fsync stays off, so the flush costs no disk wait).
        client
            .batch_execute("set synchronous_commit = on")
            .await
            .map_err(|e| e.to_string())?;
        let insert = format!(
            "insert into orders {COLUMNS} {} from generate_series($1::int, $2::int) g",
            order_select("lat", Rows::Paid, "g")
        );
        let insert = client.prepare(&insert).await.map_err(|e| e.to_string())?;
        // Warm-up: one order through the whole pipeline, so that capture and dispatch are running.
        client
            .execute(&insert, &[&0i32, &0i32])
            .await
            .map_err(|e| e.to_string())?;
        self.wait_sent(&client, 1, &mut child, log).await?;
        let mut committed: HashMap<i32, DateTime<Utc>> = HashMap::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        let until = Instant::now() + Duration::from_secs(self.sizes.latency_secs);
        let started = Instant::now();
        let mut next = 1i32;
        while Instant::now() < until {
            ticker.tick().await;
            client
                .execute(&insert, &[&next, &(next + 9)])
                .await
                .map_err(|e| e.to_string())?;
            let at = Utc::now();
            for g in next..next + 10 {
                committed.insert(g, at);
            }
            next += 10;
        }
        let produced = committed.len();
        let rate = produced as f64 / started.elapsed().as_secs_f64();
        self.wait_sent(&client, produced as i64 + 1, &mut child, log)
            .await?;
        child.stop();
        let records = self.sandbox.records();
        let mut latencies: Vec<f64> = records
            .meta
            .events
            .iter()
            .filter_map(|e| {
                let g: i32 = e
                    .event_id
                    .as_deref()?
                    .strip_prefix("order-lat-")?
                    .parse()
                    .ok()?;
                let at = committed.get(&g)?;
                Some((e.received_at - *at).num_microseconds()? as f64 / 1000.0)
            })
            .collect();
        drop(client);
        self.drop_database(admin, database, slot).await?;
        if latencies.len() != produced {
            return Err(format!(
                "the sandbox received {} of {produced} latency events",
                latencies.len()
            ));
        }
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| {
            latencies[((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1]
        };
        Ok(Latency {
            changes: produced,
            rate,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }

    /// Waits until `expected` control rows are `sent`.
    async fn wait_sent(
        &self,
        client: &Client,
        expected: i64,
        child: &mut ChildGuard,
        log: &str,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let sent: i64 = client
                .query_one(
                    "select count(*) from pgcapi.deliveries where state = 'sent'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if sent >= expected {
                return Ok(());
            }
            if let Some(status) = child.exited() {
                return Err(format!(
                    "pgcapi run exited ({status}): {}",
                    self.log_tail(log)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("timed out with {sent} of {expected} rows sent"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The columns the workload fills.
const COLUMNS: &str =
    "(order_number, email, phone, first_name, last_name, city, region, postal_code, \
    country, client_ip, user_agent, fbc, fbp, gclid, ttclid, total, status, ad_consent, paid_at)";

/// A `select` of realistic order rows from the series column `g` (every identifier present and valid).
fn order_select(tag: &str, rows: Rows, g: &str) -> String {
    let status = match rows {
        Rows::Unmatched => "pending",
        Rows::Paid => "paid",
    };
    format!(
        "select '{tag}-' || {g}, 'customer.' || {g} || '@example.com', \
           '+1 650 555 ' || lpad(({g} % 10000)::text, 4, '0'), 'Jane', 'Doe', 'San Francisco', \
           'California', '94105', 'US', '203.0.113.7', \
           'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36', \
           'fb.1.1700000000000.AbCdEf' || {g}, 'fb.1.1700000000000.' || {g}, 'Cj0KCQiA-gclid-' || {g}, \
           'E.C.P.ttclid' || {g}, ({g} % 1000) + 0.99, '{status}', true, now()"
    )
}

/// One timed child process.
#[derive(Debug)]
struct Run {
    /// From spawn to exit.
    secs: f64,
    /// CPU of the server processes that served it.
    server: ServerCpu,
}

/// CPU seconds of the server processes of the benchmark database while a child ran, sampled every
/// 50 ms from `/proc` (the last 50 ms may be missed).
#[derive(Debug, Default, Clone, Copy)]
struct ServerCpu {
    /// The walsender (logical decoding and pgoutput).
    walsender: f64,
    /// Ordinary backends (pgcapi's control connection and SQL).
    backends: f64,
}

/// Runs `command` to completion while sampling the CPU time of the server processes serving it.
async fn watched(
    client: &Client,
    mut command: Command,
) -> Result<(Run, std::process::Output), String> {
    let hz = clock_ticks_per_second();
    let started = Instant::now();
    let child = command
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", command.get_program()))?;
    let waiter = tokio::task::spawn_blocking(move || {
        let output = child.wait_with_output();
        (started.elapsed(), output)
    });
    tokio::pin!(waiter);
    let mut seen = HashMap::new();
    let (elapsed, output) = loop {
        tokio::select! {
            joined = &mut waiter => break joined.map_err(|e| e.to_string())?,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                sample_server_cpu(client, hz, &mut seen).await?;
            }
        }
    };
    let output = output.map_err(|e| format!("waiting for {:?}: {e}", command.get_program()))?;
    let server = server_cpu(seen);
    Ok((
        Run {
            secs: elapsed.as_secs_f64(),
            server,
        },
        output,
    ))
}

/// Samples the CPU seconds of the walsenders and client backends of the current database (other than
/// the sampling connection) into `seen`, by pid.
async fn sample_server_cpu(
    client: &Client,
    hz: f64,
    seen: &mut HashMap<i32, (bool, f64)>,
) -> Result<(), String> {
    let rows = client
        .query(
            "select pid, backend_type = 'walsender' from pg_stat_activity \
             where datname = current_database() and pid <> pg_backend_pid() \
               and backend_type in ('walsender', 'client backend')",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    for row in rows {
        let pid: i32 = row.get(0);
        if let Some(ticks) = process_cpu_ticks(&format!("/proc/{pid}/stat")) {
            seen.insert(pid, (row.get(1), ticks / hz));
        }
    }
    Ok(())
}

/// Sums samples by kind of process.
fn server_cpu(seen: HashMap<i32, (bool, f64)>) -> ServerCpu {
    let mut server = ServerCpu::default();
    for (walsender, cpu) in seen.into_values() {
        if walsender {
            server.walsender += cpu;
        } else {
            server.backends += cpu;
        }
    }
    server
}

/// A child process that is killed if the benchmark stops early.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// The process id, while the child runs.
    fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// The exit status, if the child has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Asks the child to stop (SIGTERM), and kills it if it has not stopped within 10 s.
    fn stop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Results {
    /// The table and notes.
    fn render(&self, options: &BenchOptions, sizes: Sizes) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pgcapi bench{} — {}\nmachine: {}\n",
            if options.quick { " --quick" } else { "" },
            Utc::now().format("%Y-%m-%d %H:%M UTC"),
            self.machine
        );
        let _ = writeln!(out, "| # | measure | workload | measured | target | |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        for r in &self.ratios {
            let (n, target) = match (r.measure, r.small) {
                ("decode", _) => ("1", Some(0.9)),
                (_, true) => ("2", Some(0.5)),
                _ => ("2", None),
            };
            let _ = writeln!(
                out,
                "| {n} | {} ratio | {} | **{:.2}** (pgcapi {:.0} rows/s, {:.1} s, {:.1} CPU s; pg_recvlogical {:.0} rows/s, {:.1} s) | {} | {} |",
                r.measure,
                r.workload,
                r.ratio(),
                r.rows as f64 / r.pgcapi_secs,
                r.pgcapi_secs,
                r.pgcapi_cpu_secs,
                r.rows as f64 / r.recvlogical_secs,
                r.recvlogical_secs,
                target.map_or("—".to_string(), |t| format!("≥ {t}")),
                target.map_or("", |t| verdict(r.ratio() >= t)),
            );
        }
        for e in &self.e2e {
            let target = if e.destinations == 1 {
                30_000.0
            } else {
                10_000.0
            };
            let rate = e.conversions as f64 / e.sent_secs;
            let _ = writeln!(
                out,
                "| 3 | end-to-end, {} destination{} | backlog of {} paid orders | **{:.0} conversions/s** ({:.0} deliveries/s; captured after {:.1} s, all sent after {:.1} s{}) | ≥ {:.0}/s | {} |",
                e.destinations,
                if e.destinations == 1 { "" } else { "s" },
                e.conversions,
                rate,
                rate * e.destinations as f64,
                e.captured_secs,
                e.sent_secs,
                if e.not_sent > 0 { format!("; {} rows NOT sent", e.not_sent) } else { String::new() },
                target,
                verdict(rate >= target && e.not_sent == 0),
            );
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(
                out,
                "| 4 | latency, commit → request at the sandbox | {} changes at {:.0}/s for {} s, 1 destination | p50 {:.0} ms, **p99 {:.0} ms**, max {:.0} ms | p99 ≤ 250 ms | {} |",
                l.changes,
                l.rate,
                sizes.latency_secs,
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                verdict(l.p99_ms <= 250.0),
            );
        }
        if let Some(peak) = self
            .ratios
            .iter()
            .filter(|r| !r.small)
            .map(|r| r.peak_rss_kib)
            .max()
        {
            let mib = peak as f64 / 1024.0;
            let _ = writeln!(
                out,
                "| 5 | peak RSS of pgcapi capture | (b) 1 tx × {} rows | **{mib:.1} MiB** | ≤ 64 MiB | {} |",
                sizes.big_rows,
                verdict(mib <= 64.0),
            );
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(
                out,
                "\nWhere the time of the ratio runs goes (CPU seconds; server processes sampled from /proc):\n"
            );
            let _ = writeln!(
                out,
                "| run | wall s | client CPU s | walsender CPU s | backend CPU s | busy cores |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|");
            for r in &self.ratios {
                for (who, wall, client, server) in [
                    (
                        "pg_recvlogical",
                        r.recvlogical_secs,
                        None,
                        r.recvlogical_server,
                    ),
                    (
                        "pgcapi",
                        r.pgcapi_secs,
                        Some(r.pgcapi_cpu_secs),
                        r.capture_server,
                    ),
                ] {
                    let total = client.unwrap_or(0.0) + server.walsender + server.backends;
                    let _ = writeln!(
                        out,
                        "| {} {}, {who} | {wall:.2} | {} | {:.2} | {:.2} | {:.2} |",
                        r.measure,
                        r.workload,
                        client.map_or("—".to_string(), |c| format!("{c:.2}")),
                        server.walsender,
                        server.backends,
                        total / wall,
                    );
                }
            }
        }
        if !self.e2e.is_empty() {
            let _ = writeln!(
                out,
                "\nWhere the time of the end-to-end runs goes (CPU seconds):\n"
            );
            let _ = writeln!(
                out,
                "| run | wall s | pgcapi run | sandbox + bench | walsender | backends | busy cores |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            for e in &self.e2e {
                let total = e.pgcapi_cpu + e.sandbox_cpu + e.server.walsender + e.server.backends;
                let _ = writeln!(
                    out,
                    "| {} destination(s) | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    e.destinations,
                    e.sent_secs,
                    e.pgcapi_cpu,
                    e.sandbox_cpu,
                    e.server.walsender,
                    e.server.backends,
                    total / e.sent_secs
                );
            }
        }
        let _ = writeln!(
            out,
            "\nRatios: pgcapi rows/s divided by pg_recvlogical rows/s on the same WAL \
             (best of {} run(s) each, timed from spawn to exit). Cluster: fsync, synchronous_commit and \
             full_page_writes off; {}.",
            options.repeats.max(1),
            CLUSTER_SETTINGS.join(", ")
        );
        out
    }
}

/// `pgcapi bench-capture`: captures into the control table until `stop_at`, then prints a JSON
/// [`CaptureReport`] on stdout. The benchmark's child process; not meant for operators.
pub async fn capture_child(config: &Path, stop_at: &str) -> Result<(), String> {
    let stop: Lsn = stop_at.parse().map_err(|e| format!("--stop-at: {e}"))?;
    let config = Config::load(config).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let capture = Capture::new(Arc::new(config))
        .map_err(|e| e.to_string())?
        .stop_at(stop);
    let stats = capture.stats();
    let (_shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    capture
        .run(shutdown_rx)
        .await
        .map_err(|e| crate::pg::error_chain(&e))?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = stats.borrow().clone();
    let report = CaptureReport {
        changes: stats.changes,
        rows_inserted: stats.rows_inserted,
        seconds,
        cpu_seconds: own_cpu_seconds(),
        peak_rss_kib: own_peak_rss_kib(),
    };
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// This process's peak resident set (`VmHWM`), KiB.
fn own_peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This process's user + system CPU time.
fn own_cpu_seconds() -> f64 {
    process_cpu_ticks("/proc/self/stat").unwrap_or(0.0) / clock_ticks_per_second()
}

/// User + system CPU time from a `/proc/<pid>/stat` file, in clock ticks.
fn process_cpu_ticks(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are 14, 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK` (100 on Linux unless it says otherwise).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

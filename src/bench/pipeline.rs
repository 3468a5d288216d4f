//! The runs of the whole pipeline: `pgcapi run` against the sandbox on a backlog (end to end) and at a
//! steady rate (latency), each in a database of its own.

use super::measure::*;
use super::workload::{commit_one_by_one, order_select, COLUMNS};
use super::*;

impl Bench<'_> {
    /// A database with the shop schema and pgcapi set up for `destinations` (slot `slot`).
    pub(super) async fn prepared_database(
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
    pub(super) async fn drop_database(
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
    pub(super) async fn end_to_end(
        &self,
        admin: &Client,
        destinations: usize,
    ) -> Result<EndToEnd, String> {
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
        let per = 100;
        let n = self.sizes.e2e_conversions / per;
        commit_one_by_one(&client, &order_select("e2e", Rows::Paid, "g"), n, per).await?;
        let n = n * per;
        self.sandbox.reset();
        let log = format!("{database}.log");
        let started: DateTime<Utc> = Utc::now();
        let mut child = self.start_run(&database, &config, &log)?;
        let expected = (n * destinations) as i64;
        let hz = clock_ticks_per_second();
        let bench_cpu_before = process_cpu_ticks("/proc/self/stat").unwrap_or(0.0) / hz;
        let mut seen = HashMap::new();
        self.wait_delivered(&client, &mut child, expected, &log, hz, &mut seen)
            .await?;
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
        print_hot_updates(&client).await;
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

    /// Starts `pgcapi run` on the config at `config` (stderr to `log`).
    fn start_run(&self, database: &str, config: &Path, log: &str) -> Result<ChildGuard, String> {
        let child = self
            .pgcapi(
                database,
                &["run", "--config", config.to_str().unwrap_or_default()],
                log,
            )?
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting pgcapi run: {e}"))?;
        Ok(ChildGuard(Some(child)))
    }

    /// Waits until `expected` control rows are recorded and none is pending, sampling the server's CPU
    /// into `seen` at every poll.
    async fn wait_delivered(
        &self,
        client: &Client,
        child: &mut ChildGuard,
        expected: i64,
        log: &str,
        hz: f64,
        seen: &mut HashMap<i32, (bool, f64)>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(1800);
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
            sample_server_cpu(client, hz, seen).await?;
            if recorded >= expected && pending == 0 {
                return Ok(());
            }
            if let Some(status) = child.exited() {
                return Err(format!(
                    "pgcapi run exited ({status}) with {recorded} of {expected} rows recorded, \
                     {pending} pending: {}",
                    self.log_tail(log)
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
    }

    /// Latency at a steady 1,000 changes/s: 10 paid orders every 10 ms, commit time against the time the
    /// sandbox received each event.
    pub(super) async fn latency(&self, admin: &Client) -> Result<Latency, String> {
        let database = "latency";
        let slot = "bench_latency";
        let (client, config) = self
            .prepared_database(admin, database, slot, &["meta"])
            .await?;
        self.sandbox.reset();
        let log = "latency.log";
        let mut child = self.start_run(database, &config, log)?;
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
        let (committed, rate) = self.produce(&client, &insert).await?;
        let produced = committed.len();
        self.wait_sent(&client, produced as i64 + 1, &mut child, log)
            .await?;
        child.stop();
        let mut latencies = self.latencies_ms(&committed);
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

    /// The steady load: 10 paid orders (`insert`) every 10 ms for the run's length; returns when each
    /// order's commit returned and the rate achieved.
    async fn produce(
        &self,
        client: &Client,
        insert: &tokio_postgres::Statement,
    ) -> Result<(HashMap<i32, DateTime<Utc>>, f64), String> {
        let mut committed: HashMap<i32, DateTime<Utc>> = HashMap::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        let until = Instant::now() + Duration::from_secs(self.sizes.latency_secs);
        let started = Instant::now();
        let mut next = 1i32;
        while Instant::now() < until {
            ticker.tick().await;
            client
                .execute(insert, &[&next, &(next + 9)])
                .await
                .map_err(|e| e.to_string())?;
            let at = Utc::now();
            for g in next..next + 10 {
                committed.insert(g, at);
            }
            next += 10;
        }
        let rate = committed.len() as f64 / started.elapsed().as_secs_f64();
        Ok((committed, rate))
    }

    /// Each latency event the sandbox received, in milliseconds from its order's commit.
    fn latencies_ms(&self, committed: &HashMap<i32, DateTime<Utc>>) -> Vec<f64> {
        let records = self.sandbox.records();
        records
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
            .collect()
    }

    /// Waits until `expected` control rows are `sent`.
    pub(super) async fn wait_sent(
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

/// Prints how many updates of the control table were HOT (no new index entries), a diagnostic of
/// dispatch. Statistics reach the shared view when backends flush them (at the latest on exit).
async fn print_hot_updates(client: &Client) {
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
}

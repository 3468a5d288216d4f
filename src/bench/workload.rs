//! The ratio workloads: the same WAL read by capture alone and by pg_recvlogical, timed; and the order
//! rows every workload writes (the whole pipeline's runs are in `pipeline.rs`).

use super::measure::*;
use super::*;

impl Bench<'_> {
    /// One ratio measurement: slots first, then the workload, then each program on its own slot.
    pub(super) async fn ratio(
        &self,
        client: &Client,
        measure: &'static str,
        rows: Rows,
        workload: String,
        small: bool,
    ) -> Result<RatioResult, String> {
        let tag = format!("{measure}_{}", if small { "a" } else { "b" });
        let slots = self.create_slots(client, &tag).await?;
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
            check_capture(&report, total, rows, &end)?;
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

    /// One slot per program and repeat, created before the workload is written so that every run
    /// reads the same WAL.
    async fn create_slots(&self, client: &Client, tag: &str) -> Result<Vec<String>, String> {
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
        Ok(slots)
    }

    /// (a): many transactions of `rows_per_tx` rows, committed one by one in a `DO` block.
    pub(super) async fn write_small_txs(
        &self,
        client: &Client,
        tag: &str,
        rows: Rows,
    ) -> Result<usize, String> {
        let (txs, per) = (self.sizes.small_txs, self.sizes.rows_per_tx);
        commit_one_by_one(client, &order_select(tag, rows, "g"), txs, per).await?;
        Ok(txs * per)
    }

    /// (b): one transaction of `big_rows` rows.
    pub(super) async fn write_big_tx(
        &self,
        client: &Client,
        tag: &str,
        rows: Rows,
    ) -> Result<usize, String> {
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
    pub(super) async fn time_recvlogical(
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
    pub(super) async fn time_capture(
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
}

/// The columns the workload fills.
pub(super) const COLUMNS: &str =
    "(order_number, email, phone, first_name, last_name, city, region, postal_code, \
    country, client_ip, user_agent, fbc, fbp, gclid, ttclid, total, status, ad_consent, paid_at)";

/// A `select` of realistic order rows from the series column `g` (every identifier present and valid).
pub(super) fn order_select(tag: &str, rows: Rows, g: &str) -> String {
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

/// A capture run decoded every change up to `end` and wrote a control row for each matching one.
fn check_capture(
    report: &CaptureReport,
    total: usize,
    rows: Rows,
    end: &str,
) -> Result<(), String> {
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
    Ok(())
}

/// Inserts `txs` transactions of `per` rows of `select` (over the series column `g`), committed one by
/// one in a `DO` block.
pub(super) async fn commit_one_by_one(
    client: &Client,
    select: &str,
    txs: usize,
    per: usize,
) -> Result<(), String> {
    let sql = format!(
        "do $$ begin for t in 0..{last} loop \
           insert into orders {COLUMNS} {select} \
           from generate_series(t * {per} + 1, (t + 1) * {per}) g; \
           commit; \
         end loop; end $$",
        last = txs - 1
    );
    client.batch_execute(&sql).await.map_err(|e| e.to_string())
}

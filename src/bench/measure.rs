//! Measuring: CPU and peak memory of a watched child process and of the server's backends, the
//! child's lifetime, and the results' rendering.

use super::*;

/// One timed child process.
#[derive(Debug)]
pub(super) struct Run {
    /// From spawn to exit.
    pub(super) secs: f64,
    /// CPU of the server processes that served it.
    pub(super) server: ServerCpu,
}

/// CPU seconds of the server processes of the benchmark database while a child ran, sampled every
/// 50 ms from `/proc` (the last 50 ms may be missed).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ServerCpu {
    /// The walsender (logical decoding and pgoutput).
    pub(super) walsender: f64,
    /// Ordinary backends (pgcapi's control connection and SQL).
    pub(super) backends: f64,
}

/// Runs `command` to completion while sampling the CPU time of the server processes serving it.
pub(super) async fn watched(
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
pub(super) async fn sample_server_cpu(
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
pub(super) fn server_cpu(seen: HashMap<i32, (bool, f64)>) -> ServerCpu {
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
pub(super) struct ChildGuard(pub(super) Option<Child>);

impl ChildGuard {
    /// The process id, while the child runs.
    pub(super) fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// The exit status, if the child has exited.
    pub(super) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Asks the child to stop (SIGTERM), and kills it if it has not stopped within 10 s.
    pub(super) fn stop(&mut self) {
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
    pub(super) fn render(&self, options: &BenchOptions, sizes: Sizes) -> String {
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
        self.render_throughput(&mut out);
        self.render_latency_and_memory(&mut out, sizes);
        if !self.ratios.is_empty() {
            table_head(
                &mut out,
                "Where the time of the ratio runs goes (CPU seconds; server processes sampled from /proc):",
                "| run | wall s | client CPU s | walsender CPU s | backend CPU s | busy cores |",
            );
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
            table_head(
                &mut out,
                "Where the time of the end-to-end runs goes (CPU seconds):",
                "| run | wall s | pgcapi run | sandbox + bench | walsender | backends | busy cores |",
            );
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

    /// Rows 1 to 3 of the table: the ratios and the end-to-end throughput, against their targets.
    fn render_throughput(&self, out: &mut String) {
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
    }

    /// Rows 4 and 5 of the table: latency and capture's peak memory, against their targets.
    fn render_latency_and_memory(&self, out: &mut String, sizes: Sizes) {
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
    }
}

/// "met" or "MISSED".
fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// The title of a Markdown table (between blank lines), its header and the rule under the header.
fn table_head(out: &mut String, title: &str, header: &str) {
    let _ = writeln!(out, "\n{title}\n");
    let _ = writeln!(out, "{header}");
    let columns = header.matches('|').count().saturating_sub(1);
    let _ = writeln!(out, "|{}", "---|".repeat(columns));
}

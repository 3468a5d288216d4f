//! Operating `pgcapi run`: metrics and health endpoints, JSON logs, dry run, Google `validate_only`, and
//! `pgcapi check` — each through the real binary, a real PostgreSQL and the sandbox.

use crate::support::Shop;
use crate::support::{count, wait_for};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

mod check;
mod dry_run;
mod metrics;

/// The contract config with a metrics server on a free port, refreshed every 200 ms.
fn with_metrics(toml: &str) -> String {
    format!("{toml}\n[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_ms = 200\n")
}

/// A paid order with every identifier; `$1` is the order number, `$2` the consent.
const PAID: &str =
    "insert into orders (order_number, email, phone, first_name, last_name, city, region,
    postal_code, country, client_ip, user_agent, fbc, fbp, gclid, ttclid, total, currency, status,
    ad_consent, paid_at) values ($1, 'Jane.Doe@Example.com', '(650) 555-1212', 'Jane', 'Doe',
    'San Francisco', 'California', '94105', 'US', '203.0.113.7', 'Mozilla/5.0 (X11) test',
    'fb.1.1700000000000.AbCdEf123', 'fb.1.1700000000000.987654321', 'Cj0KCQiA-test_gclid',
    'E.C.P.tt-click', 42.50, 'USD', 'paid', $2, now())";

/// Raw identifiers of [`PAID`] that must never appear in a log line or a request.
const RAW_PII: &[&str] = &[
    "Jane",
    "jane.doe",
    "Example.com",
    "555-1212",
    "6505551212",
    "San Francisco",
    "California",
    "94105",
];

impl Shop {
    /// Starts `pgcapi run` with `args` after `--config FILE`, logging JSON to `log` (in the temp dir).
    fn run(&self, args: &[&str], log: &str) -> Running {
        let log = self.dir.path().join(log);
        let mut command = Command::new(env!("CARGO_BIN_EXE_pgcapi"));
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(&self.config_path)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        Running {
            child: command.spawn().expect("spawn pgcapi run"),
            log,
        }
    }

    /// Pays order `number` (with or without consent).
    async fn pay(&self, number: &str, consent: bool) {
        self.client
            .execute(PAID, &[&number, &consent])
            .await
            .unwrap();
    }

    /// Waits until the control table holds `rows` rows and none is pending.
    async fn settled(&self, rows: i64) {
        wait_for(30, &format!("{rows} settled deliveries"), || async {
            let total = count(&self.client, "select count(*) from pgcapi.deliveries").await;
            (total == rows && self.pending().await == 0).then_some(())
        })
        .await;
    }

    /// Rows not yet settled.
    async fn pending(&self) -> i64 {
        count(
            &self.client,
            "select count(*) from pgcapi.deliveries where state = 'pending'",
        )
        .await
    }
}

/// A `pgcapi run` process; killed if still running when dropped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// The log lines so far, each parsed as JSON (panics on a line that is not JSON).
    fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// The metrics server's base URL, from the process's log.
    async fn metrics_url(&self) -> String {
        wait_for(30, "the metrics server to listen", || async {
            self.log_lines().iter().find_map(|l| {
                (l["fields"]["message"] == "metrics server listening")
                    .then(|| format!("http://{}", l["fields"]["addr"].as_str().unwrap()))
            })
        })
        .await
    }

    /// Stops the process with SIGTERM and waits for it; returns whether it exited successfully.
    fn terminate(&mut self) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pgcapi run did not stop on SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `url`; returns the status and body (`None` when nothing answers).
async fn get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// The value of the sample `series` (name and labels exactly as exposed) in a scrape; 0 when absent.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

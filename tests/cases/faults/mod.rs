//! Fault-injection suite: one seeded workload of more than 20,000 changes to orders and leads, while
//! `pgcapi run` is killed with SIGKILL at random moments, the sandbox answers 500 / 429 / drops
//! connections after processing / adds latency, PostgreSQL is restarted (fast shutdown) mid-run and a
//! long idle spell changes only an unrelated table. At the end the control table and the sandbox's own
//! records must match what the workload implies: every expected conversion counted once by the platform,
//! none lost, retractions exactly as expected, nothing left pending, and the raw duplicate sends bounded by
//! what was in flight at each kill or dropped connection.
//!
//! The seed is printed; `PGCAPI_FAULT_SEED=<seed> cargo test --test main faults -- --nocapture` replays the
//! same workload and kill schedule (the exact timing, and so the interleaving, still varies).
//!
//! A second, smaller test feeds a malformed-input corpus through a table whose columns are all text.

use crate::support::{
    config_from, connect_url, contract_env, count, wait_for, TestDb, CONTRACT_TOML, SHOP_SQL,
};
use chrono::{DateTime, Utc};
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::testbed::sandbox::{Faults, Records, Sandbox, SandboxConfig};
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_postgres::Client;

/// Orders per wave of the workload.
const ORDERS_PER_WAVE: usize = 200;
/// Leads per wave.
const LEADS_PER_WAVE: usize = 100;
/// Waves; PostgreSQL is restarted after half of them.
const WAVES: usize = 30;
/// Orders marked for a late refund are refunded this many waves after they were paid.
const LATE_REFUND_WAVES: usize = 3;
/// Batch size of every destination (small, so that faults hit many requests).
const BATCH: usize = 50;
/// At least this many `kill -9`.
const MIN_KILLS: u32 = 10;
/// A kill comes this long (uniformly drawn, milliseconds) after the previous one.
const KILL_INTERVAL_MS: (u64, u64) = (3_000, 7_000);
/// How long the idle spell lasts.
const IDLE: Duration = Duration::from_secs(10);
/// Waves start at this pace at most, so that kills land all through the workload (and capture, in a
/// debug build on two cores, keeps roughly up).
const WAVE_PACE: Duration = Duration::from_millis(1_700);
/// Length of the random user agents of [`OrderKind::PaidLargeUserAgent`]: incompressible and above the
/// 2 KB at which PostgreSQL moves a value out of line.
const LARGE_USER_AGENT: usize = 3_000;

/// In this wave a mapped column (`ttclid`, a match key of `order_paid` the workload leaves NULL) is
/// renamed, one transaction changing orders is committed, and the column is renamed back: capture stops
/// on that transaction and must resume by itself, binding its changes to the column by position.
const DDL_WAVE: usize = 5;
/// Destinations of orders and of leads (names from the contract config).
const ORDER_DESTINATIONS: [&str; 3] = ["meta", "google", "tiktok"];
const LEAD_DESTINATIONS: [&str; 2] = ["meta", "google"];

// ---------------------------------------------------------------------------------------------
// The workload and what it must produce
// ---------------------------------------------------------------------------------------------

/// What happens to an order, and so what it must end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum OrderKind {
    /// Paid with consent and identifiers: sent to every platform.
    Paid,
    /// Paid, but without a user agent: Meta refuses website events without one (failed); the others send.
    PaidNoUserAgent,
    /// Paid, with a 3 KB random user agent stored out of line (TOAST): the payment UPDATE leaves it
    /// unchanged, so the WAL does not carry it and capture reads it back. Sent everywhere, with it.
    PaidLargeUserAgent,
    /// Paid, refunded a few transactions later (usually before it was sent).
    RefundedSoon,
    /// Paid, refunded a few waves later (usually after it was sent).
    RefundedLater,
    /// Inserted paid and refunded in the same transaction.
    PaidRefundedOneTx,
    /// Paid without consent (`ad_consent = false`).
    ConsentDenied,
    /// Paid, consent never asked (`ad_consent is null`).
    ConsentUnknown,
    /// Paid without consent, then refunded.
    DeniedThenRefunded,
    /// Paid with consent but no identifier at all.
    NoMatchKey,
    /// Paid with a currency that is not an ISO code.
    BadCurrency,
    /// Paid with `total = 'NaN'`.
    BadValue,
    /// Refunded without ever being paid.
    RefundedUnpaid,
}

/// The order mix, in percent.
const ORDER_MIX: &[(OrderKind, u32)] = &[
    (OrderKind::Paid, 47),
    (OrderKind::PaidNoUserAgent, 3),
    (OrderKind::PaidLargeUserAgent, 3),
    (OrderKind::RefundedSoon, 6),
    (OrderKind::RefundedLater, 12),
    (OrderKind::PaidRefundedOneTx, 3),
    (OrderKind::ConsentDenied, 7),
    (OrderKind::ConsentUnknown, 4),
    (OrderKind::DeniedThenRefunded, 2),
    (OrderKind::NoMatchKey, 4),
    (OrderKind::BadCurrency, 3),
    (OrderKind::BadValue, 3),
    (OrderKind::RefundedUnpaid, 3),
];

impl OrderKind {
    /// Whether the order ever has `status = 'paid'`.
    fn paid(self) -> bool {
        self != OrderKind::RefundedUnpaid
    }

    /// Whether the order ends refunded.
    fn refunded(self) -> bool {
        matches!(
            self,
            OrderKind::RefundedSoon
                | OrderKind::RefundedLater
                | OrderKind::PaidRefundedOneTx
                | OrderKind::DeniedThenRefunded
                | OrderKind::RefundedUnpaid
        )
    }

    /// Whether paying it makes `failed` rows (`invalid-…` ids) instead of `order-N` conversions.
    fn invalid(self) -> bool {
        matches!(self, OrderKind::BadCurrency | OrderKind::BadValue)
    }
}

/// What happens to a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum LeadKind {
    /// Won with consent: sent to Meta and Google.
    Won,
    /// Won without a deal value: Meta refuses a Purchase without value (failed at the platform, after
    /// bisecting its batch); Google takes it.
    WonNoValue,
    /// Won, consent denied.
    WonDenied,
    /// Won, consent unknown (NULL, empty or unrecognised).
    WonUnknownConsent,
    /// Won with consent and no identifier.
    WonNoMatchKey,
    /// Won with a currency that is not an ISO code.
    WonBadCurrency,
    /// Won with `deal_value = 'NaN'`.
    WonBadValue,
    /// Lost: no event at all.
    Lost,
}

/// The lead mix, in percent.
const LEAD_MIX: &[(LeadKind, u32)] = &[
    (LeadKind::Won, 71),
    (LeadKind::WonNoValue, 2),
    (LeadKind::WonDenied, 8),
    (LeadKind::WonUnknownConsent, 4),
    (LeadKind::WonNoMatchKey, 4),
    (LeadKind::WonBadCurrency, 3),
    (LeadKind::WonBadValue, 3),
    (LeadKind::Lost, 5),
];

impl LeadKind {
    fn invalid(self) -> bool {
        matches!(self, LeadKind::WonBadCurrency | LeadKind::WonBadValue)
    }
}

/// One order of the workload.
#[derive(Debug, Clone)]
struct Order {
    number: usize,
    kind: OrderKind,
    email: Option<String>,
    phone: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    country: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    gclid: Option<String>,
    total: String,
    currency: String,
    consent: Option<bool>,
}

impl Order {
    fn event_id(&self) -> String {
        format!("order-{}", self.order_number())
    }

    fn order_number(&self) -> String {
        format!("f-{}", self.number)
    }

    /// The SQL values tuple for `insert into orders (ORDER_COLUMNS)`.
    fn values(&self, status: &str, paid: bool) -> String {
        format!(
            "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}::numeric, {}, '{status}', {}, {})",
            lit(&Some(self.order_number())),
            lit(&self.email),
            lit(&self.phone),
            lit(&self.first_name),
            lit(&self.last_name),
            lit(&self.country),
            self.client_ip
                .as_ref()
                .map_or("null".to_string(), |ip| format!("'{ip}'::inet")),
            lit(&self.user_agent),
            lit(&self.gclid),
            lit(&Some(self.total.clone())),
            lit(&Some(self.currency.clone())),
            self.consent.map_or("null".to_string(), |c| c.to_string()),
            if paid { "now()" } else { "null" },
        )
    }
}

const ORDER_COLUMNS: &str =
    "order_number, email, phone, first_name, last_name, country, client_ip, \
                             user_agent, gclid, total, currency, status, ad_consent, paid_at";

/// One lead of the workload.
#[derive(Debug, Clone)]
struct Lead {
    id: usize,
    kind: LeadKind,
    email: Option<String>,
    phone: Option<String>,
    deal_value: Option<String>,
    currency: String,
    consent: Option<String>,
}

impl Lead {
    fn event_id(&self) -> String {
        format!("deal-{}", self.id)
    }
}

/// A SQL string literal (or `null`).
fn lit(value: &Option<String>) -> String {
    match value {
        None => "null".to_string(),
        Some(v) => format!("'{}'", v.replace('\'', "''")),
    }
}

fn pick<T: Copy>(rng: &mut StdRng, mix: &[(T, u32)]) -> T {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for (kind, weight) in mix {
        if roll < *weight {
            return *kind;
        }
        roll -= weight;
    }
    unreachable!("weights cover the roll")
}

fn one_of<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn make_order(rng: &mut StdRng, number: usize) -> Order {
    let kind = pick(rng, ORDER_MIX);
    // Identifiers in the shapes a shop really has: mixed case, spaces, several phone formats.
    let mut email = match rng.random_range(0..10) {
        0..=5 => Some(format!("Buyer.{number}@Example.com")),
        6..=7 => Some(format!("  buyer{number}@example.COM ")),
        _ => None,
    };
    let last4 = format!("{:04}", number % 10_000);
    let phone = match rng.random_range(0..4) {
        0 | 1 => Some(format!("+1 650 555 {last4}")),
        2 => Some(format!("(650) 555-{last4}")),
        _ => None,
    };
    if email.is_none() && phone.is_none() {
        email = Some(format!("buyer{number}@example.net"));
    }
    let mut order = Order {
        number,
        kind,
        email,
        phone,
        first_name: rng.random_bool(0.5).then(|| "Ada".to_string()),
        last_name: rng.random_bool(0.5).then(|| "Lovelace".to_string()),
        country: rng.random_bool(0.5).then(|| "US".to_string()),
        client_ip: rng
            .random_bool(0.5)
            .then(|| format!("203.0.113.{}", number % 250)),
        user_agent: Some(format!("Mozilla/5.0 (pgcapi fault suite; {number})")),
        gclid: rng.random_bool(0.3).then(|| format!("Cj0K-fault_{number}")),
        total: format!("{}.{:02}", 5 + number % 500, number % 100),
        currency: one_of(rng, &["USD", "EUR", "usd"]).to_string(),
        consent: Some(true),
    };
    match kind {
        OrderKind::PaidNoUserAgent => order.user_agent = None,
        OrderKind::PaidLargeUserAgent => {
            order.user_agent = Some(format!(
                "Mozilla/5.0 ({number}) {}",
                Alphanumeric.sample_string(rng, LARGE_USER_AGENT)
            ))
        }
        OrderKind::ConsentDenied | OrderKind::DeniedThenRefunded => order.consent = Some(false),
        OrderKind::ConsentUnknown => order.consent = None,
        OrderKind::NoMatchKey => {
            order.email = None;
            order.phone = None;
            order.first_name = None;
            order.last_name = None;
            order.country = None;
            order.client_ip = None;
            order.user_agent = None;
            order.gclid = None;
        }
        OrderKind::BadCurrency => order.currency = one_of(rng, &["X1Y", "$$$", "U$D"]).into(),
        OrderKind::BadValue => order.total = "NaN".into(),
        _ => {}
    }
    order
}

fn make_lead(rng: &mut StdRng, id: usize) -> Lead {
    let kind = pick(rng, LEAD_MIX);
    let granted = ["granted", "YES", " true ", "1", "y", "Granted"];
    let mut lead = Lead {
        id,
        kind,
        email: Some(format!("Lead.{id}@Example.org")),
        phone: rng
            .random_bool(0.5)
            .then(|| format!("+44 20 7946 {:04}", id % 10_000)),
        deal_value: Some(format!("{}.50", 100 + id % 900)),
        currency: "USD".into(),
        consent: Some(one_of(rng, &granted).to_string()),
    };
    match kind {
        LeadKind::WonNoValue => lead.deal_value = None,
        LeadKind::WonDenied => {
            lead.consent = Some(one_of(rng, &["denied", "no", "false", "0", "revoked"]).into())
        }
        LeadKind::WonUnknownConsent => {
            lead.consent =
                [None, Some(String::new()), Some("maybe".into())][rng.random_range(0..3)].clone()
        }
        LeadKind::WonNoMatchKey => {
            lead.email = None;
            lead.phone = None;
        }
        LeadKind::WonBadCurrency => lead.currency = "1X2".into(),
        LeadKind::WonBadValue => lead.deal_value = Some("NaN".into()),
        LeadKind::Won | LeadKind::Lost => {}
    }
    lead
}

/// One source transaction: its statements and how many rows each must change.
struct Tx {
    statements: Vec<(String, u64)>,
}

/// The whole workload: the entities (the model) and the transactions that make it happen.
struct Workload {
    orders: Vec<Order>,
    leads: Vec<Lead>,
    /// Transactions per wave (the last entry holds the final late refunds).
    waves: Vec<Vec<Tx>>,
}

impl Workload {
    fn changes(&self) -> u64 {
        self.waves
            .iter()
            .flatten()
            .flat_map(|tx| &tx.statements)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Splits `items` into chunks of random sizes in `1..=max`.
fn chunks<T: Clone>(rng: &mut StdRng, items: &[T], max: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let n = rng.random_range(1..=max).min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

fn in_list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plan(seed: u64) -> Workload {
    let mut rng = StdRng::seed_from_u64(seed);
    let orders: Vec<Order> = (1..=ORDERS_PER_WAVE * WAVES)
        .map(|n| make_order(&mut rng, n))
        .collect();
    let leads: Vec<Lead> = (1..=LEADS_PER_WAVE * WAVES)
        .map(|id| make_lead(&mut rng, id))
        .collect();
    let mut waves = Vec::new();
    let numbers =
        |list: &[&Order]| in_list(&list.iter().map(|o| o.order_number()).collect::<Vec<_>>());
    let refund_later = |w: usize| -> Vec<Tx> {
        let mut rng = StdRng::seed_from_u64(seed ^ (w as u64) << 20);
        let due: Vec<&Order> = orders[w * ORDERS_PER_WAVE..(w + 1) * ORDERS_PER_WAVE]
            .iter()
            .filter(|o| o.kind == OrderKind::RefundedLater)
            .collect();
        chunks(&mut rng, &due, 8)
            .into_iter()
            .map(|c| Tx {
                statements: vec![(
                    format!(
                        "update orders set status = 'refunded' where order_number in ({})",
                        numbers(&c)
                    ),
                    c.len() as u64,
                )],
            })
            .collect()
    };
    for w in 0..WAVES {
        let mut txs = Vec::new();
        let wave: Vec<&Order> = orders[w * ORDERS_PER_WAVE..(w + 1) * ORDERS_PER_WAVE]
            .iter()
            .collect();
        // Inserts (pending), except the paid-and-refunded-at-once ones.
        let pending: Vec<&Order> = wave
            .iter()
            .copied()
            .filter(|o| o.kind != OrderKind::PaidRefundedOneTx)
            .collect();
        for c in chunks(&mut rng, &pending, 40) {
            let values: Vec<String> = c.iter().map(|o| o.values("pending", false)).collect();
            txs.push(Tx {
                statements: vec![(
                    format!(
                        "insert into orders ({ORDER_COLUMNS}) values {}",
                        values.join(", ")
                    ),
                    c.len() as u64,
                )],
            });
        }
        // Paid and refunded in one transaction.
        let one_tx: Vec<&Order> = wave
            .iter()
            .copied()
            .filter(|o| o.kind == OrderKind::PaidRefundedOneTx)
            .collect();
        for c in chunks(&mut rng, &one_tx, 4) {
            let values: Vec<String> = c.iter().map(|o| o.values("paid", true)).collect();
            txs.push(Tx {
                statements: vec![
                    (
                        format!(
                            "insert into orders ({ORDER_COLUMNS}) values {}",
                            values.join(", ")
                        ),
                        c.len() as u64,
                    ),
                    (
                        format!(
                            "update orders set status = 'refunded' where order_number in ({})",
                            numbers(&c)
                        ),
                        c.len() as u64,
                    ),
                ],
            });
        }
        // Payments, in random order and groups.
        let mut to_pay: Vec<&Order> = pending.iter().copied().filter(|o| o.kind.paid()).collect();
        for i in (1..to_pay.len()).rev() {
            let j = rng.random_range(0..=i);
            to_pay.swap(i, j);
        }
        for c in chunks(&mut rng, &to_pay, 25) {
            txs.push(Tx {
                statements: vec![(
                    format!(
                        "update orders set status = 'paid', paid_at = now() where order_number in ({})",
                        numbers(&c)
                    ),
                    c.len() as u64,
                )],
            });
        }
        // Quick refunds (and refunds of orders never paid).
        let soon: Vec<&Order> = wave
            .iter()
            .copied()
            .filter(|o| {
                matches!(
                    o.kind,
                    OrderKind::RefundedSoon
                        | OrderKind::DeniedThenRefunded
                        | OrderKind::RefundedUnpaid
                )
            })
            .collect();
        for c in chunks(&mut rng, &soon, 6) {
            txs.push(Tx {
                statements: vec![(
                    format!(
                        "update orders set status = 'refunded' where order_number in ({})",
                        numbers(&c)
                    ),
                    c.len() as u64,
                )],
            });
        }
        // Unrelated edits of paid orders of the previous wave: same event, nothing new to record.
        if w > 0 {
            let touched: Vec<&Order> = orders[(w - 1) * ORDERS_PER_WAVE..w * ORDERS_PER_WAVE]
                .iter()
                .filter(|o| {
                    matches!(o.kind, OrderKind::Paid | OrderKind::PaidLargeUserAgent)
                        && rng.random_bool(0.5)
                })
                .collect();
            for c in chunks(&mut rng, &touched, 50) {
                txs.push(Tx {
                    statements: vec![(
                        format!(
                            "update orders set notes = 'edited in wave {w}' where order_number in ({})",
                            numbers(&c)
                        ),
                        c.len() as u64,
                    )],
                });
            }
        }
        // Late refunds of an earlier wave.
        if w >= LATE_REFUND_WAVES {
            txs.extend(refund_later(w - LATE_REFUND_WAVES));
        }
        // Leads: created, then won or lost.
        let wave_leads = &leads[w * LEADS_PER_WAVE..(w + 1) * LEADS_PER_WAVE];
        for c in chunks(&mut rng, wave_leads, 40) {
            let values: Vec<String> = c
                .iter()
                .map(|l| {
                    format!(
                        "({}, {}, {}, {}::numeric, {}, {}, 'new')",
                        l.id,
                        lit(&l.email),
                        lit(&l.phone),
                        lit(&l.deal_value),
                        lit(&Some(l.currency.clone())),
                        lit(&l.consent)
                    )
                })
                .collect();
            txs.push(Tx {
                statements: vec![(
                    format!(
                        "insert into leads (id, email, phone, deal_value, currency, consent, stage) \
                         values {}",
                        values.join(", ")
                    ),
                    c.len() as u64,
                )],
            });
        }
        for c in chunks(&mut rng, wave_leads, 25) {
            let ids = |won: bool| {
                c.iter()
                    .filter(|l| (l.kind != LeadKind::Lost) == won)
                    .map(|l| l.id.to_string())
                    .collect::<Vec<_>>()
            };
            let mut statements = Vec::new();
            for (won, sql) in [
                (
                    true,
                    "update leads set stage = 'won', won_at = now() where id in",
                ),
                (false, "update leads set stage = 'lost' where id in"),
            ] {
                let ids = ids(won);
                if !ids.is_empty() {
                    statements.push((format!("{sql} ({})", ids.join(", ")), ids.len() as u64));
                }
            }
            txs.push(Tx { statements });
        }
        waves.push(txs);
    }
    // The late refunds still due.
    let mut last = Vec::new();
    for w in WAVES.saturating_sub(LATE_REFUND_WAVES)..WAVES {
        last.extend(refund_later(w));
    }
    waves.push(last);
    Workload {
        orders,
        leads,
        waves,
    }
}

// ---------------------------------------------------------------------------------------------
// The process under test
// ---------------------------------------------------------------------------------------------

/// `pgcapi run` as a child process, killed and restarted on demand; every incarnation logs to a file.
struct Supervisor {
    config_path: PathBuf,
    env: Vec<(String, String)>,
    logs: PathBuf,
    child: Option<Child>,
    /// When the current incarnation was started.
    spawned_at: DateTime<Utc>,
    incarnations: u32,
    kills: u32,
    /// Incarnations that ended by themselves, with their log tail.
    unexpected_exits: Vec<String>,
}

impl Supervisor {
    fn new(config_path: PathBuf, env: Vec<(String, String)>, logs: PathBuf) -> Supervisor {
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

    fn log_path(&self, incarnation: u32) -> PathBuf {
        self.logs.join(format!("run-{incarnation}.log"))
    }

    fn spawn(&mut self) {
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
    fn check_alive(&mut self) {
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
    fn kill_and_restart(&mut self) {
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

    fn stop(&mut self) {
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
async fn slot_and_wal(client: &Client) -> (i64, i64) {
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
async fn slot_held_since(url: &str, since: DateTime<Utc>) -> bool {
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
async fn restart_postgres(db: &TestDb, supervisor: &Mutex<Supervisor>) -> Duration {
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
async fn wait_for_slot(
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

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

/// The contract config with small batches and fast retries and leases.
fn suite_config() -> String {
    let mut toml = CONTRACT_TOML.to_string();
    for platform in ["meta", "google_ads", "tiktok"] {
        let line = format!("platform = \"{platform}\"\n");
        toml = toml.replacen(&line, &format!("{line}batch_max_events = {BATCH}\n"), 1);
    }
    assert_eq!(toml.matches("batch_max_events").count(), 3);
    toml.push_str(
        "\n[dispatch]\nlease_secs = 3\nretry_initial_ms = 50\nretry_max_ms = 1000\n\
         request_timeout_ms = 10000\n",
    );
    toml
}

fn seed() -> u64 {
    std::env::var("PGCAPI_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_and_platforms_count_each_conversion_once() {
    let seed = seed();
    eprintln!("fault suite seed {seed} (replay: PGCAPI_FAULT_SEED={seed})");
    let started = Instant::now();
    let workload = plan(seed);
    let planned_changes = workload.changes();
    assert!(
        planned_changes >= 20_000,
        "the workload has only {planned_changes} changes"
    );

    // GIVEN the sandbox with faults on every conversion endpoint, a shop database, and `pgcapi run`.
    let faults = Faults {
        error_500_ratio: 0.10,
        throttle_429_ratio: 0.05,
        retry_after_secs: 1,
        accept_then_drop_ratio: 0.02,
        latency_ms: (0, 40),
        seed: Some(seed.wrapping_add(2)),
        ..Faults::default()
    };
    let sandbox = Sandbox::start_with_config(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            faults,
            ..SandboxConfig::default()
        },
    )
    .await
    .unwrap();
    let db = TestDb::start().await;
    let mut client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    client
        .batch_execute(
            "create table page_views (id bigserial primary key, path text not null,
                                      seen_at timestamptz not null default now())",
        )
        .await
        .unwrap();
    let env = contract_env(&db.url(), &sandbox.base_url());
    let toml = suite_config();
    setup(&config_from(&toml, &env), SetupOptions::default())
        .await
        .unwrap();
    // Each incarnation's log goes to this directory; PGCAPI_FAULT_KEEP_LOGS=1 keeps it.
    let dir = tempfile::tempdir().unwrap();
    let (logs, _dir) = if std::env::var_os("PGCAPI_FAULT_KEEP_LOGS").is_some() {
        let kept = dir.keep();
        eprintln!("logs kept in {}", kept.display());
        (kept, None)
    } else {
        (dir.path().to_path_buf(), Some(dir))
    };
    let config_path = logs.join("pgcapi.toml");
    std::fs::write(&config_path, &toml).unwrap();
    let supervisor = Arc::new(Mutex::new(Supervisor::new(config_path, env, logs)));

    // WHEN kills come at random moments from a seeded schedule, all through the run,
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let supervisor = supervisor.clone();
        let draining = draining.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
            let mut moments = Vec::new();
            loop {
                let pause = rng.random_range(KILL_INTERVAL_MS.0..=KILL_INTERVAL_MS.1);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let mut s = supervisor.lock().await;
                if draining.load(std::sync::atomic::Ordering::SeqCst) && s.kills >= MIN_KILLS {
                    return moments;
                }
                s.kill_and_restart();
                moments.push(started.elapsed());
            }
        })
    };

    // AND the workload runs wave by wave, with PostgreSQL restarted halfway,
    let mut changes = 0u64;
    let mut pg_restart = None;
    for (w, wave) in workload.waves.iter().enumerate() {
        // Pacing only (the workload's tempo), not a synchronization.
        let due = WAVE_PACE * w as u32;
        if let Some(early) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(early).await;
        }
        if w == WAVES / 2 {
            pg_restart = Some(restart_postgres(&db, &supervisor).await);
            client = db.connect().await;
        }
        // The column is renamed before the wave's first transaction that changes orders, and back
        // after it.
        let mut renamed = false;
        let mut renamed_back = w != DDL_WAVE;
        for tx in wave {
            let orders = tx.statements.iter().any(|(sql, _)| sql.contains("orders"));
            if !renamed_back && orders {
                client
                    .batch_execute("alter table orders rename column ttclid to ttclid_renamed")
                    .await
                    .unwrap();
                renamed = true;
            }
            let t = client.transaction().await.unwrap();
            for (sql, expected) in &tx.statements {
                let n = t
                    .execute(sql.as_str(), &[])
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                assert_eq!(n, *expected, "{sql}");
                changes += n;
            }
            t.commit().await.unwrap();
            if renamed && !renamed_back {
                client
                    .batch_execute("alter table orders rename column ttclid_renamed to ttclid")
                    .await
                    .unwrap();
                renamed_back = true;
            }
        }
        assert!(renamed_back);
    }
    let workload_done = started.elapsed();
    eprintln!(
        "{:?} workload done: {}",
        started.elapsed(),
        progress(&client).await
    );

    // AND then, once capture has caught up with the workload, a long idle spell in which only an
    // unrelated table changes.
    let (_, wal_at_workload_end) = slot_and_wal(&client).await;
    wait_for(120, "capture to catch up with the workload", || {
        let client = &client;
        async move { (slot_and_wal(client).await.0 >= wal_at_workload_end).then_some(()) }
    })
    .await;
    let caught_up = started.elapsed();
    eprintln!("{caught_up:?} caught up: {}", progress(&client).await);
    let idle_started = Instant::now();
    let mut unrelated = 0u64;
    let mut mark = None;
    let mut advanced_after = None;
    let (confirmed_before_idle, _) = slot_and_wal(&client).await;
    while idle_started.elapsed() < IDLE {
        unrelated += client
            .execute(
                "insert into page_views (path) select '/p/' || g from generate_series(1, 50) g",
                &[],
            )
            .await
            .unwrap();
        let (confirmed, wal) = slot_and_wal(&client).await;
        match mark {
            None if idle_started.elapsed() > Duration::from_secs(1) => mark = Some(wal),
            Some(m) if advanced_after.is_none() && confirmed >= m => {
                advanced_after = Some(idle_started.elapsed())
            }
            _ => {}
        }
        // Pace the unrelated writes (this is the spell's length, not a synchronization).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, wal_at_idle_end) = slot_and_wal(&client).await;
    // THEN the slot follows the WAL of the unrelated table: it is not retained.
    let Some(advanced_after) = advanced_after else {
        let mut s = supervisor.lock().await;
        s.check_alive();
        panic!(
            "the slot's confirmed_flush_lsn did not advance past unrelated WAL during the {IDLE:?} \
             idle spell (it was {confirmed_before_idle} before); pgcapi exits: {:#?}",
            s.unexpected_exits
        )
    };
    wait_for(60, "the slot to confirm the idle spell's WAL", || {
        let client = &client;
        async move { (slot_and_wal(client).await.0 >= wal_at_idle_end).then_some(()) }
    })
    .await;

    // AND once the kills are done and nothing is pending, the run ends.
    draining.store(true, std::sync::atomic::Ordering::SeqCst);
    let kill_moments = killer.await.unwrap();
    wait_for(240, "every delivery to leave pending", || {
        let client = &client;
        async move {
            (count(
                client,
                "select count(*) from pgcapi.deliveries where state = 'pending'",
            )
            .await
                == 0)
                .then_some(())
        }
    })
    .await;
    let drained = started.elapsed();
    let (kills, incarnations, unexpected, bound_by_position) = {
        let mut s = supervisor.lock().await;
        s.check_alive();
        s.stop();
        let bound_by_position = (1..=s.incarnations)
            .filter(|i| {
                std::fs::read_to_string(s.log_path(*i))
                    .is_ok_and(|log| log.contains("reading it by position"))
            })
            .count();
        (
            s.kills,
            s.incarnations,
            s.unexpected_exits.clone(),
            bound_by_position,
        )
    };
    let records = sandbox.records();

    // THEN everything the workload implies happened, exactly once.
    let rows = control_rows(&client).await;
    let verdict = Verdict::check(&workload, &rows, &records);
    let states = client
        .query(
            "select state, count(*) from pgcapi.deliveries group by state order by state",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>()
        .join(" ");

    let mut summary = vec![
        format!("seed {seed}"),
        format!(
            "{changes} source changes ({} orders, {} leads) + {unrelated} unrelated rows in the idle spell",
            workload.orders.len(),
            workload.leads.len()
        ),
        format!(
            "{kills} kill -9 (at {:?} s), {incarnations} incarnations of pgcapi run",
            kill_moments.iter().map(|d| d.as_secs()).collect::<Vec<_>>()
        ),
        format!(
            "PostgreSQL restarted (fast) after wave {}; pgcapi streaming again {:.1?} later",
            WAVES / 2,
            pg_restart.unwrap()
        ),
        format!(
            "idle {IDLE:?}: slot confirmed past unrelated WAL after {advanced_after:.1?}",
        ),
        format!(
            "orders.ttclid renamed for one transaction of wave {DDL_WAVE}: {bound_by_position} \
             incarnation(s) bound its changes by position"
        ),
        format!("control table: {} rows: {states}", rows.len()),
        format!(
            "refunded orders x destinations: {} cancelled before sending; {} sent (some after an \
             attempt whose answer was lost), then retracted (Google) or skipped (Meta, TikTok)",
            verdict.cancelled_before_send, verdict.sent_then_refunded
        ),
    ];
    for (name, platform) in [
        ("meta", pgcapi::platform::Platform::Meta),
        ("google", pgcapi::platform::Platform::GoogleAds),
        ("tiktok", pgcapi::platform::Platform::Tiktok),
    ] {
        let c = records.counters(crate::support::sandbox_api(platform));
        summary.push(format!(
            "{name}: {} requests ({} faulted, {} responses lost); items: {} received raw, {} unique, \
             {} counted, {} deduplicated, {} rejected; raw duplicate sends {} (bound {} = ({kills} \
             kills x {IN_FLIGHT} batches in flight + {} lost responses) x {BATCH})",
            c.requests,
            c.faulted,
            c.responses_lost,
            c.received,
            c.unique,
            c.accepted,
            c.deduplicated,
            c.rejected,
            c.duplicate_sends,
            duplicate_bound(kills, c.responses_lost),
            c.responses_lost
        ));
    }
    summary.push(format!(
        "timeline: workload {workload_done:.0?}, drained {drained:.0?}"
    ));
    eprintln!("fault suite summary:\n  {}", summary.join("\n  "));

    assert!(
        unexpected.is_empty(),
        "pgcapi run exited by itself {} time(s):\n{}",
        unexpected.len(),
        unexpected.join("\n---\n")
    );
    assert_eq!(changes, planned_changes);
    assert!(kills >= MIN_KILLS, "only {kills} kills");
    if std::env::var_os("PGCAPI_FAULT_LOG").is_none() {
        assert!(
            bound_by_position > 0,
            "no incarnation logged binding the renamed column by position"
        );
    }
    assert!(
        verdict.problems.is_empty(),
        "{} problem(s), first ones:\n{}",
        verdict.problems.len(),
        verdict.problems[..verdict.problems.len().min(25)].join("\n")
    );
    // Raw duplicates (resent items, before the platform's dedup) come only from batches in flight at a
    // kill (at most IN_FLIGHT per destination) or whose response was lost.
    for platform in [
        pgcapi::platform::Platform::Meta,
        pgcapi::platform::Platform::GoogleAds,
        pgcapi::platform::Platform::Tiktok,
    ] {
        let c = records.counters(crate::support::sandbox_api(platform));
        let bound = duplicate_bound(kills, c.responses_lost);
        assert!(
            c.duplicate_sends <= bound,
            "{platform:?}: {} raw duplicate sends, more than {bound}",
            c.duplicate_sends
        );
    }
    // The faults really happened on every platform, and some responses were lost after processing.
    let stats = [
        records.counters(pgcapi::testbed::sandbox::Platform::Meta),
        records.counters(pgcapi::testbed::sandbox::Platform::GoogleAds),
        records.counters(pgcapi::testbed::sandbox::Platform::Tiktok),
    ];
    assert!(stats.iter().all(|c| c.faulted > 0));
    assert!(stats.iter().map(|c| c.responses_lost).sum::<u64>() > 0);
    // Both refund paths were exercised.
    assert!(verdict.cancelled_before_send > 0 && verdict.sent_then_refunded > 0);
}

// ---------------------------------------------------------------------------------------------
// The verdict
// ---------------------------------------------------------------------------------------------

/// One control-table row.
#[derive(Debug, Clone)]
struct ControlRow {
    state: String,
    last_error: String,
}

type RowKey = (String, String, String);

async fn control_rows(client: &Client) -> HashMap<RowKey, ControlRow> {
    client
        .query(
            "select rule, destination, event_id, state, coalesce(last_error, '') from pgcapi.deliveries",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1), r.get(2)),
                ControlRow {
                    state: r.get(3),
                    last_error: r.get(4),
                },
            )
        })
        .collect()
}

/// What the sandbox counted: items per (destination, id), and Google retractions per order id.
struct Counted {
    items: HashMap<(String, String), usize>,
    retractions: HashMap<String, usize>,
    other_adjustments: usize,
}

impl Counted {
    fn from(records: &Records) -> Counted {
        let mut items: HashMap<(String, String), usize> = HashMap::new();
        let mut add = |dest: &str, id: &Option<String>| {
            *items
                .entry((dest.to_string(), id.clone().unwrap_or_default()))
                .or_default() += 1;
        };
        for e in &records.meta.events {
            add("meta", &e.event_id);
        }
        for e in &records.tiktok.events {
            add("tiktok", &e.event_id);
        }
        for c in &records.google_ads.conversions {
            add("google", &c.order_id);
        }
        let mut retractions: HashMap<String, usize> = HashMap::new();
        let mut other_adjustments = 0;
        for a in &records.google_ads.adjustments {
            if a.adjustment_type == "RETRACTION" {
                *retractions
                    .entry(a.order_id.clone().unwrap_or_default())
                    .or_default() += 1;
            } else {
                other_adjustments += 1;
            }
        }
        Counted {
            items,
            retractions,
            other_adjustments,
        }
    }

    fn times(&self, dest: &str, id: &str) -> usize {
        self.items
            .get(&(dest.to_string(), id.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// The result of comparing the end state with the model.
#[derive(Default)]
struct Verdict {
    problems: Vec<String>,
    cancelled_before_send: usize,
    sent_then_refunded: usize,
}

impl Verdict {
    fn check(
        workload: &Workload,
        rows: &HashMap<RowKey, ControlRow>,
        records: &Records,
    ) -> Verdict {
        let counted = Counted::from(records);
        let mut v = Verdict::default();
        let mut expected_rows = 0usize;
        let mut invalid_rows: HashMap<(&str, &str), usize> = HashMap::new();
        let get = |rule: &str, dest: &str, id: &str| {
            rows.get(&(rule.to_string(), dest.to_string(), id.to_string()))
        };

        for o in &workload.orders {
            let id = o.event_id();
            for dest in ORDER_DESTINATIONS {
                let conv = get("order_paid", dest, &id);
                let retr = get("order_refunded", dest, &id);
                let times = counted.times(dest, &id);
                let what = format!("order {id} at {dest} ({:?})", o.kind);
                match o.kind {
                    OrderKind::Paid | OrderKind::PaidLargeUserAgent => {
                        v.expect_sent(&what, conv, times)
                    }
                    OrderKind::PaidNoUserAgent if dest == "meta" => {
                        v.expect(&what, conv, "failed", "client_user_agent", times)
                    }
                    OrderKind::PaidNoUserAgent => v.expect_sent(&what, conv, times),
                    OrderKind::RefundedSoon
                    | OrderKind::RefundedLater
                    | OrderKind::PaidRefundedOneTx => {
                        v.expect_refunded(&what, dest, conv, retr, times, &counted, &id)
                    }
                    OrderKind::ConsentDenied
                    | OrderKind::ConsentUnknown
                    | OrderKind::DeniedThenRefunded => {
                        v.expect(&what, conv, "skipped", "no consent", times)
                    }
                    OrderKind::NoMatchKey => {
                        v.expect(&what, conv, "skipped", "no match keys", times)
                    }
                    OrderKind::BadCurrency | OrderKind::BadValue | OrderKind::RefundedUnpaid => {
                        v.expect_absent(&what, conv, times)
                    }
                }
                if o.kind == OrderKind::DeniedThenRefunded {
                    v.expect(
                        &format!("{what} retraction"),
                        retr,
                        "skipped",
                        "the conversion was skipped, not sent: nothing to retract",
                        0,
                    );
                } else if o.kind == OrderKind::RefundedUnpaid {
                    v.expect(
                        &format!("{what} retraction"),
                        retr,
                        "skipped",
                        "no conversion to retract",
                        0,
                    );
                } else if !o.kind.refunded() && retr.is_some() {
                    v.problems
                        .push(format!("{what}: a retraction row exists without a refund"));
                }
                if o.kind.invalid() {
                    *invalid_rows
                        .entry((
                            "order_paid",
                            if o.kind == OrderKind::BadCurrency {
                                "currency"
                            } else {
                                "column \"total\": invalid numeric value"
                            },
                        ))
                        .or_default() += 1;
                }
                expected_rows += usize::from(o.kind.paid()) + usize::from(o.kind.refunded());
            }
            if o.kind == OrderKind::RefundedSoon
                || o.kind == OrderKind::RefundedLater
                || o.kind == OrderKind::PaidRefundedOneTx
            {
                let google = get("order_refunded", "google", &id).map(|r| r.state.as_str());
                let retracted = counted.retractions.get(&id).copied().unwrap_or(0);
                let expected = usize::from(google == Some("sent"));
                if retracted != expected {
                    v.problems.push(format!(
                        "order {id}: Google recorded {retracted} retraction(s), expected {expected}"
                    ));
                }
            } else if counted.retractions.contains_key(&id) {
                v.problems
                    .push(format!("order {id}: Google retraction without a refund"));
            }
        }

        // The user agents read back reached Meta and TikTok exactly as stored.
        let large: HashMap<String, &str> = workload
            .orders
            .iter()
            .filter(|o| o.kind == OrderKind::PaidLargeUserAgent)
            .map(|o| (o.event_id(), o.user_agent.as_deref().unwrap_or_default()))
            .collect();
        for (dest, events, field) in [
            ("meta", &records.meta.events, "client_user_agent"),
            ("tiktok", &records.tiktok.events, "user_agent"),
        ] {
            for e in events {
                let Some(expected) = e.event_id.as_ref().and_then(|id| large.get(id)) else {
                    continue;
                };
                if e.plain.get(field).map(String::as_str) != Some(*expected) {
                    v.problems.push(format!(
                        "{dest} {:?}: {field} is not the stored (TOASTed) user agent",
                        e.event_id
                    ));
                }
            }
        }

        for l in &workload.leads {
            let id = l.event_id();
            for dest in LEAD_DESTINATIONS {
                let conv = get("deal_won", dest, &id);
                let times = counted.times(dest, &id);
                let what = format!("lead {id} at {dest} ({:?})", l.kind);
                match l.kind {
                    LeadKind::Won => v.expect_sent(&what, conv, times),
                    LeadKind::WonNoValue if dest == "meta" => {
                        v.expect(&what, conv, "failed", "custom_data.value", times)
                    }
                    LeadKind::WonNoValue => v.expect_sent(&what, conv, times),
                    LeadKind::WonDenied | LeadKind::WonUnknownConsent => {
                        v.expect(&what, conv, "skipped", "no consent", times)
                    }
                    LeadKind::WonNoMatchKey => {
                        v.expect(&what, conv, "skipped", "no match keys", times)
                    }
                    LeadKind::WonBadCurrency | LeadKind::WonBadValue | LeadKind::Lost => {
                        v.expect_absent(&what, conv, times)
                    }
                }
                if l.kind.invalid() {
                    *invalid_rows
                        .entry((
                            "deal_won",
                            if l.kind == LeadKind::WonBadCurrency {
                                "currency"
                            } else {
                                "column \"deal_value\": invalid numeric value"
                            },
                        ))
                        .or_default() += 1;
                }
                expected_rows += usize::from(l.kind != LeadKind::Lost);
            }
        }

        // Rows of changes that cannot become events: failed, visible, with the reason.
        for ((rule, reason), expected) in &invalid_rows {
            let found = rows
                .iter()
                .filter(|((r, _, id), row)| {
                    r == rule
                        && id.starts_with("invalid-")
                        && row.state == "failed"
                        && row.last_error.contains(reason)
                })
                .count();
            if found != *expected {
                v.problems.push(format!(
                    "{rule}: {found} failed rows for {reason:?}, expected {expected}"
                ));
            }
        }
        // Nothing more and nothing less in the control table.
        if rows.len() != expected_rows {
            v.problems.push(format!(
                "control table holds {} rows, the workload implies {expected_rows}",
                rows.len()
            ));
        }
        // Everything the platforms counted is a row recorded as sent (nothing counted that is
        // recorded as cancelled, failed or pending).
        for ((dest, id), times) in &counted.items {
            let rule = if id.starts_with("deal-") {
                "deal_won"
            } else {
                "order_paid"
            };
            match get(rule, dest, id) {
                Some(row) if row.state == "sent" => {}
                other => v.problems.push(format!(
                    "{dest} counted {id} {times} time(s), but the control table says {:?}",
                    other.map(|r| (&r.state, &r.last_error))
                )),
            }
        }
        if counted.other_adjustments > 0 {
            v.problems.push(format!(
                "Google recorded {} adjustments that are not retractions",
                counted.other_adjustments
            ));
        }
        v
    }

    fn expect(
        &mut self,
        what: &str,
        row: Option<&ControlRow>,
        state: &str,
        reason: &str,
        times: usize,
    ) {
        match row {
            Some(r) if r.state == state && r.last_error.contains(reason) => {}
            other => self.problems.push(format!(
                "{what}: expected {state} ({reason:?}), found {:?}",
                other.map(|r| (&r.state, &r.last_error))
            )),
        }
        if times != 0 {
            self.problems
                .push(format!("{what}: the platform counted it {times} time(s)"));
        }
    }

    fn expect_sent(&mut self, what: &str, row: Option<&ControlRow>, times: usize) {
        match row {
            Some(r) if r.state == "sent" => {}
            other => self.problems.push(format!(
                "{what}: expected sent, found {:?}",
                other.map(|r| (&r.state, &r.last_error))
            )),
        }
        if times != 1 {
            self.problems.push(format!(
                "{what}: the platform counted it {times} time(s), expected once"
            ));
        }
    }

    fn expect_absent(&mut self, what: &str, row: Option<&ControlRow>, times: usize) {
        if let Some(r) = row {
            self.problems.push(format!(
                "{what}: expected no conversion row, found {:?}",
                (&r.state, &r.last_error)
            ));
        }
        if times != 0 {
            self.problems
                .push(format!("{what}: the platform counted it {times} time(s)"));
        }
    }

    /// A refunded order at one destination: either cancelled before it was sent (never at the
    /// platform, retraction cancelled too) or sent once and then retracted where the platform can.
    #[allow(clippy::too_many_arguments)]
    fn expect_refunded(
        &mut self,
        what: &str,
        dest: &str,
        conv: Option<&ControlRow>,
        retr: Option<&ControlRow>,
        times: usize,
        counted: &Counted,
        id: &str,
    ) {
        let state = |r: Option<&ControlRow>| r.map(|r| (r.state.clone(), r.last_error.clone()));
        match (
            conv.map(|r| r.state.as_str()),
            retr.map(|r| r.state.as_str()),
        ) {
            // Cancelled only when it never reached the platform; one that may have (an answer lost)
            // is finished first, below.
            (Some("cancelled"), Some("cancelled")) if times == 0 => self.cancelled_before_send += 1,
            (Some("sent"), Some("sent")) if times == 1 && dest == "google" => {
                self.sent_then_refunded += 1;
                if counted.retractions.get(id).copied().unwrap_or(0) != 1 {
                    self.problems
                        .push(format!("{what}: retraction sent but not recorded once"));
                }
            }
            (Some("sent"), Some("skipped"))
                if times == 1
                    && dest != "google"
                    && retr.unwrap().last_error.contains("cannot retract") =>
            {
                self.sent_then_refunded += 1
            }
            _ => self.problems.push(format!(
                "{what}: conversion {:?}, retraction {:?}, counted {times} time(s) by the platform",
                state(conv),
                state(retr)
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------------------------

/// A table whose every column is text (or nullable), so that any garbage can reach the rules.
const SALES_SQL: &str = "create table public.sales (
    id          bigserial primary key,
    ref         text,
    email       text,
    phone       text,
    first_name  text,
    last_name   text,
    city        text,
    zip         text,
    country     text,
    ip          text,
    ua          text,
    amount      text,
    currency    text,
    consent     text,
    status      text,
    sold_at     timestamptz
)";

/// The contract's destinations and one rule over `public.sales` that maps the text column `amount`
/// to `value`.
fn corpus_config() -> String {
    let start = CONTRACT_TOML.find("[source]").unwrap();
    let rules = CONTRACT_TOML.find("[[rules]]").unwrap();
    format!(
        "{}\n{}",
        &CONTRACT_TOML[start..rules],
        r#"[[rules]]
name = "sale_done"
table = "public.sales"
when = { status = "done" }
event = "Purchase"
event_id = "sale-{ref}"
event_time = "{sold_at}"
value = "{amount}"
currency = "{currency}"
consent = "consent"
action_source = "website"
event_source_url = "https://shop.example.com/sales/{ref}"
destinations = ["meta", "google", "tiktok"]

[rules.match]
email = "email"
phone = "phone"
first_name = "first_name"
last_name = "last_name"
city = "city"
zip = "zip"
country = "country"
client_ip = "ip"
user_agent = "ua"

[rules.google]
conversion_action = "customers/1234567890/conversionActions/1001"

[rules.tiktok]
event = "CompletePayment"
"#
    )
}

/// One corpus row: column name → value (absent columns are NULL).
type CorpusRow = Vec<(&'static str, Option<String>)>;

fn corpus() -> Vec<CorpusRow> {
    let good = |r: &str| -> CorpusRow {
        vec![
            ("ref", Some(r.to_string())),
            ("email", Some(format!("{r}@example.com"))),
            ("ua", Some("Mozilla/5.0 corpus".into())),
            ("amount", Some("10.00".into())),
            ("consent", Some("granted".into())),
        ]
    };
    let with = |r: &str, col: &'static str, value: Option<String>| -> CorpusRow {
        let mut row = good(r);
        row.retain(|(c, _)| *c != col);
        row.push((col, value));
        row
    };
    // NULLs everywhere, and empty or blank ids.
    let mut rows: Vec<CorpusRow> = vec![
        vec![],
        vec![("ref", Some(String::new()))],
        vec![("ref", Some("   ".into()))],
        vec![("ref", Some("nulls".into()))],
        with("null-consent", "consent", None),
        with("null-amount", "amount", None),
        with("null-currency", "currency", None),
    ];
    // Text that looks like other encodings, control and invisible characters.
    for (i, text) in [
        "Ã©Ã¨Ã ",
        "\u{FFFD}\u{FFFD}",
        "\\xff\\xfe\\x00",
        "caf\u{0065}\u{0301}",
        "\u{202E}evil\u{202C}",
        "zero\u{200B}width",
        "\u{1}\u{2}\u{7f}",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀",
        "Ð¿Ñ€Ð¸Ð²ÐµÑ‚",
        "'; drop table sales; --",
    ]
    .iter()
    .enumerate()
    {
        let mut row = good(&format!("enc-{i}"));
        for col in ["first_name", "last_name", "city", "zip", "country"] {
            row.push((col, Some(text.to_string())));
        }
        rows.push(row);
        rows.push(with(
            &format!("enc-email-{i}"),
            "email",
            Some(text.to_string()),
        ));
        rows.push(with(
            &format!("enc-phone-{i}"),
            "phone",
            Some(text.to_string()),
        ));
        rows.push(with(
            &format!("enc-ref-{i}-{text}"),
            "consent",
            Some("yes".into()),
        ));
    }
    // Emails of every broken shape.
    for (i, email) in [
        "",
        " ",
        "@",
        "a@",
        "@b.com",
        "a@b",
        "a@@b.com",
        "a b@c.com",
        "a@b..com",
        ".a@b.com",
        "a@b.c",
        "mailto:a@b.com",
        "\"q\"@x.com",
        "a@[127.0.0.1]",
        "ÜNÏCØDÉ@exämple.com",
        "<a@b.com>",
        "a@b.com, c@d.com",
        "a@b.com\n",
    ]
    .iter()
    .enumerate()
    {
        rows.push(with(
            &format!("email-{i}"),
            "email",
            Some(email.to_string()),
        ));
    }
    rows.push(with(
        "email-long",
        "email",
        Some(format!("{}@example.com", "x".repeat(5_000))),
    ));
    // Phones of every broken shape.
    for (i, phone) in [
        "",
        "+",
        "0",
        "000",
        "abc",
        "+1 (650) 555-12",
        "++16505551212",
        &"1".repeat(40),
        "+999 123",
        "☎ 650 555 1212",
        "６５０５５５１２１２",
        "+44 20 7946 0958 ext. 12",
        "650-555-1212 or 650-555-1213",
        "+1-650-555-1212;ext=9",
        "tel:+16505551212",
        "-1",
        "1e10",
    ]
    .iter()
    .enumerate()
    {
        rows.push(with(
            &format!("phone-{i}"),
            "phone",
            Some(phone.to_string()),
        ));
    }
    // Non-numeric and odd values in the text column mapped to `value`.
    for (i, amount) in [
        "abc",
        "12,50",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "",
        " ",
        "$10",
        "10 USD",
        "0x10",
        "1_000",
        "½",
        "١٠",
        "  42  ",
        "-5",
        "0",
        "1e-9",
        "99999999999999999999999999",
    ]
    .iter()
    .enumerate()
    {
        rows.push(with(
            &format!("amount-{i}"),
            "amount",
            Some(amount.to_string()),
        ));
    }
    // Currencies, consent values, IPs and user agents that are not what they should be.
    for (i, currency) in ["usd", "US", "EURO", "€€€", "", "12", " eur "]
        .iter()
        .enumerate()
    {
        rows.push(with(
            &format!("currency-{i}"),
            "currency",
            Some(currency.to_string()),
        ));
    }
    for (i, consent) in ["", "TRUE", "nope", "grantedx", "✓"].iter().enumerate() {
        rows.push(with(
            &format!("consent-{i}"),
            "consent",
            Some(consent.to_string()),
        ));
    }
    for (i, ip) in ["999.1.1.1", "::g", "localhost", "203.0.113.7/24", ""]
        .iter()
        .enumerate()
    {
        rows.push(with(&format!("ip-{i}"), "ip", Some(ip.to_string())));
    }
    // Huge values.
    rows.push(with("huge-ua", "ua", Some("U".repeat(200_000))));
    rows.push(with("huge-name", "first_name", Some("N".repeat(1_000_000))));
    rows.push(with("huge-amount", "amount", Some("9".repeat(10_000))));
    // An id far longer than any index entry can hold, and not compressible.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: String = (0..4_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    rows.push(with(&format!("huge-ref-{noise}"), "zip", None));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_never_crashes_and_is_never_lost() {
    // GIVEN the sandbox, a table of text columns, and `pgcapi run` with a rule over it.
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SALES_SQL).await.unwrap();
    let env = contract_env(&db.url(), &sandbox.base_url());
    let toml = corpus_config();
    setup(&config_from(&toml, &env), SetupOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("pgcapi.toml");
    std::fs::write(&config_path, &toml).unwrap();
    let mut supervisor = Supervisor::new(config_path, env, dir.path().to_path_buf());

    // WHEN every corpus row is inserted as a finished sale, one transaction each and some together.
    let rows = corpus();
    for (i, row) in rows.iter().enumerate() {
        let mut columns = vec!["status".to_string(), "sold_at".to_string()];
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        let status = "done".to_string();
        params.push(&status);
        let sold_at = (i % 3 != 0).then(Utc::now);
        params.push(&sold_at);
        for (column, value) in row {
            columns.push(column.to_string());
            params.push(value);
        }
        let placeholders: Vec<String> = (1..=params.len()).map(|n| format!("${n}")).collect();
        client
            .execute(
                &format!(
                    "insert into sales ({}) values ({})",
                    columns.join(", "),
                    placeholders.join(", ")
                ),
                &params,
            )
            .await
            .unwrap_or_else(|e| panic!("corpus row {i}: {e}"));
    }

    // THEN every row ends with one row per destination, none pending, and the process is still up.
    let expected = (rows.len() * 3) as i64;
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        wait_for(120, "every corpus row to be recorded and settled", || {
            let client = &client;
            async move {
                let total = count(client, "select count(*) from pgcapi.deliveries").await;
                let pending = count(
                    client,
                    "select count(*) from pgcapi.deliveries where state = 'pending'",
                )
                .await;
                (total >= expected && pending == 0).then_some(())
            }
        }),
    )
    .await;
    supervisor.check_alive();
    let log = std::fs::read_to_string(supervisor.log_path(1)).unwrap_or_default();
    assert!(
        supervisor.unexpected_exits.is_empty(),
        "pgcapi run exited: {:?}",
        supervisor.unexpected_exits
    );
    if outcome.is_err() {
        let left = client
            .query(
                "select destination, event_id, state, attempts, coalesce(last_error, '') \
                 from pgcapi.deliveries where state = 'pending' order by id limit 20",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {:.60} {} attempts={} {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                    r.get::<_, i32>(3),
                    r.get::<_, String>(4)
                )
            })
            .collect::<Vec<_>>();
        panic!(
            "not settled: {} control rows of {expected}; pending:\n{}\npgcapi log:\n{log}",
            count(&client, "select count(*) from pgcapi.deliveries").await,
            left.join("\n")
        );
    }
    supervisor.stop();
    assert_eq!(
        count(&client, "select count(*) from pgcapi.deliveries").await,
        expected,
        "one control row per corpus row and destination"
    );
    // Every row that was not sent says why.
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where state <> 'sent' and coalesce(last_error, '') = ''"
        )
        .await,
        0
    );
    // Each non-numeric amount is failed with a reason that names the column, not the value.
    let bad_amounts = client
        .query(
            "select d.last_error from pgcapi.deliveries d where d.state = 'failed' \
             and d.last_error like '%value column \"amount\" is not a number%'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        bad_amounts.len() >= 3 * 10,
        "only {} rows failed for a non-numeric amount",
        bad_amounts.len()
    );
    // Rows that cannot become events are failed with their reason, each on its own.
    for (reason, rows) in [
        ("event_id needs column(s) ref and one is NULL or empty", 3),
        ("bytes long, more than the 1000 allowed", 1),
        ("currency is not a three-letter ISO 4217 code", 4),
    ] {
        assert_eq!(
            count(
                &client,
                &format!(
                    "select count(*) from pgcapi.deliveries where state = 'failed' \
                     and last_error like '%{reason}%'"
                )
            )
            .await,
            rows * 3,
            "{reason}"
        );
    }
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where event_id = 'sale-null-consent' \
             and state = 'skipped' and last_error = 'no consent'"
        )
        .await,
        3
    );
    // No raw identifier reached the control table (user agents travel unhashed, as the platforms want).
    for raw in ["xxxxxxxxxx@example.com", "NNNNNNNNNN", "650 555"] {
        assert_eq!(
            count(
                &client,
                &format!(
                    "select count(*) from pgcapi.deliveries where payload::text like '%{raw}%' \
                     or coalesce(last_error, '') like '%{raw}%'"
                )
            )
            .await,
            0,
            "{raw:?} in the control table"
        );
    }
    // What the platforms counted is exactly what the control table says was sent.
    let records = sandbox.records();
    let counted = Counted::from(&records);
    let sent = count(
        &client,
        "select count(*) from pgcapi.deliveries where state = 'sent'",
    )
    .await;
    assert_eq!(counted.items.values().sum::<usize>() as i64, sent);
    let states = client
        .query(
            "select destination, state, count(*) from pgcapi.deliveries group by 1, 2 order by 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}/{}={}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i64>(2)
            )
        })
        .collect::<Vec<_>>();
    eprintln!(
        "malformed corpus: {} rows -> {} control rows: {}",
        rows.len(),
        expected,
        states.join(" ")
    );
}

/// Found by the corpus: an event id too long for the control table's unique index stopped capture for
/// good (every restart failed on the same insert). Now that row fails, visibly, and capture goes on.
#[tokio::test]
async fn an_event_id_too_long_to_index_fails_its_row_and_capture_goes_on() {
    // GIVEN capture running on a rule over the text table.
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SALES_SQL).await.unwrap();
    let config = config_from(
        &corpus_config(),
        &contract_env(&db.url(), "http://127.0.0.1:9"),
    );
    setup(&config, SetupOptions::default()).await.unwrap();
    let capture = pgcapi::capture::Capture::new(Arc::new(config)).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { capture.run(stop_rx).await });

    // WHEN a sale with a 4,000-character (incompressible) reference is done, then a normal one.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let huge: String = (0..4_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let done = "insert into sales (ref, email, ua, amount, consent, status)
                values ($1, 'a@example.com', 'ua', '10', 'granted', 'done')";
    client.execute(done, &[&huge]).await.unwrap();
    client.execute(done, &[&"after-huge"]).await.unwrap();

    // THEN the normal sale is recorded, the long one is failed with a reason, and capture still runs.
    wait_for(30, "the sale after the long one", || {
        let client = &client;
        async move {
            (count(
                client,
                "select count(*) from pgcapi.deliveries where event_id = 'sale-after-huge'",
            )
            .await
                == 3)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'failed' \
             and last_error like '%event_id from column(s) ref is 4005 bytes long%'"
        )
        .await,
        3
    );
    assert!(!task.is_finished(), "capture stopped");
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

/// Found by the corpus: with a template like `sale-{ref}`, an empty or blank `ref` rendered the id
/// `sale-`, so every such sale shared one event id and all but the first vanished as duplicates. Now each
/// of them fails with the reason.
#[tokio::test]
async fn an_empty_id_column_fails_the_row_instead_of_sharing_an_event_id() {
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SALES_SQL).await.unwrap();
    let config = config_from(
        &corpus_config(),
        &contract_env(&db.url(), "http://127.0.0.1:9"),
    );
    setup(&config, SetupOptions::default()).await.unwrap();
    let capture = pgcapi::capture::Capture::new(Arc::new(config)).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { capture.run(stop_rx).await });

    // WHEN two sales with an empty and a blank reference are done, then a normal one.
    for reference in ["", "  ", "after-blank"] {
        client
            .execute(
                "insert into sales (ref, email, ua, amount, consent, status)
                 values ($1, 'a@example.com', 'ua', '10', 'granted', 'done')",
                &[&reference],
            )
            .await
            .unwrap();
    }

    // THEN each blank one has its own three failed rows, and none became the event `sale-`.
    wait_for(30, "the sale after the blank ones", || {
        let client = &client;
        async move {
            (count(
                client,
                "select count(*) from pgcapi.deliveries where event_id = 'sale-after-blank'",
            )
            .await
                == 3)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'failed' \
             and last_error like '%event_id needs column(s) ref and one is NULL or empty%'"
        )
        .await,
        6
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where event_id = 'sale-'"
        )
        .await,
        0
    );
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

async fn progress(client: &Client) -> String {
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

/// Found by the suite: a `NaN` total (or an infinite `paid_at`), which PostgreSQL stores happily, stopped
/// capture for good ("the slot stays before this change") and so every later order with it. Now that row
/// fails with the reason, and the next order goes through.
#[tokio::test]
async fn a_nan_total_or_infinite_time_fails_its_row_and_capture_goes_on() {
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    let config = config_from(
        CONTRACT_TOML,
        &contract_env(&db.url(), "http://127.0.0.1:9"),
    );
    setup(&config, SetupOptions::default()).await.unwrap();
    let capture = pgcapi::capture::Capture::new(Arc::new(config)).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { capture.run(stop_rx).await });

    // WHEN an order with total NaN, one paid at 'infinity', and a normal one are paid.
    client
        .batch_execute(
            "insert into orders (order_number, email, user_agent, total, status, ad_consent, paid_at)
             values ('nan', 'a@example.com', 'ua', 'NaN', 'paid', true, now()),
                    ('inf', 'a@example.com', 'ua', 10, 'paid', true, 'infinity'),
                    ('fine', 'a@example.com', 'ua', 10, 'paid', true, now())",
        )
        .await
        .unwrap();

    // THEN the normal order is recorded, the two others are failed with reasons naming the column.
    wait_for(30, "the normal order", || {
        let client = &client;
        async move {
            (count(
                client,
                "select count(*) from pgcapi.deliveries where event_id = 'order-fine'",
            )
            .await
                == 3)
                .then_some(())
        }
    })
    .await;
    for column in ["total", "paid_at"] {
        assert_eq!(
            count(
                &client,
                &format!(
                    "select count(*) from pgcapi.deliveries where state = 'failed' \
                     and event_id like 'invalid-%' and last_error like '%column \"{column}\"%'"
                )
            )
            .await,
            3,
            "{column}"
        );
    }
    assert!(!task.is_finished(), "capture stopped");
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

/// A destination that sends, then never answers: the process "dies" after the platform got the batch
/// and before the outcome is recorded.
struct SendThenHang(Box<dyn pgcapi::destinations::Destination>);

impl pgcapi::destinations::Destination for SendThenHang {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn platform(&self) -> pgcapi::platform::Platform {
        self.0.platform()
    }
    fn max_batch(&self) -> usize {
        self.0.max_batch()
    }
    fn send<'a>(
        &'a self,
        batch: &'a [pgcapi::event::Delivery],
    ) -> pgcapi::destinations::SendFuture<'a> {
        Box::pin(async move {
            let _ = self.0.send(batch).await;
            std::future::pending().await
        })
    }
}

/// Found by the suite: a conversion whose batch reached Google just before a `kill -9` (so no outcome
/// was recorded: attempts 0, the dead process's lease left behind) was cancelled by the refund that
/// came next as if it had never been sent, and Google kept counting the refunded order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_sent_just_before_a_crash_is_retracted_when_refunded() {
    // GIVEN capture running, and a paid order recorded for the three platforms.
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    let config = config_from(CONTRACT_TOML, &contract_env(&db.url(), &sandbox.base_url()));
    setup(&config, SetupOptions::default()).await.unwrap();
    let capture = pgcapi::capture::Capture::new(Arc::new(config.clone())).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { capture.run(stop_rx).await });
    client
        .batch_execute(
            "insert into orders (order_number, email, user_agent, total, status, ad_consent, paid_at)
             values ('c1', 'a@example.com', 'ua', 10, 'paid', true, now())",
        )
        .await
        .unwrap();
    let rows = |sql: &'static str, n: i64| {
        let client = &client;
        move || async move { (count(client, sql).await == n).then_some(()) }
    };
    wait_for(
        30,
        "the conversions",
        rows("select count(*) from pgcapi.deliveries", 3),
    )
    .await;

    // AND a pgcapi whose Google batch reached the platform, then died before recording the outcome.
    let google = || {
        pgcapi::destinations::build("google", &config.destinations["google"], &config.dispatch)
            .unwrap()
    };
    let dying = pgcapi::dispatch::Dispatcher::new(
        connect_url(&db.url()).await,
        "pgcapi",
        config.dispatch.clone(),
        vec![Box::new(SendThenHang(google()))],
    );
    let round = tokio::spawn(async move { dying.run_once().await });
    wait_for(30, "Google to count the conversion", || async {
        (sandbox.records().google_ads.conversions.len() == 1).then_some(())
    })
    .await;
    round.abort();
    // Its lease has run out (as after lease_secs).
    client
        .batch_execute(
            "update pgcapi.deliveries set lease_until = now() - interval '1 second'
             where destination = 'google' and lease_owner is not null",
        )
        .await
        .unwrap();

    // WHEN the order is refunded and a live pgcapi dispatches to Google.
    client
        .batch_execute("update orders set status = 'refunded' where order_number = 'c1'")
        .await
        .unwrap();
    wait_for(
        30,
        "the retractions",
        rows("select count(*) from pgcapi.deliveries", 6),
    )
    .await;
    let live = pgcapi::dispatch::Dispatcher::new(
        connect_url(&db.url()).await,
        "pgcapi",
        config.dispatch.clone(),
        vec![google()],
    );
    wait_for(30, "Google's rows to settle", || {
        let (client, live) = (&client, &live);
        async move {
            live.run_once().await.unwrap();
            (count(
                client,
                "select count(*) from pgcapi.deliveries where destination = 'google' and state = 'pending'",
            )
            .await
                == 0)
                .then_some(())
        }
    })
    .await;

    // THEN Google's conversion is recorded as sent, and retracted there.
    let google_rows: Vec<(String, String, String)> = client
        .query(
            "select kind, state, coalesce(last_error, '') from pgcapi.deliveries
             where destination = 'google' order by kind",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        google_rows
            .iter()
            .map(|(k, s, _)| (k.as_str(), s.as_str()))
            .collect::<Vec<_>>(),
        [("conversion", "sent"), ("retraction", "sent")],
        "{google_rows:?}"
    );
    let records = sandbox.records();
    assert_eq!(records.google_ads.conversions.len(), 1);
    assert_eq!(records.google_ads.adjustments.len(), 1);
    assert_eq!(
        records.google_ads.adjustments[0].order_id.as_deref(),
        Some("order-c1")
    );
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

/// Found by the suite: when PostgreSQL restarted (fast shutdown) while capture was writing, the control
/// connection answered "FATAL: terminating connection due to administrator command" (57P01), which
/// capture took for a statement error and stopped for good. Here the control connection is terminated
/// again and again while orders flow: capture must reconnect every time and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_reconnects_when_its_control_connection_is_terminated() {
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.unwrap();
    let config = config_from(
        CONTRACT_TOML,
        &contract_env(&db.url(), "http://127.0.0.1:9"),
    );
    setup(&config, SetupOptions::default()).await.unwrap();
    let capture = pgcapi::capture::Capture::new(Arc::new(config)).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { capture.run(stop_rx).await });

    // WHEN orders are paid in many small transactions while capture's control connection is
    // terminated again and again, each time once capture is busy writing again.
    let writer = db.connect().await;
    let writer_pid: i32 = writer
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inserts = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut n: i64 = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                writer
                    .execute(
                        "insert into orders (order_number, email, user_agent, total, status,
                                             ad_consent, paid_at)
                         values ($1, 'a@example.com', 'ua', 10, 'paid', true, now())",
                        &[&format!("t{n}")],
                    )
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let control_backends = "select pid from pg_stat_activity
         where datname = current_database() and pid not in (pg_backend_pid(), $1)
           and backend_type = 'client backend'";
    for round in 0..4 {
        let before = count(&client, "select count(*) from pgcapi.deliveries").await;
        wait_for(30, "capture to reconnect and write", || {
            let client = &client;
            async move {
                let connected = !client
                    .query(control_backends, &[&writer_pid])
                    .await
                    .unwrap()
                    .is_empty();
                let writing =
                    count(client, "select count(*) from pgcapi.deliveries").await > before + 30;
                (connected && writing).then_some(())
            }
        })
        .await;
        client
            .execute(
                &format!("select pg_terminate_backend(pid) from ({control_backends}) b"),
                &[&writer_pid],
            )
            .await
            .unwrap();
        assert!(
            !task.is_finished(),
            "capture stopped after {round} terminations"
        );
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let orders = inserts.await.unwrap();

    // THEN capture is still running and recorded every order.
    wait_for(60, "every order", || {
        let client = &client;
        async move {
            (count(client, "select count(*) from pgcapi.deliveries").await == orders * 3)
                .then_some(())
        }
    })
    .await;
    assert!(!task.is_finished(), "capture stopped");
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

/// Batches a destination has in flight at once: each may be resent after a kill.
const IN_FLIGHT: u64 = pgcapi::dispatch::BATCHES_IN_FLIGHT as u64;

/// The most raw duplicate items a platform may receive: every batch in flight at each kill, and every
/// batch whose response was lost, resent once.
fn duplicate_bound(kills: u32, responses_lost: u64) -> u64 {
    (u64::from(kills) * IN_FLIGHT + responses_lost) * BATCH as u64
}

//! The fault suite itself: the seeded workload under kills, platform faults, a PostgreSQL restart and an idle spell.

use super::*;
use crate::support::{config_from, contract_env, count, wait_for, TestDb, CONTRACT_TOML, SHOP_SQL};
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::platform::Platform;
use pgcapi::testbed::sandbox::{Faults, Records, Sandbox, SandboxConfig, SandboxHandle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_postgres::Client;

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
    let (rig, mut client) = Rig::start(seed).await;

    // WHEN kills come at random moments from a seeded schedule, all through the run,
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = start_killer(rig.supervisor.clone(), draining.clone(), seed, started);

    // AND the workload runs wave by wave, with PostgreSQL restarted halfway,
    let (changes, pg_restart) = run_workload(&workload, &rig, &mut client, started).await;
    let workload_done = started.elapsed();
    eprintln!(
        "{:?} workload done: {}",
        started.elapsed(),
        progress(&client).await
    );

    // AND then, once capture has caught up with the workload, a long idle spell in which only an
    // unrelated table changes (THEN the slot follows the WAL of the unrelated table),
    let (unrelated, advanced_after) = idle_spell(&client, &rig.supervisor, started).await;

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
    let end = Ending::of(&rig.supervisor).await;
    let records = rig.sandbox.records();

    // THEN everything the workload implies happened, exactly once.
    let rows = control_rows(&client).await;
    let verdict = Verdict::check(&workload, &rows, &records);
    let run = Run {
        seed,
        changes,
        unrelated,
        kill_moments,
        pg_restart,
        advanced_after,
        workload_done,
        drained,
        end,
    };
    let summary = run.summary(
        &workload,
        rows.len(),
        &states(&client).await,
        &verdict,
        &records,
    );
    eprintln!("fault suite summary:\n  {}", summary.join("\n  "));
    run.assert_ran_as_planned(planned_changes);
    assert_verdict(&verdict, &records, run.end.kills);
}

/// What the suite runs on: the faulty sandbox, the shop database and the supervised `pgcapi run`.
struct Rig {
    sandbox: SandboxHandle,
    db: TestDb,
    supervisor: Arc<Mutex<Supervisor>>,
    /// Holds the log directory unless PGCAPI_FAULT_KEEP_LOGS keeps it.
    _dir: Option<tempfile::TempDir>,
}

impl Rig {
    /// Starts it all, and a connection to the shop database.
    async fn start(seed: u64) -> (Rig, Client) {
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
        let client = db.connect().await;
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
        let rig = Rig {
            sandbox,
            db,
            supervisor,
            _dir,
        };
        (rig, client)
    }
}

/// Kills `pgcapi run` at moments drawn from a schedule seeded by `seed`, until `draining` is set and
/// there were at least [`MIN_KILLS`]; returns the moments (since `started`).
fn start_killer(
    supervisor: Arc<Mutex<Supervisor>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    seed: u64,
    started: Instant,
) -> tokio::task::JoinHandle<Vec<Duration>> {
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
}

/// Runs the workload wave by wave, restarting PostgreSQL halfway (and reconnecting `client`); returns
/// the rows changed and how long pgcapi took to stream again after the restart.
async fn run_workload(
    workload: &Workload,
    rig: &Rig,
    client: &mut Client,
    started: Instant,
) -> (u64, Duration) {
    let mut changes = 0u64;
    let mut pg_restart = None;
    for (w, wave) in workload.waves.iter().enumerate() {
        // Pacing only (the workload's tempo), not a synchronization.
        let due = WAVE_PACE * w as u32;
        if let Some(early) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(early).await;
        }
        if w == WAVES / 2 {
            pg_restart = Some(restart_postgres(&rig.db, &rig.supervisor).await);
            *client = rig.db.connect().await;
        }
        changes += run_wave(client, w, wave).await;
    }
    (changes, pg_restart.unwrap())
}

/// Commits one wave's transactions, checking each statement's row count. In [`DDL_WAVE`] the column is
/// renamed before the wave's first transaction that changes orders, and back after it.
async fn run_wave(client: &mut Client, w: usize, wave: &[Tx]) -> u64 {
    let mut changes = 0;
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
    changes
}

/// Waits for capture to catch up with the workload, then writes only to an unrelated table for
/// [`IDLE`]. Checks that the slot follows that table's WAL (it is not retained); returns the rows
/// written and how soon into the spell the slot confirmed past them.
async fn idle_spell(
    client: &Client,
    supervisor: &Mutex<Supervisor>,
    started: Instant,
) -> (u64, Duration) {
    let (_, wal_at_workload_end) = slot_and_wal(client).await;
    wait_for(
        120,
        "capture to catch up with the workload",
        || async move { (slot_and_wal(client).await.0 >= wal_at_workload_end).then_some(()) },
    )
    .await;
    let caught_up = started.elapsed();
    eprintln!("{caught_up:?} caught up: {}", progress(client).await);
    let idle_started = Instant::now();
    let mut unrelated = 0u64;
    let mut mark = None;
    let mut advanced_after = None;
    let (confirmed_before_idle, _) = slot_and_wal(client).await;
    while idle_started.elapsed() < IDLE {
        unrelated += client
            .execute(
                "insert into page_views (path) select '/p/' || g from generate_series(1, 50) g",
                &[],
            )
            .await
            .unwrap();
        let (confirmed, wal) = slot_and_wal(client).await;
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
    let (_, wal_at_idle_end) = slot_and_wal(client).await;
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
    wait_for(
        60,
        "the slot to confirm the idle spell's WAL",
        || async move { (slot_and_wal(client).await.0 >= wal_at_idle_end).then_some(()) },
    )
    .await;
    (unrelated, advanced_after)
}

/// How the supervised process fared, read when the run ends (which stops it).
struct Ending {
    kills: u32,
    incarnations: u32,
    /// Incarnations that exited by themselves, with their log tails.
    unexpected: Vec<String>,
    /// Incarnations that logged binding the renamed column by position.
    bound_by_position: usize,
}

impl Ending {
    async fn of(supervisor: &Mutex<Supervisor>) -> Ending {
        let mut s = supervisor.lock().await;
        s.check_alive();
        s.stop();
        let bound_by_position = (1..=s.incarnations)
            .filter(|i| {
                std::fs::read_to_string(s.log_path(*i))
                    .is_ok_and(|log| log.contains("reading it by position"))
            })
            .count();
        Ending {
            kills: s.kills,
            incarnations: s.incarnations,
            unexpected: s.unexpected_exits.clone(),
            bound_by_position,
        }
    }
}

/// The control table's row count per state, as `state=n` words.
async fn states(client: &Client) -> String {
    client
        .query(
            "select state, count(*) from pgcapi.deliveries group by state order by state",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one run of the suite did, for its summary and its own checks.
struct Run {
    seed: u64,
    changes: u64,
    unrelated: u64,
    kill_moments: Vec<Duration>,
    pg_restart: Duration,
    advanced_after: Duration,
    workload_done: Duration,
    drained: Duration,
    end: Ending,
}

impl Run {
    /// The summary the suite prints, a line a fact.
    fn summary(
        &self,
        workload: &Workload,
        rows: usize,
        states: &str,
        verdict: &Verdict,
        records: &Records,
    ) -> Vec<String> {
        let Ending {
            kills,
            incarnations,
            bound_by_position,
            ..
        } = self.end;
        let mut summary = vec![
            format!("seed {}", self.seed),
            format!(
                "{} source changes ({} orders, {} leads) + {} unrelated rows in the idle spell",
                self.changes,
                workload.orders.len(),
                workload.leads.len(),
                self.unrelated
            ),
            format!(
                "{kills} kill -9 (at {:?} s), {incarnations} incarnations of pgcapi run",
                self.kill_moments.iter().map(|d| d.as_secs()).collect::<Vec<_>>()
            ),
            format!(
                "PostgreSQL restarted (fast) after wave {}; pgcapi streaming again {:.1?} later",
                WAVES / 2,
                self.pg_restart
            ),
            format!(
                "idle {IDLE:?}: slot confirmed past unrelated WAL after {:.1?}",
                self.advanced_after
            ),
            format!(
                "orders.ttclid renamed for one transaction of wave {DDL_WAVE}: {bound_by_position} \
                 incarnation(s) bound its changes by position"
            ),
            format!("control table: {rows} rows: {states}"),
            format!(
                "refunded orders x destinations: {} cancelled before sending; {} sent (some after an \
                 attempt whose answer was lost), then retracted (Google) or skipped (Meta, TikTok)",
                verdict.cancelled_before_send, verdict.sent_then_refunded
            ),
        ];
        for (name, platform) in SUITE_PLATFORMS {
            summary.push(platform_line(name, platform, records, kills));
        }
        summary.push(format!(
            "timeline: workload {:.0?}, drained {:.0?}",
            self.workload_done, self.drained
        ));
        summary
    }

    /// The run itself went as planned: no incarnation exited by itself, every planned change was made,
    /// enough kills, and the renamed column was bound by position.
    fn assert_ran_as_planned(&self, planned_changes: u64) {
        let unexpected = &self.end.unexpected;
        let kills = self.end.kills;
        assert!(
            unexpected.is_empty(),
            "pgcapi run exited by itself {} time(s):\n{}",
            unexpected.len(),
            unexpected.join("\n---\n")
        );
        assert_eq!(self.changes, planned_changes);
        assert!(kills >= MIN_KILLS, "only {kills} kills");
        if std::env::var_os("PGCAPI_FAULT_LOG").is_none() {
            assert!(
                self.end.bound_by_position > 0,
                "no incarnation logged binding the renamed column by position"
            );
        }
    }
}

/// The platforms of the suite's destinations, by destination name.
const SUITE_PLATFORMS: [(&str, Platform); 3] = [
    ("meta", Platform::Meta),
    ("google", Platform::GoogleAds),
    ("tiktok", Platform::Tiktok),
];

/// One platform's line of the summary: requests, faults, items and raw duplicates against their bound.
fn platform_line(name: &str, platform: Platform, records: &Records, kills: u32) -> String {
    let c = records.counters(crate::support::sandbox_api(platform));
    format!(
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
    )
}

/// The end state against the model, the raw duplicates against their bound, and the faults and both
/// refund paths really exercised.
fn assert_verdict(verdict: &Verdict, records: &Records, kills: u32) {
    assert!(
        verdict.problems.is_empty(),
        "{} problem(s), first ones:\n{}",
        verdict.problems.len(),
        verdict.problems[..verdict.problems.len().min(25)].join("\n")
    );
    // Raw duplicates (resent items, before the platform's dedup) come only from batches in flight at a
    // kill (at most IN_FLIGHT per destination) or whose response was lost.
    for (_, platform) in SUITE_PLATFORMS {
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

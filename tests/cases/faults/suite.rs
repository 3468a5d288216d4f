//! The fault suite itself: the seeded workload under kills, platform faults, a PostgreSQL restart and an idle spell.

use super::*;
use crate::support::{config_from, contract_env, count, wait_for, TestDb, CONTRACT_TOML, SHOP_SQL};
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::testbed::sandbox::{Faults, Sandbox, SandboxConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

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

//! Recovery: when capture cannot proceed (a mapped column dropped or renamed), `pgcapi run` keeps
//! dispatching what is recorded, says it is stuck and where, and the recovery its message advises
//! (rename back, re-add the column, change the config to the new name) then works.

use crate::support::{count, pgcapi_command, wait_for, KillOnDrop, Shop, CONTRACT_TOML};
use pgcapi::testbed::sandbox::Faults;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::Client;

/// The contract config with fast dispatch retries.
fn config() -> String {
    format!("{CONTRACT_TOML}\n[dispatch]\nretry_initial_ms = 100\nretry_max_ms = 1000\n")
}

/// `pgcapi run` with its log (info level) in `log`.
fn start(shop: &Shop, config: &Path, log: &Path) -> KillOnDrop {
    let child = pgcapi_command(&shop.env)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(log).unwrap())
        .args(["run", "--config"])
        .arg(config)
        .spawn()
        .expect("spawn pgcapi run");
    KillOnDrop(child)
}

/// Sends SIGTERM and returns whether the process exited with code 0 (within 30 s).
fn terminate(process: &mut KillOnDrop) -> bool {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(status) = process.0.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("pgcapi run did not stop on SIGTERM");
}

fn alive(process: &mut KillOnDrop) -> bool {
    process.0.try_wait().unwrap().is_none()
}

const PAID_ORDER: &str = "insert into orders (order_number, email, phone, client_ip, user_agent, \
    gclid, ttclid, total, status, ad_consent, paid_at) values ($1, 'Pat.Doe@Example.com', \
    '(650) 555-1212', '203.0.113.7', 'Mozilla/5.0 test', 'Cj0KCQ-test-gclid', 'tt-1', 42.50, 'paid', \
    true, now())";

/// The row of `capture_state`: state, error, error_lsn, error_since, seen_at.
type State = (
    String,
    Option<String>,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
    chrono::DateTime<chrono::Utc>,
);

async fn capture_state(client: &Client) -> Option<State> {
    client
        .query_opt(
            "select state, error, error_lsn::text, error_since, seen_at from pgcapi.capture_state",
            &[],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

async fn wait_for_state(client: &Client, secs: u64, state: &str) -> State {
    wait_for(secs, &format!("capture_state {state}"), || async {
        capture_state(client).await.filter(|s| s.0 == state)
    })
    .await
}

async fn current_lsn(client: &Client) -> String {
    client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn lsn_after(client: &Client, lsn: &str, than: &str) -> bool {
    client
        .query_one("select $1::text::pg_lsn > $2::text::pg_lsn", &[&lsn, &than])
        .await
        .unwrap()
        .get(0)
}

/// Waits until `order`'s conversion is `sent` to all three destinations.
async fn wait_sent(client: &Client, secs: u64, order: &str) {
    let id = format!("order-{order}");
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let rows: Vec<(String, String, Option<String>)> = client
            .query(
                "select destination, state, last_error from pgcapi.deliveries \
                 where event_id = $1 and kind = 'conversion' order by destination",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if rows.len() == 3 && rows.iter().all(|r| r.1 == "sent") {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "timed out after {secs}s waiting for order {order} to be sent: {rows:?}, capture {:?}",
                capture_state(client).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times each platform received `order`'s conversion, and whether Meta's carried the
/// email hash.
fn received(shop: &Shop, order: &str) -> (usize, usize, usize, bool) {
    let id = format!("order-{order}");
    let records = shop.sandbox.records();
    let meta: Vec<_> = records
        .meta
        .events
        .iter()
        .filter(|e| e.event_id.as_deref() == Some(id.as_str()))
        .collect();
    let with_email = meta.iter().all(|e| {
        e.hashed.get("em").map(|v| v[0].clone())
            == Some(pgcapi::identity::hash("pat.doe@example.com"))
    });
    let google = records
        .google_ads
        .conversions
        .iter()
        .filter(|c| c.order_id.as_deref() == Some(id.as_str()))
        .count();
    let tiktok = records
        .tiktok
        .events
        .iter()
        .filter(|e| e.event_id.as_deref() == Some(id.as_str()))
        .count();
    (meta.len(), google, tiktok, !meta.is_empty() && with_email)
}

/// Waits until capture says it is stuck, and checks that it says why, at the LSN of the change after
/// `before` (not 0/0). Returns that state.
async fn assert_stuck_at_the_change(client: &Client, before: &str) -> State {
    let stuck = wait_for_state(client, 30, "stuck").await;
    let error = stuck.1.clone().unwrap_or_default();
    for part in [
        "ttclid",
        "order_paid",
        "public.orders",
        "rename the column back",
    ] {
        assert!(error.contains(part), "{part:?} missing from {error:?}");
    }
    let lsn = stuck.2.clone().expect("error_lsn");
    assert!(lsn_after(client, &lsn, before).await, "{lsn} <= {before}");
    assert!(
        error.contains(&lsn),
        "the message names the LSN {lsn}: {error:?}"
    );
    assert!(!error.contains("0/0 "), "{error:?}");
    stuck
}

/// Once the platforms are back, the pending rows are sent, each once, while `run` keeps running and
/// records nothing of order 7003; the state stays stuck, keeps its start time and is refreshed.
async fn dispatch_goes_on_while_stuck(
    shop: &Shop,
    run: &mut KillOnDrop,
    stuck: &State,
    log: &Path,
) {
    let client = &shop.client;
    shop.sandbox.set_faults(Faults::default());
    for order in ["7001", "7002"] {
        wait_sent(client, 60, order).await;
        assert_eq!(received(shop, order), (1, 1, 1, true), "order {order}");
    }
    assert!(
        alive(run),
        "pgcapi run must keep running while capture is stuck"
    );
    assert_eq!(
        count(
            client,
            "select count(*) from pgcapi.deliveries where event_id = 'order-7003'"
        )
        .await,
        0
    );
    // AND the state stays stuck, keeps its start time and is refreshed (capture retries meanwhile).
    wait_for(40, "capture_state to be refreshed", || async {
        let now = capture_state(client).await?;
        (now.0 == "stuck" && now.3 == stuck.3 && now.4 > stuck.4).then_some(())
    })
    .await;
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("capture is stuck"), "{text}");
}

#[tokio::test]
async fn a_stuck_capture_leaves_dispatch_running_and_re_adding_the_column_unblocks_it() {
    // GIVEN pgcapi run, with every platform failing so that what capture records stays pending.
    let shop = Shop::start(&config()).await;
    let client = &shop.client;
    shop.sandbox.set_faults(Faults {
        error_500_ratio: 1.0,
        ..Faults::default()
    });
    let log = shop.dir.path().join("run.log");
    let mut run = start(&shop, &shop.config_path, &log);
    wait_for_state(client, 30, "streaming").await;
    for order in ["7001", "7002"] {
        client.execute(PAID_ORDER, &[&order]).await.unwrap();
    }
    wait_for(30, "the conversions to be recorded", || async {
        (count(client, "select count(*) from pgcapi.deliveries").await == 6).then_some(())
    })
    .await;

    // WHEN a mapped column is dropped and another order is paid.
    let before = current_lsn(client).await;
    client
        .batch_execute(
            "alter table orders drop column ttclid;
             insert into orders (order_number, email, client_ip, user_agent, gclid, total, status,
               ad_consent, paid_at)
             values ('7003', 'pat.doe@example.com', '203.0.113.7', 'Mozilla/5.0 test',
               'Cj0KCQ-test-gclid', 9, 'paid', true, now());",
        )
        .await
        .unwrap();

    // THEN capture says it is stuck, why, and at the LSN of that change (not 0/0).
    let stuck = assert_stuck_at_the_change(client, &before).await;

    // AND dispatch goes on: once the platforms are back, the pending rows are sent, each once.
    dispatch_goes_on_while_stuck(&shop, &mut run, &stuck, &log).await;

    // WHEN the column is re-added (what the message advises).
    client
        .batch_execute("alter table orders add column ttclid text")
        .await
        .unwrap();

    // THEN capture resumes by itself: the order paid while the column was missing is delivered
    // (without a TikTok click id), and the state says streaming again.
    wait_sent(client, 90, "7003").await;
    assert_eq!(received(&shop, "7003"), (1, 1, 1, true));
    wait_for_state(client, 30, "streaming").await;
    // Each earlier conversion still reached each platform once.
    for order in ["7001", "7002"] {
        assert_eq!(received(&shop, order), (1, 1, 1, true), "order {order}");
    }

    // AND SIGTERM stops it cleanly, with exit code 0.
    assert!(terminate(&mut run), "exit code 0 on SIGTERM");
}

#[tokio::test]
async fn renaming_a_mapped_column_back_unblocks_capture() {
    // GIVEN pgcapi run delivering.
    let shop = Shop::start(&config()).await;
    let client = &shop.client;
    let log = shop.dir.path().join("run.log");
    let mut run = start(&shop, &shop.config_path, &log);
    wait_for_state(client, 30, "streaming").await;
    client.execute(PAID_ORDER, &[&"7101"]).await.unwrap();
    wait_sent(client, 30, "7101").await;

    // WHEN the email column is renamed and an order is paid, capture stops on that change.
    let before = current_lsn(client).await;
    client
        .batch_execute("alter table orders rename column email to mail")
        .await
        .unwrap();
    client
        .execute(
            &PAID_ORDER.replace("(order_number, email,", "(order_number, mail,"),
            &[&"7102"],
        )
        .await
        .unwrap();
    let stuck = wait_for_state(client, 30, "stuck").await;
    let error = stuck.1.unwrap_or_default();
    assert!(error.contains("\"email\""), "{error}");
    assert!(lsn_after(client, &stuck.2.expect("error_lsn"), &before).await);

    // WHEN it is renamed back (what the message advises), and another order is paid.
    client
        .batch_execute("alter table orders rename column mail to email")
        .await
        .unwrap();
    client.execute(PAID_ORDER, &[&"7103"]).await.unwrap();

    // THEN capture resumes without a restart; the order paid under the other name is delivered with
    // its email (bound by position), and so is the next.
    for order in ["7102", "7103"] {
        wait_sent(client, 90, order).await;
        assert_eq!(received(&shop, order), (1, 1, 1, true), "order {order}");
    }
    assert_eq!(received(&shop, "7101"), (1, 1, 1, true));
    wait_for_state(client, 30, "streaming").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("reading it by position"), "{text}");
    assert!(terminate(&mut run), "exit code 0 on SIGTERM");
}

#[tokio::test]
async fn changing_the_config_to_the_new_column_name_unblocks_capture() {
    // GIVEN a shop where, while pgcapi was not running, an order was paid, the email column renamed,
    // and another order paid.
    let shop = Shop::start(&config()).await;
    let client = &shop.client;
    client.execute(PAID_ORDER, &[&"7201"]).await.unwrap();
    client
        .batch_execute("alter table orders rename column email to mail")
        .await
        .unwrap();
    client
        .execute(
            &PAID_ORDER.replace("(order_number, email,", "(order_number, mail,"),
            &[&"7202"],
        )
        .await
        .unwrap();

    // WHEN pgcapi run starts with the old config, it stays up and says what does not match.
    let log = shop.dir.path().join("run.log");
    let mut run = start(&shop, &shop.config_path, &log);
    let stuck = wait_for_state(client, 30, "stuck").await;
    let error = stuck.1.unwrap_or_default();
    assert!(error.contains("\"email\""), "{error}");
    assert!(alive(&mut run));
    assert!(terminate(&mut run), "exit code 0 on SIGTERM");

    // WHEN the config names the new column and pgcapi run starts again.
    let fixed = config().replacen("email = \"email\"", "email = \"mail\"", 1);
    let fixed_path = shop.dir.path().join("fixed.toml");
    std::fs::write(&fixed_path, fixed).unwrap();
    let mut run = start(&shop, &fixed_path, &shop.dir.path().join("run2.log"));
    client
        .execute(
            &PAID_ORDER.replace("(order_number, email,", "(order_number, mail,"),
            &[&"7203"],
        )
        .await
        .unwrap();

    // THEN every order is delivered with its email, the one captured under the old name too.
    for order in ["7201", "7202", "7203"] {
        wait_sent(client, 60, order).await;
        assert_eq!(received(&shop, order), (1, 1, 1, true), "order {order}");
    }
    wait_for_state(client, 30, "streaming").await;
    assert!(terminate(&mut run), "exit code 0 on SIGTERM");
}

#[tokio::test]
async fn after_a_restart_the_stuck_change_is_judged_by_the_table_as_it_was_then() {
    // GIVEN pgcapi run stuck on an order paid after the email column was renamed to mail.
    let shop = Shop::start(&config()).await;
    let client = &shop.client;
    let mut run = start(&shop, &shop.config_path, &shop.dir.path().join("run.log"));
    wait_for_state(client, 30, "streaming").await;
    client
        .batch_execute("alter table orders rename column email to mail")
        .await
        .unwrap();
    client
        .execute(
            &PAID_ORDER.replace("(order_number, email,", "(order_number, mail,"),
            &[&"7302"],
        )
        .await
        .unwrap();
    let stuck = wait_for_state(client, 30, "stuck").await;
    assert!(stuck.2.is_some(), "stuck on a change, with its LSN");
    assert!(terminate(&mut run), "exit code 0 on SIGTERM");

    // WHEN the column is renamed once more, and pgcapi restarts with a config naming mail: it matches
    // the table as of the stuck change, not as it is now.
    client
        .batch_execute("alter table orders rename column mail to email_address")
        .await
        .unwrap();
    let fixed = config().replacen("email = \"email\"", "email = \"mail\"", 1);
    let fixed_path = shop.dir.path().join("fixed.toml");
    std::fs::write(&fixed_path, fixed).unwrap();
    let mut run = start(&shop, &fixed_path, &shop.dir.path().join("run2.log"));

    // THEN the stuck change is recorded and delivered with its email, and capture says streaming.
    wait_sent(client, 60, "7302").await;
    assert_eq!(received(&shop, "7302"), (1, 1, 1, true));
    wait_for_state(client, 30, "streaming").await;
    assert!(terminate(&mut run), "exit code 0 on SIGTERM");
}

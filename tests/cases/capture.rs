//! Capture: row changes of the shop schema become control-table rows exactly once, with the slot kept
//! in step.

use crate::support::{config_from, contract_env, count, wait_for, TestDb, CONTRACT_TOML, SHOP_SQL};
use pgcapi::capture::{Capture, CaptureError};
use pgcapi::config::Config;
use pgcapi::ops::setup::{setup, SetupOptions};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// An in-process capture worker and the switch that stops it.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), CaptureError>>,
}

impl Running {
    fn start(config: &Config) -> Running {
        let capture = Capture::new(Arc::new(config.clone())).expect("capture");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move { capture.run(rx).await });
        Running { stop, task }
    }

    async fn stop(self) -> Result<(), CaptureError> {
        let _ = self.stop.send(true);
        self.task.await.expect("capture task")
    }
}

/// A shop database set up for the contract config.
async fn shop() -> (TestDb, Client, Config) {
    let db = TestDb::start().await;
    let client = db.connect().await;
    client.batch_execute(SHOP_SQL).await.expect("shop schema");
    let config = config_from(
        CONTRACT_TOML,
        &contract_env(&db.url(), "http://127.0.0.1:9"),
    );
    setup(&config, SetupOptions::default())
        .await
        .expect("setup");
    (db, client, config)
}

async fn deliveries(
    client: &Client,
) -> Vec<(String, String, String, String, String, Option<String>)> {
    client
        .query(
            "select rule, destination, event_id, kind, state, last_error from pgcapi.deliveries \
             order by event_id, rule, destination",
            &[],
        )
        .await
        .expect("deliveries")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

async fn confirmed_flush(client: &Client) -> String {
    client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'pgcapi'",
            &[],
        )
        .await
        .expect("slot")
        .get(0)
}

const PAID_ORDER: &str =
    "insert into orders (order_number, email, phone, first_name, last_name, city, \
    region, postal_code, country, client_ip, user_agent, fbc, fbp, gclid, ttclid, total, currency, \
    status, ad_consent, paid_at) values ($1, ' Jane.Doe@Example.COM ', '(650) 555-1212', 'Jane', \
    'Doe', 'San Francisco', 'California', '94105-1234', 'US', '203.0.113.7', 'Mozilla/5.0 test', \
    'fb.1.1700000000000.AbCdEf', 'fb.1.1700000000000.123456', 'Cj0KCQ-test-gclid', 'tt-click-1', \
    123.45, 'USD', 'paid', $2, now())";

/// A pending order paid later, a paid order updated again and again, an order without usable keys,
/// a refund, and leads won with and without consent and one only qualified.
const SHOP_CHANGES: &str = "insert into orders (order_number, email, total) values ('1004', 'x@example.com', 10);
             update orders set status = 'paid', ad_consent = true, paid_at = now() where order_number = '1004';
             update orders set notes = 'first' where order_number = '1001';
             update orders set notes = 'second' where order_number = '1001';
             update orders set total = 99 where order_number = '1001';
             insert into orders (order_number, email, phone, total, status, ad_consent)
               values ('1005', 'not-an-email', 'call me', 5, 'paid', true);
             update orders set status = 'refunded' where order_number = '1003';
             insert into leads (email, phone, first_name, last_name, country, gclid, fbclid, clicked_at,
               meta_lead_id, stage, deal_value, consent, won_at)
               values ('lead@example.org', '+44 20 7946 0958', 'Ann', 'Lee', 'GB', 'gclid-lead',
                       'IwAR-fbclid', now() - interval '1 day', '1234567', 'won', 5000, 'GRANTED', now());
             insert into leads (email, stage, deal_value, consent) values ('no@example.org', 'won', 10, 'denied');
             insert into leads (email, stage, deal_value, consent) values ('q@example.org', 'qualified', 10, 'granted');";

/// Waits until capture has written `expected` control-table rows (failing early if it stops) and
/// checks that it wrote no more.
async fn wait_all_captured(client: &Client, running: &mut Running, expected: i64) {
    let settled = wait_for(20, "all deliveries", || async {
        let n = count(client, "select count(*) from pgcapi.deliveries").await;
        if running.task.is_finished() {
            return Some(-1);
        }
        (n >= expected).then_some(n)
    })
    .await;
    if settled == -1 {
        panic!("capture stopped early: {:?}", (&mut running.task).await);
    }
    assert_eq!(settled, expected, "{:#?}", deliveries(client).await);
    wait_for(20, "all deliveries", || async {
        (count(client, "select count(*) from pgcapi.deliveries").await == expected).then_some(())
    })
    .await;
}

/// Each order and lead got the row its consent, keys and status call for.
async fn assert_expected_rows(client: &Client) {
    let rows = deliveries(client).await;
    let find = |event_id: &str, rule: &str, dest: &str| {
        rows.iter()
            .find(|r| r.2 == event_id && r.0 == rule && r.1 == dest)
            .unwrap_or_else(|| panic!("no row for {event_id} {rule} {dest} in {rows:#?}"))
            .clone()
    };
    for dest in ["meta", "google", "tiktok"] {
        let r = find("order-1001", "order_paid", dest);
        assert_eq!(
            (r.3.as_str(), r.4.as_str(), r.5),
            ("conversion", "pending", None)
        );
        let r = find("order-1002", "order_paid", dest);
        assert_eq!(
            (r.4.as_str(), r.5.as_deref()),
            ("skipped", Some("no consent"))
        );
        // NULL consent (never asked) is no consent.
        let r = find("order-1003", "order_paid", dest);
        assert_eq!(
            (r.4.as_str(), r.5.as_deref()),
            ("skipped", Some("no consent"))
        );
        let r = find("order-1003", "order_refunded", dest);
        assert_eq!((r.3.as_str(), r.4.as_str()), ("retraction", "pending"));
        assert_eq!(find("order-1004", "order_paid", dest).4, "pending");
    }
    // An invalid email and a phone that is not a number leave no usable key for any platform.
    for dest in ["meta", "google", "tiktok"] {
        let r = find("order-1005", "order_paid", dest);
        assert_eq!(
            (r.4.as_str(), r.5.as_deref()),
            ("skipped", Some("no match keys"))
        );
    }
    let lead_id: i64 = client
        .query_one("select id from leads where email = 'lead@example.org'", &[])
        .await
        .unwrap()
        .get(0);
    for dest in ["meta", "google"] {
        let r = find(&format!("deal-{lead_id}"), "deal_won", dest);
        assert_eq!((r.3.as_str(), r.4.as_str()), ("conversion", "pending"));
    }
    let denied: Vec<_> = rows
        .iter()
        .filter(|r| r.0 == "deal_won" && r.5.as_deref() == Some("no consent"))
        .collect();
    assert_eq!(denied.len(), 2, "{rows:#?}");
}

/// Another update of order 1001 adds nothing, even after a new order flows through behind it.
async fn assert_repeated_updates_add_nothing(client: &Client, expected_rows: i64) {
    client
        .batch_execute("update orders set notes = 'again' where order_number = '1001'")
        .await
        .unwrap();
    client
        .execute(PAID_ORDER, &[&"1006", &Some(true)])
        .await
        .unwrap();
    wait_for(20, "order 1006", || async {
        (count(client, "select count(*) from pgcapi.deliveries").await == expected_rows + 3)
            .then_some(())
    })
    .await;
    assert_eq!(
        count(
            client,
            "select count(*) from pgcapi.deliveries where event_id = 'order-1001'"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn shop_changes_become_exactly_the_expected_deliveries() {
    // GIVEN the contract config on a shop database, capture running.
    let (_db, client, config) = shop().await;
    let mut running = Running::start(&config);

    // WHEN orders are paid (with, without and with unknown consent), a pending order is paid later,
    // a paid order is updated again and again, one is refunded, and leads are won.
    for (number, consent) in [("1001", Some(true)), ("1002", Some(false)), ("1003", None)] {
        client
            .execute(PAID_ORDER, &[&number, &consent])
            .await
            .unwrap();
    }
    client.batch_execute(SHOP_CHANGES).await.unwrap();

    // THEN exactly these rows exist (3 destinations per order, 2 per lead).
    let expected_rows = 3 * 5 + 3 + 2 * 2;
    wait_all_captured(&client, &mut running, expected_rows).await;
    assert_expected_rows(&client).await;

    // AND repeated updates of a paid order add nothing, even after more changes flow through.
    assert_repeated_updates_add_nothing(&client, expected_rows).await;
    running.stop().await.expect("clean stop");
}

#[tokio::test]
async fn no_raw_identifier_reaches_the_control_schema() {
    // GIVEN captured orders and leads with personal data.
    let (_db, client, config) = shop().await;
    let running = Running::start(&config);
    client
        .execute(PAID_ORDER, &[&"2001", &Some(true)])
        .await
        .unwrap();
    client
        .batch_execute(
            "insert into leads (email, phone, first_name, last_name, country, stage, deal_value, consent)
             values ('Lead.Person@Example.org', '+44 20 7946 0958', 'Annabelle', 'Leighton', 'GB', 'won', 1, 'yes')",
        )
        .await
        .unwrap();
    wait_for(20, "deliveries", || async {
        (count(
            &client,
            "select count(*) from pgcapi.deliveries where state = 'pending'",
        )
        .await
            == 5)
            .then_some(())
    })
    .await;
    running.stop().await.unwrap();

    // THEN no raw email, phone or name appears in any table of the control schema.
    let dump: String = client
        .query_one(
            "select string_agg(t::text, E'\\n') from (
               select d::text as t from pgcapi.deliveries d
               union all select c::text from pgcapi.checkpoints c) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for raw in [
        "jane",
        "Jane",
        "doe@",
        "Doe",
        "650",
        "555-1212",
        "5551212",
        "San Francisco",
        "sanfrancisco",
        "Annabelle",
        "annabelle",
        "Leighton",
        "lead.person",
        "Lead.Person",
        "7946",
    ] {
        assert!(
            !dump.contains(raw),
            "raw identifier {raw:?} found in the control schema"
        );
    }
    // AND the hashes are there instead.
    assert!(dump.contains(&pgcapi::identity::hash("jane.doe@example.com")));
}

#[tokio::test]
async fn the_slot_advances_while_watched_tables_are_idle_and_another_table_is_busy() {
    // GIVEN capture running and an unrelated busy table.
    let (_db, client, config) = shop().await;
    client
        .batch_execute("create table unrelated (id serial primary key, payload text)")
        .await
        .unwrap();
    let running = Running::start(&config);
    let start = confirmed_flush(&client).await;

    // WHEN only the unrelated table changes.
    let mut last = start.clone();
    for round in 0..3 {
        client
            .batch_execute("insert into unrelated (payload) select repeat('x', 100) from generate_series(1, 500)")
            .await
            .unwrap();
        let wal: String = client
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        // THEN the slot's confirmed position keeps reaching the current WAL position.
        last = wait_for(
            20,
            &format!("confirmed_flush_lsn to reach {wal} (round {round})"),
            || {
                let client = &client;
                let wal = wal.clone();
                async move {
                    let ok: bool = client
                    .query_one(
                        "select confirmed_flush_lsn >= $1::text::pg_lsn from pg_replication_slots \
                         where slot_name = 'pgcapi'",
                        &[&wal],
                    )
                    .await
                    .unwrap()
                    .get(0);
                    if ok {
                        Some(confirmed_flush(client).await)
                    } else {
                        None
                    }
                }
            },
        )
        .await;
    }
    assert_ne!(last, start);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_dropped_mapped_column_stops_capture_and_the_change_is_processed_after_the_fix() {
    // GIVEN capture running on the contract config.
    let (_db, client, config) = shop().await;
    let running = Running::start(&config);
    client
        .execute(PAID_ORDER, &[&"3001", &Some(true)])
        .await
        .unwrap();
    wait_for(20, "first order", || async {
        (count(&client, "select count(*) from pgcapi.deliveries").await == 3).then_some(())
    })
    .await;

    // WHEN a mapped column is dropped and an order is paid.
    client
        .batch_execute(
            "alter table orders drop column ttclid;
             insert into orders (order_number, email, total, status, ad_consent, paid_at)
             values ('3002', 'b@example.com', 7, 'paid', true, now());",
        )
        .await
        .unwrap();

    // THEN capture stops with an error naming the table, the column and the rule.
    let err = tokio::time::timeout(std::time::Duration::from_secs(20), running.task)
        .await
        .expect("capture should stop by itself")
        .expect("task")
        .expect_err("capture must fail");
    let message = err.to_string();
    for part in ["public.orders", "ttclid", "order_paid", "LSN"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    // AND the change was not recorded and the slot did not move past it.
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where event_id = 'order-3002'"
        )
        .await,
        0
    );
    // The slot still holds the failed transaction: peeking at it (which consumes nothing) decodes
    // an Insert carrying order 3002.
    let still_in_slot = count(
        &client,
        "select count(*) from pg_logical_slot_peek_binary_changes('pgcapi', null, null,
             'proto_version', '1', 'publication_names', 'pgcapi')
         where get_byte(data, 0) = ascii('I') and position(convert_to('3002', 'UTF8') in data) > 0",
    )
    .await;
    assert_eq!(still_in_slot, 1, "the failed change must stay in the slot");

    // WHEN the config is fixed (the mapping removed) and capture restarts.
    let fixed_text = CONTRACT_TOML.replacen("ttclid = \"ttclid\"\n", "", 1);
    let fixed = config_from(&fixed_text, &contract_env(&_db.url(), "http://127.0.0.1:9"));
    let running = Running::start(&fixed);

    // THEN the change is processed.
    wait_for(20, "order 3002 after the fix", || async {
        (count(
            &client,
            "select count(*) from pgcapi.deliveries where event_id = 'order-3002'",
        )
        .await
            == 3)
            .then_some(())
    })
    .await;
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_capture_waits_for_the_slot_and_takes_over() {
    // GIVEN one capture holding the slot.
    let (_db, client, config) = shop().await;
    let first = Running::start(&config);
    wait_for(20, "the slot to be active", || async {
        (count(
            &client,
            "select count(*) from pg_replication_slots where active",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;

    // WHEN a second one starts, it waits instead of failing.
    let second = Running::start(&config);
    client
        .execute(PAID_ORDER, &[&"4001", &Some(true)])
        .await
        .unwrap();
    wait_for(20, "order 4001", || async {
        (count(&client, "select count(*) from pgcapi.deliveries").await == 3).then_some(())
    })
    .await;
    assert!(!second.task.is_finished());

    // AND when the first stops, the second takes over.
    first.stop().await.unwrap();
    client
        .execute(PAID_ORDER, &[&"4002", &Some(true)])
        .await
        .unwrap();
    wait_for(30, "order 4002 through the second capture", || async {
        (count(&client, "select count(*) from pgcapi.deliveries").await == 6).then_some(())
    })
    .await;
    second.stop().await.unwrap();
}

#[tokio::test]
async fn setup_twice_changes_nothing_and_reports_what_is_missing() {
    // GIVEN a table without a primary key watched by a rule.
    let (db, client, config) = shop().await;
    let before: Vec<String> = client
        .query(
            "select pubname::text || ':' || tablename::text from pg_publication_tables
             union all select slot_name::text from pg_replication_slots order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // WHEN setup runs again, nothing changes.
    let report = setup(&config, SetupOptions::default()).await.unwrap();
    assert!(report.todo.is_empty(), "{:?}", report.todo);
    let after: Vec<String> = client
        .query(
            "select pubname::text || ':' || tablename::text from pg_publication_tables
             union all select slot_name::text from pg_replication_slots order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(before, after);
    assert_eq!(after, vec!["pgcapi", "pgcapi:leads", "pgcapi:orders"]);

    // AND a table without a usable replica identity is reported with the SQL to fix it, not changed.
    client
        .batch_execute("alter table leads replica identity nothing")
        .await
        .unwrap();
    let report = setup(&config, SetupOptions::default()).await.unwrap();
    assert!(
        report
            .todo
            .iter()
            .any(|t| t.contains("public.leads") && t.contains("REPLICA IDENTITY FULL")),
        "{:?}",
        report.todo
    );
    let identity: String = client
        .query_one(
            "select relreplident::text from pg_class where relname = 'leads'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity, "n");
    // AND with --set-replica-identity-full it is set.
    setup(
        &config,
        SetupOptions {
            set_replica_identity_full: true,
        },
    )
    .await
    .unwrap();
    let identity: String = client
        .query_one(
            "select relreplident::text from pg_class where relname = 'leads'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity, "f");
    drop(db);
}

#[tokio::test]
async fn a_template_naming_a_missing_column_is_reported_at_start() {
    let (_db, client, config) = shop().await;
    client
        .batch_execute("alter table leads drop column meta_lead_id")
        .await
        .unwrap();
    let problems = pgcapi::ops::setup::check_columns(&client, &pgcapi::rules::Rules::new(&config))
        .await
        .unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.contains("deal_won"), "{problems:?}");
    assert!(problems[0].message.contains("meta_lead_id"), "{problems:?}");
}

//! Unchanged TOAST: a large value in a mapped column, then an UPDATE that leaves it untouched. Under the
//! default replica identity the WAL then carries no copy of that value; capture reads it back by the
//! primary key, and when the row is gone records the event without it. Capture never stops over it.

use crate::support::{count, wait_count, wait_for, KillOnDrop, Shop, CONTRACT_TOML};
use pgcapi::capture::Capture;
use pgcapi::testbed::sandbox::Records;
use rand::distr::{Alphanumeric, SampleString};
use std::process::Stdio;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_postgres::Client;

/// A pending order with a random (incompressible) user agent of `ua_len` characters and an email
/// whose local part is `email_len` random characters: both are stored out of line (TOASTed).
async fn insert_large_order(client: &Client, number: &str, ua_len: usize, email_len: usize) {
    let mut rng = rand::rng();
    let user_agent = format!(
        "Mozilla/5.0 {}",
        Alphanumeric.sample_string(&mut rng, ua_len)
    );
    let email = format!(
        "{}@Example.com",
        Alphanumeric.sample_string(&mut rng, email_len)
    );
    client
        .execute(
            "insert into orders (order_number, email, phone, country, client_ip, user_agent, total,
             status, ad_consent) values ($1, $2, '+1 650 555 1212', 'US', '203.0.113.7', $3, 19.99,
             'pending', true)",
            &[&number, &email, &user_agent],
        )
        .await
        .unwrap();
}

/// Bytes of `orders`' TOAST table: proof that the large values are stored out of line, so that an
/// UPDATE leaving them untouched writes them to the WAL as "unchanged TOAST".
async fn toasted_bytes(client: &Client) -> i64 {
    count(
        client,
        "select pg_relation_size(reltoastrelid)::bigint from pg_class where oid = 'public.orders'::regclass",
    )
    .await
}

async fn replica_identity(client: &Client) -> String {
    client
        .query_one(
            "select relreplident::text from pg_class where oid = 'public.orders'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Starts `pgcapi run` on `shop` with debug logging into `log`.
fn spawn_logged_run(shop: &Shop, log: &std::path::Path) -> KillOnDrop {
    let mut command = crate::support::pgcapi_command(&shop.env);
    command
        .args(["run", "--config"])
        .arg(&shop.config_path)
        .env("RUST_LOG", "pgcapi=debug")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    KillOnDrop(command.spawn().unwrap())
}

/// Pays T-1 by an UPDATE that changes only `status`, alone in its transaction, and T-2 the same way
/// next to an ordinary order (T-3).
async fn pay_by_status_only_updates(client: &Client) {
    client
        .batch_execute("update orders set status = 'paid' where order_number = 'T-1'")
        .await
        .unwrap();
    client
        .batch_execute(
            "begin;
             update orders set status = 'paid' where order_number = 'T-2';
             insert into orders (order_number, email, client_ip, user_agent, total, status,
                 ad_consent, paid_at)
             values ('T-3', 'plain@example.com', '203.0.113.9', 'Mozilla/5.0 short', 5, 'paid',
                 true, now());
             commit;",
        )
        .await
        .unwrap();
}

/// Each platform received T-1 and T-2 once, with their identifiers exactly as stored.
async fn assert_large_identifiers_delivered(client: &Client, records: &Records) {
    for number in ["T-1", "T-2"] {
        let row = client
            .query_one(
                "select user_agent, encode(sha256(convert_to(lower(email), 'UTF8')), 'hex')
                 from orders where order_number = $1",
                &[&number],
            )
            .await
            .unwrap();
        let (user_agent, email_hash): (String, String) = (row.get(0), row.get(1));
        assert!(user_agent.len() > 8 * 1024);
        let id = format!("order-{number}");
        let meta: Vec<_> = records
            .meta
            .events
            .iter()
            .filter(|e| e.event_id.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(meta.len(), 1, "meta {id}");
        assert_eq!(
            meta[0].plain.get("client_user_agent"),
            Some(&user_agent),
            "meta {id}"
        );
        assert_eq!(meta[0].hashed.get("em"), Some(&vec![email_hash.clone()]));
        let tiktok: Vec<_> = records
            .tiktok
            .events
            .iter()
            .filter(|e| e.event_id.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(tiktok.len(), 1, "tiktok {id}");
        assert_eq!(tiktok[0].plain.get("user_agent"), Some(&user_agent));
        assert_eq!(
            tiktok[0].hashed.get("email"),
            Some(&vec![email_hash.clone()])
        );
        let google: Vec<_> = records
            .google_ads
            .conversions
            .iter()
            .filter(|c| c.order_id.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(google.len(), 1, "google {id}");
        assert_eq!(google[0].hashed_emails, vec![email_hash]);
    }
}

#[tokio::test]
async fn a_status_only_update_of_an_order_with_large_identifiers_is_delivered_with_them() {
    // GIVEN the shop under the default replica identity, and orders with an 8 KB random user agent and
    // a 3 KB junk email, stored out of line, while `pgcapi run` delivers to the sandbox.
    let shop = Shop::start(CONTRACT_TOML).await;
    let client = &shop.client;
    assert_eq!(replica_identity(client).await, "d");
    insert_large_order(client, "T-1", 8 * 1024, 3 * 1024).await;
    insert_large_order(client, "T-2", 8 * 1024, 3 * 1024).await;
    assert!(
        toasted_bytes(client).await > 0,
        "the values must be TOASTed"
    );
    let log = shop.dir.path().join("pgcapi.log");
    let mut run = spawn_logged_run(&shop, &log);

    // WHEN each is paid by an UPDATE that changes only `status` (one of them alone in its transaction,
    // the other next to an ordinary order).
    pay_by_status_only_updates(client).await;

    // THEN capture goes on and every order reaches every platform, the large ones with their
    // identifiers exactly as stored.
    let sent = "select count(*) from pgcapi.deliveries where state = 'sent'";
    wait_count(
        client,
        60,
        "the three orders to be sent everywhere",
        sent,
        9,
    )
    .await;
    assert!(
        run.0.try_wait().unwrap().is_none(),
        "pgcapi run must still be running"
    );
    assert_large_identifiers_delivered(client, &shop.sandbox.records()).await;
    // AND the read-back is what made it: two rows read back, none left unresolved.
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("unchanged TOAST values read back from the source")
            .count(),
        2,
        "{text}"
    );
    assert!(!text.contains("could not be read back"), "{text}");
    run.kill();
}

/// D-1's DELETE retracts it (3 rows), and its conversions are pending with the phone the WAL
/// carried but without the email and user agent it could not read back.
async fn assert_deleted_order_recorded_without_them(client: &Client) {
    assert_eq!(
        count(
            client,
            "select count(*) from pgcapi.deliveries where event_id = 'order-D-1' \
             and kind = 'retraction'"
        )
        .await,
        3
    );
    let rows = client
        .query(
            "select destination, state, array_to_string(match_keys, ',') from pgcapi.deliveries
             where event_id = 'order-D-1' and kind = 'conversion' order by destination",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let (destination, state, keys): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(state, "pending", "{destination}");
        assert!(keys.contains("phone"), "{destination}: {keys}");
        assert!(
            !keys.contains("email") && !keys.contains("user_agent"),
            "{destination}: {keys}"
        );
    }
}

#[tokio::test]
async fn a_row_deleted_before_it_is_read_back_is_recorded_without_the_value_and_capture_goes_on() {
    // GIVEN the shop, an order with TOASTed identifiers paid by a status-only update, and the order
    // deleted right after, all before capture reads the WAL.
    let shop = Shop::start(CONTRACT_TOML).await;
    let client = &shop.client;
    insert_large_order(client, "D-1", 8 * 1024, 3 * 1024).await;
    client
        .batch_execute(
            "update orders set status = 'paid' where order_number = 'D-1';
             delete from orders where order_number = 'D-1';
             insert into orders (order_number, email, total, status, ad_consent, paid_at)
             values ('D-2', 'after@example.com', 5, 'paid', true, now());",
        )
        .await
        .unwrap();

    // WHEN capture runs.
    let capture = Capture::new(Arc::new(shop.config.clone())).unwrap();
    let stats = capture.stats();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move { capture.run(stopped).await });

    // THEN both orders are recorded: the deleted one without its user agent and email (counted as
    // dropped for each platform that takes them: email 3, user agent 2), with the identifiers the WAL
    // carried, and its DELETE retracts it (matched by the row's key); and capture goes on with later
    // changes.
    wait_for(30, "both orders recorded", || async {
        (count(client, "select count(*) from pgcapi.deliveries").await == 6 + 3).then_some(())
    })
    .await;
    assert_deleted_order_recorded_without_them(client).await;
    let seen = stats.borrow().clone();
    assert_eq!(seen.toast_read_backs, 1, "{seen:?}");
    assert_eq!(seen.toast_unresolved, 1, "{seen:?}");
    assert_eq!(seen.dropped_keys, 5, "{seen:?}");
    client
        .batch_execute(
            "insert into orders (order_number, email, total, status, ad_consent, paid_at)
             values ('D-3', 'later@example.com', 5, 'paid', true, now())",
        )
        .await
        .unwrap();
    let d3 = "select count(*) from pgcapi.deliveries where event_id = 'order-D-3'";
    wait_count(client, 30, "a later order recorded", d3, 3).await;
    assert!(!task.is_finished(), "capture must still run");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// Runs `pgcapi <command> --config …` for `shop` and returns its standard output. Awaited, not
/// blocking: the sandbox answering `check` runs on this test's runtime.
async fn pgcapi_output(shop: &Shop, command: &str) -> String {
    let mut std_command = crate::support::pgcapi_command(&shop.env);
    std_command
        .args([command, "--config"])
        .arg(&shop.config_path)
        .stdout(Stdio::piped());
    let output = tokio::process::Command::from(std_command)
        .output()
        .await
        .unwrap();
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn setup_and_check_warn_about_toastable_mapped_columns_under_the_default_identity() {
    // GIVEN the shop under the default replica identity.
    let shop = Shop::start(CONTRACT_TOML).await;

    // WHEN setup and check run, THEN both warn about the mapped columns that can be TOASTed, name the
    // read-back and its cost, and give the SQL for FULL; the small types are not named.
    let setup = pgcapi_output(&shop, "setup").await;
    let check = pgcapi_output(&shop, "check").await;
    for (what, out, prefix) in [
        ("setup", &setup, "WARN  public.orders: mapped column(s) "),
        ("check", &check, "  ! public.orders: mapped column(s) "),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{what} prints no TOAST warning for orders:\n{out}"));
        let columns = line[prefix.len()..].split(" can hold").next().unwrap();
        for column in ["email", "user_agent", "order_number", "status"] {
            assert!(columns.contains(column), "{what}: {line}");
        }
        for small in ["client_ip", "total", "currency", "ad_consent", "paid_at"] {
            assert!(!columns.contains(small), "{what}: {small} in {line}");
        }
        for part in [
            "reads it back",
            "one extra query per such change",
            "ALTER TABLE \"public\".\"orders\" REPLICA IDENTITY FULL;",
        ] {
            assert!(line.contains(part), "{what}: {part:?} missing from {line}");
        }
        assert!(!out.contains("is usable"), "{what}:\n{out}");
        // leads maps text columns too.
        assert!(
            out.contains("public.leads: mapped column(s) "),
            "{what}:\n{out}"
        );
    }

    // WHEN orders gets REPLICA IDENTITY FULL, THEN the warning about it goes.
    shop.client
        .batch_execute("alter table orders replica identity full")
        .await
        .unwrap();
    for command in ["setup", "check"] {
        let out = pgcapi_output(&shop, command).await;
        assert!(
            !out.contains("public.orders: mapped column(s)"),
            "{command}:\n{out}"
        );
        assert!(
            out.contains("public.leads: mapped column(s)"),
            "{command}:\n{out}"
        );
    }
}

#[tokio::test]
async fn a_lost_read_back_connection_is_retried_not_a_dropped_key() {
    // GIVEN capture running, and a first order read back (so the read-back connection is open).
    let shop = Shop::start(CONTRACT_TOML).await;
    let client = &shop.client;
    insert_large_order(client, "L-1", 4 * 1024, 10).await;
    insert_large_order(client, "L-2", 4 * 1024, 10).await;
    let capture = Capture::new(Arc::new(shop.config.clone())).unwrap();
    let stats = capture.stats();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move { capture.run(stopped).await });
    client
        .batch_execute("update orders set status = 'paid' where order_number = 'L-1'")
        .await
        .unwrap();
    wait_for(30, "order L-1 recorded", || async {
        (count(
            client,
            "select count(*) from pgcapi.deliveries where event_id = 'order-L-1'",
        )
        .await
            == 3)
            .then_some(())
    })
    .await;

    // WHEN that connection is killed and the next order needs a read-back.
    let killed = count(
        client,
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
         where application_name = 'pgcapi read-back') t",
    )
    .await;
    assert_eq!(killed, 1, "one read-back connection");
    client
        .batch_execute("update orders set status = 'paid' where order_number = 'L-2'")
        .await
        .unwrap();

    // THEN it is read back on a new connection: nothing dropped, both carry their user agent.
    wait_for(30, "order L-2 recorded", || async {
        (count(
            client,
            "select count(*) from pgcapi.deliveries where event_id = 'order-L-2'",
        )
        .await
            == 3)
            .then_some(())
    })
    .await;
    assert_eq!(
        count(
            client,
            "select count(*) from pgcapi.deliveries
             where destination in ('meta', 'tiktok') and 'user_agent' = any(match_keys)",
        )
        .await,
        4
    );
    let seen = stats.borrow().clone();
    assert_eq!(seen.toast_unresolved, 0, "{seen:?}");
    assert_eq!(seen.dropped_keys, 0, "{seen:?}");
    assert!(seen.toast_read_backs >= 2, "{seen:?}");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

//! Malformed input never crashes capture and is never lost: each row is sent or failed with a reason.

use super::*;
use crate::support::{config_from, contract_env, count, wait_for, TestDb};
use chrono::Utc;
use pgcapi::ops::setup::{setup, SetupOptions};
use pgcapi::testbed::sandbox::Sandbox;
use std::time::Duration;
use tokio_postgres::Client;

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
    insert(&client, &rows).await;

    // THEN every row ends with one row per destination, none pending, and the process is still up.
    let expected = (rows.len() * 3) as i64;
    settle_or_explain(&client, &mut supervisor, expected).await;
    supervisor.stop();
    assert_eq!(
        count(&client, "select count(*) from pgcapi.deliveries").await,
        expected,
        "one control row per corpus row and destination"
    );
    failed_rows_say_why(&client).await;
    no_raw_identifier_stored(&client).await;
    // What the platforms counted is exactly what the control table says was sent.
    let records = sandbox.records();
    let counted = Counted::from(&records);
    let sent = count(
        &client,
        "select count(*) from pgcapi.deliveries where state = 'sent'",
    )
    .await;
    assert_eq!(counted.items.values().sum::<usize>() as i64, sent);
    eprintln!(
        "malformed corpus: {} rows -> {} control rows: {}",
        rows.len(),
        expected,
        states(&client).await.join(" ")
    );
}

/// Inserts every corpus row as a finished sale, one transaction each (a third without `sold_at`).
async fn insert(client: &Client, rows: &[CorpusRow]) {
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
}

/// Waits up to 120 s for every row to be recorded and settled; checks that `pgcapi run` never exited,
/// and on a timeout panics with the rows still pending and the log.
async fn settle_or_explain(client: &Client, supervisor: &mut Supervisor, expected: i64) {
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        wait_for(
            120,
            "every corpus row to be recorded and settled",
            || async move {
                let total = count(client, "select count(*) from pgcapi.deliveries").await;
                let pending = count(
                    client,
                    "select count(*) from pgcapi.deliveries where state = 'pending'",
                )
                .await;
                (total >= expected && pending == 0).then_some(())
            },
        ),
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
            count(client, "select count(*) from pgcapi.deliveries").await,
            left.join("\n")
        );
    }
}

/// Every row that was not sent says why, and the reasons are the expected ones, each row on its own.
async fn failed_rows_say_why(client: &Client) {
    // Every row that was not sent says why.
    assert_eq!(
        count(
            client,
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
                client,
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
            client,
            "select count(*) from pgcapi.deliveries where event_id = 'sale-null-consent' \
             and state = 'skipped' and last_error = 'no consent'"
        )
        .await,
        3
    );
}

/// No raw identifier reached the control table (user agents travel unhashed, as the platforms want).
async fn no_raw_identifier_stored(client: &Client) {
    for raw in ["xxxxxxxxxx@example.com", "NNNNNNNNNN", "650 555"] {
        assert_eq!(
            count(
                client,
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
}

/// The control table's row count per destination and state, as `destination/state=n` words.
async fn states(client: &Client) -> Vec<String> {
    client
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
        .collect::<Vec<_>>()
}

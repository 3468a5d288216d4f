//! The control-table write path on real PostgreSQL: `outbox::write_group` (capture's transaction) keeps
//! every key once, also when another writer records the same key while the group is being written, and
//! the schema installs and upgrades idempotently.

use crate::support::{count, TestDb};
use chrono::Utc;
use pgcapi::event::{Kind, NewDelivery, Payload, State};
use pgcapi::identity::{MatchKey, MatchKeys};
use pgcapi::lsn::Lsn;
use pgcapi::outbox::{self};
use pgcapi::platform::Platform;
use std::time::Duration;
use tokio_postgres::Client;

async fn control_db() -> (TestDb, Client) {
    let db = TestDb::start().await;
    let client = db.connect().await;
    pgcapi::ops::setup::install_control_schema(&client, "pgcapi")
        .await
        .unwrap();
    (db, client)
}

fn paid(event_id: &str, value: &str) -> NewDelivery {
    let mut keys = MatchKeys::new();
    keys.insert(MatchKey::Email, "b".repeat(64));
    NewDelivery {
        rule: "order_paid".into(),
        destination: "meta".into(),
        platform: Platform::Meta,
        event_id: event_id.into(),
        kind: Kind::Conversion,
        adjusts_rule: None,
        event_name: Some("Purchase".into()),
        event_time: Utc::now(),
        value: Some(value.into()),
        currency: Some("EUR".into()),
        action_source: Some("website".into()),
        payload: Payload {
            keys,
            consent: true,
            ..Payload::default()
        },
        state: State::Pending,
        last_error: None,
        source_table: "public.orders".into(),
        source_key: None,
        source_lsn: Lsn(0x1_0000),
        commit_time: Utc::now(),
    }
}

async fn checkpoint(client: &Client) -> Option<String> {
    client
        .query_opt(
            "select lsn::text from pgcapi.checkpoints where slot = 'slot_a'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Every recorded (event id, value), by event id.
async fn event_values(client: &Client) -> Vec<(String, String)> {
    client
        .query(
            "select event_id, value::text from pgcapi.deliveries order by event_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn indexes(client: &Client, schema: &str) -> Vec<String> {
    client
        .query(
            "select indexname::text from pg_indexes \
             where schemaname = $1 and tablename = 'deliveries' order by 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_group_records_each_key_once_and_keeps_the_first_row_of_a_repeated_key() {
    let (db, client) = control_db().await;
    let control = db.connect().await;
    outbox::insert_deliveries(&client, "pgcapi", &[paid("o-1", "10.00")])
        .await
        .unwrap();
    let rows = vec![
        paid("o-1", "99.00"), // already recorded: left out
        paid("o-2", "20.00"),
        paid("o-2", "21.00"), // repeats o-2 within the group: the first one stays
        paid("o-3", "30.00"),
    ];
    let inserted = outbox::write_group(&control, "pgcapi", "slot_a", &rows, Lsn(0x2_0000))
        .await
        .unwrap();
    assert_eq!(inserted, 2);
    let values = event_values(&client).await;
    assert_eq!(
        values,
        [("o-1", "10.00"), ("o-2", "20.00"), ("o-3", "30.00")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(checkpoint(&client).await.as_deref(), Some("0/20000"));
    // The payload is stored as JSON text, which SQL reads with a cast.
    assert_eq!(
        count(
            &client,
            "select count(*) from pgcapi.deliveries where payload::json -> 'keys' ->> 'email' = repeat('b', 64)"
        )
        .await,
        3
    );
}

/// Another transaction (a backfill, say) records a key after the group's check and before its insert:
/// the group's insert waits for it, fails on the unique key, and the group is written again, without
/// that row. Nothing is lost and nothing is recorded twice.
#[tokio::test]
async fn a_key_recorded_concurrently_makes_the_group_write_again_without_it() {
    let (db, client) = control_db().await;
    let other = db.connect().await;
    other.batch_execute("begin").await.unwrap();
    outbox::insert_deliveries(&other, "pgcapi", &[paid("o-7", "70.00")])
        .await
        .unwrap();
    // `other` has not committed: the group does not see o-7 and blocks on its unique-key entry.
    let control = db.connect().await;
    let group = tokio::spawn(async move {
        let rows = vec![paid("o-6", "60.00"), paid("o-7", "77.00")];
        outbox::write_group(&control, "pgcapi", "slot_a", &rows, Lsn(0x3_0000)).await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = count(
            &client,
            "select count(*) from pg_stat_activity \
             where wait_event_type = 'Lock' and query like 'insert into%deliveries%'",
        )
        .await;
        if waiting == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group's insert never waited for the other transaction"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.batch_execute("commit").await.unwrap();
    let inserted = group.await.unwrap().unwrap();
    assert_eq!(
        inserted, 1,
        "o-6 is new, o-7 was recorded by the other transaction"
    );
    let values = event_values(&client).await;
    assert_eq!(
        values,
        [("o-6", "60.00"), ("o-7", "70.00")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(checkpoint(&client).await.as_deref(), Some("0/30000"));
}

/// `pgcapi setup` runs every file each time: a second run changes nothing, and a control table made by
/// the version-1 files (jsonb payload, the old indexes) is converted with its rows and views intact.
#[tokio::test]
async fn the_schema_installs_twice_and_upgrades_a_version_one_table() {
    let (db, client) = control_db().await;
    outbox::insert_deliveries(&client, "pgcapi", &[paid("o-1", "10.00")])
        .await
        .unwrap();
    pgcapi::ops::setup::install_control_schema(&client, "pgcapi")
        .await
        .unwrap();
    let expected = [
        "deliveries_due_order_idx",
        "deliveries_event_key",
        "deliveries_finished_idx",
        "deliveries_pending_adjustments_idx",
        "deliveries_pkey",
        "deliveries_source_key_idx",
    ];
    assert_eq!(indexes(&client, "pgcapi").await, expected);

    // A version-1 table in another schema: jsonb payload, database collation, the old indexes.
    let old = db.connect().await;
    old.batch_execute(
        "create schema v1; \
         create table v1.deliveries (like pgcapi.deliveries including defaults); \
         alter table v1.deliveries alter column payload drop default, \
           alter column payload type jsonb using payload::jsonb, \
           alter column payload set default '{}', \
           alter column rule type text collate \"default\", \
           alter column destination type text collate \"default\", \
           alter column event_id type text collate \"default\", \
           alter column adjusts_rule type text collate \"default\"; \
         alter table v1.deliveries add primary key (id), \
           add constraint deliveries_rule_destination_event_id_key unique (rule, destination, event_id); \
         create index deliveries_due_idx on v1.deliveries (destination, next_attempt_at) \
           where state = 'pending'; \
         create index deliveries_event_idx on v1.deliveries (event_id); \
         create index deliveries_state_updated_idx on v1.deliveries (state, updated_at); \
         insert into v1.deliveries (rule, destination, platform, event_id, kind, event_time, payload, \
           match_keys, source_table, source_lsn) \
         values ('order_paid', 'meta', 'meta', 'old-1', 'conversion', now(), \
           '{\"keys\": {\"email\": \"x\"}, \"consent\": true}', '{email}', 'public.orders', '0/1')",
    )
    .await
    .unwrap();
    pgcapi::ops::setup::install_control_schema(&old, "v1")
        .await
        .unwrap();
    assert_eq!(indexes(&old, "v1").await, expected);
    let row = old
        .query_one(
            "select pg_typeof(payload)::text, payload::json ->> 'consent', \
               (select match_keys from v1.send_log) \
             from v1.deliveries",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "text");
    assert_eq!(row.get::<_, String>(1), "true");
    assert_eq!(
        row.get::<_, Vec<String>>(2),
        vec!["email:2d71..".to_string()]
    );
}

#[tokio::test]
async fn a_processing_report_is_recorded_once_and_purged_when_old() {
    // GIVEN a control schema and a final Data Manager report of one request
    let (_db, c) = control_db().await;
    let report = pgcapi::event::ProcessingReport {
        destination: "google".into(),
        request_id: "req-1".into(),
        unusable: vec![
            ("PROCESSING_ERROR_REASON_EVENT_TOO_OLD".into(), 3),
            ("PROCESSING_ERROR_REASON_INVALID_GCLID".into(), 2),
        ],
    };
    // WHEN it is recorded twice (a repeated poll)
    outbox::record_processing(&c, "pgcapi", &report)
        .await
        .unwrap();
    outbox::record_processing(&c, "pgcapi", &report)
        .await
        .unwrap();
    // THEN it counts once, most first
    let unusable = outbox::load_unusable_24h(&c, "pgcapi").await.unwrap();
    assert_eq!(
        unusable["google"],
        [
            ("PROCESSING_ERROR_REASON_EVENT_TOO_OLD".to_string(), 3),
            ("PROCESSING_ERROR_REASON_INVALID_GCLID".to_string(), 2),
        ]
    );
    // AND once older than the kept time, it is purged and no longer counted
    c.batch_execute(
        "update pgcapi.platform_processing set recorded_at = now() - interval '3 days' \
         where reason like '%TOO_OLD'",
    )
    .await
    .unwrap();
    let purged = outbox::purge_processing(&c, "pgcapi", Duration::from_secs(2 * 86_400))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        count(&c, "select count(*) from pgcapi.platform_processing").await,
        1
    );
}

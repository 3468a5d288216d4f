//! `pgcapi replay`: skipped and failed rows requeued since a time, never cancelled or retracted ones.

use super::*;
use pgcapi::event::{Kind, Payload};
use pgcapi::ops::repair::{self, Filters, RepairError, ReplayState};
use pgcapi::platform::Platform;
use pgcapi::units::TimeRef;
use std::time::Duration;
use tokio_postgres::Client;

#[tokio::test]
async fn replay_requeues_skipped_and_failed_rows_since_a_time_and_never_cancelled_or_retracted_ones(
) {
    // GIVEN rows in every state for Meta
    let (db, c) = control_db().await;
    let [skipped, failed, sent, cancelled, retracted, retraction, no_consent, old, pending] =
        rows_in_every_state(&c).await;
    let mut client = db.connect().await;
    let since = |t: &str| Filters {
        since: Some(t.parse().unwrap()),
        ..Filters::default()
    };
    let default_states = [ReplayState::Skipped, ReplayState::Failed];

    // WHEN replay runs without --since THEN it refuses, naming the flag.
    let err = repair::replay(
        &mut client,
        "pgcapi",
        &default_states,
        &Filters::default(),
        true,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RepairError::Usage(m) if m.contains("--since")),
        "{err}"
    );

    // WHEN it runs (dry) over the last hour with the default states
    let report = repair::replay(&mut client, "pgcapi", &default_states, &since("1h"), true)
        .await
        .unwrap();
    // THEN it takes the skipped and failed rows of the hour, holds back the one without consent, and
    // leaves sent, cancelled, pending and older rows alone.
    assert_eq!(ids(&report.requeued), set([skipped, failed, retraction]));
    assert_eq!(ids(&report.held_back), set([no_consent]));

    // WHEN sent rows are asked for too
    let report = repair::replay(
        &mut client,
        "pgcapi",
        &[ReplayState::Sent],
        &Filters {
            rule: Some("order_paid".into()),
            ..since("1h")
        },
        true,
    )
    .await
    .unwrap();
    // THEN the retracted conversion is held back.
    assert_eq!(ids(&report.requeued), set([sent]));
    assert_eq!(ids(&report.held_back), set([retracted]));
    assert!(report.held_back[0]
        .held_back_because
        .as_deref()
        .unwrap()
        .contains("retracted"));

    // WHEN the default replay runs for real
    let report = repair::replay(&mut client, "pgcapi", &default_states, &since("1h"), false)
        .await
        .unwrap();
    assert_eq!(ids(&report.requeued), set([skipped, failed, retraction]));
    // THEN exactly those are pending again.
    for (id, state) in [
        (skipped, "pending"),
        (failed, "pending"),
        (retraction, "pending"),
        (sent, "sent"),
        (cancelled, "cancelled"),
        (retracted, "sent"),
        (no_consent, "skipped"),
        (old, "skipped"),
        (pending, "pending"),
    ] {
        assert_eq!(state_of(&c, id).await, state, "row {id}");
    }
}

/// Meta rows in every state, by id: skipped, failed, sent, cancelled, a sent conversion then retracted,
/// its retraction, skipped for no consent, skipped long ago, pending.
async fn rows_in_every_state(c: &Client) -> [i64; 9] {
    let conv = |e: &str| delivery("order_paid", "meta", Platform::Meta, e, Kind::Conversion);
    let retraction = delivery(
        "order_refunded",
        "meta",
        Platform::Meta,
        "r-5",
        Kind::Retraction,
    );
    let mut no_consent = conv("r-6");
    no_consent.payload = Payload::default();
    let too_old = Some("event too old for meta");
    let mut ids = Vec::new();
    for (row, state, age, error) in [
        (conv("r-1"), "skipped", "30 minutes", too_old),
        (conv("r-2"), "failed", "30 minutes", Some("meta: HTTP 400")),
        (conv("r-3"), "sent", "30 minutes", None),
        (
            conv("r-4"),
            "cancelled",
            "30 minutes",
            Some("retracted before it was sent"),
        ),
        (conv("r-5"), "sent", "30 minutes", None),
        (
            retraction,
            "skipped",
            "20 minutes",
            Some("meta cannot retract"),
        ),
        (no_consent, "skipped", "30 minutes", Some("no consent")),
        (conv("r-7"), "skipped", "3 hours", too_old),
        (conv("r-8"), "pending", "1 minute", None),
    ] {
        ids.push(put(c, row, state, age, error).await);
    }
    ids.try_into().unwrap()
}

#[test]
fn replay_states_parse_from_a_comma_list_with_skipped_and_failed_by_default() {
    use clap::Parser;
    let parse = |args: &[&str]| match pgcapi::cli::Cli::try_parse_from(args).unwrap().command {
        pgcapi::cli::Command::Replay(args) => args,
        other => panic!("{other:?}"),
    };
    let args = parse(&["pgcapi", "replay", "-c", "x.toml", "--since", "2h"]);
    assert_eq!(args.states, [ReplayState::Skipped, ReplayState::Failed]);
    assert_eq!(
        args.filters.since,
        Some(TimeRef::Ago(Duration::from_secs(7_200)))
    );
    let args = parse(&[
        "pgcapi",
        "replay",
        "-c",
        "x",
        "--since",
        "2025-01-31",
        "--state",
        "sent,failed",
        "--id",
        "4",
        "--id",
        "9",
    ]);
    assert_eq!(args.states, [ReplayState::Sent, ReplayState::Failed]);
    assert_eq!(args.filters.ids, [4, 9]);
    assert!(pgcapi::cli::Cli::try_parse_from([
        "pgcapi",
        "replay",
        "-c",
        "x",
        "--state",
        "cancelled"
    ])
    .is_err());
    assert!(
        pgcapi::cli::Cli::try_parse_from(["pgcapi", "retry", "-c", "x", "--since", "soon"])
            .is_err()
    );
}

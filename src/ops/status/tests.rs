//! Judging and rendering without a database: each problem, its reason and its message.

use super::*;
use crate::lsn::Lsn;
use crate::outbox::{CapturePhase, CaptureReport};
use std::time::Duration;

fn slot() -> SlotStatus {
    SlotStatus {
        name: "pgcapi".into(),
        exists: true,
        active: Some(true),
        active_pid: Some(42),
        wal_status: Some("reserved".into()),
        wal_retained_bytes: Some(4096),
        safe_wal_size: None,
        confirmed_flush_lsn: Some("0/1".into()),
        checkpoint_lsn: Some("0/1".into()),
        checkpoint_at: None,
        secs_since_checkpoint: Some(3),
    }
}

fn now() -> DateTime<Utc> {
    "2026-12-05T12:00:00Z".parse().unwrap()
}

fn observation(slot: SlotStatus) -> Observation {
    Observation {
        now: now(),
        slot,
        capture: None,
        destinations: Vec::new(),
        schema: "pgcapi".into(),
    }
}

fn report(phase: CapturePhase, seen_secs_ago: i64, since_secs_ago: i64) -> CaptureReport {
    CaptureReport {
        phase,
        error: (phase != CapturePhase::Streaming).then(|| "column \"email\" was dropped".into()),
        error_lsn: (phase == CapturePhase::Stuck).then_some(Lsn(0x1_6B37_4D48)),
        error_since: Some(now() - chrono::TimeDelta::seconds(since_secs_ago)),
        seen_at: now() - chrono::TimeDelta::seconds(seen_secs_ago),
    }
}

fn reasons(problems: &[Problem]) -> Vec<Reason> {
    problems.iter().map(|p| p.reason).collect()
}

#[test]
fn a_quiet_connector_is_healthy_and_each_problem_gives_a_reason() {
    let options = StatusOptions::default();
    let (problems, warnings) = judge(&observation(slot()), &[], &options);
    assert!(
        problems.is_empty() && warnings.is_empty(),
        "{problems:?} {warnings:?}"
    );

    let lost = SlotStatus {
        wal_status: Some("lost".into()),
        wal_retained_bytes: None,
        active: Some(false),
        ..slot()
    };
    let (problems, _) = judge(&observation(lost), &[], &options);
    assert_eq!(reasons(&problems), [Reason::SlotLost], "{problems:?}");
    assert!(problems[0].message.contains("is lost"));

    let behind = SlotStatus {
        wal_retained_bytes: Some(2 << 30),
        ..slot()
    };
    let (problems, _) = judge(&observation(behind), &[], &options);
    assert!(
        problems[0].message.contains("retains 2.0 GiB of WAL"),
        "{problems:?}"
    );

    let mut meta = DestinationHealth::empty("meta", "meta");
    meta.failed_1h = 2;
    meta.failed = 3;
    let (problems, warnings) = judge(&observation(slot()), std::slice::from_ref(&meta), &options);
    assert!(problems[0]
        .message
        .starts_with("2 delivery(ies) failed in the last hour (meta 2)"));
    assert!(
        warnings[0].starts_with("1 older failed row(s)"),
        "{warnings:?}"
    );
    let allow = StatusOptions {
        allow_failures: true,
        ..StatusOptions::default()
    };
    let (problems, warnings) = judge(&observation(slot()), &[meta], &allow);
    assert!(problems.is_empty());
    assert_eq!(warnings.len(), 2);
}

#[test]
fn events_google_could_not_use_are_a_warning_with_the_reasons_not_a_problem() {
    let mut google = DestinationHealth::empty("google", "google_data_manager");
    google.sent_24h = 12;
    google.platform_unusable_24h = 5;
    google.platform_unusable_reasons = vec![
        UnusableReason {
            reason: "PROCESSING_ERROR_REASON_EVENT_TOO_OLD".into(),
            events: 3,
        },
        UnusableReason {
            reason: "PROCESSING_ERROR_REASON_INVALID_GCLID".into(),
            events: 2,
        },
    ];
    let (problems, warnings) = judge(&observation(slot()), &[google], &StatusOptions::default());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        warnings,
        [
            "google: Google accepted 12 events but could not use 5 of them in the last 24 h: \
          EVENT_TOO_OLD 3, INVALID_GCLID 2"
        ]
    );
}

#[test]
fn an_unread_slot_is_unhealthy_unless_a_capture_reported_within_a_minute() {
    let t = FlowThresholds::default();
    let inactive = SlotStatus {
        active: Some(false),
        active_pid: None,
        ..slot()
    };
    // No capture ever reported: nothing reads the slot.
    let problems = judge_flow(&observation(inactive.clone()), &t);
    assert_eq!(reasons(&problems), [Reason::CaptureNotRunning]);
    assert!(problems[0].message.contains("start `pgcapi run`"));
    // A capture that reported retrying 20 s ago is between two connections: fine.
    let mut o = observation(inactive.clone());
    o.capture = Some(report(CapturePhase::Retrying, 20, 20));
    assert!(judge_flow(&o, &t).is_empty());
    // One whose last word was "streaming" would hold the slot: that process is gone.
    o.capture = Some(report(CapturePhase::Streaming, 20, 0));
    assert_eq!(reasons(&judge_flow(&o, &t)), [Reason::CaptureNotRunning]);
    // Silent for 90 s: not running, and the last report is quoted.
    o.capture = Some(report(CapturePhase::Stuck, 90, 600));
    let problems = judge_flow(&o, &t);
    assert_eq!(reasons(&problems), [Reason::CaptureNotRunning]);
    assert!(
        problems[0].message.contains("1m30s ago (stuck"),
        "{problems:?}"
    );
    // A standby: the slot is read by another process.
    let mut o = observation(slot());
    o.capture = Some(report(CapturePhase::Streaming, 10, 0));
    assert!(judge_flow(&o, &t).is_empty());
}

#[test]
fn stuck_at_once_retrying_after_a_minute() {
    let t = FlowThresholds::default();
    let mut o = observation(slot());
    o.capture = Some(report(CapturePhase::Stuck, 5, 3));
    let problems = judge_flow(&o, &t);
    assert_eq!(reasons(&problems), [Reason::CaptureStuck]);
    let text = &problems[0].message;
    assert!(
        text.contains("stuck at LSN 1/6B374D48 since 2026-12-05 11:59:57 UTC")
            && text.contains("column \"email\" was dropped"),
        "{text}"
    );
    o.capture = Some(report(CapturePhase::Retrying, 5, 30));
    assert!(judge_flow(&o, &t).is_empty());
    o.capture = Some(report(CapturePhase::Retrying, 5, 61));
    let problems = judge_flow(&o, &t);
    assert_eq!(reasons(&problems), [Reason::CaptureRetrying]);
    assert!(
        problems[0].message.contains("retrying for 1m01s"),
        "{problems:?}"
    );
}

#[test]
fn a_slot_ahead_of_the_stored_position_lost_changes() {
    let t = FlowThresholds::default();
    let ahead = SlotStatus {
        confirmed_flush_lsn: Some("0/3000100".into()),
        checkpoint_lsn: Some("0/20000A0".into()),
        ..slot()
    };
    let problems = judge_flow(&observation(ahead), &t);
    assert_eq!(reasons(&problems), [Reason::SlotAhead]);
    assert!(
        problems[0].message.contains("`pgcapi backfill`")
            && problems[0].message.contains(
                "UPDATE \"pgcapi\".checkpoints SET lsn = '0/3000100' WHERE slot = 'pgcapi';"
            ),
        "{problems:?}"
    );
    let behind = SlotStatus {
        confirmed_flush_lsn: Some("0/20000A0".into()),
        checkpoint_lsn: Some("0/3000100".into()),
        ..slot()
    };
    assert!(judge_flow(&observation(behind), &t).is_empty());
    let missing = SlotStatus {
        exists: false,
        active: None,
        ..slot()
    };
    assert_eq!(
        reasons(&judge_flow(&observation(missing), &t)),
        [Reason::SlotMissing]
    );
}

#[test]
fn a_destination_fails_only_when_rows_waited_the_whole_window_and_nothing_was_sent() {
    let t = FlowThresholds {
        failing_after: Duration::from_secs(600),
        ..FlowThresholds::default()
    };
    let failing = DestinationFlow {
        destination: "meta".into(),
        pending: 300,
        oldest_pending_secs: Some(700),
        sent_in_window: 0,
        failed_in_window: 300,
        last_error: Some("HTTP 503: unavailable".into()),
    };
    let mut o = observation(slot());
    o.destinations = vec![failing.clone()];
    let problems = judge_flow(&o, &t);
    assert_eq!(reasons(&problems), [Reason::DestinationFailing]);
    assert!(
        problems[0]
            .message
            .contains("destination meta has delivered nothing for 10m")
            && problems[0].message.contains("HTTP 503"),
        "{problems:?}"
    );
    for healthy in [
        DestinationFlow {
            sent_in_window: 1,
            ..failing.clone()
        },
        DestinationFlow {
            oldest_pending_secs: Some(300),
            ..failing.clone()
        },
        DestinationFlow {
            failed_in_window: 0,
            ..failing.clone()
        },
        DestinationFlow {
            pending: 0,
            oldest_pending_secs: None,
            ..failing.clone()
        },
    ] {
        o.destinations = vec![healthy.clone()];
        assert!(judge_flow(&o, &t).is_empty(), "{healthy:?}");
    }
}

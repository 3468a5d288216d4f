//! Judging a reading: why conversions do not flow (shared with `/readyz`) and status's own warnings.

use super::{FlowThresholds, Observation, Problem, Reason, StatusOptions};
use crate::lsn::Lsn;
use crate::outbox::{quote_ident, CapturePhase, DestinationHealth};
use crate::report::clip;
use crate::units::{format_bytes, format_secs};
use chrono::{DateTime, Utc};

/// Seconds from `since` to `now` (0 when `since` is later).
fn secs_between(since: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (now - since).num_seconds().max(0)
}

/// Whether conversions flow: every reason they do not, each with what to do. Shared by `pgcapi status`
/// and `/readyz` (and `pgcapi_unhealthy`), so both always say the same.
pub fn judge_flow(observation: &Observation, thresholds: &FlowThresholds) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut push = |reason, message: String| problems.push(Problem { reason, message });
    slot_problems(observation, &mut push);
    let slot = &observation.slot;
    // A missing or lost slot is the problem; what capture says about it adds nothing.
    if slot.exists && slot.wal_status.as_deref() != Some("lost") {
        capture_problems(observation, thresholds, &mut push);
    }
    destination_problems(observation, thresholds, &mut push);
    problems
}

/// The slot is missing, lost or about to be, or ahead of the stored checkpoint.
fn slot_problems(observation: &Observation, push: &mut impl FnMut(Reason, String)) {
    let slot = &observation.slot;
    let name = &slot.name;
    if !slot.exists {
        push(
            Reason::SlotMissing,
            format!(
                "replication slot {name:?} does not exist on the source database, so nothing is \
                 captured: run `pgcapi setup`, then `pgcapi backfill` for what changed meanwhile"
            ),
        );
    }
    match slot.wal_status.as_deref() {
        Some("lost") => push(
            Reason::SlotLost,
            format!(
                "replication slot {name:?} is lost (wal_status = lost): the server removed WAL it \
                 still needed, so changes were missed; drop it \
                 (SELECT pg_drop_replication_slot('{name}');), rerun `pgcapi setup`, then \
                 `pgcapi backfill` for what changed meanwhile"
            ),
        ),
        Some("unreserved") => push(
            Reason::SlotUnreserved,
            format!(
                "replication slot {name:?} is about to be lost (wal_status = unreserved: it retains \
                 more than max_slot_wal_keep_size): make sure `pgcapi run` is running and confirming"
            ),
        ),
        _ => {}
    }
    let confirmed = slot
        .confirmed_flush_lsn
        .as_deref()
        .and_then(|l| l.parse::<Lsn>().ok());
    let stored = slot
        .checkpoint_lsn
        .as_deref()
        .and_then(|l| l.parse::<Lsn>().ok());
    if let (Some(confirmed), Some(stored)) = (confirmed, stored) {
        if confirmed > stored {
            push(
                Reason::SlotAhead,
                format!(
                    "replication slot {name:?} is at {confirmed}, ahead of the position pgcapi stored \
                     ({stored}): the changes in between were never captured (the slot was recreated \
                     or advanced outside pgcapi); run `pgcapi backfill` for the time since the \
                     stored position was written, then accept the slot's position: \
                     UPDATE {}.checkpoints SET lsn = '{confirmed}' WHERE slot = '{name}';",
                    quote_ident(&observation.schema)
                ),
            );
        }
    }
}

/// Capture is not running, stuck, or retrying for too long (on a slot that exists and is not lost).
fn capture_problems(
    observation: &Observation,
    thresholds: &FlowThresholds,
    push: &mut impl FnMut(Reason, String),
) {
    let slot = &observation.slot;
    let name = &slot.name;
    let now = observation.now;
    let report = observation.capture.as_ref();
    let silent = report.map(|r| secs_between(r.seen_at, now));
    let fresh = silent.is_some_and(|s| s <= thresholds.capture_silent_after.as_secs() as i64);
    // A capture that streams holds the slot: an inactive slot with "streaming" as the last
    // report means that process stopped or died (an outage or a stuck change is reported first).
    let streamed = report.is_some_and(|r| r.phase == CapturePhase::Streaming);
    if slot.active == Some(false) && (!fresh || streamed) {
        let last = match (report, silent) {
            (Some(r), Some(secs)) => format!(
                "capture last reported {} ago ({}{})",
                format_secs(secs),
                r.phase.as_str(),
                r.error
                    .as_deref()
                    .map(|e| format!(": {}", clip(e, 200)))
                    .unwrap_or_default()
            ),
            _ => "no capture ever reported".to_string(),
        };
        push(
            Reason::CaptureNotRunning,
            format!(
                "no process reads replication slot {name:?} (inactive; {last}), so no change is \
                 captured: start `pgcapi run` (or see why it stopped in its log)"
            ),
        );
    } else if let Some(r) = report.filter(|_| fresh) {
        let since = r
            .error_since
            .map(|t| (t, secs_between(t, now)))
            .unwrap_or((now, 0));
        let error = clip(r.error.as_deref().unwrap_or("no reason recorded"), 300);
        match r.phase {
            CapturePhase::Stuck => push(
                Reason::CaptureStuck,
                format!(
                    "capture is stuck at LSN {} since {} UTC ({} ago): {error}; nothing after \
                     that change is captured until it is fixed as the message says (capture \
                     retries by itself; dispatch goes on)",
                    r.error_lsn.map_or("unknown".into(), |l| l.to_string()),
                    since.0.format("%Y-%m-%d %H:%M:%S"),
                    format_secs(since.1)
                ),
            ),
            CapturePhase::Retrying if since.1 > thresholds.retrying_after.as_secs() as i64 => push(
                Reason::CaptureRetrying,
                format!(
                    "capture has been retrying for {} (since {} UTC): {error}; check that \
                         the source and control databases are reachable and accept pgcapi's \
                         connections",
                    format_secs(since.1),
                    since.0.format("%Y-%m-%d %H:%M:%S")
                ),
            ),
            _ => {}
        }
    }
}

/// Destinations whose rows waited the whole window while every attempt failed.
fn destination_problems(
    observation: &Observation,
    thresholds: &FlowThresholds,
    push: &mut impl FnMut(Reason, String),
) {
    let window = thresholds.failing_after.as_secs() as i64;
    for d in &observation.destinations {
        let waited = d.oldest_pending_secs.unwrap_or(0);
        if d.pending > 0 && d.sent_in_window == 0 && d.failed_in_window > 0 && waited >= window {
            push(
                Reason::DestinationFailing,
                format!(
                    "destination {} has delivered nothing for {}: {} row(s) wait (the oldest for \
                     {}) and every attempt since failed; last error: {}; check the platform's \
                     status and the destination's credentials and endpoint (`pgcapi check`); the \
                     rows are retried by themselves",
                    d.destination,
                    format_secs(window),
                    d.pending,
                    format_secs(waited),
                    clip(d.last_error.as_deref().unwrap_or("-"), 200)
                ),
            );
        }
    }
}

/// The reasons for being unhealthy (those of [`judge_flow`], then status's own thresholds) and the
/// warnings.
pub(super) fn judge(
    observation: &Observation,
    destinations: &[DestinationHealth],
    options: &StatusOptions,
) -> (Vec<Problem>, Vec<String>) {
    let mut problems = judge_flow(observation, &options.flow);
    let mut warnings = Vec::new();
    let slot = &observation.slot;
    let name = &slot.name;
    if let Some(retained) = slot.wal_retained_bytes {
        if retained > 0 && retained as u64 > options.max_wal_retained {
            problems.push(Problem {
                reason: Reason::WalRetained,
                message: format!(
                    "replication slot {name:?} retains {} of WAL, over the limit of {} \
                     (--max-wal-retained){}",
                    format_bytes(retained),
                    format_bytes(i64::try_from(options.max_wal_retained).unwrap_or(i64::MAX)),
                    if slot.active == Some(false) {
                        ": no process is reading the slot; start `pgcapi run`"
                    } else {
                        ": pgcapi is behind; see its log"
                    }
                ),
            });
        }
    }
    if let Some(r) = &observation.capture {
        let silent = secs_between(r.seen_at, observation.now);
        if slot.active == Some(true) && silent > options.flow.capture_silent_after.as_secs() as i64
        {
            warnings.push(format!(
                "replication slot {name:?} is read, but no pgcapi capture has reported for {} \
                 (last: {}): is another program reading it?",
                format_secs(silent),
                r.phase.as_str()
            ));
        }
    }
    let failed_1h: i64 = destinations.iter().map(|d| d.failed_1h).sum();
    if failed_1h > 0 {
        let by_destination = destinations
            .iter()
            .filter(|d| d.failed_1h > 0)
            .map(|d| format!("{} {}", d.destination, d.failed_1h))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "{failed_1h} delivery(ies) failed in the last hour ({by_destination}): see the failures \
             below; once the cause is fixed, requeue them with `pgcapi retry`"
        );
        if options.allow_failures {
            warnings.push(text);
        } else {
            problems.push(Problem {
                reason: Reason::RecentFailures,
                message: format!("{text} (or pass --allow-failures)"),
            });
        }
    }
    for d in destinations.iter().filter(|d| d.platform_unusable_24h > 0) {
        warnings.push(unusable_warning(d));
    }
    let failed_older: i64 = destinations.iter().map(|d| d.failed - d.failed_1h).sum();
    if failed_older > 0 {
        warnings.push(format!(
            "{failed_older} older failed row(s) wait for `pgcapi retry` or `pgcapi purge --failed`"
        ));
    }
    (problems, warnings)
}

/// "google: Google accepted 12 events but could not use 5 of them in the last 24 h: EVENT_TOO_OLD 3,
/// INVALID_GCLID 2" (a warning, not a reason to fail: the data is at fault, not the connector).
fn unusable_warning(d: &DestinationHealth) -> String {
    let platform = if d.platform.starts_with("google") {
        "Google"
    } else {
        "the platform"
    };
    let reasons = d
        .platform_unusable_reasons
        .iter()
        .map(|r| {
            let reason = r
                .reason
                .strip_prefix("PROCESSING_ERROR_REASON_")
                .unwrap_or(&r.reason);
            format!("{reason} {}", r.events)
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}: {platform} accepted {} events but could not use {} of them in the last 24 h: {reasons}",
        d.destination, d.sent_24h, d.platform_unusable_24h
    )
}

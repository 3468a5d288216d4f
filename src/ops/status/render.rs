//! The readable form of a status report: the verdict, then one table per part.

use super::StatusReport;
use crate::report::{clip, table};
use crate::units::{format_bytes, format_secs};
use chrono::{DateTime, Utc};
use std::fmt::Write as _;

/// `2025-01-31 14:05:06` (UTC), or `-`.
fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// `0.75` as `75%`, or `-`.
fn share(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{:.0}%", v * 100.0))
}

impl StatusReport {
    /// The readable form: verdict with reasons, then the slot, destinations and recent failures.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pgcapi status: {}",
            if self.healthy { "HEALTHY" } else { "UNHEALTHY" }
        );
        for reason in &self.reasons {
            let _ = writeln!(out, "  ! {reason}");
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "  warning: {warning}");
        }
        self.render_slot(&mut out);
        self.render_capture(&mut out);
        self.render_destinations(&mut out);
        self.render_failures(&mut out);
        out
    }

    /// The replication slot, as the source database sees it.
    fn render_slot(&self, out: &mut String) {
        let slot = &self.slot;
        let yes_no = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        out.push_str("\nReplication slot (source database)\n");
        out.push_str(&table(
            &[
                "slot",
                "exists",
                "active",
                "pid",
                "wal_status",
                "wal retained",
                "safe_wal_size",
                "confirmed",
                "stored position",
                "moved",
            ],
            &[vec![
                slot.name.clone(),
                yes_no(Some(slot.exists)).into(),
                yes_no(slot.active).into(),
                slot.active_pid.map_or("-".into(), |p| p.to_string()),
                slot.wal_status.clone().unwrap_or_else(|| "-".into()),
                slot.wal_retained_bytes.map_or("-".into(), format_bytes),
                slot.safe_wal_size.map_or("unlimited".into(), format_bytes),
                slot.confirmed_flush_lsn
                    .clone()
                    .unwrap_or_else(|| "-".into()),
                slot.checkpoint_lsn.clone().unwrap_or_else(|| "-".into()),
                slot.secs_since_checkpoint
                    .map_or("-".into(), |s| format!("{} ago", format_secs(s))),
            ]],
        ));
    }

    /// Capture's last report.
    fn render_capture(&self, out: &mut String) {
        out.push_str("\nCapture (as it last reported)\n");
        match &self.capture {
            None => out.push_str("  no capture process has reported yet\n"),
            Some(c) => out.push_str(&table(
                &["state", "since", "at LSN", "last seen", "error"],
                &[vec![
                    c.phase.as_str().into(),
                    time(c.error_since),
                    c.error_lsn.map_or("-".into(), |l| l.to_string()),
                    time(Some(c.seen_at)),
                    clip(c.error.as_deref().unwrap_or("-"), 100),
                ]],
            )),
        }
    }

    /// One row per destination, then the last error of each that has one.
    fn render_destinations(&self, out: &mut String) {
        out.push_str("\nDestinations (outcomes counted by when they were reached)\n");
        let rows: Vec<Vec<String>> = self
            .destinations
            .iter()
            .map(|d| {
                vec![
                    d.destination.clone(),
                    d.platform.clone(),
                    d.pending.to_string(),
                    d.oldest_pending_secs.map_or("-".into(), format_secs),
                    d.retrying.to_string(),
                    d.failed.to_string(),
                    format!("{}/{}/{}", d.sent_1h, d.failed_1h, d.skipped_1h),
                    format!("{}/{}/{}", d.sent_24h, d.failed_24h, d.skipped_24h),
                    time(d.last_sent_at),
                    d.match_score.map_or("-".into(), |s| format!("{s:.1}")),
                    share(d.email_share),
                    share(d.phone_share),
                    share(d.click_id_share),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "destination",
                "platform",
                "pending",
                "oldest",
                "retrying",
                "failed",
                "1h sent/failed/skipped",
                "24h sent/failed/skipped",
                "last sent",
                "match score",
                "email",
                "phone",
                "click id",
            ],
            &rows,
        ));
        let errors: Vec<Vec<String>> = self
            .destinations
            .iter()
            .filter_map(|d| {
                d.last_error
                    .as_ref()
                    .map(|e| vec![d.destination.clone(), time(d.last_error_at), clip(e, 100)])
            })
            .collect();
        if !errors.is_empty() {
            out.push_str("\nLast error per destination\n");
            out.push_str(&table(&["destination", "at", "message"], &errors));
        }
    }

    /// The latest failures, newest first.
    fn render_failures(&self, out: &mut String) {
        out.push_str("\nRecent failures (requeue with `pgcapi retry --id ID`)\n");
        if self.recent_failures.is_empty() {
            out.push_str("  none\n");
        } else {
            let rows: Vec<Vec<String>> = self
                .recent_failures
                .iter()
                .map(|f| {
                    vec![
                        f.id.to_string(),
                        time(Some(f.failed_at)),
                        f.destination.clone(),
                        f.rule.clone(),
                        f.kind.clone(),
                        f.event_id.clone(),
                        f.attempts.to_string(),
                        clip(f.last_error.as_deref().unwrap_or("-"), 100),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "id",
                    "failed at",
                    "destination",
                    "rule",
                    "kind",
                    "event_id",
                    "attempts",
                    "message",
                ],
                &rows,
            ));
        }
    }
}

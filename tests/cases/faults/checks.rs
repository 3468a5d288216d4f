//! The fault suite's verdict: the control table and the sandbox's records against what the workload implies.

use super::*;
use pgcapi::testbed::sandbox::Records;
use std::collections::HashMap;
use tokio_postgres::Client;

/// One control-table row.
#[derive(Debug, Clone)]
pub(super) struct ControlRow {
    pub(super) state: String,
    pub(super) last_error: String,
}

pub(super) type RowKey = (String, String, String);

pub(super) async fn control_rows(client: &Client) -> HashMap<RowKey, ControlRow> {
    client
        .query(
            "select rule, destination, event_id, state, coalesce(last_error, '') from pgcapi.deliveries",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1), r.get(2)),
                ControlRow {
                    state: r.get(3),
                    last_error: r.get(4),
                },
            )
        })
        .collect()
}

/// What the sandbox counted: items per (destination, id), and Google retractions per order id.
pub(super) struct Counted {
    pub(super) items: HashMap<(String, String), usize>,
    pub(super) retractions: HashMap<String, usize>,
    pub(super) other_adjustments: usize,
}

impl Counted {
    pub(super) fn from(records: &Records) -> Counted {
        let mut items: HashMap<(String, String), usize> = HashMap::new();
        let mut add = |dest: &str, id: &Option<String>| {
            *items
                .entry((dest.to_string(), id.clone().unwrap_or_default()))
                .or_default() += 1;
        };
        for e in &records.meta.events {
            add("meta", &e.event_id);
        }
        for e in &records.tiktok.events {
            add("tiktok", &e.event_id);
        }
        for c in &records.google_ads.conversions {
            add("google", &c.order_id);
        }
        let mut retractions: HashMap<String, usize> = HashMap::new();
        let mut other_adjustments = 0;
        for a in &records.google_ads.adjustments {
            if a.adjustment_type == "RETRACTION" {
                *retractions
                    .entry(a.order_id.clone().unwrap_or_default())
                    .or_default() += 1;
            } else {
                other_adjustments += 1;
            }
        }
        Counted {
            items,
            retractions,
            other_adjustments,
        }
    }

    pub(super) fn times(&self, dest: &str, id: &str) -> usize {
        self.items
            .get(&(dest.to_string(), id.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// The result of comparing the end state with the model.
#[derive(Default)]
pub(super) struct Verdict {
    pub(super) problems: Vec<String>,
    pub(super) cancelled_before_send: usize,
    pub(super) sent_then_refunded: usize,
}

/// The row of `(rule, dest, id)`, if the control table holds one.
fn row<'a>(
    rows: &'a HashMap<RowKey, ControlRow>,
    rule: &str,
    dest: &str,
    id: &str,
) -> Option<&'a ControlRow> {
    rows.get(&(rule.to_string(), dest.to_string(), id.to_string()))
}

/// What the model implies the control table holds: how many rows, and how many failed rows per (rule,
/// reason) of changes that cannot become events.
#[derive(Default)]
struct Implied {
    rows: usize,
    invalid: HashMap<(&'static str, &'static str), usize>,
}

/// How the run ended: the control table's rows and what the platforms counted.
struct Ends<'a> {
    rows: &'a HashMap<RowKey, ControlRow>,
    counted: &'a Counted,
}

impl Implied {
    /// One more failed row of `rule` for `reason`.
    fn fail(&mut self, rule: &'static str, reason: &'static str) {
        *self.invalid.entry((rule, reason)).or_default() += 1;
    }
}

impl Verdict {
    pub(super) fn check(
        workload: &Workload,
        rows: &HashMap<RowKey, ControlRow>,
        records: &Records,
    ) -> Verdict {
        let counted = Counted::from(records);
        let mut v = Verdict::default();
        let mut implied = Implied::default();
        let ends = Ends {
            rows,
            counted: &counted,
        };
        for o in &workload.orders {
            let id = o.event_id();
            for dest in ORDER_DESTINATIONS {
                v.check_order_at(o, dest, &ends, &mut implied);
            }
            v.check_google_retractions(o, &id, rows, &counted);
        }
        v.check_large_user_agents(workload, records);
        for l in &workload.leads {
            for dest in LEAD_DESTINATIONS {
                v.check_lead_at(l, dest, &ends, &mut implied);
            }
        }
        v.check_totals(rows, &counted, &implied);
        v
    }

    /// One order at one destination: its conversion and retraction rows, and what the platform counted.
    fn check_order_at(&mut self, o: &Order, dest: &str, ends: &Ends, implied: &mut Implied) {
        let (v, id, rows, counted) = (self, &o.event_id(), ends.rows, ends.counted);
        let conv = row(rows, "order_paid", dest, id);
        let retr = row(rows, "order_refunded", dest, id);
        let times = counted.times(dest, id);
        let what = format!("order {id} at {dest} ({:?})", o.kind);
        match o.kind {
            OrderKind::Paid | OrderKind::PaidLargeUserAgent => v.expect_sent(&what, conv, times),
            OrderKind::PaidNoUserAgent if dest == "meta" => {
                v.expect(&what, conv, "failed", "client_user_agent", times)
            }
            OrderKind::PaidNoUserAgent => v.expect_sent(&what, conv, times),
            OrderKind::RefundedSoon | OrderKind::RefundedLater | OrderKind::PaidRefundedOneTx => {
                v.expect_refunded(&what, dest, conv, retr, times, counted, id)
            }
            OrderKind::ConsentDenied
            | OrderKind::ConsentUnknown
            | OrderKind::DeniedThenRefunded => {
                v.expect(&what, conv, "skipped", "no consent", times)
            }
            OrderKind::NoMatchKey => v.expect(&what, conv, "skipped", "no match keys", times),
            OrderKind::BadCurrency | OrderKind::BadValue | OrderKind::RefundedUnpaid => {
                v.expect_absent(&what, conv, times)
            }
        }
        if o.kind == OrderKind::DeniedThenRefunded {
            v.expect(
                &format!("{what} retraction"),
                retr,
                "skipped",
                "the conversion was skipped, not sent: nothing to retract",
                0,
            );
        } else if o.kind == OrderKind::RefundedUnpaid {
            v.expect(
                &format!("{what} retraction"),
                retr,
                "skipped",
                "no conversion to retract",
                0,
            );
        } else if !o.kind.refunded() && retr.is_some() {
            v.problems
                .push(format!("{what}: a retraction row exists without a refund"));
        }
        if o.kind.invalid() {
            implied.fail(
                "order_paid",
                if o.kind == OrderKind::BadCurrency {
                    "currency"
                } else {
                    "column \"total\": invalid numeric value"
                },
            );
        }
        implied.rows += usize::from(o.kind.paid()) + usize::from(o.kind.refunded());
    }

    /// Google recorded one retraction of a refunded order exactly when its retraction row was sent, and
    /// none of any other order.
    fn check_google_retractions(
        &mut self,
        o: &Order,
        id: &str,
        rows: &HashMap<RowKey, ControlRow>,
        counted: &Counted,
    ) {
        if o.kind == OrderKind::RefundedSoon
            || o.kind == OrderKind::RefundedLater
            || o.kind == OrderKind::PaidRefundedOneTx
        {
            let google = row(rows, "order_refunded", "google", id).map(|r| r.state.as_str());
            let retracted = counted.retractions.get(id).copied().unwrap_or(0);
            let expected = usize::from(google == Some("sent"));
            if retracted != expected {
                self.problems.push(format!(
                    "order {id}: Google recorded {retracted} retraction(s), expected {expected}"
                ));
            }
        } else if counted.retractions.contains_key(id) {
            self.problems
                .push(format!("order {id}: Google retraction without a refund"));
        }
    }

    /// The user agents read back reached Meta and TikTok exactly as stored.
    fn check_large_user_agents(&mut self, workload: &Workload, records: &Records) {
        let large: HashMap<String, &str> = workload
            .orders
            .iter()
            .filter(|o| o.kind == OrderKind::PaidLargeUserAgent)
            .map(|o| (o.event_id(), o.user_agent.as_deref().unwrap_or_default()))
            .collect();
        for (dest, events, field) in [
            ("meta", &records.meta.events, "client_user_agent"),
            ("tiktok", &records.tiktok.events, "user_agent"),
        ] {
            for e in events {
                let Some(expected) = e.event_id.as_ref().and_then(|id| large.get(id)) else {
                    continue;
                };
                if e.plain.get(field).map(String::as_str) != Some(*expected) {
                    self.problems.push(format!(
                        "{dest} {:?}: {field} is not the stored (TOASTed) user agent",
                        e.event_id
                    ));
                }
            }
        }
    }

    /// One lead at one destination: its conversion row, and what the platform counted.
    fn check_lead_at(&mut self, l: &Lead, dest: &str, ends: &Ends, implied: &mut Implied) {
        let (v, id, rows, counted) = (self, &l.event_id(), ends.rows, ends.counted);
        let conv = row(rows, "deal_won", dest, id);
        let times = counted.times(dest, id);
        let what = format!("lead {id} at {dest} ({:?})", l.kind);
        match l.kind {
            LeadKind::Won => v.expect_sent(&what, conv, times),
            LeadKind::WonNoValue if dest == "meta" => {
                v.expect(&what, conv, "failed", "custom_data.value", times)
            }
            LeadKind::WonNoValue => v.expect_sent(&what, conv, times),
            LeadKind::WonDenied | LeadKind::WonUnknownConsent => {
                v.expect(&what, conv, "skipped", "no consent", times)
            }
            LeadKind::WonNoMatchKey => v.expect(&what, conv, "skipped", "no match keys", times),
            LeadKind::WonBadCurrency | LeadKind::WonBadValue | LeadKind::Lost => {
                v.expect_absent(&what, conv, times)
            }
        }
        if l.kind.invalid() {
            implied.fail(
                "deal_won",
                if l.kind == LeadKind::WonBadCurrency {
                    "currency"
                } else {
                    "column \"deal_value\": invalid numeric value"
                },
            );
        }
        implied.rows += usize::from(l.kind != LeadKind::Lost);
    }

    /// The control table as a whole: the failed rows of invalid changes, its size, and that everything
    /// the platforms counted is recorded as sent.
    fn check_totals(
        &mut self,
        rows: &HashMap<RowKey, ControlRow>,
        counted: &Counted,
        implied: &Implied,
    ) {
        let v = self;
        // Rows of changes that cannot become events: failed, visible, with the reason.
        for ((rule, reason), expected) in &implied.invalid {
            let found = rows
                .iter()
                .filter(|((r, _, id), row)| {
                    r == rule
                        && id.starts_with("invalid-")
                        && row.state == "failed"
                        && row.last_error.contains(reason)
                })
                .count();
            if found != *expected {
                v.problems.push(format!(
                    "{rule}: {found} failed rows for {reason:?}, expected {expected}"
                ));
            }
        }
        // Nothing more and nothing less in the control table.
        let expected_rows = implied.rows;
        if rows.len() != expected_rows {
            v.problems.push(format!(
                "control table holds {} rows, the workload implies {expected_rows}",
                rows.len()
            ));
        }
        // Everything the platforms counted is a row recorded as sent (nothing counted that is
        // recorded as cancelled, failed or pending).
        for ((dest, id), times) in &counted.items {
            let rule = if id.starts_with("deal-") {
                "deal_won"
            } else {
                "order_paid"
            };
            match row(rows, rule, dest, id) {
                Some(row) if row.state == "sent" => {}
                other => v.problems.push(format!(
                    "{dest} counted {id} {times} time(s), but the control table says {:?}",
                    other.map(|r| (&r.state, &r.last_error))
                )),
            }
        }
        if counted.other_adjustments > 0 {
            v.problems.push(format!(
                "Google recorded {} adjustments that are not retractions",
                counted.other_adjustments
            ));
        }
    }

    pub(super) fn expect(
        &mut self,
        what: &str,
        row: Option<&ControlRow>,
        state: &str,
        reason: &str,
        times: usize,
    ) {
        match row {
            Some(r) if r.state == state && r.last_error.contains(reason) => {}
            other => self.problems.push(format!(
                "{what}: expected {state} ({reason:?}), found {:?}",
                other.map(|r| (&r.state, &r.last_error))
            )),
        }
        if times != 0 {
            self.problems
                .push(format!("{what}: the platform counted it {times} time(s)"));
        }
    }

    pub(super) fn expect_sent(&mut self, what: &str, row: Option<&ControlRow>, times: usize) {
        match row {
            Some(r) if r.state == "sent" => {}
            other => self.problems.push(format!(
                "{what}: expected sent, found {:?}",
                other.map(|r| (&r.state, &r.last_error))
            )),
        }
        if times != 1 {
            self.problems.push(format!(
                "{what}: the platform counted it {times} time(s), expected once"
            ));
        }
    }

    pub(super) fn expect_absent(&mut self, what: &str, row: Option<&ControlRow>, times: usize) {
        if let Some(r) = row {
            self.problems.push(format!(
                "{what}: expected no conversion row, found {:?}",
                (&r.state, &r.last_error)
            ));
        }
        if times != 0 {
            self.problems
                .push(format!("{what}: the platform counted it {times} time(s)"));
        }
    }

    /// A refunded order at one destination: either cancelled before it was sent (never at the
    /// platform, retraction cancelled too) or sent once and then retracted where the platform can.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn expect_refunded(
        &mut self,
        what: &str,
        dest: &str,
        conv: Option<&ControlRow>,
        retr: Option<&ControlRow>,
        times: usize,
        counted: &Counted,
        id: &str,
    ) {
        let state = |r: Option<&ControlRow>| r.map(|r| (r.state.clone(), r.last_error.clone()));
        match (
            conv.map(|r| r.state.as_str()),
            retr.map(|r| r.state.as_str()),
        ) {
            // Cancelled only when it never reached the platform; one that may have (an answer lost)
            // is finished first, below.
            (Some("cancelled"), Some("cancelled")) if times == 0 => self.cancelled_before_send += 1,
            (Some("sent"), Some("sent")) if times == 1 && dest == "google" => {
                self.sent_then_refunded += 1;
                if counted.retractions.get(id).copied().unwrap_or(0) != 1 {
                    self.problems
                        .push(format!("{what}: retraction sent but not recorded once"));
                }
            }
            (Some("sent"), Some("skipped"))
                if times == 1
                    && dest != "google"
                    && retr.unwrap().last_error.contains("cannot retract") =>
            {
                self.sent_then_refunded += 1
            }
            _ => self.problems.push(format!(
                "{what}: conversion {:?}, retraction {:?}, counted {times} time(s) by the platform",
                state(conv),
                state(retr)
            )),
        }
    }
}

/// Batches a destination has in flight at once: each may be resent after a kill.
pub(super) const IN_FLIGHT: u64 = pgcapi::dispatch::BATCHES_IN_FLIGHT as u64;

/// The most raw duplicate items a platform may receive: every batch in flight at each kill, and every
/// batch whose response was lost, resent once.
pub(super) fn duplicate_bound(kills: u32, responses_lost: u64) -> u64 {
    (u64::from(kills) * IN_FLIGHT + responses_lost) * BATCH as u64
}

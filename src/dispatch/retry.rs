//! The one place that turns a destination's [`Outcome`] for a row into what is recorded for it.
//!
//! - **Sent, failed, skipped** are recorded as they are (an attempt counts for sent and failed).
//! - **Retry** goes back to pending after [`backoff`]: exponential from `dispatch.retry_initial_ms`,
//!   capped at `dispatch.retry_max_ms`, with full jitter, and never shorter than the delay the
//!   destination gave: the platform's `Retry-After`.
//! - **Needs an operator** (credentials, permissions, a refused setting) is a retry held back at least
//!   [`OPERATOR_RETRY_FLOOR`]: the destinations only say that an operator must act, this module says
//!   how long that means.
//! - **Give-up** ([`give_up`]): a retry (or a wait) of a row queued more than
//!   `dispatch.give_up_after_secs` ago is recorded as failed, "gave up after N s". The age is the
//!   control database's: the claim reads how long each row had been queued by the server's clock
//!   ([`Lease::queued`]), and the time since the claim is added, so that one clock judges every row
//!   whichever process sent it. The record statement writes what it is told.
//!
//! [`Lease::queued`]: crate::outbox::Lease::queued

use crate::config::DispatchConfig;
use crate::destinations::Outcome;
use crate::event::Delivery;
use crate::outbox::{Record, Recorded};
use rand::Rng;
use std::collections::HashMap;
use std::time::Duration;

/// How long to wait at least before retrying after an error no event is to blame for (authentication,
/// permissions, a refused account or request setting): it needs an operator, so hammering the platform
/// helps nobody, but the rows stay pending (until `give_up_after_secs`) so that fixing the config loses
/// nothing.
pub const OPERATOR_RETRY_FLOOR: Duration = Duration::from_secs(60);

/// The record of one sent row's outcome.
pub(super) fn record(config: &DispatchConfig, d: &Delivery, outcome: Outcome) -> Record {
    match outcome {
        Outcome::Sent { platform_ref } => Record {
            platform_ref,
            ..Record::new(d.id, Recorded::Sent, None, 1)
        },
        Outcome::Failed { error } => Record::new(d.id, Recorded::Failed, Some(error), 1),
        Outcome::Skipped { reason } => Record::new(d.id, Recorded::Skipped, Some(reason), 0),
        Outcome::Retry { error, retry_after } => Record {
            delay: backoff(config, d.attempts, retry_after),
            ..Record::new(d.id, Recorded::Retry, Some(error), 1)
        },
        Outcome::NeedsOperator { error, retry_after } => Record {
            delay: backoff(config, d.attempts, Some(operator_delay(retry_after))),
            ..Record::new(d.id, Recorded::Retry, Some(error), 1)
        },
    }
}

/// How long a row waiting for an operator is held back at least: the platform's delay, and never
/// less than [`OPERATOR_RETRY_FLOOR`].
pub fn operator_delay(retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or_default().max(OPERATOR_RETRY_FLOOR)
}

/// Gives up the rows that have waited long enough: a retry or a wait among `records` of a row queued
/// at least `give_up_after_secs` ago (its age at the claim, `queued`, plus `since_claim`) becomes a
/// failure, "gave up after N s: " and the reason it was going to be retried. A row without a known age
/// is kept.
pub(super) fn give_up(
    config: &DispatchConfig,
    records: &mut [Record],
    queued: &HashMap<i64, Duration>,
    since_claim: Duration,
) {
    let limit = Duration::from_secs(config.give_up_after_secs);
    for r in records.iter_mut() {
        let waited = queued.get(&r.id).map(|age| *age + since_claim);
        if r.state.is_rescheduled() && waited.is_some_and(|w| w >= limit) {
            r.state = Recorded::Failed;
            r.error = Some(format!(
                "gave up after {} s: {}",
                config.give_up_after_secs,
                r.error.as_deref().unwrap_or_default()
            ));
        }
    }
}

/// How the platform answered a batch, as the worker's outage detection needs it.
#[derive(Debug, Default)]
pub(super) struct Answers {
    /// The platform accepted at least one row.
    pub(super) answered: bool,
    /// At least one row met a retryable error.
    pub(super) unanswered: bool,
    /// The longest delay a destination asked for (`Retry-After`, or the operator floor).
    pub(super) retry_after: Option<Duration>,
    /// Rows put back on plain exponential backoff (no delay asked for).
    pub(super) backed_off: Vec<i64>,
}

impl Answers {
    /// Takes the outcome of row `id` into account.
    pub(super) fn observe(&mut self, id: i64, outcome: &Outcome) {
        match outcome {
            Outcome::Sent { .. } => self.answered = true,
            Outcome::Retry { retry_after, .. } => {
                self.unanswered = true;
                match retry_after {
                    None => self.backed_off.push(id),
                    Some(after) => self.retry_after = self.retry_after.max(Some(*after)),
                }
            }
            Outcome::NeedsOperator { retry_after, .. } => {
                self.unanswered = true;
                let after = operator_delay(*retry_after);
                self.retry_after = self.retry_after.max(Some(after));
            }
            Outcome::Failed { .. } | Outcome::Skipped { .. } => {}
        }
    }
}

/// The retry delay after `attempts` earlier attempts: exponential from `retry_initial_ms`, capped at
/// `retry_max_ms`, with full jitter (uniform between zero and the cap, so that many rows failing
/// together do not retry together), and never shorter than the platform's `Retry-After`.
pub fn backoff(config: &DispatchConfig, attempts: i32, retry_after: Option<Duration>) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 62)).unwrap_or(0);
    let cap = config
        .retry_initial_ms
        .saturating_mul(1u64.checked_shl(exponent).unwrap_or(u64::MAX))
        .min(config.retry_max_ms)
        .max(1);
    let jittered = Duration::from_millis(rand::rng().random_range(0..=cap));
    jittered.max(retry_after.unwrap_or_default())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A dispatch config with these retry bounds (also for the worker's tests).
    pub(in crate::dispatch) fn config(initial: u64, max: u64) -> DispatchConfig {
        DispatchConfig {
            retry_initial_ms: initial,
            retry_max_ms: max,
            ..DispatchConfig::default()
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_its_cap() {
        let c = config(100, 1_000);
        for _ in 0..200 {
            assert!(backoff(&c, 0, None) <= Duration::from_millis(100));
            assert!(backoff(&c, 2, None) <= Duration::from_millis(400));
            assert!(backoff(&c, 30, None) <= Duration::from_millis(1_000));
            assert!(backoff(&c, i32::MAX, None) <= Duration::from_millis(1_000));
        }
    }

    #[test]
    fn backoff_is_jittered_over_the_whole_range() {
        let c = config(1_000, 1_000);
        let samples: Vec<Duration> = (0..200).map(|_| backoff(&c, 0, None)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_millis(300)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(700)));
    }

    #[test]
    fn retry_after_is_a_floor_even_beyond_the_cap() {
        let c = config(100, 1_000);
        let d = backoff(&c, 3, Some(Duration::from_secs(30)));
        assert_eq!(d, Duration::from_secs(30));
    }

    fn row(attempts: i32) -> Delivery {
        Delivery {
            id: 42,
            rule: "paid".into(),
            destination: "meta".into(),
            event_id: "o-1".into(),
            kind: crate::event::Kind::Conversion,
            adjusts_rule: None,
            event_name: None,
            event_time: chrono::Utc::now(),
            value: None,
            currency: None,
            action_source: None,
            payload: serde_json::from_str("{}").expect("an empty payload"),
            attempts,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn each_outcome_becomes_its_record_and_only_requests_count_as_attempts() {
        let c = config(100, 1_000);
        let sent = record(
            &c,
            &row(0),
            Outcome::Sent {
                platform_ref: Some("fbtrace".into()),
            },
        );
        assert_eq!(
            (sent.state, sent.attempted, sent.platform_ref.as_deref()),
            (Recorded::Sent, 1, Some("fbtrace"))
        );
        let failed = record(&c, &row(0), Outcome::failed("(#100) bad"));
        assert_eq!(
            (failed.state, failed.attempted, failed.error.as_deref()),
            (Recorded::Failed, 1, Some("(#100) bad"))
        );
        let skipped = record(&c, &row(0), Outcome::skipped("too old"));
        assert_eq!((skipped.state, skipped.attempted), (Recorded::Skipped, 0));
        assert_eq!(skipped.delay, Duration::ZERO);
    }

    #[test]
    fn a_retry_waits_its_backoff_and_at_least_what_the_destination_asked() {
        let c = config(100, 1_000);
        let plain = record(
            &c,
            &row(30),
            Outcome::Retry {
                error: "503".into(),
                retry_after: None,
            },
        );
        assert_eq!((plain.state, plain.attempted), (Recorded::Retry, 1));
        assert!(plain.delay <= Duration::from_millis(1_000));
        // A problem only an operator can fix waits at least the floor, or longer if the platform asks.
        let operator = record(&c, &row(0), Outcome::needs_operator("token expired"));
        assert_eq!(operator.delay, OPERATOR_RETRY_FLOOR);
        assert_eq!(operator.state, Recorded::Retry);
        assert_eq!(operator.attempted, 1);
        let longer = Duration::from_secs(600);
        let asked = Outcome::NeedsOperator {
            error: "quota".into(),
            retry_after: Some(longer),
        };
        assert_eq!(record(&c, &row(0), asked).delay, longer);
        let mut answers = Answers::default();
        answers.observe(7, &Outcome::needs_operator("permission denied"));
        assert!(answers.unanswered && !answers.answered);
        assert_eq!(answers.retry_after, Some(OPERATOR_RETRY_FLOOR));
    }

    #[test]
    fn a_retry_or_wait_of_a_row_queued_past_the_limit_fails_and_says_why() {
        let c = DispatchConfig {
            give_up_after_secs: 60,
            ..config(100, 1_000)
        };
        let retry = |id| Record::new(id, Recorded::Retry, Some("meta: HTTP 503".into()), 1);
        let mut records = vec![
            retry(1),
            retry(2),
            Record::new(3, Recorded::Wait, Some("waiting".into()), 0),
            Record::new(4, Recorded::Sent, None, 1),
            retry(5),
        ];
        let queued: HashMap<i64, Duration> = [
            (1, Duration::from_secs(59)),
            (2, Duration::from_secs(10)),
            (3, Duration::from_secs(120)),
            (4, Duration::from_secs(120)),
        ]
        .into();
        // One second passed since the claim: row 1 reaches the minute.
        give_up(&c, &mut records, &queued, Duration::from_secs(1));
        let got: Vec<(Recorded, &str)> = records
            .iter()
            .map(|r| (r.state, r.error.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            got,
            [
                (Recorded::Failed, "gave up after 60 s: meta: HTTP 503"),
                (Recorded::Retry, "meta: HTTP 503"),
                (Recorded::Failed, "gave up after 60 s: waiting"),
                (Recorded::Sent, ""),
                (Recorded::Retry, "meta: HTTP 503"),
            ]
        );
    }

    #[test]
    fn answers_tell_an_unanswered_batch_from_a_rejected_one() {
        let mut a = Answers::default();
        a.observe(1, &Outcome::failed("rejected"));
        assert!(!a.answered && !a.unanswered);
        a.observe(
            2,
            &Outcome::Retry {
                error: "timeout".into(),
                retry_after: None,
            },
        );
        a.observe(
            3,
            &Outcome::Retry {
                error: "429".into(),
                retry_after: Some(Duration::from_secs(30)),
            },
        );
        assert!(a.unanswered);
        assert_eq!(a.backed_off, [2]);
        assert_eq!(a.retry_after, Some(Duration::from_secs(30)));
        a.observe(4, &Outcome::Sent { platform_ref: None });
        assert!(a.answered);
    }
}

//! Refunds and deletes of source rows: what becomes of an adjustment (a retraction or restatement)
//! given the conversion it adjusts. [`resolve`] is the decision, pure and table-tested; the round
//! applies it (`round.rs`).
//!
//! The rule that keeps the control table truthful: a conversion that may have reached the platform is
//! never cancelled, on any platform (the platform may count it); it is finished first, and the
//! adjustment then follows what the platform can do — the destination sends it (Google Ads, Microsoft)
//! or answers that it cannot (Meta, TikTok, Data Manager with `refunds = "skip"`), which is why whether
//! the platform can retract is not an input here. Only a conversion that was never attempted is
//! cancelled (retraction) or changed in place (restatement), and only while nobody else holds it.

use crate::event::{Delivery, Kind, State};
use crate::outbox::Conversion;
use std::collections::HashSet;

/// Who holds, or last held, a conversion's lease (`lease_owner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Nobody ever claimed it.
    Nobody,
    /// This very batch claimed it (with the adjustment).
    ThisBatch,
    /// Another batch or process: a round in flight, or one that died before recording its outcome.
    Other,
}

/// What an adjustment's resolution needs to know about the conversion it adjusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConversionView {
    /// Its state (`None`: a state this version does not know).
    pub state: Option<State>,
    /// Sends attempted: above zero, a request carrying it may have reached the platform (a timeout,
    /// a lost connection, a 5xx, a 429).
    pub attempts: i32,
    /// Who holds or held its lease.
    pub holder: Holder,
    /// Whether that lease is still valid.
    pub leased: bool,
}

impl ConversionView {
    /// The view of `c` from a batch of `owner` that claimed the rows `claimed`.
    pub(crate) fn of(c: &Conversion, owner: &str, claimed: &HashSet<i64>) -> ConversionView {
        let holder = match c.lease_owner.as_deref() {
            None => Holder::Nobody,
            Some(o) if o == owner && claimed.contains(&c.id) => Holder::ThisBatch,
            Some(_) => Holder::Other,
        };
        ConversionView {
            state: c.state,
            attempts: c.attempts,
            holder,
            leased: c.leased,
        }
    }

    /// Whether a request carrying it may have reached the platform: an attempt was recorded, or a
    /// lease other than this batch's holds or held it.
    fn may_have_been_sent(&self) -> bool {
        self.attempts > 0 || self.holder == Holder::Other
    }
}

/// What becomes of an adjustment (a retraction or restatement) of a conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// The conversion never reached the platform: cancel it and the retraction together.
    CancelBoth,
    /// The conversion never reached the platform: it takes the restated value, the restatement closes.
    RestateUnsent,
    /// The conversion is being sent, or may have reached the platform and must be finished (sent,
    /// its stored payload as it is) first: look again once it has an outcome.
    Wait,
    /// The conversion was sent: the adjustment goes to the destination, which retracts or restates
    /// it (Google Ads) or answers that it cannot (Meta, TikTok: skipped, `platform cannot retract`).
    Send,
    /// The conversion was cancelled before it was sent: so is the adjustment.
    Cancelled,
    /// Nothing to adjust, for this reason.
    Skip(String),
}

/// Resolves an adjustment of kind `kind` against its conversion (`None`: never recorded).
pub(crate) fn resolve(kind: Kind, conversion: Option<ConversionView>) -> Resolution {
    let verb = if kind == Kind::Retraction {
        "retract"
    } else {
        "restate"
    };
    let Some(c) = conversion else {
        return Resolution::Skip(format!("no conversion to {verb}"));
    };
    let mine = c.holder == Holder::ThisBatch;
    match c.state {
        Some(State::Pending) if c.may_have_been_sent() => Resolution::Wait,
        Some(State::Pending) if kind == Kind::Retraction && (mine || !c.leased) => {
            Resolution::CancelBoth
        }
        Some(State::Pending) if kind == Kind::Restatement && !mine && !c.leased => {
            Resolution::RestateUnsent
        }
        Some(State::Pending) => Resolution::Wait,
        Some(State::Sent) => Resolution::Send,
        Some(State::Cancelled) => Resolution::Cancelled,
        Some(state @ (State::Failed | State::Skipped)) => Resolution::Skip(format!(
            "the conversion was {}, not sent: nothing to {verb}",
            state.as_str()
        )),
        None => Resolution::Skip(format!("no conversion to {verb}")),
    }
}

/// Gives an adjustment about to be sent what the conversion was sent with: an adjustment names the
/// conversion as it was sent (a Data Manager restatement is its event again, Microsoft identifies it
/// by its click id, or hashed email or phone), and is keyed by, and timed after, it.
pub(crate) fn as_sent(mut d: Delivery, target: &Conversion) -> Delivery {
    if d.payload.keys.is_empty() {
        if let Some(sent) = &target.payload {
            d.payload.keys = sent.keys.clone();
            d.payload.click_time = sent.click_time;
            d.payload.consent = sent.consent;
            d.payload.consent_column = sent.consent_column;
        }
    }
    if d.payload.conversion_action.is_none() {
        d.payload.conversion_action = target.conversion_action.clone();
    }
    if d.currency.is_none() {
        d.currency = target.currency.clone();
    }
    d.event_time = target.event_time;
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use Holder::{Nobody, Other, ThisBatch};
    use Kind::{Restatement as Rs, Retraction as Rt};

    const KINDS: [Kind; 2] = [Rt, Rs];
    /// Every lease a conversion can have: holder × still valid.
    const LEASES: [(Holder, bool); 6] = [
        (Nobody, false),
        (Nobody, true),
        (ThisBatch, true),
        (ThisBatch, false),
        (Other, true),
        (Other, false),
    ];
    const ATTEMPTS: [i32; 3] = [0, 1, 7];

    fn view(state: State, attempts: i32, (holder, leased): (Holder, bool)) -> ConversionView {
        ConversionView {
            state: Some(state),
            attempts,
            holder,
            leased,
        }
    }

    fn verb(kind: Kind) -> &'static str {
        if kind == Rt {
            "retract"
        } else {
            "restate"
        }
    }

    /// A pending conversion never attempted, by kind and lease: the only cell of the table where an
    /// adjustment may cancel or change the conversion.
    #[test]
    fn an_unattempted_pending_conversion_is_cancelled_or_restated_only_while_nobody_else_holds_it()
    {
        use Resolution::{CancelBoth, RestateUnsent, Wait};
        #[rustfmt::skip]
        let table: [(Kind, (Holder, bool), Resolution); 12] = [
            // Never claimed: cancelled, or changed in place.
            (Rt, (Nobody, false), CancelBoth),
            (Rs, (Nobody, false), RestateUnsent),
            // A valid lease without an owner (the database never writes one): never touched.
            (Rt, (Nobody, true), Wait),
            (Rs, (Nobody, true), Wait),
            // Claimed together with its retraction: cancelled with it, whether or not this batch's
            // lease ran out meanwhile (nobody else can have sent it). A restatement waits for this
            // batch to send it: the restatement then goes to the platform after it.
            (Rt, (ThisBatch, true), CancelBoth),
            (Rt, (ThisBatch, false), CancelBoth),
            (Rs, (ThisBatch, true), Wait),
            (Rs, (ThisBatch, false), Wait),
            // Held, or last held, by another batch or process: it may be on the wire.
            (Rt, (Other, true), Wait),
            (Rs, (Other, true), Wait),
            (Rt, (Other, false), Wait),
            (Rs, (Other, false), Wait),
        ];
        for (kind, lease, expected) in table {
            assert_eq!(
                resolve(kind, Some(view(State::Pending, 0, lease))),
                expected,
                "{kind:?} of a pending conversion, lease {lease:?}"
            );
        }
    }

    /// The rule of the module: once a send was attempted, whoever holds it and whatever the kind, a
    /// pending conversion is finished first.
    #[test]
    fn a_conversion_that_may_have_reached_the_platform_is_never_cancelled() {
        for kind in KINDS {
            for lease in LEASES {
                for attempts in ATTEMPTS.into_iter().filter(|a| *a > 0) {
                    assert_eq!(
                        resolve(kind, Some(view(State::Pending, attempts, lease))),
                        Resolution::Wait,
                        "{kind:?}, lease {lease:?}, {attempts} attempts"
                    );
                }
            }
        }
    }

    /// Finished conversions: the lease and the attempts no longer matter, only the state does.
    #[test]
    fn a_finished_conversion_decides_by_its_state_alone() {
        for kind in KINDS {
            for lease in LEASES {
                for attempts in ATTEMPTS {
                    let of = |state| resolve(kind, Some(view(state, attempts, lease)));
                    let at = format!("{kind:?}, lease {lease:?}, {attempts} attempts");
                    assert_eq!(of(State::Sent), Resolution::Send, "sent, {at}");
                    assert_eq!(
                        of(State::Cancelled),
                        Resolution::Cancelled,
                        "cancelled, {at}"
                    );
                    for state in [State::Failed, State::Skipped] {
                        let reason = format!(
                            "the conversion was {}, not sent: nothing to {}",
                            state.as_str(),
                            verb(kind)
                        );
                        assert_eq!(of(state), Resolution::Skip(reason), "{state:?}, {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn an_adjustment_without_a_conversion_it_knows_is_skipped() {
        for kind in KINDS {
            let reason = format!("no conversion to {}", verb(kind));
            assert_eq!(resolve(kind, None), Resolution::Skip(reason.clone()));
            let unknown = ConversionView {
                state: None,
                attempts: 0,
                holder: Nobody,
                leased: false,
            };
            assert_eq!(resolve(kind, Some(unknown)), Resolution::Skip(reason));
        }
    }

    #[test]
    fn the_view_counts_only_this_batchs_own_claim_as_mine() {
        let conversion = |owner: Option<&str>| Conversion {
            id: 7,
            state: Some(State::Pending),
            lease_owner: owner.map(str::to_string),
            leased: owner.is_some(),
            conversion_action: None,
            currency: None,
            attempts: 0,
            event_time: chrono::Utc::now(),
            due_in: std::time::Duration::ZERO,
            payload: None,
            earlier_adjustments: Vec::new(),
        };
        let claimed: HashSet<i64> = [7].into();
        let holder = |owner, claimed: &HashSet<i64>| {
            ConversionView::of(&conversion(owner), "me", claimed).holder
        };
        assert_eq!(holder(None, &claimed), Nobody);
        assert_eq!(holder(Some("me"), &claimed), ThisBatch);
        // Our own process, another batch (still in flight): not mine.
        assert_eq!(holder(Some("me"), &HashSet::new()), Other);
        assert_eq!(holder(Some("them"), &claimed), Other);
    }
}

//! Control-table rows from an evaluated change: conversions with their per-platform payload fields,
//! adjustments (retractions and restatements) under the adjusted conversion's event id, retractions of
//! deleted rows, and the `failed` rows that keep an unusable change visible.

use super::compile::{reads_only_key, Compiled, RawField};
use super::row::{consent_granted, EventFields, RowView};
use super::{Bound, DropCounts, RuleError, Rules, TxContext, MAX_EVENT_ID_BYTES};
use crate::config::OnDelete;
use crate::decode::OldTuple;
use crate::event::{Kind, NewDelivery, Payload, State};
use crate::identity::{EventIdentity, RawIdentity};
use crate::platform::Platform;

impl Rules {
    /// Turns the old tuple of a DELETE into retractions of the conversions of the deleted row, for
    /// every conversion rule of the table with `on_delete = "retract"` (the default). The rows are
    /// named by [`crate::event::deletion_rule`]; the control table records one only where the
    /// conversion exists (pending or sent), see [`crate::outbox::insert_deliveries`].
    ///
    /// The event id is rendered from the old tuple. Under `REPLICA IDENTITY DEFAULT` (or `USING
    /// INDEX`) that tuple holds only the key columns: for a rule whose event id reads another column,
    /// the retraction carries the row's key instead ([`NewDelivery::source_key`], empty `event_id`),
    /// and the control table takes the event id of each conversion recorded with that key. Only a
    /// table without key columns leaves the conversion unmatched: the rule's name is returned (the
    /// first time only, for the caller's logs).
    pub fn evaluate_delete(
        &self,
        bound: &Bound,
        old: &OldTuple,
        tx: TxContext,
        out: &mut Vec<NewDelivery>,
    ) -> Vec<String> {
        let mut not_computable = Vec::new();
        let (tuple, full) = match old {
            OldTuple::Full(t) => (t, true),
            OldTuple::Key(t) => (t, false),
        };
        let row = RowView {
            bound,
            tuple,
            unresolved: None,
        };
        for rule in &bound.rules {
            if rule.adjusts.is_some() || rule.on_delete == OnDelete::Ignore {
                continue;
            }
            let Some(template) = &rule.event_id else {
                continue;
            };
            let computable = full || reads_only_key(&bound.relation, &bound.index, template);
            // Not computable: the conversions of the row are found by its key, if it has one.
            let (event_id, source_key) = if computable {
                match row.render(rule, template) {
                    Ok(Some(id)) if !id.trim().is_empty() && id.len() <= MAX_EVENT_ID_BYTES => {
                        (id, None)
                    }
                    // No usable id: no conversion could have been recorded under it either.
                    _ => continue,
                }
            } else if let Some(key) = bound.source_key(tuple) {
                (String::new(), Some(key))
            } else {
                if !rule
                    .delete_unmatched
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    not_computable.push(rule.name.clone());
                }
                continue;
            };
            for (destination, platform) in &rule.destinations {
                out.push(NewDelivery {
                    rule: crate::event::deletion_rule(&rule.name),
                    destination: destination.clone(),
                    platform: *platform,
                    event_id: event_id.clone(),
                    kind: Kind::Retraction,
                    adjusts_rule: Some(rule.name.clone()),
                    event_name: rule.event.clone(),
                    event_time: tx.commit_time,
                    value: None,
                    currency: None,
                    action_source: rule.action_source.clone(),
                    payload: Payload {
                        conversion_action: (*platform == Platform::GoogleAds)
                            .then(|| rule.conversion_action.clone())
                            .flatten(),
                        consent: true,
                        ..Payload::default()
                    },
                    state: State::Pending,
                    last_error: None,
                    source_table: rule.table.clone(),
                    source_key: source_key.clone(),
                    source_lsn: tx.commit_lsn,
                    commit_time: tx.commit_time,
                });
            }
        }
        not_computable
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn conversion(
        &self,
        rule: &Compiled,
        row: &RowView,
        source_key: Option<String>,
        tx: TxContext,
        ordinal: u64,
        drops: &mut DropCounts,
        out: &mut Vec<NewDelivery>,
    ) -> Result<(), RuleError> {
        let mut fields = match EventFields::read(rule, rule, row, tx, &self.default_currency)? {
            Ok(fields) => fields,
            Err(reason) => {
                failed_rows(
                    rule,
                    &rule.destinations,
                    Kind::Conversion,
                    None,
                    tx,
                    ordinal,
                    reason,
                    out,
                );
                return Ok(());
            }
        };
        let (consent, raw, unknown) = consented_identity(rule, row)?;
        // Parsed and hashed once for all destinations.
        let mut identity = EventIdentity::new(&raw, &self.default_region)
            .for_destinations(rule.destinations.len());
        let count = rule.destinations.len();
        for (i, (destination, platform)) in rule.destinations.iter().enumerate() {
            // The last destination takes the row's own values instead of copies.
            let last = i + 1 == count;
            let mut payload = Payload {
                event_source_url: take_or_clone(&mut fields.event_source_url, last),
                lead_event_source: rule.lead_event_source.clone(),
                click_time: raw.click_time,
                consent,
                consent_column: rule.consent.is_some(),
                ..Payload::default()
            };
            platform_fields(rule, row, *platform, &mut payload)?;
            let (state, last_error) = if consent {
                let (keys, dropped) = identity.match_keys(*platform, fields.event_time);
                payload.keys = keys;
                let unknown_here = unknown_keys(&unknown, *platform);
                drops.total += (dropped.len() + unknown_here.len()) as u64;
                keys_state(*platform, &payload, &unknown_here, row.unresolved)
            } else {
                (State::Skipped, Some("no consent".to_string()))
            };
            out.push(NewDelivery {
                rule: rule.name.clone(),
                destination: destination.clone(),
                platform: *platform,
                event_id: take_or_clone(&mut fields.event_id, last),
                kind: Kind::Conversion,
                adjusts_rule: None,
                event_name: rule.event.clone(),
                event_time: fields.event_time,
                value: take_or_clone(&mut fields.value, last),
                currency: take_or_clone(&mut fields.currency, last),
                action_source: rule.action_source.clone(),
                payload,
                state,
                last_error,
                source_table: rule.table.clone(),
                source_key: source_key.clone(),
                source_lsn: tx.commit_lsn,
                commit_time: tx.commit_time,
            });
        }
        Ok(())
    }

    pub(super) fn adjustment(
        &self,
        rule: &Compiled,
        target: &Compiled,
        row: &RowView,
        tx: TxContext,
        ordinal: u64,
        out: &mut Vec<NewDelivery>,
    ) -> Result<(), RuleError> {
        // The event id and time are those the adjusted rule would have produced for this row; the value
        // (restatements) is this rule's.
        let fields = match EventFields::read(target, rule, row, tx, &self.default_currency)? {
            Ok(fields) => fields,
            Err(reason) => {
                failed_rows(
                    rule,
                    &target.destinations,
                    rule.kind,
                    Some(&target.name),
                    tx,
                    ordinal,
                    reason,
                    out,
                );
                return Ok(());
            }
        };
        for (destination, platform) in &target.destinations {
            out.push(NewDelivery {
                rule: rule.name.clone(),
                destination: destination.clone(),
                platform: *platform,
                event_id: fields.event_id.clone(),
                kind: rule.kind,
                adjusts_rule: Some(target.name.clone()),
                event_name: target.event.clone(),
                event_time: fields.event_time,
                value: fields.value.clone(),
                currency: fields.currency.clone(),
                action_source: target.action_source.clone(),
                payload: Payload {
                    conversion_action: match platform {
                        Platform::GoogleAds | Platform::GoogleDataManager => {
                            target.conversion_action.clone()
                        }
                        Platform::MicrosoftAds => target.conversion_name.clone(),
                        Platform::Linkedin => target.linkedin_rule.clone(),
                        Platform::Meta
                        | Platform::Tiktok
                        | Platform::Outbrain
                        | Platform::Taboola
                        | Platform::Reddit
                        | Platform::Snapchat
                        | Platform::Pinterest => None,
                    },
                    consent: true,
                    ..Payload::default()
                },
                state: State::Pending,
                last_error: None,
                source_table: rule.table.clone(),
                source_key: None,
                source_lsn: tx.commit_lsn,
                commit_time: tx.commit_time,
            });
        }
        Ok(())
    }
}

/// The value itself for the `last` user, leaving the default behind; a copy for the others.
fn take_or_clone<T: Clone + Default>(value: &mut T, last: bool) -> T {
    if last {
        std::mem::take(value)
    } else {
        value.clone()
    }
}

/// Rows recorded as `failed` for a change that cannot become an event, so that it stays visible.
#[allow(clippy::too_many_arguments)]
pub(super) fn failed_rows(
    rule: &Compiled,
    destinations: &[(String, Platform)],
    kind: Kind,
    adjusts: Option<&str>,
    tx: TxContext,
    ordinal: u64,
    reason: String,
    out: &mut Vec<NewDelivery>,
) {
    for (destination, platform) in destinations {
        out.push(NewDelivery {
            rule: rule.name.clone(),
            destination: destination.clone(),
            platform: *platform,
            event_id: format!("invalid-{}-{ordinal}", tx.commit_lsn),
            kind,
            adjusts_rule: adjusts.map(str::to_string),
            event_name: rule.event.clone(),
            event_time: tx.commit_time,
            value: None,
            currency: None,
            action_source: rule.action_source.clone(),
            payload: Payload::default(),
            state: State::Failed,
            last_error: Some(format!("invalid row: {reason}")),
            source_table: rule.table.clone(),
            source_key: None,
            source_lsn: tx.commit_lsn,
            commit_time: tx.commit_time,
        });
    }
}

/// Sets the payload fields only `platform` reads: its own event name, the conversion action or goal.
fn platform_fields(
    rule: &Compiled,
    row: &RowView,
    platform: Platform,
    payload: &mut Payload,
) -> Result<(), RuleError> {
    match platform {
        Platform::Meta => payload.platform_event = rule.meta_event.clone(),
        Platform::GoogleAds | Platform::GoogleDataManager => {
            payload.conversion_action = rule.conversion_action.clone()
        }
        Platform::Tiktok => {
            payload.platform_event = rule.tiktok_event.clone();
            for (template, slot) in [
                (&rule.content_ids, &mut payload.content_ids),
                (&rule.content_type, &mut payload.content_type),
            ] {
                if let Some(t) = template {
                    *slot = row.render(rule, t)?.filter(|v| !v.trim().is_empty());
                }
            }
        }
        // The goal name travels where Google's conversion action does, so that dispatch
        // hands it to adjustments the same way.
        Platform::MicrosoftAds => payload.conversion_action = rule.conversion_name.clone(),
        Platform::Outbrain => payload.platform_event = rule.outbrain_event.clone(),
        Platform::Taboola => payload.platform_event = rule.taboola_event.clone(),
        // LinkedIn's conversion rule travels in the same slot.
        Platform::Linkedin => payload.conversion_action = rule.linkedin_rule.clone(),
        Platform::Reddit => payload.platform_event = rule.reddit_event.clone(),
        Platform::Snapchat => payload.platform_event = rule.snapchat_event.clone(),
        Platform::Pinterest => payload.platform_event = rule.pinterest_event.clone(),
    }
    Ok(())
}

/// The names of the match-key fields whose value is unknown (unchanged TOAST that could not be read
/// back) and that `platform` takes: they are dropped too.
fn unknown_keys(unknown: &[RawField], platform: Platform) -> Vec<&'static str> {
    unknown
        .iter()
        .filter(|f| f.accepted_by(platform))
        .map(|f| f.name())
        .collect()
}

/// A consented conversion is pending with match keys, skipped without (saying which were unknown).
fn keys_state(
    platform: Platform,
    payload: &Payload,
    unknown_here: &[&str],
    unresolved: Option<&str>,
) -> (State, Option<String>) {
    if !payload.keys.is_empty() {
        return (State::Pending, None);
    }
    let reason = match (unknown_here.is_empty(), unresolved) {
        (false, Some(why)) => format!(
            "no match keys ({} not in the WAL and not read back: {why})",
            unknown_here.join(", ")
        ),
        _ => crate::identity::no_keys_reason(platform).to_string(),
    };
    (State::Skipped, Some(reason))
}

/// Whether the row consents, and then its identifiers and the match-key fields whose value is
/// unknown; without consent no identifier is read at all.
fn consented_identity(
    rule: &Compiled,
    row: &RowView,
) -> Result<(bool, RawIdentity, Vec<RawField>), RuleError> {
    let consent = match &rule.consent {
        None => true,
        Some(column) => consent_granted(&row.value(rule, column)?),
    };
    if !consent {
        return Ok((false, RawIdentity::default(), Vec::new()));
    }
    let (raw, unknown) = row.raw_identity(rule)?;
    Ok((true, raw, unknown))
}

//! `customers/{cid}:uploadConversionAdjustments` (platforms.md §2.2, §7).
//!
//! Adjustments apply only to conversions this sandbox accepted (`CONVERSION_NOT_FOUND` otherwise).
//! Once a conversion is retracted (or restated to 0) later adjustments are accepted but ignored,
//! without an error, as Google documents.

use std::collections::HashSet;

use axum::response::Response;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Map, Value};

use super::upload::{RowOutcome, UploadEnvelope};
use super::{
    bad_time, check_action, check_date_time, click_key, currency_ok, parse_date_time, required,
    schema, text, Call, Ledger, RowError,
};
use crate::testbed::sandbox::records::{AcceptedAdjustment, GoogleAdsRecords};
use crate::testbed::sandbox::{as_number, is_sha256_hex, Shared};

/// Adjustments per request (§2.2).
const MAX_ADJUSTMENTS: usize = 2_000;
/// Conversions older than this cannot be adjusted (§2.2).
const MAX_CONVERSION_AGE_DAYS: i64 = 54;
/// The collection name used in error locations.
const COLLECTION: &str = "conversion_adjustments";
/// The error-code family of this service.
const FAMILY: &str = "conversionAdjustmentUploadError";

// ---------------------------------------------------------------------------------------------
// Request types
// ---------------------------------------------------------------------------------------------

/// How an adjustment names its original conversion.
enum Target<'a> {
    /// By order id.
    Order(&'a str),
    /// By gclid and the original conversion time.
    Click {
        /// The gclid.
        gclid: &'a str,
        /// The original `conversionDateTime`.
        time: DateTime<FixedOffset>,
        /// As sent.
        time_text: &'a str,
    },
}

/// One adjustment that passed the per-row rules.
struct Row<'a> {
    /// The action resource name.
    action: &'a str,
    /// The numeric action id.
    action_id: &'a str,
    /// `RETRACTION`, `RESTATEMENT` or `ENHANCEMENT`.
    kind: &'a str,
    /// `adjustmentDateTime` as sent.
    time_text: &'a str,
    /// `adjustmentDateTime` parsed.
    time: DateTime<FixedOffset>,
    /// The original conversion.
    target: Target<'a>,
    /// The restated total value.
    adjusted_value: Option<f64>,
    /// The restatement currency.
    currency: Option<&'a str>,
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Applies the per-row rules that need no memory of earlier conversions.
fn check_row(row: &Map<String, Value>, now: DateTime<Utc>) -> Result<Row<'_>, RowError> {
    let (action, id) = check_action(row)?;
    let kind = text(row, "adjustmentType").ok_or_else(|| required("adjustment_type"))?;
    if !matches!(kind, "RETRACTION" | "RESTATEMENT" | "ENHANCEMENT") {
        return Err(RowError::new(
            "fieldError",
            "INVALID_VALUE",
            Some("adjustment_type"),
            "The adjustment type must be RETRACTION, RESTATEMENT or ENHANCEMENT.",
        ));
    }
    let (time_text, time) =
        check_date_time(row, "adjustmentDateTime", "adjustment_date_time", now)?;
    let target = check_target(row)?;
    let (adjusted_value, currency) = check_restatement(row, kind)?;
    check_enhancement(row, kind, &target)?;
    Ok(Row {
        action,
        action_id: id,
        kind,
        time_text,
        time,
        target,
        adjusted_value,
        currency,
    })
}

/// The original conversion: an order id or a gclid/date-time pair, not both.
fn check_target(row: &Map<String, Value>) -> Result<Target<'_>, RowError> {
    let pair = row.get("gclidDateTimePair").filter(|p| !p.is_null());
    let target = match (text(row, "orderId"), pair) {
        (Some(_), Some(_)) => {
            return Err(RowError::new(
                FAMILY,
                "GCLID_DATE_TIME_PAIR_AND_ORDER_ID_BOTH_SET",
                Some("order_id"),
                "Only one of order_id and gclid_date_time_pair can be set.",
            ));
        }
        (Some(order), None) if !order.trim().is_empty() => Target::Order(order),
        (Some(_), None) | (None, None) => return Err(required("order_id")),
        (None, Some(pair)) => {
            let gclid = pair
                .get("gclid")
                .and_then(Value::as_str)
                .ok_or_else(|| required("gclid_date_time_pair"))?;
            let time_text = pair
                .get("conversionDateTime")
                .and_then(Value::as_str)
                .ok_or_else(|| required("gclid_date_time_pair"))?;
            let time =
                parse_date_time(time_text).ok_or_else(|| bad_time("gclid_date_time_pair"))?;
            Target::Click {
                gclid,
                time,
                time_text,
            }
        }
    };
    Ok(target)
}

/// A restatement's value (required, not below zero) and currency; other kinds set neither.
fn check_restatement<'a>(
    row: &'a Map<String, Value>,
    kind: &str,
) -> Result<(Option<f64>, Option<&'a str>), RowError> {
    let err = RowError::new;
    let restatement = row.get("restatementValue").filter(|v| !v.is_null());
    let adjusted_value = restatement
        .and_then(|r| r.get("adjustedValue"))
        .and_then(as_number);
    let currency = restatement
        .and_then(|r| r.get("currencyCode"))
        .and_then(Value::as_str);
    match kind {
        "RESTATEMENT" if adjusted_value.is_none() => {
            return Err(err(
                "fieldError",
                "REQUIRED",
                Some("restatement_value"),
                "A restatement needs restatement_value.adjusted_value.",
            ));
        }
        "RESTATEMENT" if adjusted_value.is_some_and(|v| v < 0.0) => {
            return Err(err(
                "fieldError",
                "INVALID_VALUE",
                Some("restatement_value"),
                "The restated value must not be negative.",
            ));
        }
        "RETRACTION" | "ENHANCEMENT" if restatement.is_some() => {
            return Err(err(
                "fieldError",
                "VALUE_MUST_BE_UNSET",
                Some("restatement_value"),
                "Only a restatement can set restatement_value.",
            ));
        }
        _ => {}
    }
    if currency.is_some_and(|c| !currency_ok(c)) {
        return Err(err(
            "currencyCodeError",
            "UNSUPPORTED",
            Some("restatement_value"),
            "The currency code must be an uppercase ISO 4217 code.",
        ));
    }
    Ok((adjusted_value, currency))
}

/// User identifiers belong to enhancements only: ≤ 5, hashes as SHA-256 lowercase hex.
fn check_enhancement(
    row: &Map<String, Value>,
    kind: &str,
    target: &Target<'_>,
) -> Result<(), RowError> {
    let ids = row.get("userIdentifiers").and_then(Value::as_array);
    if kind != "ENHANCEMENT" {
        if ids.is_some_and(|l| !l.is_empty()) {
            return Err(RowError::new(
                "fieldError",
                "VALUE_MUST_BE_UNSET",
                Some("user_identifiers"),
                "Only an enhancement can set user identifiers.",
            ));
        }
        return Ok(());
    }
    if !matches!(target, Target::Order(_)) {
        return Err(RowError::new(
            "fieldError",
            "REQUIRED",
            Some("order_id"),
            "An enhancement must name the order id.",
        ));
    }
    let ids = ids.map_or(&[][..], Vec::as_slice);
    if ids.len() > 5 {
        return Err(RowError::new(
            "collectionSizeError",
            "TOO_MANY",
            Some("user_identifiers"),
            "At most 5 user identifiers are allowed.",
        ));
    }
    let hashes_ok = ids.iter().all(|id| {
        ["hashedEmail", "hashedPhoneNumber"]
            .iter()
            .all(|k| id.get(*k).and_then(Value::as_str).is_none_or(is_sha256_hex))
    });
    if !hashes_ok {
        return Err(RowError::new(
            FAMILY,
            "INVALID_USER_IDENTIFIER",
            Some("user_identifiers"),
            "User identifiers must be SHA-256 hashes (64 lowercase hex characters).",
        ));
    }
    Ok(())
}

/// What happens to a valid adjustment of a known conversion.
enum Effect {
    /// Apply it to the conversion at this index.
    Apply(usize),
    /// Accept it without effect (the conversion was already retracted).
    Ignore,
}

/// Finds the original conversion and applies the ordering rules of §2.2.
fn resolve(ledger: &Ledger, row: &Row<'_>, now: DateTime<Utc>) -> Result<Effect, RowError> {
    let not_found =
        |msg: &str| RowError::new(FAMILY, "CONVERSION_NOT_FOUND", None, msg.to_string());
    let index = match &row.target {
        Target::Order(order) => *ledger
            .by_order
            .get(&(row.action_id.to_string(), order.to_string()))
            .ok_or_else(|| {
                not_found("No conversion with this order id was found for the conversion action.")
            })?,
        Target::Click { gclid, time, .. } => {
            let index = *ledger
                .by_click
                .get(&click_key(row.action_id, gclid, time))
                .ok_or_else(|| {
                    not_found("No conversion for this gclid and conversion date time was found.")
                })?;
            if ledger.conversions[index].order_id.is_some() {
                return Err(not_found(
                    "The conversion has an order id; adjustments must use it.",
                ));
            }
            index
        }
    };
    let original = &ledger.conversions[index];
    if original.retracted {
        return Ok(Effect::Ignore);
    }
    let conversion_time = original.conversion_time.with_timezone(&Utc);
    if now - conversion_time > chrono::Duration::days(MAX_CONVERSION_AGE_DAYS) {
        return Err(RowError::new(
            FAMILY,
            "CONVERSION_EXPIRED",
            None,
            "The conversion is older than 54 days and can no longer be adjusted.",
        ));
    }
    if row.time.with_timezone(&Utc) <= conversion_time {
        return Err(RowError::new(
            FAMILY,
            "ADJUSTMENT_PRECEDES_CONVERSION",
            Some("adjustment_date_time"),
            "The adjustment date time must be after the conversion date time.",
        ));
    }
    if row.kind == "RESTATEMENT" {
        match original.last_restatement {
            Some(last) if last == row.time => {
                return Err(RowError::new(
                    FAMILY,
                    "RESTATEMENT_ALREADY_EXISTS",
                    Some("adjustment_date_time"),
                    "A restatement with this adjustment date time already exists.",
                ));
            }
            Some(last) if last > row.time => {
                return Err(RowError::new(
                    FAMILY,
                    "MORE_RECENT_RESTATEMENT_FOUND",
                    Some("adjustment_date_time"),
                    "A more recent restatement of this conversion already exists.",
                ));
            }
            _ => {}
        }
    }
    Ok(Effect::Apply(index))
}

/// The key identifying an adjustment, for in-request duplicates and `duplicate_sends`.
fn adjustment_key(row: &Row<'_>) -> String {
    let target = match &row.target {
        Target::Order(order) => format!("order\u{1f}{order}"),
        Target::Click { gclid, time, .. } => {
            let (_, click, at) = click_key(row.action_id, gclid, time);
            format!("click\u{1f}{click}\u{1f}{at}")
        }
    };
    format!(
        "adjustment\u{1f}{}\u{1f}{target}\u{1f}{}\u{1f}{}",
        row.action_id,
        row.kind,
        row.time.to_rfc3339()
    )
}

// ---------------------------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------------------------

/// Validates and applies an adjustment upload; rows fail individually.
pub(super) fn process(shared: &Shared, ctx: &Call<'_>, body: &[u8]) -> Response {
    let envelope = UploadEnvelope {
        kind: &schema::UPLOAD_ADJUSTMENTS_REQUEST,
        field: "conversionAdjustments",
        collection: COLLECTION,
        max: MAX_ADJUSTMENTS,
        not_object: "An adjustment must be an object.",
        too_many: (
            FAMILY,
            "TOO_MANY_ADJUSTMENTS_IN_REQUEST",
            "The request contains more than 2000 adjustments.",
        ),
    };
    let mut in_request = HashSet::new();
    let row = |ledger: &mut Ledger, obj: &Map<String, Value>, now, resent: &mut u64| {
        let outcome = check_row(obj, now).and_then(|row| {
            let key = adjustment_key(&row);
            *resent += u64::from(ledger.sends.note(&key));
            if !in_request.insert(key) {
                return Err(RowError::new(
                    FAMILY,
                    "DUPLICATE_ADJUSTMENT_IN_REQUEST",
                    None,
                    "The request contains the same adjustment more than once.",
                ));
            }
            resolve(ledger, &row, now).map(|effect| (row, effect))
        });
        match outcome {
            Err(e) => RowOutcome::Failed(e),
            Ok((row, Effect::Ignore)) => RowOutcome::Ignored(result_of(&row)),
            Ok((row, Effect::Apply(index))) => {
                let conversion = &mut ledger.conversions[index];
                match row.kind {
                    "RETRACTION" => conversion.retracted = true,
                    "RESTATEMENT" => {
                        conversion.last_restatement = Some(row.time);
                        conversion.retracted = row.adjusted_value == Some(0.0);
                    }
                    _ => {}
                }
                RowOutcome::Counted(result_of(&row), record_of(ctx, &row, now))
            }
        }
    };
    let keep = |records: &mut GoogleAdsRecords, applied| records.adjustments.extend(applied);
    envelope.run(shared, ctx, body, row, keep)
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// A `ConversionAdjustmentResult` for an accepted row.
fn result_of(row: &Row<'_>) -> Value {
    let mut result = json!({
        "conversionAction": row.action,
        "adjustmentDateTime": row.time_text,
        "adjustmentType": row.kind,
    });
    match &row.target {
        Target::Order(order) => result["orderId"] = json!(order),
        Target::Click {
            gclid, time_text, ..
        } => {
            result["gclidDateTimePair"] = json!({"gclid": gclid, "conversionDateTime": time_text});
        }
    }
    result
}

/// The record of an applied adjustment.
fn record_of(ctx: &Call<'_>, row: &Row<'_>, now: DateTime<Utc>) -> AcceptedAdjustment {
    let (order_id, gclid) = match &row.target {
        Target::Order(order) => (Some(order.to_string()), None),
        Target::Click { gclid, .. } => (None, Some(gclid.to_string())),
    };
    AcceptedAdjustment {
        customer_id: ctx.customer_id.to_string(),
        conversion_action: row.action.to_string(),
        adjustment_type: row.kind.to_string(),
        adjustment_date_time: row.time_text.to_string(),
        order_id,
        gclid,
        adjusted_value: row.adjusted_value,
        currency: row.currency.map(str::to_string),
        received_at: now,
    }
}

//! `customers/{cid}:uploadClickConversions` (platforms.md §2.1, §2.3).

use std::collections::HashSet;

use axum::response::Response;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Map, Value};

use super::upload::{RowOutcome, UploadEnvelope};
use super::{
    check_action, check_date_time, check_user_identifiers, click_key, currency_ok, schema, text,
    Call, Ledger, RowError, StoredConversion,
};
use crate::testbed::sandbox::records::{AcceptedConversion, GoogleAdsRecords};
use crate::testbed::sandbox::{as_number, Shared};

/// Conversions per request (§2.1).
const MAX_CONVERSIONS: usize = 2_000;
/// The longest click-through window an action can have, 90 days (§2.1).
const MAX_AGE_DAYS: i64 = 90;
/// The collection name used in error locations.
const COLLECTION: &str = "conversions";

// ---------------------------------------------------------------------------------------------
// Request types
// ---------------------------------------------------------------------------------------------

/// One conversion that passed the per-row rules.
struct Row<'a> {
    /// The action resource name.
    action: &'a str,
    /// The numeric action id (what Google keys on).
    action_id: &'a str,
    /// `conversionDateTime` as sent.
    time_text: &'a str,
    /// `conversionDateTime` parsed.
    time: DateTime<FixedOffset>,
    /// `orderId`.
    order_id: Option<&'a str>,
    /// `gclid`.
    gclid: Option<&'a str>,
    /// `gbraid`.
    gbraid: Option<&'a str>,
    /// `wbraid`.
    wbraid: Option<&'a str>,
    /// Hashed emails.
    emails: Vec<String>,
    /// Hashed phone numbers.
    phones: Vec<String>,
}

impl Row<'_> {
    /// The one click id, if any.
    fn click(&self) -> Option<&str> {
        self.gclid.or(self.gbraid).or(self.wbraid)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Characters Google click ids are made of (URL-safe base64).
fn click_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Applies the per-row rules of §2.1 (everything except dedup).
fn check_row(row: &Map<String, Value>, now: DateTime<Utc>) -> Result<Row<'_>, RowError> {
    let (action, id) = check_action(row)?;
    let (time_text, time) =
        check_date_time(row, "conversionDateTime", "conversion_date_time", now)?;
    if now - time.with_timezone(&Utc) > chrono::Duration::days(MAX_AGE_DAYS) {
        return Err(RowError::new("conversionUploadError", "EXPIRED_EVENT", Some("conversion_date_time"),
            "The click associated with the given identifier or iOS URL parameter occurred too long ago to be attributed."));
    }
    let (gclid, gbraid, wbraid) = check_click_ids(row)?;
    let (emails, phones) = check_user_identifiers(row.get("userIdentifiers"))?;
    if gclid.is_none()
        && gbraid.is_none()
        && wbraid.is_none()
        && emails.is_empty()
        && phones.is_empty()
    {
        return Err(RowError::new(
            "fieldError",
            "REQUIRED",
            Some("gclid"),
            "A click id (gclid, gbraid or wbraid) or user identifiers are required.",
        ));
    }
    let order_id = check_order_and_value(row)?;
    Ok(Row {
        action,
        action_id: id,
        time_text,
        time,
        order_id,
        gclid,
        gbraid,
        wbraid,
        emails,
        phones,
    })
}

/// The click ids: at most one of gclid, gbraid and wbraid, each decodable.
#[allow(clippy::type_complexity)]
fn check_click_ids(
    row: &Map<String, Value>,
) -> Result<(Option<&str>, Option<&str>, Option<&str>), RowError> {
    let err = RowError::new;
    let (gclid, gbraid, wbraid) = (text(row, "gclid"), text(row, "gbraid"), text(row, "wbraid"));
    if gbraid.is_some() && wbraid.is_some() {
        return Err(err(
            "conversionUploadError",
            "GBRAID_WBRAID_BOTH_SET",
            Some("gbraid"),
            "The conversion cannot have both gbraid and wbraid set.",
        ));
    }
    if gclid.is_some() && (gbraid.is_some() || wbraid.is_some()) {
        let field = if gbraid.is_some() { "gbraid" } else { "wbraid" };
        return Err(err(
            "fieldError",
            "VALUE_MUST_BE_UNSET",
            Some(field),
            "Only one click id can be set.",
        ));
    }
    for (value, field, code) in [
        (gclid, "gclid", "UNPARSEABLE_GCLID"),
        (gbraid, "gbraid", "UNPARSEABLE_GBRAID"),
        (wbraid, "wbraid", "UNPARSEABLE_WBRAID"),
    ] {
        if value.is_some_and(|v| !click_id_ok(v)) {
            return Err(err(
                "conversionUploadError",
                code,
                Some(field),
                "The click id could not be decoded.",
            ));
        }
    }
    Ok((gclid, gbraid, wbraid))
}

/// The order id (not empty, no email address in it), a value not below zero and the currency.
fn check_order_and_value(row: &Map<String, Value>) -> Result<Option<&str>, RowError> {
    let err = RowError::new;
    let order_id = text(row, "orderId");
    if order_id.is_some_and(|o| o.trim().is_empty()) {
        return Err(err(
            "fieldError",
            "INVALID_VALUE",
            Some("order_id"),
            "The order id must not be empty.",
        ));
    }
    if order_id.is_some_and(|o| o.contains('@')) {
        return Err(err(
            "conversionUploadError",
            "ORDER_ID_CONTAINS_PII",
            Some("order_id"),
            "The order id contains personally identifiable information.",
        ));
    }
    if row
        .get("conversionValue")
        .and_then(as_number)
        .is_some_and(|v| v < 0.0)
    {
        return Err(err(
            "fieldError",
            "INVALID_VALUE",
            Some("conversion_value"),
            "The conversion value must not be negative.",
        ));
    }
    if text(row, "currencyCode").is_some_and(|c| !currency_ok(c)) {
        return Err(err(
            "currencyCodeError",
            "UNSUPPORTED",
            Some("currency_code"),
            "The currency code must be an uppercase ISO 4217 code.",
        ));
    }
    Ok(order_id)
}

/// Google's dedup: order id per action forever, else click + action + time (§2.1, §8 item 10).
///
/// `in_request` holds the keys of earlier rows of the same request. Returns whether the key had been
/// received before (for `duplicate_sends`) alongside the verdict.
fn dedup(
    ledger: &mut Ledger,
    row: &Row<'_>,
    in_request: &mut HashSet<String>,
) -> (bool, Result<(), RowError>) {
    let err = RowError::new;
    let (send_key, verdict) = if let Some(order) = row.order_id {
        let key = format!("order\u{1f}{}\u{1f}{order}", row.action_id);
        let verdict =
            if in_request.contains(&key) {
                Err(err(
                    "conversionUploadError",
                    "DUPLICATE_ORDER_ID",
                    Some("order_id"),
                    "The request contains more than one conversion with the same order id.",
                ))
            } else if ledger
                .by_order
                .contains_key(&(row.action_id.to_string(), order.to_string()))
            {
                Err(err("conversionUploadError", "ORDER_ID_ALREADY_IN_USE", Some("order_id"),
                "The order id is already in use by another conversion of this conversion action."))
            } else {
                Ok(())
            };
        (Some(key), verdict)
    } else if let Some(click) = row.click() {
        let (a, c, t) = click_key(row.action_id, click, &row.time);
        let key = format!("click\u{1f}{a}\u{1f}{c}\u{1f}{t}");
        let verdict = if in_request.contains(&key) {
            Err(err(
                "conversionUploadError",
                "DUPLICATE_CLICK_CONVERSION_IN_REQUEST",
                Some("gclid"),
                "The request contains more than one conversion for the same click and time.",
            ))
        } else if ledger.by_click.contains_key(&(a, c, t)) {
            Err(err(
                "conversionUploadError",
                "CLICK_CONVERSION_ALREADY_EXISTS",
                Some("gclid"),
                "A conversion for this click, action and time was already uploaded.",
            ))
        } else {
            Ok(())
        };
        (Some(key), verdict)
    } else {
        // Enhanced conversions for leads without an order id: nothing to dedup on.
        (None, Ok(()))
    };
    let resent = match send_key {
        Some(key) => {
            let resent = ledger.sends.note(&key);
            in_request.insert(key);
            resent
        }
        None => false,
    };
    (resent, verdict)
}

/// Remembers an accepted conversion for later dedup and adjustments.
fn store(ledger: &mut Ledger, row: &Row<'_>) {
    let index = ledger.conversions.len();
    ledger.conversions.push(StoredConversion {
        order_id: row.order_id.map(str::to_string),
        conversion_time: row.time,
        retracted: false,
        last_restatement: None,
    });
    if let Some(order) = row.order_id {
        ledger
            .by_order
            .insert((row.action_id.to_string(), order.to_string()), index);
    }
    if let Some(click) = row.click() {
        ledger
            .by_click
            .entry(click_key(row.action_id, click, &row.time))
            .or_insert(index);
    }
}

// ---------------------------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------------------------

/// Validates, dedups and records an upload; rows fail individually.
pub(super) fn process(shared: &Shared, ctx: &Call<'_>, body: &[u8]) -> Response {
    let envelope = UploadEnvelope {
        kind: &schema::UPLOAD_CLICKS_REQUEST,
        field: "conversions",
        collection: COLLECTION,
        max: MAX_CONVERSIONS,
        not_object: "A conversion must be an object.",
        too_many: (
            "conversionUploadError",
            "TOO_MANY_CONVERSIONS_IN_REQUEST",
            "The request contains more than 2000 conversions.",
        ),
    };
    let mut in_request = HashSet::new();
    let row = |ledger: &mut Ledger, obj: &Map<String, Value>, now, resent: &mut u64| {
        let checked = match check_row(obj, now) {
            Ok(checked) => checked,
            Err(e) => return RowOutcome::Failed(e),
        };
        let (was_sent, verdict) = dedup(ledger, &checked, &mut in_request);
        *resent += u64::from(was_sent);
        if let Err(e) = verdict {
            return RowOutcome::Failed(e);
        }
        store(ledger, &checked);
        RowOutcome::Counted(result_of(&checked), record_of(ctx, obj, &checked, now))
    };
    let keep = |records: &mut GoogleAdsRecords, accepted| records.conversions.extend(accepted);
    envelope.run(shared, ctx, body, row, keep)
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// A `ClickConversionResult` for an accepted row.
fn result_of(row: &Row<'_>) -> Value {
    let mut result = json!({
        "conversionAction": row.action,
        "conversionDateTime": row.time_text,
    });
    for (key, value) in [
        ("gclid", row.gclid),
        ("gbraid", row.gbraid),
        ("wbraid", row.wbraid),
    ] {
        if let Some(v) = value {
            result[key] = json!(v);
        }
    }
    result
}

/// The record of an accepted row.
fn record_of(
    ctx: &Call<'_>,
    obj: &Map<String, Value>,
    row: &Row<'_>,
    now: DateTime<Utc>,
) -> AcceptedConversion {
    AcceptedConversion {
        customer_id: ctx.customer_id.to_string(),
        conversion_action: row.action.to_string(),
        order_id: row.order_id.map(str::to_string),
        gclid: row.gclid.map(str::to_string),
        gbraid: row.gbraid.map(str::to_string),
        wbraid: row.wbraid.map(str::to_string),
        conversion_date_time: row.time_text.to_string(),
        value: obj.get("conversionValue").and_then(as_number),
        currency: text(obj, "currencyCode").map(str::to_string),
        hashed_emails: row.emails.clone(),
        hashed_phones: row.phones.clone(),
        ad_user_data_consent: obj
            .get("consent")
            .and_then(|c| c.get("adUserData"))
            .and_then(Value::as_str)
            .map(str::to_string),
        received_at: now,
    }
}

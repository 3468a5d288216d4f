//! The two Apply calls: the request envelope, the rules of one item, and the dedup and adjustment
//! of what is recorded.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Map, Value};

use super::auth::authenticate;
use super::{
    call_rate_exceeded, fault, item_error, Kind, MsAdjustment, MsConversion, ADJUSTMENT_FIELDS,
    CONVERSION_FIELDS, MAX_AGE_DAYS, MAX_ITEMS,
};
use crate::testbed::sandbox::faults::{self, ConnControl, Gate};
use crate::testbed::sandbox::Platform;
use crate::testbed::sandbox::{json_response, Shared};

/// `POST …/OfflineConversions/Apply` and `…/OfflineConversionAdjustments/Apply`.
pub(super) async fn handle_apply(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnControl>,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
) -> Response {
    let drop_after = match faults::gate(&shared, &conn, Platform::MicrosoftAds).await {
        Gate::Respond(response) => return response,
        Gate::Proceed { drop_after } => drop_after,
    };
    let response = apply(&shared, &headers, &body, kind);
    faults::finish(&shared, &conn, Platform::MicrosoftAds, drop_after, response)
}

/// Authenticates, validates, deduplicates and records one Apply call.
fn apply(shared: &Shared, headers: &HeaderMap, body: &[u8], kind: Kind) -> Response {
    let rejected = |response: Response| {
        shared
            .lock()
            .records
            .microsoft_ads
            .counters
            .rejected_requests += 1;
        response
    };
    {
        let mut state = shared.lock();
        if state.microsoft.throttle > 0 {
            state.microsoft.throttle -= 1;
            state.records.microsoft_ads.counters.faulted += 1;
            return json_response(StatusCode::BAD_REQUEST, call_rate_exceeded());
        }
    }
    if let Err(response) = authenticate(shared, headers) {
        return rejected(*response);
    }
    let items = match envelope(body, kind) {
        Ok(items) => items,
        Err(response) => return rejected(*response),
    };
    let now = Utc::now();
    let mut state = shared.lock();
    let state = &mut *state;
    state.records.microsoft_ads.counters.received += items.len() as u64;
    let goals = state.microsoft.goal_names();
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let result = match check_item(item, kind, &goals, &state.microsoft.clicks, now) {
            Err((code, message)) => Err(item_error(index, code, message)),
            Ok(item) => record(state, item, kind).map_err(|(c, m)| item_error(index, c, m)),
        };
        if let Err(e) = result {
            state.records.microsoft_ads.counters.rejected += 1;
            errors.push(e);
        }
    }
    json_response(StatusCode::OK, json!({"PartialErrors": errors}))
}

/// The items of the call's one collection (`OfflineConversions` or `OfflineConversionAdjustments`),
/// 1 to 1,000 of them; the fault to answer otherwise.
fn envelope(body: &[u8], kind: Kind) -> Result<Vec<Value>, Box<Response>> {
    let collection = match kind {
        Kind::Conversions => "OfflineConversions",
        Kind::Adjustments => "OfflineConversionAdjustments",
    };
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    let Some(parsed) = parsed else {
        return Err(Box::new(fault(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "The request body is not a JSON object.",
        )));
    };
    if let Some(other) = parsed.keys().find(|k| *k != collection) {
        return Err(Box::new(fault(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &format!("Unknown request field {other}; expected only {collection}."),
        )));
    }
    let items = parsed
        .get(collection)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.is_empty() {
        return Err(Box::new(fault(
            StatusCode::BAD_REQUEST,
            "OfflineConversionsNullOrEmpty",
            "The list of offline conversions cannot be null or empty.",
        )));
    }
    if items.len() > MAX_ITEMS {
        return Err(Box::new(fault(
            StatusCode::BAD_REQUEST,
            "OfflineConversionsLimitExceeded",
            "The list of offline conversions exceeds the limit of 1,000.",
        )));
    }
    Ok(items)
}

/// A valid item.
struct Item {
    name: String,
    time_text: String,
    time: i64,
    click: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    value: Option<f64>,
    currency: Option<String>,
    adjustment: Option<(String, String)>,
}

impl Item {
    /// The dedup key: goal, conversion time, click id (or the hashes when there is none).
    fn key(&self) -> (String, i64, String) {
        let who = self.click.clone().unwrap_or_else(|| {
            format!(
                "{}|{}",
                self.email.as_deref().unwrap_or_default(),
                self.phone.as_deref().unwrap_or_default()
            )
        });
        (self.name.clone(), self.time, who)
    }
}

/// Parses a UTC `dateTime` (`…Z` or `…+00:00`).
pub(super) fn utc_time(value: Option<&Value>) -> Option<DateTime<Utc>> {
    let text = value?.as_str()?;
    let parsed = DateTime::parse_from_rfc3339(text).ok()?;
    (parsed.offset().local_minus_utc() == 0).then(|| parsed.with_timezone(&Utc))
}

/// Why an item fails: Microsoft's `ErrorCode` and a message that names the field, never its value.
type ItemError = (&'static str, String);

/// Validates one item; `Err((ErrorCode, message))` names the field, never its value.
fn check_item(
    item: &Value,
    kind: Kind,
    goals: &[String],
    clicks: &HashMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Item, ItemError> {
    let Some(obj) = item.as_object() else {
        return Err(("InvalidRequest", "An item is not an object.".into()));
    };
    let allowed = if kind == Kind::Conversions {
        CONVERSION_FIELDS
    } else {
        ADJUSTMENT_FIELDS
    };
    if let Some(unknown) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err((
            "SandboxUnknownField",
            format!("{unknown} is not a field of this item."),
        ));
    }
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let name = text("ConversionName").filter(|n| !n.trim().is_empty());
    let Some(name) = name.filter(|n| goals.contains(n)) else {
        return Err((
            "OfflineConversionNameInvalid",
            "The ConversionName is not the name of an offline conversion goal of this customer."
                .into(),
        ));
    };
    let time = check_conversion_time(obj, now)?;
    let (click, email, phone) = check_identity(obj, time, clicks)?;
    let (value, currency) = check_amount(obj, kind)?;
    let adjustment = match kind {
        Kind::Conversions => None,
        Kind::Adjustments => Some(check_adjustment(obj, time, now, &value, &currency)?),
    };
    Ok(Item {
        name,
        time_text: text("ConversionTime").unwrap_or_default(),
        time: time.timestamp(),
        click,
        email,
        phone,
        value,
        currency,
        adjustment,
    })
}

/// `ConversionTime`: UTC, within the last 90 days, not in the future.
fn check_conversion_time(
    obj: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ItemError> {
    let Some(time) = utc_time(obj.get("ConversionTime")) else {
        return Err((
            "OfflineConversionTimeInvalid",
            "ConversionTime must be a UTC dateTime.".into(),
        ));
    };
    if time > now {
        return Err((
            "FutureConversionTimeCannotBeSet",
            "ConversionTime cannot be in the future.".into(),
        ));
    }
    if time < now - TimeDelta::days(MAX_AGE_DAYS) {
        return Err((
            "OfflineConversionTimeOutOfWindow",
            "ConversionTime must be within the last 90 days.".into(),
        ));
    }
    Ok(time)
}

/// Who converted: a 32-hex click id (not before its known click) and/or SHA-256 hashes of the
/// email and phone; at least one of the three.
#[allow(clippy::type_complexity)]
fn check_identity(
    obj: &Map<String, Value>,
    time: DateTime<Utc>,
    clicks: &HashMap<String, DateTime<Utc>>,
) -> Result<(Option<String>, Option<String>, Option<String>), ItemError> {
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let click = text("MicrosoftClickId");
    if let Some(c) = &click {
        if c.len() != 32 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((
                "OfflineConversionMicrosoftClickIdInvalid",
                "MicrosoftClickId is not a valid Microsoft click id.".into(),
            ));
        }
        if let Some(clicked) = clicks.get(c) {
            if time < *clicked {
                return Err((
                    "ConversionTimeEarlierThanClickTime",
                    "The conversion time is earlier than the click time.".into(),
                ));
            }
        }
    }
    let email = text("HashedEmailAddress");
    let phone = text("HashedPhoneNumber");
    for (field, v) in [
        ("HashedEmailAddress", &email),
        ("HashedPhoneNumber", &phone),
    ] {
        if v.as_ref()
            .is_some_and(|h| !crate::testbed::sandbox::is_sha256_hex(h))
        {
            return Err((
                "InvalidRequest",
                format!("{field} must be a SHA-256 hex digest."),
            ));
        }
    }
    if click.is_none() && email.is_none() && phone.is_none() {
        return Err((
            "OfflineConversionMicrosoftClickIdInvalid",
            "A MicrosoftClickId, HashedEmailAddress or HashedPhoneNumber is required.".into(),
        ));
    }
    Ok((click, email, phone))
}

/// The value (a number not below zero) and currency (three upper-case letters) of a conversion or
/// an adjustment.
fn check_amount(
    obj: &Map<String, Value>,
    kind: Kind,
) -> Result<(Option<f64>, Option<String>), ItemError> {
    let (value_field, currency_field) = match kind {
        Kind::Conversions => ("ConversionValue", "ConversionCurrencyCode"),
        Kind::Adjustments => ("AdjustmentValue", "AdjustmentCurrencyCode"),
    };
    let value = match obj.get(value_field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|v| v >= 0.0) => n.as_f64(),
        Some(_) => {
            return Err((
                "OfflineConversionValueInvalid",
                format!("{value_field} must be a number not below zero."),
            ))
        }
    };
    let currency = obj
        .get(currency_field)
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(c) = &currency {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err((
                "OfflineConversionCurrencyCodeInvalid",
                format!("{currency_field} is not a valid currency code."),
            ));
        }
    }
    Ok((value, currency))
}

/// An adjustment's type and time: `Retract` without value and currency, `Restate` with a value,
/// `AdjustmentTime` not before the conversion and not in the future.
fn check_adjustment(
    obj: &Map<String, Value>,
    time: DateTime<Utc>,
    now: DateTime<Utc>,
    value: &Option<f64>,
    currency: &Option<String>,
) -> Result<(String, String), ItemError> {
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let kind = text("AdjustmentType");
    let Some(kind) = kind.filter(|k| k == "Retract" || k == "Restate") else {
        return Err((
            "OfflineConversionInvalidAdjustmentType",
            "AdjustmentType must be Retract or Restate.".into(),
        ));
    };
    let Some(at) = utc_time(obj.get("AdjustmentTime")) else {
        return Err((
            "OfflineConversionTimeInvalid",
            "AdjustmentTime must be a UTC dateTime.".into(),
        ));
    };
    if at < time {
        return Err((
            "OfflineConversionAdjustmentTimeEarlierThanConversionTime",
            "AdjustmentTime cannot be earlier than ConversionTime.".into(),
        ));
    }
    if at > now {
        return Err((
            "OfflineConversionFutureAdjustmentTimeCannotBeSet",
            "AdjustmentTime cannot be in the future.".into(),
        ));
    }
    if kind == "Retract" && (obj.contains_key("AdjustmentValue") || currency.is_some()) {
        return Err((
            "OfflineConversionAdjustmentValueNotExpected",
            "A Retract takes no AdjustmentValue or AdjustmentCurrencyCode.".into(),
        ));
    }
    if kind == "Restate" && value.is_none() {
        return Err((
            "OfflineConversionAdjustmentValueRequired",
            "A Restate needs an AdjustmentValue.".into(),
        ));
    }
    Ok((kind, text("AdjustmentTime").unwrap_or_default()))
}

/// Records a valid item: a new conversion, an ignored duplicate, or an adjustment of a recorded one.
fn record(
    state: &mut crate::testbed::sandbox::SandboxState,
    item: Item,
    kind: Kind,
) -> Result<(), ItemError> {
    let key = item.key();
    let records = &mut state.records.microsoft_ads;
    let ledger = &mut state.microsoft;
    match kind {
        Kind::Conversions => {
            if !ledger.ever.insert(key.clone()) {
                records.counters.duplicate_sends += 1;
            }
            if ledger.seen.contains_key(&key) {
                // "The first instance will be used and the others will be ignored."
                records.counters.deduplicated += 1;
                return Ok(());
            }
            ledger.seen.insert(key, records.conversions.len());
            records.counters.accepted += 1;
            records.counters.unique += 1;
            records.conversions.push(MsConversion {
                conversion_name: item.name,
                conversion_time: item.time_text,
                microsoft_click_id: item.click,
                hashed_email: item.email,
                hashed_phone: item.phone,
                value: item.value,
                currency: item.currency,
                retracted: false,
                restated_value: None,
            });
            Ok(())
        }
        Kind::Adjustments => {
            let Some(&at) = ledger.seen.get(&key) else {
                return Err(("SandboxUnknownConversion", "No recorded conversion has this ConversionName, ConversionTime and MicrosoftClickId.".into()));
            };
            let (adjustment_type, adjustment_time) = item.adjustment.unwrap_or_default();
            let id = format!("{key:?}|{adjustment_type}|{adjustment_time}");
            let conversion = &mut records.conversions[at];
            if !ledger.adjusted.insert(id) || conversion.retracted {
                records.counters.duplicate_sends += 1;
                records.counters.deduplicated += 1;
                return Ok(());
            }
            if adjustment_type == "Retract" {
                conversion.retracted = true;
            } else {
                conversion.restated_value = item.value;
            }
            records.counters.accepted += 1;
            records.counters.unique += 1;
            records.adjustments.push(MsAdjustment {
                adjustment_type,
                conversion_name: item.name,
                conversion_time: item.time_text,
                microsoft_click_id: item.click,
                adjustment_time,
                value: item.value,
                currency: item.currency,
            });
            Ok(())
        }
    }
}

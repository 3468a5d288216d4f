//! Microsoft Advertising rows to requests: an `OfflineConversion` per conversion, an
//! `OfflineConversionAdjustment` (`Retract` or `Restate`) per refund, with `ConversionTime` always
//! from the row's stored `event_time`.

use super::*;

/// Microsoft's UTC `dateTime`, to the second: `2026-03-01T12:00:00Z`.
pub fn date_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The goal name of a row, or the failure saying the rule lacks one.
fn conversion_name(d: &Delivery) -> Result<&str, Outcome> {
    d.payload
        .conversion_action
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            Outcome::failed(
                "microsoft ads needs an offline conversion goal name (rule microsoft.conversion_name)",
            )
        })
}

/// The identifying fields shared by conversions and adjustments: goal name, conversion time, click
/// id and hashed email/phone; or the outcome that replaces sending the row.
fn identity(d: &Delivery, now: DateTime<Utc>) -> Result<Map<String, Value>, Outcome> {
    let name = conversion_name(d)?;
    let keys = &d.payload.keys;
    let click = keys.get(&MatchKey::Msclkid);
    let email = keys.get(&MatchKey::Email);
    let phone = keys.get(&MatchKey::Phone);
    if click.is_none() && email.is_none() && phone.is_none() {
        return Err(Outcome::skipped(
            "no msclkid and no hashed email or phone for microsoft ads",
        ));
    }
    if d.event_time < now - TimeDelta::days(MAX_AGE_DAYS) {
        return Err(Outcome::skipped(format!(
            "too old for microsoft ads ({MAX_AGE_DAYS} days)"
        )));
    }
    let mut c = Map::new();
    c.insert("ConversionName".into(), json!(name));
    c.insert("ConversionTime".into(), json!(date_time(d.event_time)));
    if let Some(click) = click {
        c.insert("MicrosoftClickId".into(), json!(click));
    }
    if let Some(email) = email {
        c.insert("HashedEmailAddress".into(), json!(email));
    }
    if let Some(phone) = phone {
        c.insert("HashedPhoneNumber".into(), json!(phone));
    }
    Ok(c)
}

/// A conversion timed after `now` (to the second) waits until its time has come: Microsoft refuses a
/// future `ConversionTime` (`FutureConversionTimeCannotBeSet`) and an adjustment timed before its
/// conversion.
fn not_before(at: DateTime<Utc>, now: DateTime<Utc>, what: &str) -> Result<(), Outcome> {
    if at.timestamp() <= now.timestamp() {
        return Ok(());
    }
    let wait = DateTime::<Utc>::from_timestamp(at.timestamp(), 0).unwrap_or(at) - now;
    Err(Outcome::Retry {
        error: format!("microsoft ads: {what}"),
        retry_after: Some(
            wait.to_std()
                .unwrap_or_default()
                .max(Duration::from_millis(50)),
        ),
    })
}

/// Builds one `OfflineConversion`, or the outcome that replaces sending it.
pub fn encode_conversion(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    let mut c = identity(d, now)?;
    // With a known click time: the conversion must follow its click, within 90 days of it.
    if let (true, Some(clicked)) = (c.contains_key("MicrosoftClickId"), d.payload.click_time) {
        if d.event_time < clicked {
            return Err(Outcome::failed(
                "microsoft ads: the conversion time is earlier than the click time",
            ));
        }
        if clicked < now - TimeDelta::days(MAX_AGE_DAYS) {
            return Err(Outcome::skipped(format!(
                "click too old for microsoft ads ({MAX_AGE_DAYS} days)"
            )));
        }
    }
    not_before(
        d.event_time,
        now,
        "the conversion time is in the future; waiting for it",
    )?;
    match value_number(d) {
        Ok(Some(v)) => {
            c.insert("ConversionValue".into(), Value::Number(v));
        }
        Ok(None) => {}
        Err(e) => return Err(Outcome::failed(format!("microsoft ads: {e}"))),
    }
    if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
        c.insert(
            "ConversionCurrencyCode".into(),
            json!(cur.to_ascii_uppercase()),
        );
    }
    Ok(Value::Object(c))
}

/// Builds one `OfflineConversionAdjustment` (`Retract` or `Restate` of the conversion with the same
/// goal name, time and click id), or the outcome that replaces sending it. `event_time` of an
/// adjustment row is the adjusted conversion's time; the adjustment is timed `now`.
pub fn encode_adjustment(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    let mut a = identity(d, now)?;
    not_before(
        d.event_time,
        now,
        "an adjustment cannot be timed before its conversion; waiting",
    )?;
    a.insert("AdjustmentTime".into(), json!(date_time(now)));
    match d.kind {
        Kind::Retraction => {
            a.insert("AdjustmentType".into(), json!("Retract"));
        }
        Kind::Restatement => {
            a.insert("AdjustmentType".into(), json!("Restate"));
            // The restated value is the conversion's new value, not a difference.
            let value = match value_number(d) {
                Ok(Some(v)) => v,
                Ok(None) => return Err(Outcome::failed("microsoft ads restatement needs a value")),
                Err(e) => return Err(Outcome::failed(format!("microsoft ads: {e}"))),
            };
            a.insert("AdjustmentValue".into(), Value::Number(value));
            if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
                a.insert(
                    "AdjustmentCurrencyCode".into(),
                    json!(cur.to_ascii_uppercase()),
                );
            }
        }
        Kind::Conversion => return Err(Outcome::failed("internal: not an adjustment")),
    }
    Ok(Value::Object(a))
}

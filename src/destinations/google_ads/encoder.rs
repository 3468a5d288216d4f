//! Google Ads rows to uploads: a `ClickConversion` per conversion, a `ConversionAdjustment` keyed by
//! `orderId` per retraction or restatement, both held to Google's time rules.

use super::*;

/// Google's date-time format with its mandatory offset: `yyyy-mm-dd hh:mm:ss+00:00` (§2.1).
pub fn date_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
}

/// The conversion action of a row, or the failure saying the rule lacks one.
fn conversion_action(d: &Delivery) -> Result<&str, Outcome> {
    d.payload
        .conversion_action
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Outcome::failed("google ads needs a conversion action (rule google.conversion_action)")
        })
}

/// Builds one `ClickConversion`, or the outcome that replaces sending it.
pub fn encode_conversion(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    let action = conversion_action(d)?;
    let keys = &d.payload.keys;
    let click = click_id(keys);
    let mut identifiers = Vec::new();
    for (key, field) in [
        (MatchKey::Email, "hashedEmail"),
        (MatchKey::Phone, "hashedPhoneNumber"),
    ] {
        if let Some(v) = keys.get(&key) {
            identifiers.push(json!({ field: v, "userIdentifierSource": "FIRST_PARTY" }));
        }
    }
    if click.is_none() && identifiers.is_empty() {
        return Err(Outcome::skipped("no usable match key for google ads"));
    }
    let clicked = d.payload.click_time.unwrap_or(d.event_time);
    if clicked < now - TimeDelta::days(MAX_CLICK_AGE_DAYS) {
        return Err(Outcome::skipped(format!(
            "too old for google ads ({MAX_CLICK_AGE_DAYS} days)"
        )));
    }
    if let (Some(_), Some(click_time)) = (click, d.payload.click_time) {
        let ready = click_time + TimeDelta::hours(MIN_CLICK_AGE_HOURS);
        if ready > now {
            return Err(Outcome::Retry {
                error: format!(
                    "google ads accepts a conversion {MIN_CLICK_AGE_HOURS} hours after its click"
                ),
                retry_after: (ready - now).to_std().ok(),
            });
        }
    }
    let mut c = Map::new();
    if let Some((field, v)) = click {
        c.insert(field.into(), json!(v));
    }
    c.insert("conversionAction".into(), json!(action));
    c.insert("conversionDateTime".into(), json!(date_time(d.event_time)));
    match value_number(d) {
        Ok(Some(v)) => {
            c.insert("conversionValue".into(), Value::Number(v));
        }
        Ok(None) => {}
        Err(e) => return Err(Outcome::failed(format!("google ads: {e}"))),
    }
    if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
        c.insert("currencyCode".into(), json!(cur.to_ascii_uppercase()));
    }
    c.insert("orderId".into(), json!(d.event_id));
    if !identifiers.is_empty() {
        c.insert("userIdentifiers".into(), Value::Array(identifiers));
    }
    if let Some(consent) = ad_user_data_consent(d, ["GRANTED", "DENIED"]) {
        c.insert("consent".into(), consent);
    }
    Ok(Value::Object(c))
}

/// Builds one `ConversionAdjustment` (retraction or restatement keyed by `orderId`), or the outcome
/// that replaces sending it. `event_time` of an adjustment row is the adjusted conversion's time.
pub fn encode_adjustment(d: &Delivery, now: DateTime<Utc>) -> Result<Value, Outcome> {
    let action = conversion_action(d)?;
    if d.event_time < now - TimeDelta::days(MAX_ADJUSTMENT_AGE_DAYS) {
        return Err(Outcome::skipped(format!(
            "too old for google ads adjustments ({MAX_ADJUSTMENT_AGE_DAYS} days)"
        )));
    }
    // The adjustment must be timed after the conversion (§2.2, `ADJUSTMENT_PRECEDES_CONVERSION`), and
    // both are written to the second: a refund of a conversion sent in the same second waits for the
    // next one rather than being refused for good. No other waiting period applies since Sep 2024.
    let conversion_second = d.event_time.timestamp();
    if now.timestamp() <= conversion_second {
        let next_second = DateTime::<Utc>::from_timestamp(conversion_second + 1, 0).unwrap_or(now);
        return Err(Outcome::Retry {
            error: "google ads: an adjustment must be timed after its conversion; waiting for the next second".into(),
            retry_after: Some(
                (next_second - now)
                    .to_std()
                    .unwrap_or_default()
                    .max(Duration::from_millis(50)),
            ),
        });
    }
    let mut a = Map::new();
    a.insert("conversionAction".into(), json!(action));
    a.insert("orderId".into(), json!(d.event_id));
    a.insert("adjustmentDateTime".into(), json!(date_time(now)));
    match d.kind {
        Kind::Retraction => {
            a.insert("adjustmentType".into(), json!("RETRACTION"));
        }
        Kind::Restatement => {
            a.insert("adjustmentType".into(), json!("RESTATEMENT"));
            // The restated value is the new total, not a delta (§2.2, §8 item 17).
            let value = match value_number(d) {
                Ok(Some(v)) => v,
                Ok(None) => return Err(Outcome::failed("google ads restatement needs a value")),
                Err(e) => return Err(Outcome::failed(format!("google ads: {e}"))),
            };
            let mut r = Map::new();
            r.insert("adjustedValue".into(), Value::Number(value));
            if let Some(cur) = d.currency.as_deref().filter(|c| !c.is_empty()) {
                r.insert("currencyCode".into(), json!(cur.to_ascii_uppercase()));
            }
            a.insert("restatementValue".into(), Value::Object(r));
        }
        Kind::Conversion => return Err(Outcome::failed("internal: not an adjustment")),
    }
    Ok(Value::Object(a))
}

/// A Google row's `consent`: `adUserData` as `granted` or `denied` (Google Ads and Data Manager spell
/// them differently). Only from a real consent column: without one, the account default applies.
pub(crate) fn ad_user_data_consent(d: &Delivery, [granted, denied]: [&str; 2]) -> Option<Value> {
    d.payload.consent_column.then(|| {
        let consent = if d.payload.consent { granted } else { denied };
        json!({ "adUserData": consent })
    })
}

/// A row's one Google click id and its field: gclid, else gbraid, else wbraid (never both braids,
/// §2.1).
pub(crate) fn click_id(keys: &crate::identity::MatchKeys) -> Option<(&'static str, &String)> {
    [
        (MatchKey::Gclid, "gclid"),
        (MatchKey::Gbraid, "gbraid"),
        (MatchKey::Wbraid, "wbraid"),
    ]
    .into_iter()
    .find_map(|(key, field)| keys.get(&key).map(|v| (field, v)))
}

//! One tuple read through the relation its rules are bound to: typed values, the `when` condition,
//! templates, identifiers, and the checked fields of an event (id, time, value, currency).

use super::compile::{Compiled, RawField};
use super::{Bound, RuleError, TxContext, MAX_EVENT_ID_BYTES};
use crate::config::{Template, TemplatePart};
use crate::decode::{is_plain_text, parse_value, Datum, Tuple, Value};
use crate::identity::{MatchKey, RawIdentity};
use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use std::borrow::Cow;

/// How far after its transaction's commit an event time may lie: a clock a little ahead is tolerated,
/// an event in the future (a year 9999 placeholder, a wrong time zone) fails the row before any request.
pub const MAX_TIME_AHEAD: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// The largest value magnitude accepted: beyond it a value is a mistake (an id or a card number in
/// the value column, `1e308`), not a sale, and would skew the platform's reporting.
pub const MAX_VALUE: f64 = 1e12;

/// Checks a value (decimal text): a finite number no larger than [`MAX_VALUE`] in magnitude. The
/// error completes "value column X …" and never repeats the value.
pub fn check_value(value: &str) -> Result<(), String> {
    match value.trim().parse::<f64>() {
        Ok(f) if !f.is_finite() => Err("is not a finite number".to_string()),
        Ok(f) if f.abs() > MAX_VALUE => Err(format!(
            "is beyond {MAX_VALUE:e} in magnitude, not a plausible conversion value"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err("is not a number".to_string()),
    }
}

/// Whether `code` (three upper-case letters) is an ISO 4217 code of a currency (the `iso_currency`
/// crate's list): the special codes — `XXX` (no currency), `XTS` (testing), precious metals, units of
/// account — are not money a platform can count.
pub fn is_known_currency(code: &str) -> bool {
    iso_currency::Currency::from_code(code).is_some_and(|c| !c.is_special())
}

/// The typed fields of one event.
pub(super) struct EventFields {
    pub(super) event_id: String,
    pub(super) event_time: DateTime<Utc>,
    pub(super) value: Option<String>,
    pub(super) currency: Option<String>,
    pub(super) event_source_url: Option<String>,
}

/// A field's check: the outer error stops capture, the inner one fails the row with the reason.
type Checked<T> = Result<Result<T, String>, RuleError>;

impl EventFields {
    /// Reads the id and time as `id_rule` defines them and the value and currency as `value_rule` does.
    /// The outer error stops capture; the inner one marks the row failed with the reason.
    pub(super) fn read(
        id_rule: &Compiled,
        value_rule: &Compiled,
        row: &RowView,
        tx: TxContext,
        default_currency: &str,
    ) -> Checked<EventFields> {
        let event_id = match event_id(id_rule, row)? {
            Ok(id) => id,
            Err(reason) => return Ok(Err(reason)),
        };
        let event_time = match event_time(id_rule, row, tx)? {
            Ok(time) => time,
            Err(reason) => return Ok(Err(reason)),
        };
        let value = match value(value_rule, row)? {
            Ok(value) => value,
            Err(reason) => return Ok(Err(reason)),
        };
        let currency = match currency(id_rule, value_rule, row, default_currency)? {
            Ok(currency) => currency,
            Err(reason) => return Ok(Err(reason)),
        };
        let event_source_url = match &id_rule.event_source_url {
            None => None,
            Some(t) => row.render(id_rule, t)?,
        };
        Ok(Ok(EventFields {
            event_id,
            event_time,
            value,
            currency: Some(currency),
            event_source_url,
        }))
    }
}

/// The event id rendered from `rule`'s template: present, not blank, not too long.
fn event_id(rule: &Compiled, row: &RowView) -> Checked<String> {
    let Some(template) = &rule.event_id else {
        return Ok(Err(format!("rule {} has no event_id", rule.name)));
    };
    // Every column of the id must hold something: with a literal prefix, an empty column would still
    // render a non-empty id ("order-"), shared by every row with that column empty, and the platform
    // and the control table would drop all but the first as duplicates.
    let mut blank_column = false;
    for column in template.columns() {
        blank_column |= row
            .text_ref(rule, column)?
            .is_none_or(|t| t.trim().is_empty());
    }
    let columns = || template.columns().collect::<Vec<&str>>().join(", ");
    let event_id = match row.render(rule, template)? {
        Some(id) if !blank_column && !id.trim().is_empty() => id,
        _ => {
            return Ok(Err(format!(
                "event_id needs column(s) {} and one is NULL or empty",
                columns()
            )));
        }
    };
    if event_id.len() > MAX_EVENT_ID_BYTES {
        return Ok(Err(format!(
            "event_id from column(s) {} is {} bytes long, more than the {MAX_EVENT_ID_BYTES} allowed",
            columns(),
            event_id.len()
        )));
    }
    Ok(Ok(event_id))
}

/// The event time from `rule`'s column (a date or timestamp, not in the future), else the commit time.
fn event_time(rule: &Compiled, row: &RowView, tx: TxContext) -> Checked<DateTime<Utc>> {
    let Some(column) = &rule.event_time else {
        return Ok(Ok(tx.commit_time));
    };
    let event_time = match row.value(rule, column)? {
        Value::TimestampTz(t) => t,
        Value::Timestamp(t) => Utc.from_utc_datetime(&t),
        Value::Date(d) => Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)),
        Value::Null => tx.commit_time,
        _ => {
            return Ok(Err(format!(
                "event_time column {column:?} is not a date or timestamp"
            )))
        }
    };
    if event_time > tx.commit_time + MAX_TIME_AHEAD {
        return Ok(Err(format!(
            "event_time column {column:?} is more than {} minutes after the transaction's \
             commit (in the future)",
            MAX_TIME_AHEAD.num_minutes()
        )));
    }
    Ok(Ok(event_time))
}

/// The value from `rule`'s column as decimal text, checked by [`check_value`]; `None` without one.
fn value(rule: &Compiled, row: &RowView) -> Checked<Option<String>> {
    let Some(column) = &rule.value else {
        return Ok(Ok(None));
    };
    let not_a_number = || Ok(Err(format!("value column {column:?} is not a number")));
    let value = match row.value(rule, column)? {
        Value::Null => return Ok(Ok(None)),
        Value::Numeric(n) if n != "NaN" => n,
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_finite() => f.to_string(),
        Value::Text(t) => match t.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => t.trim().to_string(),
            _ => return not_a_number(),
        },
        _ => return not_a_number(),
    };
    if let Err(reason) = check_value(&value) {
        return Ok(Err(format!("value column {column:?} {reason}")));
    }
    Ok(Ok(Some(value)))
}

/// The currency: `value_rule`'s template, else `id_rule`'s (an adjustment without a currency of its
/// own keeps the adjusted conversion's: a partial refund of a EUR order is restated in EUR, not in
/// the default currency), else the default; a known ISO 4217 code.
fn currency(
    id_rule: &Compiled,
    value_rule: &Compiled,
    row: &RowView,
    default_currency: &str,
) -> Checked<String> {
    let (rule, template) = match (&value_rule.currency, &id_rule.currency) {
        (Some(t), _) => (value_rule, t),
        (None, Some(t)) => (id_rule, t),
        (None, None) => return Ok(Ok(default_currency.to_string())),
    };
    let text = row.render(rule, template)?.unwrap_or_default();
    let text = text.trim().to_ascii_uppercase();
    if text.is_empty() {
        Ok(Ok(default_currency.to_string()))
    } else if text.len() == 3 && text.chars().all(|c| c.is_ascii_uppercase()) {
        if !is_known_currency(&text) {
            return Ok(Err(format!(
                "currency {text:?} is not an ISO 4217 currency code"
            )));
        }
        Ok(Ok(text))
    } else {
        Ok(Err(
            "currency is not a three-letter ISO 4217 code".to_string()
        ))
    }
}

/// Consent from a column: boolean true, or text granted / yes / true / 1 / y in any case.
pub fn consent_granted(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Int(i) => *i == 1,
        Value::Text(t) => matches!(
            t.trim().to_ascii_lowercase().as_str(),
            "granted" | "yes" | "true" | "1" | "y"
        ),
        _ => false,
    }
}

/// One tuple seen through its relation.
pub(super) struct RowView<'a> {
    pub(super) bound: &'a Bound,
    pub(super) tuple: &'a Tuple,
    /// Why the unchanged TOAST values still in `tuple` could not be read back, when that was tried.
    pub(super) unresolved: Option<&'a str>,
}

impl RowView<'_> {
    pub(super) fn value(&self, rule: &Compiled, column: &str) -> Result<Value, RuleError> {
        let table = || self.bound.relation.qualified_name();
        let Some(&i) = self.bound.index.get(column) else {
            return Err(RuleError::MissingColumn {
                rule: rule.name.clone(),
                table: table(),
                column: column.to_string(),
                field: "(evaluation)".to_string(),
            });
        };
        // A column bound as absent (re-added after this change was written) has no value here.
        let Some(type_oid) = self.bound.relation.columns.get(i).map(|c| c.type_oid) else {
            return Ok(Value::Null);
        };
        match self.tuple.0.get(i) {
            None | Some(Datum::Null) => Ok(Value::Null),
            Some(Datum::UnchangedToast) => Err(RuleError::BadValue {
                rule: rule.name.clone(),
                table: table(),
                column: column.to_string(),
                message: match self.unresolved {
                    Some(why) => format!(
                        "the value is not in the WAL (unchanged TOAST) and could not be read \
                         back: {why}"
                    ),
                    None => "the value is not in the WAL (unchanged TOAST) and was not read back"
                        .to_string(),
                },
            }),
            Some(Datum::Text(bytes)) | Some(Datum::Binary(bytes)) => parse_value(type_oid, bytes)
                .map_err(|e| RuleError::BadValue {
                    rule: rule.name.clone(),
                    table: table(),
                    column: column.to_string(),
                    message: e.to_string(),
                }),
        }
    }

    pub(super) fn text(&self, rule: &Compiled, column: &str) -> Result<Option<String>, RuleError> {
        Ok(self.value(rule, column)?.into_text())
    }

    /// [`RowView::text`], borrowed from the message when the column is a text type (no copy).
    pub(super) fn text_ref(
        &self,
        rule: &Compiled,
        column: &str,
    ) -> Result<Option<Cow<'_, str>>, RuleError> {
        if let Some(&i) = self.bound.index.get(column) {
            if let Some(Datum::Text(bytes)) = self.tuple.0.get(i) {
                if is_plain_text(self.bound.relation.columns[i].type_oid) {
                    if let Ok(text) = std::str::from_utf8(bytes) {
                        return Ok(Some(Cow::Borrowed(text)));
                    }
                }
            }
        }
        Ok(self.text(rule, column)?.map(Cow::Owned))
    }

    pub(super) fn matches(&self, rule: &Compiled) -> Result<bool, RuleError> {
        for (column, accepted) in &rule.when {
            let Some(text) = self.text_ref(rule, column)? else {
                return Ok(false);
            };
            if !accepted.iter().any(|a| *a == *text) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn render(
        &self,
        rule: &Compiled,
        template: &Template,
    ) -> Result<Option<String>, RuleError> {
        let mut out = String::with_capacity(64);
        for part in &template.parts {
            match part {
                TemplatePart::Literal(l) => out.push_str(l),
                TemplatePart::Column(c) => match self.text_ref(rule, c)? {
                    Some(t) => out.push_str(t.trim_end()),
                    None => return Ok(None),
                },
            }
        }
        Ok(Some(out))
    }

    /// The rule's identifiers, and the match-key fields whose value is unknown (unchanged TOAST not
    /// read back): those are left out, never stop the row.
    pub(super) fn raw_identity(
        &self,
        rule: &Compiled,
    ) -> Result<(RawIdentity, Vec<RawField>), RuleError> {
        let mut raw = RawIdentity::default();
        let mut unknown = Vec::new();
        for (field, column) in &rule.raw_fields {
            let toast = self
                .bound
                .index
                .get(column)
                .and_then(|&i| self.tuple.0.get(i));
            if let Some(Datum::UnchangedToast) = toast {
                unknown.push(*field);
                continue;
            }
            let value = self.value(rule, column)?;
            if let RawField::ClickTime = field {
                raw.click_time = match value {
                    Value::TimestampTz(t) => Some(t),
                    Value::Timestamp(t) => Some(Utc.from_utc_datetime(&t)),
                    _ => None,
                };
                continue;
            }
            let text = value.into_text();
            let slot = match field {
                RawField::Fbclid => &mut raw.fbclid,
                RawField::ClickTime => unreachable!("handled above"),
                RawField::Key(key) => match key {
                    MatchKey::Email => &mut raw.email,
                    MatchKey::Phone => &mut raw.phone,
                    MatchKey::FirstName => &mut raw.first_name,
                    MatchKey::LastName => &mut raw.last_name,
                    MatchKey::City => &mut raw.city,
                    MatchKey::State => &mut raw.state,
                    MatchKey::Zip => &mut raw.zip,
                    MatchKey::Country => &mut raw.country,
                    MatchKey::ExternalId => &mut raw.external_id,
                    MatchKey::DateOfBirth => &mut raw.date_of_birth,
                    MatchKey::Gender => &mut raw.gender,
                    MatchKey::ClientIp => &mut raw.client_ip,
                    MatchKey::UserAgent => &mut raw.user_agent,
                    MatchKey::Fbc => &mut raw.fbc,
                    MatchKey::Fbp => &mut raw.fbp,
                    MatchKey::Gclid => &mut raw.gclid,
                    MatchKey::Gbraid => &mut raw.gbraid,
                    MatchKey::Wbraid => &mut raw.wbraid,
                    MatchKey::Ttclid => &mut raw.ttclid,
                    MatchKey::Ttp => &mut raw.ttp,
                    MatchKey::Msclkid => &mut raw.msclkid,
                    MatchKey::ObClickId => &mut raw.ob_click_id,
                    MatchKey::TaboolaClickId => &mut raw.taboola_click_id,
                    MatchKey::LiFatId => &mut raw.li_fat_id,
                    MatchKey::RdtCid => &mut raw.rdt_cid,
                    MatchKey::ScClickId => &mut raw.sc_click_id,
                    MatchKey::Epik => &mut raw.epik,
                    MatchKey::LeadId => &mut raw.lead_id,
                },
            };
            *slot = text;
        }
        Ok((raw, unknown))
    }
}

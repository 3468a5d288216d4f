//! Rules: a row change → conversion, retraction or restatement rows for the control table.
//!
//! Rules are compiled once from the config ([`Rules::new`]) and bound to a table's columns whenever a
//! pgoutput Relation message describes it ([`Rules::bind`]), so that a dropped or renamed column is found at
//! once and named. Evaluating a change ([`Rules::evaluate`]) is pure: no IO, and a row that cannot become
//! an event is still returned as a `failed` row with the reason, never dropped silently.

use crate::config::{Config, Platform, RuleConfig, Template, TemplatePart};
use crate::decode::{is_plain_text, parse_value, Datum, Relation, Tuple, Value};
use crate::identity::{EventIdentity, MatchKey, RawIdentity};
use crate::lsn::Lsn;
use crate::outbox::{Kind, NewDelivery, Payload, State};
use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use fnv::FnvHashMap;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// The longest event id accepted, in bytes. The control table's unique key indexes it, and a btree entry
/// cannot exceed about 2.7 kB: a longer id would stop capture at the insert, so it fails the row instead.
pub const MAX_EVENT_ID_BYTES: usize = 1_000;

/// A rule cannot be applied to a table as it now is.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// A column the rule reads is not in the table (dropped or renamed).
    #[error(
        "rule {rule:?} reads column {column:?} ({field}), which table {table} no longer has \
         (dropped or renamed?): fix the table or the config, then restart"
    )]
    MissingColumn {
        /// The rule.
        rule: String,
        /// The table.
        table: String,
        /// The missing column.
        column: String,
        /// The config field naming it.
        field: String,
    },
    /// A column's value cannot be read as the rule needs it (an unchanged TOAST value without an old
    /// tuple): the table's replica identity must change, so capture stops.
    #[error("rule {rule:?}: column {column:?} of table {table}: {message}")]
    Unparseable {
        /// The rule.
        rule: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The parser's reason (never the value).
        message: String,
    },
    /// One row's value is not usable as its type (`NaN` or infinite numerics, infinite timestamps): that
    /// row fails with the reason, the others go on. Never leaves [`Rules::evaluate`].
    #[error("rule {rule:?}: column {column:?} of table {table}: {message}")]
    BadValue {
        /// The rule.
        rule: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The parser's reason (never the value).
        message: String,
    },
}

/// The source transaction a change belongs to.
#[derive(Debug, Clone, Copy)]
pub struct TxContext {
    /// The commit LSN (`Begin.final_lsn`).
    pub commit_lsn: Lsn,
    /// The commit time.
    pub commit_time: DateTime<Utc>,
}

/// Counters of identifiers left out because they were invalid (values never kept).
#[derive(Debug, Default, Clone)]
pub struct DropCounts {
    /// How many identifiers were dropped.
    pub total: u64,
}

/// Where a match-key column goes in [`RawIdentity`].
#[derive(Debug, Clone, Copy)]
enum RawField {
    Key(MatchKey),
    Fbclid,
    ClickTime,
}

/// A rule compiled from the config.
#[derive(Debug)]
struct Compiled {
    name: String,
    table: String,
    when: Vec<(String, Vec<String>)>,
    kind: Kind,
    /// For adjustments, the rule whose conversion is adjusted (its fields build the event id).
    adjusts: Option<Arc<Compiled>>,
    event: Option<String>,
    event_id: Option<Template>,
    event_time: Option<String>,
    value: Option<String>,
    currency: Option<Template>,
    consent: Option<String>,
    action_source: Option<String>,
    event_source_url: Option<Template>,
    content_ids: Option<Template>,
    content_type: Option<Template>,
    destinations: Vec<(String, Platform)>,
    raw_fields: Vec<(RawField, String)>,
    lead_event_source: Option<String>,
    meta_event: Option<String>,
    conversion_action: Option<String>,
    tiktok_event: Option<String>,
    /// Microsoft Advertising offline conversion goal name.
    conversion_name: Option<String>,
}

impl Compiled {
    fn from_config(rule: &RuleConfig, config: &Config, adjusts: Option<Arc<Compiled>>) -> Compiled {
        let template = |t: &Option<String>| t.as_deref().and_then(|t| Template::parse(t).ok());
        let single =
            |t: &Option<String>| template(t).and_then(|t| t.single_column().map(str::to_string));
        let kind = if rule.retracts.is_some() {
            Kind::Retraction
        } else if rule.restates.is_some() {
            Kind::Restatement
        } else {
            Kind::Conversion
        };
        let raw_fields = rule
            .match_keys
            .iter()
            .filter_map(|(name, column)| {
                let field = match name.as_str() {
                    "fbclid" => RawField::Fbclid,
                    "click_time" => RawField::ClickTime,
                    other => RawField::Key(MatchKey::from_name(other)?),
                };
                Some((field, column.clone()))
            })
            .collect();
        Compiled {
            name: rule.name.clone(),
            table: qualified(&rule.table),
            when: rule
                .when
                .iter()
                .map(|(column, accepted)| (column.clone(), accepted.accepted()))
                .collect(),
            kind,
            adjusts,
            event: rule.event.clone(),
            event_id: template(&rule.event_id),
            event_time: single(&rule.event_time),
            value: single(&rule.value),
            currency: template(&rule.currency),
            consent: rule.consent.clone(),
            action_source: rule.action_source.clone(),
            event_source_url: template(&rule.event_source_url),
            content_ids: template(&rule.content_ids),
            content_type: template(&rule.content_type),
            destinations: rule
                .destinations
                .iter()
                .filter_map(|d| Some((d.clone(), config.destinations.get(d)?.platform)))
                .collect(),
            raw_fields,
            lead_event_source: rule.meta.lead_event_source.clone(),
            meta_event: rule.meta.event.clone(),
            conversion_action: rule.google.conversion_action.clone(),
            tiktok_event: rule.tiktok.event.clone(),
            conversion_name: rule.microsoft.conversion_name.clone(),
        }
    }

    /// Every (config field, column) the rule reads, for binding and for checks against the database.
    fn columns(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (column, _) in &self.when {
            out.push((format!("when.{column}"), column.clone()));
        }
        let mut templated = |field: &str, t: &Option<Template>| {
            if let Some(t) = t {
                for c in t.columns() {
                    out.push((field.to_string(), c.to_string()));
                }
            }
        };
        templated("event_id", &self.event_id);
        templated("currency", &self.currency);
        templated("event_source_url", &self.event_source_url);
        templated("content_ids", &self.content_ids);
        templated("content_type", &self.content_type);
        for (field, column) in [
            ("event_time", &self.event_time),
            ("value", &self.value),
            ("consent", &self.consent),
        ] {
            if let Some(c) = column {
                out.push((field.to_string(), c.clone()));
            }
        }
        for (field, column) in &self.raw_fields {
            let name = match field {
                RawField::Key(k) => k.as_str(),
                RawField::Fbclid => "fbclid",
                RawField::ClickTime => "click_time",
            };
            out.push((format!("match.{name}"), column.clone()));
        }
        if let Some(target) = &self.adjusts {
            for (field, column) in target.columns() {
                if !field.starts_with("when.") {
                    out.push((
                        format!("{} (via {}).{field}", target.name, self.name),
                        column,
                    ));
                }
            }
        }
        out
    }
}

fn qualified(table: &str) -> String {
    let (schema, name) = crate::config::split_table(table);
    format!("{schema}.{name}")
}

/// All rules of a config, compiled.
#[derive(Debug)]
pub struct Rules {
    by_table: HashMap<String, Vec<Arc<Compiled>>>,
    default_region: String,
    default_currency: String,
}

/// The rules of one table bound to its current columns.
#[derive(Debug)]
pub struct Bound {
    relation: Arc<Relation>,
    rules: Vec<Arc<Compiled>>,
    /// Column name to position; FNV because every value a rule reads looks its column up here.
    index: FnvHashMap<String, usize>,
}

impl Rules {
    /// Compiles the rules of a validated config.
    pub fn new(config: &Config) -> Rules {
        let mut compiled: HashMap<String, Arc<Compiled>> = HashMap::new();
        // Targets of adjustments first, so adjustments can hold them.
        for rule in config.rules.iter().filter(|r| r.adjusts().is_none()) {
            compiled.insert(
                rule.name.clone(),
                Arc::new(Compiled::from_config(rule, config, None)),
            );
        }
        for rule in config.rules.iter().filter(|r| r.adjusts().is_some()) {
            let target = rule.adjusts().and_then(|t| compiled.get(t)).cloned();
            compiled.insert(
                rule.name.clone(),
                Arc::new(Compiled::from_config(rule, config, target)),
            );
        }
        let mut by_table: HashMap<String, Vec<Arc<Compiled>>> = HashMap::new();
        for rule in &config.rules {
            let c = compiled[&rule.name].clone();
            by_table.entry(c.table.clone()).or_default().push(c);
        }
        Rules {
            by_table,
            default_region: config.defaults.region.to_ascii_uppercase(),
            default_currency: config.defaults.currency.to_ascii_uppercase(),
        }
    }

    /// The tables the rules watch (`schema.table`), sorted.
    pub fn tables(&self) -> Vec<String> {
        let mut t: Vec<String> = self.by_table.keys().cloned().collect();
        t.sort();
        t
    }

    /// Every (rule, config field, column) read from `table`, for checks against the database.
    pub fn columns_of(&self, table: &str) -> Vec<(String, String, String)> {
        self.by_table
            .get(table)
            .into_iter()
            .flatten()
            .flat_map(|r| {
                r.columns()
                    .into_iter()
                    .map(|(field, column)| (r.name.clone(), field, column))
            })
            .collect()
    }

    /// Binds the rules of `relation`'s table to its columns; `Ok(None)` when no rule watches it.
    pub fn bind(&self, relation: Arc<Relation>) -> Result<Option<Bound>, RuleError> {
        let table = relation.qualified_name();
        let Some(rules) = self.by_table.get(&table) else {
            return Ok(None);
        };
        let index: FnvHashMap<String, usize> = relation
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        for rule in rules {
            for (field, column) in rule.columns() {
                if !index.contains_key(&column) {
                    return Err(RuleError::MissingColumn {
                        rule: rule.name.clone(),
                        table: table.clone(),
                        column,
                        field,
                    });
                }
            }
        }
        Ok(Some(Bound {
            relation,
            rules: rules.clone(),
            index,
        }))
    }

    /// Turns the new tuple of an insert or update into control-table rows. `ordinal` numbers the change
    /// within its transaction (used for the id of a row that cannot have its own).
    pub fn evaluate(
        &self,
        bound: &Bound,
        new: &Tuple,
        tx: TxContext,
        ordinal: u64,
        drops: &mut DropCounts,
    ) -> Result<Vec<NewDelivery>, RuleError> {
        let mut out = Vec::new();
        self.evaluate_into(bound, new, tx, ordinal, drops, &mut out)?;
        Ok(out)
    }

    /// [`Rules::evaluate`], appending the rows to `out`; on an error `out` is left as it was.
    pub fn evaluate_into(
        &self,
        bound: &Bound,
        new: &Tuple,
        tx: TxContext,
        ordinal: u64,
        drops: &mut DropCounts,
        out: &mut Vec<NewDelivery>,
    ) -> Result<(), RuleError> {
        let start = out.len();
        let row = RowView { bound, tuple: new };
        for rule in &bound.rules {
            // Rows of a rule go straight to `out` and are taken back if the rule fails the row.
            let rule_start = out.len();
            let applied = row.matches(rule).and_then(|matched| match &rule.adjusts {
                _ if !matched => Ok(()),
                None => self.conversion(rule, &row, tx, ordinal, drops, out),
                Some(target) => self.adjustment(rule, target, &row, tx, ordinal, out),
            });
            if applied.is_err() {
                out.truncate(rule_start);
            }
            match applied {
                Ok(()) => {}
                // A value of this row that cannot be used fails the row, visibly; capture goes on.
                Err(RuleError::BadValue {
                    column, message, ..
                }) => {
                    let (destinations, adjusts) = match &rule.adjusts {
                        None => (&rule.destinations, None),
                        Some(target) => (&target.destinations, Some(target.name.as_str())),
                    };
                    failed_rows(
                        rule,
                        destinations,
                        rule.kind,
                        adjusts,
                        tx,
                        ordinal,
                        format!("column {column:?}: {message}"),
                        out,
                    );
                }
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn conversion(
        &self,
        rule: &Compiled,
        row: &RowView,
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
        let consent = match &rule.consent {
            None => true,
            Some(column) => consent_granted(&row.value(rule, column)?),
        };
        let raw = if consent {
            row.raw_identity(rule)?
        } else {
            RawIdentity::default()
        };
        // Parsed and hashed once for all destinations.
        let mut identity = EventIdentity::new(&raw, &self.default_region)
            .for_destinations(rule.destinations.len());
        let last = rule.destinations.len().saturating_sub(1);
        for (i, (destination, platform)) in rule.destinations.iter().enumerate() {
            // The last destination takes the row's own values instead of copies.
            let take = |value: &mut Option<String>| {
                if i == last {
                    value.take()
                } else {
                    value.clone()
                }
            };
            let mut payload = Payload {
                event_source_url: take(&mut fields.event_source_url),
                lead_event_source: rule.lead_event_source.clone(),
                click_time: raw.click_time,
                consent,
                ..Payload::default()
            };
            match platform {
                Platform::Meta => payload.platform_event = rule.meta_event.clone(),
                Platform::GoogleAds => payload.conversion_action = rule.conversion_action.clone(),
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
            }
            let (state, last_error) = if consent {
                let (keys, dropped) = identity.match_keys(*platform, fields.event_time);
                drops.total += dropped.len() as u64;
                payload.keys = keys;
                if payload.keys.is_empty() {
                    (State::Skipped, Some("no match keys".to_string()))
                } else {
                    (State::Pending, None)
                }
            } else {
                (State::Skipped, Some("no consent".to_string()))
            };
            let event_id = if i == last {
                std::mem::take(&mut fields.event_id)
            } else {
                fields.event_id.clone()
            };
            out.push(NewDelivery {
                rule: rule.name.clone(),
                destination: destination.clone(),
                platform: *platform,
                event_id,
                kind: Kind::Conversion,
                adjusts_rule: None,
                event_name: rule.event.clone(),
                event_time: fields.event_time,
                value: take(&mut fields.value),
                currency: take(&mut fields.currency),
                action_source: rule.action_source.clone(),
                payload,
                state,
                last_error,
                source_table: rule.table.clone(),
                source_lsn: tx.commit_lsn,
                commit_time: tx.commit_time,
            });
        }
        Ok(())
    }

    fn adjustment(
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
                        Platform::GoogleAds => target.conversion_action.clone(),
                        Platform::MicrosoftAds => target.conversion_name.clone(),
                        Platform::Meta | Platform::Tiktok => None,
                    },
                    consent: true,
                    ..Payload::default()
                },
                state: State::Pending,
                last_error: None,
                source_table: rule.table.clone(),
                source_lsn: tx.commit_lsn,
                commit_time: tx.commit_time,
            });
        }
        Ok(())
    }
}

/// Rows recorded as `failed` for a change that cannot become an event, so that it stays visible.
#[allow(clippy::too_many_arguments)]
fn failed_rows(
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
            source_lsn: tx.commit_lsn,
            commit_time: tx.commit_time,
        });
    }
}

/// The typed fields of one event.
struct EventFields {
    event_id: String,
    event_time: DateTime<Utc>,
    value: Option<String>,
    currency: Option<String>,
    event_source_url: Option<String>,
}

impl EventFields {
    /// Reads the id and time as `id_rule` defines them and the value and currency as `value_rule` does.
    /// The outer error stops capture; the inner one marks the row failed with the reason.
    fn read(
        id_rule: &Compiled,
        value_rule: &Compiled,
        row: &RowView,
        tx: TxContext,
        default_currency: &str,
    ) -> Result<Result<EventFields, String>, RuleError> {
        let Some(template) = &id_rule.event_id else {
            return Ok(Err(format!("rule {} has no event_id", id_rule.name)));
        };
        // Every column of the id must hold something: with a literal prefix, an empty column would still
        // render a non-empty id ("order-"), shared by every row with that column empty, and the platform
        // and the control table would drop all but the first as duplicates.
        let mut blank_column = false;
        for column in template.columns() {
            blank_column |= row
                .text_ref(id_rule, column)?
                .is_none_or(|t| t.trim().is_empty());
        }
        let event_id = match row.render(id_rule, template)? {
            Some(id) if !blank_column && !id.trim().is_empty() => id,
            _ => {
                let columns: Vec<&str> = template.columns().collect();
                return Ok(Err(format!(
                    "event_id needs column(s) {} and one is NULL or empty",
                    columns.join(", ")
                )));
            }
        };
        if event_id.len() > MAX_EVENT_ID_BYTES {
            let columns: Vec<&str> = template.columns().collect();
            return Ok(Err(format!(
                "event_id from column(s) {} is {} bytes long, more than the {MAX_EVENT_ID_BYTES} allowed",
                columns.join(", "),
                event_id.len()
            )));
        }
        let event_time = match &id_rule.event_time {
            None => tx.commit_time,
            Some(column) => match row.value(id_rule, column)? {
                Value::TimestampTz(t) => t,
                Value::Timestamp(t) => Utc.from_utc_datetime(&t),
                Value::Date(d) => Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)),
                Value::Null => tx.commit_time,
                _ => {
                    return Ok(Err(format!(
                        "event_time column {column:?} is not a date or timestamp"
                    )))
                }
            },
        };
        let value = match &value_rule.value {
            None => None,
            Some(column) => match row.value(value_rule, column)? {
                Value::Null => None,
                Value::Numeric(n) if n != "NaN" => Some(n),
                Value::Int(i) => Some(i.to_string()),
                Value::Float(f) if f.is_finite() => Some(f.to_string()),
                Value::Text(t) => match t.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => Some(t.trim().to_string()),
                    _ => return Ok(Err(format!("value column {column:?} is not a number"))),
                },
                _ => return Ok(Err(format!("value column {column:?} is not a number"))),
            },
        };
        // An adjustment without a currency of its own keeps the adjusted conversion's: a partial
        // refund of a EUR order is restated in EUR, not in the default currency.
        let (currency_rule, currency_template) = match (&value_rule.currency, &id_rule.currency) {
            (Some(t), _) => (value_rule, Some(t)),
            (None, t) => (id_rule, t.as_ref()),
        };
        let currency = match currency_template {
            None => Some(default_currency.to_string()),
            Some(t) => {
                let text = row.render(currency_rule, t)?.unwrap_or_default();
                let text = text.trim().to_ascii_uppercase();
                if text.is_empty() {
                    Some(default_currency.to_string())
                } else if text.len() == 3 && text.chars().all(|c| c.is_ascii_uppercase()) {
                    Some(text)
                } else {
                    return Ok(Err(
                        "currency is not a three-letter ISO 4217 code".to_string()
                    ));
                }
            }
        };
        let event_source_url = match &id_rule.event_source_url {
            None => None,
            Some(t) => row.render(id_rule, t)?,
        };
        Ok(Ok(EventFields {
            event_id,
            event_time,
            value,
            currency,
            event_source_url,
        }))
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
struct RowView<'a> {
    bound: &'a Bound,
    tuple: &'a Tuple,
}

impl RowView<'_> {
    fn value(&self, rule: &Compiled, column: &str) -> Result<Value, RuleError> {
        let table = || self.bound.relation.qualified_name();
        let Some(&i) = self.bound.index.get(column) else {
            return Err(RuleError::MissingColumn {
                rule: rule.name.clone(),
                table: table(),
                column: column.to_string(),
                field: "(evaluation)".to_string(),
            });
        };
        let type_oid = self.bound.relation.columns[i].type_oid;
        match self.tuple.0.get(i) {
            None | Some(Datum::Null) => Ok(Value::Null),
            Some(Datum::UnchangedToast) => Err(RuleError::Unparseable {
                rule: rule.name.clone(),
                table: table(),
                column: column.to_string(),
                message: "unchanged TOAST value without an old tuple to fill it from \
                          (set REPLICA IDENTITY FULL on the table)"
                    .to_string(),
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

    fn text(&self, rule: &Compiled, column: &str) -> Result<Option<String>, RuleError> {
        Ok(self.value(rule, column)?.into_text())
    }

    /// [`RowView::text`], borrowed from the message when the column is a text type (no copy).
    fn text_ref(&self, rule: &Compiled, column: &str) -> Result<Option<Cow<'_, str>>, RuleError> {
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

    fn matches(&self, rule: &Compiled) -> Result<bool, RuleError> {
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

    fn render(&self, rule: &Compiled, template: &Template) -> Result<Option<String>, RuleError> {
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

    fn raw_identity(&self, rule: &Compiled) -> Result<RawIdentity, RuleError> {
        let mut raw = RawIdentity::default();
        for (field, column) in &rule.raw_fields {
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
                    MatchKey::LeadId => &mut raw.lead_id,
                },
            };
            *slot = text;
        }
        Ok(raw)
    }
}

impl Bound {
    /// The relation the rules are bound to.
    pub fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }
}

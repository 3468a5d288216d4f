//! Rules: a row change → conversion, retraction or restatement rows for the control table.
//!
//! Rules are compiled once from the config ([`Rules::new`]) and bound to a table's columns whenever a
//! pgoutput Relation message describes it ([`Rules::bind`]), so that a dropped or renamed column is found at
//! once and named. Evaluating a change ([`Rules::evaluate`]) is pure: no IO, and a row that cannot become
//! an event is still returned as a `failed` row with the reason, never dropped silently.

use crate::config::{Config, OnDelete, RuleConfig, Template, TemplatePart};
use crate::decode::{is_plain_text, parse_value, Datum, OldTuple, Relation, Tuple, Value};
use crate::event::{Kind, NewDelivery, Payload, State};
use crate::identity::{EventIdentity, MatchKey, RawIdentity};
use crate::lsn::Lsn;
use crate::platform::Platform;
use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use fnv::FnvHashMap;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

#[cfg(test)]
mod toast_tests;

/// The longest event id accepted, in bytes. The control table's unique key indexes it, and a btree entry
/// cannot exceed about 2.7 kB: a longer id would stop capture at the insert, so it fails the row instead.
pub const MAX_EVENT_ID_BYTES: usize = 1_000;

/// A rule cannot be applied to a table as it now is.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// A column the rule reads is not in the table (dropped or renamed).
    #[error(
        "rule {rule:?} reads column {column:?} ({field}), which table {table} did not have at this \
         change (dropped or renamed?). Either rename the column back, or re-add it (changes made while \
         it was missing then read it as NULL), and capture resumes by itself within a minute; or change \
         the rule to the column's new name (or remove it from the rule) and restart pgcapi"
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
    /// One row's value is not usable as its type (`NaN` or infinite numerics, infinite timestamps), or is
    /// not known at all (an unchanged TOAST value that could not be read back): that row fails with the
    /// reason, the others go on. Never leaves [`Rules::evaluate`].
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

impl RawField {
    /// The config name of the field (`match.<name>`).
    fn name(self) -> &'static str {
        match self {
            RawField::Key(k) => k.as_str(),
            RawField::Fbclid => "fbclid",
            RawField::ClickTime => "click_time",
        }
    }

    /// True when `platform` receives this field (as itself, or `fbclid` as Meta's `fbc`).
    fn accepted_by(self, platform: Platform) -> bool {
        match self {
            RawField::Key(k) => crate::identity::accepted_keys(platform).contains(&k),
            RawField::Fbclid => crate::identity::accepted_keys(platform).contains(&MatchKey::Fbc),
            RawField::ClickTime => false,
        }
    }
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
    snapchat_event: Option<String>,
    pinterest_event: Option<String>,
    on_delete: OnDelete,
    /// Set once a DELETE could not be matched to this rule's conversion (reported once per process).
    delete_unmatched: std::sync::atomic::AtomicBool,
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
                .filter_map(|d| Some((d.clone(), config.destinations.get(d)?.platform())))
                .collect(),
            raw_fields,
            lead_event_source: rule.meta.lead_event_source.clone(),
            meta_event: rule.meta.event.clone(),
            conversion_action: rule.google.conversion_action.clone(),
            tiktok_event: rule.tiktok.event.clone(),
            snapchat_event: rule.snapchat.event.clone(),
            pinterest_event: rule.pinterest.event.clone(),
            on_delete: rule.on_delete,
            delete_unmatched: std::sync::atomic::AtomicBool::new(false),
            conversion_name: rule.microsoft.conversion_name.clone(),
        }
    }

    /// The columns evaluating a change reads: a conversion's every column; an adjustment's condition,
    /// value and currency, and the id, time and page of the conversion it adjusts (not its identifiers).
    fn evaluated_columns(&self) -> Vec<&str> {
        let Some(target) = &self.adjusts else {
            let mut out: Vec<&str> = self.when.iter().map(|(c, _)| c.as_str()).collect();
            for t in [&self.event_id, &self.currency, &self.event_source_url]
                .into_iter()
                .flatten()
            {
                out.extend(t.columns());
            }
            out.extend(
                [&self.event_time, &self.value, &self.consent]
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
            out.extend(self.raw_fields.iter().map(|(_, c)| c.as_str()));
            return out;
        };
        let mut out: Vec<&str> = self.when.iter().map(|(c, _)| c.as_str()).collect();
        for t in [&target.event_id, &self.currency, &target.event_source_url]
            .into_iter()
            .flatten()
        {
            out.extend(t.columns());
        }
        out.extend(
            [&target.event_time, &self.value]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
        out
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
            out.push((format!("match.{}", field.name()), column.clone()));
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

/// How a column a rule reads, missing from a Relation message, is bound anyway (see
/// [`Rules::bind_recovered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// The column at this position of the relation: it had another name when the change was written
    /// and has the rule's name again now (renamed back).
    At(usize),
    /// The column did not exist when the change was written (dropped, re-added since): read as NULL.
    Absent,
}

/// The index of a column bound as [`Recovered::Absent`]: no tuple has a value there.
const ABSENT: usize = usize::MAX;

/// The rules of one table bound to its current columns.
#[derive(Debug)]
pub struct Bound {
    relation: Arc<Relation>,
    rules: Vec<Arc<Compiled>>,
    /// Column name to position; FNV because every value a rule reads looks its column up here.
    index: FnvHashMap<String, usize>,
    /// The positions of the replica-identity key columns; empty under REPLICA IDENTITY FULL (the old
    /// tuple of a DELETE then holds every column) or when the table has no key.
    key_columns: Vec<usize>,
    /// Per rule (as `rules`): whether its conversions record the source row's key
    /// ([`NewDelivery::source_key`]) because a DELETE cannot render its event id.
    keyed: Vec<bool>,
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
        self.bind_recovered(relation, &HashMap::new())
    }

    /// The columns the rules of `relation`'s table read that `relation` does not have, each once.
    pub fn missing_columns(&self, relation: &Relation) -> Vec<String> {
        let mut missing: Vec<String> = self
            .columns_of(&relation.qualified_name())
            .into_iter()
            .map(|(_, _, column)| column)
            .filter(|c| relation.column_index(c).is_none())
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// [`Rules::bind`], with columns the relation lacks resolved by `recovered` (see [`Recovered`]).
    pub fn bind_recovered(
        &self,
        relation: Arc<Relation>,
        recovered: &HashMap<String, Recovered>,
    ) -> Result<Option<Bound>, RuleError> {
        let table = relation.qualified_name();
        let Some(rules) = self.by_table.get(&table) else {
            return Ok(None);
        };
        let mut index: FnvHashMap<String, usize> = relation
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        for (column, how) in recovered {
            if !index.contains_key(column) {
                let position = match how {
                    Recovered::At(i) if *i < relation.columns.len() => *i,
                    Recovered::At(_) => continue,
                    Recovered::Absent => ABSENT,
                };
                index.insert(column.clone(), position);
            }
        }
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
        let key_columns: Vec<usize> = if relation.replica_identity == b'f' {
            Vec::new()
        } else {
            (relation.columns.iter().enumerate())
                .filter(|(_, c)| c.key)
                .map(|(i, _)| i)
                .collect()
        };
        let keyed = rules
            .iter()
            .map(|rule| {
                !key_columns.is_empty()
                    && rule.adjusts.is_none()
                    && rule.on_delete != OnDelete::Ignore
                    && rule
                        .event_id
                        .as_ref()
                        .is_some_and(|t| !reads_only_key(&relation, &index, t))
            })
            .collect();
        Ok(Some(Bound {
            relation,
            rules: rules.clone(),
            index,
            key_columns,
            keyed,
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
        self.evaluate_unresolved_into(bound, new, None, tx, ordinal, drops, out)
    }

    /// The positions of the columns that `new` holds as unchanged TOAST (the value is not in the WAL)
    /// and that a rule needs for this change: every column of each rule whose condition holds, or
    /// cannot be decided because a condition column is itself unchanged TOAST. Empty (no allocation)
    /// for the usual change, which has no unchanged TOAST value or matches no rule that reads one.
    pub fn unresolved_columns(&self, bound: &Bound, new: &Tuple) -> Vec<usize> {
        let is_toast = |i: usize| matches!(new.0.get(i), Some(Datum::UnchangedToast));
        if !new.0.iter().any(|d| matches!(d, Datum::UnchangedToast)) {
            return Vec::new();
        }
        let row = RowView {
            bound,
            tuple: new,
            unresolved: None,
        };
        let mut needed = Vec::new();
        for rule in &bound.rules {
            let undecided = rule
                .when
                .iter()
                .any(|(column, _)| bound.index.get(column).is_some_and(|&i| is_toast(i)));
            // A condition that fails to parse fails the row whatever the other columns hold.
            if !undecided && !row.matches(rule).unwrap_or(false) {
                continue;
            }
            for column in rule.evaluated_columns() {
                if let Some(&i) = bound.index.get(column) {
                    if is_toast(i) && !needed.contains(&i) {
                        needed.push(i);
                    }
                }
            }
        }
        needed.sort_unstable();
        needed
    }

    /// [`Rules::evaluate_into`] for a change whose unchanged TOAST values could not all be read back
    /// (`unresolved` says why): a match key still unknown is left out of the event and counted in
    /// `drops`; any other column still unknown fails the row with the reason. Never stops capture.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate_unresolved_into(
        &self,
        bound: &Bound,
        new: &Tuple,
        unresolved: Option<&str>,
        tx: TxContext,
        ordinal: u64,
        drops: &mut DropCounts,
        out: &mut Vec<NewDelivery>,
    ) -> Result<(), RuleError> {
        let start = out.len();
        let row = RowView {
            bound,
            tuple: new,
            unresolved,
        };
        for (r, rule) in bound.rules.iter().enumerate() {
            // Rows of a rule go straight to `out` and are taken back if the rule fails the row.
            let rule_start = out.len();
            let applied = row.matches(rule).and_then(|matched| match &rule.adjusts {
                _ if !matched => Ok(()),
                None => {
                    let key = bound.keyed[r].then(|| bound.source_key(new)).flatten();
                    self.conversion(rule, &row, key, tx, ordinal, drops, out)
                }
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
    fn conversion(
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
        let consent = match &rule.consent {
            None => true,
            Some(column) => consent_granted(&row.value(rule, column)?),
        };
        let (raw, unknown) = if consent {
            row.raw_identity(rule)?
        } else {
            (RawIdentity::default(), Vec::new())
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
                consent_column: rule.consent.is_some(),
                ..Payload::default()
            };
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
                Platform::Snapchat => payload.platform_event = rule.snapchat_event.clone(),
                Platform::Pinterest => payload.platform_event = rule.pinterest_event.clone(),
            }
            let (state, last_error) = if consent {
                let (keys, dropped) = identity.match_keys(*platform, fields.event_time);
                // Keys whose value is unknown (unchanged TOAST that could not be read back) are
                // dropped too, for the platforms that take them.
                let unknown_here: Vec<&str> = unknown
                    .iter()
                    .filter(|f| f.accepted_by(*platform))
                    .map(|f| f.name())
                    .collect();
                drops.total += (dropped.len() + unknown_here.len()) as u64;
                payload.keys = keys;
                if payload.keys.is_empty() {
                    let reason = match (unknown_here.is_empty(), row.unresolved) {
                        (false, Some(why)) => format!(
                            "no match keys ({} not in the WAL and not read back: {why})",
                            unknown_here.join(", ")
                        ),
                        _ => "no match keys".to_string(),
                    };
                    (State::Skipped, Some(reason))
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
                source_key: source_key.clone(),
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
                        Platform::GoogleAds | Platform::GoogleDataManager => {
                            target.conversion_action.clone()
                        }
                        Platform::MicrosoftAds => target.conversion_name.clone(),
                        Platform::Meta
                        | Platform::Tiktok
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
            source_key: None,
            source_lsn: tx.commit_lsn,
            commit_time: tx.commit_time,
        });
    }
}

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
        if let Some(column) = &id_rule.event_time {
            if event_time > tx.commit_time + MAX_TIME_AHEAD {
                return Ok(Err(format!(
                    "event_time column {column:?} is more than {} minutes after the transaction's \
                     commit (in the future)",
                    MAX_TIME_AHEAD.num_minutes()
                )));
            }
        }
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
        if let (Some(column), Some(v)) = (&value_rule.value, &value) {
            if let Err(reason) = check_value(v) {
                return Ok(Err(format!("value column {column:?} {reason}")));
            }
        }
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
                    if !is_known_currency(&text) {
                        return Ok(Err(format!(
                            "currency {text:?} is not an ISO 4217 currency code"
                        )));
                    }
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
    /// Why the unchanged TOAST values still in `tuple` could not be read back, when that was tried.
    unresolved: Option<&'a str>,
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

    /// The rule's identifiers, and the match-key fields whose value is unknown (unchanged TOAST not
    /// read back): those are left out, never stop the row.
    fn raw_identity(&self, rule: &Compiled) -> Result<(RawIdentity, Vec<RawField>), RuleError> {
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

impl Bound {
    /// The relation the rules are bound to.
    pub fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// The [`crate::event::source_key`] of `tuple` (a new tuple, or the old key tuple of a DELETE):
    /// `None` without key columns or when a key value is not in the tuple or not text.
    fn source_key(&self, tuple: &Tuple) -> Option<String> {
        if self.key_columns.is_empty() {
            return None;
        }
        let mut values: Vec<Option<std::borrow::Cow<str>>> =
            Vec::with_capacity(self.key_columns.len());
        for &i in &self.key_columns {
            values.push(match tuple.0.get(i)? {
                Datum::Null => None,
                Datum::UnchangedToast => return None,
                Datum::Text(bytes) => Some(std::str::from_utf8(bytes).ok()?.into()),
                Datum::Binary(bytes) => {
                    let mut hex = String::from("\\x");
                    for b in bytes.iter() {
                        hex.push_str(&format!("{b:02x}"));
                    }
                    Some(hex.into())
                }
            });
        }
        Some(crate::event::source_key(
            values.iter().map(|v| v.as_deref()),
        ))
    }
}

/// Whether template `t` reads only replica-identity key columns of `relation`.
fn reads_only_key(relation: &Relation, index: &FnvHashMap<String, usize>, t: &Template) -> bool {
    t.columns().all(|c| {
        index
            .get(c)
            .and_then(|&i| relation.columns.get(i))
            .is_some_and(|c| c.key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::RelationColumn;

    const CONFIG: &str = r#"
[source]
url = "postgres://pgcapi@localhost/shop"

[destinations.meta]
platform = "meta"
pixel_id = "1"
access_token = "token"

[[rules]]
name = "paid"
table = "public.t"
when = { status = "paid" }
event = "Purchase"
event_id = "o-{n}"
value = "{total}"
action_source = "system_generated"
destinations = ["meta"]

[rules.match]
email = "email"
"#;

    fn rules() -> Rules {
        let config = Config::from_toml(CONFIG, "test", &|_| None).expect("config");
        Rules::new(&config)
    }

    /// A Relation message for `public.t` with these (name, type) columns.
    fn relation(columns: &[(&str, u32)]) -> Arc<Relation> {
        Arc::new(Relation {
            oid: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: columns
                .iter()
                .map(|(name, type_oid)| RelationColumn {
                    key: false,
                    name: name.to_string(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    fn text(values: &[&str]) -> Tuple {
        Tuple(
            values
                .iter()
                .map(|v| Datum::Text(bytes::Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
        )
    }

    fn evaluate(rules: &Rules, bound: &Bound, tuple: &Tuple) -> Vec<NewDelivery> {
        let tx = TxContext {
            commit_lsn: Lsn::ZERO,
            commit_time: Utc::now(),
        };
        rules
            .evaluate(bound, tuple, tx, 1, &mut DropCounts::default())
            .expect("evaluated")
    }

    /// `public.t` with `id` as its key column (flagged as under REPLICA IDENTITY `identity`).
    fn keyed_relation(identity: u8) -> Arc<Relation> {
        let mut relation = (*relation(&[
            ("id", 20),
            ("n", 25),
            ("status", 25),
            ("total", 1700),
            ("email", 25),
        ]))
        .clone();
        relation.replica_identity = identity;
        for column in &mut relation.columns {
            column.key = identity == b'f' || column.name == "id";
        }
        Arc::new(relation)
    }

    #[test]
    fn a_delete_without_the_event_id_is_matched_by_the_row_key_recorded_with_the_conversion() {
        let rules = rules();
        let tx = TxContext {
            commit_lsn: Lsn::ZERO,
            commit_time: Utc::now(),
        };
        // Default identity: `o-{n}` reads a column outside the key `id`.
        let bound = rules.bind(keyed_relation(b'd')).unwrap().unwrap();
        let new = text(&["42", "7", "paid", "10", "a@example.com"]);
        let rows = evaluate(&rules, &bound, &new);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, "o-7");
        assert_eq!(rows[0].source_key.as_deref(), Some("42"));
        let mut key_only = text(&["42"]);
        key_only
            .0
            .extend([Datum::Null, Datum::Null, Datum::Null, Datum::Null]);
        let mut out = Vec::new();
        let unmatched = rules.evaluate_delete(&bound, &OldTuple::Key(key_only), tx, &mut out);
        assert!(unmatched.is_empty(), "{unmatched:?}");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, "paid:deleted");
        assert_eq!(out[0].event_id, "");
        assert_eq!(out[0].source_key.as_deref(), Some("42"));

        // FULL: every column is flagged key; no key is stored (it would be the whole row), and the
        // delete renders the event id from the old row.
        let bound = rules.bind(keyed_relation(b'f')).unwrap().unwrap();
        let rows = evaluate(&rules, &bound, &new);
        assert_eq!(rows[0].source_key, None);
        let mut out = Vec::new();
        rules.evaluate_delete(&bound, &OldTuple::Full(new), tx, &mut out);
        assert_eq!(
            (out[0].event_id.as_str(), out[0].source_key.as_deref()),
            ("o-7", None)
        );
    }

    #[test]
    fn the_source_key_encoding_is_unambiguous() {
        use crate::event::source_key;
        assert_eq!(source_key([Some("42")]), "42");
        assert_eq!(
            source_key([Some("7"), Some("a,b\\c"), None]),
            "7,a\\,b\\\\c,\\N"
        );
        let keys = [
            source_key([Some("a,b")]),
            source_key([Some("a"), Some("b")]),
            source_key([None]),
            source_key([Some("\\N")]),
            source_key([Some("")]),
            source_key([Some(""), Some("")]),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_column_missing_from_the_relation_is_named_and_can_be_bound_by_position_or_as_absent() {
        let rules = rules();
        // The WAL's relation calls the email column "mail" (renamed when the change was written).
        let renamed = relation(&[("n", 25), ("status", 25), ("total", 1700), ("mail", 25)]);
        let err = rules.bind(renamed.clone()).expect_err("email is missing");
        assert!(err.to_string().contains("\"email\""), "{err}");
        assert_eq!(rules.missing_columns(&renamed), vec!["email".to_string()]);

        // Bound by position (renamed back since): the value is read from the column the WAL calls mail.
        let recovered = HashMap::from([("email".to_string(), Recovered::At(3))]);
        let bound = rules
            .bind_recovered(renamed.clone(), &recovered)
            .unwrap()
            .expect("bound");
        let rows = evaluate(
            &rules,
            &bound,
            &text(&["1", "paid", "9.50", "a@example.com"]),
        );
        assert_eq!(rows.len(), 1);
        let hashed = crate::identity::hash("a@example.com");
        assert!(format!("{rows:?}").contains(&hashed), "{rows:?}");

        // Absent (re-added since): the change is recorded without that key.
        let dropped = relation(&[("n", 25), ("status", 25), ("total", 1700)]);
        let recovered = HashMap::from([("email".to_string(), Recovered::Absent)]);
        let bound = rules
            .bind_recovered(dropped, &recovered)
            .unwrap()
            .expect("bound");
        let rows = evaluate(&rules, &bound, &text(&["2", "paid", "9.50"]));
        assert_eq!(rows.len(), 1);
        assert!(!format!("{rows:?}").contains(&hashed), "{rows:?}");
    }

    #[test]
    fn absurd_values_are_refused_plausible_ones_kept() {
        for ok in ["0", "25.00", "-3.5", "999999999999", "1e12"] {
            assert_eq!(check_value(ok), Ok(()), "{ok}");
        }
        for bad in [
            "1e308",
            "1000000000000.01",
            "-2e12",
            "Infinity",
            "-Infinity",
            "NaN",
        ] {
            assert!(check_value(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_value("1e308").unwrap_err(),
            "is beyond 1e12 in magnitude, not a plausible conversion value"
        );
    }

    #[test]
    fn currencies_are_checked_against_iso_4217() {
        for ok in ["USD", "EUR", "JPY", "XCG", "ZWG", "CHF"] {
            assert!(is_known_currency(ok), "{ok}");
        }
        for bad in ["XXX", "XTS", "XAU", "ABC", "QQQ"] {
            assert!(!is_known_currency(bad), "{bad}");
        }
    }
}

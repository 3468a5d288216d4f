//! Rules: a row change → conversion, retraction or restatement rows for the control table.
//!
//! Rules are compiled once from the config ([`Rules::new`]) and bound to a table's columns whenever a
//! pgoutput Relation message describes it ([`Rules::bind`]), so that a dropped or renamed column is found at
//! once and named. Evaluating a change ([`Rules::evaluate`]) is pure: no IO, and a row that cannot become
//! an event is still returned as a `failed` row with the reason, never dropped silently.
//!
//! Here: binding and the entry points. [`compile`]: rules from the config and the columns they read;
//! `row`: one tuple's typed values and checked event fields; `emit`: the control-table rows.

#[cfg(test)]
mod bind_tests;
mod compile;
mod emit;
mod row;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod toast_tests;

use crate::config::{Config, OnDelete};
use crate::decode::{Datum, Relation, Tuple};
use crate::event::NewDelivery;
use crate::lsn::Lsn;
use chrono::{DateTime, Utc};
use compile::{reads_only_key, Compiled};
use emit::failed_rows;
use fnv::FnvHashMap;
use row::RowView;
use std::collections::HashMap;
use std::sync::Arc;

pub use row::{check_value, consent_granted, is_known_currency, MAX_TIME_AHEAD, MAX_VALUE};

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
        self.evaluate_unresolved_into(bound, new, None, tx, ordinal, drops, &mut out)?;
        Ok(out)
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

    /// [`Rules::evaluate`], appending the rows to `out` (on an error `out` is left as it was), for a
    /// change whose unchanged TOAST values could not all be read back (`unresolved` says why; `None`
    /// when they all were or there were none): a match key still unknown is left out of the event and counted in
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

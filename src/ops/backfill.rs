//! `pgcapi backfill`: conversions for rows that existed before pgcapi started watching.
//!
//! A user who starts pgcapi today can recover last week's conversions: the rows of one rule's table
//! whose timestamp column is at or after `--since` are read with a cursor, evaluated by the same rules
//! as captured changes, and written to the control table with the same natural key. Rows already
//! recorded (by capture or an earlier backfill) are left alone, so a backfill never sends a conversion
//! twice, and dispatch delivers the new rows like any others (rows too old for a platform's window
//! end `skipped` with that reason).
//!
//! Values are read with the simple query protocol, which returns each column in its type's text
//! output: the same text pgoutput sends, so a backfilled row and a captured one give the same event.

use crate::config::{split_table, Config, RuleConfig};
use crate::decode::{Datum, Relation, RelationColumn, Tuple};
use crate::event::NewDelivery;
use crate::lsn::Lsn;
use crate::outbox::{insert_deliveries, notify_channel, quote_ident};
use crate::rules::{DropCounts, Rules, TxContext};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

/// Rows fetched from the cursor per round trip.
const FETCH_ROWS: usize = 1_000;

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// The rule to evaluate (a conversion, retraction or restatement rule).
    pub rule: String,
    /// Rows whose timestamp column is at or after this time.
    pub since: DateTime<Utc>,
    /// The timestamp column; by default the rule's `event_time` column (for a retraction or
    /// restatement rule, the adjusted rule's).
    pub column: Option<String>,
    /// Evaluate and count, but write nothing.
    pub dry_run: bool,
}

/// The outcome of a backfill.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackfillReport {
    /// The table read.
    pub table: String,
    /// The timestamp column filtered on.
    pub column: String,
    /// Rows read from the table.
    pub rows_read: u64,
    /// Control-table rows the rule produced (one per event and destination).
    pub deliveries: u64,
    /// Of those, rows that were new (the rest were already recorded).
    pub inserted: u64,
    /// Produced rows by initial state (`pending`, `skipped`, `failed`).
    pub by_state: BTreeMap<String, u64>,
    /// True when nothing was written.
    pub dry_run: bool,
}

impl BackfillReport {
    /// A short human-readable summary.
    pub fn render(&self) -> String {
        let states: Vec<String> = self
            .by_state
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let mut out = format!(
            "{} rows of {} with {} in range; {} deliveries ({})",
            self.rows_read,
            self.table,
            self.column,
            self.deliveries,
            if states.is_empty() {
                "none".to_string()
            } else {
                states.join(", ")
            }
        );
        if self.dry_run {
            out.push_str("; dry run: nothing written\n");
        } else {
            out.push_str(&format!(
                "; {} new, {} already recorded\n",
                self.inserted,
                self.deliveries - self.inserted
            ));
        }
        out
    }
}

/// A backfill could not run.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The options do not fit the config or the table.
    #[error("{0}")]
    Invalid(String),
    /// A database statement failed.
    #[error("{what}: {}", crate::pg::client::describe(source))]
    Database {
        /// What was being done.
        what: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting failed.
    #[error(transparent)]
    Setup(#[from] crate::ops::setup::SetupError),
    /// A rule could not be applied to the table.
    #[error(transparent)]
    Rule(#[from] crate::rules::RuleError),
    /// Writing to the control table failed.
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
}

fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> BackfillError {
    let what = what.into();
    move |source| BackfillError::Database { what, source }
}

/// Runs a backfill for `options.rule` of `config`.
pub async fn backfill(
    config: &Config,
    options: &BackfillOptions,
) -> Result<BackfillReport, BackfillError> {
    let (rule, column) = rule_and_column(config, options)?;
    let (schema, name) = split_table(&rule.table);
    let table = format!("{schema}.{name}");
    let source = crate::ops::setup::connect(config.source.url.expose(), "source database").await?;
    let relation = Arc::new(load_relation(&source, schema, name).await?);
    if relation.column_index(&column).is_none() {
        return Err(BackfillError::Invalid(format!(
            "table {table} has no column {column:?} (the --column to filter on)"
        )));
    }
    let rules = Rules::new(config);
    let bound = rules
        .bind(Arc::clone(&relation))?
        .ok_or_else(|| BackfillError::Invalid(format!("no rule watches {table}")))?;

    let position: String = source
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .map_err(db("reading the current WAL position"))?
        .get(0);
    let tx_context = TxContext {
        commit_lsn: position.parse::<Lsn>().unwrap_or_default(),
        commit_time: Utc::now(),
    };

    let control = if options.dry_run {
        None
    } else {
        Some(
            crate::ops::setup::connect(config.source.control_url().expose(), "control database")
                .await?,
        )
    };
    let control_schema = &config.source.schema;
    open_cursor(&source, &relation, &column, options.since).await?;

    let mut report = BackfillReport {
        table: table.clone(),
        column: column.clone(),
        dry_run: options.dry_run,
        ..BackfillReport::default()
    };
    let mut drops = DropCounts::default();
    loop {
        let messages = source
            .simple_query(&format!("fetch {FETCH_ROWS} from pgcapi_backfill"))
            .await
            .map_err(db(format!("reading {table}")))?;
        let mut batch: Vec<NewDelivery> = Vec::new();
        let mut fetched = 0;
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            fetched += 1;
            let produced = rules.evaluate(
                &bound,
                &tuple(&row),
                tx_context,
                report.rows_read,
                &mut drops,
            )?;
            report.rows_read += 1;
            batch.extend(produced.into_iter().filter(|d| d.rule == rule.name));
        }
        record(control.as_ref(), control_schema, &batch, &mut report).await?;
        if fetched < FETCH_ROWS {
            break;
        }
    }
    source
        .batch_execute("commit")
        .await
        .map_err(db("ending the read transaction"))?;
    Ok(report)
}

/// The rule `options` name, and the column to filter on (`--column`, or the rule's event time).
fn rule_and_column<'c>(
    config: &'c Config,
    options: &BackfillOptions,
) -> Result<(&'c RuleConfig, String), BackfillError> {
    let rule = config.rule(&options.rule).ok_or_else(|| {
        let names: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
        BackfillError::Invalid(format!(
            "no rule named {:?} (rules: {})",
            options.rule,
            names.join(", ")
        ))
    })?;
    let column = match &options.column {
        Some(c) => c.clone(),
        None => default_column(config, &rule.name).ok_or_else(|| {
            BackfillError::Invalid(format!(
                "rule {:?} has no single-column event_time to filter on; pass --column with a \
                 timestamp column of {}",
                rule.name, rule.table
            ))
        })?,
    };
    Ok((rule, column))
}

/// Starts a read-only snapshot on `source` and declares the cursor over the rows of `relation` whose
/// `column` is at or after `since`, with the settings under which values read as pgoutput sends them.
async fn open_cursor(
    source: &Client,
    relation: &Relation,
    column: &str,
    since: DateTime<Utc>,
) -> Result<(), BackfillError> {
    let (schema, name) = (&relation.namespace, &relation.name);
    let columns: Vec<String> = relation
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    // The time is ours (parsed above), printed as RFC 3339: safe to inline in the simple protocol.
    let query = format!(
        "declare pgcapi_backfill no scroll cursor for select {} from {}.{} where {} >= '{}'::timestamptz",
        columns.join(", "),
        quote_ident(schema),
        quote_ident(name),
        quote_ident(column),
        since.to_rfc3339()
    );
    source
        .batch_execute(
            "begin isolation level repeatable read read only; set local datestyle = ISO; \
             set local timezone = UTC; set local extra_float_digits = 3",
        )
        .await
        .map_err(db("starting the read transaction"))?;
    source
        .batch_execute(&query)
        .await
        .map_err(db(format!("reading {schema}.{name}")))
}

/// A fetched row as the tuple a captured change would carry (every value in its text form).
fn tuple(row: &SimpleQueryRow) -> Tuple {
    Tuple(
        (0..row.len())
            .map(|i| match row.get(i) {
                Some(text) => Datum::Text(bytes::Bytes::copy_from_slice(text.as_bytes())),
                None => Datum::Null,
            })
            .collect(),
    )
}

/// Counts `batch` into `report` and, unless this is a dry run (`control` is `None`), writes it to the
/// control table and wakes the dispatchers.
async fn record(
    control: Option<&Client>,
    control_schema: &str,
    batch: &[NewDelivery],
    report: &mut BackfillReport,
) -> Result<(), BackfillError> {
    report.deliveries += batch.len() as u64;
    for d in batch {
        *report
            .by_state
            .entry(d.state.as_str().to_string())
            .or_default() += 1;
    }
    if let Some(control) = control {
        if !batch.is_empty() {
            report.inserted += insert_deliveries(control, control_schema, batch).await?;
            control
                .execute(
                    "select pg_notify($1, '')",
                    &[&notify_channel(control_schema)],
                )
                .await
                .map_err(db("notifying dispatchers"))?;
        }
    }
    Ok(())
}

/// The column of `rule`'s event time (for an adjustment, the adjusted rule's).
fn default_column(config: &Config, rule: &str) -> Option<String> {
    let rule = config.rule(rule)?;
    let own = rule
        .event_time
        .as_deref()
        .and_then(|t| crate::config::Template::parse(t).ok())
        .and_then(|t| t.single_column().map(str::to_string));
    own.or_else(|| {
        let target = rule.retracts.as_deref().or(rule.restates.as_deref())?;
        let target = config.rule(target)?;
        if target.table != rule.table {
            return None;
        }
        default_column(config, &target.name)
    })
}

/// The table's current columns, as pgoutput would describe them.
async fn load_relation(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Relation, BackfillError> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let oid: Option<u32> = client
        .query_one("select to_regclass($1)::oid", &[&qualified])
        .await
        .map_err(db(format!("looking up {schema}.{name}")))?
        .get(0);
    let oid =
        oid.ok_or_else(|| BackfillError::Invalid(format!("table {schema}.{name} does not exist")))?;
    let rows = client
        .query(
            "select attname::text, atttypid, atttypmod from pg_attribute \
             where attrelid = $1 and attnum > 0 and not attisdropped order by attnum",
            &[&oid],
        )
        .await
        .map_err(db(format!("reading the columns of {schema}.{name}")))?;
    Ok(Relation {
        oid,
        namespace: schema.to_string(),
        name: name.to_string(),
        replica_identity: b'd',
        columns: rows
            .iter()
            .map(|r| RelationColumn {
                key: false,
                name: r.get(0),
                type_oid: r.get(1),
                type_modifier: r.get(2),
            })
            .collect(),
    })
}

//! `pgcapi setup`: prerequisites, control schema, publication and slot — idempotent.
//!
//! Setup changes only what pgcapi owns (its schema, publication and slot) unless asked to set replica
//! identities; everything else it checks and reports with the SQL a DBA would run.

use crate::config::{split_table, Config, Problem};
use crate::outbox::{quote_ident, MIGRATIONS};
use crate::rules::Rules;
use crate::source::ConnInfo;
use std::fmt::Write as _;
use tokio_postgres::Client;

/// Setup could not complete.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A connection failed.
    #[error("{what}: {message}")]
    Connect {
        /// Which database.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A statement failed.
    #[error("{what}: {source}")]
    Sql {
        /// What was being done.
        what: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database cannot run pgcapi as configured; every problem is listed.
    #[error("the database is not ready for pgcapi:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    NotReady(Vec<Problem>),
}

fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Sql { what, source }
}

/// What setup did and what the DBA still has to do.
#[derive(Debug, Default)]
pub struct Report {
    /// Things done or found in order.
    pub done: Vec<String>,
    /// Things the DBA must do, each with the SQL to do it.
    pub todo: Vec<String>,
}

impl Report {
    /// A readable summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.done {
            let _ = writeln!(out, "ok    {line}");
        }
        for line in &self.todo {
            let _ = writeln!(out, "TODO  {line}");
        }
        if self.todo.is_empty() {
            out.push_str("pgcapi is ready: start it with `pgcapi run --config FILE`.\n");
        }
        out
    }
}

/// Options of `pgcapi setup`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetupOptions {
    /// Set `REPLICA IDENTITY FULL` on watched tables that lack a usable replica identity.
    pub set_replica_identity_full: bool,
}

/// Opens a SQL connection for `url` (a config value; the URL itself is never printed).
pub async fn connect(url: &str, what: &'static str) -> Result<Client, SetupError> {
    let info: ConnInfo = url.parse().map_err(|e| SetupError::Connect {
        what,
        message: format!("{e}"),
    })?;
    crate::db::connect(&info)
        .await
        .map_err(|e| SetupError::Connect {
            what,
            message: crate::error_chain(&e),
        })
}

/// Installs the control schema in `client`'s database under `schema` (idempotent).
pub async fn install_control_schema(client: &Client, schema: &str) -> Result<(), SetupError> {
    for (name, text) in MIGRATIONS {
        let text = text
            .replace("pgcapi.", &format!("{}.", quote_ident(schema)))
            .replace(
                "create schema if not exists pgcapi;",
                &format!("create schema if not exists {};", quote_ident(schema)),
            );
        client
            .batch_execute(&text)
            .await
            .map_err(sql(format!("installing {name}")))?;
    }
    Ok(())
}

/// Checks the watched tables' columns against the rules; returns every problem.
pub async fn check_columns(client: &Client, rules: &Rules) -> Result<Vec<Problem>, SetupError> {
    let mut problems = Vec::new();
    for table in rules.tables() {
        let (schema, name) = split_table(&table);
        let rows = client
            .query(
                "select attname::text from pg_attribute a join pg_class c on c.oid = a.attrelid \
                 join pg_namespace n on n.oid = c.relnamespace \
                 where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped",
                &[&schema, &name],
            )
            .await
            .map_err(sql(format!("reading the columns of {table}")))?;
        if rows.is_empty() {
            problems.push(Problem {
                path: format!("rules (table {table})"),
                message: format!("table {table} does not exist"),
            });
            continue;
        }
        let columns: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for (rule, field, column) in rules.columns_of(&table) {
            if !columns.contains(&column) {
                problems.push(Problem {
                    path: format!("rules ({rule}).{field}"),
                    message: format!("table {table} has no column {column:?}"),
                });
            }
        }
    }
    Ok(problems)
}

/// The server's `wal_level` (`logical` is needed).
pub async fn wal_level(client: &Client) -> Result<String, SetupError> {
    Ok(client
        .query_one("show wal_level", &[])
        .await
        .map_err(sql("reading wal_level"))?
        .get(0))
}

/// Whether the connected role may open replication connections, and its name.
pub async fn replication_role(client: &Client) -> Result<(bool, String), SetupError> {
    let row = client
        .query_one(
            "select rolreplication or rolsuper, current_user::text from pg_roles \
             where rolname = current_user",
            &[],
        )
        .await
        .map_err(sql("reading the role's privileges"))?;
    Ok((row.get(0), row.get(1)))
}

/// The replica identity of an existing `table` (`schema.table`): its name and whether UPDATEs of the
/// table can be published with it.
pub async fn replica_identity(
    client: &Client,
    table: &str,
) -> Result<(&'static str, bool), SetupError> {
    let (schema, name) = split_table(table);
    let row = client
        .query_one(
            "select c.relreplident::text, exists (select 1 from pg_index i \
               where i.indrelid = c.oid and i.indisprimary) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2",
            &[&schema, &name],
        )
        .await
        .map_err(sql(format!("reading the replica identity of {table}")))?;
    let (identity, has_pk): (String, bool) = (row.get(0), row.get(1));
    Ok(match identity.as_str() {
        "f" => ("FULL", true),
        "i" => ("USING INDEX", true),
        "d" if has_pk => ("DEFAULT (primary key)", true),
        "d" => ("DEFAULT without a primary key", false),
        _ => ("NOTHING", false),
    })
}

/// The tables of `publication` as `schema.table`, sorted; `None` when it does not exist.
pub async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Option<Vec<String>>, SetupError> {
    let exists = client
        .query_opt(
            "select 1 from pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("reading the publication"))?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(
            "select schemaname::text || '.' || tablename::text from pg_publication_tables \
             where pubname = $1 order by 1",
            &[&publication],
        )
        .await
        .map_err(sql("reading the publication"))?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// The output plugin.
    pub plugin: String,
    /// The database it decodes.
    pub database: String,
    /// `reserved`, `extended`, `unreserved`, `lost` or empty.
    pub wal_status: String,
    /// The database `client` is connected to.
    pub current_database: String,
}

/// The slot named `slot`, if it exists.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, SetupError> {
    let row = client
        .query_opt(
            "select plugin::text, database::text, coalesce(wal_status, ''), \
               current_database()::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("reading the replication slot"))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        wal_status: r.get(2),
        current_database: r.get(3),
    }))
}

/// Runs setup: checks, control schema, publication, slot. A second run changes nothing.
pub async fn setup(config: &Config, options: SetupOptions) -> Result<Report, SetupError> {
    let mut report = Report::default();
    let source = connect(config.source.url.expose(), "source database").await?;
    let rules = Rules::new(config);

    // Server prerequisites.
    let wal_level = wal_level(&source).await?;
    if wal_level == "logical" {
        report.done.push("wal_level = logical".into());
    } else {
        report.todo.push(format!(
            "wal_level is {wal_level}; logical replication needs: ALTER SYSTEM SET wal_level = logical; \
             then restart PostgreSQL"
        ));
    }
    let (can_replicate, user) = replication_role(&source).await?;
    if can_replicate {
        report
            .done
            .push(format!("role {user} may open replication connections"));
    } else {
        report.todo.push(format!(
            "role {user} lacks the REPLICATION attribute: ALTER ROLE {} WITH REPLICATION;",
            quote_ident(&user)
        ));
    }

    // Tables and columns.
    let problems = check_columns(&source, &rules).await?;
    if !problems.is_empty() {
        return Err(SetupError::NotReady(problems));
    }
    report.done.push(format!(
        "tables {} have every column the rules read",
        rules.tables().join(", ")
    ));

    // Replica identity: updates of a published table without one fail on the source.
    for table in rules.tables() {
        let (schema, name) = split_table(&table);
        let (identity, usable) = replica_identity(&source, &table).await?;
        let qualified = format!("{}.{}", quote_ident(schema), quote_ident(name));
        if usable {
            report
                .done
                .push(format!("{table}: replica identity {identity} is usable"));
        } else if options.set_replica_identity_full {
            source
                .batch_execute(&format!("alter table {qualified} replica identity full"))
                .await
                .map_err(sql(format!("setting the replica identity of {table}")))?;
            report
                .done
                .push(format!("{table}: replica identity set to FULL (as asked)"));
        } else {
            report.todo.push(format!(
                "{table} has no usable replica identity, so UPDATEs on it would fail once it is \
                 published: add a primary key, or ALTER TABLE {qualified} REPLICA IDENTITY FULL; \
                 (or rerun setup with --set-replica-identity-full)"
            ));
        }
    }

    // Control schema.
    let control_is_source = config.source.control_url.is_none();
    let control = if control_is_source {
        None
    } else {
        Some(connect(config.source.control_url().expose(), "control database").await?)
    };
    install_control_schema(control.as_ref().unwrap_or(&source), &config.source.schema).await?;
    report.done.push(format!(
        "control schema {} installed (pgcapi.deliveries, pgcapi.checkpoints)",
        config.source.schema
    ));

    // Publication: exactly the rules' tables.
    let publication = &config.source.publication;
    let tables: Vec<String> = rules
        .tables()
        .iter()
        .map(|t| {
            let (s, n) = split_table(t);
            format!("{}.{}", quote_ident(s), quote_ident(n))
        })
        .collect();
    let existing = publication_tables(&source, publication).await?;
    let exists = existing.is_some();
    let current = existing.unwrap_or_default();
    if !exists {
        source
            .batch_execute(&format!(
                "create publication {} for table {} with (publish = 'insert, update, delete')",
                quote_ident(publication),
                tables.join(", ")
            ))
            .await
            .map_err(sql("creating the publication"))?;
        report.done.push(format!(
            "publication {publication} created for {}",
            rules.tables().join(", ")
        ));
    }
    // Deletes are published (rules' on_delete, README "Refunds and deletes"); installations made
    // by earlier versions published inserts and updates only.
    let publishes_deletes = source
        .query_opt(
            "select pubdelete from pg_publication where pubname = $1",
            &[publication],
        )
        .await
        .map_err(sql("reading the publication"))?
        .is_none_or(|r| r.get::<_, bool>(0));
    if !publishes_deletes {
        source
            .batch_execute(&format!(
                "alter publication {} set (publish = 'insert, update, delete')",
                quote_ident(publication)
            ))
            .await
            .map_err(sql("publishing deletes"))?;
        report
            .done
            .push(format!("publication {publication} now publishes deletes"));
    }
    if exists && current != rules.tables() {
        source
            .batch_execute(&format!(
                "alter publication {} set table {}",
                quote_ident(publication),
                tables.join(", ")
            ))
            .await
            .map_err(sql("updating the publication"))?;
        report.done.push(format!(
            "publication {publication} now covers exactly {}",
            rules.tables().join(", ")
        ));
    } else if exists {
        report.done.push(format!(
            "publication {publication} covers {}",
            rules.tables().join(", ")
        ));
    }

    // Slot.
    let slot = &config.source.slot;
    match slot_info(&source, slot).await? {
        Some(SlotInfo {
            plugin,
            database,
            wal_status,
            current_database: current_db,
        }) => {
            if plugin != "pgoutput" || database != current_db {
                return Err(SetupError::NotReady(vec![Problem {
                    path: "source.slot".into(),
                    message: format!(
                        "slot {slot:?} exists with plugin {plugin} on database {database}; pgcapi \
                         needs a pgoutput slot on {current_db}: choose another slot name"
                    ),
                }]));
            }
            if wal_status == "lost" {
                report.todo.push(format!(
                    "slot {slot} is lost (its WAL was removed): drop it with \
                     SELECT pg_drop_replication_slot('{slot}'); rerun setup, and backfill"
                ));
            } else {
                report
                    .done
                    .push(format!("replication slot {slot} (pgoutput) exists"));
            }
        }
        None if wal_level == "logical" => {
            source
                .query(
                    "select pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[slot],
                )
                .await
                .map_err(sql("creating the replication slot"))?;
            report
                .done
                .push(format!("replication slot {slot} created (pgoutput)"));
        }
        None => report.todo.push(format!(
            "replication slot {slot} not created yet: rerun setup once wal_level = logical"
        )),
    }
    let max_keep: String = source
        .query_one("show max_slot_wal_keep_size", &[])
        .await
        .map_err(sql("reading max_slot_wal_keep_size"))?
        .get(0);
    if max_keep == "-1" {
        report.done.push(
            "max_slot_wal_keep_size is unlimited: consider a bound, e.g. ALTER SYSTEM SET \
             max_slot_wal_keep_size = '10GB'; so a stopped pgcapi cannot fill the disk"
                .into(),
        );
    }
    Ok(report)
}

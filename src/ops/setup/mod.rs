//! `pgcapi setup`: prerequisites, control schema, publication and slot — idempotent.
//!
//! Setup changes only what pgcapi owns (its schema, publication and slot) unless asked to set replica
//! identities; everything else it checks and reports with the SQL a DBA would run.
//!
//! Least privilege: a role with only `LOGIN REPLICATION`, `SELECT` on the tables and `CREATE` on the
//! database may create the control schema and the slot, but not a publication for tables it does not
//! own, nor change their replica identity (PostgreSQL requires the tables' owner or a superuser). For
//! those setup prints the exact SQL and who must run it ([`Report::sql`]) and `pgcapi setup` exits with
//! [`DBA_EXIT`]; once that SQL was applied, the next run completes. The slot is created only once the
//! publication exists: decoding a change made between the slot's creation and the publication's
//! fails on the missing publication.

use crate::config::{Config, Problem};
use crate::outbox::quote_ident;
use crate::pg::catalog::{self, CatalogError};
use crate::pg::ConnInfo;
use crate::rules::Rules;
use std::fmt::Write as _;
use tokio_postgres::Client;

mod role;
mod tables;

use role::insufficient_privilege;
pub use role::{privileges, publication_refusal, Privileges};
pub use tables::{
    alter_publication_sql, create_publication_sql, qualified, rule_columns, toast_advice,
    toast_advice_text,
};

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
    #[error("{what}: {}", crate::pg::client::describe(source))]
    Sql {
        /// What was being done.
        what: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A catalog read failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The database cannot run pgcapi as configured; every problem is listed.
    #[error("the database is not ready for pgcapi:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    NotReady(Vec<Problem>),
}

fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Sql { what, source }
}

/// Exit code of `pgcapi setup` when something is left for the DBA (the SQL is printed).
pub const DBA_EXIT: u8 = 3;

/// A statement setup may not run with its role, and who may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbaSql {
    /// Who runs it (`the owner of public.orders (role shop_owner), or a superuser`).
    pub who: String,
    /// The statement, ending with `;`.
    pub statement: String,
}

/// What setup did and what the DBA still has to do.
#[derive(Debug, Default)]
pub struct Report {
    /// Things done or found in order.
    pub done: Vec<String>,
    /// Things the DBA must do, each with the SQL to do it.
    pub todo: Vec<String>,
    /// The statements of `todo` that setup's role may not run, to hand to the DBA as they are.
    pub sql: Vec<DbaSql>,
    /// Things that work but that the DBA should know about (a trade-off to choose).
    pub warnings: Vec<String>,
}

impl Report {
    /// A readable summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.done {
            let _ = writeln!(out, "ok    {line}");
        }
        for line in &self.warnings {
            let _ = writeln!(out, "WARN  {line}");
        }
        for line in &self.todo {
            let _ = writeln!(out, "TODO  {line}");
        }
        if !self.sql.is_empty() {
            out.push_str(
                "\nThis role may not do the following. Hand this SQL to the DBA, then run \
                 `pgcapi setup` again:\n",
            );
            for item in &self.sql {
                let _ = writeln!(out, "\n-- run as {}:\n{}", item.who, item.statement);
            }
        }
        if self.todo.is_empty() {
            out.push_str("pgcapi is ready: start it with `pgcapi run --config FILE`.\n");
        }
        out
    }

    /// 0 when pgcapi is ready, [`DBA_EXIT`] when something is left to do.
    pub fn exit_code(&self) -> u8 {
        if self.todo.is_empty() {
            0
        } else {
            DBA_EXIT
        }
    }

    fn dba(&mut self, todo: String, who: String, statement: String) {
        self.todo.push(todo);
        self.sql.push(DbaSql { who, statement });
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
    crate::pg::client::connect(&info)
        .await
        .map_err(|e| SetupError::Connect {
            what,
            message: crate::pg::error_chain(&e),
        })
}

/// Installs the control schema in `client`'s database under `schema` (idempotent; see
/// [`Outbox::install`](crate::outbox::Outbox::install)).
pub async fn install_control_schema(client: &Client, schema: &str) -> Result<(), SetupError> {
    crate::outbox::Outbox::new(schema)
        .install(client)
        .await
        .map_err(|e| SetupError::Sql {
            what: format!("installing {}", e.file),
            source: e.source,
        })
}

/// Checks the watched tables' columns against the rules; returns every problem.
pub async fn check_columns(client: &Client, rules: &Rules) -> Result<Vec<Problem>, SetupError> {
    Ok(catalog::check_columns(client, &rules.tables(), |t| rules.columns_of(t)).await?)
}
/// Runs setup: checks, control schema, publication, slot. A second run changes nothing.
pub async fn setup(config: &Config, options: SetupOptions) -> Result<Report, SetupError> {
    let mut report = Report::default();
    let source = connect(config.source.url.expose(), "source database").await?;
    let rules = Rules::new(config);

    // Server prerequisites.
    let wal_level = catalog::wal_level(&source).await?;
    if wal_level == "logical" {
        report.done.push("wal_level = logical".into());
    } else {
        report.todo.push(format!(
            "wal_level is {wal_level}; logical replication needs: ALTER SYSTEM SET wal_level = logical; \
             then restart PostgreSQL"
        ));
    }
    let (can_replicate, user) = catalog::replication_role(&source).await?;
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

    // What this role may do to the tables and the publication.
    let publication = &config.source.publication;
    let privileges = privileges(&source, &rules.tables(), publication).await?;

    // Replica identity: updates of a published table without one fail on the source.
    for table in rules.tables() {
        let (identity, usable) = catalog::replica_identity(&source, &table).await?;
        let qualified = qualified(&table);
        let owner = privileges
            .not_owned
            .iter()
            .find(|(t, _)| *t == table)
            .map(|(_, o)| o.clone());
        let statement = format!("ALTER TABLE {qualified} REPLICA IDENTITY FULL;");
        if usable {
            report.done.push(format!(
                "{table}: replica identity {identity} lets its UPDATEs be published"
            ));
            let columns = rule_columns(&rules, &table);
            if let Some(advice) = toast_advice(&source, &table, &columns).await? {
                report.warnings.push(advice);
            }
        } else if let Some(owner) = owner {
            report.dba(
                format!(
                    "{table} has no usable replica identity, so UPDATEs on it would fail once it is \
                     published; role {} does not own it: its owner adds a primary key or runs \
                     {statement}",
                    privileges.user
                ),
                format!("role {owner} (the owner of {table}) or a superuser"),
                statement,
            );
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
                 published: add a primary key, or {statement} (or rerun setup with \
                 --set-replica-identity-full)"
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
    match install_control_schema(control.as_ref().unwrap_or(&source), &config.source.schema).await {
        Ok(()) => report.done.push(format!(
            "control schema {} installed (pgcapi.deliveries, pgcapi.checkpoints)",
            config.source.schema
        )),
        Err(SetupError::Sql { source: e, .. }) if insufficient_privilege(&e) => {
            let client = control.as_ref().unwrap_or(&source);
            let row = client
                .query_one(
                    "select current_database()::text, current_user::text, \
                       (select pg_get_userbyid(nspowner)::text from pg_namespace \
                         where nspname = $1 and not pg_has_role(current_user, nspowner, 'USAGE'))",
                    &[&config.source.schema],
                )
                .await
                .map_err(sql("reading the control database's name"))?;
            let (database, user, owner): (String, String, Option<String>) =
                (row.get(0), row.get(1), row.get(2));
            if let Some(owner) = owner {
                report.todo.push(format!(
                    "the control schema {} belongs to role {owner}, so role {user} may not update \
                     it ({}): run `pgcapi setup` once as role {owner} or a superuser",
                    config.source.schema,
                    crate::pg::client::describe(&e)
                ));
            } else {
                report.dba(
                    format!(
                        "role {user} may not create the control schema {} ({}): it needs CREATE \
                         on database {database}",
                        config.source.schema,
                        crate::pg::client::describe(&e)
                    ),
                    format!("the owner of database {database} or a superuser"),
                    format!(
                        "GRANT CREATE ON DATABASE {} TO {};",
                        quote_ident(&database),
                        quote_ident(&user)
                    ),
                );
            }
        }
        Err(e) => return Err(e),
    }

    // Publication: exactly the rules' tables.
    let tables = rules.tables();
    let existing = catalog::publication_tables(&source, publication).await?;
    let exists = existing.is_some();
    let current = existing.unwrap_or_default();
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
    let mut statements = Vec::new();
    if !exists {
        statements.push(create_publication_sql(publication, &tables));
    } else if current != tables {
        statements.push(alter_publication_sql(publication, &tables));
    }
    if exists && !publishes_deletes {
        statements.push(format!(
            "ALTER PUBLICATION {} SET (publish = 'insert, update, delete');",
            quote_ident(publication)
        ));
    }
    let statement = (!statements.is_empty()).then(|| statements.join("\n"));
    let mut publication_ready = exists;
    match statement {
        None => report.done.push(format!(
            "publication {publication} covers {}",
            tables.join(", ")
        )),
        Some(statement) => {
            let why_not = if privileges.may_manage_publication() {
                match source.batch_execute(&statement).await {
                    Ok(()) => None,
                    Err(e) if insufficient_privilege(&e) => Some(crate::pg::client::describe(&e)),
                    Err(e) => {
                        return Err(SetupError::Sql {
                            what: if exists {
                                "updating the publication".into()
                            } else {
                                "creating the publication".into()
                            },
                            source: e,
                        })
                    }
                }
            } else {
                Some(publication_refusal(&privileges))
            };
            match why_not {
                None => {
                    publication_ready = true;
                    report.done.push(if exists {
                        format!(
                            "publication {publication} now covers exactly {}",
                            tables.join(", ")
                        )
                    } else {
                        format!(
                            "publication {publication} created for {}",
                            tables.join(", ")
                        )
                    });
                }
                Some(why) => report.dba(
                    format!(
                        "publication {publication} {} [{}]; role {} may not {} it: {why}",
                        if exists {
                            format!("covers [{}] instead of", current.join(", "))
                        } else {
                            "is needed for".into()
                        },
                        tables.join(", "),
                        privileges.user,
                        if exists { "change" } else { "create" },
                    ),
                    privileges.who(),
                    statement,
                ),
            }
        }
    }

    // Slot.
    let slot = &config.source.slot;
    match catalog::slot(&source, slot).await? {
        Some(catalog::Slot {
            plugin,
            database,
            wal_status,
            current_database: current_db,
            ..
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
            if wal_status.as_deref() == Some("lost") {
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
        None if !publication_ready => report.todo.push(format!(
            "replication slot {slot} is created by the next `pgcapi setup` once publication \
             {publication} exists (a slot made before its publication cannot decode the changes \
             in between)"
        )),
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

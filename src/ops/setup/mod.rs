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
use crate::pg::catalog::{self, CatalogError};
use crate::pg::ConnInfo;
use crate::rules::Rules;
use std::fmt::Write as _;
use tokio_postgres::Client;

mod role;
mod steps;
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
    let logical = steps::prerequisites(&source, &mut report).await?;

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
    steps::replica_identities(&source, &rules, &privileges, options, &mut report).await?;
    steps::control_schema(config, &source, &mut report).await?;
    let tables = rules.tables();
    let publication_ready =
        steps::publication(&source, publication, &tables, &privileges, &mut report).await?;
    steps::slot(&source, config, publication_ready, logical, &mut report).await?;
    steps::slot_wal_bound(&source, &mut report).await?;
    Ok(report)
}

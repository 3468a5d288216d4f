//! The steps of [`setup`](super::setup), in the order it runs them: server prerequisites, replica
//! identities, the control schema, the publication, the slot. Each records in the report what it did,
//! or what is left and for whom.

use super::{
    alter_publication_sql, connect, create_publication_sql, install_control_schema,
    insufficient_privilege, publication_refusal, qualified, rule_columns, sql, toast_advice,
    Privileges, Report, SetupError, SetupOptions,
};
use crate::config::{Config, Problem};
use crate::outbox::quote_ident;
use crate::pg::catalog;
use crate::rules::Rules;
use tokio_postgres::Client;

/// `wal_level` and the role's REPLICATION attribute; returns whether `wal_level` is logical.
pub(super) async fn prerequisites(
    source: &Client,
    report: &mut Report,
) -> Result<bool, SetupError> {
    let wal_level = catalog::wal_level(source).await?;
    if wal_level == "logical" {
        report.done.push("wal_level = logical".into());
    } else {
        report.todo.push(format!(
            "wal_level is {wal_level}; logical replication needs: ALTER SYSTEM SET wal_level = logical; \
             then restart PostgreSQL"
        ));
    }
    let (can_replicate, user) = catalog::replication_role(source).await?;
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
    Ok(wal_level == "logical")
}

/// Replica identity: updates of a published table without one fail on the source.
pub(super) async fn replica_identities(
    source: &Client,
    rules: &Rules,
    privileges: &Privileges,
    options: SetupOptions,
    report: &mut Report,
) -> Result<(), SetupError> {
    for table in rules.tables() {
        let (identity, usable) = catalog::replica_identity(source, &table).await?;
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
            let columns = rule_columns(rules, &table);
            if let Some(advice) = toast_advice(source, &table, &columns).await? {
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
    Ok(())
}

/// Installs the control schema in the control database (the source database unless it is separate).
pub(super) async fn control_schema(
    config: &Config,
    source: &Client,
    report: &mut Report,
) -> Result<(), SetupError> {
    let control_is_source = config.source.control_url.is_none();
    let control = if control_is_source {
        None
    } else {
        Some(connect(config.source.control_url().expose(), "control database").await?)
    };
    let schema = &config.source.schema;
    match install_control_schema(control.as_ref().unwrap_or(source), schema).await {
        Ok(()) => report.done.push(format!(
            "control schema {schema} installed (pgcapi.deliveries, pgcapi.checkpoints)"
        )),
        Err(SetupError::Sql { source: e, .. }) if insufficient_privilege(&e) => {
            let client = control.as_ref().unwrap_or(source);
            control_schema_refused(client, schema, &e, report).await?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The role may not install the control schema (`refusal`): says who may, with the SQL when it is a
/// grant of CREATE on the database.
async fn control_schema_refused(
    client: &Client,
    schema: &str,
    refusal: &tokio_postgres::Error,
    report: &mut Report,
) -> Result<(), SetupError> {
    let row = client
        .query_one(
            "select current_database()::text, current_user::text, \
               (select pg_get_userbyid(nspowner)::text from pg_namespace \
                 where nspname = $1 and not pg_has_role(current_user, nspowner, 'USAGE'))",
            &[&schema],
        )
        .await
        .map_err(sql("reading the control database's name"))?;
    let (database, user, owner): (String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    if let Some(owner) = owner {
        report.todo.push(format!(
            "the control schema {schema} belongs to role {owner}, so role {user} may not update \
             it ({}): run `pgcapi setup` once as role {owner} or a superuser",
            crate::pg::client::describe(refusal)
        ));
    } else {
        report.dba(
            format!(
                "role {user} may not create the control schema {schema} ({}): it needs CREATE \
                 on database {database}",
                crate::pg::client::describe(refusal)
            ),
            format!("the owner of database {database} or a superuser"),
            format!(
                "GRANT CREATE ON DATABASE {} TO {};",
                quote_ident(&database),
                quote_ident(&user)
            ),
        );
    }
    Ok(())
}

/// The publication, exactly the rules' `tables`: created or changed when the role may, else the SQL
/// for the DBA. Returns whether the publication exists now.
pub(super) async fn publication(
    source: &Client,
    publication: &str,
    tables: &[String],
    privileges: &Privileges,
    report: &mut Report,
) -> Result<bool, SetupError> {
    let existing = catalog::publication_tables(source, publication).await?;
    let exists = existing.is_some();
    let current = existing.unwrap_or_default();
    // Deletes are published (rules' on_delete, README "Refunds and deletes"); installations made
    // by earlier versions published inserts and updates only.
    let publishes_deletes = source
        .query_opt(
            "select pubdelete from pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("reading the publication"))?
        .is_none_or(|r| r.get::<_, bool>(0));
    let mut statements = Vec::new();
    if !exists {
        statements.push(create_publication_sql(publication, tables));
    } else if current != tables {
        statements.push(alter_publication_sql(publication, tables));
    }
    if exists && !publishes_deletes {
        statements.push(format!(
            "ALTER PUBLICATION {} SET (publish = 'insert, update, delete');",
            quote_ident(publication)
        ));
    }
    if statements.is_empty() {
        report.done.push(format!(
            "publication {publication} covers {}",
            tables.join(", ")
        ));
        return Ok(exists);
    }
    let statement = statements.join("\n");
    match try_publication(source, &statement, exists, privileges).await? {
        None => {
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
            Ok(true)
        }
        Some(why) => {
            report.dba(
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
            );
            Ok(exists)
        }
    }
}

/// Runs the publication's `statement` when the role may: `None` when it ran, else why it may not.
async fn try_publication(
    source: &Client,
    statement: &str,
    exists: bool,
    privileges: &Privileges,
) -> Result<Option<String>, SetupError> {
    if !privileges.may_manage_publication() {
        return Ok(Some(publication_refusal(privileges)));
    }
    match source.batch_execute(statement).await {
        Ok(()) => Ok(None),
        Err(e) if insufficient_privilege(&e) => Ok(Some(crate::pg::client::describe(&e))),
        Err(e) => Err(SetupError::Sql {
            what: if exists {
                "updating the publication".into()
            } else {
                "creating the publication".into()
            },
            source: e,
        }),
    }
}

/// The slot: checked when it exists, created once the publication exists and `wal_level` is logical.
pub(super) async fn slot(
    source: &Client,
    config: &Config,
    publication_ready: bool,
    logical: bool,
    report: &mut Report,
) -> Result<(), SetupError> {
    let slot = &config.source.slot;
    let publication = &config.source.publication;
    match catalog::slot(source, slot).await? {
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
        None if logical => {
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
    Ok(())
}

/// A note when slots may retain WAL without bound (`max_slot_wal_keep_size = -1`).
pub(super) async fn slot_wal_bound(source: &Client, report: &mut Report) -> Result<(), SetupError> {
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
    Ok(())
}

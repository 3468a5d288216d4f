//! Reads of the source server's catalog and slot state: `wal_level`, the role's replication
//! attribute, replica identities, a publication's tables, a table's columns, and the replication slot.
//! Setup, check, capture, status and metrics all ask these questions; the SQL lives here once.

use crate::config::{split_table, Problem};
use crate::lsn::Lsn;
use tokio_postgres::Client;

/// A catalog read failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", crate::pg::client::describe(source))]
pub struct CatalogError {
    /// What was being read.
    pub what: String,
    /// The database error.
    #[source]
    pub source: tokio_postgres::Error,
}

fn reading(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
    let what = what.into();
    move |source| CatalogError { what, source }
}

/// The server's `wal_level` (`logical` is needed).
pub async fn wal_level(client: &Client) -> Result<String, CatalogError> {
    Ok(client
        .query_one("show wal_level", &[])
        .await
        .map_err(reading("reading wal_level"))?
        .get(0))
}

/// Whether the connected role may open replication connections, and its name.
pub async fn replication_role(client: &Client) -> Result<(bool, String), CatalogError> {
    let row = client
        .query_one(
            "select rolreplication or rolsuper, current_user::text from pg_roles \
             where rolname = current_user",
            &[],
        )
        .await
        .map_err(reading("reading the role's privileges"))?;
    Ok((row.get(0), row.get(1)))
}

/// The replica identity of an existing `table` (`schema.table`): its name and whether UPDATEs of the
/// table can be published with it.
pub async fn replica_identity(
    client: &Client,
    table: &str,
) -> Result<(&'static str, bool), CatalogError> {
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
        .map_err(reading(format!("reading the replica identity of {table}")))?;
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
) -> Result<Option<Vec<String>>, CatalogError> {
    let exists = client
        .query_opt(
            "select 1 from pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(reading("reading the publication"))?
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
        .map_err(reading("reading the publication"))?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

/// The live columns of `table` (`schema.table`) in order; empty when the table does not exist.
pub async fn table_columns(client: &Client, table: &str) -> Result<Vec<String>, CatalogError> {
    let (schema, name) = split_table(table);
    let rows = client
        .query(
            "select attname::text from pg_attribute a join pg_class c on c.oid = a.attrelid \
             join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped",
            &[&schema, &name],
        )
        .await
        .map_err(reading(format!("reading the columns of {table}")))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Checks that each of `tables` exists and has the columns `reads(table)` names, as
/// `(rule, config field, column)` (the rules' `columns_of`); returns every problem. The reads come
/// in as a function so that this plumbing need not know the rules.
pub async fn check_columns(
    client: &Client,
    tables: &[String],
    reads: impl Fn(&str) -> Vec<(String, String, String)>,
) -> Result<Vec<Problem>, CatalogError> {
    let mut problems = Vec::new();
    for table in tables {
        let columns = table_columns(client, table).await?;
        if columns.is_empty() {
            problems.push(Problem {
                path: format!("rules (table {table})"),
                message: format!("table {table} does not exist"),
            });
            continue;
        }
        for (rule, field, column) in reads(table) {
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

/// A replication slot as `pg_replication_slots` shows it, read by [`slot`].
#[derive(Debug, Clone)]
pub struct Slot {
    /// The output plugin.
    pub plugin: String,
    /// The database it decodes.
    pub database: String,
    /// The database the reading connection is on.
    pub current_database: String,
    /// Whether a walsender streams from it now.
    pub active: bool,
    /// That walsender's process id.
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes of WAL that may still be written before the slot is at risk of being lost.
    pub safe_wal_size: Option<i64>,
    /// Bytes of WAL the slot holds back (from its `restart_lsn` to the server's current position).
    pub wal_retained_bytes: Option<i64>,
    /// Where the consumer confirmed it has everything.
    pub confirmed_flush: Option<Lsn>,
    /// Bytes from `confirmed_flush` to the server's current position (replication lag).
    pub lag_bytes: Option<i64>,
}

/// The slot named `slot`, if it exists. On a standby the server's position is the last WAL received.
pub async fn slot(client: &Client, slot: &str) -> Result<Option<Slot>, CatalogError> {
    let row = client
        .query_opt(
            "with now as (select case when pg_is_in_recovery() then pg_last_wal_receive_lsn() \
               else pg_current_wal_lsn() end as lsn) \
             select coalesce(plugin::text, ''), coalesce(database::text, ''), current_database()::text, active, active_pid, \
               wal_status, safe_wal_size, pg_wal_lsn_diff(now.lsn, restart_lsn)::bigint, \
               confirmed_flush_lsn::text, pg_wal_lsn_diff(now.lsn, confirmed_flush_lsn)::bigint \
             from pg_replication_slots, now where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(reading("reading the replication slot"))?;
    let Some(row) = row else { return Ok(None) };
    let confirmed_flush = row
        .get::<_, Option<String>>(8)
        .and_then(|text| text.parse().ok());
    Ok(Some(Slot {
        plugin: row.get(0),
        database: row.get(1),
        current_database: row.get(2),
        active: row.get(3),
        active_pid: row.get(4),
        wal_status: row.get(5),
        safe_wal_size: row.get(6),
        wal_retained_bytes: row.get(7),
        confirmed_flush,
        lag_bytes: row.get(9),
    }))
}

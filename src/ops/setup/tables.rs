//! The watched tables in SQL: quoted names, the publication's statements, the columns the rules read
//! and the advice on large (TOASTed) values.

use super::{sql, SetupError};
use crate::config::split_table;
use crate::outbox::quote_ident;
use crate::rules::Rules;
use tokio_postgres::Client;

/// `schema.table` quoted for SQL.
pub fn qualified(table: &str) -> String {
    let (schema, name) = split_table(table);
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `tables` quoted and comma-separated, as a publication names them.
fn table_list(tables: &[String]) -> String {
    tables
        .iter()
        .map(|t| qualified(t))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `CREATE PUBLICATION` statement for `tables`.
pub fn create_publication_sql(publication: &str, tables: &[String]) -> String {
    format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete');",
        quote_ident(publication),
        table_list(tables)
    )
}

/// The `ALTER PUBLICATION … SET TABLE` statement for `tables`.
pub fn alter_publication_sql(publication: &str, tables: &[String]) -> String {
    format!(
        "ALTER PUBLICATION {} SET TABLE {};",
        quote_ident(publication),
        table_list(tables)
    )
}

/// The advice on large values for `table` (`schema.table`), given the `columns` the rules read from it:
/// `Some` when some of them can hold out-of-line (TOASTed) values (a varlena type whose storage is not
/// `plain`: text, varchar, jsonb, bytea, ...) and the replica identity is DEFAULT or USING INDEX, so
/// that an UPDATE leaving such a value unchanged does not write it to the WAL. Types whose values never
/// exceed the 24-odd bytes below which PostgreSQL never moves a value out of line are left out: `inet`,
/// `cidr`, `numeric` of precision up to 28, `char(n)` / `varchar(n)` up to 5.
pub async fn toast_advice(
    client: &Client,
    table: &str,
    columns: &[String],
) -> Result<Option<String>, SetupError> {
    let (schema, name) = split_table(table);
    let row = client
        .query_opt(
            "select c.relreplident::text, \
               coalesce(array_agg(a.attname::text order by a.attnum) \
                 filter (where a.attname is not null), '{}') \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 \
               and not a.attisdropped and a.attlen = -1 and a.attstorage <> 'p' \
               and a.attname = any($3) \
               and a.atttypid not in ('inet'::regtype, 'cidr'::regtype) \
               and not (a.atttypid = 'numeric'::regtype and a.atttypmod >= 4 \
                 and ((a.atttypmod - 4) >> 16) <= 28) \
               and not (a.atttypid in ('varchar'::regtype, 'bpchar'::regtype) \
                 and a.atttypmod between 5 and 9) \
             where n.nspname = $1 and c.relname = $2 \
             group by c.relreplident",
            &[&schema, &name, &columns],
        )
        .await
        .map_err(sql(format!("reading the column types of {table}")))?;
    let Some(row) = row else { return Ok(None) };
    let (identity, toastable): (String, Vec<String>) = (row.get(0), row.get(1));
    let identity = match identity.as_str() {
        "d" => "DEFAULT",
        "i" => "USING INDEX",
        _ => return Ok(None),
    };
    if toastable.is_empty() {
        return Ok(None);
    }
    Ok(Some(toast_advice_text(table, identity, &toastable)))
}

/// The text of [`toast_advice`].
pub fn toast_advice_text(table: &str, identity: &str, columns: &[String]) -> String {
    let (schema, name) = split_table(table);
    format!(
        "{table}: mapped column(s) {} can hold large (TOASTed) values, and under replica identity \
         {identity} an UPDATE that leaves such a value unchanged does not write it to the WAL. pgcapi \
         then reads it back by the table's key: one extra query per such change, and the value read \
         is the row's current one (newer than the change if the row changed since; none if it was \
         deleted, and the event goes without it). To have exact values from the WAL instead, at the \
         cost of more WAL per UPDATE (the whole old row is written): ALTER TABLE {}.{} REPLICA \
         IDENTITY FULL;",
        columns.join(", "),
        quote_ident(schema),
        quote_ident(name)
    )
}

/// The distinct columns the rules read from `table`, in first-use order.
pub fn rule_columns(rules: &Rules, table: &str) -> Vec<String> {
    let mut columns: Vec<String> = Vec::new();
    for (_, _, column) in rules.columns_of(table) {
        if !columns.contains(&column) {
            columns.push(column);
        }
    }
    columns
}

//! Reading back unchanged TOAST values.
//!
//! Under `REPLICA IDENTITY DEFAULT` (or `INDEX`) an UPDATE that leaves a large out-of-line (TOASTed)
//! value untouched writes no copy of it to the WAL: pgoutput sends the column as "unchanged TOAST" and
//! no old row image to take it from. When a rule needs such a column for the change, capture reads the
//! row's current value from the source by its replica-identity key (the columns pgoutput flags in the
//! Relation message, with their values from the new tuple). The value read is the row's value now,
//! which may be newer than the change if the row changed since. When that is impossible (no usable key,
//! the row is gone, the query is refused), the change is recorded without the value; a lost connection
//! is an outage, retried.

use crate::decode::{Datum, Relation, Tuple};
use crate::outbox::quote_ident;
use bytes::{Bytes, BytesMut};
use std::error::Error;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

/// Settings of the read-back connection: the formats of the replication connection, so that values
/// read back are written as pgoutput writes them and key values from the WAL parse the same way;
/// bounds on waiting for a lock (an `ALTER TABLE` in progress) or a slow statement, both retried; read
/// only; an empty `search_path`, so that `=` and `::text` can only mean the built-in ones; and a name
/// for `pg_stat_activity`.
pub(super) const SESSION_SETTINGS: &str = "set datestyle = 'ISO'; set timezone = 'UTC'; \
     set extra_float_digits = 3; set lock_timeout = '10s'; set statement_timeout = '60s'; \
     set default_transaction_read_only = on; set search_path = ''; \
     set application_name = 'pgcapi read-back'";

/// Why a read-back did not give values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// An outage (connection lost, lock or statement timeout, server shutting down): retry.
    Retry(String),
    /// It cannot succeed for this change: record the event without the values, for this reason.
    Unresolved(String),
}

/// The replica-identity key of the row: (column name, value as text) for each key column.
pub(super) fn key_of(relation: &Relation, new: &Tuple) -> Result<Vec<(String, Bytes)>, Failure> {
    let mut key = Vec::new();
    for (i, column) in relation.columns.iter().enumerate() {
        if !column.key {
            continue;
        }
        match new.0.get(i) {
            Some(Datum::Text(value)) => key.push((column.name.clone(), value.clone())),
            _ => {
                return Err(Failure::Unresolved(format!(
                    "key column {:?} has no value in the change",
                    column.name
                )))
            }
        }
    }
    if key.is_empty() {
        return Err(Failure::Unresolved(format!(
            "table {} has no replica identity key to find the row by",
            relation.qualified_name()
        )));
    }
    Ok(key)
}

/// The query reading `columns` of one row of `relation` by its key columns (`$1`, `$2`, ...).
pub(super) fn read_back_sql(
    relation: &Relation,
    key: &[(String, Bytes)],
    columns: &[usize],
) -> String {
    let selected: Vec<String> = columns
        .iter()
        .map(|&i| format!("{}::text", quote_ident(&relation.columns[i].name)))
        .collect();
    let condition: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(n, (name, _))| format!("{} = ${}", quote_ident(name), n + 1))
        .collect();
    format!(
        "select {} from {}.{} where {}",
        selected.join(", "),
        quote_ident(&relation.namespace),
        quote_ident(&relation.name),
        condition.join(" and ")
    )
}

/// Reads the current values of `columns` (text, `None` for NULL) of the row with `key`.
pub(super) async fn read_back(
    client: &tokio_postgres::Client,
    relation: &Relation,
    key: &[(String, Bytes)],
    columns: &[usize],
) -> Result<Vec<Option<String>>, Failure> {
    let sql = read_back_sql(relation, key, columns);
    let params: Vec<TextParam> = key.iter().map(|(_, v)| TextParam(v)).collect();
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    match client.query_opt(&sql, &params).await {
        Ok(Some(row)) => (0..columns.len())
            .map(|i| row.try_get::<_, Option<String>>(i))
            .collect::<Result<_, _>>()
            .map_err(|e| Failure::Unresolved(format!("unexpected answer: {e}"))),
        Ok(None) => Err(Failure::Unresolved(
            "the row no longer exists (deleted since, or its key changed)".to_string(),
        )),
        Err(e) => Err(classify(&e)),
    }
}

/// Sorts a failed read-back query into an outage to retry or a refusal that will not change on retry.
/// The message never carries a value: only the SQLSTATE, and the server's text for errors about
/// objects and privileges (which name tables and columns, not values).
pub(super) fn classify(e: &tokio_postgres::Error) -> Failure {
    let Some(db) = e.as_db_error() else {
        // No answer from the server: the connection is gone (or never was).
        return Failure::Retry(crate::pg::error_chain(e));
    };
    let code = db.code().code();
    let retry = e.is_closed()
        || crate::pg::is_connection_loss(code)
        // lock_not_available (lock_timeout), query_canceled (statement_timeout), serialization,
        // deadlock, operator intervention.
        || matches!(code, "55P03" | "57014" | "40001" | "40P01")
        || code.starts_with("57");
    let text = if code.starts_with("42") {
        format!("{} (SQLSTATE {code})", db.message())
    } else {
        format!("the query failed with SQLSTATE {code}")
    };
    if retry {
        Failure::Retry(text)
    } else {
        Failure::Unresolved(text)
    }
}

/// A parameter sent in text format: the server parses it with the input function of the type it
/// infers from the key column, the same text pgoutput wrote, whatever the column's type.
#[derive(Debug)]
struct TextParam<'a>(&'a [u8]);

impl ToSql for TextParam<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::RelationColumn;

    fn relation(replica_identity: u8, keys: &[&str]) -> Relation {
        let column = |name: &str| RelationColumn {
            key: keys.contains(&name),
            name: name.to_string(),
            type_oid: 25,
            type_modifier: -1,
        };
        Relation {
            oid: 1,
            namespace: "shop".to_string(),
            name: "Orders".to_string(),
            replica_identity,
            columns: vec![
                column("id"),
                column("region"),
                column("user_agent"),
                column("status"),
            ],
        }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn the_key_is_the_flagged_columns_with_their_new_values() {
        let r = relation(b'd', &["id", "region"]);
        let new = Tuple(vec![
            text("7"),
            text("eu"),
            Datum::UnchangedToast,
            text("paid"),
        ]);
        let key = key_of(&r, &new).unwrap();
        assert_eq!(
            key,
            vec![
                ("id".to_string(), Bytes::from_static(b"7")),
                ("region".to_string(), Bytes::from_static(b"eu"))
            ]
        );
        assert_eq!(
            read_back_sql(&r, &key, &[2]),
            "select \"user_agent\"::text from \"shop\".\"Orders\" where \"id\" = $1 and \"region\" = $2"
        );
    }

    #[test]
    fn no_key_or_a_key_without_value_is_unresolved_not_an_error() {
        let new = Tuple(vec![
            text("7"),
            Datum::Null,
            Datum::UnchangedToast,
            text("paid"),
        ]);
        let Err(Failure::Unresolved(reason)) = key_of(&relation(b'n', &[]), &new) else {
            panic!("no key must be unresolved");
        };
        assert!(reason.contains("no replica identity key"), "{reason}");
        let Err(Failure::Unresolved(reason)) = key_of(&relation(b'i', &["id", "region"]), &new)
        else {
            panic!("a NULL key value must be unresolved");
        };
        assert!(reason.contains("\"region\""), "{reason}");
    }
}

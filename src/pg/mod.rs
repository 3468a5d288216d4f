//! PostgreSQL plumbing shared by every connection pgcapi opens: connection strings ([`conninfo`]), TLS
//! with libpq's `sslmode` rules ([`tls`]), ordinary SQL connections ([`client`]), and how server errors
//! are shown to operators ([`error_chain`]), and reads of the catalog and slot state ([`catalog`]). The replication connection (`source`) builds on the same
//! conninfo and TLS.

pub mod catalog;
pub mod client;
pub mod conninfo;
pub mod tls;

pub use client::{connect, describe, describe_server, DbError};
pub use conninfo::{ConnInfo, ConnInfoError, Host, SslMode};

/// Whether a SQLSTATE means the session is gone or cannot be had right now: the list lives with the
/// retry policy, in [`crate::error`].
pub use crate::error::is_connection_loss;

/// What a driver error was, for the retry policy: the server's SQLSTATE when it answered, else a lost
/// (closed, refused, timed out) connection.
pub fn fault(e: &tokio_postgres::Error) -> crate::error::Fault {
    match e.as_db_error() {
        Some(db) if !e.is_closed() => crate::error::Fault::Server(db.code().code().to_string()),
        _ => crate::error::Fault::Lost,
    }
}

/// Whether a server's DETAIL may quote row values, which must not reach a log line.
pub(crate) fn detail_quotes_rows(detail: &str) -> bool {
    detail.starts_with("Key (") || detail.starts_with("Failing row contains")
}

/// An error and its sources as one line (`a: b: c`), for messages shown to operators.
/// A database error in the chain is shown with the server's message, SQLSTATE, detail and hint
/// ([`client::describe`]), never as tokio-postgres's bare `db error`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let (text, last) = if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
            (client::describe(pg), true)
        } else if let Some(server) = e.downcast_ref::<tokio_postgres::error::DbError>() {
            (client::describe_server(server), true)
        } else {
            (e.to_string(), false)
        };
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        if last {
            break;
        }
        next = e.source();
    }
    out
}

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

/// True for SQLSTATEs that mean the session is gone or cannot be had right now, so that waiting and
/// connecting again will do (the request itself was not refused):
///
/// - class `08`, connection exceptions (including `08P01` on a session the server dropped);
/// - `57P01` admin shutdown (`pg_ctl restart -m fast`, `pg_terminate_backend`), `57P02` crash shutdown,
///   `57P03` cannot connect now (starting up, in recovery);
/// - class `53`, insufficient resources: `53300` too many connections (also `max_wal_senders` reached,
///   which refuses the replication connection), `53100` disk full, `53200` out of memory.
///
/// Class 53 is on the list (the replication connection always had it, the control-table list did not):
/// the server is short of something right now, nothing is wrong with what pgcapi asked, and the same
/// statement succeeds once the server recovers. Escalating it as a problem for an operator (capture
/// `stuck`) would be wrong for a connection limit that clears by itself, and a worker that drops its
/// connection and comes back with backoff puts less load on a struggling server than one that keeps
/// retrying on it. `pgcapi status` still shows the server's message while it lasts.
pub fn is_connection_loss(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("53")
        || matches!(sqlstate, "57P01" | "57P02" | "57P03")
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

#[cfg(test)]
mod tests {
    use super::is_connection_loss;

    #[test]
    fn shutdowns_connection_exceptions_and_resource_shortages_are_losses_statement_errors_are_not()
    {
        for code in [
            "57P01", "57P02", "57P03", "08006", "08003", "08P01", "53300", "53100", "53200",
        ] {
            assert!(is_connection_loss(code), "{code}");
        }
        // unique violation, undefined table, bad text, statement timeout, serialization failure,
        // object in use (a slot held by another process: a standby, not an outage).
        for code in ["23505", "42P01", "22P02", "57014", "40001", "55006"] {
            assert!(!is_connection_loss(code), "{code}");
        }
    }
}

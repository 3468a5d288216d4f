//! Our own PostgreSQL replication connection: startup, auth, TLS, CopyBoth streaming and status updates.
//!
//! tokio-postgres has no CopyBoth support, so this module speaks the streaming replication protocol
//! itself, on top of `postgres_protocol`'s message encoders and SCRAM client:
//!
//! 1. [`ReplicationConnection::connect`] opens a `replication=database` session (TCP, Unix socket or
//!    TLS) and authenticates;
//! 2. [`ReplicationConnection::simple_query`] runs commands such as `IDENTIFY_SYSTEM`;
//! 3. [`ReplicationConnection::start_logical`] starts pgoutput streaming and yields a
//!    [`ReplicationStream`], whose [`ReplicationStream::next`] is cancel-safe and whose
//!    [`ReplicationStream::send_status`] reports the write/flush/apply positions.

pub mod connection;
pub mod stream;
mod wire;

pub use crate::pg::conninfo::{ConnInfo, ConnInfoError, Host, SslMode};
pub use crate::pg::tls::TlsError;
pub use connection::ReplicationConnection;
use std::fmt::Write as _;
pub use stream::{ReplicationMessage, ReplicationStream};

/// Why the replication connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading from or writing to the socket failed, or the server closed it.
    #[error("replication connection I/O failed")]
    Io(#[from] std::io::Error),
    /// TLS could not be set up or negotiated.
    #[error("replication connection TLS failed")]
    Tls(#[from] TlsError),
    /// The server rejected our credentials, or asked for a method we cannot do. Never holds the password.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server reported an error.
    #[error("server error {code}: {message}{}", server_context(code, message, detail.as_deref(), hint.as_deref()))]
    Server {
        /// SQLSTATE.
        code: String,
        /// The server's primary message.
        message: String,
        /// The server's DETAIL, unless it may quote row values (`Key (…)=(…)`, `Failing row contains`).
        detail: Option<String>,
        /// The server's HINT.
        hint: Option<String>,
    },
    /// The server sent something the protocol does not allow here.
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// An operation took longer than its limit.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// An argument cannot be sent (e.g. it contains a NUL byte).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

/// What follows a server error's message: its detail and hint, and for an invalidated slot what to do.
fn server_context(code: &str, message: &str, detail: Option<&str>, hint: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(detail) = detail {
        out.push_str("; DETAIL: ");
        out.push_str(detail);
    }
    if let Some(hint) = hint {
        out.push_str("; HINT: ");
        out.push_str(hint);
    }
    if is_slot_invalidated(code, message) {
        let slot = message.split('"').nth(1).unwrap_or("<slot>");
        let _ = write!(
            out,
            "; the replication slot was invalidated, so the changes since pgcapi last read it are \
             gone from the WAL and reconnecting cannot help: drop it \
             (SELECT pg_drop_replication_slot('{slot}');), recreate it with `pgcapi setup`, then run \
             `pgcapi backfill` for what changed meanwhile"
        );
    }
    out
}

/// SQLSTATE 55000 on reading a slot: the server invalidated it (its WAL was removed or it conflicted).
fn is_slot_invalidated(code: &str, message: &str) -> bool {
    code == "55000"
        && (message.starts_with("cannot read from logical replication slot")
            || message.contains("has been invalidated")
            || message.contains("this slot has been invalidated"))
}

impl SourceError {
    /// The server said the slot was invalidated (wal_status lost): reconnecting cannot help.
    pub fn is_slot_invalidated(&self) -> bool {
        matches!(self, SourceError::Server { code, message, .. } if is_slot_invalidated(code, message))
    }

    /// SQLSTATE 55006 (object_in_use): the slot is active for another process.
    pub fn is_slot_in_use(&self) -> bool {
        matches!(self, SourceError::Server { code, .. } if code == "55006")
    }

    /// True for failures that a reconnect may cure: lost connections, timeouts, and server errors that
    /// end or refuse the session ([`crate::pg::is_connection_loss`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Io(_) | SourceError::Timeout(_) => true,
            SourceError::Server { code, .. } => crate::pg::is_connection_loss(code),
            SourceError::Tls(_)
            | SourceError::Auth(_)
            | SourceError::Protocol(_)
            | SourceError::InvalidArgument(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server error with SQLSTATE `code`.
    fn server(code: &str) -> SourceError {
        SourceError::Server {
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn an_invalidated_slot_says_what_the_server_said_and_what_to_do() {
        let e = SourceError::Server {
            code: "55000".into(),
            message: "cannot read from logical replication slot \"pgcapi\"".into(),
            detail: Some(
                "This slot has been invalidated because it exceeded the maximum reserved size."
                    .into(),
            ),
            hint: None,
        };
        let text = e.to_string();
        assert!(e.is_slot_invalidated() && !e.is_retryable());
        assert!(
            text.contains("DETAIL: This slot has been invalidated"),
            "{text}"
        );
        assert!(
            text.contains("pg_drop_replication_slot('pgcapi')")
                && text.contains("`pgcapi setup`")
                && text.contains("`pgcapi backfill`"),
            "{text}"
        );
        assert!(!server("42703").to_string().contains("invalidated"));
    }

    #[test]
    fn only_object_in_use_means_the_slot_is_taken() {
        assert!(server("55006").is_slot_in_use());
        assert!(!server("55000").is_slot_in_use());
        assert!(!SourceError::Protocol("x".into()).is_slot_in_use());
    }

    #[test]
    fn connection_loss_is_retryable_and_auth_is_not() {
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
        assert!(SourceError::Io(eof).is_retryable());
        assert!(SourceError::Timeout("connecting").is_retryable());
        assert!(server("57P01").is_retryable());
        assert!(server("08006").is_retryable());
        assert!(!server("42704").is_retryable());
        assert!(!SourceError::Auth("no".into()).is_retryable());
    }
}

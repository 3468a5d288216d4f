//! The error a command or a long-running task ends with, and the one policy that says what follows it:
//! [`Error::action`], retry (after a wait) or halt.
//!
//! Each layer keeps its own error type (`DbError`, `OutboxError`, `CaptureError`, …) with the detail its
//! callers match on; at the edge (the CLI, the supervisors in [`crate::shutdown`]) they become an
//! [`Error`] (their modules implement the conversion). An `Error` keeps what the policy needs, the kind
//! of problem and a [`Fault`] (a fact: what the server said, or that nothing answered), and the message
//! operators read. The decision itself is made here and only here.
//!
//! Messages never hold secrets: a context ([`Error::context`]) is text written in the code (what was
//! being done, a config key, a destination's name), never a connection string or a value; the
//! messages of database errors are built by `pg::error_chain`, which shows the server's message and
//! never a password.
//!
//! A leaf: imports nothing of pgcapi, so that every layer can use it.

use std::time::Duration;

/// What stopped a command or a task, for an operator to read and for [`Error::action`] to judge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config or the command line asks for something that cannot be: an operator must change it.
    #[error("{0}")]
    Config(String),
    /// A statement on a database, or connecting to one, failed.
    #[error("{message}")]
    Database {
        /// What failed and why, for operators (with its context).
        message: String,
        /// What the server said, or that nothing answered.
        fault: Fault,
    },
    /// The replication connection, or what it carried (a change capture cannot apply), failed.
    #[error("{message}")]
    Replication {
        /// What failed and why, for operators.
        message: String,
        /// What the server said, that nothing answered, or that the change itself is the problem.
        fault: Fault,
    },
    /// A platform, or the way pgcapi talks to one (credentials, HTTP client), failed.
    #[error("{message}")]
    Platform {
        /// What failed and why, for operators.
        message: String,
        /// Whether waiting may help.
        fault: Fault,
    },
    /// Reading or writing a local file, or a socket of our own, failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (a path, an address).
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and reports a failure of its own (a report it cannot produce, a worker that
    /// stopped); the message says why.
    #[error("{0}")]
    Failed(String),
}

/// What a failure was, as far as the policy is concerned: facts that the layer which met the failure
/// knows, never a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Nothing answered: the connection was refused, lost or timed out.
    Lost,
    /// The server answered with this SQLSTATE.
    Server(String),
    /// The other side is busy for now and said (or we know) how long to wait: a slot held by another
    /// process, a platform's `Retry-After`.
    Busy(Duration),
    /// What pgcapi asked for cannot be done as asked (a protocol violation, a change a rule cannot
    /// apply, rejected credentials): waiting changes nothing.
    Refused,
}

/// What to do after a supervised task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run the task again after `after`, or after the backoff's next wait when `None`.
    Retry {
        /// A wait chosen by the caller (a standby polling for the slot), instead of the backoff's.
        after: Option<Duration>,
    },
    /// Give up: the supervisor returns the error; an operator must act.
    Halt,
}

impl Action {
    /// Retry after the backoff's next wait.
    pub const RETRY: Action = Action::Retry { after: None };
}

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

impl Fault {
    /// The policy for one fault: an outage (nothing answered, or a SQLSTATE of
    /// [`is_connection_loss`]) is retried after the backoff, a busy peer after the wait it named, and
    /// anything else (a statement the server refused, a refused request) halts.
    pub fn action(&self) -> Action {
        match self {
            Fault::Lost => Action::RETRY,
            Fault::Server(code) if is_connection_loss(code) => Action::RETRY,
            Fault::Busy(after) => Action::Retry {
                after: Some(*after),
            },
            Fault::Server(_) | Fault::Refused => Action::Halt,
        }
    }
}

impl Error {
    /// Retry or halt: the one decision every supervisor and the CLI follow. A config, a local file or
    /// a failure a command reports halts; databases, the replication connection and platforms follow
    /// their [`Fault`] ([`Fault::action`]).
    pub fn action(&self) -> Action {
        match self {
            Error::Database { fault, .. }
            | Error::Replication { fault, .. }
            | Error::Platform { fault, .. } => fault.action(),
            Error::Config(_) | Error::Io { .. } | Error::Failed(_) => Action::Halt,
        }
    }

    /// The same error, its message preceded by `what` (`what: message`): what was being done, written
    /// in the code, never a connection string or a value.
    pub fn context(mut self, what: impl std::fmt::Display) -> Error {
        match &mut self {
            Error::Config(text)
            | Error::Failed(text)
            | Error::Database { message: text, .. }
            | Error::Replication { message: text, .. }
            | Error::Platform { message: text, .. }
            | Error::Io { context: text, .. } => *text = format!("{what}: {text}"),
        }
        self
    }

    /// A failure a command reports in its own words.
    pub fn failed(message: impl Into<String>) -> Error {
        Error::Failed(message.into())
    }

    /// A config (or command-line) problem.
    pub fn config(message: impl Into<String>) -> Error {
        Error::Config(message.into())
    }
}

/// The result of a command or task.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn replication(message: &str, fault: Fault) -> Error {
        Error::Replication {
            message: message.into(),
            fault,
        }
    }

    fn db(fault: Fault) -> Error {
        Error::Database {
            message: "control table (claiming due deliveries): …".into(),
            fault,
        }
    }

    #[test]
    fn a_connection_loss_retries_after_the_backoff() {
        assert_eq!(db(Fault::Lost).action(), Action::RETRY);
        for code in ["57P01", "08006", "53300"] {
            assert_eq!(db(Fault::Server(code.into())).action(), Action::RETRY);
        }
        let lost = replication("replication connection I/O failed", Fault::Lost);
        assert_eq!(lost.action(), Action::RETRY);
    }

    #[test]
    fn a_busy_peer_retries_after_the_wait_it_named() {
        let busy = replication(
            "slot is active for another process",
            Fault::Busy(Duration::from_secs(1)),
        );
        assert_eq!(
            busy.action(),
            Action::Retry {
                after: Some(Duration::from_secs(1))
            }
        );
    }

    #[test]
    fn a_config_permission_or_refused_change_halts() {
        assert_eq!(Error::config("source.url: bad").action(), Action::Halt);
        // permission denied, undefined table, a password the server refused.
        for code in ["42501", "42P01", "28P01"] {
            assert_eq!(db(Fault::Server(code.into())).action(), Action::Halt);
        }
        let rule = replication("column \"total\" was dropped", Fault::Refused);
        assert_eq!(rule.action(), Action::Halt);
        let io = Error::Io {
            context: "reading /etc/pgcapi.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(io.action(), Action::Halt);
        assert_eq!(Error::failed("worker stopped").action(), Action::Halt);
    }

    #[test]
    fn context_prefixes_the_message_and_keeps_the_fault() {
        let e = db(Fault::Lost).context("dispatch");
        assert_eq!(
            e.to_string(),
            "dispatch: control table (claiming due deliveries): …"
        );
        assert_eq!(e.action(), Action::RETRY);
        let io = Error::Io {
            context: "metrics.listen".into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        }
        .context("starting the metrics server");
        assert!(io
            .to_string()
            .starts_with("starting the metrics server: metrics.listen: "));
    }

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

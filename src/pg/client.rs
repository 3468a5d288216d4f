//! Ordinary SQL connections (tokio-postgres) with the same settings and TLS rules as the replication one.

use super::conninfo::{ConnInfo, Host, SslMode};
use super::tls::{self, TlsError};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Socket};

/// Why an SQL connection could not be opened. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// TLS settings could not be built (e.g. an unreadable `sslrootcert`).
    #[error("database TLS settings")]
    Tls(#[from] TlsError),
    /// Connecting, TLS negotiation or authentication failed; tokio-postgres never prints the password.
    #[error("connecting to the database")]
    Connect(#[source] tokio_postgres::Error),
    /// Connecting (authentication included) took longer than `connect_timeout`.
    #[error("connecting to the database timed out")]
    Timeout,
}

impl DbError {
    /// The SQLSTATE of a server-side failure, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            DbError::Connect(e) => e.code().map(|c| c.code()),
            DbError::Tls(_) | DbError::Timeout => None,
        }
    }
}

impl From<DbError> for crate::error::Error {
    fn from(e: DbError) -> Self {
        let fault = match &e {
            // Settings that cannot be read: waiting changes nothing.
            DbError::Tls(_) => crate::error::Fault::Refused,
            DbError::Connect(e) => super::fault(e),
            DbError::Timeout => crate::error::Fault::Lost,
        };
        crate::error::Error::Database {
            message: super::error_chain(&e),
            fault,
        }
    }
}

/// The control database's settings from the config (`source.control_url`, the source's when unset); a
/// URL that cannot be read is a config error naming the key, never the URL.
pub fn control_info(config: &crate::config::Config) -> Result<ConnInfo, crate::error::Error> {
    config
        .source
        .control_url()
        .expose()
        .parse()
        .map_err(|e| crate::error::Error::Config(format!("source.control_url: {e}")))
}

/// A database error as one line for operators: for an error the server sent, its message with the
/// SQLSTATE, detail and hint (`permission denied for schema shop (SQLSTATE 42501)`); otherwise the
/// driver's own description with its cause. tokio-postgres prints only `db error` for the former.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => describe_server(db),
        None => {
            let mut out = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !out.contains(&text) {
                    out.push_str(": ");
                    out.push_str(&text);
                }
                source = cause.source();
            }
            out
        }
    }
}

/// An error the server sent, as one line: message, SQLSTATE, detail and hint.
pub fn describe_server(db: &tokio_postgres::error::DbError) -> String {
    let mut out = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(detail) = db.detail().filter(|d| !super::detail_quotes_rows(d)) {
        out.push_str("; DETAIL: ");
        out.push_str(&one_line(detail));
    }
    if let Some(hint) = db.hint() {
        out.push_str("; HINT: ");
        out.push_str(&one_line(hint));
    }
    out
}

/// `text` with its line breaks turned into spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Opens an ordinary SQL connection honouring `sslmode` with rustls (verify-full checks the host name,
/// verify-ca only the chain, require encrypts without verifying, prefer tries TLS then plain), over TCP
/// or a Unix socket (where, as in libpq, TLS is not used), and spawns the connection task.
/// `connect_timeout` bounds the whole exchange, authentication included.
pub async fn connect(info: &ConnInfo) -> Result<tokio_postgres::Client, DbError> {
    let (client, mut connection) = connect_parts(info).await?;
    tokio::spawn(async move {
        // What `connection.await` does, but with the server's notices logged by `log_notice`
        // (tokio-postgres logs every notice at info).
        let ended = std::future::poll_fn(|cx| loop {
            match connection.poll_message(cx) {
                Poll::Ready(Some(Ok(AsyncMessage::Notice(notice)))) => log_notice(&notice),
                // Notifications: nobody listens on these connections.
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        if let Err(e) = ended {
            tracing::warn!(error = %describe(&e), "database connection ended with an error");
        }
    });
    Ok(client)
}

/// Logs a notice or warning the server sent on an SQL connection, at the level [`notice_level`] gives.
fn log_notice(notice: &tokio_postgres::error::DbError) {
    let severity = notice
        .parsed_severity()
        .map_or_else(|| notice.severity().to_string(), |s| s.to_string());
    log_server_notice("sql", &severity, notice.code().code(), notice.message());
}

/// Logs a server notice (SQLSTATE, non-localized severity, primary message) at its level;
/// `connection` says which kind of connection received it (`sql`, `replication`).
pub(crate) fn log_server_notice(connection: &str, severity: &str, code: &str, message: &str) {
    macro_rules! notice {
        ($level:ident) => {
            tracing::$level!(
                connection,
                sqlstate = %code,
                severity = %severity,
                message = %message,
                "notice from the server"
            )
        };
    }
    match notice_level(severity, code, message) {
        tracing::Level::WARN => notice!(warn),
        tracing::Level::INFO => notice!(info),
        _ => notice!(debug),
    }
}

/// How loud a server notice is logged: a WARNING at warn, DEBUG messages at debug, the answers of
/// idempotent statements (`CREATE ... IF NOT EXISTS`: "relation ... already exists, skipping", `DROP
/// ... IF EXISTS`: "view ... does not exist, skipping", which `setup` meets on every run after the
/// first) at debug, every other notice at info.
pub(crate) fn notice_level(severity: &str, code: &str, message: &str) -> tracing::Level {
    /// duplicate_schema, duplicate_table (any relation), duplicate_object, duplicate_column and
    /// duplicate_function: as a NOTICE, only ever an `IF NOT EXISTS` that skipped.
    const SKIPPED: [&str; 5] = ["42P06", "42P07", "42710", "42701", "42723"];
    match severity {
        "WARNING" => tracing::Level::WARN,
        "DEBUG" => tracing::Level::DEBUG,
        // `DROP ... IF EXISTS` notices carry no specific SQLSTATE: recognized by their (English)
        // wording; under another `lc_messages` they stay at info.
        "NOTICE" if SKIPPED.contains(&code) || message.ends_with(", skipping") => {
            tracing::Level::DEBUG
        }
        _ => tracing::Level::INFO,
    }
}

/// The connection future of [`connect_parts`]: the caller drives it (and may read notifications).
pub type Connection = tokio_postgres::Connection<Socket, RustlsStream>;

/// Like [`connect`], but returns the connection for the caller to drive (e.g. to receive `NOTIFY`).
pub async fn connect_parts(
    info: &ConnInfo,
) -> Result<(tokio_postgres::Client, Connection), DbError> {
    match info.connect_timeout {
        Some(limit) => tokio::time::timeout(limit, connect_untimed(info))
            .await
            .map_err(|_| DbError::Timeout)?,
        None => connect_untimed(info).await,
    }
}

/// [`connect_parts`] without the overall time limit.
async fn connect_untimed(info: &ConnInfo) -> Result<(tokio_postgres::Client, Connection), DbError> {
    let tls_config = tls::client_config(info)?;
    let attempt = connect_with(info, tls_config.clone()).await;
    match attempt {
        // libpq's `prefer` falls back to plain text when the TLS handshake itself fails.
        Err(DbError::Connect(ref e))
            if info.sslmode == SslMode::Prefer && tls_config.is_some() && is_tls_failure(e) =>
        {
            tracing::info!("TLS handshake failed under sslmode=prefer; retrying without TLS");
            connect_with(info, None).await
        }
        other => other,
    }
}

/// One connection attempt; `tls_config` of `None` means plain text.
async fn connect_with(
    info: &ConnInfo,
    tls_config: Option<Arc<rustls::ClientConfig>>,
) -> Result<(tokio_postgres::Client, Connection), DbError> {
    let mut config = tokio_postgres::Config::new();
    config.user(&info.user).dbname(&info.dbname);
    if let Some(password) = &info.password {
        config.password(password);
    }
    if let Some(name) = &info.application_name {
        config.application_name(name);
    }
    config.port(info.port);
    let ssl_mode = match (&info.host, &tls_config) {
        (Host::Unix(dir), _) => {
            config.host_path(dir);
            tokio_postgres::config::SslMode::Disable
        }
        (Host::Tcp(host), None) => {
            config.host(host);
            tokio_postgres::config::SslMode::Disable
        }
        (Host::Tcp(host), Some(_)) => {
            config.host(host);
            match info.sslmode {
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            }
        }
    };
    config.ssl_mode(ssl_mode);
    let connector = RustlsConnect { config: tls_config };
    config.connect(connector).await.map_err(DbError::Connect)
}

/// Whether a connect error came from the TLS layer rather than the server or the network.
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(err) = source {
        if err.is::<rustls::Error>() || err.is::<TlsError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// tokio-postgres's TLS factory over our rustls settings.
#[derive(Clone)]
struct RustlsConnect {
    /// `None` when TLS is disabled; tokio-postgres then never asks for a connector.
    config: Option<Arc<rustls::ClientConfig>>,
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnector;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, TlsError> {
        // tokio-postgres asks for a connector even when TLS is off: fail only if it is used.
        Ok(RustlsConnector {
            config: self.config.clone(),
            domain: domain.to_string(),
        })
    }
}

/// Runs the TLS handshake for one host.
struct RustlsConnector {
    /// The rustls settings for the connection's `sslmode`; `None` when TLS is off.
    config: Option<Arc<rustls::ClientConfig>>,
    /// The host name the certificate is checked against (verify-full only).
    domain: String,
}

impl TlsConnect<Socket> for RustlsConnector {
    type Stream = RustlsStream;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream, TlsError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or(TlsError::NotSupported)?;
            let name = tls::server_name(&self.domain)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(TlsError::Handshake)?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// A TLS stream as tokio-postgres wants it.
pub struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM then runs without channel binding, which every server accepts.
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn idempotent_statement_notices_are_debug_and_other_notices_keep_their_level() {
        for (code, message) in [
            ("42P07", "relation \"deliveries\" already exists, skipping"),
            ("42P06", "schema \"pgcapi\" already exists, skipping"),
            ("42710", "extension \"x\" already exists, skipping"),
            (
                "42701",
                "column \"error_lsn\" of relation \"capture_state\" already exists, skipping",
            ),
            ("00000", "view \"v_health\" does not exist, skipping"),
            (
                "00000",
                "trigger \"t\" for relation \"orders\" does not exist, skipping",
            ),
            // Localized wording, recognized by its SQLSTATE.
            (
                "42P07",
                "relation \u{ab}deliveries\u{bb} existe d\u{e9}j\u{e0}, poursuite du traitement",
            ),
        ] {
            assert_eq!(
                notice_level("NOTICE", code, message),
                Level::DEBUG,
                "{message}"
            );
        }
        assert_eq!(
            notice_level("NOTICE", "00000", "table \"orders\" has no primary key"),
            Level::INFO
        );
        assert_eq!(notice_level("INFO", "00000", "vacuuming"), Level::INFO);
        assert_eq!(
            notice_level("WARNING", "01000", "wal_level is insufficient, skipping"),
            Level::WARN
        );
        assert_eq!(notice_level("DEBUG", "00000", "x"), Level::DEBUG);
    }
}

//! Opening a replication connection: socket, TLS, startup with `replication=database`, authentication.

use super::stream::ReplicationStream;
use super::wire::{log_notice, server_error, Backend, Framed, Transport};
use super::SourceError;
use crate::lsn::Lsn;
use crate::pg::conninfo::{ConnInfo, Host, SslMode};
use crate::pg::tls::{self, TlsError};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// A replication-mode session (`replication=database`) that is not streaming yet.
pub struct ReplicationConnection {
    /// The framed socket.
    framed: Framed,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Startup with `replication=database`, auth trust / cleartext / MD5 / SCRAM-SHA-256, TLS per
    /// `sslmode` (never over a Unix socket, as libpq). `options` is sent as the startup `options`
    /// parameter, e.g. `-c wal_sender_timeout=60s`. `connect_timeout` bounds the whole exchange.
    pub async fn connect(
        info: &ConnInfo,
        options: &str,
    ) -> Result<ReplicationConnection, SourceError> {
        let work = Self::connect_inner(info, options);
        match info.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .map_err(|_| SourceError::Timeout("connecting"))?,
            None => work.await,
        }
    }

    /// [`ReplicationConnection::connect`] without the time limit.
    async fn connect_inner(
        info: &ConnInfo,
        options: &str,
    ) -> Result<ReplicationConnection, SourceError> {
        let transport = open_transport(info).await?;
        let mut framed = Framed::new(transport);
        startup(&mut framed, info, options).await?;
        Ok(ReplicationConnection { framed })
    }

    /// Runs a replication-protocol command (`IDENTIFY_SYSTEM`, `SHOW ...`, plain SQL in database mode)
    /// and returns the rows of its last result as text. A server error is returned after the server is
    /// ready again, so the connection stays usable.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        if sql.contains('\0') {
            return Err(SourceError::InvalidArgument(
                "query text contains a NUL byte",
            ));
        }
        frontend::query(sql, &mut self.framed.wbuf)?;
        self.framed.send().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.framed.read_message().await? {
                Backend::Message(Message::RowDescription(_)) => rows.clear(),
                Backend::Message(Message::DataRow(row)) => {
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) = ranges.next().map_err(protocol)? {
                        values.push(match range {
                            None => None,
                            Some(range) => {
                                let bytes = row.buffer().get(range).ok_or_else(|| {
                                    SourceError::Protocol(
                                        "a data row column is out of bounds".into(),
                                    )
                                })?;
                                Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                                    SourceError::Protocol("a data row column is not UTF-8".into())
                                })?)
                            }
                        });
                    }
                    rows.push(values);
                }
                Backend::Message(Message::CommandComplete(_) | Message::EmptyQueryResponse) => {}
                Backend::Message(Message::ErrorResponse(body)) => error = Some(server_error(&body)),
                Backend::Message(Message::NoticeResponse(body)) => log_notice(&body),
                Backend::Message(Message::ParameterStatus(_)) => {}
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                Backend::Message(Message::CopyOutResponse(_) | Message::CopyInResponse(_))
                | Backend::CopyBothResponse => {
                    return Err(SourceError::Protocol(
                        "simple_query cannot run a command that starts a copy".into(),
                    ))
                }
                Backend::Message(_) => {
                    return Err(SourceError::Protocol(
                        "unexpected message in a simple query response".into(),
                    ))
                }
            }
        }
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL start (proto_version '1', publication_names '"pub"',
    /// messages 'true')`, waiting for the server to enter streaming mode. An active slot gives an error
    /// for which [`SourceError::is_slot_in_use`] is true.
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, SourceError> {
        let command = start_replication_command(slot, start, publication)?;
        frontend::query(&command, &mut self.framed.wbuf)?;
        self.framed.send().await?;
        loop {
            match self.framed.read_message().await? {
                Backend::CopyBothResponse => return Ok(ReplicationStream::new(self.framed)),
                Backend::Message(Message::ErrorResponse(body)) => return Err(server_error(&body)),
                Backend::Message(Message::NoticeResponse(body)) => log_notice(&body),
                Backend::Message(Message::ParameterStatus(_)) => {}
                Backend::Message(_) => {
                    return Err(SourceError::Protocol(
                        "unexpected message in answer to START_REPLICATION".into(),
                    ))
                }
            }
        }
    }
}

/// Builds the START_REPLICATION command with correctly quoted identifiers and literals.
fn start_replication_command(
    slot: &str,
    start: Lsn,
    publication: &str,
) -> Result<String, SourceError> {
    if slot.is_empty() || slot.contains('\0') {
        return Err(SourceError::InvalidArgument(
            "slot name is empty or contains a NUL byte",
        ));
    }
    if publication.is_empty() || publication.contains('\0') {
        return Err(SourceError::InvalidArgument(
            "publication name is empty or contains a NUL byte",
        ));
    }
    Ok(format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}, messages 'true')",
        quote_ident(slot),
        quote_literal(&quote_ident(publication)),
    ))
}

/// A malformed message from the server.
fn protocol(e: std::io::Error) -> SourceError {
    SourceError::Protocol(format!("malformed backend message: {e}"))
}

/// `"name"` with inner double quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner single quotes doubled (the replication grammar has no backslash escapes).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Opens the socket and negotiates TLS as `sslmode` asks.
async fn open_transport(info: &ConnInfo) -> Result<Transport, SourceError> {
    let host = match &info.host {
        // libpq ignores sslmode for Unix sockets: they never leave the machine.
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", info.port));
            return Ok(Transport::Unix(UnixStream::connect(path).await?));
        }
        Host::Tcp(host) => host,
    };
    let Some(config) = tls::client_config(info)? else {
        return Ok(Transport::Tcp(tcp_connect(host, info.port).await?));
    };
    let tcp = tcp_connect(host, info.port).await?;
    match negotiate_tls(tcp, host, config, info.sslmode).await {
        Ok(transport) => Ok(transport),
        // As libpq: under `prefer`, a failed TLS attempt is retried in plain text.
        Err(SourceError::Tls(TlsError::Handshake(e))) if info.sslmode == SslMode::Prefer => {
            tracing::info!(error = %e, "TLS handshake failed under sslmode=prefer; retrying without TLS");
            Ok(Transport::Tcp(tcp_connect(host, info.port).await?))
        }
        Err(e) => Err(e),
    }
}

/// Connects over TCP (trying every address the name resolves to) with Nagle's algorithm off.
async fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, SourceError> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends SSLRequest and, if the server agrees, runs the TLS handshake.
async fn negotiate_tls(
    mut tcp: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
    mode: SslMode,
) -> Result<Transport, SourceError> {
    let mut request = bytes::BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {}
        b'N' if mode == SslMode::Prefer => return Ok(Transport::Tcp(tcp)),
        b'N' => return Err(TlsError::NotSupported.into()),
        _ => {
            return Err(SourceError::Protocol(
                "unexpected answer to the TLS request".into(),
            ))
        }
    }
    let name = tls::server_name(host)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(TlsError::Handshake)?;
    Ok(Transport::Tls(Box::new(tls)))
}

/// Sends the startup message and answers authentication requests until the server is ready.
async fn startup(framed: &mut Framed, info: &ConnInfo, options: &str) -> Result<(), SourceError> {
    frontend::startup_message(startup_params(info, options)?, &mut framed.wbuf)?;
    framed.send().await?;
    let mut auth = Authentication { info, scram: None };
    loop {
        let message = match framed.read_message().await? {
            Backend::Message(m) => m,
            Backend::CopyBothResponse => {
                return Err(SourceError::Protocol(
                    "unexpected CopyBothResponse at startup".into(),
                ))
            }
        };
        match message {
            Message::AuthenticationOk
            | Message::ParameterStatus(_)
            | Message::BackendKeyData(_) => {}
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            Message::NoticeResponse(body) => log_notice(&body),
            Message::ReadyForQuery(_) => return Ok(()),
            other => {
                if auth.answer(other, &mut framed.wbuf)? {
                    framed.send().await?;
                }
            }
        }
    }
}

/// The startup message's parameters: a replication connection to `info`'s database.
fn startup_params<'a>(
    info: &'a ConnInfo,
    options: &'a str,
) -> Result<Vec<(&'a str, &'a str)>, SourceError> {
    let mut params: Vec<(&str, &str)> = vec![
        ("user", &info.user),
        ("database", &info.dbname),
        ("replication", "database"),
        ("client_encoding", "UTF8"),
    ];
    if let Some(name) = &info.application_name {
        params.push(("application_name", name));
    }
    if !options.is_empty() {
        params.push(("options", options));
    }
    if params.iter().any(|(_, v)| v.contains('\0')) {
        return Err(SourceError::InvalidArgument(
            "a connection setting contains a NUL byte",
        ));
    }
    Ok(params)
}

/// The client side of the authentication exchange: cleartext, md5 and SCRAM-SHA-256.
struct Authentication<'a> {
    info: &'a ConnInfo,
    /// The SCRAM exchange under way, between the SASL start and its final message.
    scram: Option<sasl::ScramSha256>,
}

impl Authentication<'_> {
    /// Answers one authentication request into `out`; true when there is something to send.
    fn answer(&mut self, message: Message, out: &mut bytes::BytesMut) -> Result<bool, SourceError> {
        match message {
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(self.password()?, out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(self.info.user.as_bytes(), self.password()?, body.salt());
                frontend::password_message(hash.as_bytes(), out)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut has_scram = false;
                while let Some(mechanism) = mechanisms.next().map_err(protocol)? {
                    has_scram |= mechanism == sasl::SCRAM_SHA_256;
                }
                if !has_scram {
                    return Err(SourceError::Auth(
                        "the server offers no SASL mechanism we support (SCRAM-SHA-256)".into(),
                    ));
                }
                // Without channel binding ("n"): accepted by every server, also over TLS.
                let client =
                    sasl::ScramSha256::new(self.password()?, sasl::ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, client.message(), out)?;
                self.scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) => {
                let client = self.scram.as_mut().ok_or_else(|| {
                    SourceError::Protocol("SASL continue without a SASL exchange".into())
                })?;
                client.update(body.data()).map_err(|_| {
                    SourceError::Auth("the server's SCRAM challenge is invalid".into())
                })?;
                frontend::sasl_response(client.message(), out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let client = self.scram.as_mut().ok_or_else(|| {
                    SourceError::Protocol("SASL final without a SASL exchange".into())
                })?;
                client.finish(body.data()).map_err(|_| {
                    SourceError::Auth("the server's SCRAM signature does not verify".into())
                })?;
                return Ok(false);
            }
            Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_) => {
                return Err(SourceError::Auth(
                    "the server asks for an authentication method we do not support \
                     (supported: trust, password, md5, scram-sha-256)"
                        .into(),
                ))
            }
            _ => {
                return Err(SourceError::Protocol(
                    "unexpected message during connection startup".into(),
                ))
            }
        }
        Ok(true)
    }

    /// The configured password, which the server has just asked for.
    fn password(&self) -> Result<&[u8], SourceError> {
        self.info
            .password
            .as_deref()
            .map(str::as_bytes)
            .ok_or_else(|| {
                SourceError::Auth("the server asks for a password but none is configured".into())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_replication_quotes_the_slot_and_the_publication() {
        let command =
            start_replication_command("my\"slot", Lsn(0x16_B374_D848), "it's \"pub\"").unwrap();
        assert_eq!(
            command,
            "START_REPLICATION SLOT \"my\"\"slot\" LOGICAL 16/B374D848 (proto_version '1', \
             publication_names '\"it''s \"\"pub\"\"\"', messages 'true')"
        );
    }

    #[test]
    fn empty_or_nul_names_are_refused() {
        assert!(start_replication_command("", Lsn::ZERO, "p").is_err());
        assert!(start_replication_command("s", Lsn::ZERO, "p\0").is_err());
    }
}

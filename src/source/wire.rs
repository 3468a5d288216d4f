//! The byte stream under a replication connection (TCP, Unix socket or TLS) and its message framing.

use super::SourceError;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{self, ErrorFields};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

/// How much the read buffer grows by: large enough that one read syscall carries hundreds of messages.
pub(crate) const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Below this much free space, the read buffer is grown before reading.
const MIN_READ_BYTES: usize = 16 * 1024;

/// The tag of CopyBothResponse, which `postgres_protocol`'s backend parser does not know.
pub(crate) const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// A connected socket, possibly wrapped in TLS.
pub(crate) enum Transport {
    /// Plain TCP.
    Tcp(TcpStream),
    /// Plain Unix socket.
    Unix(UnixStream),
    /// TLS over TCP (boxed: the TLS state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A backend message: either one `postgres_protocol` parses, or the CopyBothResponse it does not.
pub(crate) enum Backend {
    /// CopyBothResponse: the server entered streaming mode.
    CopyBothResponse,
    /// Any other message.
    Message(backend::Message),
}

/// A transport with a read buffer that only ever hands out complete frames, and a reusable write buffer.
///
/// Reads go through `read_buf` into `rbuf` and frames are split off only when complete, so a read that is
/// cancelled (dropped inside `tokio::select!`) loses nothing.
pub(crate) struct Framed {
    /// The socket.
    pub(crate) io: Transport,
    /// Bytes received but not yet parsed.
    pub(crate) rbuf: BytesMut,
    /// Bytes to send, written by `frontend::*` and flushed by [`Framed::send`].
    pub(crate) wbuf: BytesMut,
}

impl Framed {
    /// Wraps a connected socket.
    pub(crate) fn new(io: Transport) -> Framed {
        Framed {
            io,
            rbuf: BytesMut::with_capacity(READ_BUFFER_BYTES),
            wbuf: BytesMut::with_capacity(1024),
        }
    }

    /// Reads more bytes into the buffer; the end of the stream is an `UnexpectedEof` error. Cancel-safe.
    pub(crate) async fn fill(&mut self) -> Result<(), SourceError> {
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ_BYTES {
            self.rbuf.reserve(READ_BUFFER_BYTES);
        }
        let n = self.io.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(SourceError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }

    /// Makes sure a frame of `total` bytes fits without repeated small reallocations.
    pub(crate) fn reserve_frame(&mut self, total: usize) {
        if total > self.rbuf.len() {
            self.rbuf.reserve(total - self.rbuf.len());
        }
    }

    /// Parses one complete message from the buffer, if there is one.
    pub(crate) fn try_parse(&mut self) -> Result<Option<Backend>, SourceError> {
        let Some(total) = frame_len(&self.rbuf)? else {
            return Ok(None);
        };
        if self.rbuf.len() < total {
            self.reserve_frame(total);
            return Ok(None);
        }
        if self.rbuf[0] == COPY_BOTH_RESPONSE_TAG {
            // Its body (format and column formats) carries nothing we need.
            let _ = self.rbuf.split_to(total);
            return Ok(Some(Backend::CopyBothResponse));
        }
        match backend::Message::parse(&mut self.rbuf) {
            Ok(Some(message)) => Ok(Some(Backend::Message(message))),
            Ok(None) => Err(SourceError::Protocol(
                "a complete frame did not parse".to_string(),
            )),
            Err(e) => Err(SourceError::Protocol(format!(
                "unparseable backend message: {e}"
            ))),
        }
    }

    /// Reads the next complete message. Cancel-safe.
    pub(crate) async fn read_message(&mut self) -> Result<Backend, SourceError> {
        loop {
            if let Some(message) = self.try_parse()? {
                return Ok(message);
            }
            self.fill().await?;
        }
    }

    /// Writes out and clears the write buffer. Not cancel-safe: a cancelled send may leave half a message.
    pub(crate) async fn send(&mut self) -> Result<(), SourceError> {
        let result = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        }
        .await;
        self.wbuf.clear();
        result.map_err(SourceError::Io)
    }
}

/// The length of the frame at the start of `buf` (tag byte included), once its header has arrived.
pub(crate) fn frame_len(buf: &[u8]) -> Result<Option<usize>, SourceError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len > i32::MAX as u32 {
        return Err(SourceError::Protocol(format!(
            "invalid message length {len} for tag {:?}",
            char::from(buf[0])
        )));
    }
    Ok(Some(len as usize + 1))
}

/// The useful fields of an ErrorResponse or NoticeResponse.
pub(crate) struct ServerFields {
    /// SQLSTATE.
    pub(crate) code: String,
    /// Severity (non-localized when the server sends it).
    pub(crate) severity: String,
    /// The primary message.
    pub(crate) message: String,
    /// The detail, unless it may quote row values (`Key (…)=(…)`, `Failing row contains (…)`).
    pub(crate) detail: Option<String>,
    /// The hint.
    pub(crate) hint: Option<String>,
}

/// Collects the SQLSTATE, severity and primary message of an error or notice.
pub(crate) fn server_fields(mut fields: ErrorFields<'_>) -> ServerFields {
    let mut out = ServerFields {
        code: String::new(),
        severity: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut localized_severity = String::new();
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => out.code = value,
            b'M' => out.message = value,
            b'D' if !crate::pg::detail_quotes_rows(&value) => {
                out.detail = Some(value.split_whitespace().collect::<Vec<_>>().join(" "))
            }
            b'H' => out.hint = Some(value.split_whitespace().collect::<Vec<_>>().join(" ")),
            b'V' => out.severity = value,
            b'S' => localized_severity = value,
            _ => {}
        }
    }
    if out.severity.is_empty() {
        out.severity = localized_severity;
    }
    out
}

/// Turns an ErrorResponse into an error; authentication failures become [`SourceError::Auth`].
pub(crate) fn server_error(body: &backend::ErrorResponseBody) -> SourceError {
    let fields = server_fields(body.fields());
    match fields.code.as_str() {
        // invalid_authorization_specification, invalid_password.
        "28000" | "28P01" => SourceError::Auth(fields.message),
        _ => SourceError::Server {
            code: fields.code,
            message: fields.message,
            detail: fields.detail,
            hint: fields.hint,
        },
    }
}

/// Logs a NoticeResponse: SQLSTATE, severity and the server's own message, at the level
/// [`crate::pg::notice_level`] gives.
pub(crate) fn log_notice(body: &backend::NoticeResponseBody) {
    let fields = server_fields(body.fields());
    crate::pg::client::log_server_notice(
        "replication",
        &fields.severity,
        &fields.code,
        &fields.message,
    );
}

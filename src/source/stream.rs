//! The CopyBoth phase of a replication connection: XLogData and keepalives in, status updates out.

use super::wire::{frame_len, log_notice, server_error, Backend, Framed};
use super::SourceError;
use crate::lsn::Lsn;
use bytes::{Buf, BufMut, Bytes};
use postgres_protocol::message::backend::{Message, COPY_DATA_TAG};
use postgres_protocol::message::frontend;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long [`ReplicationStream::finish`] waits for the server to end the copy.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One message of the logical replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: one pgoutput message in `data`.
    XLogData {
        /// The WAL position this data starts at (0 for messages that have none, e.g. pgoutput Relation).
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The server's clock when sending, in µs since 2000-01-01.
        send_time: i64,
        /// The pgoutput message.
        data: Bytes,
    },
    /// The server's heartbeat.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The server's clock when sending, in µs since 2000-01-01.
        send_time: i64,
        /// The server wants a status update now, or it will disconnect at `wal_sender_timeout`.
        reply_requested: bool,
    },
}

/// A replication connection in streaming (CopyBoth) mode.
pub struct ReplicationStream {
    /// The framed socket.
    framed: Framed,
    /// The server has ended the copy (CopyDone or CommandComplete seen).
    server_done: bool,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("server_done", &self.server_done)
            .finish_non_exhaustive()
    }
}

/// What one parsing step found in the buffer.
enum Step {
    /// A replication message.
    Message(ReplicationMessage),
    /// The server ended the copy.
    End,
    /// A frame that carries nothing for the caller (notice, parameter status) was consumed.
    Skipped,
    /// No complete frame is buffered.
    NeedMore,
}

impl ReplicationStream {
    /// Takes over a connection whose server has just sent CopyBothResponse.
    pub(crate) fn new(framed: Framed) -> ReplicationStream {
        ReplicationStream {
            framed,
            server_done: false,
        }
    }

    /// The next message; `Ok(None)` once the server has ended the copy.
    ///
    /// Cancel-safe: bytes are read into a buffer and only complete frames are taken out of it, so a call
    /// dropped inside `tokio::select!` loses nothing. Payloads are slices of the read buffer (no copy).
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, SourceError> {
        if self.server_done {
            return Ok(None);
        }
        loop {
            match self.step()? {
                Step::Message(message) => return Ok(Some(message)),
                Step::End => {
                    self.server_done = true;
                    return Ok(None);
                }
                Step::Skipped => {}
                Step::NeedMore => self.framed.fill().await?,
            }
        }
    }

    /// Parses one buffered frame: CopyData inline (the hot path), everything else through
    /// `postgres_protocol`.
    fn step(&mut self) -> Result<Step, SourceError> {
        let Some(total) = frame_len(&self.framed.rbuf)? else {
            return Ok(Step::NeedMore);
        };
        if self.framed.rbuf.len() < total {
            self.framed.reserve_frame(total);
            return Ok(Step::NeedMore);
        }
        if self.framed.rbuf[0] == COPY_DATA_TAG {
            let mut body = self.framed.rbuf.split_to(total).freeze();
            body.advance(5);
            return parse_copy_data(body).map(Step::Message);
        }
        match self.framed.try_parse()? {
            None => Ok(Step::NeedMore),
            Some(Backend::CopyBothResponse) => Ok(Step::Skipped),
            Some(Backend::Message(message)) => match message {
                Message::CopyDone | Message::CommandComplete(_) | Message::ReadyForQuery(_) => {
                    Ok(Step::End)
                }
                Message::ErrorResponse(body) => Err(server_error(&body)),
                Message::NoticeResponse(body) => {
                    log_notice(&body);
                    Ok(Step::Skipped)
                }
                Message::ParameterStatus(_) => Ok(Step::Skipped),
                _ => Err(SourceError::Protocol(
                    "unexpected message while streaming".into(),
                )),
            },
        }
    }

    /// Sends a standby status update ('r'): the write, flush and apply positions, the current time,
    /// and whether the server should answer with a keepalive at once.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply: bool,
    ) -> Result<(), SourceError> {
        let mut body = [0u8; 34];
        let mut cursor = &mut body[..];
        cursor.put_u8(b'r');
        cursor.put_u64(write.0);
        cursor.put_u64(flush.0);
        cursor.put_u64(apply.0);
        cursor.put_i64(pg_now_micros());
        cursor.put_u8(u8::from(reply));
        frontend::CopyData::new(&body[..])?.write(&mut self.framed.wbuf);
        self.framed.send().await
    }

    /// Sends CopyDone and waits (at most 10 s) for the server to finish: remaining data is discarded
    /// until CommandComplete and ReadyForQuery, then the session is terminated.
    pub async fn finish(mut self) -> Result<(), SourceError> {
        tokio::time::timeout(FINISH_TIMEOUT, async {
            frontend::copy_done(&mut self.framed.wbuf);
            match self.framed.send().await {
                Ok(()) => {}
                // A walsender that has ended the copy itself may already have closed the socket.
                Err(SourceError::Io(_)) if self.server_done => return Ok(()),
                Err(e) => return Err(e),
            }
            loop {
                let message = match self.framed.read_message().await {
                    Ok(m) => m,
                    // A walsender that has ended the copy itself may close the socket straight away.
                    Err(SourceError::Io(e))
                        if self.server_done && e.kind() == std::io::ErrorKind::UnexpectedEof =>
                    {
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                match message {
                    Backend::Message(Message::ReadyForQuery(_)) => break,
                    Backend::Message(Message::ErrorResponse(body)) => {
                        return Err(server_error(&body));
                    }
                    Backend::Message(Message::NoticeResponse(body)) => log_notice(&body),
                    Backend::Message(Message::CopyDone) => self.server_done = true,
                    // CopyData still in flight, CommandComplete, ParameterStatus.
                    _ => {}
                }
            }
            frontend::terminate(&mut self.framed.wbuf);
            // The server closes the socket on Terminate; a failure here changes nothing.
            let _ = self.framed.send().await;
            Ok(())
        })
        .await
        .map_err(|_| SourceError::Timeout("ending the replication stream"))?
    }
}

/// Parses the body of a CopyData frame ('w' XLogData or 'k' keepalive) without copying the payload.
fn parse_copy_data(mut body: Bytes) -> Result<ReplicationMessage, SourceError> {
    let short = || SourceError::Protocol("a replication message is too short".into());
    if body.is_empty() {
        return Err(short());
    }
    match body.get_u8() {
        b'w' => {
            if body.len() < 24 {
                return Err(short());
            }
            let wal_start = Lsn(body.get_u64());
            let wal_end = Lsn(body.get_u64());
            let send_time = body.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data: body,
            })
        }
        b'k' => {
            if body.len() < 17 {
                return Err(short());
            }
            Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(body.get_u64()),
                send_time: body.get_i64(),
                reply_requested: body.get_u8() != 0,
            })
        }
        other => Err(SourceError::Protocol(format!(
            "unknown replication message type {:?}",
            char::from(other)
        ))),
    }
}

/// Now, in µs since 2000-01-01 (PostgreSQL's epoch).
pub fn pg_now_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_unix.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_OFFSET_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlogdata_is_parsed_and_its_payload_kept_whole() {
        let mut body = vec![b'w'];
        body.extend_from_slice(&1u64.to_be_bytes());
        body.extend_from_slice(&2u64.to_be_bytes());
        body.extend_from_slice(&3i64.to_be_bytes());
        body.extend_from_slice(b"BEGIN");
        assert_eq!(
            parse_copy_data(Bytes::from(body)).unwrap(),
            ReplicationMessage::XLogData {
                wal_start: Lsn(1),
                wal_end: Lsn(2),
                send_time: 3,
                data: Bytes::from_static(b"BEGIN"),
            }
        );
    }

    #[test]
    fn keepalive_is_parsed_with_its_reply_flag() {
        let mut body = vec![b'k'];
        body.extend_from_slice(&9u64.to_be_bytes());
        body.extend_from_slice(&(-5i64).to_be_bytes());
        body.push(1);
        assert_eq!(
            parse_copy_data(Bytes::from(body)).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: Lsn(9),
                send_time: -5,
                reply_requested: true
            }
        );
    }

    #[test]
    fn short_or_unknown_copy_data_is_a_protocol_error_not_a_panic() {
        for body in [&b""[..], b"w", b"wabc", b"k12345678", b"x"] {
            assert!(matches!(
                parse_copy_data(Bytes::copy_from_slice(body)),
                Err(SourceError::Protocol(_))
            ));
        }
    }

    /// A CopyData frame holding an XLogData message with `payload`.
    fn xlogdata_frame(start: u64, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![b'd'];
        frame.extend_from_slice(&(4 + 25 + payload.len() as u32).to_be_bytes());
        frame.push(b'w');
        frame.extend_from_slice(&start.to_be_bytes());
        frame.extend_from_slice(&(start + 100).to_be_bytes());
        frame.extend_from_slice(&0i64.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    #[tokio::test]
    async fn a_cancelled_next_loses_no_bytes_of_a_frame_split_across_reads() {
        // GIVEN a stream whose peer dribbles frames out a few bytes at a time
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut stream =
            ReplicationStream::new(Framed::new(super::super::wire::Transport::Unix(ours)));
        let mut wire = Vec::new();
        for i in 0..50u64 {
            wire.extend(xlogdata_frame(i, format!("payload-{i}").as_bytes()));
        }
        // A notice and a parameter status in the middle are skipped.
        wire.extend_from_slice(b"S\0\0\0\x08a\0b\0");
        wire.extend_from_slice(b"N\0\0\0\x18SNOTICE\0C00000\0Mhi\0\0");
        wire.extend(xlogdata_frame(50, &vec![7u8; 300_000]));
        wire.extend_from_slice(b"c\0\0\0\x04");
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in wire.chunks(7) {
                theirs.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            theirs
        });
        // WHEN next() is raced against an instant timeout over and over
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_micros(1), stream.next()).await {
                Err(_elapsed) => continue,
                Ok(Ok(Some(message))) => got.push(message),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("stream failed: {e}"),
            }
        }
        let _peer = writer.await.unwrap();
        // THEN every message arrives whole and in order, and the copy ends cleanly
        assert_eq!(got.len(), 51);
        for (i, message) in got.iter().enumerate() {
            let ReplicationMessage::XLogData {
                wal_start, data, ..
            } = message
            else {
                panic!("message {i} is not XLogData");
            };
            assert_eq!(wal_start.0, i as u64);
            if i < 50 {
                assert_eq!(&data[..], format!("payload-{i}").as_bytes());
            } else {
                assert_eq!(data.len(), 300_000);
            }
        }
        assert!(stream.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_server_error_while_streaming_carries_its_sqlstate() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut stream =
            ReplicationStream::new(Framed::new(super::super::wire::Transport::Unix(ours)));
        let body = b"SFATAL\0C57P01\0Mterminating connection\0\0";
        let mut frame = vec![b'E'];
        frame.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        use tokio::io::AsyncWriteExt;
        theirs.write_all(&frame).await.unwrap();
        let err = stream.next().await.unwrap_err();
        assert!(
            matches!(&err, SourceError::Server { code, message, .. } if code == "57P01" && message == "terminating connection"),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn a_status_update_is_one_well_formed_copy_data_frame() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut stream =
            ReplicationStream::new(Framed::new(super::super::wire::Transport::Unix(ours)));
        stream
            .send_status(Lsn(1), Lsn(2), Lsn(3), true)
            .await
            .unwrap();
        let mut frame = [0u8; 39];
        use tokio::io::AsyncReadExt;
        theirs.read_exact(&mut frame).await.unwrap();
        assert_eq!(&frame[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&frame[6..14], &1u64.to_be_bytes());
        assert_eq!(&frame[14..22], &2u64.to_be_bytes());
        assert_eq!(&frame[22..30], &3u64.to_be_bytes());
        assert_eq!(frame[38], 1);
    }

    #[test]
    fn the_clock_is_counted_from_2000() {
        // 2020-01-01 is 631152000 s after 2000-01-01; now is later than that.
        assert!(pg_now_micros() > 631_152_000_000_000);
    }
}

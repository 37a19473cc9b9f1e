//! The Server-Sent Events wire format of `GET /v1/commands/{id}/events`,
//! encoded straight to bytes.
//!
//! A live chunk's frame is the same for every watcher of the command, so the
//! hub encodes it once per instance ([`LiveEvent::frame`]) and each watcher
//! writes a reference-counted copy; at 1,000 watchers that is one JSON
//! encoding per chunk instead of 1,000.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rdev_shared::domain::Command;
use rdev_shared::mq::OutputEvent;
use serde_json::json;

/// A comment line: keeps proxies and clients from timing the stream out.
pub const KEEPALIVE: Bytes = Bytes::from_static(b":\n\n");

/// One frame: optional `id:`, `event:`, one `data:` line (JSON has no raw
/// newlines), optional `retry:`.
fn frame(id: Option<i64>, event: &str, data: &str, retry: Option<Duration>) -> Bytes {
    let mut out = String::with_capacity(data.len() + event.len() + 40);
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    let _ = writeln!(out, "event: {event}");
    out.push_str("data: ");
    out.push_str(data);
    out.push('\n');
    if let Some(retry) = retry {
        let _ = writeln!(out, "retry: {}", retry.as_millis());
    }
    out.push('\n');
    Bytes::from(out)
}

// Borrows the chunk.
/// Data of an SSE `output` event (its `id:` is `seq`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = OutputEventData)]
pub struct OutputData<'a> {
    /// Chunk sequence number; resume with `Last-Event-ID: <seq>`.
    seq: i64,
    /// `stdout` or `stderr`.
    stream: &'a str,
    /// The chunk, as UTF-8 (invalid bytes replaced).
    #[schema(value_type = String)]
    data: std::borrow::Cow<'a, str>,
}

/// Data of an SSE `gap` event: chunks cut by output truncation.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = GapEventData)]
pub struct GapData {
    from_seq: i64,
    to_seq: i64,
}

/// The `output` event of one chunk (`id: seq`, JSON data with the bytes as
/// lossy UTF-8), serialised straight into the frame's buffer. Public for
/// the benchmarks in `api/benches/sse.rs`.
pub fn output(seq: i64, stream: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + data.len() / 8 + 96);
    let _ = write!(FmtBytes(&mut out), "id: {seq}\nevent: output\ndata: ");
    let body = OutputData {
        seq,
        stream,
        data: String::from_utf8_lossy(data),
    };
    // Serialising a struct of a number and two strings cannot fail.
    let _ = serde_json::to_writer((&mut out).writer(), &body);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// A `status` or `end` event carrying the command.
pub fn command(kind: &str, cmd: &Command, retry: Option<Duration>) -> Bytes {
    frame(
        None,
        kind,
        &serde_json::to_string(cmd).unwrap_or_default(),
        retry,
    )
}

/// Chunks `from_seq..=to_seq` were cut by truncation.
pub fn gap(from_seq: i64, to_seq: i64) -> Bytes {
    let data = serde_json::to_string(&GapData { from_seq, to_seq }).unwrap_or_default();
    frame(None, "gap", &data, None)
}

/// Tells the client to reconnect (with `Last-Event-ID`) after `retry`.
pub fn reconnect(reason: &str, retry: Duration) -> Bytes {
    let data = json!({ "reason": reason }).to_string();
    frame(None, "reconnect", &data, Some(retry))
}

/// `fmt::Write` into a `BytesMut`.
struct FmtBytes<'a>(&'a mut BytesMut);

impl std::fmt::Write for FmtBytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// A live message as the hub hands it to every watcher of a command, with
/// its SSE frame encoded by the first watcher that writes it.
#[derive(Debug)]
pub struct LiveEvent {
    /// The message.
    pub event: OutputEvent,
    frame: OnceLock<Bytes>,
}

impl LiveEvent {
    /// Wraps a message received from the output exchange.
    pub fn new(event: OutputEvent) -> Self {
        Self {
            event,
            frame: OnceLock::new(),
        }
    }

    /// A chunk's `seq` and data length; `None` for other messages.
    pub fn chunk_seq_len(&self) -> Option<(i64, usize)> {
        match &self.event {
            OutputEvent::Chunk { seq, data, .. } => Some((*seq, data.len())),
            OutputEvent::Status | OutputEvent::End => None,
        }
    }

    /// What holding a chunk costs: its data and its encoded frame (a chunk
    /// of control characters encodes to six times its size). Encodes the
    /// frame if it was not yet.
    pub fn held_bytes(&self) -> usize {
        let data = self.chunk_seq_len().map_or(0, |(_, n)| n);
        data + self.frame().map_or(0, |f| f.len())
    }

    /// The `output` frame of a chunk, encoded once; `None` for other messages.
    pub fn frame(&self) -> Option<Bytes> {
        match &self.event {
            OutputEvent::Chunk { seq, stream, data } => Some(
                self.frame
                    .get_or_init(|| output(*seq, stream.as_str(), data))
                    .clone(),
            ),
            OutputEvent::Status | OutputEvent::End => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdev_shared::domain::OutputStream;

    #[test]
    fn an_output_frame_is_one_sse_event_with_the_seq_as_id() {
        let f = output(7, "stderr", b"a \"b\"\nc");
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "id: 7\nevent: output\ndata: {\"seq\":7,\"stream\":\"stderr\",\"data\":\"a \\\"b\\\"\\nc\"}\n\n"
        );
    }

    #[test]
    fn a_reconnect_frame_carries_the_retry_hint() {
        let f = reconnect("server shutting down", Duration::from_millis(500));
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "event: reconnect\ndata: {\"reason\":\"server shutting down\"}\nretry: 500\n\n"
        );
    }

    #[test]
    fn a_live_chunk_is_encoded_once_and_shared() {
        let ev = LiveEvent::new(OutputEvent::Chunk {
            seq: 1,
            stream: OutputStream::Stdout,
            data: Bytes::from_static(b"hi\n"),
        });
        let a = ev.frame().unwrap();
        let b = ev.frame().unwrap();
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the second watcher reuses the bytes"
        );
        assert!(LiveEvent::new(OutputEvent::End).frame().is_none());
    }
}

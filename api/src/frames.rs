//! The Server-Sent Events wire format of `GET /v1/commands/{id}/events`,
//! encoded straight to bytes.
//!
//! A live chunk's frame is the same for every watcher of the command, so the
//! hub encodes it once per instance ([`LiveEvent::frame`]) and each watcher
//! writes a reference-counted copy; at 1,000 watchers that is one JSON
//! encoding per chunk instead of 1,000.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rdev_shared::domain::{Command, CommandStatus};
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
    /// A `status` or `end` message's reads, shared by this instance's
    /// watchers (none for chunks, which the hub keeps many of).
    reads: Option<Box<SharedReads>>,
}

/// What every watcher of a command reads from PostgreSQL after a `status`
/// or `end` message, read once per instance: each stream used to read the
/// command after a status change, and the command and the last page of its
/// stored output at its end (10,000 streams of one command: 20,000 queries
/// in a burst when it ended).
///
/// Each read starts after the message arrived, so it sees what the message
/// announced (the worker publishes after its commit), as a watcher's own
/// read would. A failed read is not kept: the next watcher tries again.
#[derive(Debug, Default)]
struct SharedReads {
    /// The command's status and its frame, encoded once: a clone of the
    /// command per watcher, all at once, would cost more than the reads.
    command: tokio::sync::OnceCell<(CommandStatus, Bytes)>,
    /// The stored output after one position (the first watcher's), the
    /// position the page ends at, and whether the page was full.
    stored: tokio::sync::OnceCell<(i64, StoredPage)>,
}

/// A page of stored output as SSE frames: the frames, the `seq` after
/// which the next page starts, and whether this page was full.
pub type StoredPage = (Vec<Bytes>, i64, bool);

impl LiveEvent {
    /// Wraps a message received from the output exchange.
    pub fn new(event: OutputEvent) -> Self {
        let reads = match event {
            OutputEvent::Chunk { .. } => None,
            OutputEvent::Status | OutputEvent::End => Some(Box::default()),
        };
        Self {
            event,
            frame: OnceLock::new(),
            reads,
        }
    }

    /// The command as read after this message, as its status and the frame
    /// this message calls for (`end` after an end, else `status`): read by
    /// the first watcher that asks (`load`) and encoded once, handed to the
    /// others. `None` when it cannot be read.
    pub async fn command_after<F, Fut>(&self, load: F) -> Option<(CommandStatus, Bytes)>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Option<Command>>,
    {
        let name = match self.event {
            OutputEvent::End => "end",
            OutputEvent::Status | OutputEvent::Chunk { .. } => "status",
        };
        let read = || async { load().await.map(|c| (c.status, command(name, &c, None))) };
        let Some(reads) = &self.reads else {
            return read().await;
        };
        reads
            .command
            .get_or_try_init(|| async { read().await.ok_or(()) })
            .await
            .ok()
            .cloned()
    }

    /// The page of stored output after `after`, read after this message:
    /// shared by the watchers that are at the same position as the first
    /// one that asks (after a command's end, usually all of them), read by
    /// `load` for the others.
    pub async fn stored_after<F, Fut>(&self, after: i64, load: F) -> Result<StoredPage, String>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<StoredPage, String>>,
    {
        let Some(reads) = &self.reads else {
            return load().await;
        };
        let (at, page) = reads
            .stored
            .get_or_try_init(|| async { load().await.map(|page| (after, page)) })
            .await?;
        if *at == after {
            Ok(page.clone())
        } else {
            load().await
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

    #[tokio::test]
    async fn reads_after_an_end_are_shared_by_watchers_at_the_same_position() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let reads = AtomicUsize::new(0);
        let load = |after: i64| {
            let reads = &reads;
            move || async move {
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok::<StoredPage, String>((
                    vec![output(after + 1, "stdout", b"x")],
                    after + 1,
                    false,
                ))
            }
        };
        let end = LiveEvent::new(OutputEvent::End);
        let (a, b, c) = tokio::join!(
            end.stored_after(4, load(4)),
            end.stored_after(4, load(4)),
            end.stored_after(4, load(4)),
        );
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "one read for three watchers"
        );
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.expect("read").1, 5);
        // A watcher elsewhere reads for itself.
        let other = end.stored_after(2, load(2)).await.expect("read");
        assert_eq!((reads.load(Ordering::SeqCst), other.1), (2, 3));
        // Chunks share nothing.
        let chunk = LiveEvent::new(OutputEvent::Chunk {
            seq: 1,
            stream: OutputStream::Stdout,
            data: b"x".to_vec().into(),
        });
        let _ = chunk.stored_after(4, load(4)).await;
        let _ = chunk.stored_after(4, load(4)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failed_shared_read_is_tried_again_by_the_next_watcher() {
        let end = LiveEvent::new(OutputEvent::Status);
        let failed = end
            .stored_after(0, || async { Err::<StoredPage, _>("down".to_owned()) })
            .await;
        assert_eq!(failed, Err("down".to_owned()));
        let read = end
            .stored_after(0, || async { Ok((Vec::new(), 0, false)) })
            .await;
        assert_eq!(read, Ok((Vec::new(), 0, false)));
    }
}

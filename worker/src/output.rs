//! The output sink of one command: redacts the command's secret values,
//! numbers the pieces, publishes each one live on the output exchange, and
//! stores the head and tail (see [`crate::head_tail`]) in PostgreSQL in
//! batches.
//!
//! Redaction happens here, first, and nowhere else: every consumer (stored
//! output, SSE, the attach WebSocket, `/output`, webhooks, the console)
//! reads what this sink published or stored, so none of them ever sees a
//! secret value. One [`Redactor`] per stream; it holds back at most the
//! longest form of a value minus one byte, and what it holds is flushed
//! when the output ends.
//!
//! Memory per command is bounded: the current batch (≤ [`FLUSH_BYTES`] plus
//! one piece) and the tail's `(seq, len)` list. When the sink is slow, the
//! bounded channel in front of it stalls the process's output.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdev_shared::db::output::{self, Chunk, MAX_CHUNK_BYTES};
use rdev_shared::db::{DbError, Pool};
use rdev_shared::domain::OutputStream;
use rdev_shared::mq::{OutputEvent, Publisher};
use rdev_shared::redact::{Redaction, Redactor};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::head_tail::HeadTail;

/// A batch is written once it holds this many bytes…
pub const FLUSH_BYTES: usize = 256 * 1024;
/// …or this many chunks…
pub const FLUSH_CHUNKS: usize = 64;
/// …or this long after the previous write.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Attempts of one batch write before the batch is given up (about 16 s).
const FLUSH_ATTEMPTS: u32 = 8;

/// What the sink learned about a command's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputSummary {
    /// Bytes produced, stored or not.
    pub output_bytes: i64,
    /// Whether the stored copy lacks anything.
    pub truncated: bool,
}

/// Stores and publishes one command's output.
pub struct OutputSink {
    command_id: Uuid,
    pool: Pool,
    publisher: Arc<Publisher>,
    head_tail: HeadTail,
    batch: Vec<Chunk>,
    batch_bytes: usize,
    evicted: Vec<i64>,
    output_bytes: u64,
    lost: bool,
    publish_failed: bool,
    /// Per stream (stdout, stderr); `None` when there is nothing to redact.
    redactors: Option<[Redactor; 2]>,
    worker_id: String,
    /// The command is no longer this worker's (reaped while it ran): what
    /// it prints is neither stored nor published; the heartbeat stops it.
    disowned: bool,
}

impl OutputSink {
    /// A sink keeping at most `max_output_bytes` stored bytes.
    pub fn new(
        command_id: Uuid,
        worker_id: String,
        max_output_bytes: i64,
        pool: Pool,
        publisher: Arc<Publisher>,
    ) -> Self {
        let cap = u64::try_from(max_output_bytes).unwrap_or(0);
        Self {
            command_id,
            pool,
            publisher,
            head_tail: HeadTail::new(cap),
            batch: Vec::new(),
            batch_bytes: 0,
            evicted: Vec::new(),
            output_bytes: 0,
            lost: false,
            publish_failed: false,
            worker_id,
            disowned: false,
            redactors: None,
        }
    }

    /// Redacts `redaction`'s values from everything this sink publishes
    /// and stores.
    pub fn with_redaction(mut self, redaction: Arc<Redaction>) -> Self {
        self.redactors = (!redaction.is_empty())
            .then(|| [Redactor::new(redaction.clone()), Redactor::new(redaction)]);
        self
    }

    /// Redacts a piece and hands on what may be emitted now, in pieces of
    /// at most [`MAX_CHUNK_BYTES`] (a replacement can make it longer).
    async fn take(&mut self, stream: OutputStream, data: Bytes) {
        let data = match &mut self.redactors {
            None => data,
            Some(r) => Bytes::from(r[stream_index(stream)].push(&data)),
        };
        self.push_split(stream, data).await;
    }

    /// The end of the output: what the redactors held back.
    async fn finish_redaction(&mut self) {
        let Some(r) = &mut self.redactors else {
            return;
        };
        let rest = [
            (OutputStream::Stdout, Bytes::from(r[0].finish())),
            (OutputStream::Stderr, Bytes::from(r[1].finish())),
        ];
        for (stream, data) in rest {
            self.push_split(stream, data).await;
        }
    }

    async fn push_split(&mut self, stream: OutputStream, mut data: Bytes) {
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(MAX_CHUNK_BYTES));
            self.push(stream, piece).await;
            if self.batch_bytes >= FLUSH_BYTES || self.batch.len() >= FLUSH_CHUNKS {
                self.flush().await;
            }
        }
    }

    /// Consumes output until every sender is gone, then writes what is left.
    pub async fn consume(mut self, mut rx: mpsc::Receiver<(OutputStream, Bytes)>) -> OutputSummary {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                piece = rx.recv() => match piece {
                    Some((stream, data)) => self.take(stream, data).await,
                    None => break,
                },
                _ = tick.tick() => self.flush().await,
            }
        }
        self.finish_redaction().await;
        self.flush().await;
        OutputSummary {
            output_bytes: i64::try_from(self.output_bytes).unwrap_or(i64::MAX),
            truncated: self.head_tail.truncated() || self.lost,
        }
    }

    async fn push(&mut self, stream: OutputStream, data: Bytes) {
        self.output_bytes += data.len() as u64;
        if self.disowned {
            return;
        }
        let plan = self.head_tail.admit(data.len());
        for seq in plan.evict {
            // A piece still in the batch is simply never written.
            if let Some(i) = self.batch.iter().position(|c| c.seq == seq) {
                self.batch_bytes -= self.batch[i].data.len();
                self.batch.remove(i);
            } else {
                self.evicted.push(seq);
            }
        }
        for piece in plan.pieces {
            let bytes = data.slice(piece.range);
            let event = OutputEvent::Chunk {
                seq: piece.seq,
                stream,
                data: bytes.clone(),
            };
            // PostgreSQL holds the durable copy; a lost live piece only makes
            // watchers read it from there.
            if let Err(e) = self.publisher.publish_output(self.command_id, &event).await
                && !std::mem::replace(&mut self.publish_failed, true)
            {
                tracing::warn!(error = %e, "cannot publish live output; watchers will read PostgreSQL");
            }
            if piece.store {
                self.batch_bytes += bytes.len();
                self.batch.push(Chunk {
                    seq: piece.seq,
                    stream,
                    data: bytes.to_vec(),
                });
            }
        }
    }

    /// Writes the batch and the evictions, retrying with backoff; after
    /// repeated failures the batch is dropped (and the output marked
    /// truncated) so memory stays bounded.
    async fn flush(&mut self) {
        if self.batch.is_empty() && self.evicted.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=FLUSH_ATTEMPTS {
            match self.write().await {
                Ok(true) => {
                    self.clear();
                    return;
                }
                Ok(false) => {
                    if !std::mem::replace(&mut self.disowned, true) {
                        tracing::warn!(
                            "the command is no longer this worker's (reaped?); its output is refused"
                        );
                    }
                    self.lost = true;
                    self.clear();
                    return;
                }
                Err(e) if attempt < FLUSH_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "writing output failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, chunks = self.batch.len(), "giving up on writing output");
                }
            }
        }
        self.lost = true;
        self.clear();
    }

    /// Stores the batch; false when the command is no longer this worker's.
    async fn write(&self) -> Result<bool, DbError> {
        let client = self.pool.get().await?;
        output::store(
            &client,
            self.command_id,
            &self.worker_id,
            &self.batch,
            &self.evicted,
        )
        .await
    }

    fn clear(&mut self) {
        self.batch.clear();
        self.batch_bytes = 0;
        self.evicted.clear();
    }
}

fn stream_index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

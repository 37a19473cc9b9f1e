//! The consume loop: one session per broker connection, a prefetch that
//! follows the free slots, and the drain at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use rdev_shared::mq::{self, Backoff, MqError};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Worker;
use super::command::handle;

/// Command slots and the tasks that hold them.
struct Slots {
    concurrency: usize,
    permits: Arc<Semaphore>,
    /// Signalled whenever a command task ends and frees its slot.
    freed: Arc<Notify>,
    tracker: TaskTracker,
}

/// How a session ended.
enum SessionEnd {
    /// `stop` fired (or the slots closed): consume no more.
    Stopped,
    /// The connection or the consumer failed: reconnect.
    Broken,
}

/// Consumes run messages until `stop` fires, then lets running commands
/// finish for the drain period, stops the rest, and returns once every
/// command task has acknowledged its message.
pub async fn consume(worker: Arc<Worker>, stop: CancellationToken) {
    let concurrency = usize::from(worker.cfg.concurrency);
    let slots = Slots {
        concurrency,
        permits: Arc::new(Semaphore::new(concurrency)),
        freed: Arc::new(Notify::new()),
        tracker: TaskTracker::new(),
    };
    // Old connections stay open until the end: running commands ack on them.
    let mut connections: Vec<Connection> = Vec::new();
    let mut backoff = Backoff::new();

    'session: while !stop.is_cancelled() {
        // Commands of an earlier session still hold their slots (their
        // messages went back to the broker with the old channel). The new
        // channel's prefetch counts only the free slots, or this worker would
        // hoard messages idle workers could run; it grows as those commands
        // end. Prefetch 0 means "unlimited", so wait for a free slot first.
        while slots.permits.available_permits() == 0 {
            tokio::select! {
                () = slots.freed.notified() => {}
                () = stop.cancelled() => break 'session,
            }
        }
        let prefetch = slots.permits.available_permits().min(concurrency);
        let opened = tokio::select! {
            r = open_consumer(&worker, prefetch) => r,
            () = stop.cancelled() => break,
        };
        let (conn, channel, consumer) = match opened {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.current(), "cannot consume from RabbitMQ");
                if !backoff.wait(&stop).await {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        connections.push(conn);
        worker.consumer_connected.store(true, Ordering::Relaxed);
        tracing::info!(queue = %worker.topology.commands_queue(), prefetch, "consuming commands");
        let end = session(&worker, &slots, &stop, (&channel, consumer), prefetch).await;
        worker.consumer_connected.store(false, Ordering::Relaxed);
        if matches!(end, SessionEnd::Stopped) || !backoff.wait(&stop).await {
            break;
        }
    }
    worker.consumer_connected.store(false, Ordering::Relaxed);
    drain(&worker, &slots.tracker).await;
    for conn in connections {
        let _ = conn.close(200, "worker shutting down".into()).await;
    }
}

/// Hands the deliveries of one connection to command tasks, one slot each,
/// raising the prefetch as slots of earlier sessions free up.
async fn session(
    worker: &Arc<Worker>,
    slots: &Slots,
    stop: &CancellationToken,
    (channel, mut consumer): (&Channel, Consumer),
    mut prefetch: usize,
) -> SessionEnd {
    // Messages of this session not yet acknowledged.
    let in_session = Arc::new(AtomicUsize::new(0));
    loop {
        let next = tokio::select! {
            d = consumer.next() => d,
            () = slots.freed.notified(), if prefetch < slots.concurrency => {
                // Slots of this session plus the free ones: what this
                // channel may hold now.
                let wanted = (slots.permits.available_permits()
                    + in_session.load(Ordering::Acquire))
                .min(slots.concurrency);
                if wanted > prefetch {
                    match set_prefetch(channel, wanted).await {
                        Ok(()) => prefetch = wanted,
                        Err(e) => tracing::warn!(error = %e, "cannot raise the prefetch"),
                    }
                }
                continue;
            }
            () = stop.cancelled() => {
                stop_consuming(channel, &consumer).await;
                return SessionEnd::Stopped;
            }
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer failed; reconnecting");
                return SessionEnd::Broken;
            }
            None => {
                tracing::warn!("consumer stream ended; reconnecting");
                return SessionEnd::Broken;
            }
        };
        let permit = tokio::select! {
            p = slots.permits.clone().acquire_owned() => p,
            () = stop.cancelled() => {
                // This delivery stays unacknowledged: the broker gives it
                // to another worker when our channel closes.
                stop_consuming(channel, &consumer).await;
                return SessionEnd::Stopped;
            }
        };
        let Ok(permit) = permit else {
            return SessionEnd::Stopped;
        };
        in_session.fetch_add(1, Ordering::AcqRel);
        let (w, in_session, freed) = (worker.clone(), in_session.clone(), slots.freed.clone());
        slots.tracker.spawn(async move {
            handle(w, delivery, permit).await;
            in_session.fetch_sub(1, Ordering::AcqRel);
            freed.notify_one();
        });
    }
}

/// Lets running commands finish for the drain period, then stops the rest
/// and waits until every command task has acknowledged its message.
async fn drain(worker: &Worker, tracker: &TaskTracker) {
    tracker.close();
    if !tracker.is_empty() {
        tracing::info!(running = tracker.len(), drain = ?worker.cfg.drain(), "draining running commands");
    }
    if tokio::time::timeout(worker.cfg.drain(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            running = tracker.len(),
            "drain period over; stopping running commands"
        );
        worker.stop_commands.cancel();
        tracker.wait().await;
    }
}

async fn stop_consuming(channel: &Channel, consumer: &Consumer) {
    if let Err(e) = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
    {
        tracing::debug!(error = %e, "cancelling the consumer failed");
    }
}

/// Sets the channel's prefetch. Channel-wide (`global`), because RabbitMQ
/// applies a changed per-consumer prefetch only to consumers started later,
/// while a channel-wide one takes effect at once; the channel has one
/// consumer, so both mean the same.
/// https://www.rabbitmq.com/docs/consumer-prefetch
async fn set_prefetch(channel: &Channel, prefetch: usize) -> Result<(), MqError> {
    channel
        .basic_qos(
            u16::try_from(prefetch).unwrap_or(u16::MAX),
            BasicQosOptions { global: true },
        )
        .await?;
    Ok(())
}

async fn open_consumer(
    w: &Worker,
    prefetch: usize,
) -> Result<(Connection, Channel, Consumer), MqError> {
    let conn = mq::connect(
        &w.cfg.amqp,
        &format!("rdev-worker {} consumer", w.worker_id),
    )
    .await?;
    let channel = conn.create_channel().await?;
    mq::declare(&channel, &w.topology).await?;
    // Prefetch = free slots: the broker never hands us more than we run.
    set_prefetch(&channel, prefetch).await?;
    let consumer = channel
        .basic_consume(
            w.topology.commands_queue().into(),
            format!("rdev-worker-{}", w.worker_id).into(),
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((conn, channel, consumer))
}

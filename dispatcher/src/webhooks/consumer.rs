//! Consumes lifecycle events from the durable `{prefix}.webhooks` queue and
//! fans each one out into delivery rows, then acks. The rows are the durable
//! schedule from then on; a redelivered event creates nothing new thanks to
//! the unique (endpoint, event) pair.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use rdev_shared::config::AmqpConfig;
use rdev_shared::db::webhooks::{self as repo, FanOut};
use rdev_shared::db::{DbError, Pool};
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::metrics::Metrics;
use rdev_shared::mq::{self, Backoff, MqError, Topology};
use serde::Deserialize;
use tokio::sync::Notify;
use uuid::Uuid;

/// The parts of an event the fan-out needs.
#[derive(Debug, Deserialize)]
struct EventHead {
    id: Uuid,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<EventData>,
}

#[derive(Debug, Deserialize)]
struct EventData {
    id: Option<Uuid>,
}

/// What the consumer needs.
pub struct Consuming {
    /// Broker settings.
    pub amqp: AmqpConfig,
    /// Names.
    pub topology: Topology,
    /// Database.
    pub pool: Pool,
    /// Unacknowledged events the broker may hand over at once.
    pub prefetch: u16,
    /// Delay of the first attempt.
    pub first_delay: Duration,
    /// Woken after new deliveries are created.
    pub wake: Arc<Notify>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

async fn open(c: &Consuming) -> Result<(Connection, Channel, Consumer), MqError> {
    let conn = mq::connect(&c.amqp, "rdev-dispatcher webhooks").await?;
    let channel = conn.create_channel().await?;
    mq::declare(&channel, &c.topology).await?;
    // Bounded prefetch: unacknowledged events per consumer stay few.
    // https://www.rabbitmq.com/docs/consumer-prefetch
    channel
        .basic_qos(c.prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            c.topology.webhooks_queue().into(),
            format!("rdev-dispatcher-{}", Uuid::now_v7().simple()).into(),
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((conn, channel, consumer))
}

/// Consumes until `stop` is cancelled, reconnecting with backoff.
pub async fn run(c: Consuming, stop: CancellationToken) {
    let mut backoff = Backoff::new();
    'session: while !stop.is_cancelled() {
        let opened = tokio::select! {
            r = open(&c) => r,
            () = stop.cancelled() => break,
        };
        let (conn, channel, mut consumer) = match opened {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.current(), "cannot consume webhook events");
                if !backoff.wait(&stop).await {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        tracing::info!(queue = %c.topology.webhooks_queue(), "consuming webhook events");
        loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                () = stop.cancelled() => {
                    let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                    let _ = conn.close(200, "dispatcher stopping".into()).await;
                    break 'session;
                }
            };
            let first = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "webhook consumer failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("webhook consumer ended; reconnecting");
                    break;
                }
            };
            // Take whatever else is already here (up to the prefetch) and
            // fan it all out in one transaction: one commit per batch.
            let mut batch = vec![first];
            let mut broken = false;
            while batch.len() < usize::from(c.prefetch) {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(d))) => batch.push(d),
                    Some(Some(Err(_)) | None) => {
                        broken = true;
                        break;
                    }
                    None => break,
                }
            }
            handle_batch(&c, batch).await;
            if broken {
                tracing::warn!("webhook consumer ended; reconnecting");
                break;
            }
        }
        let _ = conn.close(200, "reconnecting".into()).await;
        if !backoff.wait(&stop).await {
            break;
        }
    }
}

/// Fans out a batch of events in one transaction, then acks them; on a
/// database error every event of the batch goes back to the queue.
async fn handle_batch(c: &Consuming, batch: Vec<Delivery>) {
    c.metrics
        .amqp_consumed_total
        .with_label_values(&["webhooks"])
        .inc_by(batch.len() as u64);
    let mut events = Vec::with_capacity(batch.len());
    for d in batch {
        match serde_json::from_slice::<EventHead>(&d.data) {
            Ok(head) => events.push((head, d)),
            Err(e) => {
                tracing::error!(error = %e, "malformed event; dropping it");
                ack(d).await;
            }
        }
    }
    if events.is_empty() {
        return;
    }
    match fan_out(c, &events).await {
        Ok(created) => {
            if created > 0 {
                tracing::debug!(
                    events = events.len(),
                    deliveries = created,
                    "events fanned out"
                );
                c.wake.notify_one();
            }
            for (_, d) in events {
                ack(d).await;
            }
        }
        Err(e) => {
            // Give them back; pause so a database outage is not a hot loop.
            tracing::warn!(error = %e, events = events.len(), "cannot fan out events; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (_, d) in events {
                let nacked = d
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
                if let Err(e) = nacked {
                    tracing::warn!(error = %e, "cannot requeue an event");
                }
            }
        }
    }
}

async fn ack(d: Delivery) {
    if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
        // The broker redelivers; the unique (endpoint, event) pair makes it harmless.
        tracing::warn!(error = %e, "cannot acknowledge an event");
    }
}

async fn fan_out(c: &Consuming, events: &[(EventHead, Delivery)]) -> Result<u64, DbError> {
    let traces: Vec<BTreeMap<String, String>> = events
        .iter()
        .map(|(_, d)| {
            mq::header_pairs(&d.properties)
                .into_iter()
                .filter(|(k, _)| k == "traceparent" || k == "tracestate")
                .collect()
        })
        .collect();
    let batch: Vec<FanOut<'_>> = events
        .iter()
        .zip(&traces)
        .map(|((head, d), trace)| FanOut {
            event_id: head.id,
            event_type: &head.kind,
            payload: &d.data,
            command_id: head.data.as_ref().and_then(|x| x.id),
            trace_headers: trace,
        })
        .collect();
    let client = c.pool.get().await?;
    repo::fan_out(&client, &batch, c.first_delay).await
}

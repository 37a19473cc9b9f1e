//! Consumes lifecycle events from the durable `{prefix}.webhooks` queue and
//! fans each one out into delivery rows, then acks. The rows are the durable
//! schedule from then on; a redelivered event creates nothing new thanks to
//! the unique (endpoint, event) pair.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use rdev_shared::config::AmqpConfig;
use rdev_shared::db::webhooks::{self as repo, FanOut};
use rdev_shared::db::{DbError, Pool};
use rdev_shared::mq::{self, MqError, Topology};
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

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

/// Consumes until `stop` turns true, reconnecting with backoff.
pub async fn run(c: Consuming, mut stop: watch::Receiver<bool>) {
    let mut backoff = RECONNECT_MIN;
    'session: while !*stop.borrow() {
        let opened = tokio::select! {
            r = open(&c) => r,
            () = super::stopped(&mut stop) => break,
        };
        let (conn, channel, mut consumer) = match opened {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot consume webhook events");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = super::stopped(&mut stop) => break,
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        backoff = RECONNECT_MIN;
        tracing::info!(queue = %c.topology.webhooks_queue(), "consuming webhook events");
        loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                () = super::stopped(&mut stop) => {
                    let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                    let _ = conn.close(200, "dispatcher stopping".into()).await;
                    break 'session;
                }
            };
            match next {
                Some(Ok(delivery)) => handle(&c, delivery).await,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "webhook consumer failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("webhook consumer ended; reconnecting");
                    break;
                }
            }
        }
        let _ = conn.close(200, "reconnecting".into()).await;
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = super::stopped(&mut stop) => break,
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

async fn fan_out(c: &Consuming, head: &EventHead, body: &[u8]) -> Result<u64, DbError> {
    let client = c.pool.get().await?;
    repo::fan_out(
        &client,
        &FanOut {
            event_id: head.id,
            event_type: &head.kind,
            payload: body,
            command_id: head.data.as_ref().and_then(|d| d.id),
            first_delay: c.first_delay,
        },
    )
    .await
}

async fn handle(c: &Consuming, delivery: Delivery) {
    let result = match serde_json::from_slice::<EventHead>(&delivery.data) {
        Err(e) => {
            tracing::error!(error = %e, "malformed event; dropping it");
            delivery.acker.ack(BasicAckOptions::default()).await
        }
        Ok(head) => match fan_out(c, &head, &delivery.data).await {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(event = %head.id, kind = %head.kind, deliveries = n, "event fanned out");
                    c.wake.notify_one();
                }
                delivery.acker.ack(BasicAckOptions::default()).await
            }
            Err(e) => {
                // Give it back; pause so a database outage is not a hot loop.
                tracing::warn!(error = %e, event = %head.id, "cannot fan out event; requeueing");
                tokio::time::sleep(Duration::from_secs(1)).await;
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        },
    };
    if let Err(e) = result {
        // The broker redelivers; the unique (endpoint, event) pair makes it harmless.
        tracing::warn!(error = %e, "cannot acknowledge an event");
    }
}

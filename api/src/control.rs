//! The control exchange (`{prefix}.control`, fanout, transient) as seen by an
//! API instance: it announces key changes there, and listens on its own
//! exclusive auto-delete queue to evict cached keys when any instance
//! announces one. Other message types (e.g. workers' `cancel`) are ignored.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use rdev_shared::config::AmqpConfig;
use rdev_shared::db::outbox::OutboxMessage;
use rdev_shared::mq::{self, MqError, Publisher, Topology};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::keycache::KeyCache;

/// A control message; unknown `type`s decode to [`ControlMessage::Other`].
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// A key was created, revoked or rotated: cached lookups are stale.
    KeyChanged {
        /// The key.
        key_id: Uuid,
    },
    /// Anything else on the exchange (not for the API).
    #[serde(other)]
    Other,
}

/// Evicts cached keys locally, then tells every other instance. Failure to
/// publish is logged: other instances then rely on their TTL backstop.
pub async fn announce_key_change(cache: &KeyCache, publisher: &Publisher, key_id: Uuid) {
    cache.invalidate_all();
    let msg = OutboxMessage {
        exchange: publisher.topology().control_exchange(),
        routing_key: String::new(),
        payload: serde_json::to_vec(&ControlMessage::KeyChanged { key_id }).unwrap_or_default(),
        headers: Default::default(),
        priority: 0,
    };
    if let Err(e) = publisher.publish_confirmed(&msg).await {
        tracing::warn!(error = %e, key = %key_id, "could not announce a key change");
    }
}

async fn connect(
    amqp: &AmqpConfig,
    topology: &Topology,
    queue: &str,
) -> Result<(lapin::Connection, lapin::Consumer), MqError> {
    let conn = mq::connect(amqp, &format!("rdev-api {queue}")).await?;
    let ch = conn.create_channel().await?;
    mq::declare(&ch, topology).await?;
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), opts, FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.into(),
        topology.control_exchange().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((conn, consumer))
}

/// Listens until `shutdown` resolves, reconnecting with backoff. Each
/// (re)connection empties the cache, since announcements may have been
/// missed while away.
pub async fn listen(
    amqp: AmqpConfig,
    instance: String,
    cache: Arc<KeyCache>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let topology = Topology::new(amqp.prefix.clone());
    let queue = format!("{}.control.api.{instance}", topology.prefix());
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(200);
    loop {
        match connect(&amqp, &topology, &queue).await {
            Ok((conn, mut consumer)) => {
                cache.set_listening(true);
                cache.invalidate_all();
                backoff = Duration::from_millis(200);
                loop {
                    tokio::select! {
                        _ = &mut shutdown => {
                            cache.set_listening(false);
                            let _ = conn.close(200, "shutdown".into()).await;
                            return;
                        }
                        next = consumer.next() => match next {
                            Some(Ok(d)) => match serde_json::from_slice::<ControlMessage>(&d.data) {
                                Ok(ControlMessage::KeyChanged { key_id }) => {
                                    tracing::debug!(key = %key_id, "key changed: cache emptied");
                                    cache.invalidate_all();
                                }
                                Ok(ControlMessage::Other) => {}
                                Err(e) => tracing::debug!(error = %e, "malformed control message"),
                            },
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "control consumer failed");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                cache.set_listening(false);
            }
            Err(e) => tracing::warn!(error = %e, "control listener cannot connect to RabbitMQ"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_control_messages_are_ignored() {
        let id = Uuid::now_v7();
        let m: ControlMessage =
            serde_json::from_str(&format!(r#"{{"type":"key_changed","key_id":"{id}"}}"#))
                .expect("key_changed");
        assert_eq!(m, ControlMessage::KeyChanged { key_id: id });
        let m: ControlMessage =
            serde_json::from_str(r#"{"type":"cancel","command_id":"x"}"#).expect("other");
        assert_eq!(m, ControlMessage::Other);
    }
}

//! The control exchange (`{prefix}.control`, fanout, transient) as seen by an
//! API instance: it announces key and project changes there, and listens on
//! its own exclusive auto-delete queue to evict cached lookups when any
//! instance announces one. Other message types (e.g. workers' `cancel`) are
//! ignored.

use std::sync::Arc;

use lapin::message::Delivery;
use rdev_shared::cache::BoundedCache;
use rdev_shared::config::AmqpConfig;
use rdev_shared::domain::Project;
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::mq::{self, ControlMessage, OutgoingMessage, Publisher};
use uuid::Uuid;

use crate::keycache::KeyCache;

/// Most projects an instance keeps cached by name (the least recently used
/// go first); a miss costs one indexed query.
pub const PROJECT_CACHE_ENTRIES: u64 = 10_000;

/// Cached project lookups by name.
pub type ProjectCache = BoundedCache<String, Project>;

/// Publishes a control message with a confirm. Failure is logged: other
/// instances then rely on their TTL backstop.
async fn announce(publisher: &Publisher, message: &ControlMessage) {
    let msg = OutgoingMessage {
        exchange: publisher.topology().control_exchange(),
        routing_key: String::new(),
        payload: serde_json::to_vec(message).unwrap_or_default(),
        headers: Default::default(),
        priority: 0,
    };
    if let Err(e) = publisher.publish_confirmed(&msg).await {
        tracing::warn!(error = %e, ?message, "could not announce a change");
    }
}

/// Evicts cached keys locally, then tells every other instance.
pub async fn announce_key_change(cache: &KeyCache, publisher: &Publisher, key_id: Uuid) {
    cache.key_changed(key_id);
    announce(publisher, &ControlMessage::KeyChanged { key_id }).await;
}

/// Evicts a cached project locally, then tells every other instance.
pub async fn announce_project_change(cache: &ProjectCache, publisher: &Publisher, name: &str) {
    cache.invalidate(&name.to_owned()).await;
    announce(
        publisher,
        &ControlMessage::ProjectChanged {
            name: name.to_owned(),
        },
    )
    .await;
}

/// Listens until `shutdown` is cancelled, reconnecting with backoff. Each
/// (re)connection empties the caches, since announcements may have been
/// missed while away.
pub async fn listen(
    amqp: AmqpConfig,
    instance: String,
    keys: Arc<KeyCache>,
    projects: Arc<ProjectCache>,
    shutdown: CancellationToken,
) {
    let name = format!("rdev-api {instance} control");
    let listening = |on: bool| {
        keys.set_listening(on);
        projects.set_listening(on);
        if on {
            // Changes may have been missed while away: every open stream
            // re-checks its key.
            keys.key_changed(Uuid::nil());
            projects.invalidate_all();
        }
    };
    let handle = |d: Delivery| {
        let (keys, projects) = (keys.clone(), projects.clone());
        async move {
            match serde_json::from_slice::<ControlMessage>(&d.data) {
                Ok(ControlMessage::KeyChanged { key_id }) => {
                    tracing::debug!(key = %key_id, "key changed: cache emptied");
                    keys.key_changed(key_id);
                }
                Ok(ControlMessage::ProjectChanged { name }) => {
                    projects.invalidate(&name).await;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "malformed control message"),
            }
        }
    };
    mq::follow(
        "control (api)",
        &shutdown,
        || mq::subscribe_control(&amqp, &name),
        handle,
        listening,
    )
    .await;
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
            serde_json::from_str(r#"{"type":"reload","x":"y"}"#).expect("other");
        assert_eq!(m, ControlMessage::Unknown);
    }
}

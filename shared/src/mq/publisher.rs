//! The reconnecting publisher.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use uuid::Uuid;

use super::output::field_table;
use super::{
    CONFIRM_TIMEOUT, CONNECT_TIMEOUT, ControlMessage, MqError, OutgoingMessage, OutputEvent,
    Topology, connect, declare,
};
use crate::config::AmqpConfig;
use crate::metrics::Metrics;

/// After a failed connection attempt, publishes fail fast for this long
/// instead of each one waiting on the broker (the outbox keeps them).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// A publisher that connects lazily, reconnects after failures, declares the
/// topology on every new connection, and uses publisher confirms for
/// durable messages.
///
/// One connection, two channels: durable messages go through a channel in
/// confirm mode and every confirm is awaited; transient ones (live output,
/// control broadcasts) through a channel without confirms. lapin keeps a
/// dropped, unanswered confirm until `wait_for_confirms()`, so publishing
/// transient messages on the confirm channel without awaiting them grew the
/// process by about 650 bytes per message (issue 15).
///
/// While the broker is unreachable, `publish` fails fast (callers keep the
/// message in the outbox) instead of blocking requests: one reconnection
/// attempt at a time runs in the background and callers wait for it at most
/// [`RECONNECT_WAIT`]; a confirm that times out drops the connection, so the
/// next publishes fail fast instead of each waiting [`CONFIRM_TIMEOUT`] on a
/// black hole.
pub struct Publisher {
    cfg: AmqpConfig,
    topology: Topology,
    name: String,
    channel: RwLock<Option<Channels>>,
    reconnect: tokio::sync::Mutex<Reconnect>,
    /// Signalled when a reconnection attempt ends.
    reconnected: tokio::sync::Notify,
    /// Whether a connection was ever made (see [`Publisher::channels`]).
    ever_connected: std::sync::atomic::AtomicBool,
    /// This publisher, for the background reconnection task.
    me: std::sync::Weak<Publisher>,
    metrics: std::sync::OnceLock<Arc<Metrics>>,
}

/// The two channels of the publisher's connection.
#[derive(Clone)]
struct Channels {
    /// Confirm mode: every publish is awaited.
    confirmed: Channel,
    /// No confirms: fire and forget.
    transient: Channel,
}

/// How long a publish waits for a reconnection attempt before failing fast
/// (the attempt goes on in the background).
const RECONNECT_WAIT: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Reconnect {
    conn: Option<Connection>,
    last_failure: Option<Instant>,
    /// An attempt is under way.
    connecting: bool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("name", &self.name)
            .field("topology", &self.topology)
            .finish()
    }
}

impl Publisher {
    /// A publisher that will connect on first use.
    pub fn new(cfg: AmqpConfig, name: impl Into<String>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            topology: Topology::new(cfg.prefix.clone()),
            cfg,
            name: name.into(),
            channel: RwLock::new(None),
            reconnect: tokio::sync::Mutex::new(Reconnect::default()),
            reconnected: tokio::sync::Notify::new(),
            ever_connected: std::sync::atomic::AtomicBool::new(false),
            me: me.clone(),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Counts published messages in `amqp_published_total` from now on.
    pub fn set_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    fn count(&self, exchange_kind: &str) {
        if let Some(m) = self.metrics.get() {
            m.amqp_published_total
                .with_label_values(&[exchange_kind])
                .inc();
        }
    }

    fn kind_of(&self, exchange: &str) -> &'static str {
        match exchange.strip_prefix(self.topology.prefix()) {
            Some(".events") => "events",
            Some(".control") => "control",
            Some(".output") => "output",
            _ => "commands",
        }
    }

    /// The topology this publisher declares.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the current channels are open.
    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Channels> {
        let guard = self.channel.read().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|c| c.confirmed.status().connected() && c.transient.status().connected())
            .cloned()
    }

    /// The open confirm-mode channel, connecting if needed.
    pub async fn channel(&self) -> Result<Channel, MqError> {
        Ok(self.channels().await?.confirmed)
    }

    async fn channels(&self) -> Result<Channels, MqError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        // The attempt runs in its own task, so a broker that does not answer
        // (a black hole: up to CONNECT_TIMEOUT) costs each caller at most
        // RECONNECT_WAIT instead of queueing every publish behind it. The
        // very first connection is waited for in full: a busy machine may
        // take longer than RECONNECT_WAIT to open and declare, and failing
        // there would leave the first commands to the relay. A failed first
        // attempt sets `last_failure`, so later callers fail fast anyway.
        let done = self.reconnected.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if !self.start_reconnect() {
            return Err(MqError::Unavailable);
        }
        let wait = if self
            .ever_connected
            .load(std::sync::atomic::Ordering::Acquire)
        {
            RECONNECT_WAIT
        } else {
            CONNECT_TIMEOUT + RECONNECT_WAIT
        };
        let _ = tokio::time::timeout(wait, done).await;
        self.current().ok_or(MqError::Unavailable)
    }

    /// Starts a reconnection attempt in the background unless one is under
    /// way; false when the last one failed too recently to try again.
    fn start_reconnect(&self) -> bool {
        let Some(me) = self.me.upgrade() else {
            return false;
        };
        let Ok(mut rc) = self.reconnect.try_lock() else {
            return true; // under way: wait for it
        };
        if rc.connecting {
            return true;
        }
        if rc
            .last_failure
            .is_some_and(|t| t.elapsed() < RECONNECT_BACKOFF)
        {
            return false;
        }
        // Claimed: no other attempt starts until this one ends.
        rc.connecting = true;
        drop(rc);
        tokio::spawn(async move {
            let mut rc = me.reconnect.lock().await;
            if me.current().is_none() {
                match me.open().await {
                    Ok((conn, chans)) => {
                        if let Some(old) = rc.conn.replace(conn) {
                            let _ = old.close(200, "reconnecting".into()).await;
                        }
                        rc.last_failure = None;
                        *me.channel.write().unwrap_or_else(|e| e.into_inner()) = Some(chans);
                        me.ever_connected
                            .store(true, std::sync::atomic::Ordering::Release);
                    }
                    Err(e) => {
                        rc.last_failure = Some(Instant::now());
                        tracing::warn!(publisher = %me.name, error = %e, "cannot connect to RabbitMQ");
                    }
                }
            }
            rc.connecting = false;
            drop(rc);
            me.reconnected.notify_waiters();
        });
        true
    }

    /// Forgets the current channels after a confirm timed out: the broker
    /// (or the path to it) is stuck, and the next publishes must fail fast
    /// and reconnect instead of each waiting for a confirm.
    fn drop_channels(&self) {
        let old = self
            .channel
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(old) = old {
            tracing::warn!(publisher = %self.name, "publisher confirm timed out; reconnecting");
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    CONFIRM_TIMEOUT,
                    old.confirmed.close(200, "confirm timed out".into()),
                )
                .await;
            });
        }
    }

    async fn open(&self) -> Result<(Connection, Channels), MqError> {
        let conn = connect(&self.cfg, &self.name).await?;
        let confirmed = conn.create_channel().await?;
        confirmed
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare(&confirmed, &self.topology).await?;
        let transient = conn.create_channel().await?;
        tracing::info!(publisher = %self.name, "connected to RabbitMQ");
        Ok((
            conn,
            Channels {
                confirmed,
                transient,
            },
        ))
    }

    /// Publishes a persistent message and waits for the broker's confirm.
    /// Command messages are `mandatory`: an unroutable one is an error.
    pub async fn publish_confirmed(&self, m: &OutgoingMessage) -> Result<(), MqError> {
        let chan = self.channel().await?;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(m.priority)
            .with_content_type("application/json".into())
            .with_headers(field_table(&m.headers));
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = async {
            chan.basic_publish(
                m.exchange.as_str().into(),
                m.routing_key.as_str().into(),
                opts,
                &m.payload,
                props,
            )
            .await?
            .await
        };
        let confirmation = match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(c) => c?,
            Err(_) => {
                self.drop_channels();
                return Err(MqError::Timeout("waiting for publisher confirm"));
            }
        };
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => {
                self.count(self.kind_of(&m.exchange));
                Ok(())
            }
            Confirmation::Ack(Some(_)) => Err(MqError::Unroutable),
            Confirmation::Nack(_) => Err(MqError::Nacked),
        }
    }

    /// Broadcasts a control message (transient, not confirmed: every use has
    /// a durable backstop in PostgreSQL).
    pub async fn publish_control(&self, m: &ControlMessage) -> Result<(), MqError> {
        let chan = self.channels().await?.transient;
        let body = serde_json::to_vec(m).unwrap_or_default();
        let props = BasicProperties::default()
            .with_delivery_mode(1)
            .with_content_type("application/json".into());
        // No confirm on this channel: the future resolves at once.
        chan.basic_publish(
            self.topology.control_exchange().into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await?
        .await?;
        self.count("control");
        Ok(())
    }

    /// Sends an input message to the worker `worker_id` (transient) and
    /// waits for the broker to take it. A worker that is gone drops it; the
    /// event is in PostgreSQL.
    pub async fn publish_input(
        &self,
        worker_id: &str,
        m: &crate::interactive::InputMessage,
    ) -> Result<(), MqError> {
        let chan = self.channel().await?;
        let body = serde_json::to_vec(m).unwrap_or_default();
        let props = BasicProperties::default()
            .with_delivery_mode(1)
            .with_content_type("application/json".into());
        let confirm = async {
            chan.basic_publish(
                self.topology.input_exchange().into(),
                worker_id.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?
            .await
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| MqError::Timeout("waiting for publisher confirm"))??;
        self.count("input");
        Ok(())
    }

    /// Publishes a transient output message without waiting for a confirm:
    /// PostgreSQL holds the durable copy, and readers fill gaps from it.
    pub async fn publish_output(
        &self,
        command_id: Uuid,
        event: &OutputEvent,
    ) -> Result<(), MqError> {
        let chan = self.channels().await?.transient;
        let (body, headers) = event.encode();
        let props = BasicProperties::default()
            .with_delivery_mode(1)
            .with_headers(headers);
        // No confirm on this channel (the future resolves at once): losing a
        // live chunk only makes readers fetch it from PostgreSQL.
        chan.basic_publish(
            self.topology.output_exchange().into(),
            Topology::live_key(command_id, event).into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?
        .await?;
        self.count("output");
        Ok(())
    }
}

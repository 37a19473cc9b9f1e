//! RabbitMQ: topology (DESIGN.md §3), a reconnecting publisher with
//! publisher confirms, and the wire format of output messages.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use uuid::Uuid;

use crate::config::AmqpConfig;
use crate::db::outbox::OutboxMessage;
use crate::domain::OutputStream;
use crate::metrics::Metrics;

/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a publisher confirm.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connection attempt, publishes fail fast for this long
/// instead of each one waiting on the broker (the outbox keeps them).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// Errors of the messaging layer.
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    /// The client library reported an error.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker did not answer in time.
    #[error("amqp: timed out {0}")]
    Timeout(&'static str),
    /// The broker refused the message.
    #[error("amqp: broker refused the message (nack)")]
    Nacked,
    /// No queue is bound to receive the message.
    #[error("amqp: message unroutable")]
    Unroutable,
    /// Not connected, and a reconnection was tried too recently.
    #[error("amqp: broker unavailable")]
    Unavailable,
}

/// Exchange and queue names under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

/// Routing key of command messages on the commands exchange.
pub const RUN_KEY: &str = "run";
/// How long a deferred command waits before it is offered to workers again.
pub const DELAY_TTL_MS: i64 = 1000;
/// Header naming the kind of an output message (`chunk`, `status`, `end`).
const H_KIND: &str = "kind";
const H_SEQ: &str = "seq";
const H_STREAM: &str = "stream";

impl Topology {
    /// Names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Direct exchange commands are published to.
    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.prefix)
    }

    /// Durable priority queue workers consume.
    pub fn commands_queue(&self) -> String {
        format!("{}.commands", self.prefix)
    }

    /// Queue where a command over its project's concurrency limit waits
    /// [`DELAY_TTL_MS`] before it is dead-lettered back to the commands exchange.
    pub fn commands_delay_queue(&self) -> String {
        format!("{}.commands.delay", self.prefix)
    }

    /// A run message re-sent through the delay queue (default exchange,
    /// routed by queue name), keeping its priority.
    pub fn delayed_run_message(&self, command_id: Uuid, priority: u8) -> OutboxMessage {
        OutboxMessage {
            exchange: String::new(),
            routing_key: self.commands_delay_queue(),
            ..self.run_message(command_id, priority)
        }
    }

    /// Fanout exchange for cancel requests and cache invalidation.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Direct exchange carrying interactive input to the worker that runs
    /// the command, routing key = the worker's id.
    pub fn input_exchange(&self) -> String {
        format!("{}.input", self.prefix)
    }

    /// Topic exchange carrying live output, routing key `cmd.<id>`.
    pub fn output_exchange(&self) -> String {
        format!("{}.output", self.prefix)
    }

    /// Topic exchange of lifecycle events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Durable queue of events for webhook delivery.
    pub fn webhooks_queue(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }

    /// Routing key of one command's output.
    pub fn output_key(id: Uuid) -> String {
        format!("cmd.{id}")
    }

    /// The message that asks a worker to run a command.
    pub fn run_message(&self, command_id: Uuid, priority: u8) -> OutboxMessage {
        OutboxMessage {
            exchange: self.commands_exchange(),
            routing_key: RUN_KEY.into(),
            payload: serde_json::to_vec(&serde_json::json!({ "command_id": command_id }))
                .unwrap_or_default(),
            headers: BTreeMap::new(),
            priority: priority.min(9),
        }
    }

    /// A lifecycle event for the events exchange.
    pub fn event_message(&self, event_type: &str, body: &serde_json::Value) -> OutboxMessage {
        OutboxMessage {
            exchange: self.events_exchange(),
            routing_key: event_type.to_owned(),
            payload: serde_json::to_vec(body).unwrap_or_default(),
            headers: BTreeMap::new(),
            priority: 0,
        }
    }
}

/// Body of a command message.
#[derive(Debug, serde::Deserialize)]
pub struct RunMessage {
    /// The command to run.
    pub command_id: Uuid,
}

/// A broadcast on the control exchange: every worker and API instance gets
/// every message, and ignores the kinds it does not handle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Stop this running command (its worker acts, the others ignore it).
    Cancel {
        /// The command.
        command_id: Uuid,
    },
    /// An API key changed (revoked, rotated, edited): drop cached lookups.
    KeyChanged {
        /// The key.
        key_id: Uuid,
    },
    /// A project changed (updated, deleted): drop its cached lookup.
    ProjectChanged {
        /// The project's name.
        name: String,
    },
    /// A kind this version does not know.
    #[serde(other)]
    Unknown,
}

/// Opens a connection, declares the topology and an exclusive, auto-delete
/// queue bound to the control exchange, and consumes it (no acks: control
/// messages are transient, and each has a durable backstop).
pub async fn subscribe_control(
    cfg: &AmqpConfig,
    name: &str,
) -> Result<(Connection, lapin::Consumer), MqError> {
    let exchange = Topology::new(cfg.prefix.clone()).control_exchange();
    subscribe_private(cfg, name, &exchange, "").await
}

/// Opens a connection, declares the topology and an exclusive, auto-delete
/// queue bound to the input exchange under `worker_id`, and consumes it (no
/// acks: the input events are in PostgreSQL, and the worker reads them
/// there whenever it sees a gap in their `seq`).
pub async fn subscribe_input(
    cfg: &AmqpConfig,
    name: &str,
    worker_id: &str,
) -> Result<(Connection, lapin::Consumer), MqError> {
    let exchange = Topology::new(cfg.prefix.clone()).input_exchange();
    subscribe_private(cfg, name, &exchange, worker_id).await
}

/// A connection consuming, without acks, a server-named exclusive queue of
/// its own bound to `exchange` under `routing_key`.
async fn subscribe_private(
    cfg: &AmqpConfig,
    name: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(Connection, lapin::Consumer), MqError> {
    let t = Topology::new(cfg.prefix.clone());
    let conn = connect(cfg, name).await?;
    let ch = conn.create_channel().await?;
    declare(&ch, &t).await?;
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = ch
        .queue_declare("".into(), opts, FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.name().clone(),
        exchange.into(),
        routing_key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let consumer = ch
        .basic_consume(
            queue.name().clone(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((conn, consumer))
}

/// Opens a connection named `name` (shown in the broker's management UI).
/// An `amqps://` URL connects over TLS (rustls): the broker's certificate
/// must chain to a public root, or to a CA of `RDEV_AMQP_CA_FILE`, and name
/// the URL's host.
pub async fn connect(cfg: &AmqpConfig, name: &str) -> Result<Connection, MqError> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    let connecting = async {
        match &cfg.ca_file {
            None => Connection::connect(cfg.amqp_url.expose(), props).await,
            Some(path) => {
                let pem = tokio::fs::read_to_string(path)
                    .await
                    .map_err(lapin::Error::from)?;
                Connection::connect_with_config(
                    cfg.amqp_url.expose(),
                    props,
                    lapin::tcp::OwnedTLSConfig {
                        identity: None,
                        cert_chain: Some(pem),
                    },
                    lapin::runtime::default_runtime()?,
                )
                .await
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| MqError::Timeout("connecting"))?
        .map_err(MqError::from)
}

/// Declares every exchange and durable queue and their bindings. Idempotent;
/// every process calls it after (re)connecting.
pub async fn declare(channel: &Channel, t: &Topology) -> Result<(), MqError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // Transient exchanges carry nothing PostgreSQL does not also hold.
    let transient = ExchangeDeclareOptions {
        durable: false,
        ..Default::default()
    };
    channel
        .exchange_declare(
            t.commands_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            t.events_exchange().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            t.control_exchange().into(),
            ExchangeKind::Fanout,
            transient,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            t.output_exchange().into(),
            ExchangeKind::Topic,
            transient,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            t.input_exchange().into(),
            ExchangeKind::Direct,
            transient,
            FieldTable::default(),
        )
        .await?;

    // Classic queue: priorities need it (quorum queues have none on 3.x).
    // https://www.rabbitmq.com/docs/priority
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let qopts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(t.commands_queue().into(), qopts, args)
        .await?;
    channel
        .queue_bind(
            t.commands_queue().into(),
            t.commands_exchange().into(),
            RUN_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // The delay queue: a command over its project's concurrency limit waits
    // here, holding no worker slot, and is dead-lettered back to the
    // commands exchange after the TTL (at the back of the queue, behind
    // other projects' commands).
    // https://www.rabbitmq.com/docs/ttl https://www.rabbitmq.com/docs/dlx
    let mut delay = FieldTable::default();
    delay.insert("x-message-ttl".into(), AMQPValue::LongLongInt(DELAY_TTL_MS));
    delay.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(t.commands_exchange().as_str().into()),
    );
    delay.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(RUN_KEY.into()),
    );
    delay.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    channel
        .queue_declare(t.commands_delay_queue().into(), qopts, delay)
        .await?;

    channel
        .queue_declare(t.webhooks_queue().into(), qopts, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            t.webhooks_queue().into(),
            t.events_exchange().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

fn field_table(headers: &BTreeMap<String, String>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in headers {
        t.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    t
}

/// Reads a string header of a message.
pub fn header_str<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a [u8]> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The string headers of a message as name/value pairs (trace context).
pub fn header_pairs(props: &BasicProperties) -> Vec<(String, String)> {
    let Some(headers) = props.headers().as_ref() else {
        return Vec::new();
    };
    headers
        .inner()
        .iter()
        .filter_map(|(k, v)| match v {
            AMQPValue::LongString(s) => Some((
                k.as_str().to_owned(),
                String::from_utf8_lossy(s.as_bytes()).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// Reads an integer header of a message.
pub fn header_i64(props: &BasicProperties, key: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// A live message about one command on the output exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputEvent {
    /// A chunk of output; the body is the raw bytes.
    Chunk {
        /// Sequence number.
        seq: i64,
        /// Source stream.
        stream: OutputStream,
        /// Raw bytes.
        data: Bytes,
    },
    /// The command's status changed (re-read it from PostgreSQL).
    Status,
    /// The command is terminal and all its output is stored.
    End,
}

impl OutputEvent {
    /// Encodes the event as (body, headers).
    pub fn encode(&self) -> (&[u8], FieldTable) {
        let mut h = FieldTable::default();
        match self {
            OutputEvent::Chunk { seq, stream, data } => {
                h.insert(H_KIND.into(), AMQPValue::LongString("chunk".into()));
                h.insert(H_SEQ.into(), AMQPValue::LongLongInt(*seq));
                h.insert(
                    H_STREAM.into(),
                    AMQPValue::LongString(stream.as_str().into()),
                );
                (data.as_ref(), h)
            }
            OutputEvent::Status => {
                h.insert(H_KIND.into(), AMQPValue::LongString("status".into()));
                (&[], h)
            }
            OutputEvent::End => {
                h.insert(H_KIND.into(), AMQPValue::LongString("end".into()));
                (&[], h)
            }
        }
    }

    /// Decodes a delivered message; `None` for anything malformed.
    pub fn decode(props: &BasicProperties, body: Vec<u8>) -> Option<Self> {
        match header_str(props, H_KIND)? {
            b"chunk" => {
                let seq = header_i64(props, H_SEQ)?;
                let stream = match header_str(props, H_STREAM)? {
                    b"stdout" => OutputStream::Stdout,
                    b"stderr" => OutputStream::Stderr,
                    _ => return None,
                };
                Some(OutputEvent::Chunk {
                    seq,
                    stream,
                    data: Bytes::from(body),
                })
            }
            b"status" => Some(OutputEvent::Status),
            b"end" => Some(OutputEvent::End),
            _ => None,
        }
    }
}

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
    pub async fn publish_confirmed(&self, m: &OutboxMessage) -> Result<(), MqError> {
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
            Topology::output_key(command_id).into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_events_round_trip_through_headers() {
        let events = [
            OutputEvent::Chunk {
                seq: 7,
                stream: OutputStream::Stderr,
                data: Bytes::from_static(b"\xffok"),
            },
            OutputEvent::Status,
            OutputEvent::End,
        ];
        for e in events {
            let (body, headers) = e.encode();
            let props = BasicProperties::default().with_headers(headers);
            assert_eq!(OutputEvent::decode(&props, body.to_vec()), Some(e));
        }
        assert_eq!(
            OutputEvent::decode(&BasicProperties::default(), vec![]),
            None
        );
    }

    #[test]
    fn control_messages_tolerate_unknown_kinds() {
        let m = ControlMessage::Cancel {
            command_id: Uuid::nil(),
        };
        let json = serde_json::to_string(&m).expect("json");
        assert_eq!(
            json,
            r#"{"type":"cancel","command_id":"00000000-0000-0000-0000-000000000000"}"#
        );
        assert_eq!(serde_json::from_str::<ControlMessage>(&json).ok(), Some(m));
        let later: ControlMessage =
            serde_json::from_str(r#"{"type":"reload_config"}"#).expect("unknown");
        assert_eq!(later, ControlMessage::Unknown);
    }

    #[test]
    fn names_carry_the_prefix() {
        let t = Topology::new("t1");
        assert_eq!(t.commands_queue(), "t1.commands");
        assert_eq!(t.output_exchange(), "t1.output");
        let m = t.run_message(Uuid::nil(), 12);
        assert_eq!(m.priority, 9);
        assert_eq!(m.routing_key, "run");
    }
}

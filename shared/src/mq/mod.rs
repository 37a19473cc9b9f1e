//! RabbitMQ: the topology ([`topology`], docs/ARCHITECTURE.md), a
//! reconnecting publisher with publisher confirms ([`publisher`]), the wire
//! format of live output ([`output`]), and how consumers follow a queue
//! across broker restarts ([`follow`]).

mod follow;
mod output;
mod publisher;
mod topology;

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::AmqpConfig;

pub use follow::{Backoff, follow};
pub use output::{OutputEvent, header_i64, header_pairs, header_str};
pub use publisher::Publisher;
pub use topology::{
    ControlMessage, DEFAULT_PRIORITY, DELAY_TTL_MS, OutgoingMessage, RUN_KEY, RunMessage, Topology,
};

/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a publisher confirm.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

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

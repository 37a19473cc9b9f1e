//! Webhook delivery (docs/API.md, "Webhooks"): [`consumer`] turns events into delivery
//! rows, [`deliver`] sends them with retries on the [`schedule`], through a
//! per-destination circuit breaker ([`breakers`]) and an SSRF-guarded HTTP
//! client ([`sender`]).

pub mod breakers;
pub mod consumer;
pub mod deliver;
pub mod schedule;
pub mod sender;

use std::sync::Arc;
use std::time::Duration;

use rdev_shared::breaker::BreakerConfig;
use rdev_shared::config::{AmqpConfig, DbConfig};
use rdev_shared::db::Pool;
use rdev_shared::db::webhooks as repo;
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::metrics::Metrics;
use rdev_shared::mq::Topology;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::schedule::RetrySchedule;

/// At most this many destinations have a breaker at once.
const MAX_BREAKERS: usize = 10_000;

/// Delivery policy, from the dispatcher's configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Attempt delays.
    pub schedule: RetrySchedule,
    /// Request timeout (connect, send, and read the answer).
    pub timeout: Duration,
    /// Allow internal destinations (tests, development).
    pub allow_private: bool,
    /// An endpoint failing this long without a success is disabled.
    pub disable_after: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// How often due deliveries are looked for when nothing wakes the loop.
    pub poll: Duration,
    /// Per-destination breaker.
    pub breaker: BreakerConfig,
    /// Longest `Retry-After` honoured.
    pub retry_after_cap: Duration,
    /// AMQP prefetch of the event consumer.
    pub prefetch: u16,
}

/// Starts the event consumer, the listener for new deliveries and the
/// delivery loop; they stop when `stop` is cancelled (the delivery loop
/// after its in-flight attempts).
///
/// Producers write an event's deliveries in the transaction of the change
/// and `NOTIFY` [`repo::DUE_CHANNEL`]: the listener wakes the delivery loop
/// on it. The consumer fans out events that reach `{prefix}.webhooks`
/// instead (published by an earlier version, or by the relay from its
/// outbox rows).
pub fn spawn(
    pool: Pool,
    db: DbConfig,
    amqp: AmqpConfig,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(JoinHandle<()>, JoinHandle<()>), reqwest::Error> {
    let wake = Arc::new(Notify::new());
    let client = sender::client(settings.timeout, settings.allow_private)?;
    // Ends with `stop`; nobody waits for it (it holds no work).
    tokio::spawn(rdev_shared::db::notify::listen(
        db,
        repo::DUE_CHANNEL,
        wake.clone(),
        stop.clone(),
    ));
    let consumer = tokio::spawn(consumer::run(
        consumer::Consuming {
            topology: Topology::new(amqp.prefix.clone()),
            amqp,
            pool: pool.clone(),
            prefetch: settings.prefetch,
            first_delay: settings.schedule.first(),
            wake: wake.clone(),
            metrics: metrics.clone(),
        },
        stop.clone(),
    ));
    let delivering = Arc::new(deliver::Delivering {
        successes: deliver::spawn_success_writer(pool.clone()),
        pool,
        client,
        breakers: breakers::Breakers::new(settings.breaker, MAX_BREAKERS, Some(metrics.clone())),
        settings,
        wake,
        metrics,
    });
    let delivery = tokio::spawn(deliver::run(delivering, stop));
    Ok((consumer, delivery))
}

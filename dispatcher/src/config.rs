//! Configuration of `rdev-dispatcher` (DESIGN.md §9).

use std::net::SocketAddr;
use std::time::Duration;

use rdev_shared::config::{AmqpConfig, DbConfig, LogConfig, parse_duration};

/// Settings of `rdev-dispatcher`.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "rdev-dispatcher",
    version,
    about = "rdev-dispatcher: webhook delivery and rdev's background loops (outbox relay, lost-worker reaper)"
)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub db: DbConfig,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub amqp: AmqpConfig,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogConfig,
    /// Address of `/health` and `/ready`.
    #[arg(long, env = "RDEV_LISTEN", default_value = "127.0.0.1:9092")]
    pub listen: SocketAddr,
    /// How often the outbox relay looks for unpublished rows.
    #[arg(long, env = "RDEV_RELAY_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub relay_interval: Duration,
    /// Age after which an unpublished outbox row is the relay's to publish
    /// (younger ones are still being published by the process that wrote them).
    #[arg(long, env = "RDEV_RELAY_MIN_AGE", default_value = "5s", value_parser = parse_duration)]
    pub relay_min_age: Duration,
    /// A running command whose heartbeat is older than this is failed as `worker_lost`.
    #[arg(long = "lost-after-s", env = "RDEV_LOST_AFTER_S", default_value_t = 30)]
    pub lost_after_s: u64,
    /// Audit entries older than this are deleted.
    #[arg(long, env = "RDEV_AUDIT_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub audit_retention: Duration,
    /// How often retention (audit log, rate-limit counters) runs.
    #[arg(long, env = "RDEV_RETENTION_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub retention_interval: Duration,
}

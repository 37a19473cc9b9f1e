//! Configuration of `rdev-dispatcher` (README.md, "Configuration").

use std::net::SocketAddr;
use std::time::Duration;

use rdev_shared::config::{AmqpConfig, DbConfig, LogConfig, parse_duration, parse_flag};

use crate::webhooks::schedule::{RetrySchedule, parse_schedule};

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
    /// A command still `queued` this long after it was accepted (or last
    /// republished) gets its run message published again (a lost message:
    /// purged queue, broker disk lost). Keep it above the longest backlog
    /// you expect; a duplicate is harmless but costs a delivery.
    #[arg(long, env = "RDEV_REQUEUE_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub requeue_after: Duration,
    /// Audit entries older than this are deleted.
    #[arg(long, env = "RDEV_AUDIT_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub audit_retention: Duration,
    /// Published outbox rows older than this are deleted (0: kept).
    #[arg(long, env = "RDEV_OUTBOX_RETENTION", default_value = "1d", value_parser = parse_duration)]
    pub outbox_retention: Duration,
    /// Stored output of commands finished longer ago than this is deleted,
    /// unless the project sets `output_retention_s` (0: kept).
    #[arg(long, env = "RDEV_OUTPUT_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub output_retention: Duration,
    /// Commands finished longer ago than this are deleted with their output,
    /// unless the project sets `command_retention_s` (0: kept).
    #[arg(long, env = "RDEV_COMMAND_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub command_retention: Duration,
    /// Settled webhook deliveries (and their attempts) older than this are
    /// deleted (0: kept).
    #[arg(long, env = "RDEV_WEBHOOK_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub webhook_retention: Duration,
    /// How often retention runs.
    #[arg(long, env = "RDEV_RETENTION_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub retention_interval: Duration,
    /// Delays before each webhook delivery attempt (the first is the delay
    /// after the event); its length is the number of attempts.
    #[arg(long, env = "RDEV_WEBHOOK_RETRY_SCHEDULE", default_value = "0s,5s,5m,30m,2h,5h,10h,10h", value_parser = parse_schedule)]
    pub webhook_retry_schedule: RetrySchedule,
    /// Timeout of one webhook request, answer included.
    #[arg(
        long = "webhook-timeout-s",
        env = "RDEV_WEBHOOK_TIMEOUT_S",
        default_value_t = 15
    )]
    pub webhook_timeout_s: u64,
    /// Allow webhook destinations on loopback, private or link-local
    /// addresses (development and tests only): `1` or `0`.
    #[arg(long, env = "RDEV_WEBHOOK_ALLOW_PRIVATE", default_value = "0", value_parser = parse_flag)]
    pub webhook_allow_private: bool,
    /// An endpoint failing for this long without a success is disabled.
    #[arg(long, env = "RDEV_WEBHOOK_DISABLE_AFTER", default_value = "120h", value_parser = parse_duration)]
    pub webhook_disable_after: Duration,
    /// Webhook requests in flight at once.
    #[arg(long, env = "RDEV_WEBHOOK_CONCURRENCY", default_value_t = 32)]
    pub webhook_concurrency: usize,
    /// How often due deliveries are looked for (new events wake the loop at once).
    #[arg(long, env = "RDEV_WEBHOOK_POLL", default_value = "1s", value_parser = parse_duration)]
    pub webhook_poll: Duration,
    /// Consecutive failures of a destination that open its circuit.
    #[arg(long, env = "RDEV_WEBHOOK_BREAKER_THRESHOLD", default_value_t = 5)]
    pub webhook_breaker_threshold: u32,
    /// How long an open circuit refuses sends before one probe.
    #[arg(long, env = "RDEV_WEBHOOK_BREAKER_OPEN", default_value = "30s", value_parser = parse_duration)]
    pub webhook_breaker_open: Duration,
    /// Longest `Retry-After` (of a 429 or 503) honoured.
    #[arg(long, env = "RDEV_WEBHOOK_RETRY_AFTER_MAX", default_value = "1h", value_parser = parse_duration)]
    pub webhook_retry_after_max: Duration,
    /// Unacknowledged events the broker hands the dispatcher at once.
    #[arg(long, env = "RDEV_WEBHOOK_PREFETCH", default_value_t = 64)]
    pub webhook_prefetch: u16,
}

impl Config {
    /// The documented defaults on the given database and broker, without
    /// reading the environment (tests and embedders start from this and
    /// change what they need). A unit test keeps it equal to clap's defaults.
    pub fn local(db: DbConfig, amqp: AmqpConfig) -> Self {
        const DAY: u64 = 86_400;
        const HOUR: u64 = 3600;
        Self {
            db,
            amqp,
            log: LogConfig {
                log_format: rdev_shared::config::LogFormat::Text,
            },
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            relay_interval: Duration::from_secs(1),
            relay_min_age: Duration::from_secs(5),
            lost_after_s: 30,
            requeue_after: Duration::from_secs(600),
            audit_retention: Duration::from_secs(90 * DAY),
            outbox_retention: Duration::from_secs(DAY),
            output_retention: Duration::from_secs(30 * DAY),
            command_retention: Duration::from_secs(90 * DAY),
            webhook_retention: Duration::from_secs(30 * DAY),
            retention_interval: Duration::from_secs(300),
            webhook_retry_schedule: RetrySchedule::default(),
            webhook_timeout_s: 15,
            webhook_allow_private: false,
            webhook_disable_after: Duration::from_secs(120 * HOUR),
            webhook_concurrency: 32,
            webhook_poll: Duration::from_secs(1),
            webhook_breaker_threshold: 5,
            webhook_breaker_open: Duration::from_secs(30),
            webhook_retry_after_max: Duration::from_secs(HOUR),
            webhook_prefetch: 64,
        }
    }

    /// How long each kind of row is kept.
    pub fn retention(&self) -> crate::retention::Retention {
        crate::retention::Retention {
            audit: self.audit_retention,
            outbox: self.outbox_retention,
            output: self.output_retention,
            commands: self.command_retention,
            webhook_deliveries: self.webhook_retention,
        }
    }

    /// The webhook delivery policy.
    pub fn webhook_settings(&self) -> crate::webhooks::Settings {
        crate::webhooks::Settings {
            schedule: self.webhook_retry_schedule.clone(),
            timeout: Duration::from_secs(self.webhook_timeout_s.max(1)),
            allow_private: self.webhook_allow_private,
            disable_after: self.webhook_disable_after,
            concurrency: self.webhook_concurrency.max(1),
            poll: self.webhook_poll.max(Duration::from_millis(10)),
            breaker: rdev_shared::breaker::BreakerConfig {
                failure_threshold: self.webhook_breaker_threshold.max(1),
                open_for: self.webhook_breaker_open,
            },
            retry_after_cap: self.webhook_retry_after_max,
            prefetch: self.webhook_prefetch.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn local_matches_the_command_line_defaults() {
        let cfg = Config::try_parse_from(["rdev-dispatcher"]).expect("defaults parse");
        let local = Config::local(cfg.db.clone(), cfg.amqp.clone());
        assert_eq!(format!("{local:?}"), format!("{cfg:?}"));
    }
}

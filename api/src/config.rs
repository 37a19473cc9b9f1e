//! Configuration of `rdev-api` (DESIGN.md §9).

use std::net::SocketAddr;
use std::time::Duration;

use rdev_shared::config::{AmqpConfig, DbConfig, LogConfig, parse_duration};

/// Settings of `rdev-api serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct ApiConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub db: DbConfig,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub amqp: AmqpConfig,
    /// Address to listen on.
    #[arg(long, env = "RDEV_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Apply pending migrations (under an advisory lock) before serving: `1` or `0`.
    #[arg(long, env = "RDEV_MIGRATE", default_value = "1", value_parser = parse_flag)]
    pub migrate: bool,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "RDEV_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest `timeout_s` a command may ask for.
    #[arg(long, env = "RDEV_MAX_TIMEOUT_S", default_value_t = 86_400)]
    pub max_timeout_s: i32,
    /// Interval of SSE keep-alive comments.
    #[arg(long, env = "RDEV_SSE_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub sse_keepalive: Duration,
    /// How often an SSE stream re-reads the command's status from PostgreSQL,
    /// the backstop when a live message was lost.
    #[arg(long, env = "RDEV_SSE_POLL", default_value = "2s", value_parser = parse_duration)]
    pub sse_poll: Duration,
    /// Allow webhook URLs that reach loopback, private or link-local
    /// addresses (development and tests only): `1` or `0`.
    #[arg(long, env = "RDEV_WEBHOOK_ALLOW_PRIVATE", default_value = "0", value_parser = parse_flag)]
    pub webhook_allow_private: bool,
    /// Open SSE connections allowed on this instance.
    #[arg(long, env = "RDEV_SSE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub sse_max_connections: usize,
    /// Open SSE connections allowed per API key on this instance.
    #[arg(long, env = "RDEV_SSE_MAX_PER_KEY", default_value_t = 100)]
    pub sse_max_per_key: usize,
    /// An SSE connection is closed after this long with a `reconnect` event;
    /// the client resumes with `Last-Event-ID` (bounds the life of any leak).
    #[arg(long, env = "RDEV_SSE_MAX_LIFETIME", default_value = "1h", value_parser = parse_duration)]
    pub sse_max_lifetime: Duration,
}

/// Settings of `rdev-api` as a whole.
#[derive(clap::Args, Clone, Debug)]
pub struct GlobalConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogConfig,
}

pub use rdev_shared::config::parse_flag;

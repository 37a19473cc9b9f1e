//! Configuration of `rdev-api` (README.md, "Configuration").

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use rdev_shared::config::{AmqpConfig, DbConfig, LogConfig, parse_duration};
use rdev_shared::containment::{ExecutorKinds, LimitsConfig};
use rdev_shared::domain::RateLimit;

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
    /// Address of the operations listener: `/metrics` (and `/health`,
    /// `/ready` again), kept off the public port like the worker's and the
    /// dispatcher's.
    #[arg(long, env = "RDEV_OPS_LISTEN", default_value = "127.0.0.1:9090")]
    pub ops_listen: SocketAddr,
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
    /// After `POST /v1/webhooks/{id}/rotate-secret`, how long the previous
    /// secret keeps signing beside the new one.
    #[arg(long, env = "RDEV_WEBHOOK_SECRET_OVERLAP", default_value = "24h", value_parser = parse_duration)]
    pub webhook_secret_overlap: Duration,
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
    /// Lifetime of cached API key lookups. Key changes evict them on every
    /// instance at once over the control exchange; while that link is down
    /// entries older than one second are not trusted.
    #[arg(long, env = "CACHE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// Comma-separated CIDRs of reverse proxies whose `X-Forwarded-For` is believed.
    #[arg(long, env = "RDEV_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
    /// Default request budget of a key that sets none, as `N/<duration>`.
    #[arg(long, env = "RDEV_RATE_LIMIT", default_value = "600/60s")]
    pub rate_limit: RateLimit,
    /// Executor kinds the deployment runs (`local`, `kubernetes`): projects
    /// of another kind are refused with 422. Set it like the workers' own.
    #[arg(long, env = "RDEV_EXECUTORS", default_value = "local,kubernetes")]
    pub executors: ExecutorKinds,
    /// Defaults and ceilings of command resource limits (projects may not
    /// exceed the ceilings).
    #[command(flatten)]
    pub limits: LimitsConfig,
    /// A request body must arrive whole within this long after the request
    /// starts (a client trickling a body is answered 408).
    #[arg(long, env = "RDEV_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Open HTTP connections served by this instance; one more is answered
    /// 503 and closed. Keep above `RDEV_SSE_MAX_CONNECTIONS`.
    #[arg(long, env = "RDEV_MAX_CONNECTIONS", default_value_t = 15_000)]
    pub max_connections: usize,
    /// A connection whose client takes no bytes for this long while the
    /// server has some to send is closed (a client that stopped reading an
    /// event stream would hold its slot, and the graceful shutdown, forever).
    #[arg(long, env = "RDEV_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// Concurrent `/output` downloads per API key on this instance.
    #[arg(long, env = "RDEV_OUTPUT_MAX_PER_KEY", default_value_t = 8)]
    pub output_max_per_key: usize,
    /// Failed authentications (unknown keys) allowed per client address, as
    /// `N/<duration>`; past it the address gets 429 for unknown keys before
    /// any database query.
    #[arg(long, env = "RDEV_AUTH_FAILURE_LIMIT", default_value = "30/60s")]
    pub auth_failure_limit: RateLimit,
    /// The workers' workspace root, mounted here too (the same volume):
    /// the files API of local projects serves it. Unset: `/files` answers
    /// 503.
    #[arg(long, env = "RDEV_WORKSPACE_ROOT")]
    pub workspace_root: Option<std::path::PathBuf>,
    /// Largest file one upload may write, in bytes.
    #[arg(long, env = "RDEV_FILES_MAX_BYTES", default_value_t = 4 << 30)]
    pub files_max_bytes: u64,
    /// An upload or download that moves no byte for this long is ended
    /// (uploads have no whole-body deadline, only this one).
    #[arg(long, env = "RDEV_FILES_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub files_idle_timeout: Duration,
    /// Kubeconfig for the files of Kubernetes projects (exec into their
    /// pods). Unset: in-cluster configuration in a pod, else `KUBECONFIG` /
    /// `~/.kube/config`; the client is made on first use only.
    #[arg(long, env = "RDEV_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The user local commands run as (the workers' `RDEV_SANDBOX_USER`: a
    /// name or `uid[:gid]`; default `rdev-run`, else `nobody`). An API
    /// running as root gives new project directories to it, so files
    /// uploaded before the first command are the commands' to change.
    #[arg(long, env = "RDEV_SANDBOX_USER")]
    pub sandbox_user: Option<String>,
}

impl ApiConfig {
    /// The documented defaults on the given database and broker, without
    /// reading the environment (tests and embedders start from this and
    /// change what they need). A unit test keeps it equal to clap's defaults.
    pub fn local(db: DbConfig, amqp: AmqpConfig) -> Self {
        Self {
            db,
            amqp,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            migrate: true,
            max_body_bytes: 1024 * 1024,
            max_timeout_s: 86_400,
            sse_keepalive: Duration::from_secs(15),
            sse_poll: Duration::from_secs(2),
            webhook_allow_private: false,
            webhook_secret_overlap: Duration::from_secs(86_400),
            sse_max_connections: 10_000,
            sse_max_per_key: 100,
            sse_max_lifetime: Duration::from_secs(3600),
            cache_ttl: Duration::from_secs(30),
            trusted_proxies: TrustedProxies::default(),
            rate_limit: RateLimit {
                requests: 600,
                window_s: 60,
            },
            executors: ExecutorKinds::all(),
            limits: LimitsConfig::default(),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 15_000,
            write_timeout: Duration::from_secs(30),
            output_max_per_key: 8,
            auth_failure_limit: RateLimit {
                requests: 30,
                window_s: 60,
            },
            workspace_root: None,
            files_max_bytes: 4 << 30,
            files_idle_timeout: Duration::from_secs(30),
            kubeconfig: None,
            sandbox_user: None,
        }
    }
}

/// The `RDEV_TRUSTED_PROXIES` list (empty: no proxy is trusted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl std::str::FromStr for TrustedProxies {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                rdev_shared::domain::validate::parse_cidr(p)
                    .ok_or_else(|| format!("`{p}` is not an IP address or CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

/// Settings of `rdev-api` as a whole.
#[derive(clap::Args, Clone, Debug)]
pub struct GlobalConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogConfig,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub crypto: rdev_shared::crypto::CryptoConfig,
}

pub use rdev_shared::config::parse_flag;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        cfg: ApiConfig,
    }

    #[test]
    fn local_equals_the_command_line_defaults() {
        let parsed = Only::try_parse_from(["rdev-api"]).expect("defaults").cfg;
        let local = ApiConfig::local(parsed.db.clone(), parsed.amqp.clone());
        assert_eq!(format!("{local:?}"), format!("{parsed:?}"));
    }

    #[test]
    fn access_settings_have_working_defaults_and_parse() {
        let cfg = Only::try_parse_from(["rdev-api"]).expect("defaults").cfg;
        assert_eq!(cfg.cache_ttl, Duration::from_secs(30));
        assert_eq!(
            cfg.rate_limit,
            RateLimit {
                requests: 600,
                window_s: 60
            }
        );
        assert!(cfg.trusted_proxies.0.is_empty());
        let cfg = Only::try_parse_from([
            "rdev-api",
            "--trusted-proxies",
            "10.0.0.0/8, 127.0.0.1",
            "--rate-limit",
            "100/1m",
        ])
        .expect("set")
        .cfg;
        let shown: Vec<String> = cfg
            .trusted_proxies
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "127.0.0.1/32"]);
        assert_eq!(cfg.rate_limit.window_s, 60);
        assert!(Only::try_parse_from(["rdev-api", "--trusted-proxies", "nope"]).is_err());
    }
}

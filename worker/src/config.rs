//! The worker's configuration (README.md, "Configuration"): one `clap` struct, every field
//! also an environment variable, every default usable locally.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rdev_shared::config::{AmqpConfig, DbConfig, LogConfig};
use rdev_shared::containment::{ExecutorKind, ExecutorKinds, LimitsConfig};

use crate::sandbox::SandboxConfig;

/// Settings of `rdev-worker`.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "rdev-worker",
    version,
    about = "Runs rdev commands taken from RabbitMQ"
)]
pub struct Config {
    /// PostgreSQL settings.
    #[command(flatten)]
    pub db: DbConfig,
    /// RabbitMQ settings.
    #[command(flatten)]
    pub amqp: AmqpConfig,
    /// Logging settings.
    #[command(flatten)]
    pub log: LogConfig,
    /// Address of the `/health` and `/ready` endpoints (port 0 picks a free one).
    #[arg(long, env = "RDEV_LISTEN", default_value = "127.0.0.1:9091")]
    pub listen: SocketAddr,
    /// Directory under which every project's working directory lives.
    #[arg(
        long,
        env = "RDEV_WORKSPACE_ROOT",
        default_value = "./.rdev/workspaces"
    )]
    pub workspace_root: PathBuf,
    /// Commands run at once by this worker (also the AMQP prefetch).
    #[arg(
        long,
        env = "RDEV_WORKER_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub concurrency: u16,
    /// Seconds between heartbeats of running commands.
    #[arg(
        long = "heartbeat-s",
        env = "RDEV_HEARTBEAT_S",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub heartbeat_s: u64,
    /// Seconds between SIGTERM and SIGKILL when a command times out or is cancelled.
    #[arg(long = "kill-grace-s", env = "RDEV_KILL_GRACE_S", default_value_t = 5)]
    pub kill_grace_s: u64,
    /// Name of this worker in `commands.worker_id`; default `<hostname>-<pid>-<random>`.
    #[arg(long, env = "RDEV_WORKER_ID")]
    pub worker_id: Option<String>,
    /// On shutdown, seconds running commands may take to finish before they are stopped.
    #[arg(long = "drain-s", env = "RDEV_DRAIN_S", default_value_t = 30)]
    pub drain_s: u64,
    /// An interactive command (`stdin: "pipe"` or a `tty`) with no input,
    /// no output and no attached client for this long ends (reason `idle`).
    #[arg(long, env = "RDEV_INTERACTIVE_IDLE", default_value = "30m", value_parser = rdev_shared::config::parse_duration)]
    pub interactive_idle: Duration,
    /// Executor kinds this worker runs: `local`, `kubernetes`, or both
    /// (comma-separated). Commands of a disabled kind fail with a clear
    /// error; the API refuses projects of a kind its own setting disables.
    #[arg(long, env = "RDEV_EXECUTORS", default_value = "local,kubernetes")]
    pub executors: ExecutorKinds,
    /// Settings of the local sandbox.
    #[command(flatten)]
    pub sandbox: SandboxConfig,
    /// Defaults and ceilings of command resource limits.
    #[command(flatten)]
    pub limits: LimitsConfig,
    /// Settings of the `kubernetes` executor.
    #[command(flatten)]
    pub kube: KubeConfig,
}

/// Settings of the `kubernetes` executor (`RDEV_KUBE_*`). The API client is
/// only created when the first Kubernetes command arrives (in-cluster
/// configuration in a pod, the kubeconfig otherwise), so enabling the
/// executor costs nothing on workers that never see one.
#[derive(clap::Args, Clone, Debug)]
pub struct KubeConfig {
    /// Seconds a pod list (per namespace and selector) is reused.
    #[arg(
        long = "kube-pod-cache-ttl-s",
        env = "RDEV_KUBE_POD_CACHE_TTL_S",
        default_value_t = 5
    )]
    pub pod_cache_ttl_s: u64,
    /// Seconds one Kubernetes API call (list, opening an exec) may take.
    #[arg(
        long = "kube-api-timeout-s",
        env = "RDEV_KUBE_API_TIMEOUT_S",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub api_timeout_s: u64,
}

impl Default for KubeConfig {
    /// The command-line defaults.
    fn default() -> Self {
        Self {
            pod_cache_ttl_s: 5,
            api_timeout_s: 15,
        }
    }
}

impl KubeConfig {
    /// How long a pod list is reused.
    pub fn pod_cache_ttl(&self) -> Duration {
        Duration::from_secs(self.pod_cache_ttl_s)
    }

    /// How long one Kubernetes API call may take.
    pub fn api_timeout(&self) -> Duration {
        Duration::from_secs(self.api_timeout_s)
    }
}

impl Config {
    /// The documented defaults on the given database and broker, without
    /// reading the environment (tests and embedders start from this and
    /// change what they need). A unit test keeps it equal to clap's defaults.
    pub fn local(db: DbConfig, amqp: AmqpConfig) -> Self {
        Self {
            db,
            amqp,
            log: LogConfig {
                log_format: rdev_shared::config::LogFormat::Text,
            },
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9091)),
            workspace_root: PathBuf::from("./.rdev/workspaces"),
            concurrency: 4,
            heartbeat_s: 5,
            kill_grace_s: 5,
            worker_id: None,
            drain_s: 30,
            interactive_idle: Duration::from_secs(30 * 60),
            executors: ExecutorKinds::all(),
            sandbox: SandboxConfig::default(),
            limits: LimitsConfig::default(),
            kube: KubeConfig::default(),
        }
    }

    /// Whether this worker runs commands of `kind`.
    pub fn runs(&self, kind: ExecutorKind) -> bool {
        self.executors.allows(kind)
    }

    /// The configured worker id, or a fresh `<hostname>-<pid>-<4 hex>` one.
    pub fn resolved_worker_id(&self) -> String {
        if let Some(id) = self.worker_id.as_ref().filter(|s| !s.trim().is_empty()) {
            return id.trim().to_owned();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".into());
        format!(
            "{host}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        )
    }

    /// TERM → KILL grace period.
    pub fn kill_grace(&self) -> Duration {
        Duration::from_secs(self.kill_grace_s)
    }

    /// Heartbeat period.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_s.max(1))
    }

    /// How long running commands may finish after shutdown begins.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_s)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_parse_and_zero_concurrency_is_refused() {
        let cfg = Config::try_parse_from(["rdev-worker"]).expect("defaults parse");
        let local = Config::local(cfg.db.clone(), cfg.amqp.clone());
        assert_eq!(
            format!("{local:?}"),
            format!("{cfg:?}"),
            "Config::local matches the command line"
        );
        assert_eq!(cfg.concurrency, 4);
        assert_eq!(cfg.listen.port(), 9091);
        assert!(Config::try_parse_from(["rdev-worker", "--concurrency", "0"]).is_err());
        assert!(cfg.runs(ExecutorKind::Kubernetes) && cfg.runs(ExecutorKind::Local));
        let d = KubeConfig::default();
        assert_eq!(
            (d.pod_cache_ttl_s, d.api_timeout_s),
            (cfg.kube.pod_cache_ttl_s, cfg.kube.api_timeout_s),
            "Default matches the command line"
        );
        assert_eq!(
            cfg.limits,
            LimitsConfig::default(),
            "Default matches the command line"
        );
        let s = SandboxConfig::default();
        assert_eq!(
            (s.mode, &s.bwrap, &s.hide, s.cgroups),
            (
                cfg.sandbox.mode,
                &cfg.sandbox.bwrap,
                &cfg.sandbox.hide,
                cfg.sandbox.cgroups
            ),
            "Default matches the command line"
        );
        assert!(cfg.sandbox.ro_paths.0.is_empty());
        let kube_only = Config::try_parse_from(["rdev-worker", "--executors", "kubernetes"])
            .expect("kube only");
        assert!(!kube_only.runs(ExecutorKind::Local));
        assert!(Config::try_parse_from(["rdev-worker", "--executors", "ssh"]).is_err());
        let id = cfg.resolved_worker_id();
        assert!(id.contains(&std::process::id().to_string()), "{id}");
    }
}

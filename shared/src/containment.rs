//! What contains a command: its project's network mode and resource limits,
//! the server's defaults and ceilings for those limits, the executor kinds a
//! deployment runs, and the environment variables no command may set.
//!
//! The API validates against these (422 with the allowed values; the field
//! errors are built in `domain`); the worker enforces them (`rdev-worker`'s
//! `sandbox` module) and clamps again, so a project stored before a ceiling
//! was lowered cannot exceed it. A bottom module: it imports only `config`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::parse_duration;

/// Network of a local project's commands.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The worker host's network (the default).
    #[default]
    Host,
    /// A network namespace of its own: loopback only, nothing else reachable.
    None,
}

impl NetworkMode {
    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::None => "none",
        }
    }
}

impl FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Self::Host),
            "none" => Ok(Self::None),
            _ => Err(format!("unknown network mode `{s}` (host or none)")),
        }
    }
}

/// Resource limits of one command. On a project, an absent limit means the
/// server's default (`RDEV_COMMAND_LIMITS`); every limit is at most the
/// server's ceiling (`RDEV_COMMAND_LIMITS_MAX`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// Memory of all its processes together, in bytes (tmpfs pages included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    /// Processes and threads alive at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    /// CPU seconds of each process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<i64>,
    /// Largest file a process may write, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_bytes: Option<i64>,
    /// Open files per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<i64>,
}

/// One kind of resource limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `memory_bytes`.
    Memory,
    /// `pids`.
    Pids,
    /// `cpu_s`.
    Cpu,
    /// `file_size_bytes`.
    FileSize,
    /// `open_files`.
    OpenFiles,
}

impl Limit {
    /// Every limit.
    pub const ALL: [Limit; 5] = [
        Self::Memory,
        Self::Pids,
        Self::Cpu,
        Self::FileSize,
        Self::OpenFiles,
    ];

    /// The JSON field of the limit.
    pub fn field(self) -> &'static str {
        match self {
            Self::Memory => "memory_bytes",
            Self::Pids => "pids",
            Self::Cpu => "cpu_s",
            Self::FileSize => "file_size_bytes",
            Self::OpenFiles => "open_files",
        }
    }

    /// The key in `RDEV_COMMAND_LIMITS`.
    fn key(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Cpu => "cpu",
            Self::FileSize => "file_size",
            Self::OpenFiles => "open_files",
        }
    }

    /// Smallest value that leaves a command able to start.
    fn minimum(self) -> i64 {
        match self {
            Self::Memory => 16 * 1024 * 1024,
            Self::Pids => 8,
            Self::Cpu => 1,
            Self::FileSize => 1024,
            Self::OpenFiles => 16,
        }
    }

    fn parse_value(self, s: &str) -> Result<i64, String> {
        match self {
            Self::Memory | Self::FileSize => parse_bytes(s),
            Self::Cpu => {
                let d = parse_duration(s)?;
                i64::try_from(d.as_secs().max(1)).map_err(|_| format!("`{s}` is too long"))
            }
            Self::Pids | Self::OpenFiles => s
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("`{s}` is not a whole number")),
        }
    }
}

impl ResourceLimits {
    /// The value of one limit.
    pub fn get(&self, limit: Limit) -> Option<i64> {
        match limit {
            Limit::Memory => self.memory_bytes,
            Limit::Pids => self.pids,
            Limit::Cpu => self.cpu_s,
            Limit::FileSize => self.file_size_bytes,
            Limit::OpenFiles => self.open_files,
        }
    }

    fn set(&mut self, limit: Limit, value: Option<i64>) {
        let slot = match limit {
            Limit::Memory => &mut self.memory_bytes,
            Limit::Pids => &mut self.pids,
            Limit::Cpu => &mut self.cpu_s,
            Limit::FileSize => &mut self.file_size_bytes,
            Limit::OpenFiles => &mut self.open_files,
        };
        *slot = value;
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        Limit::ALL.iter().all(|&l| self.get(l).is_none())
    }

    /// Checks a project's limits against the server's ceilings: each one
    /// between its minimum and `max` (when `max` sets one). Returns the
    /// JSON field (`limits.…`) and a message per violation.
    pub fn violations(&self, max: &ResourceLimits) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for limit in Limit::ALL {
            let Some(v) = self.get(limit) else { continue };
            let min = limit.minimum();
            let field = format!("limits.{}", limit.field());
            match max.get(limit) {
                Some(m) if v > m || v < min => out.push((
                    field,
                    format!("must be {min}-{m} (the server's ceiling is {m})"),
                )),
                None if v < min => out.push((field, format!("must be at least {min}"))),
                _ => {}
            }
        }
        out
    }

    /// The limits a command of a project runs with: the project's own,
    /// else the server's default, and never above the ceiling.
    pub fn effective(&self, cfg: &LimitsConfig) -> ResourceLimits {
        let mut out = ResourceLimits::default();
        for limit in Limit::ALL {
            let wanted = self.get(limit).or(cfg.defaults.get(limit));
            let value = match (wanted, cfg.max.get(limit)) {
                (Some(v), Some(m)) => Some(v.min(m)),
                (None, Some(m)) => Some(m),
                (v, None) => v,
            };
            out.set(limit, value);
        }
        out
    }
}

impl FromStr for ResourceLimits {
    type Err = String;
    /// Parses `memory=2G,pids=1024,cpu=1h,file_size=8G,open_files=4096`;
    /// a limit may be `none`. An empty string sets nothing.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = ResourceLimits::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got `{part}`"))?;
            let limit = Limit::ALL
                .into_iter()
                .find(|l| l.key() == key.trim())
                .ok_or_else(|| {
                    format!("unknown limit `{key}` (memory, pids, cpu, file_size, open_files)")
                })?;
            let value = value.trim();
            let parsed = if value == "none" {
                None
            } else {
                let v = limit.parse_value(value)?;
                if v < limit.minimum() {
                    return Err(format!("{key} must be at least {}", limit.minimum()));
                }
                Some(v)
            };
            out.set(limit, parsed);
        }
        Ok(out)
    }
}

impl fmt::Display for ResourceLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Limit::ALL
            .iter()
            .filter_map(|&l| self.get(l).map(|v| format!("{}={v}", l.key())))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses sizes written as `512`, `64K`, `16M`, `2G`, `1T` (powers of 1024;
/// an optional trailing `B` or `iB` is accepted).
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: i64 = num.parse().map_err(|_| format!("invalid size `{s}`"))?;
    let mult: i64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return Err(format!("invalid size unit in `{s}` (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Defaults and ceilings of command resource limits (`RDEV_COMMAND_LIMITS`,
/// `RDEV_COMMAND_LIMITS_MAX`), read by the API (validation) and the worker
/// (enforcement).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Limits of a command whose project sets none, as
    /// `memory=2G,pids=1024,cpu=none,file_size=16G,open_files=4096`.
    #[arg(
        long = "command-limits",
        env = "RDEV_COMMAND_LIMITS",
        default_value = DEFAULT_LIMITS
    )]
    pub defaults: ResourceLimits,
    /// The most any project may set (`none` = no ceiling for that limit).
    #[arg(
        long = "command-limits-max",
        env = "RDEV_COMMAND_LIMITS_MAX",
        default_value = MAX_LIMITS
    )]
    pub max: ResourceLimits,
}

/// Default of `RDEV_COMMAND_LIMITS`.
pub const DEFAULT_LIMITS: &str = "memory=2G,pids=1024,file_size=16G,open_files=4096";
/// Default of `RDEV_COMMAND_LIMITS_MAX`.
pub const MAX_LIMITS: &str = "memory=16G,pids=16384,cpu=24h,file_size=256G,open_files=1048576";

impl Default for LimitsConfig {
    /// The documented defaults.
    fn default() -> Self {
        Self {
            defaults: DEFAULT_LIMITS.parse().unwrap_or_default(),
            max: MAX_LIMITS.parse().unwrap_or_default(),
        }
    }
}

/// An executor kind: the `kind` of a project's `executor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExecutorKind {
    /// A sandboxed process on the worker's host.
    Local,
    /// `exec` into a project pod.
    Kubernetes,
}

impl ExecutorKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// The executor kinds a deployment runs (`RDEV_EXECUTORS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorKinds(Vec<ExecutorKind>);

impl ExecutorKinds {
    /// Whether `kind` is enabled.
    pub fn allows(&self, kind: ExecutorKind) -> bool {
        self.0.contains(&kind)
    }

    /// Both kinds (the default).
    pub fn all() -> Self {
        Self(vec![ExecutorKind::Local, ExecutorKind::Kubernetes])
    }

    /// Only these kinds.
    pub fn only(kinds: &[ExecutorKind]) -> Self {
        Self(kinds.to_vec())
    }
}

impl fmt::Display for ExecutorKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|k| k.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for ExecutorKinds {
    type Err = String;
    /// Parses `local,kubernetes`, `kubernetes`, …; at least one kind.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut kinds = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = match part {
                "local" => ExecutorKind::Local,
                "kubernetes" => ExecutorKind::Kubernetes,
                _ => return Err(format!("unknown executor `{part}` (local, kubernetes)")),
            };
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err("name at least one executor (local, kubernetes)".into());
        }
        Ok(Self(kinds))
    }
}

/// Variables that make programs load or run code other than the command:
/// the dynamic loader's, shells' start-up hooks, interpreters' "run this
/// first" options. A command or project may not set them (422), so an
/// `allowed_commands` policy cannot be sidestepped through the environment.
pub const DENIED_ENV: &[&str] = &[
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "GCONV_PATH",
    "HOSTALIASES",
    "LOCPATH",
    "NLSPATH",
    "MALLOC_CHECK_",
    "NODE_OPTIONS",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "PYTHONSTARTUP",
    "PYTHONINSPECT",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
];

/// Prefixes of denied variables: the dynamic loader (`LD_PRELOAD`,
/// `LD_LIBRARY_PATH`, `LD_AUDIT`, …) and exported shell functions.
pub const DENIED_ENV_PREFIXES: &[&str] = &["LD_", "BASH_FUNC_"];

/// Variables denied in addition when the project has an `allowed_commands`
/// policy: `PATH` would let `argv0:npm` run any program named `npm`.
pub const DENIED_ENV_WITH_POLICY: &[&str] = &["PATH"];

/// Whether a command or project may not set variable `name`; `with_policy`
/// adds [`DENIED_ENV_WITH_POLICY`].
pub fn env_name_denied(name: &str, with_policy: bool) -> bool {
    DENIED_ENV.contains(&name)
        || DENIED_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
        || (with_policy && DENIED_ENV_WITH_POLICY.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_from_config() {
        let l: ResourceLimits = "memory=2G,pids=100,cpu=1h,file_size=512M,open_files=64"
            .parse()
            .expect("limits");
        assert_eq!(l.memory_bytes, Some(2 << 30));
        assert_eq!(l.pids, Some(100));
        assert_eq!(l.cpu_s, Some(3600));
        assert_eq!(l.file_size_bytes, Some(512 << 20));
        assert_eq!(l.open_files, Some(64));
        let none: ResourceLimits = "memory=none".parse().expect("none");
        assert!(none.is_empty());
        assert!("".parse::<ResourceLimits>().expect("empty").is_empty());
        for bad in ["memory", "disk=1G", "pids=x", "memory=1X", "pids=1"] {
            assert!(bad.parse::<ResourceLimits>().is_err(), "{bad}");
        }
        let d = LimitsConfig::default();
        assert_eq!(
            d.defaults.to_string(),
            "memory=2147483648,pids=1024,file_size=17179869184,open_files=4096"
        );
        assert_eq!(d.max.cpu_s, Some(86_400));
    }

    #[test]
    fn effective_limits_take_the_project_then_the_default_under_the_ceiling() {
        let cfg = LimitsConfig {
            defaults: "memory=1G,pids=100".parse().expect("defaults"),
            max: "memory=2G,pids=200,cpu=60".parse().expect("max"),
        };
        let project = ResourceLimits {
            memory_bytes: Some(4 << 30),
            open_files: Some(32),
            ..Default::default()
        };
        let e = project.effective(&cfg);
        assert_eq!(e.memory_bytes, Some(2 << 30), "clamped to the ceiling");
        assert_eq!(e.pids, Some(100), "server default");
        assert_eq!(e.cpu_s, Some(60), "no default: the ceiling");
        assert_eq!(e.open_files, Some(32), "no ceiling: the project's");
        assert_eq!(e.file_size_bytes, None);
    }

    #[test]
    fn project_limits_are_checked_against_the_ceiling() {
        let max: ResourceLimits = "memory=1G".parse().expect("max");
        let errors = ResourceLimits {
            memory_bytes: Some(2 << 30),
            pids: Some(1),
            open_files: Some(100),
            ..Default::default()
        }
        .violations(&max);
        let fields: Vec<&str> = errors.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(fields, ["limits.memory_bytes", "limits.pids"]);
        assert!(errors[0].1.contains("1073741824"), "{}", errors[0].1);
    }

    #[test]
    fn executor_kinds_parse() {
        let k: ExecutorKinds = "kubernetes".parse().expect("kinds");
        assert!(!k.allows(ExecutorKind::Local));
        assert!(k.allows(ExecutorKind::Kubernetes));
        assert_eq!(k.to_string(), "kubernetes");
        assert!("".parse::<ExecutorKinds>().is_err());
        assert!("local,ssh".parse::<ExecutorKinds>().is_err());
        assert_eq!(ExecutorKinds::all().to_string(), "local,kubernetes");
    }

    #[test]
    fn loader_and_shell_hooks_are_denied() {
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
            "ENV",
            "NODE_OPTIONS",
            "BASH_FUNC_x",
        ] {
            assert!(env_name_denied(name, false), "{name}");
        }
        for name in ["FOO", "PATH", "LDFLAGS", "HOME"] {
            assert!(!env_name_denied(name, false), "{name}");
        }
        assert!(env_name_denied("PATH", true));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("64K"), Ok(65_536));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1MB"), Ok(1 << 20));
        assert!(parse_bytes("1X").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }
}

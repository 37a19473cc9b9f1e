//! Settings of the local sandbox (`RDEV_LOCAL_SANDBOX`, `RDEV_SANDBOX_*`).

use std::path::PathBuf;

/// Paths hidden in every sandbox by default (they exist under the
/// read-only `/etc`; a missing one is skipped).
pub const DEFAULT_HIDDEN: &str = "/etc/shadow,/etc/shadow-,/etc/gshadow,/etc/gshadow-,\
/etc/sudoers,/etc/sudoers.d,/etc/ssh,/etc/ssl/private,/etc/rdev,/etc/kubernetes,\
/etc/docker,/etc/containerd,/etc/rabbitmq,/etc/postgresql";

/// `PATH` of every command: the system directories, nothing from the worker.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether local commands run sandboxed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxMode {
    /// Always; where the sandbox cannot run, local commands fail with
    /// `sandbox_unavailable`.
    On,
    /// Never (a warning at start; `/ready` says so).
    Off,
}

/// Whether commands get cgroups of their own.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// When the worker may manage cgroups; rlimits otherwise.
    Auto,
    /// Never: rlimits only.
    Off,
}

/// Which sandboxes can open new pseudo-terminals (a private `devpts`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtysMode {
    /// Those of commands run with a terminal; the others bind a `/dev`
    /// the worker prepared, which is cheaper to make (where it cannot
    /// prepare one, every sandbox gets bubblewrap's, with a `devpts`).
    Terminal,
    /// Every sandbox (bubblewrap's `--dev`).
    Always,
}

/// Whether a sandbox runs more than one command (`RDEV_SANDBOX_REUSE`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReuseMode {
    /// A sandbox serves one command after another of the same workdir,
    /// network mode and limits; between two, every process of the first
    /// is killed and its `/tmp` and `/dev/shm` emptied.
    On,
    /// Every command gets a sandbox of its own.
    Off,
}

/// Settings of the local sandbox (`RDEV_LOCAL_SANDBOX`, `RDEV_SANDBOX_*`).
#[derive(clap::Args, Clone, Debug)]
pub struct SandboxConfig {
    /// `on`: every local command runs in a bubblewrap sandbox, and local
    /// commands fail with `sandbox_unavailable` where it cannot run; `off`:
    /// commands run as plain child processes (not for untrusted commands).
    #[arg(
        long = "local-sandbox",
        env = "RDEV_LOCAL_SANDBOX",
        default_value = "on"
    )]
    pub mode: SandboxMode,
    /// The bubblewrap executable.
    #[arg(
        long = "sandbox-bwrap",
        env = "RDEV_SANDBOX_BWRAP",
        default_value = "bwrap"
    )]
    pub bwrap: PathBuf,
    /// The `rdev-sandbox-init` executable; default: beside this one.
    #[arg(long = "sandbox-init", env = "RDEV_SANDBOX_INIT")]
    pub init: Option<PathBuf>,
    /// User commands run as when the worker runs as root: a name or
    /// `uid[:gid]`; default `rdev-run` when it exists, else `nobody`. Never
    /// root. A worker that is not root runs commands as itself.
    #[arg(long = "sandbox-user", env = "RDEV_SANDBOX_USER")]
    pub user: Option<String>,
    /// Extra host paths every sandbox sees read-only (comma-separated).
    #[arg(
        long = "sandbox-ro-paths",
        env = "RDEV_SANDBOX_RO_PATHS",
        default_value = ""
    )]
    pub ro_paths: PathList,
    /// Paths hidden in every sandbox (comma-separated): a directory
    /// becomes an empty tmpfs, a file the commands' user could read
    /// `/dev/null` (one it cannot read is left as it is).
    #[arg(long = "sandbox-hide", env = "RDEV_SANDBOX_HIDE", default_value = DEFAULT_HIDDEN)]
    pub hide: PathList,
    /// `auto`: a cgroup per command (memory and process limits for the whole
    /// tree) when the worker may manage cgroups; `off`: rlimits only.
    #[arg(long = "cgroups", env = "RDEV_CGROUPS", default_value = "auto")]
    pub cgroups: CgroupMode,
    /// Sandboxes kept ready for commands (made ahead, at most one at a time
    /// per project workdir, network mode and limits, or returned by a
    /// command that ended): a command that finds one starts without
    /// waiting for bubblewrap or a cgroup move. Default: the worker's
    /// concurrency (one per slot). 0: none, and no reuse.
    #[arg(long = "sandbox-warm", env = "RDEV_SANDBOX_WARM")]
    pub warm: Option<usize>,
    /// How long a warm sandbox waits for a command before it is discarded.
    #[arg(
        long = "sandbox-warm-ttl",
        env = "RDEV_SANDBOX_WARM_TTL",
        default_value = "2m",
        value_parser = rdev_shared::config::parse_duration
    )]
    pub warm_ttl: std::time::Duration,
    /// `terminal`: only commands run with a terminal can open new
    /// pseudo-terminals (`/dev/pts`, `/dev/ptmx`); the others' `/dev` is
    /// one bind of a directory the worker prepares (about 0.6 ms less CPU
    /// per sandbox). `always`: every sandbox gets a private `devpts`.
    #[arg(
        long = "sandbox-ptys",
        env = "RDEV_SANDBOX_PTYS",
        default_value = "terminal"
    )]
    pub ptys: PtysMode,
    /// `on`: a sandbox made for a command without secret files, terminal or
    /// piped input runs the next commands of its workdir, network mode and
    /// limits too (each with its own streams; the sandbox's other
    /// processes killed and its `/tmp` and `/dev/shm` emptied between two),
    /// and its cost is paid once, not per command. `off`: every command
    /// gets a sandbox of its own. Needs the built-in init.
    #[arg(
        long = "sandbox-reuse",
        env = "RDEV_SANDBOX_REUSE",
        default_value = "on"
    )]
    pub reuse: ReuseMode,
}

impl Default for SandboxConfig {
    /// The documented defaults.
    fn default() -> Self {
        Self {
            mode: SandboxMode::On,
            bwrap: PathBuf::from("bwrap"),
            init: None,
            user: None,
            ro_paths: PathList::default(),
            hide: DEFAULT_HIDDEN.parse().unwrap_or_default(),
            cgroups: CgroupMode::Auto,
            warm: None,
            warm_ttl: std::time::Duration::from_secs(120),
            ptys: PtysMode::Terminal,
            reuse: ReuseMode::On,
        }
    }
}

/// A comma-separated list of absolute paths (empty allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathList(pub Vec<PathBuf>);

impl std::str::FromStr for PathList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !p.starts_with('/') {
                return Err(format!("`{p}` is not an absolute path"));
            }
            out.push(PathBuf::from(p));
        }
        Ok(Self(out))
    }
}

//! Containment of local commands (docs/operations/security.md).
//!
//! Every local command runs in a bubblewrap sandbox of its own: new user,
//! PID, mount, IPC, UTS and cgroup namespaces (and network, for projects
//! with `network: "none"`), as an unprivileged user, with a filesystem of
//! read-only system directories, `/etc` minus named secrets, its workdir at
//! `/workspace`, and private `/tmp` and `/dev/shm`. Its process 1 is
//! `rdev-sandbox-init`, which reports exactly how the main process ended and,
//! by exiting, makes the kernel kill every other process of the sandbox.
//! Resource limits hold through a cgroup per command where the worker may
//! manage one ([`cgroup`]), else through rlimits ([`process::rlimits`]).
//!
//! Layers: [`bwrap`] (arguments, pure), [`init`] (the init binary and its
//! report), [`process`] (child set-up), [`cgroup`] → this module ([`Sandbox`]:
//! start-up probe, [`Sandbox::spawn`], [`Spawned`]).

pub mod bwrap;
pub mod cgroup;
mod config;
pub mod init;
mod pipes;
mod plain;
pub mod process;
pub mod pty;
mod small;
mod spawned;
mod warm;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Uid;
use rdev_shared::containment::{Limit, LimitsConfig, NetworkMode, ResourceLimits};
use rdev_shared::interactive::TtySize;
use serde::Serialize;
use tokio::sync::watch;

use self::cgroup::{Cgroups, CommandCgroup};
use self::init::InstalledInit;
use self::pipes::{SandboxPipes, filled_memfd, follow_json, read_capped, receiver};
use self::plain::spawn_plain;
use self::process::{ChildSetup, RunAs, resolve_run_as};
use self::pty::PtyMaster;
use self::spawned::{Target, boxed};
use self::warm::{Handoff, Warm, WarmPool};

pub use self::config::{
    CgroupMode, DEFAULT_HIDDEN, PATH, PathList, PtysMode, ReuseMode, SandboxConfig, SandboxMode,
};
pub use self::spawned::{Controls, Output, Spawned};
pub use self::warm::WarmKey;

/// Size of the private tmpfs mounts when the command has no memory limit.
const DEFAULT_TMPFS_BYTES: u64 = 1 << 30;
/// Most bytes of bwrap's own diagnostics and of the init's report kept.
const DIAGNOSTICS_MAX: usize = 4096;
/// How long the start-up probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading the init's report may take after bwrap has exited
/// (only a leaked descriptor could make it wait).
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client's signal waits for a sandbox still being set up.
const INIT_WAIT: Duration = Duration::from_secs(30);
/// Sandboxes kept ready when `RDEV_SANDBOX_WARM` is not set and nothing
/// else gave a number (the worker gives its concurrency).
const DEFAULT_WARM: usize = 4;
/// How long a warm sandbox may take to be set up before it is discarded.
const WARM_SETUP: Duration = Duration::from_secs(10);

/// How local commands are isolated on this worker.
#[derive(Debug)]
enum Isolation {
    Bwrap(InstalledInit),
    /// No sandbox; the launcher (the small one the worker carries, else
    /// the init binary's `--launch`), if there is one, starts commands
    /// without forking the worker.
    Off(Option<PathBuf>),
    Unavailable(String),
}

/// The local sandbox of one worker: probed at start, then used for every
/// local command.
#[derive(Debug)]
pub struct Sandbox {
    /// Sandboxes made ready ahead of their commands (first: they go
    /// before the cgroups their own cgroups are under).
    warm: Arc<WarmPool>,
    isolation: Isolation,
    bwrap: PathBuf,
    run_as: Option<RunAs>,
    cgroups: Option<Cgroups>,
    cgroups_off_reason: Option<String>,
    limits: LimitsConfig,
    ro_paths: Vec<PathBuf>,
    hide: Vec<PathBuf>,
    /// Who the sandbox's processes are on the host (`reader_of`).
    reader: bwrap::Reader,
    /// Which sandboxes get bubblewrap's `/dev` with a `devpts`.
    ptys: PtysMode,
    /// Whether sandboxes serve more than one command: `Ok`, or why not.
    reuse: Result<(), String>,
}

/// What `/ready` and the start-up log say about the sandbox.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SandboxStatus {
    /// `bwrap`, `off` or `unavailable`.
    pub mode: &'static str,
    /// Why it is unavailable, or that it is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who commands run as.
    pub user: String,
    /// How limits are enforced: `cgroup v1 (memory, pids)`, or `rlimits`.
    pub limits: String,
    /// What starts each command: `built-in` (the small init the worker
    /// carries: launcher and, sandboxed, init), `rdev-sandbox-init`, or
    /// `fork` (the sandbox off and no launcher).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starter: Option<&'static str>,
    /// The sandboxes' `/dev`: `prepared` (one bind of a directory the
    /// worker made; a private `devpts` only with a terminal) or `bwrap`
    /// (bubblewrap's `--dev` for every sandbox, and why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Whether a sandbox runs the next commands of its workdir, network
    /// mode and limits: `on`, or `off (why)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse: Option<String>,
}

/// One command to start.
#[derive(Debug)]
pub struct Launch<'a> {
    /// Names the command's cgroup (the command id).
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<OsString>,
    /// Its complete environment.
    pub env: BTreeMap<String, String>,
    /// Secret files, in a private tmpfs at [`crate::secrets::SECRETS_DIR`]
    /// (sandbox only).
    pub secret_files: &'a [crate::secrets::SecretFile],
    /// The workdir on the host.
    pub workdir: &'a Path,
    /// Network mode.
    pub network: NetworkMode,
    /// The limits it runs with (already effective).
    pub limits: ResourceLimits,
    /// Whether standard input is a pipe (else `/dev/null`).
    pub stdin: bool,
    /// A pseudo-terminal of this size as its controlling terminal and
    /// standard streams (then `stdin` is ignored: input goes to the
    /// terminal).
    pub tty: Option<TtySize>,
}

/// Why a command could not be started.
#[derive(Debug, PartialEq, Eq)]
pub enum LaunchError {
    /// The sandbox cannot run on this worker.
    Unavailable(String),
    /// This command could not be started.
    Failed(String),
}

/// How a sandboxed command's main process ended, as far as the sandbox
/// can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// It exited.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It failed, or was killed, at a resource limit.
    Limit {
        /// Which limit.
        limit: Limit,
        /// Its exit code, if it exited.
        exit_code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// The program could not be executed.
    ExecFailed(String),
    /// The sandbox failed before the command ran.
    SandboxFailed(String),
}

impl Sandbox {
    /// Sets up the sandbox as configured and probes it by running `true`
    /// in a scratch directory under `workspace_root`. Never fails: where
    /// it cannot work, local commands are refused with the reason.
    pub async fn start(
        cfg: &SandboxConfig,
        limits: LimitsConfig,
        worker_id: &str,
        workspace_root: &Path,
    ) -> Self {
        let run_as = match resolve_run_as(cfg.user.as_deref()) {
            Ok(r) => r,
            Err(e) => return Self::unavailable(cfg, limits, e),
        };
        let (cgroups, cgroups_off_reason) = match cfg.cgroups {
            CgroupMode::Off => (None, Some("cgroups off (RDEV_CGROUPS=off)".to_owned())),
            CgroupMode::Auto => match Cgroups::detect(worker_id) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e)),
            },
        };
        let reader = reader_of(run_as.as_ref());
        let mut sandbox = Self {
            isolation: Isolation::Off(None),
            bwrap: cfg.bwrap.clone(),
            run_as,
            cgroups,
            cgroups_off_reason,
            limits,
            ro_paths: cfg.ro_paths.0.clone(),
            hide: cfg.hide.0.clone(),
            reader,
            warm: Arc::new(WarmPool::new(0, cfg.warm_ttl)),
            ptys: cfg.ptys,
            reuse: Err("the sandbox is not on".into()),
        };
        // Loaded and checked now, not on a command's path.
        let _ = small::launcher();
        if cfg.mode == SandboxMode::Off {
            // Runs as the worker (then drops to the command's user): no
            // private copy needed. Without one, commands fork the worker.
            let small = small::launcher().filter(|_| cfg.init.is_none());
            sandbox.isolation = Isolation::Off(match small {
                Some(small) => Some(small.to_path_buf()),
                None => init::locate(cfg.init.as_deref()).ok(),
            });
        }
        if cfg.mode == SandboxMode::On {
            // The small init unless one is configured; rdev-sandbox-init
            // where it is not built or fails the probe.
            if let Some(bytes) = small::BYTES.filter(|_| cfg.init.is_none()) {
                sandbox
                    .isolate(InstalledInit::install_bytes(bytes), workspace_root)
                    .await;
                if let Isolation::Unavailable(e) = &sandbox.isolation {
                    tracing::info!(error = %e, "the small init cannot run here: trying rdev-sandbox-init");
                }
            }
            if !sandbox.is_isolated() {
                let installed =
                    init::locate(cfg.init.as_deref()).and_then(|p| InstalledInit::install(&p));
                sandbox.isolate(installed, workspace_root).await;
            }
            let warm = cfg.warm.unwrap_or(DEFAULT_WARM);
            if sandbox.is_isolated() && warm > 0 {
                sandbox.warm = Arc::new(WarmPool::new(warm, cfg.warm_ttl));
                tokio::spawn(sweep(Arc::downgrade(&sandbox.warm)));
            }
            sandbox.reuse = match (&sandbox.isolation, cfg.reuse) {
                (_, ReuseMode::Off) => Err("RDEV_SANDBOX_REUSE=off".into()),
                (_, ReuseMode::On) if !sandbox.warm.enabled() => {
                    Err("no pool to return sandboxes to (RDEV_SANDBOX_WARM=0)".into())
                }
                (Isolation::Bwrap(init), ReuseMode::On) if init.is_built_in() => {
                    sandbox.reuse = Ok(());
                    sandbox.probe_serving(workspace_root).await
                }
                (Isolation::Bwrap(_), ReuseMode::On) => {
                    Err("rdev-sandbox-init runs one command per sandbox".into())
                }
                _ => Err("the sandbox is not on".into()),
            };
            if let Err(why) = &sandbox.reuse {
                tracing::info!(why = %why, "each command gets a sandbox of its own");
            }
        }
        sandbox
    }

    /// Sandboxes with `init`, if it is installed and the probe passes.
    async fn isolate(&mut self, init: Result<InstalledInit, String>, workspace_root: &Path) {
        self.isolation = match init {
            Ok(installed) => Isolation::Bwrap(installed),
            Err(e) => Isolation::Unavailable(e),
        };
        if !self.is_isolated() {
            return;
        }
        let Err(mut e) = self.probe(workspace_root).await else {
            return;
        };
        // A prepared /dev that fails where bubblewrap's would work is not
        // a reason to refuse every command: probe again without it.
        if let Isolation::Bwrap(installed) = &mut self.isolation
            && self.ptys == PtysMode::Terminal
            && installed.dev().is_ok()
        {
            installed.forget_dev(format!("the sandbox probe failed with it: {e}"));
            match self.probe(workspace_root).await {
                Ok(()) => return,
                Err(again) => e = again,
            }
        }
        self.isolation = Isolation::Unavailable(e);
    }

    fn unavailable(cfg: &SandboxConfig, limits: LimitsConfig, why: String) -> Self {
        Self {
            isolation: Isolation::Unavailable(why),
            bwrap: cfg.bwrap.clone(),
            run_as: None,
            cgroups: None,
            cgroups_off_reason: None,
            limits,
            ro_paths: Vec::new(),
            hide: Vec::new(),
            reader: reader_of(None),
            warm: Arc::new(WarmPool::new(0, cfg.warm_ttl)),
            ptys: cfg.ptys,
            reuse: Err("the sandbox is not on".into()),
        }
    }

    /// What is in force, for `/ready` and logs.
    pub fn status(&self) -> SandboxStatus {
        let (mode, error) = match &self.isolation {
            Isolation::Bwrap(_) => ("bwrap", None),
            Isolation::Off(_) => (
                "off",
                Some("RDEV_LOCAL_SANDBOX=off: local commands are not contained".to_owned()),
            ),
            Isolation::Unavailable(e) => ("unavailable", Some(e.clone())),
        };
        let user = match &self.run_as {
            Some(u) => format!("{} ({})", u.name, u.uid),
            None => format!("the worker's own ({})", Uid::effective()),
        };
        let limits = match (&self.cgroups, &self.cgroups_off_reason) {
            (Some(c), _) => c.describe(),
            (None, Some(why)) => format!("rlimits ({why})"),
            (None, None) => "rlimits".into(),
        };
        let starter = match &self.isolation {
            Isolation::Bwrap(init) if init.is_built_in() => Some("built-in"),
            Isolation::Bwrap(_) => Some("rdev-sandbox-init"),
            Isolation::Off(Some(p)) if small::launcher() == Some(p.as_path()) => Some("built-in"),
            Isolation::Off(Some(_)) => Some("rdev-sandbox-init"),
            Isolation::Off(None) => Some("fork"),
            Isolation::Unavailable(_) => None,
        };
        let dev = match &self.isolation {
            Isolation::Bwrap(_) if self.ptys == PtysMode::Always => {
                Some("bwrap (RDEV_SANDBOX_PTYS=always)".to_owned())
            }
            Isolation::Bwrap(init) => Some(match init.dev() {
                Ok(_) => "prepared".to_owned(),
                Err(why) => format!("bwrap (no prepared /dev: {why})"),
            }),
            Isolation::Off(_) | Isolation::Unavailable(_) => None,
        };
        let reuse = self.is_isolated().then(|| match &self.reuse {
            Ok(()) => "on".to_owned(),
            Err(why) => format!("off ({why})"),
        });
        SandboxStatus {
            mode,
            error,
            user,
            limits,
            starter,
            dev,
            reuse,
        }
    }

    /// The server's limit defaults and ceilings.
    pub fn limits_config(&self) -> &LimitsConfig {
        &self.limits
    }

    /// With the sandbox off: the launcher commands start through (none:
    /// each start forks the worker).
    pub fn plain_launcher(&self) -> Option<&Path> {
        match &self.isolation {
            Isolation::Off(launcher) => launcher.as_deref(),
            _ => None,
        }
    }

    /// Whether commands run in the bubblewrap sandbox.
    pub fn is_isolated(&self) -> bool {
        matches!(self.isolation, Isolation::Bwrap(_))
    }

    /// `HOME` (and the working directory) of a command whose workdir is
    /// `workdir` on the host.
    pub fn home(&self, workdir: &Path) -> String {
        if self.is_isolated() {
            bwrap::WORKSPACE.to_owned()
        } else {
            workdir.display().to_string()
        }
    }

    /// Gives a freshly prepared workdir to the user commands run as. A
    /// workdir that already is theirs is left alone: `chown` rewrites the
    /// inode (its change time) even when the owner stays.
    pub fn own_workdir(&self, workdir: &Path) -> Result<(), String> {
        if let Some(u) = &self.run_as {
            use std::os::unix::fs::MetadataExt;
            if std::fs::symlink_metadata(workdir)
                .is_ok_and(|m| m.uid() == u.uid.as_raw() && m.gid() == u.gid.as_raw())
            {
                return Ok(());
            }
            nix::unistd::chown(workdir, Some(u.uid), Some(u.gid))
                .map_err(|e| format!("cannot give the workdir to {}: {e}", u.name))?;
        }
        Ok(())
    }

    /// Counts the commands that found a warm sandbox (and those that did
    /// not) in these counters.
    pub fn set_warm_counters(&self, hits: prometheus::IntCounter, misses: prometheus::IntCounter) {
        self.warm.set_counters(hits, misses);
    }

    /// What a sandbox made ahead of `l` would have to match, when `l` may
    /// run in one: sandboxed, no secret files, no terminal, warm
    /// sandboxes on.
    pub fn warm_key(&self, l: &Launch<'_>) -> Option<WarmKey> {
        if !(self.is_isolated()
            && self.warm.enabled()
            && l.secret_files.is_empty()
            && l.tty.is_none())
        {
            return None;
        }
        let dir = std::fs::metadata(l.workdir).ok()?;
        Some(WarmKey {
            workdir: l.workdir.to_owned(),
            identity: (dir.dev(), dir.ino()),
            network: l.network,
            limits: l.limits,
            stdin: l.stdin,
        })
    }

    /// Makes a sandbox ready for the next command with this key, unless
    /// one is ready or being made, or the pool is full of others that are
    /// being made. Call it from a runtime thread that lives as long as the
    /// worker: the sandbox dies with the thread that started it.
    ///
    /// The sandbox must have bound the directory its key names. So the
    /// workdir is opened (and held open by the sandbox) before bubblewrap
    /// starts, and the sandbox goes into the pool only once its init says
    /// it waits (every mount made) and the path still names that
    /// directory. A workdir removed and made again meanwhile gets another
    /// inode number (the old one is held), so the key of a command in it
    /// does not match.
    pub async fn warm_up(&self, key: WarmKey) {
        if !self.is_isolated() || !self.warm.reserve(&key) {
            return;
        }
        let discarded = |why: &str| {
            self.warm.abandon(&key);
            tracing::debug!("a warm sandbox was not made: {why}");
        };
        let mut made = match self.make_warm(&key) {
            Ok(made) => made,
            Err(e) => return discarded(&format!("{e:?}")),
        };
        let ready = made.spawned.until_waiting(WARM_SETUP).await
            && std::fs::metadata(&key.workdir).is_ok_and(|m| (m.dev(), m.ino()) == key.identity);
        if !ready {
            warm::discard(made.spawned);
            return discarded("its init did not report that it waits, or the workdir changed");
        }
        // Its TTL counts from here, as the pool's wait does.
        made.made = std::time::Instant::now();
        self.warm.put(made);
    }

    /// Starts a sandbox for `key` whose init waits for its command: one
    /// that serves its key's commands where sandboxes are reused, else one
    /// for a single command. Its workdir is opened first and must still be
    /// the key's.
    fn make_warm(&self, key: &WarmKey) -> Result<Warm, LaunchError> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| LaunchError::Failed(format!("{what}: {e}"));
        let workdir = open_dir(&key.workdir)
            .filter(|d| identity(d) == Some(key.identity))
            .ok_or_else(|| {
                LaunchError::Failed(
                    "the workdir changed since the command that asked for it".into(),
                )
            })?;
        let launch = Launch {
            // A uuid, as a command's: the next start's sweep of leftover
            // cgroups recognises it.
            name: uuid::Uuid::now_v7().to_string(),
            argv: Vec::new(),
            env: BTreeMap::new(),
            secret_files: &[],
            workdir: &key.workdir,
            network: key.network,
            limits: key.limits,
            stdin: key.stdin,
            tty: None,
        };
        let (spawned, handoff) = if self.serves(key) {
            let (socket, theirs) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::SeqPacket,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| failed("cannot create a socket pair", &e))?;
            let wait = bwrap::Wait::Serve {
                socket: theirs.as_raw_fd(),
            };
            // `theirs` closes with this block: the init's copy is then the
            // only one, and it sees the socket end when the worker drops
            // `socket`.
            (self.launch(&launch, Some(wait))?, Handoff::Serve { socket })
        } else {
            let (go_read, go) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| failed("cannot create a pipe", &e))?;
            let command =
                pipes::memfd("rdev-command").map_err(|e| failed("cannot create a memfd", &e))?;
            let wait = bwrap::Wait::Once {
                go: go_read.as_raw_fd(),
                command: command.as_raw_fd(),
            };
            // As above, for the go pipe's read end: the init sees the end
            // of the pipe when the worker drops `go`.
            (
                self.launch(&launch, Some(wait))?,
                Handoff::Once { go, command },
            )
        };
        Ok(Warm {
            key: key.clone(),
            spawned,
            handoff,
            workdir,
            made: std::time::Instant::now(),
        })
    }

    /// Whether a sandbox for `key` serves its commands one after another:
    /// reuse on and working here, and nothing to pipe into the command.
    fn serves(&self, key: &WarmKey) -> bool {
        self.reuse.is_ok() && !key.stdin
    }

    /// Runs `true` twice in one serving sandbox (the second after the
    /// sandbox's return to the pool): `Ok` when both ran.
    async fn probe_serving(&self, workspace_root: &Path) -> Result<(), String> {
        let dir = workspace_root.join(format!(".rdev-probe-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let result = async {
            self.own_workdir(&dir)?;
            let launch = || self.probe_launch(&dir);
            let key = self
                .warm_key(&launch())
                .filter(|k| self.serves(k))
                .ok_or("the probe's command would not be served")?;
            let pool = Arc::downgrade(&self.warm);
            let mut made = self.make_warm(&key).map_err(|e| match e {
                LaunchError::Unavailable(m) | LaunchError::Failed(m) => m,
            })?;
            for round in ["first", "second"] {
                let l = launch();
                let mut spawned = made
                    .start(&l.argv, &l.env, pool.clone())
                    .map_err(|e| format!("the {round} command was not handed over: {e}"))?;
                let ran = tokio::time::timeout(PROBE_TIMEOUT, spawned.wait()).await;
                if ran.is_err() {
                    spawned.kill_rest();
                }
                match spawned.finish().await {
                    Finished::Exited(0) => {}
                    other => return Err(format!("the {round} command ended with {other:?}")),
                }
                made = self.returned(&key).await?;
            }
            // Back in the pool twice: not for a command; its workdir goes.
            warm::discard(made.spawned);
            Ok(())
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// Waits (up to the probe's timeout) for the sandbox of `key` to be
    /// back in the pool, and takes it.
    async fn returned(&self, key: &WarmKey) -> Result<Warm, String> {
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
        loop {
            if let Some(w) = self.warm.take_quietly(key) {
                return Ok(w);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err("the sandbox did not come back to the pool after its command".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// How many sandboxes are ready in the pool (for tests and benches).
    pub fn warm_ready(&self) -> usize {
        self.warm.ready()
    }

    /// Starts a command: in a warm sandbox made for `warm` (its
    /// [`Sandbox::warm_key`]), if one is ready, else in a new one.
    ///
    /// Where sandboxes are reused, a command that finds none ready starts
    /// in a new serving sandbox, which returns to the pool after it.
    pub fn spawn(&self, l: Launch<'_>, warm: Option<&WarmKey>) -> Result<Spawned, LaunchError> {
        let Some(key) = warm else {
            return self.launch(&l, None);
        };
        let pool = Arc::downgrade(&self.warm);
        if let Some(warm) = self.warm.take(key) {
            match warm.start(&l.argv, &l.env, pool.clone()) {
                Ok(spawned) => return Ok(spawned),
                Err(e) => tracing::debug!(error = %e, "a warm sandbox failed; starting a new one"),
            }
        }
        if self.serves(key) {
            match self.make_warm(key) {
                Ok(made) => match made.start(&l.argv, &l.env, pool) {
                    Ok(spawned) => return Ok(spawned),
                    Err(e) => tracing::debug!(error = %e, "a new serving sandbox failed"),
                },
                Err(e) => tracing::debug!(error = ?e, "no serving sandbox"),
            }
        }
        self.launch(&l, None)
    }

    /// Starts a new sandbox (or, with the sandbox off, the command) for
    /// `l`; with `wait`, a warm sandbox whose init waits for its command.
    fn launch(&self, l: &Launch<'_>, wait: Option<bwrap::Wait>) -> Result<Spawned, LaunchError> {
        let (init, launcher) = match &self.isolation {
            Isolation::Unavailable(e) => return Err(LaunchError::Unavailable(e.clone())),
            Isolation::Bwrap(init) => (Some(init), None),
            Isolation::Off(launcher) => (None, launcher.as_deref()),
        };
        if init.is_none() && !l.secret_files.is_empty() {
            return Err(LaunchError::Failed(
                "secret_files need the local sandbox (this worker runs RDEV_LOCAL_SANDBOX=off)"
                    .into(),
            ));
        }
        let cgroup = match &self.cgroups {
            Some(c) => Some(c.create(&l.name, &l.limits).map_err(|e| {
                LaunchError::Failed(format!("cannot create the command's cgroup: {e}"))
            })?),
            None => None,
        };
        let setup = ChildSetup {
            keep: Vec::new(),
            join: cgroup
                .as_ref()
                .map(CommandCgroup::join_fds)
                .unwrap_or_default(),
            rlimits: process::rlimits(
                &l.limits,
                self.cgroups.as_ref().is_some_and(Cgroups::limits_memory),
                self.cgroups.as_ref().is_some_and(Cgroups::limits_pids),
            ),
            run_as: self.run_as.clone(),
            terminal_session: false,
        };
        let terminal = match l.tty {
            Some(size) => Some(
                pty::open(size)
                    .map_err(|e| LaunchError::Failed(format!("cannot open a terminal: {e}")))?,
            ),
            None => None,
        };
        let started = match init {
            Some(init) => self.spawn_bwrap(l, init, setup, terminal, wait),
            None => spawn_plain(l, setup, terminal, launcher),
        };
        match started {
            Ok(mut s) => {
                s.cgroup = cgroup;
                Ok(s)
            }
            Err(e) => {
                if let Some(cg) = cgroup {
                    tokio::spawn(cg.remove());
                }
                Err(e)
            }
        }
    }

    fn spawn_bwrap(
        &self,
        l: &Launch<'_>,
        installed: &InstalledInit,
        mut setup: ChildSetup,
        terminal: Option<(PtyMaster, OwnedFd)>,
        wait: Option<bwrap::Wait>,
    ) -> Result<Spawned, LaunchError> {
        let init = installed.path();
        let failed =
            |what: &str, e: &dyn std::fmt::Display| LaunchError::Failed(format!("{what}: {e}"));
        let (ours, theirs) = SandboxPipes::new().map_err(|e| failed("cannot create a pipe", &e))?;
        let secret_fds =
            secret_memfds(l.secret_files).map_err(|e| failed("cannot pass a secret file", &e))?;
        let secret_files: Vec<(&str, std::os::fd::RawFd)> = l
            .secret_files
            .iter()
            .zip(&secret_fds)
            .map(|(f, fd)| (f.path.as_str(), fd.as_raw_fd()))
            .collect();
        // Only a command with a terminal (or every one, as configured) gets
        // bwrap's /dev with a devpts of its own.
        let dev = match (self.ptys, &terminal) {
            (PtysMode::Terminal, None) => installed.dev().ok(),
            _ => None,
        };
        let (master, slave) = terminal.unzip();
        let slave_fd = slave.as_ref().map(AsRawFd::as_raw_fd);
        let layout = bwrap::Layout {
            secret_files: &secret_files,
            init,
            dev,
            workdir: l.workdir,
            network: l.network,
            tmpfs_bytes: tmpfs_bytes(&l.limits),
            ro_paths: &self.ro_paths,
            hide: &self.hide,
            env: &l.env,
            status_fd: theirs.status.as_raw_fd(),
            stderr_fd: slave_fd.unwrap_or(theirs.err.as_raw_fd()),
            tty_fd: slave_fd,
            json_fd: theirs.json.as_raw_fd(),
            argv: &l.argv,
            wait,
        };
        let line = bwrap::arguments(&layout, |p| bwrap::kind_for(p, &self.reader));
        let args = filled_memfd("rdev-bwrap-args", &bwrap::encode(&line.options))
            .map_err(|e| failed("cannot pass the sandbox arguments", &e))?;
        setup.keep = vec![
            args.as_raw_fd(),
            theirs.status.as_raw_fd(),
            theirs.err.as_raw_fd(),
            theirs.json.as_raw_fd(),
        ];
        setup.keep.extend(secret_fds.iter().map(AsRawFd::as_raw_fd));
        setup.keep.extend(slave_fd);
        match wait {
            Some(bwrap::Wait::Once { go, command }) => setup.keep.extend([go, command]),
            Some(bwrap::Wait::Serve { socket }) => setup.keep.push(socket),
            None => {}
        }
        // bubblewrap is started by the init binary's launcher, which sets
        // up its process (cgroup, limits, user) and executes it: the worker
        // is never forked (process.rs, `Launcher`).
        let mut launcher = setup
            .launcher(installed.launcher(), &self.bwrap, None)
            .map_err(|e| failed("cannot prepare the sandbox's start", &e))?;
        launcher
            .cmd
            .arg("--args")
            .arg(args.as_raw_fd().to_string())
            .args(&line.command)
            .env_clear()
            .current_dir("/")
            .stdin(stdin_of(l.stdin && master.is_none()))
            .stdout(Stdio::from(theirs.out))
            .stderr(Stdio::from(theirs.diag))
            .kill_on_drop(true);
        let child = launcher.spawn().map_err(|e| {
            let launcher = installed.launcher().display();
            LaunchError::Unavailable(format!("cannot run {launcher}: {e}"))
        })?;
        // The child has its copies; ours must close so the readers see EOF.
        drop((
            args,
            theirs.status,
            theirs.err,
            theirs.json,
            slave,
            secret_fds,
        ));
        let program = l.argv.first().cloned().unwrap_or_default();
        Ok(bwrap_spawned(ours, child, master, program))
    }

    /// The start-up probes' command: `true` in `dir`, no network, the
    /// default limits.
    fn probe_launch<'a>(&self, dir: &'a Path) -> Launch<'a> {
        Launch {
            name: format!("probe-{:08x}", rand::random::<u32>()),
            argv: vec![OsString::from("true")],
            env: BTreeMap::from([("PATH".to_owned(), PATH.to_owned())]),
            secret_files: &[],
            workdir: dir,
            network: NetworkMode::None,
            limits: ResourceLimits::default().effective(&self.limits),
            stdin: false,
            tty: None,
        }
    }

    /// Runs `true` through the whole sandbox once.
    async fn probe(&self, workspace_root: &Path) -> Result<(), String> {
        std::fs::create_dir_all(workspace_root).map_err(|e| {
            format!(
                "cannot create the workspace root {}: {e}",
                workspace_root.display()
            )
        })?;
        let dir = workspace_root.join(format!(".rdev-probe-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let result = async {
            self.own_workdir(&dir)?;
            let mut spawned = self
                .spawn(self.probe_launch(&dir), None)
                .map_err(|e| match e {
                    LaunchError::Unavailable(m) | LaunchError::Failed(m) => m,
                })?;
            let status = tokio::time::timeout(PROBE_TIMEOUT, spawned.wait()).await;
            if status.is_err() {
                spawned.kill_rest();
            }
            match spawned.finish().await {
                Finished::Exited(0) => Ok(()),
                Finished::SandboxFailed(m) | Finished::ExecFailed(m) => {
                    Err(format!("the sandbox does not work here: {m}"))
                }
                other => Err(format!("the sandbox probe (`true`) ended with {other:?}")),
            }
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// A directory opened only to hold it (`O_PATH`: no permission needed).
fn open_dir(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY)
        .open(path)
        .ok()
}

/// An open file's device and inode.
fn identity(file: &std::fs::File) -> Option<(u64, u64)> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Discards, every quarter of the TTL, the warm sandboxes nobody took in
/// time; ends with the pool.
async fn sweep(pool: std::sync::Weak<WarmPool>) {
    let every = pool
        .upgrade()
        .map(|p| p.ttl() / 4)
        .unwrap_or_default()
        .max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(p) => p.expire(),
            None => return,
        }
    }
}

/// The running sandbox, read through the `read` ends of its pipes; a
/// terminal's master carries both output streams.
fn bwrap_spawned(
    read: SandboxPipes,
    mut child: tokio::process::Child,
    master: Option<PtyMaster>,
    program: OsString,
) -> Spawned {
    let init_pid = Arc::new(watch::Sender::new(0));
    let (stdout, stderr) = match &master {
        Some(m) => (Some(boxed(m.clone())), None),
        None => (receiver(read.out).map(boxed), receiver(read.err).map(boxed)),
    };
    Spawned {
        stdin: child.stdin.take(),
        stdout,
        stderr,
        target: Target::Init(init_pid.clone()),
        pty: master,
        report: receiver(read.status),
        reported: Vec::new(),
        diagnostics: receiver(read.diag).map(|r| tokio::spawn(read_capped(r))),
        json: receiver(read.json).map(|r| tokio::spawn(follow_json(r, init_pid))),
        child,
        cgroup: None,
        program,
        serving: None,
    }
}

/// A piped standard input, or none.
fn stdin_of(piped: bool) -> Stdio {
    if piped { Stdio::piped() } else { Stdio::null() }
}

/// Each secret file's contents in a memfd (never a file on disk), in the
/// order of `files`; bwrap copies each into the sandbox's private tmpfs.
fn secret_memfds(files: &[crate::secrets::SecretFile]) -> std::io::Result<Vec<std::fs::File>> {
    files
        .iter()
        .map(|f| filled_memfd("rdev-secret", f.value.expose().as_bytes()))
        .collect()
}

/// Size of each private tmpfs: the command's memory limit, if it has one.
fn tmpfs_bytes(limits: &ResourceLimits) -> u64 {
    limits
        .memory_bytes
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(DEFAULT_TMPFS_BYTES)
}

/// Who a sandbox's processes are on the host: the user commands run as
/// with only its primary group (the launcher drops the rest), or the
/// worker's own user and groups.
fn reader_of(run_as: Option<&RunAs>) -> bwrap::Reader {
    match run_as {
        Some(u) => bwrap::Reader {
            uid: u.uid.as_raw(),
            gids: vec![u.gid.as_raw()],
        },
        None => {
            let mut gids: Vec<u32> = nix::unistd::getgroups()
                .unwrap_or_default()
                .iter()
                .map(|g| g.as_raw())
                .collect();
            gids.push(nix::unistd::getegid().as_raw());
            bwrap::Reader {
                uid: nix::unistd::geteuid().as_raw(),
                gids,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pipes::child_pid;
    use nix::sys::signal::Signal;

    use super::spawned::classify;
    use super::*;

    #[test]
    fn bwrap_json_names_the_init() {
        assert_eq!(
            child_pid("{ \"child-pid\": 8693, \"mnt-namespace\": 4026532177 }\n"),
            Some(8693)
        );
        assert_eq!(child_pid("{}"), None);
    }

    #[test]
    fn failures_name_the_limit_they_hit() {
        let none = cgroup::Events::default();
        let oom = cgroup::Events {
            oom_kills: 1,
            pids_max: 0,
        };
        assert_eq!(classify(Some(0), None, oom), Finished::Exited(0));
        assert_eq!(classify(Some(2), None, none), Finished::Exited(2));
        assert_eq!(classify(None, Some(9), none), Finished::Signaled(9));
        assert_eq!(
            classify(None, Some(9), oom),
            Finished::Limit {
                limit: Limit::Memory,
                exit_code: None,
                signal: Some(9)
            }
        );
        assert!(matches!(
            classify(None, Some(Signal::SIGXCPU as i32), none),
            Finished::Limit {
                limit: Limit::Cpu,
                ..
            }
        ));
        assert!(matches!(
            classify(
                Some(1),
                None,
                cgroup::Events {
                    oom_kills: 0,
                    pids_max: 3
                }
            ),
            Finished::Limit {
                limit: Limit::Pids,
                exit_code: Some(1),
                ..
            }
        ));
    }

    /// A command may end before the task reading bwrap's status has named
    /// the sandbox's init (a new sandbox's first command, on a loaded
    /// machine: seen in the tests at eight threads). Its sandbox still goes
    /// back to the pool once the init is named; it used to be discarded,
    /// and when that was the start-up probe's, the worker ran without
    /// reuse after waiting 30 s for it.
    #[tokio::test]
    async fn a_sandbox_whose_init_is_named_late_still_returns_to_its_pool() {
        let root = crate::test_dir::TempDir::new();
        let ws = root.0.join("ws");
        let worker = format!("test-{:08x}", rand::random::<u32>());
        let sandbox = Sandbox::start(
            &SandboxConfig::default(),
            LimitsConfig::default(),
            &worker,
            &ws,
        )
        .await;
        assert!(
            sandbox.reuse.is_ok(),
            "reuse must work here: {:?}",
            sandbox.status()
        );
        let dir = ws.join("late");
        std::fs::create_dir_all(&dir).expect("workdir");
        sandbox.own_workdir(&dir).expect("owned");
        let launch = sandbox.probe_launch(&dir);
        let key = sandbox
            .warm_key(&launch)
            .filter(|k| sandbox.serves(k))
            .expect("a served command");
        let made = sandbox.make_warm(&key).expect("a sandbox");
        let spawned::Target::Init(pid) = &made.spawned.target else {
            panic!("a sandbox has an init");
        };
        let pid = pid.clone();
        let named = *pid
            .subscribe()
            .wait_for(|p| *p > 0)
            .await
            .expect("bwrap names the init");
        // As if the task reading bwrap's status had not run yet.
        pid.send_replace(0);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            pid.send_replace(named);
        });

        let mut spawned = made
            .start(&launch.argv, &launch.env, Arc::downgrade(&sandbox.warm))
            .expect("handed over");
        spawned.wait().await;
        assert_eq!(spawned.finish().await, Finished::Exited(0));
        late.await.expect("named");
        let back = sandbox.returned(&key).await.expect("back in the pool");
        warm::discard(back.spawned);
    }
}

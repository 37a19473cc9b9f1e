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
pub mod init;
pub mod process;
pub mod pty;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Gid, Pid, Uid, User, pipe2};
use rdev_shared::containment::{Limit, LimitsConfig, NetworkMode, ResourceLimits};
use rdev_shared::interactive::{InputSignal, TtySize};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::cgroup::{Cgroups, CommandCgroup};
use self::init::{InstalledInit, Report};
use self::process::{ChildSetup, RunAs};
use self::pty::PtyMaster;

/// Paths hidden in every sandbox by default (they exist under the
/// read-only `/etc`; a missing one is skipped).
pub const DEFAULT_HIDDEN: &str = "/etc/shadow,/etc/shadow-,/etc/gshadow,/etc/gshadow-,\
/etc/sudoers,/etc/sudoers.d,/etc/ssh,/etc/ssl/private,/etc/rdev,/etc/kubernetes,\
/etc/docker,/etc/containerd,/etc/rabbitmq,/etc/postgresql";

/// `PATH` of every command: the system directories, nothing from the worker.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    /// Paths hidden in every sandbox (comma-separated).
    #[arg(long = "sandbox-hide", env = "RDEV_SANDBOX_HIDE", default_value = DEFAULT_HIDDEN)]
    pub hide: PathList,
    /// `auto`: a cgroup per command (memory and process limits for the whole
    /// tree) when the worker may manage cgroups; `off`: rlimits only.
    #[arg(long = "cgroups", env = "RDEV_CGROUPS", default_value = "auto")]
    pub cgroups: CgroupMode,
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

/// How local commands are isolated on this worker.
#[derive(Debug)]
enum Isolation {
    Bwrap(InstalledInit),
    Off,
    Unavailable(String),
}

/// The local sandbox of one worker: probed at start, then used for every
/// local command.
#[derive(Debug)]
pub struct Sandbox {
    isolation: Isolation,
    bwrap: PathBuf,
    run_as: Option<RunAs>,
    cgroups: Option<Cgroups>,
    cgroups_off_reason: Option<String>,
    limits: LimitsConfig,
    ro_paths: Vec<PathBuf>,
    hide: Vec<PathBuf>,
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
        let mut sandbox = Self {
            isolation: Isolation::Off,
            bwrap: cfg.bwrap.clone(),
            run_as,
            cgroups,
            cgroups_off_reason,
            limits,
            ro_paths: cfg.ro_paths.0.clone(),
            hide: cfg.hide.0.clone(),
        };
        if cfg.mode == SandboxMode::On {
            sandbox.isolation =
                match init::locate(cfg.init.as_deref()).and_then(|p| InstalledInit::install(&p)) {
                    Ok(installed) => Isolation::Bwrap(installed),
                    Err(e) => Isolation::Unavailable(e),
                };
            if matches!(sandbox.isolation, Isolation::Bwrap(_))
                && let Err(e) = sandbox.probe(workspace_root).await
            {
                sandbox.isolation = Isolation::Unavailable(e);
            }
        }
        sandbox
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
        }
    }

    /// What is in force, for `/ready` and logs.
    pub fn status(&self) -> SandboxStatus {
        let (mode, error) = match &self.isolation {
            Isolation::Bwrap(_) => ("bwrap", None),
            Isolation::Off => (
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
        SandboxStatus {
            mode,
            error,
            user,
            limits,
        }
    }

    /// The server's limit defaults and ceilings.
    pub fn limits_config(&self) -> &LimitsConfig {
        &self.limits
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

    /// Gives a freshly prepared workdir to the user commands run as.
    pub fn own_workdir(&self, workdir: &Path) -> Result<(), String> {
        if let Some(u) = &self.run_as {
            nix::unistd::chown(workdir, Some(u.uid), Some(u.gid))
                .map_err(|e| format!("cannot give the workdir to {}: {e}", u.name))?;
        }
        Ok(())
    }

    /// Starts a command.
    pub fn spawn(&self, l: Launch<'_>) -> Result<Spawned, LaunchError> {
        let init = match &self.isolation {
            Isolation::Unavailable(e) => return Err(LaunchError::Unavailable(e.clone())),
            Isolation::Bwrap(init) => Some(init.path()),
            Isolation::Off => None,
        };
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
            Some(init) => self.spawn_bwrap(&l, init, setup, terminal),
            None => spawn_plain(&l, setup, terminal),
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
        init: &Path,
        mut setup: ChildSetup,
        terminal: Option<(PtyMaster, OwnedFd)>,
    ) -> Result<Spawned, LaunchError> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| LaunchError::Failed(format!("{what}: {e}"));
        let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| failed("cannot create a pipe", &e));
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let (json_r, json_w) = pipe()?;
        let (diag_r, diag_w) = pipe()?;
        let tmpfs_bytes = l
            .limits
            .memory_bytes
            .and_then(|b| u64::try_from(b).ok())
            .unwrap_or(DEFAULT_TMPFS_BYTES);
        let (master, slave) = terminal.unzip();
        let slave_fd = slave.as_ref().map(AsRawFd::as_raw_fd);
        let layout = bwrap::Layout {
            init,
            workdir: l.workdir,
            network: l.network,
            tmpfs_bytes,
            ro_paths: &self.ro_paths,
            hide: &self.hide,
            env: &l.env,
            status_fd: status_w.as_raw_fd(),
            stderr_fd: slave_fd.unwrap_or(err_w.as_raw_fd()),
            tty_fd: slave_fd,
            json_fd: json_w.as_raw_fd(),
            argv: &l.argv,
        };
        let line = bwrap::arguments(&layout, bwrap::kind_of);
        let args = bwrap::encode(&line.options);
        let mut memfd = memfd("rdev-bwrap-args")
            .map_err(|e| failed("cannot pass the sandbox arguments", &e))?;
        memfd
            .write_all(&args)
            .and_then(|()| memfd.rewind())
            .map_err(|e| failed("cannot pass the sandbox arguments", &e))?;
        setup.keep = vec![
            memfd.as_raw_fd(),
            status_w.as_raw_fd(),
            err_w.as_raw_fd(),
            json_w.as_raw_fd(),
        ];
        setup.keep.extend(slave_fd);
        let mut cmd = Command::new(&self.bwrap);
        cmd.arg("--args")
            .arg(memfd.as_raw_fd().to_string())
            .args(&line.command)
            .env_clear()
            .current_dir("/")
            .stdin(if l.stdin && master.is_none() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(diag_w))
            .kill_on_drop(true);
        setup.install(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            LaunchError::Unavailable(format!("cannot run {}: {e}", self.bwrap.display()))
        })?;
        // The child has its copies; ours must close so the readers see EOF.
        drop((memfd, status_w, err_w, json_w, slave));
        let init_pid = Arc::new(watch::Sender::new(0));
        let (stdout, stderr) = match &master {
            Some(m) => (Some(boxed(m.clone())), None),
            None => (receiver(out_r).map(boxed), receiver(err_r).map(boxed)),
        };
        Ok(Spawned {
            stdin: child.stdin.take(),
            stdout,
            stderr,
            target: Target::Init(init_pid.clone()),
            pty: master,
            report: receiver(status_r),
            diagnostics: receiver(diag_r).map(|r| tokio::spawn(read_capped(r))),
            json: receiver(json_r).map(|r| tokio::spawn(follow_json(r, init_pid))),
            child,
            cgroup: None,
            program: l.argv.first().cloned().unwrap_or_default(),
        })
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
            let launch = Launch {
                name: format!("probe-{:08x}", rand::random::<u32>()),
                argv: vec![OsString::from("true")],
                env: BTreeMap::from([("PATH".to_owned(), PATH.to_owned())]),
                workdir: &dir,
                network: NetworkMode::None,
                limits: ResourceLimits::default().effective(&self.limits),
                stdin: false,
                tty: None,
            };
            let mut spawned = self.spawn(launch).map_err(|e| match e {
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

/// Starts a command without bubblewrap (`RDEV_LOCAL_SANDBOX=off`): its own
/// process group, limits and user still apply.
fn spawn_plain(
    l: &Launch<'_>,
    mut setup: ChildSetup,
    terminal: Option<(PtyMaster, OwnedFd)>,
) -> Result<Spawned, LaunchError> {
    let Some((program, args)) = l.argv.split_first() else {
        return Err(LaunchError::Failed("empty argv".into()));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&l.env)
        .current_dir(l.workdir)
        .kill_on_drop(true);
    let master = match terminal {
        Some((master, slave)) => {
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|e| LaunchError::Failed(format!("cannot pass the terminal: {e}")))
            };
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            // Its own session, the terminal as its controlling terminal.
            setup.terminal_session = true;
            Some(master)
        }
        None => {
            cmd.process_group(0)
                .stdin(if l.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    setup.install(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| LaunchError::Failed(format!("cannot start the command: {e}")))?;
    let Some(pgid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return Err(LaunchError::Failed(
            "the command exited before it was tracked".into(),
        ));
    };
    // Our copies of the terminal's slave close with the command.
    drop(cmd);
    let (stdout, stderr) = match &master {
        Some(m) => (Some(boxed(m.clone())), None),
        None => (
            child.stdout.take().map(boxed),
            child.stderr.take().map(boxed),
        ),
    };
    Ok(Spawned {
        stdin: child.stdin.take(),
        stdout,
        stderr,
        target: Target::Group(Pid::from_raw(pgid)),
        pty: master,
        report: None,
        diagnostics: None,
        json: None,
        child,
        cgroup: None,
        program: program.clone(),
    })
}

/// One of a command's output pipes.
pub type Output = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

fn boxed<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: R) -> Output {
    Box::new(r)
}

/// Who to signal to stop a command's whole tree.
#[derive(Clone, Debug)]
enum Target {
    /// The sandbox's init (host pid, 0 until bwrap reported it).
    Init(Arc<watch::Sender<i32>>),
    /// The command's process group (no sandbox).
    Group(Pid),
}

/// A started command.
pub struct Spawned {
    child: Child,
    /// Its standard input, when piped.
    pub stdin: Option<ChildStdin>,
    /// Its standard output.
    pub stdout: Option<Output>,
    /// Its standard error.
    pub stderr: Option<Output>,
    target: Target,
    pty: Option<PtyMaster>,
    report: Option<pipe::Receiver>,
    diagnostics: Option<JoinHandle<String>>,
    json: Option<JoinHandle<()>>,
    cgroup: Option<CommandCgroup>,
    program: OsString,
}

impl std::fmt::Debug for Spawned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawned")
            .field("child", &self.child)
            .field("target", &self.target)
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

/// What a client may do to a running command besides writing its input:
/// signal it, resize its terminal. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Controls {
    target: Target,
    pty: Option<PtyMaster>,
}

impl Controls {
    /// Sends a client's signal: with a terminal to its foreground process
    /// group (like a key press would), else through the sandbox's init to
    /// the command's process group (`TERM`: to every process; `KILL`: the
    /// init's `SIGPWR` request, since it cannot catch SIGKILL itself).
    ///
    /// A signal sent while the sandbox is still being set up waits (up to
    /// [`INIT_WAIT`]) until bwrap names the init, so a `TERM` sent right
    /// after the command was accepted is not lost.
    pub async fn signal(&self, signal: InputSignal) {
        let Ok(sig) = Signal::try_from(signal.number()) else {
            return;
        };
        if let Some(pty) = &self.pty
            && let Ok(group) = pty.foreground_group()
            && group > 0
        {
            let _ = killpg(Pid::from_raw(group), sig);
            return;
        }
        match &self.target {
            Target::Init(pid) => {
                let via_init = if sig == Signal::SIGKILL {
                    Signal::SIGPWR
                } else {
                    sig
                };
                // Nothing is sent when bwrap never got that far, or the
                // sandbox ended.
                if let Ok(Some(pid)) =
                    tokio::time::timeout(INIT_WAIT, init_catching(pid, via_init)).await
                {
                    let _ = kill(Pid::from_raw(pid), via_init);
                }
            }
            Target::Group(pgid) => {
                let _ = killpg(*pgid, sig);
            }
        }
    }

    /// Sets the terminal's size; false without a terminal.
    pub fn resize(&self, size: TtySize) -> bool {
        self.pty.as_ref().is_some_and(|p| p.resize(size).is_ok())
    }

    /// The terminal to write input to, if the command has one.
    pub fn terminal(&self) -> Option<PtyMaster> {
        self.pty.clone()
    }
}

impl Spawned {
    /// The handle that signals the command and resizes its terminal.
    pub fn controls(&self) -> Controls {
        Controls {
            target: self.target.clone(),
            pty: self.pty.clone(),
        }
    }

    /// Waits for the command's main process (the sandbox) to end.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Stops the whole tree: SIGTERM to every process, SIGKILL to what is
    /// left after `grace`. Returns once the main process has ended.
    pub async fn terminate(&mut self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill_rest();
            let _ = self.child.wait().await;
        }
    }

    /// SIGKILLs every process of the command that is left (after its main
    /// process ended, or as the last step of a stop).
    pub fn kill_rest(&mut self) {
        match &self.target {
            Target::Init(pid) => {
                let pid = *pid.borrow();
                if pid > 0 && matches!(self.child.try_wait(), Ok(None)) {
                    // The init's death ends the PID namespace.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = self.child.start_kill();
            }
            Target::Group(pgid) => {
                let _ = killpg(*pgid, Signal::SIGKILL);
            }
        }
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }

    fn signal(&mut self, signal: Signal) {
        match &self.target {
            Target::Init(pid) => {
                let pid = *pid.borrow();
                if pid > 0 && matches!(self.child.try_wait(), Ok(None)) {
                    // The init forwards SIGTERM to every process of the sandbox.
                    let _ = kill(Pid::from_raw(pid), signal);
                } else {
                    // Still being set up: nothing of the command runs yet.
                    let _ = self.child.start_kill();
                }
            }
            Target::Group(pgid) => {
                let _ = killpg(*pgid, signal);
            }
        }
    }

    /// After the main process ended (see [`Spawned::wait`]): kills what is
    /// left, reads how it ended, removes the cgroup.
    pub async fn finish(mut self) -> Finished {
        let status = self.child.wait().await;
        self.kill_rest();
        let events = self
            .cgroup
            .as_ref()
            .map(CommandCgroup::events)
            .unwrap_or_default();
        let report = match self.report.take() {
            Some(r) => Some(init::parse_report(
                &tokio::time::timeout(REPORT_TIMEOUT, read_capped(r))
                    .await
                    .unwrap_or_default(),
            )),
            None => None,
        };
        let diagnostics = match self.diagnostics.take() {
            Some(task) => tokio::time::timeout(REPORT_TIMEOUT, task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        };
        if let Some(task) = self.json.take() {
            task.abort();
        }
        if let Some(cg) = self.cgroup.take() {
            // Its processes are dead or being killed; the kernel releases
            // the cgroup a moment later. Nobody waits for that.
            tokio::spawn(cg.remove());
        }
        let (code, signal) = match report {
            Some(Report::Exited(c)) => (Some(c), None),
            Some(Report::Signaled(s)) => (None, Some(s)),
            Some(Report::ExecFailed(errno)) => {
                return Finished::ExecFailed(format!(
                    "cannot start `{}`: {}",
                    self.program.to_string_lossy(),
                    Errno::from_raw(errno).desc()
                ));
            }
            Some(Report::Nothing) => {
                if events.oom_kills > 0 {
                    return Finished::Limit {
                        limit: Limit::Memory,
                        exit_code: None,
                        signal: Some(Signal::SIGKILL as i32),
                    };
                }
                let how = match &status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                let detail = diagnostics.trim();
                return Finished::SandboxFailed(if detail.is_empty() {
                    format!("the sandbox ended ({how}) before the command ran")
                } else {
                    format!("{detail} ({how})")
                });
            }
            None => match &status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    (s.code(), s.signal())
                }
                Err(e) => {
                    return Finished::SandboxFailed(format!("cannot wait for the command: {e}"));
                }
            },
        };
        classify(code, signal, events)
    }
}

/// Names the limit a failed command hit, if any.
fn classify(code: Option<i32>, signal: Option<i32>, events: cgroup::Events) -> Finished {
    if code == Some(0) {
        return Finished::Exited(0);
    }
    let limit = match signal {
        Some(s) if s == Signal::SIGXCPU as i32 => Some(Limit::Cpu),
        Some(s) if s == Signal::SIGXFSZ as i32 => Some(Limit::FileSize),
        _ if events.oom_kills > 0 => Some(Limit::Memory),
        _ if events.pids_max > 0 => Some(Limit::Pids),
        _ => None,
    };
    match (limit, code, signal) {
        (Some(limit), exit_code, signal) => Finished::Limit {
            limit,
            exit_code,
            signal,
        },
        (None, Some(c), _) => Finished::Exited(c),
        (None, None, Some(s)) => Finished::Signaled(s),
        (None, None, None) => Finished::Exited(-1),
    }
}

/// The user commands run as: `None` when the worker is not root (it runs
/// them as itself); never root.
fn resolve_run_as(configured: Option<&str>) -> Result<Option<RunAs>, String> {
    if !Uid::effective().is_root() {
        if let Some(u) = configured {
            tracing::warn!(
                user = u,
                "RDEV_SANDBOX_USER is ignored: the worker is not root and runs commands as itself"
            );
        }
        return Ok(None);
    }
    let by_name = |name: &str| -> Result<Option<RunAs>, String> {
        Ok(User::from_name(name)
            .map_err(|e| format!("cannot look up user `{name}`: {e}"))?
            .map(|u| RunAs {
                uid: u.uid,
                gid: u.gid,
                name: u.name,
            }))
    };
    let run_as = match configured.map(str::trim).filter(|s| !s.is_empty()) {
        Some(spec) if spec.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
            let (uid, gid) = spec.split_once(':').unwrap_or((spec, spec));
            let uid: u32 = uid
                .parse()
                .map_err(|_| format!("RDEV_SANDBOX_USER: bad uid in `{spec}`"))?;
            let gid: u32 = gid
                .parse()
                .map_err(|_| format!("RDEV_SANDBOX_USER: bad gid in `{spec}`"))?;
            RunAs {
                uid: Uid::from_raw(uid),
                gid: Gid::from_raw(gid),
                name: uid.to_string(),
            }
        }
        Some(name) => {
            by_name(name)?.ok_or_else(|| format!("RDEV_SANDBOX_USER: no user `{name}`"))?
        }
        None => match by_name("rdev-run")? {
            Some(u) => u,
            None => by_name("nobody")?
                .ok_or("neither `rdev-run` nor `nobody` exists; set RDEV_SANDBOX_USER")?,
        },
    };
    if run_as.uid.is_root() || run_as.gid.as_raw() == 0 {
        return Err(format!(
            "commands never run as root (RDEV_SANDBOX_USER resolves to {}:{})",
            run_as.uid, run_as.gid
        ));
    }
    Ok(Some(run_as))
}

fn memfd(name: &str) -> std::io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    Ok(std::fs::File::from(fd))
}

fn receiver(fd: OwnedFd) -> Option<pipe::Receiver> {
    match pipe::Receiver::from_owned_fd(fd) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a pipe");
            None
        }
    }
}

/// Reads up to [`DIAGNOSTICS_MAX`] bytes as text, draining the rest.
async fn read_capped(mut r: pipe::Receiver) -> String {
    let mut buf = Vec::new();
    let _ = (&mut r)
        .take(DIAGNOSTICS_MAX as u64)
        .read_to_end(&mut buf)
        .await;
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The init's host pid once it catches `signal`. The kernel drops a signal
/// sent to a PID namespace's init that has no handler for it, and bwrap names
/// the init as soon as it is forked, before it installed its handlers; so
/// this also waits (polling `SigCgt` in `/proc/PID/status`, a few ms at most)
/// for the handler. `None` when the init is gone.
async fn init_catching(pid: &watch::Sender<i32>, signal: Signal) -> Option<i32> {
    let mut known = pid.subscribe();
    let pid = *known.wait_for(|p| *p > 0).await.ok()?;
    let bit = 1_u64 << (signal as i32 - 1);
    loop {
        let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
            .await
            .ok()?;
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        if caught & bit != 0 {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads bwrap's JSON status until it names the sandbox's init (written as
/// soon as the init is forked; the pipe stays open until bwrap exits).
async fn follow_json(mut r: pipe::Receiver, pid: Arc<watch::Sender<i32>>) {
    let mut text = Vec::new();
    let mut buf = [0u8; 512];
    while text.len() < DIAGNOSTICS_MAX {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => text.extend_from_slice(&buf[..n]),
        }
        if let Some(n) = child_pid(&String::from_utf8_lossy(&text)) {
            pid.send_replace(n);
            break;
        }
    }
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
}

/// The `"child-pid": N` of bwrap's JSON status.
fn child_pid(text: &str) -> Option<i32> {
    let rest = &text[text.find("\"child-pid\"")? + "\"child-pid\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
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
}

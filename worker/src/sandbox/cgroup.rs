//! A cgroup per command: memory and process limits that hold for the whole
//! process tree, a count of the limits it hit, and a way to kill every
//! process it has.
//!
//! The worker uses the hierarchy it finds: **v2** (unified) or **v1** (the
//! `memory` and `pids` controllers' own hierarchies). It only creates
//! cgroups below its own:
//!
//! - v1: `<own memory cgroup>/rdev-<worker>/<command>`, and the same under
//!   `pids`. v1 allows processes in inner cgroups, so the worker stays where
//!   it is.
//! - v2: controllers can be enabled for children only in a cgroup without
//!   processes of its own, so when the worker is alone in its cgroup (a
//!   systemd unit with `Delegate=yes`, a container) it moves itself into a
//!   `rdev-worker` leaf, enables `+memory +pids`, and creates commands'
//!   cgroups beside that leaf. When other processes share its cgroup it
//!   leaves everything alone and reports cgroups as unavailable.
//!
//! When none of that is possible the sandbox falls back to rlimits (see
//! `super::process`), and says so in `/ready` and the start-up log.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{OFlag, open};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use rdev_shared::containment::ResourceLimits;

/// How long removing a command's cgroup waits for its last processes to be
/// reaped (the kernel refuses to remove a cgroup that still has some).
const REMOVE_WAIT: Duration = Duration::from_secs(2);

/// Where a worker may create command cgroups.
#[derive(Debug)]
pub struct Cgroups {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// One directory per controller hierarchy; `None` where a controller is
    /// not mounted or not writable.
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    /// The parent of command cgroups (controllers enabled for its children).
    V2 { parent: PathBuf },
}

/// Limit events counted in a command's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// Processes killed by the OOM killer at the memory limit.
    pub oom_kills: u64,
    /// Forks refused at the process limit.
    pub pids_max: u64,
}

impl Events {
    /// The events counted since `before` (a serving sandbox's cgroup holds
    /// every command it ran).
    pub fn since(self, before: Self) -> Self {
        Self {
            oom_kills: self.oom_kills.saturating_sub(before.oom_kills),
            pids_max: self.pids_max.saturating_sub(before.pids_max),
        }
    }
}

impl Cgroups {
    /// Finds cgroups this worker may manage, or says why there are none.
    pub fn detect(worker_id: &str) -> Result<Self, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let membership = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mounts = parse_mountinfo(&mountinfo);
        let name = format!("rdev-{}", sanitize(worker_id));
        let mut v1_errors = Vec::new();
        let mut v1 = |controller: &str| -> Option<PathBuf> {
            let base = own_dir(&mounts, &membership, Some(controller))?.join(&name);
            match usable(&base) {
                Ok(()) => Some(base),
                Err(e) => {
                    v1_errors.push(format!("v1 {controller}: {e}"));
                    None
                }
            }
        };
        let (memory, pids) = (v1("memory"), v1("pids"));
        if memory.is_some() || pids.is_some() {
            let found = Self {
                kind: Kind::V1 { memory, pids },
            };
            found.sweep_leftovers();
            return Ok(found);
        }
        let Some(dir) = own_dir(&mounts, &membership, None) else {
            v1_errors.push("no cgroup v2 hierarchy is mounted".into());
            return Err(v1_errors.join("; "));
        };
        let parent = delegate_v2(&dir).map_err(|e| {
            v1_errors.push(format!("v2: {e}"));
            v1_errors.join("; ")
        })?;
        let found = Self {
            kind: Kind::V2 { parent },
        };
        found.sweep_leftovers();
        Ok(found)
    }

    /// Kills what is left in command cgroups of an earlier process with this
    /// worker id (SIGKILLed, or crashed) and removes them. A sandbox started
    /// in the instant its worker was killed can miss `--die-with-parent`
    /// (bubblewrap sets it after its fork) and run on as an orphan; the
    /// chaos run found one. Called once at start, before any command runs,
    /// so every command cgroup under this worker's is a leftover. (With the
    /// default, per-process worker id there are none to find: a container
    /// or a systemd unit kills the whole tree of a dead worker anyway.)
    fn sweep_leftovers(&self) {
        for (dir, killed) in self.remove_command_cgroups(false) {
            tracing::warn!(cgroup = %dir.display(), killed, "removed a command cgroup left by an earlier process of this worker");
        }
    }

    /// Kills what is in the command cgroups under this worker's own and
    /// removes them; returns each with the number of processes killed.
    /// Those named by command id; with `any_name`, every directory there
    /// (v1's `rdev-<worker>` holds nothing else). Never one holding this
    /// worker (v2 keeps it in a leaf beside them).
    fn remove_command_cgroups(&self, any_name: bool) -> Vec<(PathBuf, usize)> {
        let bases: Vec<&PathBuf> = match &self.kind {
            Kind::V1 { memory, pids } => memory.iter().chain(pids.iter()).collect(),
            Kind::V2 { parent } => vec![parent],
        };
        let me = std::process::id() as i32;
        let mut removed = Vec::new();
        for base in bases {
            let Ok(entries) = fs::read_dir(base) else {
                continue;
            };
            let commands = entries.flatten().map(|e| e.path()).filter(|p| {
                p.is_dir()
                    && (any_name
                        || p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.parse::<uuid::Uuid>().is_ok()))
                    && !pids_in(p).contains(&me)
            });
            for dir in commands {
                let killed = kill_and_remove(&dir);
                removed.push((dir, killed));
            }
        }
        removed
    }

    /// What is in use, for logs and `/ready`: `cgroup v1 (memory, pids)`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::V1 { memory, pids } => {
                let c: Vec<&str> = [("memory", memory), ("pids", pids)]
                    .iter()
                    .filter(|(_, d)| d.is_some())
                    .map(|(n, _)| *n)
                    .collect();
                format!("cgroup v1 ({})", c.join(", "))
            }
            Kind::V2 { .. } => "cgroup v2 (memory, pids)".into(),
        }
    }

    /// Whether memory limits hold for the whole tree.
    pub fn limits_memory(&self) -> bool {
        !matches!(&self.kind, Kind::V1 { memory: None, .. })
    }

    /// Whether process-count limits hold for the whole tree.
    pub fn limits_pids(&self) -> bool {
        !matches!(&self.kind, Kind::V1 { pids: None, .. })
    }

    /// Creates the cgroup of one command with its limits, opened for
    /// joining.
    pub fn create(&self, name: &str, limits: &ResourceLimits) -> io::Result<CommandCgroup> {
        let mut cg = CommandCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            memory: None,
            pids: None,
            v2: false,
        };
        match &self.kind {
            Kind::V1 { memory, pids } => {
                if let Some(base) = memory {
                    let dir = make(base, name, &mut cg)?;
                    if let Some(bytes) = limits.memory_bytes {
                        write(&dir.join("memory.limit_in_bytes"), bytes)?;
                        // Swap counts too where the kernel accounts it.
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            write(&memsw, bytes)?;
                        }
                    }
                    cg.memory = Some(dir);
                }
                if let Some(base) = pids {
                    let dir = make(base, name, &mut cg)?;
                    if let Some(n) = limits.pids {
                        write(&dir.join("pids.max"), n)?;
                    }
                    cg.pids = Some(dir);
                }
            }
            Kind::V2 { parent } => {
                let dir = make(parent, name, &mut cg)?;
                if let Some(bytes) = limits.memory_bytes {
                    write(&dir.join("memory.max"), bytes)?;
                    write(&dir.join("memory.swap.max"), 0).or_else(ignore_missing)?;
                }
                if let Some(n) = limits.pids {
                    write(&dir.join("pids.max"), n)?;
                }
                cg.memory = Some(dir.clone());
                cg.pids = Some(dir);
                cg.v2 = true;
            }
        }
        Ok(cg)
    }
}

impl Drop for Cgroups {
    /// Removes the command cgroups still there, then this worker's own
    /// directories (v1). A command's cgroup is removed by a task after its
    /// end; a runtime that stops (the worker's, a test's) drops such tasks
    /// before they run, and without this their directories would stay.
    fn drop(&mut self) {
        let any_name = matches!(self.kind, Kind::V1 { .. });
        for (dir, killed) in self.remove_command_cgroups(any_name) {
            tracing::debug!(cgroup = %dir.display(), killed, "removed a command cgroup at stop");
        }
        if let Kind::V1 { memory, pids } = &self.kind {
            for dir in [memory, pids].into_iter().flatten() {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

/// The cgroup(s) of one running command; removed by [`CommandCgroup::remove`].
#[derive(Debug)]
pub struct CommandCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory, open for writing (a process joins
    /// by writing `0`).
    procs: Vec<OwnedFd>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    v2: bool,
}

impl CommandCgroup {
    /// Descriptors a child writes `0` to in order to join (before exec).
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The limit events so far.
    pub fn events(&self) -> Events {
        let mut ev = Events::default();
        if let Some(dir) = &self.memory {
            let (file, key) = if self.v2 {
                ("memory.events", "oom_kill")
            } else {
                ("memory.oom_control", "oom_kill")
            };
            ev.oom_kills = read_key(&dir.join(file), key).unwrap_or(0);
        }
        if let Some(dir) = &self.pids {
            ev.pids_max = read_key(&dir.join("pids.events"), "max").unwrap_or(0);
        }
        ev
    }

    /// SIGKILLs every process in the cgroup (the backstop of whole-tree
    /// kills: it also finds processes that left the command's session or,
    /// without a PID namespace, its process group).
    pub fn kill_all(&self) {
        if self.v2
            && let Some(dir) = &self.memory
            && fs::write(dir.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for dir in &self.dirs {
            for pid in pids_in(dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// [`CommandCgroup::remove`] without a runtime: the thread sleeps
    /// while it waits (the worker is stopping).
    pub fn remove_now(self) {
        for dir in &self.dirs {
            kill_and_remove(dir);
        }
    }

    /// Kills what is left and removes the cgroup directories, retrying
    /// (1 ms, doubling) while the kernel finishes reaping its processes.
    pub async fn remove(self) {
        self.kill_all();
        for dir in &self.dirs {
            let deadline = tokio::time::Instant::now() + REMOVE_WAIT;
            let mut pause = Duration::from_millis(1);
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a command's cgroup");
                        break;
                    }
                    Err(_) => {
                        for pid in pids_in(dir) {
                            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(100));
                    }
                }
            }
        }
    }
}

/// SIGKILLs what is in `dir` and removes it, waiting up to a second (this
/// thread sleeps) for the kernel to let it go; returns how many processes
/// were killed.
fn kill_and_remove(dir: &Path) -> usize {
    let mut killed = 0;
    for _ in 0..50 {
        let _ = fs::write(dir.join("cgroup.kill"), "1");
        for pid in pids_in(dir) {
            killed += 1;
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// One line of `/proc/self/mountinfo` that mounts a cgroup hierarchy.
#[derive(Debug, PartialEq, Eq)]
struct CgroupMount {
    /// Path of the hierarchy's root seen at the mount point.
    root: String,
    mount_point: PathBuf,
    /// v1: the controllers in its super options; v2: empty.
    controllers: Vec<String>,
    v2: bool,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let super_opts = right.next().unwrap_or("");
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(CgroupMount {
                root: unescape(fields.get(3)?),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                controllers: if v2 {
                    Vec::new()
                } else {
                    super_opts.split(',').map(str::to_owned).collect()
                },
                v2,
            })
        })
        .collect()
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&code, 8) {
                out.push(char::from(b));
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// The directory of this process's cgroup in the hierarchy of `controller`
/// (v1), or in the unified hierarchy (`None`).
fn own_dir(mounts: &[CgroupMount], membership: &str, controller: Option<&str>) -> Option<PathBuf> {
    let mount = mounts.iter().find(|m| match controller {
        Some(c) => !m.v2 && m.controllers.iter().any(|x| x == c),
        None => m.v2,
    })?;
    let path = membership.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            Some(c) => list.split(',').any(|x| x == c),
            None => list.is_empty(),
        };
        matches.then_some(path)
    })?;
    let relative = path
        .strip_prefix(mount.root.as_str())
        .unwrap_or(path)
        .trim_start_matches('/');
    Some(mount.mount_point.join(relative))
}

/// Creates `dir` (if needed) and checks a child can be made and removed in it.
fn usable(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!("probe-{:08x}", rand::random::<u32>()));
    fs::create_dir(&probe).map_err(|e| format!("cannot create {}: {e}", probe.display()))?;
    let _ = fs::remove_dir(&probe);
    Ok(())
}

/// Prepares a v2 cgroup for delegation (see the module docs) and returns
/// the parent of command cgroups.
fn delegate_v2(dir: &Path) -> Result<PathBuf, String> {
    let available = fs::read_to_string(dir.join("cgroup.controllers"))
        .map_err(|e| format!("cannot read {}/cgroup.controllers: {e}", dir.display()))?;
    for c in ["memory", "pids"] {
        if !available.split_whitespace().any(|x| x == c) {
            return Err(format!(
                "the `{c}` controller is not available in {}",
                dir.display()
            ));
        }
    }
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let on = |c: &str| enabled.split_whitespace().any(|x| x == c);
    if !(on("memory") && on("pids")) {
        let me = std::process::id().to_string();
        let members: Vec<String> = fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if members.iter().any(|p| *p != me) {
            return Err(format!(
                "{} has other processes besides the worker; give the worker a cgroup of its own \
                 (systemd: Delegate=yes)",
                dir.display()
            ));
        }
        if !members.is_empty() {
            let leaf = dir.join("rdev-worker");
            fs::create_dir_all(&leaf)
                .map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
            fs::write(leaf.join("cgroup.procs"), &me)
                .map_err(|e| format!("cannot move the worker into {}: {e}", leaf.display()))?;
        }
        fs::write(dir.join("cgroup.subtree_control"), "+memory +pids").map_err(|e| {
            format!(
                "cannot enable memory and pids for {}'s children: {e}",
                dir.display()
            )
        })?;
    }
    usable(dir)?;
    Ok(dir.to_path_buf())
}

fn make(base: &Path, name: &str, cg: &mut CommandCgroup) -> io::Result<PathBuf> {
    let dir = base.join(name);
    fs::create_dir_all(&dir)?;
    cg.dirs.push(dir.clone());
    let fd = open(
        &dir.join("cgroup.procs"),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    cg.procs.push(fd);
    Ok(dir)
}

fn write(path: &Path, value: i64) -> io::Result<()> {
    fs::write(path, value.to_string())
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// The number after `key` in a `key value` per line file.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Keeps a worker id usable as one path component.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests;

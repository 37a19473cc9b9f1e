//! Warm sandboxes: a sandbox made ready before its command arrives, so a
//! command's start does not wait for bubblewrap to build namespaces and
//! mounts, or for the kernel to move a process into a fresh cgroup (which,
//! on a host without `favordynmods`, waits for an RCU grace period:
//! 10–16 ms after a quiet moment; docs/operations/deployment.md).
//!
//! With `rdev-sandbox-init` a warm sandbox runs exactly one command, like
//! a cold one: its init (`--wait`) blocks until the worker writes the
//! command into a memfd and one byte into a pipe. With the small init the
//! worker carries, a sandbox *serves* its key's commands one after another
//! (`--serve`, [`Handoff::Serve`]): each comes over a socket with streams
//! of its own; after each, the init kills and reaps every process the
//! command left, the worker empties the sandbox's `/tmp` and `/dev/shm`,
//! and the sandbox goes back to the pool (`Spawned::finish`). What a
//! sandbox was made for ([`WarmKey`]: workdir, network mode, limits,
//! whether standard input is a pipe) must equal the command's, or the
//! command starts in another. Commands with secret files or a terminal
//! always start alone, in a sandbox of their own.
//!
//! The pool is bounded (`RDEV_SANDBOX_WARM` sandboxes, ready or being
//! made or cleaned; at most one made ahead per key), and a sandbox made
//! more than `RDEV_SANDBOX_WARM_TTL` ago is discarded rather than used, so
//! what a sandbox was built from (the hidden paths present under `/etc`,
//! say) is never older than that when a command starts in it.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use rdev_shared::containment::{NetworkMode, ResourceLimits};

use super::cgroup::{CommandCgroup, Events};
use super::pipes::{filled_memfd, receiver};
use super::spawned::{Spawned, boxed};

/// What a warm sandbox was made for: a command takes it only when every
/// part equals the command's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmKey {
    pub(super) workdir: PathBuf,
    /// The workdir's device and inode: a workdir removed and made again
    /// (a project deleted and created anew) is another directory, and a
    /// sandbox made before holds a bind mount of the old one (which it
    /// holds open, so the number is not reused while it waits).
    pub(super) identity: (u64, u64),
    pub(super) network: NetworkMode,
    pub(super) limits: ResourceLimits,
    pub(super) stdin: bool,
}

/// A started sandbox whose init waits for its command.
pub(super) struct Warm {
    pub(super) key: WarmKey,
    pub(super) spawned: Spawned,
    pub(super) handoff: Handoff,
    /// The workdir the sandbox bound, held open: while it is, its inode
    /// number cannot be given to a directory made again at the same path,
    /// so [`WarmKey::identity`] names only the directory bound.
    pub(super) workdir: std::fs::File,
    pub(super) made: Instant,
}

/// How the worker hands a warm sandbox's init its command.
pub(super) enum Handoff {
    /// `--wait`: one command, written into the memfd, then one byte into
    /// the go pipe (the init holds the read end and a copy of the memfd).
    Once { go: OwnedFd, command: std::fs::File },
    /// `--serve`: each command as one message on this socket (the init
    /// holds the other end), and the sandbox returns to the pool after it.
    Serve { socket: OwnedFd },
}

/// What a command in a serving sandbox carries for its sandbox's return
/// to the pool ([`Spawned::finish`]).
pub(super) struct Serving {
    pub(super) key: WarmKey,
    pub(super) socket: OwnedFd,
    pub(super) workdir: std::fs::File,
    pub(super) made: Instant,
    pub(super) pool: Weak<WarmPool>,
    /// The cgroup's limit events before this command: its own are the
    /// difference.
    pub(super) before: Events,
}

impl Warm {
    /// Hands `argv` and `env` to the waiting init; from here the sandbox is
    /// that command's (with [`Handoff::Serve`], until it ended). On failure
    /// the sandbox is discarded and the caller starts the command in
    /// another.
    pub(super) fn start(
        self,
        argv: &[OsString],
        env: &BTreeMap<String, String>,
        pool: Weak<WarmPool>,
    ) -> std::io::Result<Spawned> {
        let Self {
            key,
            mut spawned,
            handoff,
            workdir,
            made,
        } = self;
        let handed = message(argv, env)
            .ok_or_else(|| std::io::Error::other("a NUL byte in the command or its environment"));
        let handed =
            match handoff {
                Handoff::Once { go, command } => handed
                    .and_then(|m| command.write_all_at(&m, 0))
                    .and_then(|()| {
                        // A dead init (its sandbox failed) makes this EPIPE.
                        nix::unistd::write(&go, b"g")
                            .map(drop)
                            .map_err(std::io::Error::from)
                    }),
                Handoff::Serve { socket } => handed
                    .and_then(|m| serve(&socket, &m, &mut spawned))
                    .map(|()| {
                        let before = spawned
                            .cgroup
                            .as_ref()
                            .map(CommandCgroup::events)
                            .unwrap_or_default();
                        spawned.serving = Some(Serving {
                            key,
                            socket,
                            workdir,
                            made,
                            pool,
                            before,
                        });
                    }),
            };
        match handed {
            Ok(()) => {
                spawned.program = argv.first().cloned().unwrap_or_default();
                Ok(spawned)
            }
            Err(e) => {
                discard(spawned);
                Err(e)
            }
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.spawned.child.try_wait(), Ok(None))
    }
}

/// Sends a serving init one command: its message in a memfd, a new status
/// pipe, `/dev/null` as its standard input, new output and error pipes.
/// `spawned` gets the worker's ends; what it held of the command before
/// (the init's first report, the first sandbox-wide pipes) goes.
fn serve(socket: &OwnedFd, message: &[u8], spawned: &mut Spawned) -> std::io::Result<()> {
    let memfd = filled_memfd("rdev-command", message)?;
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from);
    let (status_r, status_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let stdin = OwnedFd::from(std::fs::File::open("/dev/null")?);
    let fds = [
        memfd.as_raw_fd(),
        status_w.as_raw_fd(),
        stdin.as_raw_fd(),
        out_w.as_raw_fd(),
        err_w.as_raw_fd(),
    ];
    // A dead init (its sandbox ended) makes this EPIPE or ECONNREFUSED.
    sendmsg::<()>(
        socket.as_fd().as_raw_fd(),
        &[IoSlice::new(b"g")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    // The init has its copies now; ours would keep the pipes open.
    drop((memfd, status_w, stdin, out_w, err_w));
    spawned.report = receiver(status_r);
    spawned.reported.clear();
    spawned.stdin = None;
    spawned.stdout = receiver(out_r).map(boxed);
    spawned.stderr = receiver(err_r).map(boxed);
    Ok(())
}

/// Empties a serving sandbox's private `/tmp` and `/dev/shm` after its
/// command (whose processes are all gone: the init reported only after
/// killing and reaping them), through its init's `/proc/PID/root`.
///
/// The init is pinned first: `/proc/PID` is opened and its `stat` must
/// name `bwrap_pid` (the worker's child, not reaped, so its pid cannot
/// be reused) as the parent; a descriptor of that directory keeps naming
/// that process, so a pid reused meanwhile cannot point this at the
/// host's `/tmp`. Below each directory, `remove_dir_all` follows no
/// symbolic link.
pub(super) fn empty_private_dirs(init_pid: i32, bwrap_pid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let proc = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY)
        .open(format!("/proc/{init_pid}"))?;
    let via = |rel: &str| format!("/proc/self/fd/{}/{rel}", proc.as_raw_fd());
    let stat = std::fs::read_to_string(via("stat"))?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    if ppid != Some(bwrap_pid) {
        return Err(std::io::Error::other(format!(
            "process {init_pid} is no longer the sandbox's init"
        )));
    }
    for dir in ["root/tmp", "root/dev/shm"] {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
            .open(via(dir))?;
        let base = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        for entry in std::fs::read_dir(&base)? {
            let entry = entry?;
            let path = base.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Kills a sandbox nobody will use and removes its cgroup.
pub(super) fn discard(mut spawned: Spawned) {
    spawned.kill_rest();
    if let Some(cg) = spawned.cgroup.take() {
        // Outside a runtime (the worker is exiting), the next start's sweep
        // of leftover cgroups removes it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(cg.remove());
        }
    }
}

/// The command as the init reads it: NUL-terminated fields, the argument
/// count, the arguments, then `NAME=value` for each variable. `None` when
/// any of them holds a NUL byte (it could not be told apart).
pub(super) fn message(argv: &[OsString], env: &BTreeMap<String, String>) -> Option<Vec<u8>> {
    let vars = env.iter().map(|(k, v)| format!("{k}={v}"));
    let fields: Vec<Vec<u8>> = std::iter::once(argv.len().to_string().into_bytes())
        .chain(argv.iter().map(|a| a.as_bytes().to_vec()))
        .chain(vars.map(String::into_bytes))
        .collect();
    if fields.iter().any(|f| f.contains(&0)) {
        return None;
    }
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
    for f in fields {
        out.extend_from_slice(&f);
        out.push(0);
    }
    Some(out)
}

/// The warm sandboxes of one worker.
pub(super) struct WarmPool {
    capacity: usize,
    ttl: Duration,
    state: Mutex<State>,
    /// `cache_hits_total` / `cache_misses_total{cache="warm_sandbox"}`,
    /// once the worker's metrics exist.
    counters: OnceLock<(prometheus::IntCounter, prometheus::IntCounter)>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Warm>,
    /// Keys a sandbox is being made for.
    making: Vec<WarmKey>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl WarmPool {
    pub(super) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            state: Mutex::new(State::default()),
            counters: OnceLock::new(),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(super) fn set_counters(
        &self,
        hits: prometheus::IntCounter,
        misses: prometheus::IntCounter,
    ) {
        let _ = self.counters.set((hits, misses));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live warm sandbox made for `key`, if there is one (counted as a
    /// hit or a miss).
    pub(super) fn take(&self, key: &WarmKey) -> Option<Warm> {
        let found = self.take_quietly(key);
        if let Some((hits, misses)) = self.counters.get() {
            if found.is_some() { hits } else { misses }.inc();
        }
        found
    }

    /// [`WarmPool::take`] without counting (the start-up probe's).
    pub(super) fn take_quietly(&self, key: &WarmKey) -> Option<Warm> {
        let (found, stale) = {
            let mut state = self.state();
            let stale = expired(&mut state.ready, self.ttl);
            let found = state
                .ready
                .iter()
                .position(|w| &w.key == key)
                .and_then(|i| state.ready.remove(i));
            (found, stale)
        };
        stale.into_iter().for_each(|w| discard(w.spawned));
        match found {
            Some(mut w) => {
                if w.alive() {
                    Some(w)
                } else {
                    discard(w.spawned);
                    None
                }
            }
            None => None,
        }
    }

    /// Whether the caller should make a sandbox for `key`: none is ready
    /// or being made for it, and the pool has room (the oldest ready one
    /// is discarded to make room). A `true` must be followed by
    /// [`WarmPool::put`] or [`WarmPool::abandon`].
    pub(super) fn reserve(&self, key: &WarmKey) -> bool {
        // (What is being made may also be a serving sandbox being emptied
        // for its return: see `returning`.)
        if !self.enabled() {
            return false;
        }
        let evicted = {
            let mut state = self.state();
            if state.making.contains(key) || state.ready.iter().any(|w| &w.key == key) {
                return false;
            }
            let mut evicted = expired(&mut state.ready, self.ttl);
            if state.making.len() >= self.capacity {
                return false;
            }
            while state.ready.len() + state.making.len() >= self.capacity {
                match state.ready.pop_front() {
                    Some(w) => evicted.push(w),
                    None => break,
                }
            }
            state.making.push(key.clone());
            evicted
        };
        evicted.into_iter().for_each(|w| discard(w.spawned));
        true
    }

    /// A serving sandbox whose command ended is being emptied for its
    /// return; counted as being made for `key` until [`WarmPool::put`] or
    /// [`WarmPool::abandon`].
    pub(super) fn returning(&self, key: &WarmKey) {
        self.state().making.push(key.clone());
    }

    /// A sandbox made after [`WarmPool::reserve`], or returned after
    /// [`WarmPool::returning`]. Past the pool's capacity (returns are not
    /// reserved), the oldest ready ones are discarded; past its TTL, the
    /// sandbox itself is.
    pub(super) fn put(&self, warm: Warm) {
        let evicted = {
            let mut state = self.state();
            if let Some(i) = state.making.iter().position(|k| k == &warm.key) {
                state.making.swap_remove(i);
            }
            let mut evicted = expired(&mut state.ready, self.ttl);
            if warm.made.elapsed() > self.ttl {
                evicted.push(warm);
            } else {
                state.ready.push_back(warm);
            }
            while state.ready.len() + state.making.len() > self.capacity {
                match state.ready.pop_front() {
                    Some(w) => evicted.push(w),
                    None => break,
                }
            }
            evicted
        };
        evicted.into_iter().for_each(|w| discard(w.spawned));
    }

    /// Making the sandbox reserved for `key` failed.
    pub(super) fn abandon(&self, key: &WarmKey) {
        let mut state = self.state();
        if let Some(i) = state.making.iter().position(|k| k == key) {
            state.making.swap_remove(i);
        }
    }

    /// Discards every sandbox older than the TTL.
    pub(super) fn expire(&self) {
        let stale = expired(&mut self.state().ready, self.ttl);
        stale.into_iter().for_each(|w| discard(w.spawned));
    }

    /// How many are ready (for tests).
    pub(super) fn ready(&self) -> usize {
        self.state().ready.len()
    }
}

impl Drop for WarmPool {
    /// The worker is stopping: kills the sandboxes nobody took and removes
    /// their cgroups before the worker's own cgroup goes (the `Sandbox`
    /// holds the pool before its cgroups for that reason).
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for mut warm in state.ready.drain(..) {
            warm.spawned.kill_rest();
            if let Some(cg) = warm.spawned.cgroup.take() {
                cg.remove_now();
            }
        }
    }
}

/// Removes (and returns) the sandboxes made more than `ttl` ago (a
/// returned one may be older than those before it).
fn expired(ready: &mut VecDeque<Warm>, ttl: Duration) -> Vec<Warm> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ready.len() {
        if ready[i].made.elapsed() > ttl {
            out.extend(ready.remove(i));
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_holds_arguments_then_environment() {
        let env = BTreeMap::from([
            ("HOME".to_owned(), "/workspace".to_owned()),
            ("X".to_owned(), "a=b c".to_owned()),
        ]);
        let argv = [
            OsString::from("sh"),
            OsString::from("-c"),
            OsString::from(""),
        ];
        assert_eq!(
            message(&argv, &env).expect("no NUL"),
            b"3\0sh\0-c\0\0HOME=/workspace\0X=a=b c\0"
        );
        let nul = [OsString::from("a\0b")];
        assert_eq!(message(&nul, &BTreeMap::new()), None);
    }
}

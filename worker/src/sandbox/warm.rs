//! Warm sandboxes: a sandbox made ready before its command arrives, so a
//! command's start does not wait for bubblewrap to build namespaces and
//! mounts, or for the kernel to move a process into a fresh cgroup (which,
//! on a host without `favordynmods`, waits for an RCU grace period:
//! 10–16 ms after a quiet moment; docs/operations/deployment.md).
//!
//! Each warm sandbox runs exactly one command, like a cold one: its init
//! (`rdev-sandbox-init … --wait`) blocks until the worker writes the
//! command into a memfd and one byte into a pipe. What it was made for
//! ([`WarmKey`]: workdir, network mode, limits, whether standard input is
//! a pipe) must equal the command's, or the command starts cold. Commands
//! with secret files or a terminal always start cold.
//!
//! The pool is bounded (`RDEV_SANDBOX_WARM` sandboxes, ready or being
//! made, at most one per key) and a sandbox nobody took within
//! `RDEV_SANDBOX_WARM_TTL` is discarded, so what a sandbox was built from
//! (the hidden paths present under `/etc`, say) is never older than that
//! when its command starts.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rdev_shared::containment::{NetworkMode, ResourceLimits};

use super::spawned::Spawned;

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
    /// Write end of the go pipe (the init holds the read end).
    pub(super) go: OwnedFd,
    /// The memfd the command is written into (the init holds a copy).
    pub(super) command: std::fs::File,
    /// The workdir the sandbox bound, held open: while it is, its inode
    /// number cannot be given to a directory made again at the same path,
    /// so [`WarmKey::identity`] names only the directory bound.
    pub(super) _workdir: std::fs::File,
    pub(super) made: Instant,
}

impl Warm {
    /// Hands `argv` and `env` to the waiting init; from here the sandbox is
    /// that command's. On failure the sandbox is discarded and the caller
    /// starts the command cold.
    pub(super) fn start(
        self,
        argv: &[OsString],
        env: &BTreeMap<String, String>,
    ) -> std::io::Result<Spawned> {
        let handed = message(argv, env)
            .ok_or_else(|| std::io::Error::other("a NUL byte in the command or its environment"))
            .and_then(|m| self.command.write_all_at(&m, 0))
            .and_then(|()| {
                // A dead init (its sandbox failed) makes this EPIPE.
                nix::unistd::write(&self.go, b"g")
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        match handed {
            Ok(()) => {
                let mut spawned = self.spawned;
                spawned.program = argv.first().cloned().unwrap_or_default();
                Ok(spawned)
            }
            Err(e) => {
                discard(self.spawned);
                Err(e)
            }
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.spawned.child.try_wait(), Ok(None))
    }
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
        let found = match found {
            Some(mut w) => {
                if w.alive() {
                    Some(w)
                } else {
                    discard(w.spawned);
                    None
                }
            }
            None => None,
        };
        if let Some((hits, misses)) = self.counters.get() {
            if found.is_some() { hits } else { misses }.inc();
        }
        found
    }

    /// Whether the caller should make a sandbox for `key`: none is ready
    /// or being made for it, and the pool has room (the oldest ready one
    /// is discarded to make room). A `true` must be followed by
    /// [`WarmPool::put`] or [`WarmPool::abandon`].
    pub(super) fn reserve(&self, key: &WarmKey) -> bool {
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

    /// A sandbox made after [`WarmPool::reserve`].
    pub(super) fn put(&self, warm: Warm) {
        let mut state = self.state();
        if let Some(i) = state.making.iter().position(|k| k == &warm.key) {
            state.making.swap_remove(i);
        }
        state.ready.push_back(warm);
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
    #[cfg(test)]
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

/// Removes (and returns) the sandboxes made more than `ttl` ago; the
/// oldest are at the front.
fn expired(ready: &mut VecDeque<Warm>, ttl: Duration) -> Vec<Warm> {
    let mut out = Vec::new();
    while ready.front().is_some_and(|w| w.made.elapsed() > ttl) {
        out.extend(ready.pop_front());
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

//! A started command: its pipes, how to signal its whole tree
//! ([`Controls`]), and how it ended ([`Spawned::finish`]).

use std::ffi::OsString;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use rdev_shared::containment::Limit;
use rdev_shared::interactive::{InputSignal, TtySize};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cgroup::{self, CommandCgroup};
use super::init::{self, Report};
use super::pipes::{init_catching, init_named, read_capped_within};
use super::pty::PtyMaster;
use super::warm::{self, Handoff, Serving, Warm};
use super::{DIAGNOSTICS_MAX, Finished, INIT_WAIT, REPORT_TIMEOUT};

/// One of a command's output pipes.
pub type Output = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

pub(super) fn boxed<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: R) -> Output {
    Box::new(r)
}

/// Who to signal to stop a command's whole tree.
#[derive(Clone, Debug)]
pub(super) enum Target {
    /// The sandbox's init (host pid, 0 until bwrap reported it).
    Init(Arc<watch::Sender<i32>>),
    /// The command's process group (no sandbox).
    Group(Pid),
}

/// A started command.
pub struct Spawned {
    pub(super) child: Child,
    /// Its standard input, when piped.
    pub stdin: Option<ChildStdin>,
    /// Its standard output.
    pub stdout: Option<Output>,
    /// Its standard error.
    pub stderr: Option<Output>,
    pub(super) target: Target,
    pub(super) pty: Option<PtyMaster>,
    pub(super) report: Option<pipe::Receiver>,
    /// What the init reported so far; [`Spawned::wait`] returns once it
    /// holds the init's last line.
    pub(super) reported: Vec<u8>,
    pub(super) diagnostics: Option<JoinHandle<String>>,
    pub(super) json: Option<JoinHandle<()>>,
    pub(super) cgroup: Option<CommandCgroup>,
    pub(super) program: OsString,
    /// In a serving sandbox: what its return to the pool needs.
    pub(super) serving: Option<Serving>,
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

    /// Waits for the command's main process to end: the init's last
    /// report line, or (no sandbox, or an init that never reported) the
    /// end of the process the worker started.
    ///
    /// The report comes first: bubblewrap exits only after the kernel has
    /// taken the sandbox's namespaces and mounts down, a millisecond or two
    /// later, and nothing of the command is left to wait for by then (the
    /// init reaped its main process; [`Spawned::finish`] kills the rest).
    pub async fn wait(&mut self) {
        let Some(report) = self.report.as_mut() else {
            let _ = self.child.wait().await;
            return;
        };
        tokio::select! {
            complete = read_report_until(report, &mut self.reported, init::is_final) => {
                if !complete {
                    let _ = self.child.wait().await;
                }
            }
            _ = self.child.wait() => {}
        }
    }

    /// Waits until a warm sandbox's init reports that it waits for its
    /// command (bubblewrap made every mount before it ran the init); false
    /// when the report ends without that line (the sandbox failed) or it
    /// does not come within `within`.
    pub(super) async fn until_waiting(&mut self, within: Duration) -> bool {
        let Some(report) = self.report.as_mut() else {
            return false;
        };
        tokio::time::timeout(
            within,
            read_report_until(report, &mut self.reported, init::is_waiting),
        )
        .await
        .unwrap_or(false)
    }

    /// Whether the init's last report line has arrived.
    fn reported_all(&self) -> bool {
        init::is_final(&self.reported)
    }

    /// Stops the whole tree: SIGTERM to every process, SIGKILL to what is
    /// left after `grace`. Returns once the main process has ended.
    pub async fn terminate(&mut self, grace: Duration) {
        // A stopped command's sandbox is not used again.
        self.serving = None;
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
    ///
    /// A serving sandbox whose init reported the command's end is left as
    /// it is: the init killed and reaped every other process first.
    pub fn kill_rest(&mut self) {
        if self.serving.is_some() && self.reported_all() && !init::is_ending(&self.reported) {
            return;
        }
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
    ///
    /// Once the init reported its command's end, nothing waits for the
    /// sandbox itself: bubblewrap is killed and reaped, and the cgroup
    /// removed, in the background.
    pub async fn finish(mut self) -> Finished {
        if let Some(serving) = self.serving.take()
            && self.reported_all()
            && !init::is_ending(&self.reported)
            && matches!(self.child.try_wait(), Ok(None))
        {
            return self.finish_serving(serving);
        }
        let early = self.reported_all();
        let status = if early {
            None
        } else {
            Some(self.child.wait().await)
        };
        self.kill_rest();
        let events = self
            .cgroup
            .as_ref()
            .map(CommandCgroup::events)
            .unwrap_or_default();
        let report = match self.report.take() {
            Some(_) if early => Some(init::parse_report(&String::from_utf8_lossy(&self.reported))),
            Some(r) => {
                let rest = read_capped_within(r, REPORT_TIMEOUT).await;
                let mut text = String::from_utf8_lossy(&self.reported).into_owned();
                text.push_str(&rest);
                Some(init::parse_report(&text))
            }
            None => None,
        };
        if let Some(task) = self.json.take() {
            task.abort();
        }
        let diagnostics = self.diagnostics.take();
        let cgroup = self.cgroup.take();
        let mut child = self.child;
        let status = match status {
            Some(s) => s,
            // Only a report without a result makes the sandbox's own end
            // worth waiting for (below).
            None if report == Some(Report::Nothing) => child.wait().await,
            None => Ok(ExitStatus::default()),
        };
        let diagnostics = match diagnostics {
            Some(task) if report == Some(Report::Nothing) => {
                tokio::time::timeout(REPORT_TIMEOUT, task)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
            Some(task) => {
                task.abort();
                String::new()
            }
            None => String::new(),
        };
        // Its processes are dead or being killed; the kernel releases the
        // cgroup a moment after the last one ends. Nobody waits for that.
        tokio::spawn(async move {
            let _ = child.wait().await;
            if let Some(cg) = cgroup {
                cg.remove().await;
            }
        });
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

impl Spawned {
    /// [`Spawned::finish`] in a serving sandbox whose init reported the
    /// command's end (every process of it gone): reads how it ended, and
    /// returns the sandbox to its pool once its `/tmp` and `/dev/shm` are
    /// empty (in the background), or discards it.
    fn finish_serving(mut self, serving: Serving) -> Finished {
        let report = init::parse_report(&String::from_utf8_lossy(&self.reported));
        let events = self
            .cgroup
            .as_ref()
            .map(CommandCgroup::events)
            .unwrap_or_default()
            .since(serving.before);
        let finished = match report {
            Report::Exited(c) => classify(Some(c), None, events),
            Report::Signaled(s) => classify(None, Some(s), events),
            Report::ExecFailed(errno) => Finished::ExecFailed(format!(
                "cannot start `{}`: {}",
                self.program.to_string_lossy(),
                Errno::from_raw(errno).desc()
            )),
            // reported_all: an `exited` or `signaled` line is there.
            Report::Nothing => classify(None, None, events),
        };
        if let Some(task) = self.diagnostics.take() {
            task.abort();
        }
        self.report = None;
        self.reported.clear();
        // A sandbox past its TTL goes now, so that the command's end makes
        // a new one ahead (the key is not being returned).
        let Some(pool) = serving
            .pool
            .upgrade()
            .filter(|p| serving.made.elapsed() <= p.ttl())
        else {
            warm::discard(self);
            return finished;
        };
        pool.returning(&serving.key);
        let bwrap_pid = self.child.id();
        tokio::spawn(async move {
            // bwrap names the init on its status pipe, read by another
            // task: a command that ends within moments of a new sandbox's
            // start (its first) may be reported before that task ran.
            // Emptying needs the init, so wait for it (it was forked before
            // the command ran: only the read can be late).
            let init_pid = match &self.target {
                Target::Init(pid) => tokio::time::timeout(INIT_WAIT, init_named(pid))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0),
                Target::Group(_) => 0,
            };
            let emptied = tokio::task::spawn_blocking(move || match bwrap_pid {
                Some(bwrap) if init_pid > 0 => warm::empty_private_dirs(init_pid, bwrap),
                _ => Err(std::io::Error::other("the sandbox's init is not known")),
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            match emptied {
                Ok(()) if matches!(self.child.try_wait(), Ok(None)) => pool.put(Warm {
                    key: serving.key,
                    spawned: self,
                    handoff: Handoff::Serve {
                        socket: serving.socket,
                    },
                    workdir: serving.workdir,
                    made: serving.made,
                }),
                outcome => {
                    if let Err(e) = outcome {
                        tracing::debug!(error = %e, "a serving sandbox was not emptied; discarding it");
                    }
                    pool.abandon(&serving.key);
                    warm::discard(self);
                }
            }
        });
        finished
    }
}

/// Reads the init's report into `buf` until `done(buf)` (true: the init's
/// last line, or a warm init's `waiting`), or the pipe ends or fills
/// before (false). Cancel-safe: what was read stays in `buf`.
async fn read_report_until(
    report: &mut pipe::Receiver,
    buf: &mut Vec<u8>,
    done: fn(&[u8]) -> bool,
) -> bool {
    let mut chunk = [0u8; 128];
    while !done(buf) {
        match report.read(&mut chunk).await {
            Ok(n) if n > 0 && buf.len() < DIAGNOSTICS_MAX => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}

/// Names the limit a failed command hit, if any.
pub(super) fn classify(code: Option<i32>, signal: Option<i32>, events: cgroup::Events) -> Finished {
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

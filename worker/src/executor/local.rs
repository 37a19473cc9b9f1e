//! The `local` executor: the command runs on the worker's host, contained
//! by the [`crate::sandbox`] (a bubblewrap sandbox per command, its own
//! cgroup or rlimits, an unprivileged user), in a directory confined under
//! the workspace root, with an environment built from scratch (the worker's
//! own variables, such as `DATABASE_URL`, never reach a command).
//!
//! A command ends when its main process exits; every process it started is
//! killed then (the sandbox's PID namespace ends with its init), and on
//! timeout or cancel (SIGTERM to all of them, SIGKILL after the grace
//! period).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rdev_shared::domain::{CommandSpec, ExecutorConfig, OutputStream, validate_workdir};
use rdev_shared::interactive::Input;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{Executor, InputRx, Job, Outcome, OutputTx, RunFuture, spawn_reader};
use crate::sandbox::{Controls, Finished, Launch, LaunchError, PATH, Sandbox, Spawned, WarmKey};
use crate::secrets::{SECRETS_DIR, SECRETS_DIR_VAR};

/// How long to wait for the output pipes to close after every process of
/// the command was killed. Only a process that escaped the kill (possible
/// without the sandbox and without cgroups) can make it matter; then its
/// output is abandoned.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Error text when a workdir resolves outside the workspace root.
pub const ESCAPE_ERROR: &str = "workdir escapes the workspace root";

/// Runs commands on this host under a workspace root.
#[derive(Clone, Debug)]
pub struct LocalExecutor {
    root: PathBuf,
    kill_grace: Duration,
    sandbox: Arc<Sandbox>,
}

impl LocalExecutor {
    /// An executor confined to `root`, made here if missing (once: a
    /// command does not make it again); `kill_grace` separates SIGTERM from
    /// SIGKILL; `sandbox` contains every command.
    pub fn new(root: impl Into<PathBuf>, kill_grace: Duration, sandbox: Arc<Sandbox>) -> Self {
        let root = root.into();
        if let Err(e) = std::fs::create_dir_all(&root) {
            // Every command then fails, naming the root.
            tracing::warn!(root = %root.display(), error = %e, "cannot create the workspace root");
        }
        Self {
            root,
            kill_grace,
            sandbox,
        }
    }

    /// The sandbox commands run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Prepares the workdir and environment and starts the command in the
    /// sandbox; the outcome to report when it cannot start.
    async fn launch(&self, job: &Job) -> Result<(Spawned, Option<WarmKey>), Outcome> {
        let rel = match &job.executor {
            ExecutorConfig::Local(l) => l.workdir.clone().unwrap_or_else(|| job.project.clone()),
            ExecutorConfig::Kubernetes(_) => {
                return Err(Outcome::FailedToStart("not a local project".into()));
            }
        };
        let workdir = prepare_workdir(&self.root, &rel)
            .await
            .map_err(Outcome::FailedToStart)?;
        self.sandbox
            .own_workdir(&workdir)
            .map_err(Outcome::FailedToStart)?;
        if matches!(&job.spec, CommandSpec::Argv(a) if a.first().is_none_or(String::is_empty)) {
            return Err(Outcome::FailedToStart("empty argv".into()));
        }
        let mut env = environment(&job.env, &self.sandbox.home(&workdir));
        for (name, value) in &job.secrets.env {
            env.insert(name.clone(), value.expose().to_owned());
        }
        if !job.secrets.files.is_empty() {
            env.insert(SECRETS_DIR_VAR.to_owned(), SECRETS_DIR.to_owned());
        }
        let launch = Launch {
            name: job.name.clone(),
            argv: argv(&job.spec),
            env,
            secret_files: &job.secrets.files,
            workdir: &workdir,
            network: job.network,
            limits: job.limits.effective(self.sandbox.limits_config()),
            stdin: job.stdin.is_some() || job.stdin_pipe,
            tty: job.tty,
        };
        let warm = self.sandbox.warm_key(&launch);
        let spawned = self
            .sandbox
            .spawn(launch, warm.as_ref())
            .map_err(|e| match e {
                LaunchError::Unavailable(e) => Outcome::SandboxUnavailable(e),
                LaunchError::Failed(e) => Outcome::FailedToStart(e),
            })?;
        Ok((spawned, warm))
    }

    /// Makes the project's next sandbox once this command has ended: made
    /// while the command runs, it would compete with it for the CPU (bwrap
    /// sets up namespaces and mounts for a few milliseconds). Made on a
    /// runtime thread (a sandbox dies with the thread that starts it).
    fn warm_up_after(&self, key: Option<WarmKey>) {
        if let Some(key) = key {
            let sandbox = Arc::clone(&self.sandbox);
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                sandbox.warm_up(key).await;
            });
        }
    }

    async fn execute(
        &self,
        job: Job,
        output: OutputTx,
        input: Option<InputRx>,
        cancel: CancellationToken,
    ) -> Outcome {
        let (mut proc, warm) = match self.launch(&job).await {
            Ok(started) => started,
            Err(outcome) => return outcome,
        };

        let controls = proc.controls();
        let stdin_task = match (job.stdin, proc.stdin.take(), input) {
            (Some(data), Some(mut pipe), _) => Some(tokio::spawn(async move {
                // A command that does not read its input makes this fail with EPIPE: fine.
                let _ = pipe.write_all(&data).await;
                let _ = pipe.shutdown().await;
            })),
            (None, pipe, Some(input)) => {
                let writer: Option<InputWriter> = match controls.terminal() {
                    Some(tty) => Some(Box::new(tty)),
                    None => pipe.map(|p| Box::new(p) as InputWriter),
                };
                Some(tokio::spawn(apply_input(input, writer, controls)))
            }
            _ => None,
        };
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = proc.stdout.take() {
            readers.push(spawn_reader(out, OutputStream::Stdout, output.clone()));
        }
        if let Some(err) = proc.stderr.take() {
            readers.push(spawn_reader(err, OutputStream::Stderr, output.clone()));
        }
        drop(output);

        let stopped = tokio::select! {
            _ = proc.wait() => None,
            () = tokio::time::sleep(job.timeout) => {
                proc.terminate(self.kill_grace).await;
                Some(Outcome::TimedOut)
            }
            () = cancel.cancelled() => {
                proc.terminate(self.kill_grace).await;
                Some(Outcome::Cancelled)
            }
        };
        // Processes left behind would hold the pipes open and keep the
        // readers from ever seeing EOF.
        proc.kill_rest();
        let finished = proc.finish().await;
        let drain = futures::future::join_all(readers.iter_mut());
        if tokio::time::timeout(PIPE_DRAIN_TIMEOUT, drain)
            .await
            .is_err()
        {
            tracing::warn!("output pipes still open after the command was killed; abandoning them");
            for r in &readers {
                r.abort();
            }
        }
        if let Some(t) = stdin_task {
            t.abort();
        }
        self.warm_up_after(warm);
        stopped.unwrap_or_else(|| finished.into())
    }
}

impl From<Finished> for Outcome {
    fn from(finished: Finished) -> Self {
        match finished {
            Finished::Exited(code) => Outcome::Exited(code),
            Finished::Signaled(sig) => Outcome::Signaled(sig),
            Finished::Limit {
                limit,
                exit_code,
                signal,
            } => Outcome::Limit {
                limit,
                exit_code,
                signal,
            },
            Finished::ExecFailed(e) => Outcome::FailedToStart(e),
            Finished::SandboxFailed(e) => Outcome::SandboxUnavailable(e),
        }
    }
}

impl Executor for LocalExecutor {
    fn run(
        &self,
        job: Job,
        output: OutputTx,
        input: Option<InputRx>,
        cancel: CancellationToken,
    ) -> RunFuture<'_> {
        Box::pin(self.execute(job, output, input, cancel))
    }
}

/// Where input bytes go: the command's stdin pipe, or its terminal.
type InputWriter = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// Applies an interactive command's input events in order until they end
/// (the command ended): bytes to its stdin or terminal, end-of-file (closes
/// the pipe; on a terminal, the end-of-file character Ctrl-D), a new
/// terminal size, signals.
async fn apply_input(mut input: InputRx, mut writer: Option<InputWriter>, controls: Controls) {
    let tty = controls.terminal().is_some();
    while let Some(event) = input.recv().await {
        match event {
            Input::Data { data } => {
                if let Some(w) = writer.as_mut()
                    && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                {
                    // The command closed its input (EPIPE): later bytes go nowhere.
                    writer = None;
                }
            }
            Input::Eof if tty => {
                if let Some(w) = writer.as_mut() {
                    let _ = w.write_all(&[EOF_CHAR]).await;
                }
            }
            Input::Eof => {
                if let Some(mut w) = writer.take() {
                    let _ = w.shutdown().await;
                }
            }
            Input::Resize { size } => {
                controls.resize(size);
            }
            Input::Signal { signal } => controls.signal(signal).await,
        }
    }
}

/// The terminal's end-of-file character (VEOF, Ctrl-D) in the default
/// line discipline.
const EOF_CHAR: u8 = 0x04;

/// The program and arguments: a shell line runs with `/bin/sh -c`.
fn argv(spec: &CommandSpec) -> Vec<OsString> {
    match spec {
        CommandSpec::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.into()],
        CommandSpec::Argv(argv) => argv.iter().map(OsString::from).collect(),
    }
}

/// A fixed base (`PATH`, `HOME`, `LANG`), then the job's variables.
fn environment(env: &BTreeMap<String, String>, home: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        ("PATH".to_owned(), PATH.to_owned()),
        ("HOME".to_owned(), home.to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ]);
    out.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Creates `root/rel` and returns its canonical path, refusing any path that
/// resolves outside the canonical root (`..` is refused by validation; a
/// symlink is caught here, before anything is created through it).
///
/// The whole check is one trip to the blocking pool: each `tokio::fs` call
/// is one, and the six of them took ~0.5 ms of a command's start.
pub async fn prepare_workdir(root: &Path, rel: &str) -> Result<PathBuf, String> {
    validate_workdir(rel).map_err(|m| format!("invalid workdir: {m}"))?;
    let (root, rel) = (root.to_owned(), rel.to_owned());
    tokio::task::spawn_blocking(move || workdir_in(&root, &rel))
        .await
        .map_err(|e| format!("cannot prepare the workdir: {e}"))?
}

/// [`prepare_workdir`]'s work, blocking.
fn workdir_in(root: &Path, rel: &str) -> Result<PathBuf, String> {
    if let Some(dir) = existing_workdir(root, rel) {
        return Ok(dir);
    }
    // The executor made the root at start. One that is gone is not made
    // again: it may be an unmounted volume, whose mount point would then
    // fill the host's disk, or a workspace being removed (a test's, after
    // its worker stopped).
    let root = std::fs::canonicalize(root).map_err(|e| {
        format!(
            "the workspace root {} cannot be resolved (made at start; removed or unmounted since?): {e}",
            root.display()
        )
    })?;
    let dir = root.join(rel);

    // Check the deepest existing ancestor first, so a symlink cannot make
    // create_dir_all build directories outside the root.
    let mut existing = dir.clone();
    while std::fs::symlink_metadata(&existing).is_err() {
        if !existing.pop() {
            break;
        }
    }
    let resolved =
        std::fs::canonicalize(&existing).map_err(|e| format!("cannot resolve the workdir: {e}"))?;
    if !resolved.starts_with(&root) {
        return Err(ESCAPE_ERROR.into());
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create the workdir: {e}"))?;
    let resolved =
        std::fs::canonicalize(&dir).map_err(|e| format!("cannot resolve the workdir: {e}"))?;
    if !resolved.starts_with(&root) {
        return Err(ESCAPE_ERROR.into());
    }
    Ok(resolved)
}

/// The canonical path of `root/rel` when it already is a directory
/// beneath `root` reached without a symlink: what every command after a
/// project's first finds. Two opens and two reads of `/proc/self/fd`,
/// where creating and resolving it again (below) took ~25 system calls.
/// `None` sends the caller to that slower path, which creates what is
/// missing and accepts a symlink that stays inside the root.
fn existing_workdir(root: &Path, rel: &str) -> Option<PathBuf> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;

    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root_fd = open(root, flags, Mode::empty()).ok()?;
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let dir_fd = openat2(&root_fd, rel, how).ok()?;
    let path_of = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
    let (root, dir) = (path_of(root_fd.as_raw_fd())?, path_of(dir_fd.as_raw_fd())?);
    // A directory removed meanwhile reads back as "<path> (deleted)".
    (dir.starts_with(&root) && dir.exists()).then_some(dir)
}

#[cfg(test)]
mod tests;

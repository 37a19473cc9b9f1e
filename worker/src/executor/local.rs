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
use crate::sandbox::{Controls, Finished, Launch, LaunchError, PATH, Sandbox};
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
    /// An executor confined to `root`; `kill_grace` separates SIGTERM from
    /// SIGKILL; `sandbox` contains every command.
    pub fn new(root: impl Into<PathBuf>, kill_grace: Duration, sandbox: Arc<Sandbox>) -> Self {
        Self {
            root: root.into(),
            kill_grace,
            sandbox,
        }
    }

    /// The sandbox commands run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    async fn execute(
        &self,
        job: Job,
        output: OutputTx,
        input: Option<InputRx>,
        cancel: CancellationToken,
    ) -> Outcome {
        let rel = match &job.executor {
            ExecutorConfig::Local(l) => l.workdir.clone().unwrap_or_else(|| job.project.clone()),
            ExecutorConfig::Kubernetes(_) => {
                return Outcome::FailedToStart("not a local project".into());
            }
        };
        let workdir = match prepare_workdir(&self.root, &rel).await {
            Ok(dir) => dir,
            Err(e) => return Outcome::FailedToStart(e),
        };
        if let Err(e) = self.sandbox.own_workdir(&workdir) {
            return Outcome::FailedToStart(e);
        }
        if matches!(&job.spec, CommandSpec::Argv(a) if a.first().is_none_or(String::is_empty)) {
            return Outcome::FailedToStart("empty argv".into());
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
        let mut proc = match self.sandbox.spawn(launch) {
            Ok(p) => p,
            Err(LaunchError::Unavailable(e)) => return Outcome::SandboxUnavailable(e),
            Err(LaunchError::Failed(e)) => return Outcome::FailedToStart(e),
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
pub async fn prepare_workdir(root: &Path, rel: &str) -> Result<PathBuf, String> {
    validate_workdir(rel).map_err(|m| format!("invalid workdir: {m}"))?;
    tokio::fs::create_dir_all(root)
        .await
        .map_err(|e| format!("cannot create the workspace root: {e}"))?;
    let root = tokio::fs::canonicalize(root)
        .await
        .map_err(|e| format!("cannot resolve the workspace root: {e}"))?;
    let dir = root.join(rel);

    // Check the deepest existing ancestor first, so a symlink cannot make
    // create_dir_all build directories outside the root.
    let mut existing = dir.clone();
    while tokio::fs::symlink_metadata(&existing).await.is_err() {
        if !existing.pop() {
            break;
        }
    }
    let resolved = tokio::fs::canonicalize(&existing)
        .await
        .map_err(|e| format!("cannot resolve the workdir: {e}"))?;
    if !resolved.starts_with(&root) {
        return Err(ESCAPE_ERROR.into());
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| format!("cannot create the workdir: {e}"))?;
    let resolved = tokio::fs::canonicalize(&dir)
        .await
        .map_err(|e| format!("cannot resolve the workdir: {e}"))?;
    if !resolved.starts_with(&root) {
        return Err(ESCAPE_ERROR.into());
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Instant;

    use bytes::Bytes;
    use rdev_shared::containment::{Limit, LimitsConfig, NetworkMode, ResourceLimits};
    use rdev_shared::db::output::MAX_CHUNK_BYTES;
    use rdev_shared::domain::LocalSettings;
    use tokio::sync::mpsc;

    use super::*;
    use crate::sandbox::{SandboxConfig, SandboxMode};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir()
                .join(format!("rdev-worker-test-{:016x}", rand::random::<u64>()));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn job(spec: CommandSpec) -> Job {
        Job {
            name: format!("test-{:016x}", rand::random::<u64>()),
            spec,
            env: BTreeMap::new(),
            stdin: None,
            stdin_pipe: false,
            tty: None,
            executor: ExecutorConfig::Local(LocalSettings::default()),
            project: "proj".into(),
            timeout: Duration::from_secs(30),
            network: NetworkMode::Host,
            limits: ResourceLimits::default(),
            secrets: Default::default(),
        }
    }

    fn sh(line: &str) -> Job {
        job(CommandSpec::Shell(line.into()))
    }

    struct Ran {
        outcome: Outcome,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        max_piece: usize,
    }

    impl Ran {
        fn out(&self) -> String {
            String::from_utf8_lossy(&self.stdout).into_owned()
        }
    }

    async fn run_with(
        exec: &LocalExecutor,
        job: Job,
        capacity: usize,
        cancel: CancellationToken,
    ) -> Ran {
        let (tx, mut rx) = mpsc::channel::<(OutputStream, Bytes)>(capacity);
        let collect = async move {
            let (mut stdout, mut stderr, mut max_piece) = (Vec::new(), Vec::new(), 0);
            while let Some((stream, data)) = rx.recv().await {
                max_piece = max_piece.max(data.len());
                match stream {
                    OutputStream::Stdout => stdout.extend_from_slice(&data),
                    OutputStream::Stderr => stderr.extend_from_slice(&data),
                }
            }
            (stdout, stderr, max_piece)
        };
        let (outcome, (stdout, stderr, max_piece)) =
            tokio::join!(exec.run(job, tx, None, cancel), collect);
        Ran {
            outcome,
            stdout,
            stderr,
            max_piece,
        }
    }

    async fn run(exec: &LocalExecutor, job: Job) -> Ran {
        run_with(exec, job, 16, CancellationToken::new()).await
    }

    async fn executor_with(root: &TempDir, cfg: SandboxConfig) -> LocalExecutor {
        let ws = root.0.join("ws");
        let worker = format!("test-{:08x}", rand::random::<u32>());
        let sandbox = Sandbox::start(&cfg, LimitsConfig::default(), &worker, &ws).await;
        LocalExecutor::new(ws, Duration::from_millis(500), Arc::new(sandbox))
    }

    /// The default, sandboxed executor; the sandbox must work on test machines.
    async fn executor(root: &TempDir) -> LocalExecutor {
        let exec = executor_with(root, SandboxConfig::default()).await;
        let status = exec.sandbox().status();
        assert_eq!(
            status.mode, "bwrap",
            "the sandbox must work here: {status:?}"
        );
        exec
    }

    /// A `sleep` whose command line is unique, so the host's process list
    /// tells whether it survived.
    fn marker() -> String {
        format!("1000.{:06}", rand::random::<u32>() % 1_000_000)
    }

    /// Host pids of `sleep <marker>` processes, zombies excluded.
    fn survivors(marker: &str) -> Vec<i32> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(entry.path().join("stat"))
                .map(|st| {
                    st.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            if !zombie && cmdline.split(|&b| b == 0).any(|a| a == marker.as_bytes()) {
                found.push(pid);
            }
        }
        found
    }

    async fn gone(marker: &str) -> bool {
        for _ in 0..40 {
            if survivors(marker).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn stdout_and_stderr_arrive_exactly() {
        let tmp = TempDir::new();
        let ran = run(
            &executor(&tmp).await,
            sh("printf 'out\\0put'; printf 'err' >&2; printf ' more'"),
        )
        .await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        assert_eq!(ran.stdout, b"out\0put more");
        assert_eq!(ran.stderr, b"err");
    }

    #[tokio::test]
    async fn exit_codes_and_signals_are_reported() {
        let tmp = TempDir::new();
        let exec = executor(&tmp).await;
        assert_eq!(run(&exec, sh("true")).await.outcome, Outcome::Exited(0));
        assert_eq!(run(&exec, sh("exit 3")).await.outcome, Outcome::Exited(3));
        assert_eq!(
            run(&exec, sh("exit 137")).await.outcome,
            Outcome::Exited(137)
        );
        assert_eq!(
            run(&exec, sh("kill -9 $$")).await.outcome,
            Outcome::Signaled(9)
        );
        let argv = job(CommandSpec::Argv(vec![
            "sh".into(),
            "-c".into(),
            "exit 4".into(),
        ]));
        assert_eq!(run(&exec, argv).await.outcome, Outcome::Exited(4));
    }

    #[tokio::test]
    async fn missing_program_fails_to_start() {
        let tmp = TempDir::new();
        let exec = executor(&tmp).await;
        let ran = run(
            &exec,
            job(CommandSpec::Argv(vec!["no-such-program-rdev".into()])),
        )
        .await;
        assert!(
            matches!(&ran.outcome, Outcome::FailedToStart(m) if m.contains("no-such-program-rdev")),
            "{:?}",
            ran.outcome
        );
        let ran = run(&exec, job(CommandSpec::Argv(vec![]))).await;
        assert_eq!(ran.outcome, Outcome::FailedToStart("empty argv".into()));
    }

    #[tokio::test]
    async fn timeout_kills_every_process_of_the_command() {
        let tmp = TempDir::new();
        let m = marker();
        let mut j = sh(&format!("sleep {m} & setsid sleep {m} & sleep {m}"));
        j.timeout = Duration::from_secs(1);
        let started = Instant::now();
        let ran = run(&executor(&tmp).await, j).await;
        assert_eq!(ran.outcome, Outcome::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            gone(&m).await,
            "processes survived the timeout: {:?}",
            survivors(&m)
        );
    }

    #[tokio::test]
    async fn term_is_followed_by_kill_after_the_grace_period() {
        let tmp = TempDir::new();
        let m = marker();
        // The ignored SIGTERM is inherited by `sleep`: only SIGKILL ends them.
        let mut j = sh(&format!("trap '' TERM; sleep {m} & sleep {m}"));
        j.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let ran = run(&executor(&tmp).await, j).await;
        assert_eq!(ran.outcome, Outcome::TimedOut);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(750) && took < Duration::from_secs(5),
            "took {took:?}"
        );
        assert!(gone(&m).await, "survived SIGKILL: {:?}", survivors(&m));
    }

    #[tokio::test]
    async fn cancel_stops_the_command() {
        let tmp = TempDir::new();
        let exec = executor(&tmp).await;
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let m = marker();
        let ran = run_with(
            &exec,
            sh(&format!("setsid sleep {m} & sleep {m}")),
            16,
            cancel,
        )
        .await;
        assert_eq!(ran.outcome, Outcome::Cancelled);
        assert!(gone(&m).await, "survived the cancel: {:?}", survivors(&m));
    }

    #[tokio::test]
    async fn background_processes_end_with_the_main_process() {
        let tmp = TempDir::new();
        let m = marker();
        let started = Instant::now();
        let line = format!("sleep {m} & setsid sleep {m} & (sleep {m} &) ; echo started");
        let ran = run(&executor(&tmp).await, sh(&line)).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        assert_eq!(ran.stdout, b"started\n");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            gone(&m).await,
            "background processes survived: {:?}",
            survivors(&m)
        );
    }

    #[tokio::test]
    async fn environment_is_built_from_scratch() {
        let tmp = TempDir::new();
        let mut j = sh("env");
        j.env = BTreeMap::from([
            ("FOO".into(), "bar".into()),
            ("PROJECT_VAR".into(), "x y".into()),
        ]);
        let ran = run(&executor(&tmp).await, j).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        let text = ran.out();
        let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let allowed: BTreeSet<&str> = [
            "PATH",
            "HOME",
            "LANG",
            "PWD",
            "SHLVL",
            "_",
            "OLDPWD",
            "FOO",
            "PROJECT_VAR",
        ]
        .into();
        for name in vars.keys() {
            assert!(
                allowed.contains(name),
                "unexpected variable {name} in the command's env"
            );
        }
        assert_eq!(vars.get("PATH"), Some(&PATH));
        assert_eq!(vars.get("LANG"), Some(&"C.UTF-8"));
        assert_eq!(vars.get("FOO"), Some(&"bar"));
        assert_eq!(vars.get("PROJECT_VAR"), Some(&"x y"));
        assert_eq!(vars.get("HOME"), Some(&"/workspace"));
    }

    #[tokio::test]
    async fn command_runs_in_its_workdir() {
        let tmp = TempDir::new();
        let mut j = sh("pwd; touch made-here");
        j.executor = ExecutorConfig::Local(LocalSettings {
            workdir: Some("a/b".into()),
        });
        let ran = run(&executor(&tmp).await, j).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        assert_eq!(ran.out(), "/workspace\n");
        assert!(tmp.0.join("ws/a/b/made-here").exists());
    }

    #[tokio::test]
    async fn symlink_out_of_the_workspace_is_refused() {
        let tmp = TempDir::new();
        let outside = tmp.0.join("outside");
        std::fs::create_dir_all(&outside).expect("outside dir");
        std::fs::create_dir_all(tmp.0.join("ws")).expect("root");
        std::os::unix::fs::symlink(&outside, tmp.0.join("ws/evil")).expect("symlink");
        let exec = executor(&tmp).await;
        for dir in ["evil", "evil/sub"] {
            let mut j = sh("touch pwned");
            j.executor = ExecutorConfig::Local(LocalSettings {
                workdir: Some(dir.into()),
            });
            let ran = run(&exec, j).await;
            assert_eq!(
                ran.outcome,
                Outcome::FailedToStart(ESCAPE_ERROR.into()),
                "{dir}"
            );
        }
        assert!(
            !outside.join("sub").exists(),
            "nothing is created through the symlink"
        );
        assert!(!outside.join("pwned").exists());
        let mut j = sh("true");
        j.executor = ExecutorConfig::Local(LocalSettings {
            workdir: Some("../x".into()),
        });
        assert!(matches!(
            run(&exec, j).await.outcome,
            Outcome::FailedToStart(_)
        ));
    }

    #[tokio::test]
    async fn stdin_is_delivered_and_closed() {
        let tmp = TempDir::new();
        let exec = executor(&tmp).await;
        let mut j = sh("cat; echo done");
        j.stdin = Some(b"hello\nworld\n".to_vec());
        let ran = run(&exec, j).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        assert_eq!(ran.stdout, b"hello\nworld\ndone\n");
        // Without stdin the command reads /dev/null and does not hang.
        let ran = run(&exec, sh("cat; echo eof")).await;
        assert_eq!(ran.stdout, b"eof\n");
    }

    #[tokio::test]
    async fn large_output_flows_through_a_small_channel() {
        let tmp = TempDir::new();
        let five_mb = 5 * 1024 * 1024;
        let j = sh(&format!(
            "head -c {five_mb} /dev/zero; head -c 1000 /dev/zero >&2"
        ));
        let ran = run_with(&executor(&tmp).await, j, 1, CancellationToken::new()).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        assert_eq!(ran.stdout.len(), five_mb);
        assert_eq!(ran.stderr.len(), 1000);
        assert!(ran.max_piece <= MAX_CHUNK_BYTES);
    }

    #[tokio::test]
    async fn the_command_sees_nothing_of_the_worker_or_the_host() {
        let tmp = TempDir::new();
        std::fs::create_dir_all(tmp.0.join("ws/other-project")).expect("other workdir");
        std::fs::write(tmp.0.join("ws/other-project/secret"), "x").expect("secret");
        let exec = executor(&tmp).await;
        let script = "\
            id -u; \
            ls /proc | grep -c '^[0-9]'; \
            ls /; \
            ls /root /home 2>/dev/null && echo SAW-HOME; \
            cat /proc/1/environ 2>/dev/null && echo SAW-INIT-ENV; \
            touch /etc/x /usr/x /x 2>/dev/null && echo WROTE-SYSTEM; \
            ls /tmp | wc -l; touch /tmp/ok && echo tmp-ok; \
            cat /etc/shadow 2>/dev/null && echo SAW-SHADOW; \
            ls ../other-project /workspace/../other-project 2>/dev/null && echo SAW-OTHER; \
            echo done";
        let ran = run(&exec, sh(script)).await;
        assert_eq!(
            ran.outcome,
            Outcome::Exited(0),
            "{}",
            String::from_utf8_lossy(&ran.stderr)
        );
        let out = ran.out();
        let lines: Vec<&str> = out.lines().collect();
        assert_ne!(lines[0], "0", "runs as root");
        let pids: usize = lines[1].parse().expect("pid count");
        assert!(pids <= 6, "sees {pids} processes");
        for word in [
            "SAW-HOME",
            "SAW-INIT-ENV",
            "WROTE-SYSTEM",
            "SAW-SHADOW",
            "SAW-OTHER",
            "root",
            "home",
            "srv",
        ] {
            assert!(!lines.contains(&word), "{word} in:\n{out}");
        }
        assert!(out.contains("\n0\ntmp-ok\n"), "private empty /tmp:\n{out}");
        assert!(out.ends_with("done\n"));
    }

    #[tokio::test]
    async fn network_none_reaches_nothing() {
        let tmp = TempDir::new();
        let exec = executor(&tmp).await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("addr").port();
        let probe = format!(
            "bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo connected || echo refused"
        );
        let ran = run(&exec, sh(&probe)).await;
        assert_eq!(ran.out(), "connected\n", "host network by default");
        let mut j = sh(&probe);
        j.network = NetworkMode::None;
        let ran = run(&exec, j).await;
        assert_eq!(ran.out(), "refused\n", "network none");
    }

    #[tokio::test]
    async fn limits_end_commands_with_a_reason() {
        let tmp = TempDir::new();
        let exec = executor(&tmp).await;
        let limits = exec.sandbox().status().limits;
        let cgroups = limits.starts_with("cgroup");

        let mut hog = sh("x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived");
        hog.limits.memory_bytes = Some(64 << 20);
        let ran = run(&exec, hog).await;
        if cgroups {
            assert!(
                matches!(
                    ran.outcome,
                    Outcome::Limit {
                        limit: Limit::Memory,
                        ..
                    }
                ),
                "{:?}",
                ran.outcome
            );
        } else {
            assert!(
                !matches!(ran.outcome, Outcome::Exited(0)),
                "{:?}",
                ran.outcome
            );
        }

        let mut bomb =
            sh("i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done; echo survived");
        bomb.limits.pids = Some(32);
        bomb.timeout = Duration::from_secs(20);
        let ran = run(&exec, bomb).await;
        assert!(!ran.out().contains("survived"), "{}", ran.out());
        if cgroups {
            assert!(
                matches!(
                    ran.outcome,
                    Outcome::Limit {
                        limit: Limit::Pids,
                        ..
                    }
                ),
                "{:?}",
                ran.outcome
            );
        }

        let mut spin = sh("while :; do :; done");
        spin.limits.cpu_s = Some(1);
        spin.timeout = Duration::from_secs(60);
        let ran = run(&exec, spin).await;
        assert!(
            matches!(
                ran.outcome,
                Outcome::Limit {
                    limit: Limit::Cpu,
                    ..
                }
            ),
            "{:?}",
            ran.outcome
        );

        let mut big = job(CommandSpec::Argv(
            ["dd", "if=/dev/zero", "of=big", "bs=1M", "count=4"]
                .map(String::from)
                .to_vec(),
        ));
        big.limits.file_size_bytes = Some(1 << 20);
        let ran = run(&exec, big).await;
        assert!(
            matches!(
                ran.outcome,
                Outcome::Limit {
                    limit: Limit::FileSize,
                    ..
                }
            ),
            "{:?}",
            ran.outcome
        );
    }

    #[tokio::test]
    async fn without_a_working_sandbox_local_commands_are_refused() {
        let tmp = TempDir::new();
        let cfg = SandboxConfig {
            bwrap: PathBuf::from("/nonexistent/bwrap"),
            ..SandboxConfig::default()
        };
        let exec = executor_with(&tmp, cfg).await;
        let status = exec.sandbox().status();
        assert_eq!(status.mode, "unavailable");
        let ran = run(&exec, sh("echo should-not-run")).await;
        assert!(
            matches!(ran.outcome, Outcome::SandboxUnavailable(_)),
            "{:?}",
            ran.outcome
        );
        assert!(ran.stdout.is_empty());
    }

    #[tokio::test]
    async fn sandbox_off_runs_plain_processes_still_unprivileged() {
        let tmp = TempDir::new();
        let cfg = SandboxConfig {
            mode: SandboxMode::Off,
            ..SandboxConfig::default()
        };
        let exec = executor_with(&tmp, cfg).await;
        assert_eq!(exec.sandbox().status().mode, "off");
        let m = marker();
        let ran = run(&exec, sh(&format!("id -u; pwd; sleep {m} & echo bg"))).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        let out = ran.out();
        let lines: Vec<&str> = out.lines().collect();
        assert_ne!(lines[0], "0", "never root");
        assert!(lines[1].ends_with("/ws/proj"), "{out}");
        assert!(gone(&m).await, "the process group is killed at the end");
    }
}

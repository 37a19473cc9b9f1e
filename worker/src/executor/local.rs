//! The `local` executor: a child process of the worker, in its own process
//! group, in a directory confined under the workspace root, with an
//! environment built from scratch (the worker's own variables, such as
//! `DATABASE_URL`, never reach a command).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rdev_shared::domain::{CommandSpec, ExecutorConfig, OutputStream, validate_workdir};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{Executor, Job, Outcome, OutputTx, RunFuture, spawn_reader};

/// `PATH` of every command: the system directories, nothing from the worker.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long to wait for the output pipes to close after the process group
/// was killed. Only a process that left the group (`setsid`) and kept the
/// pipes open can make it matter; then its output is abandoned.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Error text when a workdir resolves outside the workspace root.
pub const ESCAPE_ERROR: &str = "workdir escapes the workspace root";

/// Runs commands as child processes under a workspace root.
#[derive(Clone, Debug)]
pub struct LocalExecutor {
    root: PathBuf,
    kill_grace: Duration,
}

impl LocalExecutor {
    /// An executor confined to `root`; `kill_grace` separates SIGTERM from SIGKILL.
    pub fn new(root: impl Into<PathBuf>, kill_grace: Duration) -> Self {
        Self {
            root: root.into(),
            kill_grace,
        }
    }

    async fn execute(&self, job: Job, output: OutputTx, cancel: CancellationToken) -> Outcome {
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
        let mut cmd = match build_command(&job, &workdir) {
            Ok(cmd) => cmd,
            Err(e) => return Outcome::FailedToStart(e),
        };
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => return Outcome::FailedToStart(format!("cannot start the command: {e}")),
        };
        // `process_group(0)` made the child the leader of a group with its own pid.
        let Some(pgid) = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
        else {
            return Outcome::FailedToStart("the command exited before it was tracked".into());
        };

        let stdin_task = match (job.stdin, child.stdin.take()) {
            (Some(data), Some(mut pipe)) => Some(tokio::spawn(async move {
                // A command that does not read its input makes this fail with EPIPE: fine.
                let _ = pipe.write_all(&data).await;
                let _ = pipe.shutdown().await;
            })),
            _ => None,
        };
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(out, OutputStream::Stdout, output.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(err, OutputStream::Stderr, output.clone()));
        }
        drop(output);

        let outcome = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => from_status(status),
                Err(e) => Outcome::FailedToStart(format!("cannot wait for the command: {e}")),
            },
            () = tokio::time::sleep(job.timeout) => {
                self.terminate(&mut child, pgid).await;
                Outcome::TimedOut
            }
            () = cancel.cancelled() => {
                self.terminate(&mut child, pgid).await;
                Outcome::Cancelled
            }
        };
        // Processes left in the group would hold the pipes open and keep the
        // readers from ever seeing EOF. ESRCH (none left) is the usual answer.
        let _ = killpg(pgid, Signal::SIGKILL);
        let drain = futures::future::join_all(readers.iter_mut());
        if tokio::time::timeout(PIPE_DRAIN_TIMEOUT, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                "output pipes still open after the process group was killed; abandoning them"
            );
            for r in &readers {
                r.abort();
            }
        }
        if let Some(t) = stdin_task {
            t.abort();
        }
        outcome
    }

    /// SIGTERM to the whole group, SIGKILL after the grace period.
    async fn terminate(&self, child: &mut Child, pgid: Pid) {
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(self.kill_grace, child.wait())
            .await
            .is_err()
        {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

impl Executor for LocalExecutor {
    fn run(&self, job: Job, output: OutputTx, cancel: CancellationToken) -> RunFuture<'_> {
        Box::pin(self.execute(job, output, cancel))
    }
}

fn from_status(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(sig)) => Outcome::Signaled(sig),
        (None, None) => Outcome::Exited(-1),
    }
}

fn build_command(job: &Job, workdir: &Path) -> Result<Command, String> {
    let mut cmd = match &job.spec {
        CommandSpec::Shell(line) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(line);
            c
        }
        CommandSpec::Argv(argv) => {
            let Some((program, args)) = argv.split_first() else {
                return Err("empty argv".into());
            };
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    };
    cmd.env_clear()
        .env("PATH", PATH)
        .env("HOME", workdir)
        .env("LANG", "C.UTF-8")
        .envs(&job.env)
        .current_dir(workdir)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(if job.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
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
    use rdev_shared::db::output::MAX_CHUNK_BYTES;
    use rdev_shared::domain::LocalExecutor as LocalSettings;
    use tokio::sync::mpsc;

    use super::*;

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
            spec,
            env: BTreeMap::new(),
            stdin: None,
            executor: ExecutorConfig::Local(LocalSettings::default()),
            project: "proj".into(),
            timeout: Duration::from_secs(30),
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
            tokio::join!(exec.run(job, tx, cancel), collect);
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

    fn executor(root: &TempDir) -> LocalExecutor {
        LocalExecutor::new(root.0.join("ws"), Duration::from_millis(500))
    }

    #[tokio::test]
    async fn stdout_and_stderr_arrive_exactly() {
        let tmp = TempDir::new();
        let ran = run(
            &executor(&tmp),
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
        let exec = executor(&tmp);
        assert_eq!(run(&exec, sh("true")).await.outcome, Outcome::Exited(0));
        assert_eq!(run(&exec, sh("exit 3")).await.outcome, Outcome::Exited(3));
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
        let ran = run(
            &executor(&tmp),
            job(CommandSpec::Argv(vec!["no-such-program-rdev".into()])),
        )
        .await;
        assert!(
            matches!(ran.outcome, Outcome::FailedToStart(_)),
            "{:?}",
            ran.outcome
        );
        let ran = run(&executor(&tmp), job(CommandSpec::Argv(vec![]))).await;
        assert!(
            matches!(ran.outcome, Outcome::FailedToStart(_)),
            "{:?}",
            ran.outcome
        );
    }

    fn process_gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // Field 3, after the parenthesised name, is the state; Z = zombie.
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    async fn wait_gone(pid: i32) -> bool {
        for _ in 0..40 {
            if process_gone(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let tmp = TempDir::new();
        let mut j = sh("sleep 1000 & echo $! ; sleep 1000");
        j.timeout = Duration::from_secs(1);
        let started = Instant::now();
        let ran = run(&executor(&tmp), j).await;
        assert_eq!(ran.outcome, Outcome::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let pid: i32 = String::from_utf8_lossy(&ran.stdout)
            .trim()
            .parse()
            .expect("background pid");
        assert!(
            wait_gone(pid).await,
            "background process {pid} survived the timeout"
        );
    }

    #[tokio::test]
    async fn term_is_followed_by_kill_after_the_grace_period() {
        let tmp = TempDir::new();
        // The ignored SIGTERM is inherited by `sleep`: only SIGKILL ends them.
        let mut j = sh("trap '' TERM; sleep 1000 & echo $!; sleep 1000");
        j.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let ran = run(&executor(&tmp), j).await;
        assert_eq!(ran.outcome, Outcome::TimedOut);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(750) && took < Duration::from_secs(5),
            "took {took:?}"
        );
        let pid: i32 = String::from_utf8_lossy(&ran.stdout)
            .trim()
            .parse()
            .expect("background pid");
        assert!(
            wait_gone(pid).await,
            "background process {pid} survived SIGKILL"
        );
    }

    #[tokio::test]
    async fn cancel_stops_the_command() {
        let tmp = TempDir::new();
        let exec = executor(&tmp);
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let ran = run_with(&exec, sh("sleep 1000"), 16, cancel).await;
        assert_eq!(ran.outcome, Outcome::Cancelled);
    }

    #[tokio::test]
    async fn exited_command_does_not_wait_for_background_children() {
        let tmp = TempDir::new();
        let started = Instant::now();
        let ran = run(&executor(&tmp), sh("sleep 1000 & echo started")).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        assert_eq!(ran.stdout, b"started\n");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn environment_is_built_from_scratch() {
        let tmp = TempDir::new();
        let mut j = sh("env");
        j.env = BTreeMap::from([
            ("FOO".into(), "bar".into()),
            ("PROJECT_VAR".into(), "x y".into()),
        ]);
        let ran = run(&executor(&tmp), j).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        let text = String::from_utf8(ran.stdout).expect("utf-8 env");
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
        let home = vars.get("HOME").expect("HOME is set");
        assert!(home.ends_with("/ws/proj"), "{home}");
        for (name, _) in std::env::vars() {
            if !allowed.contains(name.as_str()) {
                assert!(
                    !vars.contains_key(name.as_str()),
                    "worker variable {name} leaked"
                );
            }
        }
    }

    #[tokio::test]
    async fn command_runs_in_its_workdir() {
        let tmp = TempDir::new();
        let mut j = sh("pwd");
        j.executor = ExecutorConfig::Local(LocalSettings {
            workdir: Some("a/b".into()),
        });
        let ran = run(&executor(&tmp), j).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        let pwd = String::from_utf8_lossy(&ran.stdout);
        assert!(pwd.trim_end().ends_with("/ws/a/b"), "{pwd}");
    }

    #[tokio::test]
    async fn symlink_out_of_the_workspace_is_refused() {
        let tmp = TempDir::new();
        let outside = tmp.0.join("outside");
        std::fs::create_dir_all(&outside).expect("outside dir");
        std::fs::create_dir_all(tmp.0.join("ws")).expect("root");
        std::os::unix::fs::symlink(&outside, tmp.0.join("ws/evil")).expect("symlink");
        let exec = executor(&tmp);
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
        let mut j = sh("cat; echo done");
        j.stdin = Some(b"hello\nworld\n".to_vec());
        let ran = run(&executor(&tmp), j).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        assert_eq!(ran.stdout, b"hello\nworld\ndone\n");
        // Without stdin the command reads /dev/null and does not hang.
        let ran = run(&executor(&tmp), sh("cat; echo eof")).await;
        assert_eq!(ran.stdout, b"eof\n");
    }

    #[tokio::test]
    async fn large_output_flows_through_a_small_channel() {
        let tmp = TempDir::new();
        let five_mb = 5 * 1024 * 1024;
        let j = sh(&format!(
            "head -c {five_mb} /dev/zero; head -c 1000 /dev/zero >&2"
        ));
        let ran = run_with(&executor(&tmp), j, 1, CancellationToken::new()).await;
        assert_eq!(ran.outcome, Outcome::Exited(0));
        assert_eq!(ran.stdout.len(), five_mb);
        assert_eq!(ran.stderr.len(), 1000);
        assert!(ran.max_piece <= MAX_CHUNK_BYTES);
    }
}

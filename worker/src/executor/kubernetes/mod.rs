//! The `kubernetes` executor: runs a command in one of a project's pods
//! through the `exec` subresource (`kube` over a websocket speaking
//! `v5.channel.k8s.io` or `v4.channel.k8s.io`).
//!
//! 1. **Pod**: chosen by [`rdev_shared::kube`] (shared with the API's file
//!    operations): the Running + Ready pod of the project's selector that has
//!    the wanted container and the fewest commands of this worker, pod lists
//!    cached for a few seconds, every API call under one circuit breaker.
//! 2. **Exec**: exec has no environment, working-directory or "kill"
//!    parameter, and closing the exec stream does not kill the remote
//!    process. So the worker execs `/bin/sh -c <wrapper>` ([`script::wrapper_script`]):
//!    the wrapper makes itself the leader of a new process group (`setsid`
//!    when it is not one already), records its pid in
//!    `${TMPDIR:-/tmp}/rdev-<run id>.pid`, exports the variables, `cd`s into
//!    the workdir and runs the command. Standard input is read by
//!    `head -c <len>` inside the wrapper, so the command sees end-of-file
//!    without the exec stream's stdin ever being closed (closing it ends the
//!    whole session on `v4`).
//! 3. **Output** is read in pieces of at most 64 KiB into the same bounded
//!    channel as local commands; the exit code comes from the status channel
//!    (`NonZeroExitCode` with an `ExitCode` cause).
//! 4. **Timeout, cancel and a lost stream**: a second exec into the same
//!    container runs [`script::kill_script`]: SIGTERM to the recorded process group
//!    and to every process carrying the run's `RDEV_RUN_ID` (so `setsid`
//!    and double-forked children are found too), SIGKILL after the grace
//!    period. Then the first session is closed. A stream that ends without
//!    an exit status (the connection to the API server was lost) is
//!    treated the same way before the command is recorded as
//!    `executor_lost`: no command keeps running unrecorded. A worker that
//!    dies cannot stop anything, so each run also has a watchdog in the pod
//!    that runs the same stop script once the command's timeout and two
//!    grace periods (+5 s) have passed (see [`script::wrapper_script`]).
//!
//! A dead API server fails commands at once ("kubernetes API circuit open")
//! instead of tying up worker slots. The stop exec alone bypasses the
//! breaker: stopping a running command matters more than sparing the API
//! one call.
//!
//! Modules: [`script`] (the shell scripts run in the pod), `input` (an
//! interactive command's input, signals and the stop exec); this file holds
//! the session of one command.
//!
//! Requires `/bin/sh` in the container; `setsid` (util-linux or busybox) for
//! process-group kills when the runtime does not already start exec'd
//! processes as group leaders; a writable `$TMPDIR` or `/tmp` for the pid
//! file (without it, timeout and cancel only close the session).

mod input;
pub mod script;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachedProcess, TerminalSize};
use rdev_shared::breaker::{BreakerConfig, BreakerState};
use rdev_shared::db::output::MAX_CHUNK_BYTES;
use rdev_shared::domain::{ExecutorConfig, OutputStream};
use rdev_shared::interactive::TtySize;
use rdev_shared::kube::{ExecStreams, Identity, KubeClient, KubeClientSettings};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Executor, InputRx, Job, Outcome, OutputTx, RunFuture, spawn_reader};
use input::Remote;
pub use rdev_shared::kube::{KubeError, sh_quote};
pub use script::{RUN_ID_VAR, kill_script, signal_script, wrapper_script};

/// After the remote process was told to stop, how long the exec session may
/// take to report its end before it is closed anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to wait for buffered output after a session was closed without
/// a status (nothing more can arrive; only a slow sink makes it matter).
const ABORTED_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the Kubernetes executor.
#[derive(Clone, Copy, Debug)]
pub struct KubeSettings {
    /// How long a pod list is reused.
    pub pod_cache_ttl: Duration,
    /// Limit on one API call (a list, or opening an exec session).
    pub api_timeout: Duration,
    /// Seconds between SIGTERM and SIGKILL on timeout or cancel.
    pub kill_grace: Duration,
    /// The circuit breaker around the API.
    pub breaker: BreakerConfig,
}

impl Default for KubeSettings {
    fn default() -> Self {
        Self {
            pod_cache_ttl: Duration::from_secs(5),
            api_timeout: Duration::from_secs(15),
            kill_grace: Duration::from_secs(5),
            breaker: BreakerConfig::default(),
        }
    }
}

impl KubeSettings {
    fn client(&self) -> KubeClientSettings {
        KubeClientSettings {
            pod_cache_ttl: self.pod_cache_ttl,
            api_timeout: self.api_timeout,
            breaker: self.breaker,
            identity: Identity::WORKER,
            kubeconfig: None,
        }
    }
}

/// Runs commands in pods through the Kubernetes API.
#[derive(Debug)]
pub struct KubernetesExecutor {
    kube: KubeClient,
    settings: KubeSettings,
}

impl KubernetesExecutor {
    /// An executor whose client is created on first use: in-cluster
    /// configuration when `KUBERNETES_SERVICE_HOST` is set, the kubeconfig
    /// (`KUBECONFIG`, `~/.kube/config`) otherwise.
    pub fn new(settings: KubeSettings) -> Self {
        Self {
            kube: KubeClient::new(settings.client()),
            settings,
        }
    }

    /// An executor using `client` (tests, or a caller that built its own).
    pub fn with_client(client: kube::Client, settings: KubeSettings) -> Self {
        Self {
            kube: KubeClient::with_client(client, settings.client()),
            settings,
        }
    }

    /// State of the API circuit breaker.
    pub fn breaker_state(&self) -> BreakerState {
        self.kube.breaker_state()
    }

    /// Keeps `gauge` (`circuit_breaker_state{target="kubernetes"}`) equal to
    /// the breaker's state from now on. Only the first gauge set is used.
    pub fn set_state_gauge(&self, gauge: prometheus::IntGauge) {
        self.kube.set_state_gauge(gauge);
    }

    async fn execute(
        &self,
        job: Job,
        output: OutputTx,
        input: Option<InputRx>,
        cancel: CancellationToken,
    ) -> Outcome {
        let ExecutorConfig::Kubernetes(project) = &job.executor else {
            return Outcome::FailedToStart("not a kubernetes project".into());
        };
        let run_id = format!("{:016x}", rand::random::<u64>());
        let script = match wrapper_script(&job, project, &run_id, self.settings.kill_grace) {
            Ok(s) => s,
            Err(e) => return Outcome::FailedToStart(e.to_string()),
        };
        let client = match self.kube.client().await {
            Ok(c) => c.clone(),
            Err(e) => return Outcome::FailedToStart(e.to_string()),
        };
        let stdin = exec_stdin(&job);
        let argv = ["/bin/sh".to_owned(), "-c".to_owned(), script];
        let interactive = job.stdin_pipe && input.is_some();
        let started = tokio::select! {
            r = self.kube.exec(project, &argv, ExecStreams {
                stdin: stdin.is_some() || interactive,
                stderr: true,
                tty: job.tty.is_some(),
                max_buf: MAX_CHUNK_BYTES,
            }) => r,
            () = cancel.cancelled() => return Outcome::Cancelled,
        };
        let (mut attached, slot) = match started {
            Ok(x) => x,
            Err(e) => return Outcome::FailedToStart(e.to_string()),
        };
        let pod = slot.pod().to_owned();
        let container = slot.container().map(str::to_owned);
        tracing::debug!(
            pod,
            namespace = project.namespace,
            run_id,
            "exec session open"
        );

        let remote = Remote {
            client: &client,
            namespace: &project.namespace,
            pod: &pod,
            container: container.as_deref(),
            run_id: &run_id,
        };
        let resize = terminal_resizer(&mut attached, job.tty).await;
        let pump = match (input, interactive) {
            (Some(input), true) => {
                Some(self.apply_input(input, attached.stdin(), resize, job.tty.is_some(), remote))
            }
            _ => None,
        };
        let stdin_task = hold_stdin(stdin, attached.stdin());
        let readers = spawn_readers(&mut attached, output);

        let Some(status) = attached.take_status() else {
            return Outcome::FailedToStart("exec session has no status channel".into());
        };
        let (outcome, clean_end) = self
            .wait_for_end(status, pump, remote, job.timeout, &cancel)
            .await;
        close_session(attached, clean_end, stdin_task, readers).await;
        drop(slot);
        outcome
    }

    /// Waits for the session's exit status, or stops the remote command on
    /// timeout or cancel (or when the stream ends without a status). Returns
    /// the outcome, and whether the session reported a status.
    async fn wait_for_end<S, P>(
        &self,
        status: S,
        pump: Option<P>,
        remote: Remote<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> (Outcome, bool)
    where
        S: Future<Output = Option<Status>>,
        P: Future<Output = ()>,
    {
        let mut status = std::pin::pin!(status);
        let mut pump = std::pin::pin!(async move {
            match pump {
                Some(p) => p.await,
                None => std::future::pending().await,
            }
        });
        let mut pump_done = false;
        loop {
            break tokio::select! {
                // Input ended early (the worker is done with it): keep waiting.
                () = &mut pump, if !pump_done => {
                    pump_done = true;
                    continue;
                }
                st = &mut status => {
                    if st.is_some() {
                        (outcome_of(st), true)
                    } else {
                        // The stream ended without a status: the remote process
                        // may still run. Stop it before the end is recorded.
                        self.stop_remote(remote).await;
                        (Outcome::ExecutorLost(format!(
                            "the exec stream to pod {} was lost (no exit status); the remote command was stopped",
                            remote.pod
                        )), false)
                    }
                }
                () = tokio::time::sleep(timeout) => {
                    self.stop_remote(remote).await;
                    (Outcome::TimedOut, settles(status.as_mut()).await)
                }
                () = cancel.cancelled() => {
                    self.stop_remote(remote).await;
                    (Outcome::Cancelled, settles(status.as_mut()).await)
                }
            };
        }
    }
}

/// What the exec stream's stdin carries first: the secret values (the
/// wrapper reads each by its length), then the command's stdin. Never in
/// the exec request's URL (the API server's logs) or the pod's process list.
fn exec_stdin(job: &Job) -> Option<Vec<u8>> {
    let mut first: Vec<u8> = Vec::new();
    for (_, value) in &job.secrets.env {
        first.extend_from_slice(value.expose().as_bytes());
    }
    if let Some(d) = &job.stdin {
        first.extend_from_slice(d);
    }
    (!first.is_empty()).then_some(first)
}

/// The session's resize channel, after setting the terminal to the size the
/// client asked for (the runtime's own default is arbitrary).
async fn terminal_resizer(
    attached: &mut AttachedProcess,
    tty: Option<TtySize>,
) -> Option<futures::channel::mpsc::Sender<TerminalSize>> {
    let mut resize = attached.terminal_size();
    if let (Some(size), Some(r)) = (tty, resize.as_mut()) {
        use futures::SinkExt;
        let _ = r
            .send(TerminalSize {
                width: size.cols,
                height: size.rows,
            })
            .await;
    }
    resize
}

/// Writes `data` to the session's stdin and keeps the writer open until
/// the task is aborted at the session's end: see the module docs.
fn hold_stdin(
    data: Option<Vec<u8>>,
    writer: Option<impl AsyncWrite + Unpin + Send + 'static>,
) -> Option<JoinHandle<()>> {
    let (data, mut writer) = (data?, writer?);
    Some(tokio::spawn(async move {
        if writer.write_all(&data).await.is_ok() {
            let _ = writer.flush().await;
        }
        std::future::pending::<()>().await;
        drop(writer);
    }))
}

/// One reader task per output stream of the session, into `output`.
fn spawn_readers(attached: &mut AttachedProcess, output: OutputTx) -> Vec<JoinHandle<()>> {
    let mut readers = Vec::with_capacity(2);
    if let Some(out) = attached.stdout() {
        readers.push(spawn_reader(out, OutputStream::Stdout, output.clone()));
    }
    if let Some(err) = attached.stderr() {
        readers.push(spawn_reader(err, OutputStream::Stderr, output.clone()));
    }
    readers
}

/// Whether the session reports its status within [`SETTLE_TIMEOUT`] of the
/// remote command being told to stop.
async fn settles<S: Future<Output = Option<Status>>>(status: Pin<&mut S>) -> bool {
    tokio::time::timeout(SETTLE_TIMEOUT, status)
        .await
        .is_ok_and(|s| s.is_some())
}

/// Ends the session and collects its output. After a status, kube's
/// message loop ends by itself and closes the output pipes (the readers
/// then see EOF): let it, rather than aborting it mid-way. Otherwise close
/// the session now; pipes of an aborted loop are never closed, so those
/// readers get a bounded drain.
async fn close_session(
    attached: AttachedProcess,
    clean_end: bool,
    stdin_task: Option<JoinHandle<()>>,
    mut readers: Vec<JoinHandle<()>>,
) {
    if !clean_end {
        attached.abort();
    }
    let loop_ended_cleanly = matches!(
        tokio::time::timeout(SETTLE_TIMEOUT, attached.join()).await,
        Ok(Ok(()))
    );
    if let Some(t) = stdin_task {
        t.abort();
    }
    let drain = futures::future::join_all(readers.iter_mut());
    if loop_ended_cleanly {
        let _ = drain.await;
    } else if tokio::time::timeout(ABORTED_DRAIN_TIMEOUT, drain)
        .await
        .is_err()
    {
        for r in &readers {
            r.abort();
        }
    }
}

impl Executor for KubernetesExecutor {
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

/// How the exec session ended, from its status channel.
fn outcome_of(status: Option<Status>) -> Outcome {
    let Some(status) = status else {
        return Outcome::FailedToStart(
            "the exec session ended without an exit status (connection to the Kubernetes API lost)"
                .into(),
        );
    };
    if let Some(code) = rdev_shared::kube::exit_code(&status) {
        return Outcome::Exited(code);
    }
    let why = status
        .message
        .or(status.reason)
        .unwrap_or_else(|| "unknown error".into());
    Outcome::FailedToStart(format!("exec failed: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_come_from_the_status_channel() {
        let broken = Status {
            status: Some("Failure".into()),
            message: Some("container not found (\"app\")".into()),
            reason: Some("InternalError".into()),
            ..Default::default()
        };
        assert_eq!(
            outcome_of(Some(broken)),
            Outcome::FailedToStart("exec failed: container not found (\"app\")".into())
        );
        assert!(matches!(outcome_of(None), Outcome::FailedToStart(_)));
    }
}

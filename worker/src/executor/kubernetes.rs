//! The `kubernetes` executor: runs a command in one of a project's pods
//! through the `exec` subresource (`kube` over a websocket speaking
//! `v5.channel.k8s.io` or `v4.channel.k8s.io`).
//!
//! 1. **Pod**: the pods matching the project's label selector are listed
//!    (cached for a few seconds, bounded), the Running + Ready ones that have
//!    the wanted container are sorted by name, and the one this worker runs
//!    the fewest commands in wins (ties: the first by name). Without a
//!    configured container, commands go to the pod's
//!    `kubectl.kubernetes.io/default-container`, else its first container.
//! 2. **Exec**: exec has no environment, working-directory or "kill"
//!    parameter, and closing the exec stream does not kill the remote
//!    process. So the worker execs `/bin/sh -c <wrapper>` ([`wrapper_script`]):
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
//!    container runs [`kill_script`]: SIGTERM to the recorded process group
//!    and to every process carrying the run's `RDEV_RUN_ID` (so `setsid`
//!    and double-forked children are found too), SIGKILL after the grace
//!    period. Then the first session is closed. A stream that ends without
//!    an exit status (the connection to the API server was lost) is
//!    treated the same way before the command is recorded as
//!    `executor_lost`: no command keeps running unrecorded. A worker that
//!    dies cannot stop anything, so each run also has a watchdog in the pod
//!    that runs the same stop script once the command's timeout and two
//!    grace periods (+5 s) have passed (see [`wrapper_script`]).
//!
//! Every call to the API goes through a circuit breaker, so a dead API server
//! fails commands at once ("kubernetes API circuit open") instead of tying up
//! worker slots. The stop exec alone bypasses it: stopping a running command
//! matters more than sparing the API one call.
//!
//! Requires `/bin/sh` in the container; `setsid` (util-linux or busybox) for
//! process-group kills when the runtime does not already start exec'd
//! processes as group leaders; a writable `$TMPDIR` or `/tmp` for the pid
//! file (without it, timeout and cancel only close the session).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, AttachedProcess, ListParams};
use kube::{Api, Client};
use moka::future::Cache;
use prometheus::IntGauge;
use rdev_shared::breaker::{Breaker, BreakerConfig, BreakerState};
use rdev_shared::db::output::MAX_CHUNK_BYTES;
use rdev_shared::domain::{
    CommandSpec, ExecutorConfig, KubernetesSettings as KubeProject, OutputStream, validate_env_name,
};
use rdev_shared::interactive::{Input, InputSignal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::{Executor, InputRx, Job, Outcome, OutputTx, RunFuture, spawn_reader};

/// Distinct (namespace, selector) pod lists kept in the cache.
const POD_CACHE_CAPACITY: u64 = 1024;

/// After the remote process was told to stop, how long the exec session may
/// take to report its end before it is closed anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to wait for buffered output after a session was closed without
/// a status (nothing more can arrive; only a slow sink makes it matter).
const ABORTED_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the stop script waits for the pid file of a command that has
/// only just started.
const PIDFILE_WAIT_S: u32 = 5;

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

/// Why a command could not run in a pod. The `Display` text becomes the
/// command's `error`, so it says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    /// The breaker refuses calls after repeated API failures.
    #[error("kubernetes API circuit open; retry in {0}s")]
    CircuitOpen(u64),
    /// Neither in-cluster configuration nor a kubeconfig was usable.
    #[error("no Kubernetes client configuration: {0}")]
    Config(String),
    /// The selector matches no pod at all.
    #[error("no pod matches selector {selector} in namespace {namespace}")]
    NoPod {
        /// Project namespace.
        namespace: String,
        /// Project selector.
        selector: String,
    },
    /// Pods match, but none is Running and Ready.
    #[error(
        "no ready pod matches selector {selector} in namespace {namespace} ({found} found, none Running and Ready)"
    )]
    NotReady {
        /// Project namespace.
        namespace: String,
        /// Project selector.
        selector: String,
        /// Pods matching the selector.
        found: usize,
    },
    /// Ready pods match, but none has the project's container.
    #[error(
        "no ready pod matching selector {selector} in namespace {namespace} has a container named {container}"
    )]
    NoContainer {
        /// Project namespace.
        namespace: String,
        /// Project selector.
        selector: String,
        /// Project container.
        container: String,
    },
    /// RBAC refused the call (403).
    #[error(
        "worker's service account may not {action} in namespace {namespace} (add a RoleBinding to the rdev-worker role there)"
    )]
    Forbidden {
        /// What was refused: "list pods" or "exec into pods".
        action: &'static str,
        /// Project namespace.
        namespace: String,
    },
    /// Connection refused, TLS or timeout: the API server did not answer.
    #[error("kubernetes API unreachable: {0}")]
    Unreachable(String),
    /// Any other answer of the API server.
    #[error("kubernetes API refused to {action} ({code}): {message}")]
    Api {
        /// What was attempted.
        action: &'static str,
        /// HTTP status.
        code: u16,
        /// The API's message.
        message: String,
    },
    /// The job cannot be expressed as a remote command.
    #[error("{0}")]
    Invalid(String),
}

/// A pod as far as choosing one is concerned.
#[derive(Clone, Debug)]
struct Candidate {
    name: String,
    ready: bool,
    containers: Vec<String>,
    /// Where commands go when the project names no container: the
    /// `kubectl.kubernetes.io/default-container` annotation, else the first.
    default_container: Option<String>,
}

/// Runs commands in pods through the Kubernetes API.
pub struct KubernetesExecutor {
    /// Created on first use, so workers without Kubernetes projects never
    /// need a cluster.
    client: OnceCell<Client>,
    settings: KubeSettings,
    breaker: Breaker,
    /// `circuit_breaker_state{target="kubernetes"}`, once metrics exist.
    state_gauge: OnceLock<IntGauge>,
    /// (namespace, selector) → pods, for `pod_cache_ttl`.
    pods: Cache<(String, String), Arc<Vec<Candidate>>>,
    /// (namespace, pod) → commands this worker runs there.
    busy: Arc<Mutex<HashMap<(String, String), usize>>>,
}

impl fmt::Debug for KubernetesExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesExecutor")
            .field("settings", &self.settings)
            .field("client_ready", &self.client.initialized())
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl KubernetesExecutor {
    /// An executor whose client is created on first use: in-cluster
    /// configuration when `KUBERNETES_SERVICE_HOST` is set, the kubeconfig
    /// (`KUBECONFIG`, `~/.kube/config`) otherwise.
    pub fn new(settings: KubeSettings) -> Self {
        Self::build(OnceCell::new(), settings)
    }

    /// An executor using `client` (tests, or a caller that built its own).
    pub fn with_client(client: Client, settings: KubeSettings) -> Self {
        Self::build(OnceCell::new_with(Some(client)), settings)
    }

    fn build(client: OnceCell<Client>, settings: KubeSettings) -> Self {
        Self {
            client,
            breaker: Breaker::new(settings.breaker),
            state_gauge: OnceLock::new(),
            pods: Cache::builder()
                .max_capacity(POD_CACHE_CAPACITY)
                .time_to_live(settings.pod_cache_ttl)
                .build(),
            busy: Arc::default(),
            settings,
        }
    }

    /// State of the API circuit breaker.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Keeps `gauge` (`circuit_breaker_state{target="kubernetes"}`) equal to
    /// the breaker's state from now on. Only the first gauge set is used.
    pub fn set_state_gauge(&self, gauge: IntGauge) {
        gauge.set(self.breaker.state().as_gauge());
        let _ = self.state_gauge.set(gauge);
    }

    async fn client(&self) -> Result<&Client, KubeError> {
        self.client
            .get_or_try_init(|| async {
                // kube's rustls needs a process-wide provider; the worker may
                // already have installed one, which is fine.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let config = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                    kube::Config::incluster().map_err(|e| KubeError::Config(e.to_string()))?
                } else {
                    kube::Config::infer()
                        .await
                        .map_err(|e| KubeError::Config(e.to_string()))?
                };
                Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))
            })
            .await
    }

    /// Runs one API call under the breaker and the call timeout. Answers of
    /// the API (even 4xx) count as successes: a misconfigured project must
    /// not open the circuit for every other project.
    async fn call<T>(
        &self,
        action: &'static str,
        namespace: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, KubeError> {
        let acquired = self.breaker.acquire();
        publish_state(&self.breaker, self.state_gauge.get());
        if let Err(refused) = acquired {
            return Err(KubeError::CircuitOpen(refused.retry_in.as_secs().max(1)));
        }
        let mut call = BreakerCall {
            breaker: &self.breaker,
            gauge: self.state_gauge.get(),
            reported: false,
        };
        match tokio::time::timeout(self.settings.api_timeout, fut).await {
            Ok(Ok(value)) => {
                call.report(true);
                Ok(value)
            }
            Ok(Err(e)) => {
                let (err, api_answered) = classify(e, action, namespace);
                call.report(api_answered);
                Err(err)
            }
            Err(_) => {
                call.report(false);
                Err(KubeError::Unreachable(format!(
                    "no answer within {}s",
                    self.settings.api_timeout.as_secs()
                )))
            }
        }
    }

    async fn candidates(
        &self,
        client: &Client,
        project: &KubeProject,
    ) -> Result<Arc<Vec<Candidate>>, KubeError> {
        let key = (project.namespace.clone(), project.selector.clone());
        // Concurrent misses for one key share a single list call.
        self.pods
            .try_get_with(key, async {
                let api: Api<Pod> = Api::namespaced(client.clone(), &project.namespace);
                let params = ListParams::default().labels(&project.selector);
                let list = self
                    .call("list pods", &project.namespace, api.list(&params))
                    .await?;
                Ok::<_, KubeError>(Arc::new(list.items.iter().map(candidate).collect()))
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// Chooses a pod and counts the command against it until the slot drops.
    fn pick(&self, project: &KubeProject, pods: &[Candidate]) -> Result<Slot, KubeError> {
        let namespace = project.namespace.clone();
        let selector = project.selector.clone();
        if pods.is_empty() {
            return Err(KubeError::NoPod {
                namespace,
                selector,
            });
        }
        let mut ready: Vec<&Candidate> = pods.iter().filter(|p| p.ready).collect();
        if ready.is_empty() {
            return Err(KubeError::NotReady {
                namespace,
                selector,
                found: pods.len(),
            });
        }
        if let Some(container) = &project.container {
            ready.retain(|p| p.containers.iter().any(|c| c == container));
            if ready.is_empty() {
                return Err(KubeError::NoContainer {
                    namespace,
                    selector,
                    container: container.clone(),
                });
            }
        }
        ready.sort_by(|a, b| a.name.cmp(&b.name));
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let load = |p: &&&Candidate| {
            busy.get(&(namespace.clone(), p.name.clone()))
                .copied()
                .unwrap_or(0)
        };
        // `min_by_key` keeps the first of equals: the first by name.
        let Some(chosen) = ready.iter().min_by_key(load) else {
            return Err(KubeError::NotReady {
                namespace,
                selector,
                found: pods.len(),
            });
        };
        let key = (namespace, chosen.name.clone());
        *busy.entry(key.clone()).or_insert(0) += 1;
        Ok(Slot {
            busy: self.busy.clone(),
            key,
            container: project
                .container
                .clone()
                .or_else(|| chosen.default_container.clone()),
        })
    }

    /// Chooses a pod and opens the exec session. A pod that went away since
    /// the list was cached (404) or cannot take an exec (400: not running,
    /// no such container) makes it list again and retry once.
    async fn start(
        &self,
        client: &Client,
        project: &KubeProject,
        script: &str,
        with_stdin: bool,
        tty: bool,
    ) -> Result<(AttachedProcess, Slot), KubeError> {
        let key = (project.namespace.clone(), project.selector.clone());
        let api: Api<Pod> = Api::namespaced(client.clone(), &project.namespace);
        let mut retried = false;
        loop {
            let pods = self.candidates(client, project).await?;
            let slot = self.pick(project, &pods)?;
            let pod = slot.key.1.clone();
            // With a terminal, stderr is merged into it (the API server
            // refuses a separate stderr then).
            let mut params = AttachParams::default()
                .stdin(with_stdin)
                .stdout(true)
                .stderr(!tty)
                .tty(tty)
                .max_stdin_buf_size(MAX_CHUNK_BYTES)
                .max_stdout_buf_size(MAX_CHUNK_BYTES)
                .max_stderr_buf_size(MAX_CHUNK_BYTES);
            if let Some(c) = &slot.container {
                params = params.container(c.clone());
            }
            let exec = api.exec(&pod, ["/bin/sh", "-c", script], &params);
            match self.call("exec into pods", &project.namespace, exec).await {
                Ok(attached) => return Ok((attached, slot)),
                Err(KubeError::Api { code, .. }) if (code == 400 || code == 404) && !retried => {
                    tracing::info!(pod, code, "pod cannot take the exec; listing pods again");
                    self.pods.invalidate(&key).await;
                    retried = true;
                }
                Err(e) => {
                    self.pods.invalidate(&key).await;
                    return Err(e);
                }
            }
        }
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
        let client = match self.client().await {
            Ok(c) => c.clone(),
            Err(e) => return Outcome::FailedToStart(e.to_string()),
        };
        // Secret values travel on the exec stream's stdin, ahead of the
        // command's own input: never in the exec request's URL (the API
        // server's logs) or the pod's process list.
        let mut first: Vec<u8> = Vec::new();
        for (_, value) in &job.secrets.env {
            first.extend_from_slice(value.expose().as_bytes());
        }
        if let Some(d) = &job.stdin {
            first.extend_from_slice(d);
        }
        let stdin = (!first.is_empty()).then_some(first);
        let interactive = job.stdin_pipe && input.is_some();
        let started = tokio::select! {
            r = self.start(&client, project, &script, stdin.is_some() || interactive, job.tty.is_some()) => r,
            () = cancel.cancelled() => return Outcome::Cancelled,
        };
        let (mut attached, slot) = match started {
            Ok(x) => x,
            Err(e) => return Outcome::FailedToStart(e.to_string()),
        };
        let pod = slot.key.1.clone();
        let container = slot.container.clone();
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
        let mut resize = attached.terminal_size();
        if let (Some(size), Some(r)) = (job.tty, resize.as_mut()) {
            // The terminal starts at the size the client asked for (the
            // runtime's own default is arbitrary).
            use futures::SinkExt;
            let _ = r
                .send(kube::api::TerminalSize {
                    width: size.cols,
                    height: size.rows,
                })
                .await;
        }
        let pump = match (input, interactive) {
            (Some(input), true) => {
                Some(self.apply_input(input, attached.stdin(), resize, job.tty.is_some(), remote))
            }
            _ => None,
        };
        // The writer stays open until the session ends: see the module docs.
        let stdin_task = match (stdin, attached.stdin()) {
            (Some(data), Some(mut writer)) => Some(tokio::spawn(async move {
                if writer.write_all(&data).await.is_ok() {
                    let _ = writer.flush().await;
                }
                std::future::pending::<()>().await;
                drop(writer);
            })),
            _ => None,
        };
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = attached.stdout() {
            readers.push(spawn_reader(out, OutputStream::Stdout, output.clone()));
        }
        if let Some(err) = attached.stderr() {
            readers.push(spawn_reader(err, OutputStream::Stderr, output.clone()));
        }
        drop(output);

        let Some(status) = attached.take_status() else {
            return Outcome::FailedToStart("exec session has no status channel".into());
        };
        let mut status = std::pin::pin!(status);
        let mut pump = std::pin::pin!(async move {
            match pump {
                Some(p) => p.await,
                None => std::future::pending().await,
            }
        });
        let mut pump_done = false;
        let (outcome, clean_end) = loop {
            break tokio::select! {
                // Input ended early (the worker is done with it): keep waiting.
                () = &mut pump, if !pump_done => {
                    pump_done = true;
                    continue;
                }
                st = &mut status => {
                    let clean = st.is_some();
                    if !clean {
                        // The stream ended without a status: the remote process
                        // may still run. Stop it before the end is recorded.
                        self.stop_remote(&client, &project.namespace, &pod, container.as_deref(), &run_id).await;
                        (Outcome::ExecutorLost(format!(
                            "the exec stream to pod {pod} was lost (no exit status); the remote command was stopped"
                        )), false)
                    } else {
                        (outcome_of(st), true)
                    }
                }
                () = tokio::time::sleep(job.timeout) => {
                    self.stop_remote(&client, &project.namespace, &pod, container.as_deref(), &run_id).await;
                    (Outcome::TimedOut, tokio::time::timeout(SETTLE_TIMEOUT, &mut status).await.is_ok_and(|s| s.is_some()))
                }
                () = cancel.cancelled() => {
                    self.stop_remote(&client, &project.namespace, &pod, container.as_deref(), &run_id).await;
                    (Outcome::Cancelled, tokio::time::timeout(SETTLE_TIMEOUT, &mut status).await.is_ok_and(|s| s.is_some()))
                }
            };
        };
        // After a status, kube's message loop ends by itself and closes the
        // output pipes (the readers then see EOF): let it, rather than
        // aborting it mid-way. Otherwise close the session now; pipes of an
        // aborted loop are never closed, so those readers get a bounded drain.
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
        drop(slot);
        outcome
    }

    /// Applies an interactive command's input in order: bytes to the exec
    /// stream's stdin, end-of-file (a close of the stdin channel, which
    /// needs `v5.channel.k8s.io`; on a terminal, Ctrl-D), terminal sizes on
    /// the resize channel, signals (`INT`/`QUIT` on a terminal as their
    /// control characters, like a key press; others through a second exec
    /// to the command's process group and marked processes).
    async fn apply_input(
        &self,
        mut input: InputRx,
        mut writer: Option<tokio::io::WriteHalf<tokio::io::SimplexStream>>,
        mut resize: Option<futures::channel::mpsc::Sender<kube::api::TerminalSize>>,
        tty: bool,
        remote: Remote<'_>,
    ) {
        use futures::SinkExt;
        while let Some(event) = input.recv().await {
            match event {
                Input::Data { data } => {
                    if let Some(w) = writer.as_mut()
                        && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                    {
                        writer = None;
                    }
                }
                Input::Eof if tty => {
                    if let Some(w) = writer.as_mut() {
                        let _ = w.write_all(&[0x04]).await;
                    }
                }
                // The stream sees end-of-file only once its writer shuts
                // down; kube then closes the stdin channel (v5) or, on
                // v4, which cannot, the whole session.
                Input::Eof => {
                    if let Some(mut w) = writer.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Input::Resize { size } => {
                    if let Some(r) = resize.as_mut() {
                        let _ = r
                            .send(kube::api::TerminalSize {
                                width: size.cols,
                                height: size.rows,
                            })
                            .await;
                    }
                }
                Input::Signal { signal } => {
                    let key = match signal {
                        InputSignal::Int if tty => Some(0x03),
                        InputSignal::Quit if tty => Some(0x1c),
                        _ => None,
                    };
                    match (key, writer.as_mut()) {
                        (Some(k), Some(w)) => {
                            let _ = w.write_all(&[k]).await;
                        }
                        _ => {
                            let script = signal_script(remote.run_id, signal.as_str());
                            if let Err(e) = self
                                .exec_script(&remote, &script, self.settings.api_timeout)
                                .await
                            {
                                tracing::warn!(run_id = remote.run_id, %signal, error = %e, "could not signal the remote command");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Runs [`kill_script`] in the pod: SIGTERM to the command's process
    /// group, SIGKILL after the grace period. Bypasses the breaker.
    async fn stop_remote(
        &self,
        client: &Client,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        run_id: &str,
    ) {
        let remote = Remote {
            client,
            namespace,
            pod,
            container,
            run_id,
        };
        let script = kill_script(run_id, self.settings.kill_grace);
        let budget = self.settings.api_timeout
            + self.settings.kill_grace
            + Duration::from_secs(u64::from(PIDFILE_WAIT_S) + 5);
        match self.exec_script(&remote, &script, budget).await {
            Ok(()) => tracing::debug!(pod, run_id, "remote command stopped"),
            Err(e) => {
                tracing::warn!(pod, run_id, error = %e, "could not stop the remote command")
            }
        }
    }

    /// Runs a shell script in the command's container (a second exec;
    /// bypasses the breaker) and waits up to `budget` for it to succeed.
    async fn exec_script(
        &self,
        r: &Remote<'_>,
        script: &str,
        budget: Duration,
    ) -> Result<(), String> {
        let api: Api<Pod> = Api::namespaced(r.client.clone(), r.namespace);
        let mut params = AttachParams::default()
            .stdin(false)
            .stdout(false)
            .stderr(true);
        if let Some(c) = r.container {
            params = params.container(c);
        }
        let pod = r.pod;
        let stop = async {
            let mut attached = api
                .exec(pod, ["/bin/sh", "-c", script], &params)
                .await
                .map_err(|e| e.to_string())?;
            let mut errors = Vec::new();
            if let Some(mut err) = attached.stderr() {
                let _ = (&mut err).take(4096).read_to_end(&mut errors).await;
                let _ = tokio::io::copy(&mut err, &mut tokio::io::sink()).await;
            }
            let status = match attached.take_status() {
                Some(s) => s.await,
                None => None,
            };
            match status {
                Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
                other => Err(format!(
                    "{}{}",
                    other.and_then(|s| s.message).unwrap_or_default(),
                    String::from_utf8_lossy(&errors)
                )),
            }
        };
        tokio::time::timeout(budget, stop)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

/// Where a command runs, for the scripts that stop or signal it.
#[derive(Clone, Copy)]
struct Remote<'a> {
    client: &'a Client,
    namespace: &'a str,
    pod: &'a str,
    container: Option<&'a str>,
    run_id: &'a str,
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

/// One command counted against a pod; uncounted on drop.
struct Slot {
    busy: Arc<Mutex<HashMap<(String, String), usize>>>,
    /// (namespace, pod).
    key: (String, String),
    /// The container to exec into (`None`: the API server's choice).
    container: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.remove(&self.key);
            }
        }
    }
}

/// An acquired breaker permit. A call dropped before it reported (its
/// command was cancelled mid-call) counts as a failure, so a half-open
/// breaker can never stay half-open forever.
struct BreakerCall<'a> {
    breaker: &'a Breaker,
    gauge: Option<&'a IntGauge>,
    reported: bool,
}

fn publish_state(breaker: &Breaker, gauge: Option<&IntGauge>) {
    if let Some(g) = gauge {
        g.set(breaker.state().as_gauge());
    }
}

impl BreakerCall<'_> {
    fn report(&mut self, ok: bool) {
        self.reported = true;
        if ok {
            self.breaker.success();
        } else {
            let was_open = self.breaker.state() == BreakerState::Open;
            self.breaker.failure();
            if !was_open && self.breaker.state() == BreakerState::Open {
                tracing::warn!("kubernetes API circuit opened after repeated failures");
            }
        }
        publish_state(self.breaker, self.gauge);
    }
}

impl Drop for BreakerCall<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.failure();
            publish_state(self.breaker, self.gauge);
        }
    }
}

/// Maps a client error to a command error, and says whether the API server
/// answered (for the breaker: 5xx and 429 count as failures, other answers
/// do not).
fn classify(e: kube::Error, action: &'static str, namespace: &str) -> (KubeError, bool) {
    match e {
        kube::Error::Api(status) => {
            let code = status.code;
            if code == 403 {
                return (
                    KubeError::Forbidden {
                        action,
                        namespace: namespace.to_owned(),
                    },
                    true,
                );
            }
            let message = if status.message.is_empty() {
                status.reason.clone()
            } else {
                status.message.clone()
            };
            let answered = !(code >= 500 || code == 429);
            (
                KubeError::Api {
                    action,
                    code,
                    message,
                },
                answered,
            )
        }
        other => (KubeError::Unreachable(error_chain(&other)), false),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn candidate(pod: &Pod) -> Candidate {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let containers: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .filter(|c| containers.contains(c));
    let default_container = annotated.or(containers.first()).cloned();
    Candidate {
        ready: running && ready && !terminating && !name.is_empty(),
        name,
        containers,
        default_container,
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
    if status.status.as_deref() == Some("Success") {
        return Outcome::Exited(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode")
        && let Some(code) = exit_code_cause(&status)
    {
        return Outcome::Exited(code);
    }
    let why = status
        .message
        .or(status.reason)
        .unwrap_or_else(|| "unknown error".into());
    Outcome::FailedToStart(format!("exec failed: {why}"))
}

/// The `ExitCode` cause of a `NonZeroExitCode` status (the kubelet puts the
/// cause type in `reason`; `field` is accepted too).
fn exit_code_cause(status: &Status) -> Option<i32> {
    status
        .details
        .as_ref()?
        .causes
        .as_ref()?
        .iter()
        .find(|c| {
            c.reason.as_deref() == Some("ExitCode") || c.field.as_deref() == Some("ExitCode")
        })?
        .message
        .as_deref()?
        .trim()
        .parse()
        .ok()
}

/// Quotes `s` as one POSIX shell word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn pidfile(run_id: &str) -> String {
    format!("\"${{TMPDIR:-/tmp}}/rdev-{run_id}.pid\"")
}

/// The script `/bin/sh -c` runs in the pod for `job` (see the module docs).
/// Everything from the job is single-quoted; nothing is interpolated.
///
/// The run also gets a watchdog in the pod, in a session of its own and
/// started before `RDEV_RUN_ID` is exported (so the stop script spares it):
/// if the run still goes `timeout + 2 × grace + 5 s` after it started, the
/// watchdog runs [`kill_script`] itself. That bounds a remote command whose
/// worker died (SIGKILL, node lost) and so never stopped it; the watchdog
/// exits within a second of the run's end (it watches the pid file).
pub fn wrapper_script(
    job: &Job,
    project: &KubeProject,
    run_id: &str,
    grace: Duration,
) -> Result<String, KubeError> {
    let has_nul = |s: &str| s.contains('\0');
    let deadline_s = (job.timeout + grace * 2).as_secs() + WATCHDOG_MARGIN_S;
    let watchdog = format!(
        "i=0\nwhile [ $i -lt {deadline_s} ]; do sleep 1; i=$((i+1)); if [ -n \"$f\" ] && [ ! -e \"$f\" ]; then exit 0; fi; done\n{}",
        kill_script(run_id, grace)
    );
    // RDEV_RUN_ID marks every process of the run (inherited through
    // `setsid` and double forks) for the stop script's sweep.
    let mut body = format!(
        "f={}\n{{ echo $$ > \"$f\"; }} 2>/dev/null || f=\n\
         w={}\n\
         {{ if command -v setsid >/dev/null 2>&1; then f=\"$f\" setsid /bin/sh -c \"$w\"; else f=\"$f\" /bin/sh -c \"$w\"; fi; }} </dev/null >/dev/null 2>&1 &\n\
         export {RUN_ID_VAR}={run_id}\n",
        pidfile(run_id),
        sh_quote(&watchdog)
    );
    for (k, v) in &job.env {
        validate_env_name(k).map_err(|m| KubeError::Invalid(format!("env {k}: {m}")))?;
        if has_nul(v) {
            return Err(KubeError::Invalid(format!("env {k}: contains NUL")));
        }
        body.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    // Each secret value: exactly its length read from stdin (`dd bs=1`
    // never reads ahead), the `x` keeps trailing newlines through `$( )`.
    for (k, v) in &job.secrets.env {
        validate_env_name(k).map_err(|m| KubeError::Invalid(format!("secret {k}: {m}")))?;
        body.push_str(&format!(
            "{k}=$(dd bs=1 count={} 2>/dev/null; echo x); {k}=${{{k}%x}}; export {k}\n",
            v.expose().len()
        ));
    }
    if let Some(dir) = &project.workdir {
        if has_nul(dir) {
            return Err(KubeError::Invalid("workdir contains NUL".into()));
        }
        body.push_str(&format!("cd {} || exit 1\n", sh_quote(dir)));
    }
    let command = match &job.spec {
        CommandSpec::Shell(line) => {
            if has_nul(line) {
                return Err(KubeError::Invalid("command contains NUL".into()));
            }
            format!("/bin/sh -c {}", sh_quote(line))
        }
        CommandSpec::Argv(argv) => {
            if argv.is_empty() {
                return Err(KubeError::Invalid("empty argv".into()));
            }
            if argv.iter().any(|a| has_nul(a)) {
                return Err(KubeError::Invalid("argv contains NUL".into()));
            }
            argv.iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    match job.stdin.as_deref() {
        Some(data) if !data.is_empty() => {
            body.push_str(&format!("head -c {} | {command}\n", data.len()));
        }
        // Interactive: the exec stream's stdin (or terminal) is its own. A
        // client's signals go to the whole process group: the wrapper
        // outlives them (a caught signal is reset to the default in the
        // command) so it reports the command's own exit status.
        _ if job.stdin_pipe => {
            body.push_str(&format!("trap : HUP INT QUIT USR1 USR2\n{command}\n"))
        }
        _ => body.push_str(&format!("{command} < /dev/null\n")),
    }
    body.push_str("c=$?\n[ -n \"$f\" ] && rm -f \"$f\"\nexit $c\n");
    // Outer part: become a process-group leader when not one already. Only
    // when the current group is known and differs: `setsid` forks (and its
    // parent exits at once) when called by a group leader.
    Ok(format!(
        "s={}\n\
         {{ read -r _ _ _ _ g _ < /proc/$$/stat; }} 2>/dev/null\n\
         if [ -n \"$g\" ] && [ \"$g\" != \"$$\" ] && command -v setsid >/dev/null 2>&1; then exec setsid /bin/sh -c \"$s\"; fi\n\
         eval \"$s\"\n",
        sh_quote(&body)
    ))
}

/// Seconds the watchdog of a run waits beyond its timeout and two grace
/// periods (the worker's own timeout handling normally comes first).
const WATCHDOG_MARGIN_S: u64 = 5;

/// The script that sends `signal` (a name such as `TERM`) to run
/// `run_id`'s process group and every process carrying its `RDEV_RUN_ID`.
pub fn signal_script(run_id: &str, signal: &str) -> String {
    format!(
        "f={pidfile}\n\
         p=\n\
         {{ read -r p < \"$f\"; }} 2>/dev/null\n\
         case $p in *[!0-9]*) p=;; esac\n\
         [ -n \"$p\" ] && {{ kill -{signal} -$p 2>/dev/null || kill -{signal} $p 2>/dev/null; }}\n\
         for d in /proc/[0-9]*; do tr '\\0' '\\n' < \"$d/environ\" 2>/dev/null | grep -qx '{RUN_ID_VAR}={run_id}' && kill -{signal} \"${{d#/proc/}}\" 2>/dev/null; done\n\
         exit 0\n",
        pidfile = pidfile(run_id)
    )
}

/// Variable the wrapper exports to every process of a run.
pub const RUN_ID_VAR: &str = "RDEV_RUN_ID";

/// The script that stops run `run_id`: SIGTERM to its process group (or its
/// pid, if it could not lead a group) and to every process whose
/// environment carries `RDEV_RUN_ID=<run_id>` (children that left the group
/// with `setsid` or a double fork; needs `tr` and `grep`, else only the
/// group is stopped), SIGKILL to what is left once `grace` has passed.
/// Exits 0 when there is nothing to stop.
pub fn kill_script(run_id: &str, grace: Duration) -> String {
    let grace_s = grace.as_secs().max(1);
    format!(
        "f={pidfile}\n\
         i=0\n\
         while [ ! -s \"$f\" ] && [ $i -lt {PIDFILE_WAIT_S} ]; do sleep 1; i=$((i+1)); done\n\
         p=\n\
         {{ read -r p < \"$f\"; }} 2>/dev/null\n\
         case $p in *[!0-9]*) p=;; esac\n\
         marked() {{ for d in /proc/[0-9]*; do tr '\\0' '\\n' < \"$d/environ\" 2>/dev/null | grep -qx '{RUN_ID_VAR}={run_id}' && echo \"${{d#/proc/}}\"; done; }}\n\
         sig() {{ [ -n \"$p\" ] && {{ kill -$1 -$p 2>/dev/null || kill -$1 $p 2>/dev/null; }}; for q in $(marked); do [ \"$q\" = \"$$\" ] || kill -$1 $q 2>/dev/null; done; }}\n\
         alive() {{ [ -n \"$p\" ] && {{ kill -0 -$p || kill -0 $p; }} 2>/dev/null && return 0; [ -n \"$(marked)\" ]; }}\n\
         sig TERM\n\
         i=0\n\
         while [ $i -lt {grace_s} ] && alive; do sleep 1; i=$((i+1)); done\n\
         sig KILL\n\
         rm -f \"$f\"\n\
         exit 0\n",
        pidfile = pidfile(run_id)
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn exit_codes_come_from_the_status_channel() {
        let ok = Status {
            status: Some("Success".into()),
            ..Default::default()
        };
        assert_eq!(outcome_of(Some(ok)), Outcome::Exited(0));
        let failed = Status {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("42".into()),
                    field: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(outcome_of(Some(failed)), Outcome::Exited(42));
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

    #[test]
    fn env_names_are_checked_again() {
        let job = Job {
            secrets: Default::default(),
            name: "c".into(),
            spec: CommandSpec::Shell("true".into()),
            env: [("BAD NAME".to_owned(), "x".to_owned())].into(),
            stdin: None,
            stdin_pipe: false,
            tty: None,
            executor: ExecutorConfig::default(),
            project: "p".into(),
            timeout: Duration::from_secs(1),
            network: rdev_shared::containment::NetworkMode::Host,
            limits: rdev_shared::containment::ResourceLimits::default(),
        };
        let project = KubeProject {
            namespace: "ns".into(),
            selector: "app=x".into(),
            container: None,
            workdir: None,
        };
        assert!(matches!(
            wrapper_script(&job, &project, "1", Duration::from_secs(1)),
            Err(KubeError::Invalid(_))
        ));
    }
}

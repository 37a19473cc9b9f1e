//! Executors run one command and report how it ended. Output goes into a
//! bounded channel: when the consumer is slow the executor stops reading, the
//! child blocks on its pipe, and memory stays bounded.

pub mod kubernetes;
pub mod local;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use rdev_shared::containment::{ExecutorKind, ExecutorKinds, Limit, NetworkMode, ResourceLimits};
use rdev_shared::db::output::MAX_CHUNK_BYTES;
use rdev_shared::domain::{CommandSpec, ExecutorConfig, OutputStream};
use rdev_shared::interactive::{Input, TtySize};
use rdev_shared::metrics::Metrics;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::secrets::JobSecrets;

pub use kubernetes::{KubeSettings, KubernetesExecutor};
pub use local::LocalExecutor;

/// Why a Kubernetes command with secrets does not start: secret files, or
/// secrets of an interactive command (their values travel ahead of the
/// command's input on the exec stream's stdin, which a terminal would echo
/// and a live input stream would interleave).
pub const KUBE_SECRETS_ERROR: &str = "kubernetes projects take secrets as environment \
    variables of non-interactive commands only (no secret_files, no tty or stdin pipe)";

/// Capacity of the output channel between an executor and its sink.
pub const OUTPUT_CHANNEL_CAPACITY: usize = 16;

/// Sending side of a command's output: pieces of at most
/// [`rdev_shared::db::output::MAX_CHUNK_BYTES`] bytes.
pub type OutputTx = mpsc::Sender<(OutputStream, Bytes)>;

/// Input events for an interactive command, already in order.
pub type InputRx = mpsc::Receiver<Input>;

/// Everything an executor needs to run one command.
#[derive(Clone, Debug)]
pub struct Job {
    /// Names the command in the host's bookkeeping (its id).
    pub name: String,
    /// What to run.
    pub spec: CommandSpec,
    /// Environment: the project's, overridden by the command's.
    pub env: BTreeMap<String, String>,
    /// Fixed bytes for standard input; `None` = `/dev/null` (unless
    /// `stdin_pipe`).
    pub stdin: Option<Vec<u8>>,
    /// Standard input is fed while it runs (through the `input` of
    /// [`Executor::run`]).
    pub stdin_pipe: bool,
    /// A pseudo-terminal of this size.
    pub tty: Option<TtySize>,
    /// The project's executor settings.
    pub executor: ExecutorConfig,
    /// The project's name (the default workdir).
    pub project: String,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// The project's network mode (local commands).
    pub network: NetworkMode,
    /// The project's resource limits (local commands; absent ones take the
    /// server's defaults).
    pub limits: ResourceLimits,
    /// Secrets it named (environment variables and files).
    pub secrets: JobSecrets,
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code.
    Exited(i32),
    /// The process was killed by this signal (not by us).
    Signaled(i32),
    /// Killed because it exceeded its timeout.
    TimedOut,
    /// Killed because its cancel signal fired.
    Cancelled,
    /// Failed, or was killed, at a resource limit.
    Limit {
        /// Which limit.
        limit: Limit,
        /// Its exit code, if it exited.
        exit_code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// It never ran.
    FailedToStart(String),
    /// The local sandbox cannot run on this worker.
    SandboxUnavailable(String),
    /// The connection to where it ran was lost; the remote processes were
    /// stopped.
    ExecutorLost(String),
    /// An interactive command idle this long was stopped (set by the
    /// runner, not by executors).
    Idle(Duration),
}

/// Boxed future returned by [`Executor::run`], so the trait stays object-safe.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Runs commands somewhere.
pub trait Executor: Send + Sync {
    /// Runs `job`, sending its output to `output` and applying `input` (for
    /// interactive jobs), until it ends, times out or `cancel` fires.
    /// Dropping `output` (returning) tells the sink the output is complete.
    fn run(
        &self,
        job: Job,
        output: OutputTx,
        input: Option<InputRx>,
        cancel: CancellationToken,
    ) -> RunFuture<'_>;
}

/// Chooses the executor a project asks for.
#[derive(Debug)]
pub struct Executors {
    /// `None` when this worker does not run local projects.
    local: Option<LocalExecutor>,
    /// `None` when this worker does not run Kubernetes projects.
    kubernetes: Option<KubernetesExecutor>,
    /// What `RDEV_EXECUTORS` enabled, for error messages.
    enabled: ExecutorKinds,
}

impl Executors {
    /// The executors of this worker; `None` for a disabled kind.
    pub fn new(local: Option<LocalExecutor>, kubernetes: Option<KubernetesExecutor>) -> Self {
        let kinds: Vec<ExecutorKind> = [
            local.as_ref().map(|_| ExecutorKind::Local),
            kubernetes.as_ref().map(|_| ExecutorKind::Kubernetes),
        ]
        .into_iter()
        .flatten()
        .collect();
        Self {
            local,
            kubernetes,
            enabled: ExecutorKinds::only(&kinds),
        }
    }

    /// The local executor, when enabled.
    pub fn local(&self) -> Option<&LocalExecutor> {
        self.local.as_ref()
    }

    fn disabled(&self, kind: ExecutorKind) -> Outcome {
        Outcome::FailedToStart(format!(
            "the {} executor is disabled on this worker (RDEV_EXECUTORS={})",
            kind.as_str(),
            self.enabled
        ))
    }

    /// Reports executor state in `metrics` (the Kubernetes API breaker as
    /// `circuit_breaker_state{target="kubernetes"}`, warm sandboxes found
    /// and not found as `cache_hits_total`/`cache_misses_total`
    /// `{cache="warm_sandbox"}`).
    pub fn set_metrics(&self, metrics: &Metrics) {
        if let Some(local) = &self.local {
            local.sandbox().set_warm_counters(
                metrics
                    .cache_hits_total
                    .with_label_values(&["warm_sandbox"]),
                metrics
                    .cache_misses_total
                    .with_label_values(&["warm_sandbox"]),
            );
        }
        if let Some(kube) = &self.kubernetes {
            kube.set_state_gauge(
                metrics
                    .circuit_breaker_state
                    .with_label_values(&["kubernetes"]),
            );
        }
    }
}

impl Executor for Executors {
    fn run(
        &self,
        job: Job,
        output: OutputTx,
        input: Option<InputRx>,
        cancel: CancellationToken,
    ) -> RunFuture<'_> {
        match (&job.executor, &self.local, &self.kubernetes) {
            (ExecutorConfig::Local(_), Some(local), _) => local.run(job, output, input, cancel),
            // The API refuses these; a project changed to Kubernetes after
            // the command was queued ends here.
            (ExecutorConfig::Kubernetes(_), _, Some(_))
                if !job.secrets.files.is_empty()
                    || (!job.secrets.env.is_empty() && (job.stdin_pipe || job.tty.is_some())) =>
            {
                Box::pin(async move { Outcome::FailedToStart(KUBE_SECRETS_ERROR.into()) })
            }
            (ExecutorConfig::Kubernetes(_), _, Some(kube)) => kube.run(job, output, input, cancel),
            (executor, _, _) => {
                let outcome = self.disabled(executor.kind());
                Box::pin(async move { outcome })
            }
        }
    }
}

/// Reads a pipe in pieces of at most [`MAX_CHUNK_BYTES`]. A full channel
/// stalls the read (and so the child, or the exec stream): that is the
/// memory bound. If the sink is gone, the pipe is still drained so the
/// producer never blocks on it.
///
/// A piece never ends inside a UTF-8 character: the 1–3 bytes of a
/// character cut by the read are held back and start the next piece (SSE
/// sends text, and a character split across two events would turn into two
/// U+FFFD). Bytes that are not UTF-8 pass as they come.
pub(crate) fn spawn_reader<R>(mut pipe: R, stream: OutputStream, tx: OutputTx) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_CHUNK_BYTES];
        // Bytes of a cut character at the start of `buf`.
        let mut carry = 0;
        let mut sink_open = true;
        loop {
            match pipe.read(&mut buf[carry..]).await {
                Ok(0) => break,
                Ok(n) => {
                    let filled = carry + n;
                    let keep = incomplete_utf8_tail(&buf[..filled]);
                    let end = filled - keep;
                    if end > 0
                        && sink_open
                        && tx
                            .send((stream, Bytes::copy_from_slice(&buf[..end])))
                            .await
                            .is_err()
                    {
                        sink_open = false;
                    }
                    buf.copy_within(end..filled, 0);
                    carry = keep;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(stream = stream.as_str(), error = %e, "reading command output failed");
                    break;
                }
            }
        }
        if carry > 0 && sink_open {
            let _ = tx
                .send((stream, Bytes::copy_from_slice(&buf[..carry])))
                .await;
        }
    })
}

/// How many bytes at the end of `data` are the start of a UTF-8 character
/// whose remaining bytes have not arrived (0–3).
pub(crate) fn incomplete_utf8_tail(data: &[u8]) -> usize {
    // Look back at most 3 bytes for the lead byte of the last character.
    for back in 1..=3.min(data.len()) {
        let b = data[data.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: keep looking for the lead
        }
        let needed = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0, // ASCII or not UTF-8: nothing to hold back
        };
        return if back < needed { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cut_utf8_character_is_held_back() {
        use super::incomplete_utf8_tail as tail;
        assert_eq!(tail(b""), 0);
        assert_eq!(tail(b"abc"), 0);
        assert_eq!(tail("é".as_bytes()), 0);
        assert_eq!(tail(b"a\xc3"), 1);
        assert_eq!(tail(b"\xc3"), 1);
        assert_eq!(tail(b"a\xe2\x82"), 2);
        assert_eq!(tail("a€".as_bytes()), 0);
        assert_eq!(tail(b"a\xf0\x9f\x98"), 3);
        assert_eq!(tail("😀".as_bytes()), 0);
        // Not UTF-8: passed as it comes.
        assert_eq!(tail(b"a\xff"), 0);
        assert_eq!(tail(b"a\x80\x80\x80"), 0);
    }

    use rdev_shared::domain::KubernetesSettings as KubeProject;

    use super::*;

    #[tokio::test]
    async fn disabled_executors_fail_clearly() {
        let executors = Executors::new(None, None);
        let job = Job {
            name: "c".into(),
            spec: CommandSpec::Shell("true".into()),
            env: BTreeMap::new(),
            stdin: None,
            stdin_pipe: false,
            tty: None,
            executor: ExecutorConfig::Kubernetes(KubeProject {
                namespace: "ns".into(),
                selector: "app=x".into(),
                container: None,
                workdir: None,
            }),
            project: "p".into(),
            timeout: Duration::from_secs(1),
            network: NetworkMode::Host,
            limits: ResourceLimits::default(),
            secrets: JobSecrets::default(),
        };
        let (tx, _rx) = mpsc::channel(1);
        let outcome = executors
            .run(job.clone(), tx, None, CancellationToken::new())
            .await;
        assert_eq!(
            outcome,
            Outcome::FailedToStart(
                "the kubernetes executor is disabled on this worker (RDEV_EXECUTORS=)".into()
            )
        );
        let local = Job {
            executor: ExecutorConfig::default(),
            ..job
        };
        let (tx, _rx) = mpsc::channel(1);
        let outcome = executors
            .run(local, tx, None, CancellationToken::new())
            .await;
        assert!(
            matches!(&outcome, Outcome::FailedToStart(m) if m.starts_with("the local executor is disabled")),
            "{outcome:?}"
        );
    }
}

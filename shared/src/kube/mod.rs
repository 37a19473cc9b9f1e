//! The Kubernetes API as rdev uses it (feature `kube`): a lazily created
//! client, every call under one circuit breaker and a call timeout, the
//! choice of a project's pod, and exec sessions into it. The worker runs
//! commands through it; the API reads and writes the files of Kubernetes
//! projects through it. Both choose pods and count failures the same way.
//!
//! Pod choice ([`pods`]): the pods matching the project's label selector
//! are listed (cached for a few seconds, bounded), the Running + Ready ones
//! that have the wanted container are sorted by name, and the one this
//! process runs the fewest sessions in wins (ties: the first by name).
//! Without a configured container, sessions go to the pod's
//! `kubectl.kubernetes.io/default-container`, else its first container.
//!
//! Every call to the API goes through a circuit breaker, so a dead API
//! server fails at once ("kubernetes API circuit open") instead of tying up
//! slots. Answers of the API (even 4xx) count as successes: a misconfigured
//! project must not open the circuit for every other project.

mod pods;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, AttachedProcess};
use kube::{Api, Client};
use moka::future::Cache;
use prometheus::IntGauge;
use tokio::sync::OnceCell;

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::domain::KubernetesSettings as KubeProject;

pub use pods::Slot;
use pods::{Candidate, POD_CACHE_CAPACITY};

/// Who uses the Kubernetes API, for the errors that tell an operator which
/// role to bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// "worker", "API".
    pub who: &'static str,
    /// The ClusterRole its service account needs bound in the namespace.
    pub role: &'static str,
}

impl Identity {
    /// The worker (runs commands).
    pub const WORKER: Identity = Identity {
        who: "worker",
        role: "rdev-worker",
    };
    /// The API (reads and writes files).
    pub const API: Identity = Identity {
        who: "API",
        role: "rdev-worker-exec",
    };
}

/// Settings of the client.
#[derive(Clone, Debug)]
pub struct KubeClientSettings {
    /// How long a pod list is reused.
    pub pod_cache_ttl: Duration,
    /// Limit on one API call (a list, or opening an exec session).
    pub api_timeout: Duration,
    /// The circuit breaker around the API.
    pub breaker: BreakerConfig,
    /// Whose service account calls (for error messages).
    pub identity: Identity,
    /// A kubeconfig file to use instead of the in-cluster configuration or
    /// the default kubeconfig.
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// Why a call to a project's pods failed. The `Display` text is meant for
/// the user (a command's `error`, a problem's `detail`), so it says what to
/// fix.
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
        "{}'s service account may not {action} in namespace {namespace} (add a RoleBinding to the {} role there)", identity.who, identity.role
    )]
    Forbidden {
        /// Who was refused.
        identity: Identity,
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
    /// The request cannot be expressed as a remote command.
    #[error("{0}")]
    Invalid(String),
}

/// Streams of an exec session.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecStreams {
    /// Attach standard input.
    pub stdin: bool,
    /// Attach standard error (refused by the API server with a terminal).
    pub stderr: bool,
    /// Allocate a terminal.
    pub tty: bool,
    /// Largest piece read from or written to a stream at once.
    pub max_buf: usize,
}

/// A client of the Kubernetes API for exec sessions into projects' pods.
pub struct KubeClient {
    /// Created on first use, so processes without Kubernetes projects never
    /// need a cluster.
    client: OnceCell<Client>,
    settings: KubeClientSettings,
    breaker: Breaker,
    /// `circuit_breaker_state{target="kubernetes"}`, once metrics exist.
    state_gauge: OnceLock<IntGauge>,
    /// (namespace, selector) → pods, for `pod_cache_ttl`.
    pods: Cache<(String, String), Arc<Vec<Candidate>>>,
    /// (namespace, pod) → sessions this process has open there.
    busy: pods::Busy,
}

impl fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeClient")
            .field("settings", &self.settings)
            .field("client_ready", &self.client.initialized())
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl KubeClient {
    /// A client created on first use: in-cluster configuration when
    /// `KUBERNETES_SERVICE_HOST` is set, the kubeconfig (`KUBECONFIG`,
    /// `~/.kube/config`) otherwise.
    pub fn new(settings: KubeClientSettings) -> Self {
        Self::build(OnceCell::new(), settings)
    }

    /// A client using `client` (tests, or a caller that built its own).
    pub fn with_client(client: Client, settings: KubeClientSettings) -> Self {
        Self::build(OnceCell::new_with(Some(client)), settings)
    }

    fn build(client: OnceCell<Client>, settings: KubeClientSettings) -> Self {
        Self {
            client,
            breaker: Breaker::new(settings.breaker),
            state_gauge: OnceLock::new(),
            pods: Cache::builder()
                .max_capacity(POD_CACHE_CAPACITY)
                .time_to_live(settings.pod_cache_ttl)
                .build(),
            busy: Arc::new(Mutex::default()),
            settings,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &KubeClientSettings {
        &self.settings
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

    /// The underlying client, created on first use.
    pub async fn client(&self) -> Result<&Client, KubeError> {
        self.client
            .get_or_try_init(|| async {
                // kube's rustls needs a process-wide provider; the process
                // may already have installed one, which is fine.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let config = if let Some(path) = &self.settings.kubeconfig {
                    let kc = kube::config::Kubeconfig::read_from(path)
                        .map_err(|e| KubeError::Config(e.to_string()))?;
                    kube::Config::from_custom_kubeconfig(kc, &Default::default())
                        .await
                        .map_err(|e| KubeError::Config(e.to_string()))?
                } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
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
    /// the API (even 4xx) count as successes.
    pub async fn call<T>(
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
                let (err, api_answered) = classify(e, action, namespace, self.settings.identity);
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

    /// Chooses a pod of `project` and opens an exec session running `argv`
    /// there. A pod that went away since the list was cached (404) or cannot
    /// take an exec (400: not running, no such container) makes it list
    /// again and retry once. The session counts against the pod until the
    /// [`Slot`] drops.
    pub async fn exec(
        &self,
        project: &KubeProject,
        argv: &[String],
        streams: ExecStreams,
    ) -> Result<(AttachedProcess, Slot), KubeError> {
        let client = self.client().await?.clone();
        let key = (project.namespace.clone(), project.selector.clone());
        let api: Api<Pod> = Api::namespaced(client.clone(), &project.namespace);
        let mut retried = false;
        loop {
            let pods = self.candidates(&client, project).await?;
            let slot = pods::pick(&self.busy, project, &pods)?;
            let pod = slot.pod().to_owned();
            let mut params = AttachParams::default()
                .stdin(streams.stdin)
                .stdout(true)
                .stderr(streams.stderr && !streams.tty)
                .tty(streams.tty)
                .max_stdin_buf_size(streams.max_buf)
                .max_stdout_buf_size(streams.max_buf)
                .max_stderr_buf_size(streams.max_buf);
            if let Some(c) = slot.container() {
                params = params.container(c.to_owned());
            }
            let exec = api.exec(&pod, argv.iter().cloned(), &params);
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
                let params = kube::api::ListParams::default().labels(&project.selector);
                let list = self
                    .call("list pods", &project.namespace, api.list(&params))
                    .await?;
                Ok::<_, KubeError>(Arc::new(list.items.iter().map(pods::candidate).collect()))
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

/// An acquired breaker permit. A call dropped before it reported (its
/// caller was cancelled mid-call) counts as a failure, so a half-open
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

/// Maps a client error to a [`KubeError`], and says whether the API server
/// answered (for the breaker: 5xx and 429 count as failures, other answers
/// do not).
fn classify(
    e: kube::Error,
    action: &'static str,
    namespace: &str,
    identity: Identity,
) -> (KubeError, bool) {
    match e {
        kube::Error::Api(status) => {
            let code = status.code;
            if code == 403 {
                return (
                    KubeError::Forbidden {
                        identity,
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

/// The exit code an exec session's status channel reports: `Some(0)` for
/// `Success`, the `ExitCode` cause of a `NonZeroExitCode`, `None` for any
/// other failure (the exec itself failed).
pub fn exit_code(status: &Status) -> Option<i32> {
    if status.status.as_deref() == Some("Success") {
        return Some(0);
    }
    if status.reason.as_deref() != Some("NonZeroExitCode") {
        return None;
    }
    // The kubelet puts the cause type in `reason`; `field` is accepted too.
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
        assert_eq!(exit_code(&ok), Some(0));
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
        assert_eq!(exit_code(&failed), Some(42));
        let broken = Status {
            status: Some("Failure".into()),
            reason: Some("InternalError".into()),
            ..Default::default()
        };
        assert_eq!(exit_code(&broken), None);
    }

    #[test]
    fn forbidden_names_the_role_to_bind() {
        let e = KubeError::Forbidden {
            identity: Identity::WORKER,
            action: "exec into pods",
            namespace: "dev".into(),
        };
        assert_eq!(
            e.to_string(),
            "worker's service account may not exec into pods in namespace dev (add a RoleBinding to the rdev-worker role there)"
        );
    }
}

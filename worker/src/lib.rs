//! `rdev-worker`: takes run messages from RabbitMQ, claims each command in
//! PostgreSQL, runs it with an [`executor`], stores and streams its output
//! ([`output`]), and records how it ended (docs/ARCHITECTURE.md, "Bird's-eye view").
//!
//! Layers, bottom up: [`config`], [`error`] → [`head_tail`], [`secrets`]
//! (its types; `secrets::resolve` is used by the runner only) →
//! [`sandbox`] → [`executor`] → [`output`] → [`runner`] and [`http`] →
//! [`run`].

pub mod config;
pub mod error;
pub mod executor;
pub mod head_tail;
pub mod http;
pub mod interactive;
pub mod output;
pub mod runner;
pub mod sandbox;
pub mod secrets;
#[cfg(test)]
mod test_dir;

use std::sync::Arc;

use rdev_shared::containment::ExecutorKind;
use rdev_shared::db;
use rdev_shared::lifecycle::{CancellationToken, Running};

pub use config::Config;
pub use error::WorkerError;

use crate::executor::{Executors, KubeSettings, KubernetesExecutor, LocalExecutor};
use crate::runner::Worker;
use crate::sandbox::{Sandbox, SandboxStatus};

/// How long a worker waits at start for the migrations it needs.
const SCHEMA_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Connects, binds `cfg.listen` (`/health`, `/ready`, `/metrics`) and starts
/// consuming. Once `shutdown` is cancelled it stops consuming, lets running
/// commands finish for `drain_s`, stops the rest, and `task` completes.
pub async fn start(mut cfg: Config, shutdown: CancellationToken) -> Result<Running, WorkerError> {
    let worker_id = cfg.resolved_worker_id();
    let pool = db::pool(&cfg.db)?;
    let writes = db::key_lookup_pool(&cfg.db, runner::WRITE_CONNECTIONS)?;
    db::require_schema(&pool, SCHEMA_WAIT).await?;
    // Absolute from here on: the sandbox starts in `/`, where a relative
    // root (the default `./.rdev/workspaces`) would name nothing.
    cfg.workspace_root = std::fs::create_dir_all(&cfg.workspace_root)
        .and_then(|()| std::fs::canonicalize(&cfg.workspace_root))
        .map_err(|source| WorkerError::Workspace {
            path: cfg.workspace_root.display().to_string(),
            source,
        })?;
    let listen_error = |source| WorkerError::Listen {
        addr: cfg.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    tracing::info!(
        %addr,
        worker_id,
        concurrency = cfg.concurrency,
        workspace_root = %cfg.workspace_root.display(),
        "rdev-worker starting"
    );
    let executors = executors(&cfg, &worker_id).await;
    let worker = Arc::new(Worker::new(cfg, worker_id, pool.clone(), writes, executors));
    let readiness = http::OpsState {
        sandbox: worker.sandbox_status(),
        pool,
        consumer_connected: worker.consumer_connected(),
        metrics: worker.metrics(),
    };
    let task = tokio::spawn(run(worker, listener, readiness, shutdown));
    Ok(Running {
        addr,
        ops_addr: addr,
        task,
    })
}

/// The executors `cfg.executors` turns on.
async fn executors(cfg: &Config, worker_id: &str) -> Executors {
    let local = if cfg.runs(ExecutorKind::Local) {
        // One sandbox kept ready per slot, unless configured.
        let mut sandbox_cfg = cfg.sandbox.clone();
        sandbox_cfg.warm = sandbox_cfg.warm.or(Some(usize::from(cfg.concurrency)));
        let sandbox = Sandbox::start(
            &sandbox_cfg,
            cfg.limits.clone(),
            worker_id,
            &cfg.workspace_root,
        )
        .await;
        log_sandbox(&sandbox.status());
        Some(LocalExecutor::new(
            cfg.workspace_root.clone(),
            cfg.kill_grace(),
            Arc::new(sandbox),
        ))
    } else {
        None
    };
    let kubernetes = cfg.runs(ExecutorKind::Kubernetes).then(|| {
        KubernetesExecutor::new(KubeSettings {
            pod_cache_ttl: cfg.kube.pod_cache_ttl(),
            api_timeout: cfg.kube.api_timeout(),
            kill_grace: cfg.kill_grace(),
            ..KubeSettings::default()
        })
    });
    Executors::new(local, kubernetes)
}

/// Consumes until `shutdown`, then drains; the HTTP endpoints, heartbeat,
/// control and input followers run until every command has ended.
async fn run(
    worker: Arc<Worker>,
    listener: tokio::net::TcpListener,
    readiness: http::OpsState,
    shutdown: CancellationToken,
) {
    // Stops consuming when the caller cancels, or drops the task.
    let shutdown = shutdown.child_token();
    let _stop_when_dropped = shutdown.clone().drop_guard();
    // `done`: every command has ended (or the task was dropped).
    let done = CancellationToken::new();
    let _done_when_dropped = done.clone().drop_guard();
    let server = tokio::spawn({
        let done = done.clone();
        async move {
            axum::serve(listener, http::router(readiness))
                .with_graceful_shutdown(done.cancelled_owned())
                .await
        }
    });
    let heartbeat = tokio::spawn(runner::heartbeat(worker.clone(), done.clone()));
    let control = tokio::spawn(runner::control(worker.clone(), done.clone()));
    let input = tokio::spawn(interactive::follow_input(
        worker.amqp().clone(),
        worker.id().to_owned(),
        worker.input_router(),
        done.clone(),
    ));

    runner::consume(worker, shutdown).await;

    done.cancel();
    let _ = heartbeat.await;
    let _ = control.await;
    let _ = input.await;
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "health endpoint failed"),
        Err(e) => tracing::warn!(error = %e, "health endpoint task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("rdev-worker stopped");
}

/// Says at start what contains local commands; loud when nothing does.
fn log_sandbox(status: &SandboxStatus) {
    match status.mode {
        "bwrap" => tracing::info!(
            user = status.user,
            limits = status.limits,
            starter = status.starter.unwrap_or_default(),
            dev = status.dev.as_deref().unwrap_or_default(),
            "local commands run in a bubblewrap sandbox"
        ),
        "off" => tracing::warn!(
            user = status.user,
            limits = status.limits,
            starter = status.starter.unwrap_or_default(),
            "RDEV_LOCAL_SANDBOX=off: local commands run without a sandbox and can read this worker's files and processes; do not run untrusted commands"
        ),
        _ => tracing::error!(
            error = status.error.as_deref().unwrap_or(""),
            "the local sandbox cannot run here: local commands will fail with `sandbox_unavailable` (install bubblewrap, allow user namespaces, or set RDEV_LOCAL_SANDBOX=off for trusted commands only)"
        ),
    }
}

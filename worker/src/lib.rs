//! `rdev-worker`: takes run messages from RabbitMQ, claims each command in
//! PostgreSQL, runs it with an [`executor`], stores and streams its output
//! ([`output`]), and records how it ended (DESIGN.md §1, §4).
//!
//! Layers, bottom up: [`config`], [`error`] → [`retention`], [`secrets`]
//! (its types; `secrets::resolve` is used by the runner only) →
//! [`sandbox`] → [`executor`] → [`output`] → [`runner`] and [`http`] →
//! [`run`].

pub mod config;
pub mod error;
pub mod executor;
pub mod http;
pub mod interactive;
pub mod output;
pub mod retention;
pub mod runner;
pub mod sandbox;
pub mod secrets;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rdev_shared::containment::ExecutorKind;
use rdev_shared::db;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::WorkerError;

use crate::executor::{Executors, KubeSettings, KubernetesExecutor, LocalExecutor};
use crate::http::Readiness;
use crate::runner::Worker;
use crate::sandbox::{Sandbox, SandboxStatus};

/// Runs the worker until `shutdown` resolves, then stops consuming, lets
/// running commands finish for `drain_s`, stops the rest, and returns.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    run_with_addr(cfg, shutdown, None).await
}

/// How long a worker waits at start for the migrations it needs.
const SCHEMA_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Like [`run`], and sends the address the HTTP endpoints are bound to
/// (useful with port 0) once it is known.
pub async fn run_with_addr(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<oneshot::Sender<SocketAddr>>,
) -> Result<(), WorkerError> {
    let worker_id = cfg.resolved_worker_id();
    let pool = db::pool(&cfg.db)?;
    db::require_schema(&pool, SCHEMA_WAIT).await?;
    std::fs::create_dir_all(&cfg.workspace_root).map_err(|source| WorkerError::Workspace {
        path: cfg.workspace_root.display().to_string(),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| WorkerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| WorkerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    tracing::info!(
        %addr,
        worker_id,
        concurrency = cfg.concurrency,
        workspace_root = %cfg.workspace_root.display(),
        "rdev-worker starting"
    );

    let local = if cfg.runs(ExecutorKind::Local) {
        let sandbox = Sandbox::start(
            &cfg.sandbox,
            cfg.limits.clone(),
            &worker_id,
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
    let executors = Executors::new(
        local,
        cfg.runs(ExecutorKind::Kubernetes).then(|| {
            KubernetesExecutor::new(KubeSettings {
                pod_cache_ttl: cfg.kube.pod_cache_ttl(),
                api_timeout: cfg.kube.api_timeout(),
                kill_grace: cfg.kill_grace(),
                ..KubeSettings::default()
            })
        }),
    );
    let worker_amqp = cfg.amqp.clone();
    let worker_id_for_input = worker_id.clone();
    let worker = Arc::new(Worker::new(cfg, worker_id, pool.clone(), executors));

    // `stop`: stop taking commands. `done`: every command has ended.
    let stop = CancellationToken::new();
    let done = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested");
        stopper.cancel();
    });

    let readiness = Readiness {
        sandbox: worker.sandbox_status(),
        pool,
        consumer_connected: worker.consumer_connected(),
        metrics: worker.metrics(),
    };
    let http_done = done.clone();
    let server = tokio::spawn(async move {
        let app = http::router(readiness);
        axum::serve(listener, app)
            .with_graceful_shutdown(http_done.cancelled_owned())
            .await
    });
    let heartbeat = tokio::spawn(runner::heartbeat(worker.clone(), done.clone()));
    let control = tokio::spawn(runner::control(worker.clone(), done.clone()));
    let input = tokio::spawn(interactive::follow_input(
        worker_amqp,
        worker_id_for_input,
        worker.input_router(),
        done.clone(),
    ));

    runner::consume(worker, stop).await;

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
    Ok(())
}

/// Says at start what contains local commands; loud when nothing does.
fn log_sandbox(status: &SandboxStatus) {
    match status.mode {
        "bwrap" => tracing::info!(
            user = status.user,
            limits = status.limits,
            "local commands run in a bubblewrap sandbox"
        ),
        "off" => tracing::warn!(
            user = status.user,
            limits = status.limits,
            "RDEV_LOCAL_SANDBOX=off: local commands run without a sandbox and can read this worker's files and processes; do not run untrusted commands"
        ),
        _ => tracing::error!(
            error = status.error.as_deref().unwrap_or(""),
            "the local sandbox cannot run here: local commands will fail with `sandbox_unavailable` (install bubblewrap, allow user namespaces, or set RDEV_LOCAL_SANDBOX=off for trusted commands only)"
        ),
    }
}

//! `rdev-api`: the stateless HTTP edge of rdev. Authenticates, validates,
//! writes PostgreSQL, publishes commands, and relays live output over SSE.

pub mod archive;
pub mod config;
pub mod control;
pub mod frames;
pub mod http;
pub mod hub;
pub mod keycache;
pub mod limits;
pub mod pod_files;
pub mod policies;
pub mod serve;
pub mod workspace;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rdev_shared::db::{self, DbError};
use rdev_shared::mq::{Publisher, Topology};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ApiConfig;
use crate::http::AppState;
use crate::hub::OutputHub;
use crate::keycache::KeyCache;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Database set-up failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The socket could not be bound or served.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
}

/// A running API server.
pub struct Server {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The operations listener's address (`/metrics`).
    pub ops_addr: SocketAddr,
    /// Completes when the server has stopped.
    pub task: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

/// Builds the state, binds `cfg.listen`, and serves until `shutdown` resolves.
pub async fn start(
    cfg: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, ServeError> {
    let pool = db::pool(&cfg.db)?;
    if cfg.migrate {
        let applied = db::migrate_as_owner(&cfg.db, &pool).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "migrations applied");
        }
    }
    let instance = uuid::Uuid::now_v7().simple().to_string();
    let publisher = Publisher::new(cfg.amqp.clone(), format!("rdev-api {instance}"));
    let hub = OutputHub::new(cfg.amqp.clone(), &instance);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(hub.clone().run(stopped(stop_rx.clone())));
    let metrics = Arc::new(rdev_shared::metrics::Metrics::new("rdev-api"));
    // Key lookups that reach PostgreSQL get a quarter of the pool (at least
    // one connection): unknown tokens can never starve authenticated work.
    let keys = KeyCache::with_limits(
        cfg.cache_ttl,
        metrics.cache_hits_total.with_label_values(&["api_keys"]),
        metrics.cache_misses_total.with_label_values(&["api_keys"]),
        cfg.auth_failure_limit,
        (cfg.db.pool_size / 4).max(1),
    );
    let projects = Arc::new(control::ProjectCache::new(
        10_000,
        cfg.cache_ttl,
        metrics.cache_hits_total.with_label_values(&["projects"]),
        metrics.cache_misses_total.with_label_values(&["projects"]),
    ));
    tokio::spawn(control::listen(
        cfg.amqp.clone(),
        instance.clone(),
        keys.clone(),
        projects.clone(),
        stopped(stop_rx.clone()),
    ));
    // Connect early so the first request does not pay for it; failure is fine.
    let _ = publisher.channel().await;

    publisher.set_metrics(metrics.clone());
    let sse = limits::SseLimiter::new(
        cfg.sse_max_connections,
        cfg.sse_max_per_key,
        metrics.sse_connections_active.clone(),
    );
    // `/output` downloads: capped per key (the total is bounded by the
    // connection cap). Counted apart from the metrics registry.
    let downloads = limits::SseLimiter::new(
        cfg.max_connections,
        cfg.output_max_per_key,
        prometheus::IntGauge::new("output_downloads_active", "open /output downloads")
            .unwrap_or_else(|_| metrics.sse_connections_active.clone()),
    );
    let max_connections = cfg.max_connections;
    let write_timeout = cfg.write_timeout;
    // Ends when the server's state is dropped.
    let marker = rdev_shared::relay::PublishedMarker::spawn(pool.clone());
    let state = AppState {
        marker,
        metrics,
        sse,
        downloads,
        pool,
        publisher,
        hub,
        keys,
        projects,
        policies: policies::PolicyCache::new(),
        topology: Topology::new(cfg.amqp.prefix.clone()),
        pod_files: Arc::new(pod_files::PodFiles::from_settings(
            rdev_shared::kube::KubeClientSettings {
                pod_cache_ttl: std::time::Duration::from_secs(5),
                api_timeout: std::time::Duration::from_secs(15),
                breaker: rdev_shared::breaker::BreakerConfig::default(),
                identity: rdev_shared::kube::Identity::API,
                kubeconfig: cfg.kubeconfig.clone(),
            },
            cfg.files_idle_timeout,
        )),
        cfg: Arc::new(cfg.clone()),
        shutdown: stop_rx.clone(),
    };
    let ops = http::ops_router(state.clone());
    let app = http::router(state);
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let ops_listener = TcpListener::bind(cfg.ops_listen).await?;
    let ops_addr = ops_listener.local_addr()?;
    tracing::info!(%addr, %ops_addr, "rdev-api listening");
    tokio::spawn(async move {
        let served = axum::serve(ops_listener, ops)
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the operations listener stopped");
        }
    });
    let task = tokio::spawn(async move {
        serve::serve(listener, app, max_connections, write_timeout, async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
        Ok::<(), std::io::Error>(())
    });
    Ok(Server {
        addr,
        ops_addr,
        task,
    })
}

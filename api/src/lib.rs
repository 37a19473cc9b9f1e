//! `rdev-api`: the stateless HTTP edge of rdev. Authenticates, validates,
//! writes PostgreSQL, publishes commands, and relays live output over SSE.

pub mod admission;
pub mod archive;
pub mod config;
pub mod control;
pub mod frames;
pub mod group_commit;
pub mod http;
pub mod hub;
pub mod keycache;
pub mod pod_files;
pub mod policies;
pub mod rate_budgets;
pub mod serve;
pub mod workspace;

use std::sync::Arc;

use rdev_shared::db::{self, DbError};
use rdev_shared::lifecycle::{CancellationToken, Running};
use rdev_shared::mq::{Publisher, Topology};
use tokio::net::TcpListener;

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

/// Key lookups that reach PostgreSQL get this share of the pool (at least
/// one connection): unknown tokens can never starve authenticated work.
const KEY_LOOKUP_POOL_SHARE: usize = 4;
/// New commands' run messages being published at once; past this, a
/// command's message is left to the dispatcher's outbox relay.
const RUN_PUBLISHES_IN_FLIGHT: usize = 1024;

/// Builds the state, binds `cfg.listen` and `cfg.ops_listen`, and serves
/// until `shutdown` is cancelled; `task` then completes once every open
/// connection has finished.
pub async fn start(cfg: ApiConfig, shutdown: CancellationToken) -> Result<Running, ServeError> {
    // Stops everything when the caller cancels, or drops the task.
    let shutdown = shutdown.child_token();
    let pool = db::pool(&cfg.db)?;
    if cfg.migrate {
        let applied = db::migrate_as_owner(&cfg.db, &pool).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "migrations applied");
        }
    }
    let state = state(cfg.clone(), pool, shutdown.clone()).await;
    let ops = http::ops_router(state.clone());
    let app = http::router(state);
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let ops_listener = TcpListener::bind(cfg.ops_listen).await?;
    let ops_addr = ops_listener.local_addr()?;
    tracing::info!(%addr, %ops_addr, "rdev-api listening");
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let served = axum::serve(ops_listener, ops)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the operations listener stopped");
            }
        }
    });
    let (max_connections, write_timeout) = (cfg.max_connections, cfg.write_timeout);
    let task = tokio::spawn(async move {
        let _stop_when_dropped = shutdown.clone().drop_guard();
        serve::serve(listener, app, max_connections, write_timeout, shutdown).await;
        tracing::info!("rdev-api stopped");
    });
    Ok(Running {
        addr,
        ops_addr,
        task,
    })
}

/// The shared state of the handlers, with the background tasks it needs
/// (live output hub, control listener); they stop with `shutdown`.
async fn state(cfg: ApiConfig, pool: db::Pool, shutdown: CancellationToken) -> AppState {
    let instance = uuid::Uuid::now_v7().simple().to_string();
    let publisher = Publisher::new(cfg.amqp.clone(), format!("rdev-api {instance}"));
    let hub = OutputHub::new(cfg.amqp.clone(), &instance);
    tokio::spawn(hub.clone().run(shutdown.clone()));
    let metrics = Arc::new(rdev_shared::metrics::Metrics::new("rdev-api"));
    let cache_counters = |name: &str| {
        (
            metrics.cache_hits_total.with_label_values(&[name]),
            metrics.cache_misses_total.with_label_values(&[name]),
        )
    };
    let (hits, misses) = cache_counters("api_keys");
    let keys = KeyCache::with_limits(
        cfg.cache_ttl,
        hits,
        misses,
        cfg.auth_failure_limit,
        (cfg.db.pool_size / KEY_LOOKUP_POOL_SHARE).max(1),
    );
    let (hits, misses) = cache_counters("rate_budgets");
    let rate_budgets = Arc::new(rate_budgets::RateBudgets::new(hits, misses));
    let commits = group_commit::GroupCommit::spawn(pool.clone());
    let (hits, misses) = cache_counters("projects");
    let projects = Arc::new(control::ProjectCache::new(
        control::PROJECT_CACHE_ENTRIES,
        cfg.cache_ttl,
        hits,
        misses,
    ));
    tokio::spawn(control::listen(
        cfg.amqp.clone(),
        instance,
        keys.clone(),
        projects.clone(),
        shutdown.clone(),
    ));
    // Connect early so the first request does not pay for it; failure is fine.
    let _ = publisher.channel().await;
    publisher.set_metrics(metrics.clone());
    let sse = admission::Admission::new(
        cfg.sse_max_connections,
        cfg.sse_max_per_key,
        metrics.sse_connections_active.clone(),
    );
    // `/output` downloads: capped per key (the total is bounded by the
    // connection cap). Counted apart from the metrics registry.
    let downloads = admission::Admission::new(
        cfg.max_connections,
        cfg.output_max_per_key,
        prometheus::IntGauge::new("output_downloads_active", "open /output downloads")
            .unwrap_or_else(|_| metrics.sse_connections_active.clone()),
    );
    AppState {
        // The marker's task ends when the server's state is dropped.
        run_messages: rdev_shared::relay::BackgroundPublisher::new(
            publisher.clone(),
            rdev_shared::relay::PublishedMarker::spawn(pool.clone()),
            RUN_PUBLISHES_IN_FLIGHT,
        ),
        // Its task ends when the server's state is dropped.
        due: rdev_shared::db::notify::Notifier::spawn(
            pool.clone(),
            rdev_shared::db::webhooks::DUE_CHANNEL,
        ),
        metrics,
        sse,
        downloads,
        pool,
        publisher,
        hub,
        keys,
        rate_budgets,
        commits,
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
        cfg: Arc::new(cfg),
        shutdown,
    }
}

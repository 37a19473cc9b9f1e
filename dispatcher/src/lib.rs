//! `rdev-dispatcher`: webhook delivery ([`webhooks`]) and rdev's background
//! loops: the outbox relay, the reaper of commands whose worker stopped
//! heart-beating, and retention (audit log, rate-limit counters).

pub mod config;
pub mod reaper;
pub mod requeue;
pub mod retention;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rdev_shared::db::{self, DbError, Pool};
use rdev_shared::metrics::Metrics;
use rdev_shared::mq::Publisher;
use rdev_shared::relay;
use serde_json::json;
use tokio::sync::watch;

use crate::config::Config;

/// Rows one relay pass publishes at most.
const RELAY_BATCH: i64 = 500;

/// Errors that stop the dispatcher.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Database set-up failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The ops socket could not be bound.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// The webhook HTTP client could not be built.
    #[error("webhook client: {0}")]
    Http(#[from] reqwest::Error),
}

#[derive(Clone)]
struct Ops {
    pool: Pool,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
}

async fn render_metrics(State(ops): State<Ops>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            rdev_shared::metrics::CONTENT_TYPE,
        )],
        ops.metrics.render(Some(&ops.pool)),
    )
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(ops): State<Ops>) -> (StatusCode, Json<serde_json::Value>) {
    let db = db::ping(&ops.pool).await.is_ok();
    let mq = ops.publisher.channel().await.is_ok();
    let code = if db && mq {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok| if ok { "ok" } else { "unavailable" };
    (
        code,
        Json(json!({"postgres": word(db), "rabbitmq": word(mq)})),
    )
}

/// A running dispatcher.
pub struct Dispatcher {
    /// Address of the ops server.
    pub addr: SocketAddr,
    /// Completes when every loop has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the loops and the ops server; they stop when `shutdown` resolves.
pub async fn start(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Dispatcher, DispatcherError> {
    let pool = db::pool(&cfg.db)?;
    // Not before the schema this version needs is there.
    db::require_schema(&pool, Duration::from_secs(120)).await?;
    let publisher = Publisher::new(cfg.amqp.clone(), "rdev-dispatcher");
    let metrics = Arc::new(Metrics::new("rdev-dispatcher"));
    publisher.set_metrics(metrics.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(Ops {
            pool: pool.clone(),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
        });
    let ops = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "ops server failed");
            }
        }
    });
    let relay = tokio::spawn(relay_loop(
        pool.clone(),
        publisher.clone(),
        metrics.clone(),
        cfg.relay_interval,
        cfg.relay_min_age,
        stop_rx.clone(),
    ));
    let retention = tokio::spawn(retention::run(
        pool.clone(),
        cfg.retention(),
        cfg.retention_interval,
        metrics.clone(),
        stop_rx.clone(),
    ));
    let requeue = tokio::spawn(requeue::run(
        pool.clone(),
        publisher.clone(),
        cfg.requeue_after,
        stop_rx.clone(),
    ));
    let reaper = tokio::spawn(reaper::run(
        pool.clone(),
        publisher,
        Duration::from_secs(cfg.lost_after_s.max(1)),
        stop_rx.clone(),
    ));
    let (events, deliveries) = webhooks::spawn(
        pool,
        cfg.amqp.clone(),
        cfg.webhook_settings(),
        metrics,
        stop_rx,
    )?;
    tracing::info!(%addr, "rdev-dispatcher running");
    let task = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = tokio::join!(ops, relay, reaper, requeue, retention, events, deliveries);
    });
    Ok(Dispatcher { addr, task })
}

/// Publishes outbox rows left unpublished, every `interval`, until stopped.
async fn relay_loop(
    pool: Pool,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    interval: Duration,
    min_age: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        match pool.get().await {
            Ok(c) => match rdev_shared::db::outbox::pending_count(&c).await {
                Ok(n) => metrics.outbox_pending.set(n),
                Err(e) => tracing::debug!(error = %e, "cannot count the outbox"),
            },
            Err(e) => tracing::debug!(error = %e, "cannot count the outbox"),
        }
        // Drain in batches while there is a backlog.
        loop {
            match relay::relay_once(&pool, &publisher, min_age, RELAY_BATCH).await {
                Ok(pass) => {
                    if pass.published > 0 {
                        tracing::info!(published = pass.published, "outbox relay published rows");
                    }
                    if let Some(e) = pass.failed {
                        tracing::warn!(error = %e, "outbox relay: publish failed");
                        break;
                    }
                    if (pass.published as i64) < RELAY_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay pass failed");
                    break;
                }
            }
        }
    }
}

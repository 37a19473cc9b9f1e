//! `rdev-dispatcher`: webhook delivery ([`webhooks`]) and rdev's background
//! loops: the outbox relay, the reaper of commands whose worker stopped
//! heart-beating, and retention (audit log, rate-limit counters).

pub mod config;
pub mod ops;
pub mod reaper;
pub mod requeue;
pub mod retention;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use rdev_shared::db::{self, DbError, Pool};
use rdev_shared::lifecycle::{CancellationToken, Running};
use rdev_shared::metrics::Metrics;
use rdev_shared::mq::Publisher;
use rdev_shared::relay;

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

/// How long the dispatcher waits at start for the migrations it needs.
const SCHEMA_WAIT: Duration = Duration::from_secs(120);

/// Binds the operations endpoints and starts the loops; once `shutdown` is
/// cancelled they stop and `task` completes.
pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Running, DispatcherError> {
    let pool = db::pool(&cfg.db)?;
    // Not before the schema this version needs is there.
    db::require_schema(&pool, SCHEMA_WAIT).await?;
    let publisher = Publisher::new(cfg.amqp.clone(), "rdev-dispatcher");
    let metrics = Arc::new(Metrics::new("rdev-dispatcher"));
    publisher.set_metrics(metrics.clone());
    // Stops the loops when the caller cancels, or drops the task.
    let stop = shutdown.child_token();

    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let app = ops::router(ops::OpsState {
        pool: pool.clone(),
        publisher: publisher.clone(),
        metrics: metrics.clone(),
    });
    let ops = tokio::spawn({
        let stop = stop.clone();
        async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
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
        stop.clone(),
    ));
    let retention = tokio::spawn(retention::run(
        pool.clone(),
        cfg.retention(),
        cfg.retention_interval,
        metrics.clone(),
        stop.clone(),
    ));
    let requeue = tokio::spawn(requeue::run(
        pool.clone(),
        publisher.clone(),
        cfg.requeue_after,
        stop.clone(),
    ));
    let reaper = tokio::spawn(reaper::run(
        pool.clone(),
        publisher,
        Duration::from_secs(cfg.lost_after_s.max(1)),
        stop.clone(),
    ));
    let (events, deliveries) = webhooks::spawn(
        pool,
        cfg.db.clone(),
        cfg.amqp.clone(),
        cfg.webhook_settings(),
        metrics,
        stop.clone(),
    )?;
    tracing::info!(%addr, "rdev-dispatcher running");
    let task = tokio::spawn(async move {
        let _stop_when_dropped = stop.clone().drop_guard();
        stop.cancelled().await;
        let _ = tokio::join!(ops, relay, reaper, requeue, retention, events, deliveries);
        tracing::info!("rdev-dispatcher stopped");
    });
    Ok(Running {
        addr,
        ops_addr: addr,
        task,
    })
}

/// Publishes outbox rows left unpublished, every `interval`, until stopped.
async fn relay_loop(
    pool: Pool,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    interval: Duration,
    min_age: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
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

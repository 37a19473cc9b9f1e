//! `/health` (liveness: always 200) and `/ready` (200 only when PostgreSQL
//! answers and the command consumer is connected; otherwise 503 naming what
//! failed, in the body every rdev service answers: `rdev_shared::readiness`).
//! `/ready` also says what contains local commands
//! (`details.local_sandbox`); an unavailable sandbox does not make the
//! worker unready (it still runs Kubernetes commands and reports why local
//! ones fail).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use rdev_shared::db::{self, Pool};
use rdev_shared::metrics::Metrics;
use rdev_shared::readiness::{self, Readiness};
use serde_json::json;

use crate::sandbox::SandboxStatus;

/// How long the readiness probe waits for PostgreSQL.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/ready` looks at.
#[derive(Clone)]
pub struct OpsState {
    /// The worker's pool.
    pub pool: Pool,
    /// Set while the command consumer is connected.
    pub consumer_connected: Arc<AtomicBool>,
    /// The worker's metrics, rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// What contains local commands (`None`: the local executor is off).
    pub sandbox: Option<SandboxStatus>,
}

/// The router of the worker's HTTP endpoints.
pub fn router(state: OpsState) -> Router {
    let metrics = rdev_shared::metrics::route(state.metrics.clone(), state.pool.clone());
    Router::new()
        .route("/health", get(readiness::health))
        .route("/ready", get(ready))
        .route("/metrics", metrics)
        .with_state(state)
}

async fn ready(State(s): State<OpsState>) -> Readiness {
    let postgres = match tokio::time::timeout(PING_TIMEOUT, db::ping(&s.pool)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "readiness: PostgreSQL does not answer");
            false
        }
        Err(_) => {
            tracing::debug!("readiness: PostgreSQL timed out");
            false
        }
    };
    let rabbitmq = s.consumer_connected.load(Ordering::Relaxed);
    Readiness::of(postgres, rabbitmq).with_details(json!({ "local_sandbox": s.sandbox }))
}

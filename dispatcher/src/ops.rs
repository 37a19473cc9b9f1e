//! The dispatcher's operations endpoints: `/health`, `/ready` (the body
//! every rdev service answers, `rdev_shared::readiness`) and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use rdev_shared::db::{self, Pool};
use rdev_shared::metrics::Metrics;
use rdev_shared::mq::Publisher;
use rdev_shared::readiness::{self, Readiness};

/// What the endpoints look at.
#[derive(Clone)]
pub struct OpsState {
    /// The dispatcher's pool.
    pub pool: Pool,
    /// Its publisher (the relay's, the reaper's and the requeuer's).
    pub publisher: Arc<Publisher>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
}

/// The router of the operations endpoints.
pub fn router(state: OpsState) -> Router {
    let metrics = rdev_shared::metrics::route(state.metrics.clone(), state.pool.clone());
    Router::new()
        .route("/health", get(readiness::health))
        .route("/ready", get(ready))
        .route("/metrics", metrics)
        .with_state(state)
}

async fn ready(State(ops): State<OpsState>) -> Readiness {
    let postgres = db::ping(&ops.pool).await.is_ok();
    let rabbitmq = ops.publisher.channel().await.is_ok();
    Readiness::of(postgres, rabbitmq)
}

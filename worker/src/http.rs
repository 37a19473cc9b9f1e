//! `/health` (liveness: always 200) and `/ready` (200 only when PostgreSQL
//! answers and the command consumer is connected; otherwise 503 naming what
//! failed). `/ready` also says what contains local commands
//! (`details.local_sandbox`); an unavailable sandbox does not make the
//! worker unready (it still runs Kubernetes commands and reports why local
//! ones fail).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rdev_shared::db::{self, Pool};
use rdev_shared::metrics::Metrics;
use serde_json::{Value, json};

use crate::sandbox::SandboxStatus;

/// How long the readiness probe waits for PostgreSQL.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/ready` looks at.
#[derive(Clone)]
pub struct Readiness {
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
pub fn router(state: Readiness) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(s): State<Readiness>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            rdev_shared::metrics::CONTENT_TYPE,
        )],
        s.metrics.render(Some(&s.pool)),
    )
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(s): State<Readiness>) -> (StatusCode, Json<Value>) {
    let postgres = match tokio::time::timeout(PING_TIMEOUT, db::ping(&s.pool)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    };
    let rabbitmq = if s.consumer_connected.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err("consumer not connected".to_owned())
    };
    let ok = postgres.is_ok() && rabbitmq.is_ok();
    let describe = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "checks": { "postgres": describe(&postgres), "rabbitmq": describe(&rabbitmq) },
        "details": { "local_sandbox": s.sandbox },
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

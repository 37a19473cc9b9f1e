//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use rdev_shared::readiness::Readiness;
use serde::Serialize;

use super::AppState;

/// Answer of `GET /health`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// Liveness: touches no dependency.
#[utoipa::path(
    get,
    path = "/health",
    tag = "system",
    responses(
        (status = 200, description = "The process is alive", body = Health),
    ),
)]
pub async fn health() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// Readiness: 200 only when PostgreSQL and RabbitMQ answer; 503 naming what failed.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "system",
    responses(
        (status = 200, description = "PostgreSQL and RabbitMQ answer", body = Readiness),
        (status = 503, description = "A dependency is down; the body names which", body = Readiness),
    ),
)]
pub async fn ready(State(st): State<AppState>) -> impl IntoResponse {
    let postgres = rdev_shared::db::ping(&st.pool).await.is_ok();
    let rabbitmq = st.publisher.channel().await.is_ok() && st.hub.is_connected();
    Readiness::of(postgres, rabbitmq)
}

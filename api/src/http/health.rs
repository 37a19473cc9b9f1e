//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;

/// Liveness: touches no dependency.
pub async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 only when PostgreSQL and RabbitMQ answer; 503 naming what failed.
pub async fn ready(State(st): State<AppState>) -> impl IntoResponse {
    let db = rdev_shared::db::ping(&st.pool).await;
    let mq = st.publisher.channel().await;
    let hub = st.hub.is_connected();
    let body = json!({
        "postgres": if db.is_ok() { "ok" } else { "unavailable" },
        "rabbitmq": if mq.is_ok() && hub { "ok" } else { "unavailable" },
    });
    let code = if db.is_ok() && mq.is_ok() && hub {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Prometheus text exposition.
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            rdev_shared::metrics::CONTENT_TYPE,
        )],
        st.metrics.render(Some(&st.pool)),
    )
}

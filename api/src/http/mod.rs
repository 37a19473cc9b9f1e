//! The HTTP edge: shared state, the router, and one module per resource.

pub mod commands;
pub mod error;
pub mod extract;
pub mod health;
pub mod projects;
pub mod sse;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use rdev_shared::db::Pool;
use rdev_shared::mq::{Publisher, Topology};
use tower_http::trace::TraceLayer;

use crate::config::ApiConfig;
use crate::hub::OutputHub;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL.
    pub pool: Pool,
    /// Publishes commands (with confirms).
    pub publisher: Arc<Publisher>,
    /// Relays live output.
    pub hub: Arc<OutputHub>,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Settings.
    pub cfg: Arc<ApiConfig>,
}

/// The whole application, without a socket (tests can `oneshot` it).
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/projects", post(projects::create).get(projects::list))
        .route(
            "/projects/{name}",
            get(projects::get)
                .patch(projects::update)
                .delete(projects::delete),
        )
        .route("/projects/{name}/commands", post(commands::create))
        .route("/commands", get(commands::list))
        .route("/commands/{id}", get(commands::get))
        .route("/commands/{id}/output", get(commands::output))
        .route("/commands/{id}/events", get(sse::events))
        .route("/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/webhooks/{id}/test", post(webhooks::test))
        .route("/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/webhooks/{id}/recover", post(webhooks::recover));
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

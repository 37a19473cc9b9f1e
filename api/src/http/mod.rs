//! The HTTP edge: shared state, the router, and one module per resource.

pub mod access;
pub mod attach;
pub mod audit;
pub mod body;
pub mod client_ip;
pub mod commands;
pub mod debug;
pub mod error;
pub mod extract;
pub mod files;
pub mod health;
pub mod input;
pub mod keys;
pub mod openapi;
pub mod page;
pub mod projects;
pub mod ratelimit;
pub mod secrets;
pub mod sse;
pub mod ui;
pub mod webhooks;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use rdev_shared::db::Pool;
use rdev_shared::mq::{Publisher, Topology};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admission::Admission;
use crate::config::ApiConfig;
use crate::hub::OutputHub;
use crate::keycache::KeyCache;
use error::ApiError;
use rdev_shared::metrics::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL.
    pub pool: Pool,
    /// Publishes commands (with confirms).
    pub publisher: Arc<Publisher>,
    /// Publishes new commands' run messages once their rows are
    /// committed, off the request's path.
    pub run_messages: rdev_shared::relay::BackgroundPublisher,
    /// Relays live output.
    pub hub: Arc<OutputHub>,
    /// Cached key lookups.
    pub keys: Arc<KeyCache>,
    /// Writes new commands in shared transactions.
    pub commits: crate::group_commit::GroupCommit,
    /// Rate-limit budgets leased from PostgreSQL.
    pub rate_budgets: Arc<crate::rate_budgets::RateBudgets>,
    /// Cached project lookups by name.
    pub projects: Arc<crate::control::ProjectCache>,
    /// Compiled `allowed_commands` per project version.
    pub policies: Arc<crate::policies::PolicyCache>,
    /// Wakes the dispatchers after a commit that wrote webhook deliveries.
    pub due: rdev_shared::db::notify::Notifier,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Settings.
    pub cfg: Arc<ApiConfig>,
    /// This instance's metrics.
    pub metrics: Arc<Metrics>,
    /// Admission of SSE connections.
    pub sse: Arc<Admission>,
    /// Admission of `/output` downloads (per key).
    pub downloads: Arc<Admission>,
    /// Cancelled when the server shuts down: SSE streams then close with
    /// a `retry:` hint so clients reconnect to another instance.
    pub shutdown: rdev_shared::lifecycle::CancellationToken,
    /// Exec sessions into the pods of Kubernetes projects (files API).
    pub pod_files: Arc<crate::pod_files::PodFiles>,
}

/// The documented API: every route with its OpenAPI operation, built
/// together by each resource module (`utoipa-axum`), so a route cannot go
/// undocumented. The `v1` routes carry the rate-limit headers.
pub fn api() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .merge(projects::router())
        .merge(commands::router())
        .merge(files::router())
        .merge(secrets::router())
        .merge(sse::router())
        .merge(input::router())
        .merge(attach::router())
        .merge(keys::router())
        .merge(audit::router())
        .merge(webhooks::router())
        .layer(axum::middleware::from_fn(ratelimit::headers));
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(debug::heap))
        .routes(routes!(openapi_json))
        .nest("/v1", v1)
}

/// The whole application, without a socket (tests can `oneshot` it).
pub fn router(state: AppState) -> Router {
    let (api, _) = api().split_for_parts();
    api.merge(openapi::docs())
        .merge(ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body::deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The OpenAPI document of [`api`], finished by [`openapi::finish`]; built
/// once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| openapi::finish(api().into_openapi()))
}

/// `GET /openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document",
            content_type = "application/json", body = Object),
    ),
)]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(document()).unwrap_or_default(),
    )
}

/// The operations listener (`RDEV_OPS_LISTEN`): Prometheus `/metrics`, and
/// `/health` and `/ready` for probes that prefer it. Not on the public port:
/// metrics tell an outsider about load, keys in use and failures.
pub fn ops_router(state: AppState) -> Router {
    let metrics = rdev_shared::metrics::route(state.metrics.clone(), state.pool.clone());
    Router::new()
        .route("/metrics", metrics)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Counts every request by its route template (not the raw path, so ids do
/// not explode the label set) and status, and times it.
async fn record_request(
    axum::extract::State(st): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .http_requests_total
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    st.metrics
        .http_request_duration_seconds
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// The span of one HTTP request; continues a caller's `traceparent`. Only
/// the path is recorded, never the query string or headers.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let span = tracing::info_span!(
        "http.request",
        method = %req.method(),
        path = %req.uri().path(),
        trace_id = tracing::field::Empty,
    );
    let pairs: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("trace"))
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    rdev_shared::telemetry::continue_trace(&span, &pairs);
    span
}

//! The one body of `GET /ready` (API, worker and dispatcher alike):
//! `{"postgres": "ok"|"unavailable", "rabbitmq": "ok"|"unavailable"}`,
//! answered 200 when both are `ok` and 503 otherwise. A service may add
//! what else an operator needs under `details` (the worker: what contains
//! local commands); `details` never makes a service unready.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `GET /health` (liveness) of every rdev service: 200 `{"status": "ok"}`,
/// touching no dependency.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// The state of one dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// It answers.
    Ok,
    /// It does not (the service's log says why).
    Unavailable,
}

impl Check {
    /// `Ok` when `up`.
    pub fn of(up: bool) -> Self {
        if up { Self::Ok } else { Self::Unavailable }
    }
}

/// Answer of `GET /ready`.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Readiness {
    /// PostgreSQL.
    pub postgres: Check,
    /// RabbitMQ (every connection the service needs to do its work).
    pub rabbitmq: Check,
    /// Service-specific facts for operators (absent when there are none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Readiness {
    /// The answer for these two dependencies, without details.
    pub fn of(postgres: bool, rabbitmq: bool) -> Self {
        Self {
            postgres: Check::of(postgres),
            rabbitmq: Check::of(rabbitmq),
            details: None,
        }
    }

    /// Adds service-specific details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Whether every dependency answers.
    pub fn is_ready(&self) -> bool {
        self.postgres == Check::Ok && self.rabbitmq == Check::Ok
    }
}

impl IntoResponse for Readiness {
    fn into_response(self) -> Response {
        let code = if self.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, Json(self)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_each_dependency() {
        let r = Readiness::of(true, false);
        assert!(!r.is_ready());
        assert_eq!(
            serde_json::to_value(&r).expect("json"),
            serde_json::json!({"postgres": "ok", "rabbitmq": "unavailable"})
        );
        let r = Readiness::of(true, true).with_details(serde_json::json!({"x": 1}));
        assert!(r.is_ready());
        assert_eq!(serde_json::to_value(&r).expect("json")["details"]["x"], 1);
    }
}

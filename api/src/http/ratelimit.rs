//! Rate-limit headers on every authenticated response.
//!
//! The [`Auth`](super::extract::Auth) extractor makes the decision (from
//! this instance's leased budget or one PostgreSQL statement,
//! [`RateBudgets`](crate::rate_budgets::RateBudgets)) and leaves it
//! in the request's [`RateSlot`]; this middleware copies it into the
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers
//! of whatever the handler answered, errors included.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rdev_shared::ratelimit::Decision;

/// Where the extractor leaves the decision for the middleware.
#[derive(Clone, Default)]
pub struct RateSlot(Arc<Mutex<Option<Decision>>>);

impl RateSlot {
    /// Stores the decision of this request.
    pub fn set(&self, d: Decision) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
    }

    fn get(&self) -> Option<Decision> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The middleware.
pub async fn headers(mut req: Request, next: Next) -> Response {
    let slot = RateSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut resp = next.run(req).await;
    if let Some(d) = slot.get() {
        let h = resp.headers_mut();
        for (name, value) in [
            ("ratelimit-limit", d.limit.to_string()),
            ("ratelimit-remaining", d.remaining.to_string()),
            ("ratelimit-reset", d.reset_s.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }
    resp
}

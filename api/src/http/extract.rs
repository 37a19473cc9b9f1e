//! Extractors: bearer-key authentication and JSON/query parsing whose
//! rejections are problem+json.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use chrono::Utc;
use rdev_shared::db::audit::{self, AuditEntry};
use rdev_shared::db::{Pool, keys};
use rdev_shared::domain::{ApiKey, Scope};
use rdev_shared::{ratelimit, secret};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::client_ip;
use super::error::ApiError;
use super::ratelimit::RateSlot;
use crate::keycache::{DenialBudget, Lookup};

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Auth {
    /// The key presented.
    pub key: ApiKey,
    /// The client address (see [`client_ip`]).
    pub ip: Option<IpAddr>,
    /// `METHOD /path` of the request, for denial records.
    pub route: String,
    /// SHA-256 of the secret presented (an event stream ends when the key's
    /// stored hash no longer matches it: rotated).
    pub secret_hash: [u8; 32],
    pool: Pool,
    denials: Arc<DenialBudget>,
}

impl Auth {
    /// An audit entry of a successful action by this caller (actor, key and
    /// client address filled in); set `outcome` or `details` with struct
    /// update syntax when they differ.
    pub fn audit<'a>(
        &'a self,
        action: &'a str,
        target_type: &'a str,
        target_id: Option<String>,
        project_id: Option<uuid::Uuid>,
    ) -> rdev_shared::db::audit::AuditEntry<'a> {
        rdev_shared::db::audit::AuditEntry {
            actor_key_id: Some(self.key.id),
            actor: &self.key.name,
            ip: self.ip,
            action,
            target_type,
            target_id,
            project_id,
            outcome: "success",
            details: serde_json::json!({}),
        }
    }

    /// Fails with 403 unless the key holds `scope` (and records the denial).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.has_scope(scope) {
            Ok(())
        } else {
            Err(self.deny(
                "scope",
                json!({ "scope": scope.as_str() }),
                format!("this API key lacks the `{}` scope", scope.as_str()),
            ))
        }
    }

    /// Whether the key may see the project (a restricted key sees others as absent).
    pub fn sees_project(&self, project_id: Uuid) -> bool {
        self.key.can_access_project(project_id)
    }

    /// A 403 whose denial is appended to the audit log (in the background:
    /// the answer does not wait for it).
    pub fn deny(&self, reason: &str, details: serde_json::Value, detail: String) -> ApiError {
        self.record_denial(
            "auth.denied",
            "route",
            Some(self.route.clone()),
            None,
            reason,
            details,
        );
        ApiError::Forbidden(detail)
    }

    /// Appends a `denied` audit entry in the background, unless this key's
    /// denials are being throttled (see [`DenialBudget`]).
    pub fn record_denial(
        &self,
        action: &str,
        target_type: &str,
        target_id: Option<String>,
        project_id: Option<Uuid>,
        reason: &str,
        mut details: serde_json::Value,
    ) {
        let Some(skipped) = self.denials.take() else {
            return;
        };
        if let Some(map) = details.as_object_mut() {
            map.insert("reason".into(), reason.into());
            map.insert("route".into(), self.route.clone().into());
            if skipped > 0 {
                map.insert("skipped_before".into(), skipped.into());
            }
        }
        let (pool, key, ip) = (self.pool.clone(), self.key.clone(), self.ip);
        let (action, target_type) = (action.to_owned(), target_type.to_owned());
        tokio::spawn(async move {
            let entry = AuditEntry {
                actor_key_id: Some(key.id),
                actor: &key.name,
                ip,
                action: &action,
                target_type: &target_type,
                target_id,
                project_id,
                outcome: "denied",
                details,
            };
            let result = match pool.get().await {
                Ok(c) => audit::append(&c, &entry).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, action = %action, "could not record a denial");
            }
        });
    }
}

/// Subprotocol prefix that carries the key of a WebSocket opened by a
/// browser, which cannot set `Authorization` (`GET …/attach`).
pub const WS_BEARER_PREFIX: &str = "rdev.bearer.";

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        // A browser's WebSocket: `Sec-WebSocket-Protocol: rdev.v1, rdev.bearer.<key>`.
        return parts
            .headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .map(str::trim)
                    .find_map(|p| p.strip_prefix(WS_BEARER_PREFIX))
            })
            .ok_or_else(|| {
                ApiError::Unauthorized("missing `Authorization: Bearer <key>` header".into())
            });
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("expected `Authorization: Bearer <key>`".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized("expected the Bearer scheme".into()));
    }
    Ok(token.trim())
}

/// The socket peer's address, when the server was started with connect info.
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The cached key lookup's answer as a result: the entry of a known key,
/// or why there is none (401, 429, 503).
async fn lookup(
    state: &AppState,
    hash: &[u8; 32],
    ip: Option<IpAddr>,
) -> Result<Arc<crate::keycache::CachedKey>, ApiError> {
    match state.keys.authenticate(&state.pool, hash, ip).await? {
        Lookup::Found(entry) => Ok(entry),
        Lookup::Unknown => Err(ApiError::Unauthorized("invalid API key".into())),
        Lookup::Throttled { retry_after_s } => Err(ApiError::TooManyRequests {
            detail: format!(
                "too many failed authentications from this address; retry in {retry_after_s} s"
            ),
            retry_after_s,
        }),
        Lookup::Busy => Err(ApiError::Unavailable(
            "too many key lookups in flight; retry shortly".into(),
        )),
    }
}

impl Auth {
    /// Fails with 401 (audited) when the key is revoked or expired.
    fn require_active(&self) -> Result<(), ApiError> {
        if self.key.is_active(Utc::now()) {
            return Ok(());
        }
        let reason = if self.key.revoked_at.is_some() {
            "revoked"
        } else {
            "expired"
        };
        self.record_denial(
            "auth.denied",
            "route",
            Some(self.route.clone()),
            None,
            reason,
            json!({}),
        );
        Err(ApiError::Unauthorized(format!("this API key is {reason}")))
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    /// Key lookup (cached), then expiry/revocation (401), IP allowlist (403),
    /// and the rate limit (429). Each refusal of a known key is audited;
    /// unknown or malformed keys write nothing.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        // Malformed tokens never reach the database: unauthenticated traffic
        // costs one hash at most and writes nothing.
        if !secret::looks_like_key(token) {
            return Err(ApiError::Unauthorized("invalid API key".into()));
        }
        let hash = secret::hash_key(token);
        let ip = peer_ip(parts)
            .map(|peer| client_ip::resolve(peer, &parts.headers, &state.cfg.trusted_proxies.0));
        let entry = lookup(state, &hash, ip).await?;
        if !secret::constant_time_eq(&entry.stored_hash, &hash) {
            return Err(ApiError::Unauthorized("invalid API key".into()));
        }
        let auth = Auth {
            key: entry.key.clone(),
            ip,
            route: format!("{} {}", parts.method, parts.uri.path()),
            secret_hash: hash,
            pool: state.pool.clone(),
            denials: entry.denials.clone(),
        };
        auth.require_active()?;
        if !auth.key.allows_ip(ip) {
            return Err(auth.deny(
                "ip",
                json!({}),
                format!(
                    "this API key may not be used from {}",
                    ip.map_or_else(|| "an unknown address".to_owned(), |i| i.to_string())
                ),
            ));
        }
        let limit = auth.key.rate_limit.unwrap_or(state.cfg.rate_limit);
        let observed = state
            .rate_budgets
            .hit(&state.pool, auth.key.id, limit)
            .await?;
        let decision = ratelimit::decide(limit, observed);
        if let Some(slot) = parts.extensions.get::<RateSlot>() {
            slot.set(decision);
        }
        if !decision.allowed {
            return Err(ApiError::TooManyRequests {
                detail: format!("rate limit exceeded: retry in {} s", decision.retry_after_s),
                retry_after_s: decision.retry_after_s,
            });
        }
        if entry.should_touch() {
            let pool = state.pool.clone();
            let id = auth.key.id;
            tokio::spawn(async move {
                if let Ok(c) = pool.get().await
                    && let Err(e) = keys::touch(&c, id).await
                {
                    tracing::debug!(error = %e, "could not record key use");
                }
            });
        }
        Ok(auth)
    }
}

/// JSON body whose rejections are problem+json (400, 413, 415, 422).
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(v))
    }
}

/// Query string whose rejections are problem+json (400).
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}

/// Path parameters whose rejections are problem+json (404).
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(v))
    }
}

/// A request body with what checking it needs (the server's settings and,
/// for a change, the resource as it is): the source of a
/// `TryFrom<Checked<…>>` that turns a request into what a repository takes,
/// or into every field error at once (422).
pub struct Checked<'a, T, C = ()> {
    /// The body as sent.
    pub body: T,
    /// The server's settings.
    pub cfg: &'a crate::config::ApiConfig,
    /// What the request changes, when it changes something.
    pub current: C,
}

impl<'a, T> Checked<'a, T> {
    /// A body checked against the server's settings alone.
    pub fn new(body: T, cfg: &'a crate::config::ApiConfig) -> Self {
        Self {
            body,
            cfg,
            current: (),
        }
    }
}

/// Field errors gathered while checking a request: a 422 naming them all.
pub fn field_errors(errors: Vec<rdev_shared::domain::FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

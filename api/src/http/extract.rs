//! Extractors: bearer-key authentication and JSON/query parsing whose
//! rejections are problem+json.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use chrono::Utc;
use rdev_shared::db::keys;
use rdev_shared::domain::{ApiKey, Scope};
use rdev_shared::secret;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Auth {
    /// The key presented.
    pub key: ApiKey,
    /// The client address.
    pub ip: Option<IpAddr>,
}

impl Auth {
    /// Fails with 403 unless the key holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this API key lacks the `{}` scope",
                scope.as_str()
            )))
        }
    }

    /// Whether the key may see the project (a restricted key sees others as absent).
    pub fn sees_project(&self, project_id: Uuid) -> bool {
        self.key.can_access_project(project_id)
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized("missing `Authorization: Bearer <key>` header".into())
    })?;
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

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

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
        let client = state.pool.get().await?;
        let Some((key, stored)) = keys::find_by_hash(&client, &hash).await? else {
            return Err(ApiError::Unauthorized("invalid API key".into()));
        };
        if !secret::constant_time_eq(&stored, &hash) {
            return Err(ApiError::Unauthorized("invalid API key".into()));
        }
        if !key.is_active(Utc::now()) {
            return Err(ApiError::Unauthorized(
                "this API key is revoked or expired".into(),
            ));
        }
        let pool = state.pool.clone();
        let id = key.id;
        drop(client);
        tokio::spawn(async move {
            if let Ok(c) = pool.get().await
                && let Err(e) = keys::touch(&c, id).await
            {
                tracing::debug!(error = %e, "could not record key use");
            }
        });
        Ok(Auth {
            key,
            ip: peer_ip(parts),
        })
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

/// Opaque pagination cursors: base64url of the last item's sort key.
pub mod cursor {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::ApiError;

    /// Encodes a sort key.
    pub fn encode(key: &str) -> String {
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    }

    /// Decodes a cursor, 400 when it was not made by [`encode`].
    pub fn decode(cursor: &str) -> Result<String, ApiError> {
        URL_SAFE_NO_PAD
            .decode(cursor.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))
    }
}

/// Checks a page size: 1–200, default 50.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=200).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::field("limit", "must be between 1 and 200")),
    }
}

//! `GET /v1/audit` (scope `audit:read`): the audit log, newest first,
//! filtered by actor (key id or name), action, project and time range.
//! A project-restricted reader sees only entries of its projects.

use axum::extract::State;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use rdev_shared::db::audit::{self, AuditFilter};
use rdev_shared::db::projects;
use rdev_shared::domain::Scope;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Query, cursor, page_limit};

/// Query of `GET /v1/audit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    project: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /v1/audit`
pub async fn list(
    State(st): State<AppState>,
    auth: Auth,
    Query(q): Query<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::AuditRead)?;
    let limit = page_limit(q.limit)?;
    let before_id = q
        .cursor
        .as_deref()
        .map(|c| {
            cursor::decode(c)?
                .parse::<i64>()
                .map_err(|_| ApiError::BadRequest("invalid cursor".into()))
        })
        .transpose()?;
    let client = st.pool.get().await?;
    let project_id = match &q.project {
        Some(name) => match projects::get_by_name(&client, name).await? {
            Some(p) if auth.sees_project(p.id) => Some(p.id),
            _ => return Err(ApiError::NotFound(format!("project `{name}` not found"))),
        },
        None => None,
    };
    // `actor` is a key id or an actor name.
    let (actor_key_id, actor) = match q.actor {
        Some(a) => match a.parse::<Uuid>() {
            Ok(id) => (Some(id), None),
            Err(_) => (None, Some(a)),
        },
        None => (None, None),
    };
    let filter = AuditFilter {
        actor_key_id,
        actor,
        action: q.action,
        project_id,
        project_ids: auth.key.project_ids.clone(),
        since: q.since,
        until: q.until,
        before_id,
        limit,
    };
    let items = audit::list(&client, &filter).await?;
    let next_cursor = if items.len() as i64 == limit {
        items.last().map(|e| cursor::encode(&e.id.to_string()))
    } else {
        None
    };
    Ok(axum::Json(
        json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

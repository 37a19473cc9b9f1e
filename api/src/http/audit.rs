//! `GET /v1/audit` (scope `audit:read`): the audit log, newest first,
//! filtered by actor (key id or name), action, project and time range.
//! A project-restricted reader sees only entries of its projects.

use axum::extract::State;
use chrono::{DateTime, Utc};
use rdev_shared::db::audit::{self, AuditFilter, AuditRecord};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::access::{Allowed, load_visible_project, perm};
use super::error::ApiResult;
use super::extract::Query;
use super::page::{Page, cursor, page_limit};

/// The routes of this module (under `/v1`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Query of `GET /v1/audit`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    project: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/audit`
#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    security(("bearer" = [])),
    params(
        AuditQuery,
    ),
    responses(
        (status = 200, description = "A page of audit entries (scope `audit:read`)", body = Page<AuditRecord>),
    ),
)]
pub async fn list(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::AuditRead>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Page<AuditRecord>> {
    let limit = page_limit(q.limit)?;
    let before_id = cursor::decode_opt::<i64>(q.cursor.as_deref())?;
    let project_id = match &q.project {
        Some(name) => Some(load_visible_project(&st, &auth, name).await?.id),
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
    let client = st.pool.get().await?;
    let items = audit::list(&client, &filter).await?;
    Ok(Page::new(items, limit, |e| e.id))
}

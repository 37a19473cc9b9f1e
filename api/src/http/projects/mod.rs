//! `/v1/projects`: create, list, get, update, delete.

mod input;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use rdev_shared::containment::{NetworkMode, ResourceLimits};
use rdev_shared::db::audit;
use rdev_shared::db::projects::{self, NewProject, ProjectPatch};
use rdev_shared::domain::{ExecutorConfig, Project};
use serde::Serialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::input::{Containment, require_containment_scope};
pub use self::input::{CreateProject, DEFAULT_MAX_OUTPUT_BYTES, UpdateProject};
use super::AppState;
use super::access::{Allowed, InProject, ProjectName, perm};
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Checked, Json, Query};
use super::page::{Page, PageQuery};

/// The routes of this module (under `/v1`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
}

/// A project as the API shows it. `env` is write-only (values may be
/// secrets, like GitHub Actions secrets): answers list the names in
/// `env_names`, never the values.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProjectView {
    name: String,
    description: String,
    executor: ExecutorConfig,
    /// Names of the project's environment variables, sorted; the values are
    /// never shown.
    env_names: Vec<String>,
    default_timeout_s: i32,
    max_output_bytes: i64,
    max_concurrency: Option<i32>,
    allowed_commands: Option<Vec<String>>,
    /// Network of its local commands.
    network: NetworkMode,
    /// Resource limits of its commands; an absent one is the server's
    /// default (`RDEV_COMMAND_LIMITS`).
    limits: ResourceLimits,
    /// Secrets its commands may name; `null` = any of its secrets.
    allowed_secrets: Option<Vec<String>>,
    /// Seconds its finished commands are kept (null: the server's
    /// `RDEV_COMMAND_RETENTION`, 90 days by default).
    command_retention_s: Option<i64>,
    /// Seconds their stored output is kept (null: the server's
    /// `RDEV_OUTPUT_RETENTION`, 30 days by default).
    output_retention_s: Option<i64>,
    /// Largest file (or sum of an archive's files) one upload through the
    /// files API may write (null: the server's `RDEV_FILES_MAX_BYTES`, which
    /// also caps it).
    max_file_bytes: Option<i64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Project> for ProjectView {
    fn from(p: Project) -> Self {
        Self {
            name: p.name,
            description: p.description,
            executor: p.executor,
            env_names: p.env.into_keys().collect(),
            default_timeout_s: p.default_timeout_s,
            max_output_bytes: p.max_output_bytes,
            max_concurrency: p.max_concurrency,
            allowed_commands: p.allowed_commands,
            network: p.network,
            limits: p.limits,
            allowed_secrets: p.allowed_secrets,
            command_retention_s: p.command_retention_s,
            output_retention_s: p.output_retention_s,
            max_file_bytes: p.max_file_bytes,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// `POST /v1/projects`
#[utoipa::path(
    post,
    path = "/projects",
    tag = "projects",
    security(("bearer" = [])),
    request_body = CreateProject,
    responses(
        (status = 201, description = "Created (scope `projects:write`)", body = ProjectView,
            headers(("Location" = String, description = "The project's URL"))),
    ),
)]
pub async fn create(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::ProjectsWrite>,
    Json(body): Json<CreateProject>,
) -> ApiResult<impl IntoResponse> {
    if auth.key.project_ids.is_some() {
        return Err(auth.deny(
            "project_restricted",
            json!({}),
            "a project-restricted key cannot create projects".into(),
        ));
    }
    require_containment_scope(
        &auth,
        &body.name,
        Containment::default_for(),
        body.containment(),
    )?;
    let new = NewProject::try_from(Checked::new(body, &st.cfg))?;
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let project = match projects::insert(&tx, &new).await {
        Ok(p) => p,
        Err(e) if e.is_unique_violation() => {
            return Err(ApiError::Conflict(format!(
                "project `{}` already exists",
                new.name
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let entry = auth.audit(
        "project.create",
        "project",
        Some(project.name.clone()),
        Some(project.id),
    );
    audit::append(&tx, &entry).await?;
    tx.commit().await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/projects/{}", project.name)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        axum::Json(ProjectView::from(project)),
    ))
}

/// `GET /v1/projects`
#[utoipa::path(
    get,
    path = "/projects",
    tag = "projects",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of projects, by name (scope `projects:read`)",
            body = Page<ProjectView>),
    ),
)]
pub async fn list(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::ProjectsRead>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Page<ProjectView>> {
    let (limit, after) = q.parse::<String>()?;
    let client = st.pool.get().await?;
    let items = projects::list(
        &client,
        after.as_deref(),
        auth.key.project_ids.as_deref(),
        limit,
    )
    .await?;
    Ok(Page::new(items, limit, |p| p.name.clone()).map(ProjectView::from))
}

/// `GET /v1/projects/{name}`
#[utoipa::path(
    get,
    path = "/projects/{name}",
    tag = "projects",
    security(("bearer" = [])),
    params(ProjectName),
    responses(
        (status = 200, description = "The project (scope `projects:read`)", body = ProjectView),
    ),
)]
pub async fn get(
    InProject { project, .. }: InProject<perm::ProjectsRead>,
) -> axum::Json<ProjectView> {
    axum::Json(ProjectView::from(project))
}

/// `PATCH /v1/projects/{name}`
#[utoipa::path(
    patch,
    path = "/projects/{name}",
    tag = "projects",
    security(("bearer" = [])),
    params(ProjectName),
    request_body = UpdateProject,
    responses(
        (status = 200, description = "Updated (scope `projects:write`)", body = ProjectView),
    ),
)]
pub async fn update(
    State(st): State<AppState>,
    InProject { auth, project, .. }: InProject<perm::ProjectsWrite>,
    Json(body): Json<UpdateProject>,
) -> ApiResult<impl IntoResponse> {
    let requested = body.containment(&project);
    require_containment_scope(&auth, &project.name, Containment::of(&project), requested)?;
    let patch = ProjectPatch::try_from(Checked {
        body,
        cfg: &st.cfg,
        current: &project,
    })?;
    let name = &project.name;
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let updated = projects::update(&tx, project.id, &patch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("project `{name}` not found")))?;
    commit_change(&st, tx, &auth, "project.update", &project).await?;
    Ok(axum::Json(ProjectView::from(updated)))
}

/// `DELETE /v1/projects/{name}`: a soft delete; queued commands of the
/// project fail when a worker picks them up.
#[utoipa::path(
    delete,
    path = "/projects/{name}",
    tag = "projects",
    security(("bearer" = [])),
    params(ProjectName),
    responses((status = 204, description = "Deleted (scope `projects:write`)")),
)]
pub async fn delete(
    State(st): State<AppState>,
    InProject { auth, project, .. }: InProject<perm::ProjectsWrite>,
) -> ApiResult<StatusCode> {
    let name = &project.name;
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    if !projects::delete(&tx, project.id).await? {
        return Err(ApiError::NotFound(format!("project `{name}` not found")));
    }
    // A deleted project's secrets are erased with it, not kept sealed.
    rdev_shared::db::secrets::delete_all(&tx, project.id).await?;
    commit_change(&st, tx, &auth, "project.delete", &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends a change of `project`: its audit entry (`action`) in the same
/// transaction, the commit, then the announcement that makes every
/// instance evict the project from its cache.
async fn commit_change(
    st: &AppState,
    tx: deadpool_postgres::Transaction<'_>,
    auth: &Auth,
    action: &str,
    project: &Project,
) -> ApiResult<()> {
    let name = &project.name;
    let entry = auth.audit(action, "project", Some(name.clone()), Some(project.id));
    audit::append(&tx, &entry).await?;
    tx.commit().await?;
    crate::control::announce_project_change(&st.projects, &st.publisher, name).await;
    Ok(())
}

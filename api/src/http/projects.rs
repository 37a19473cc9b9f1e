//! `/v1/projects`: create, list, get, update, delete.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use rdev_shared::containment::{NetworkMode, ResourceLimits};
use rdev_shared::db::audit;
use rdev_shared::db::projects::{self, NewProject, ProjectPatch};
use rdev_shared::domain::{
    ExecutorConfig, FieldError, Project, Scope, validate_env, validate_env_denylist,
    validate_executor, validate_executor_kind, validate_limits, validate_project_name,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Json, Path, Query, cursor, page_limit};

/// Shortest and longest per-project retention: an hour, and ten years.
const MIN_RETENTION_S: i64 = 3600;
const MAX_RETENTION_S: i64 = 10 * 366 * 86_400;
/// Default cap on stored output per command: 10 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: i64 = 10 * 1024 * 1024;
const MAX_MAX_OUTPUT_BYTES: i64 = 1024 * 1024 * 1024;
const DEFAULT_TIMEOUT_S: i32 = 3600;

/// A project as the API shows it. `env` is write-only (values may be
/// secrets, like GitHub Actions secrets): answers list the names in
/// `env_names`, never the values.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProjectView {
    name: String,
    description: String,
    #[schema(value_type = crate::http::openapi::ExecutorConfigDoc)]
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

/// Body of `POST /v1/projects`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    #[serde(default)]
    description: String,
    #[schema(value_type = Option<crate::http::openapi::ExecutorConfigDoc>)]
    executor: Option<ExecutorConfig>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    default_timeout_s: Option<i32>,
    max_output_bytes: Option<i64>,
    max_concurrency: Option<i32>,
    allowed_commands: Option<Vec<String>>,
    /// `host` (default) or `none`: a network namespace of its own, with
    /// nothing reachable. Local projects only.
    network: Option<NetworkMode>,
    /// Per-command resource limits (each at most the server's ceiling).
    /// Local projects only.
    limits: Option<ResourceLimits>,
    /// Secrets its commands may name (`secrets`, `secret_files`); absent or
    /// `null` = any of the project's secrets.
    allowed_secrets: Option<Vec<String>>,
    /// Seconds finished commands are kept (default: the server's).
    command_retention_s: Option<i64>,
    /// Seconds their stored output is kept (default: the server's).
    output_retention_s: Option<i64>,
    /// Largest upload through the files API, at most the server's
    /// `RDEV_FILES_MAX_BYTES` (default: that). Takes `projects:admin`.
    max_file_bytes: Option<i64>,
}

/// Body of `PATCH /v1/projects/{name}`: absent fields stay, `null` clears a nullable one.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    description: Option<String>,
    #[schema(value_type = Option<crate::http::openapi::ExecutorConfigDoc>)]
    executor: Option<ExecutorConfig>,
    env: Option<BTreeMap<String, String>>,
    default_timeout_s: Option<i32>,
    max_output_bytes: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    max_concurrency: Option<Option<i32>>,
    #[serde(default, deserialize_with = "nullable")]
    allowed_commands: Option<Option<Vec<String>>>,
    network: Option<NetworkMode>,
    /// Replaces the whole object (`{}` returns every limit to the default).
    limits: Option<ResourceLimits>,
    /// `null` lets commands name any of the project's secrets.
    #[serde(default, deserialize_with = "nullable")]
    allowed_secrets: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    command_retention_s: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    output_retention_s: Option<Option<i64>>,
    /// `null` returns to the server's cap. Takes `projects:admin`.
    #[serde(default, deserialize_with = "nullable")]
    max_file_bytes: Option<Option<i64>>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// The settable fields of a project, as given in a create or update.
struct Fields<'a> {
    description: Option<&'a str>,
    executor: Option<&'a ExecutorConfig>,
    env: Option<&'a BTreeMap<String, String>>,
    default_timeout_s: Option<i32>,
    max_output_bytes: Option<i64>,
    max_concurrency: Option<i32>,
    allowed_commands: Option<&'a [String]>,
    network: Option<NetworkMode>,
    limits: Option<&'a ResourceLimits>,
    allowed_secrets: Option<&'a [String]>,
    command_retention_s: Option<i64>,
    output_retention_s: Option<i64>,
    max_file_bytes: Option<i64>,
}

/// What contains a project's commands: set only with `projects:admin`.
#[derive(PartialEq)]
struct Containment<'a> {
    executor: ExecutorConfig,
    allowed_commands: Option<&'a [String]>,
    network: NetworkMode,
    limits: ResourceLimits,
    allowed_secrets: Option<&'a [String]>,
    max_file_bytes: Option<i64>,
}

impl<'a> Containment<'a> {
    /// A new project's, when the request sets none of it.
    fn default_for() -> Self {
        Self {
            executor: ExecutorConfig::default(),
            allowed_commands: None,
            network: NetworkMode::Host,
            limits: ResourceLimits::default(),
            allowed_secrets: None,
            max_file_bytes: None,
        }
    }

    fn of(p: &'a Project) -> Self {
        Self {
            executor: p.executor.clone(),
            allowed_commands: p.allowed_commands.as_deref(),
            network: p.network,
            limits: p.limits,
            allowed_secrets: p.allowed_secrets.as_deref(),
            max_file_bytes: p.max_file_bytes,
        }
    }

    /// `self` with what a request sets applied.
    fn with(
        &self,
        executor: Option<&ExecutorConfig>,
        allowed_commands: Option<Option<&'a [String]>>,
        network: Option<NetworkMode>,
        limits: Option<&ResourceLimits>,
        allowed_secrets: Option<Option<&'a [String]>>,
    ) -> Self {
        Self {
            executor: executor.cloned().unwrap_or_else(|| self.executor.clone()),
            allowed_commands: allowed_commands.unwrap_or(self.allowed_commands),
            network: network.unwrap_or(self.network),
            limits: limits.copied().unwrap_or(self.limits),
            allowed_secrets: allowed_secrets.unwrap_or(self.allowed_secrets),
            max_file_bytes: self.max_file_bytes,
        }
    }

    /// The same settings spelled one way: a local workdir equal to the
    /// project's name is the default workdir.
    fn normalized(mut self, name: &str) -> Self {
        if let ExecutorConfig::Local(l) = &mut self.executor
            && l.workdir.as_deref() == Some(name)
        {
            l.workdir = None;
        }
        self
    }
}

/// Refuses a key without `projects:admin` when a request changes what
/// contains a project's commands (from `before` to `after`).
fn require_containment_scope(
    auth: &Auth,
    name: &str,
    before: Containment<'_>,
    after: Containment<'_>,
) -> ApiResult<()> {
    if before.normalized(name) != after.normalized(name)
        && !auth.key.has_scope(Scope::ProjectsAdmin)
    {
        return Err(auth.deny(
            "scope",
            json!({ "scope": Scope::ProjectsAdmin.as_str() }),
            "setting a project's executor, allowed_commands, allowed_secrets, limits, network \
             or max_file_bytes takes the `projects:admin` scope"
                .into(),
        ));
    }
    Ok(())
}

/// Validates the fields a create or update sets. `resulting` is the
/// project's executor after the change; `has_policy` whether it will have
/// `allowed_commands` (which also denies `PATH` in `env`).
fn check_common(
    f: &Fields<'_>,
    st: &AppState,
    resulting: &ExecutorConfig,
    has_policy: bool,
    errors: &mut Vec<FieldError>,
) {
    let Fields {
        description,
        executor,
        env,
        default_timeout_s,
        max_output_bytes,
        max_concurrency,
        allowed_commands,
        network,
        limits,
        allowed_secrets,
        command_retention_s,
        output_retention_s,
        max_file_bytes,
    } = *f;
    let files_max = i64::try_from(st.cfg.files_max_bytes).unwrap_or(i64::MAX);
    if max_file_bytes.is_some_and(|n| !(1..=files_max).contains(&n)) {
        errors.push(FieldError::new(
            "max_file_bytes",
            format!("must be 1-{files_max} bytes (the server's RDEV_FILES_MAX_BYTES)"),
        ));
    }
    for (field, v) in [
        ("command_retention_s", command_retention_s),
        ("output_retention_s", output_retention_s),
    ] {
        if v.is_some_and(|s| !(MIN_RETENTION_S..=MAX_RETENTION_S).contains(&s)) {
            errors.push(FieldError::new(
                field,
                format!("must be {MIN_RETENTION_S}-{MAX_RETENTION_S} seconds"),
            ));
        }
    }
    let max_timeout_s = st.cfg.max_timeout_s;
    if description.is_some_and(|d| d.len() > 4096) {
        errors.push(FieldError::new("description", "at most 4096 bytes"));
    }
    if let Some(e) = executor {
        validate_executor(e, errors);
        validate_executor_kind(e, &st.cfg.executors, errors);
    }
    if let Some(env) = env {
        validate_env("env", env, errors);
        validate_env_denylist("env", env, has_policy, errors);
    }
    if let Some(l) = limits {
        validate_limits(l, &st.cfg.limits.max, errors);
    }
    let local_only =
        matches!(network, Some(NetworkMode::None)) || limits.is_some_and(|l| !l.is_empty());
    if local_only && matches!(resulting, ExecutorConfig::Kubernetes(_)) {
        errors.push(FieldError::new(
            if matches!(network, Some(NetworkMode::None)) {
                "network"
            } else {
                "limits"
            },
            "network and limits apply to local projects; a kubernetes project's pods set their own",
        ));
    }
    if default_timeout_s.is_some_and(|t| t < 1 || t > max_timeout_s) {
        errors.push(FieldError::new(
            "default_timeout_s",
            format!("must be 1-{max_timeout_s}"),
        ));
    }
    if max_output_bytes.is_some_and(|m| !(2..=MAX_MAX_OUTPUT_BYTES).contains(&m)) {
        errors.push(FieldError::new(
            "max_output_bytes",
            format!("must be 2-{MAX_MAX_OUTPUT_BYTES}"),
        ));
    }
    if max_concurrency.is_some_and(|c| !(1..=10_000).contains(&c)) {
        errors.push(FieldError::new("max_concurrency", "must be 1-10000"));
    }
    if let Some(list) = allowed_commands {
        rdev_shared::policy::validate(list, errors);
    }
    if let Some(names) = allowed_secrets {
        if names.len() > rdev_shared::domain::MAX_SECRETS_PER_PROJECT {
            errors.push(FieldError::new(
                "allowed_secrets",
                format!(
                    "at most {} names",
                    rdev_shared::domain::MAX_SECRETS_PER_PROJECT
                ),
            ));
        }
        for (i, n) in names.iter().enumerate() {
            if let Err(m) = rdev_shared::domain::validate_secret_name(n) {
                errors.push(FieldError::new(format!("allowed_secrets[{i}]"), m));
            }
        }
    }
}

/// Loads a live project the key may see; 404 otherwise.
/// Lookups go through the instance's project cache (invalidated on every
/// instance when a project changes).
pub async fn load_visible(st: &AppState, auth: &Auth, name: &str) -> ApiResult<Project> {
    // A name no project can have is answered without a query (a NUL in it
    // would otherwise fail in PostgreSQL: a 500 for bad input).
    if validate_project_name(name).is_err() {
        return Err(ApiError::NotFound(format!(
            "project `{}` not found",
            name.escape_debug()
        )));
    }
    let found = st
        .projects
        .get_or_load(&name.to_owned(), || async {
            let client = st.pool.get().await?;
            projects::get_by_name(&client, name).await
        })
        .await?;
    match found {
        Some(p) if auth.sees_project(p.id) => Ok((*p).clone()),
        _ => Err(ApiError::NotFound(format!("project `{name}` not found"))),
    }
}

/// `POST /v1/projects`
#[utoipa::path(post, path = "/v1/projects", tag = "projects", security(("bearer" = [])), request_body = CreateProject, responses((status = 201, description = "Created (scope `projects:write`)", body = ProjectView, headers(("Location" = String, description = "The project's URL")))))]
pub async fn create(
    State(st): State<AppState>,
    auth: Auth,
    Json(body): Json<CreateProject>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::ProjectsWrite)?;
    if auth.key.project_ids.is_some() {
        return Err(auth.deny(
            "project_restricted",
            json!({}),
            "a project-restricted key cannot create projects".into(),
        ));
    }
    let fields = Fields {
        description: Some(&body.description),
        executor: body.executor.as_ref(),
        env: Some(&body.env),
        default_timeout_s: body.default_timeout_s,
        max_output_bytes: body.max_output_bytes,
        max_concurrency: body.max_concurrency,
        allowed_commands: body.allowed_commands.as_deref(),
        network: body.network,
        limits: body.limits.as_ref(),
        allowed_secrets: body.allowed_secrets.as_deref(),
        command_retention_s: body.command_retention_s,
        output_retention_s: body.output_retention_s,
        max_file_bytes: body.max_file_bytes,
    };
    let requested = Containment::default_for().with(
        body.executor.as_ref(),
        Some(body.allowed_commands.as_deref()),
        body.network,
        body.limits.as_ref(),
        Some(body.allowed_secrets.as_deref()),
    );
    let requested = Containment {
        max_file_bytes: body.max_file_bytes,
        ..requested
    };
    require_containment_scope(&auth, &body.name, Containment::default_for(), requested)?;
    let mut errors = Vec::new();
    if let Err(m) = validate_project_name(&body.name) {
        errors.push(FieldError::new("name", m));
    }
    let resulting = body.executor.clone().unwrap_or_default();
    check_common(
        &fields,
        &st,
        &resulting,
        body.allowed_commands.is_some(),
        &mut errors,
    );
    if body.executor.is_none() {
        validate_executor_kind(&resulting, &st.cfg.executors, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let new = NewProject {
        name: body.name,
        description: body.description,
        executor: body.executor.unwrap_or_default(),
        env: body.env,
        default_timeout_s: body
            .default_timeout_s
            .unwrap_or(DEFAULT_TIMEOUT_S.min(st.cfg.max_timeout_s)),
        max_output_bytes: body.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
        max_concurrency: body.max_concurrency,
        allowed_commands: body.allowed_commands,
        network: body.network.unwrap_or_default(),
        limits: body.limits.unwrap_or_default(),
        allowed_secrets: body.allowed_secrets,
        command_retention_s: body.command_retention_s,
        output_retention_s: body.output_retention_s,
        max_file_bytes: body.max_file_bytes,
    };
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
    audit::append(
        &tx,
        &auth.audit(
            "project.create",
            "project",
            Some(project.name.clone()),
            Some(project.id),
        ),
    )
    .await?;
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

/// Query of `GET /v1/projects`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/projects`
#[utoipa::path(get, path = "/v1/projects", tag = "projects", security(("bearer" = [])), params(ListQuery), responses((status = 200, description = "A page of projects (scope `projects:read`)", body = crate::http::openapi::ProjectPage)))]
pub async fn list(
    State(st): State<AppState>,
    auth: Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::ProjectsRead)?;
    let limit = page_limit(q.limit)?;
    let after = q.cursor.as_deref().map(cursor::decode).transpose()?;
    let client = st.pool.get().await?;
    let items = projects::list(
        &client,
        after.as_deref(),
        auth.key.project_ids.as_deref(),
        limit,
    )
    .await?;
    let next_cursor = if items.len() as i64 == limit {
        items.last().map(|p| cursor::encode(&p.name))
    } else {
        None
    };
    let items: Vec<ProjectView> = items.into_iter().map(ProjectView::from).collect();
    Ok(axum::Json(
        json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

/// `GET /v1/projects/{name}`
#[utoipa::path(get, path = "/v1/projects/{name}", tag = "projects", security(("bearer" = [])), params(("name" = String, Path, description = "Project name")), responses((status = 200, description = "The project (scope `projects:read`)", body = ProjectView)))]
pub async fn get(
    State(st): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::ProjectsRead)?;
    Ok(axum::Json(ProjectView::from(
        load_visible(&st, &auth, &name).await?,
    )))
}

/// `PATCH /v1/projects/{name}`
#[utoipa::path(patch, path = "/v1/projects/{name}", tag = "projects", security(("bearer" = [])), params(("name" = String, Path, description = "Project name")), request_body = UpdateProject, responses((status = 200, description = "Updated (scope `projects:write`)", body = ProjectView)))]
pub async fn update(
    State(st): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    Json(body): Json<UpdateProject>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::ProjectsWrite)?;
    let project = load_visible(&st, &auth, &name).await?;
    let fields = Fields {
        description: body.description.as_deref(),
        executor: body.executor.as_ref(),
        env: body.env.as_ref(),
        default_timeout_s: body.default_timeout_s,
        max_output_bytes: body.max_output_bytes,
        max_concurrency: body.max_concurrency.flatten(),
        allowed_commands: body.allowed_commands.as_ref().and_then(|a| a.as_deref()),
        network: body.network,
        limits: body.limits.as_ref(),
        allowed_secrets: body.allowed_secrets.as_ref().and_then(|a| a.as_deref()),
        command_retention_s: body.command_retention_s.flatten(),
        output_retention_s: body.output_retention_s.flatten(),
        max_file_bytes: body.max_file_bytes.flatten(),
    };
    let requested = Containment::of(&project).with(
        body.executor.as_ref(),
        body.allowed_commands.as_ref().map(|a| a.as_deref()),
        body.network,
        body.limits.as_ref(),
        body.allowed_secrets.as_ref().map(|a| a.as_deref()),
    );
    let requested = Containment {
        max_file_bytes: body.max_file_bytes.unwrap_or(project.max_file_bytes),
        ..requested
    };
    require_containment_scope(&auth, &project.name, Containment::of(&project), requested)?;
    let resulting = body.executor.as_ref().unwrap_or(&project.executor);
    let has_policy = match &body.allowed_commands {
        Some(policy) => policy.is_some(),
        None => project.allowed_commands.is_some(),
    };
    let mut errors = Vec::new();
    check_common(&fields, &st, resulting, has_policy, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let patch = ProjectPatch {
        description: body.description,
        executor: body.executor,
        env: body.env,
        default_timeout_s: body.default_timeout_s,
        max_output_bytes: body.max_output_bytes,
        max_concurrency: body.max_concurrency,
        allowed_commands: body.allowed_commands,
        network: body.network,
        limits: body.limits,
        allowed_secrets: body.allowed_secrets,
        command_retention_s: body.command_retention_s,
        output_retention_s: body.output_retention_s,
        max_file_bytes: body.max_file_bytes,
    };
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let updated = projects::update(&tx, project.id, &patch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("project `{name}` not found")))?;
    audit::append(
        &tx,
        &auth.audit(
            "project.update",
            "project",
            Some(name.clone()),
            Some(project.id),
        ),
    )
    .await?;
    tx.commit().await?;
    crate::control::announce_project_change(&st.projects, &st.publisher, &project.name).await;
    Ok(axum::Json(ProjectView::from(updated)))
}

/// `DELETE /v1/projects/{name}`: a soft delete; queued commands of the
/// project fail when a worker picks them up.
#[utoipa::path(delete, path = "/v1/projects/{name}", tag = "projects", security(("bearer" = [])), params(("name" = String, Path, description = "Project name")), responses((status = 204, description = "Deleted (scope `projects:write`)")))]
pub async fn delete(
    State(st): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::ProjectsWrite)?;
    let project = load_visible(&st, &auth, &name).await?;
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    if !projects::delete(&tx, project.id).await? {
        return Err(ApiError::NotFound(format!("project `{name}` not found")));
    }
    // A deleted project's secrets are erased with it, not kept sealed.
    rdev_shared::db::secrets::delete_all(&tx, project.id).await?;
    audit::append(
        &tx,
        &auth.audit("project.delete", "project", Some(name), Some(project.id)),
    )
    .await?;
    tx.commit().await?;
    crate::control::announce_project_change(&st.projects, &st.publisher, &project.name).await;
    Ok(StatusCode::NO_CONTENT)
}

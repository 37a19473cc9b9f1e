//! `/v1/projects/{name}/secrets`: set (a new version), list, read the
//! metadata of, and delete a project's secrets. Values go in and never come
//! out: no answer, log line or audit entry carries one.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use rdev_shared::db::audit;
use rdev_shared::db::secrets::{self, SecretMeta};
use rdev_shared::domain::{
    ExecutorConfig, FieldError, MAX_SECRETS_PER_COMMAND, MAX_SECRETS_PER_PROJECT, Project,
    validate_secret_name, validate_secret_path, validate_secret_value,
};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::access::{InProject, ProjectName, perm};
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Json, Path, Query};
use super::page::{Page, PageQuery};

/// The routes of this module (under `/v1`).
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(set, get, delete))
}

/// Body of `PUT /v1/projects/{name}/secrets/{secret}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    /// The value: 6 bytes to 32 KiB, no NUL. Write-only: never returned.
    #[schema(min_length = 6, max_length = 32768)]
    value: String,
}

fn not_found(project: &Project, secret: &str) -> ApiError {
    ApiError::NotFound(format!("secret `{secret}` not found in `{}`", project.name))
}

fn checked_name(secret: &str) -> ApiResult<()> {
    validate_secret_name(secret).map_err(|m| ApiError::Validation(vec![FieldError::new("name", m)]))
}

/// `PUT /v1/projects/{name}/secrets/{secret}`: sets the value; every set is
/// a new version. Commands that start afterwards get the new value.
#[utoipa::path(
    put,
    path = "/projects/{name}/secrets/{secret}",
    tag = "secrets",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
        ("secret" = String, Path, description = "Secret name (an environment variable name)"),
    ),
    request_body = SetSecret,
    responses(
        (status = 200, description = "A new version of an existing secret (scope `secrets:manage`)", body = SecretMeta),
        (status = 201, description = "Created (scope `secrets:manage`)", body = SecretMeta),
    ),
)]
pub async fn set(
    State(st): State<AppState>,
    InProject { auth, project, .. }: InProject<perm::SecretsManage>,
    Path((_name, secret)): Path<(String, String)>,
    Json(body): Json<SetSecret>,
) -> ApiResult<impl IntoResponse> {
    let mut errors = Vec::new();
    if let Err(m) = validate_secret_name(&secret) {
        errors.push(FieldError::new("name", m));
    }
    if let Err(m) = validate_secret_value(&body.value) {
        errors.push(FieldError::new("value", m));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    // Serializes sets of one project, so the count below holds.
    rdev_shared::db::lock_project(&tx, rdev_shared::db::ProjectLock::Secrets, project.id).await?;
    if secrets::get(&tx, project.id, &secret).await?.is_none()
        && secrets::count(&tx, project.id).await? >= MAX_SECRETS_PER_PROJECT as i64
    {
        return Err(ApiError::Conflict(format!(
            "project `{}` already holds {MAX_SECRETS_PER_PROJECT} secrets",
            project.name
        )));
    }
    let (meta, created) = secrets::set(
        &tx,
        project.id,
        &secret,
        &body.value,
        Some(auth.key.id),
        &auth.key.name,
    )
    .await?;
    let mut entry = auth.audit(
        "secret.set",
        "secret",
        Some(secret.clone()),
        Some(project.id),
    );
    entry.details = json!({ "name": secret, "version": meta.version, "created": created });
    audit::append(&tx, &entry).await?;
    tx.commit().await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(meta)))
}

/// `GET /v1/projects/{name}/secrets`: names, versions, who set them and
/// when; never values.
#[utoipa::path(
    get,
    path = "/projects/{name}/secrets",
    tag = "secrets",
    security(("bearer" = [])),
    params(ProjectName, PageQuery),
    responses(
        (status = 200, description = "A page of secrets, by name (scope `secrets:manage`)", body = Page<SecretMeta>),
    ),
)]
pub async fn list(
    State(st): State<AppState>,
    InProject { project, .. }: InProject<perm::SecretsManage>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Page<SecretMeta>> {
    let (limit, after) = q.parse::<String>()?;
    let client = st.pool.get().await?;
    let items = secrets::list(&client, project.id, after.as_deref(), limit).await?;
    Ok(Page::new(items, limit, |s| s.name.clone()))
}

/// `GET /v1/projects/{name}/secrets/{secret}`: one secret's metadata.
#[utoipa::path(
    get,
    path = "/projects/{name}/secrets/{secret}",
    tag = "secrets",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
        ("secret" = String, Path, description = "Secret name"),
    ),
    responses(
        (status = 200, description = "The secret's metadata, never its value (scope `secrets:manage`)", body = SecretMeta),
    ),
)]
pub async fn get(
    State(st): State<AppState>,
    InProject { project, .. }: InProject<perm::SecretsManage>,
    Path((_name, secret)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    checked_name(&secret)?;
    let client = st.pool.get().await?;
    secrets::get(&client, project.id, &secret)
        .await?
        .map(axum::Json)
        .ok_or_else(|| not_found(&project, &secret))
}

/// `DELETE /v1/projects/{name}/secrets/{secret}`: erases the value. Queued
/// commands that name it fail when they start.
#[utoipa::path(
    delete,
    path = "/projects/{name}/secrets/{secret}",
    tag = "secrets",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
        ("secret" = String, Path, description = "Secret name"),
    ),
    responses(
        (status = 204, description = "Deleted (scope `secrets:manage`)"),
    ),
)]
pub async fn delete(
    State(st): State<AppState>,
    InProject { auth, project, .. }: InProject<perm::SecretsManage>,
    Path((_name, secret)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    checked_name(&secret)?;
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let meta = secrets::delete(&tx, project.id, &secret)
        .await?
        .ok_or_else(|| not_found(&project, &secret))?;
    let mut entry = auth.audit(
        "secret.delete",
        "secret",
        Some(secret.clone()),
        Some(project.id),
    );
    entry.details = json!({ "name": secret, "version": meta.version });
    audit::append(&tx, &entry).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks the `secrets` and `secret_files` of a new command: well-formed,
/// not clashing with its `env`, allowed by the project's `allowed_secrets`
/// (403, audited) and set in the project (422). On the Kubernetes executor
/// values travel on the exec stream's stdin ahead of the command's input,
/// so only environment secrets of non-interactive commands are possible
/// there (422 otherwise): a terminal would echo them, a live input stream
/// would interleave, and a file would need a private tmpfs a pod may not
/// offer.
pub async fn check_request(
    st: &AppState,
    auth: &Auth,
    project: &Project,
    env_secrets: &[String],
    files: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
    interactive: bool,
) -> ApiResult<()> {
    if env_secrets.is_empty() && files.is_empty() {
        return Ok(());
    }
    let mut errors = Vec::new();
    if env_secrets.len() + files.len() > MAX_SECRETS_PER_COMMAND {
        errors.push(FieldError::new(
            "secrets",
            format!("at most {MAX_SECRETS_PER_COMMAND} secrets and secret files together"),
        ));
    }
    env_secret_errors(env_secrets, env, &mut errors);
    secret_file_errors(files, &mut errors);
    if let ExecutorConfig::Kubernetes(_) = project.executor {
        kubernetes_errors(env_secrets, files, interactive, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut names: Vec<String> = env_secrets.iter().chain(files.keys()).cloned().collect();
    names.sort();
    names.dedup();
    check_allowed(auth, project, &names)?;
    check_set(st, project, &names, files).await
}

/// `secrets`: names, each once, none also in `env`.
fn env_secret_errors(
    env_secrets: &[String],
    env: &BTreeMap<String, String>,
    errors: &mut Vec<FieldError>,
) {
    let mut seen = BTreeSet::new();
    for (i, n) in env_secrets.iter().enumerate() {
        if let Err(m) = validate_secret_name(n) {
            errors.push(FieldError::new(format!("secrets[{i}]"), m));
        } else if !seen.insert(n.as_str()) {
            errors.push(FieldError::new(format!("secrets[{i}]"), "named twice"));
        } else if env.contains_key(n) {
            errors.push(FieldError::new(
                format!("secrets[{i}]"),
                format!("`{n}` is also set in `env`"),
            ));
        }
    }
}

/// `secret_files`: names, and paths each used once.
fn secret_file_errors(files: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    let mut paths = BTreeSet::new();
    for (n, path) in files {
        if let Err(m) = validate_secret_name(n) {
            errors.push(FieldError::new(format!("secret_files.{n}"), m));
        }
        if let Err(m) = validate_secret_path(path) {
            errors.push(FieldError::new(format!("secret_files.{n}"), m));
        } else if !paths.insert(path.as_str()) {
            errors.push(FieldError::new(
                format!("secret_files.{n}"),
                "path used twice",
            ));
        }
    }
}

/// What the Kubernetes executor cannot carry: secret files, and secrets of
/// an interactive command.
fn kubernetes_errors(
    env_secrets: &[String],
    files: &BTreeMap<String, String>,
    interactive: bool,
    errors: &mut Vec<FieldError>,
) {
    if !files.is_empty() {
        errors.push(FieldError::new(
            "secret_files",
            "kubernetes projects take secrets as environment variables only (`secrets`)",
        ));
    }
    if !env_secrets.is_empty() && interactive {
        errors.push(FieldError::new(
            "secrets",
            "on kubernetes projects secrets travel ahead of the command's input: not with \
             a tty or stdin \"pipe\"",
        ));
    }
}

/// The project's `allowed_secrets` (when it has one) holds every name;
/// a refusal is audited.
fn check_allowed(auth: &Auth, project: &Project, names: &[String]) -> ApiResult<()> {
    let Some(allowed) = &project.allowed_secrets else {
        return Ok(());
    };
    let refused: Vec<&String> = names.iter().filter(|n| !allowed.contains(n)).collect();
    if refused.is_empty() {
        return Ok(());
    }
    auth.record_denial(
        "command.create",
        "project",
        Some(project.name.clone()),
        Some(project.id),
        "secret_policy",
        json!({ "secrets": refused }),
    );
    Err(ApiError::Forbidden(format!(
        "project `{}` does not allow its commands the secret(s) {}",
        project.name,
        refused
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Every name is a secret set in the project.
async fn check_set(
    st: &AppState,
    project: &Project,
    names: &[String],
    files: &BTreeMap<String, String>,
) -> ApiResult<()> {
    let client = st.pool.get().await?;
    let existing = secrets::existing(&client, project.id, names).await?;
    let missing: Vec<FieldError> = names
        .iter()
        .filter(|n| !existing.contains(n))
        .map(|n| {
            let field = if files.contains_key(n) {
                format!("secret_files.{n}")
            } else {
                "secrets".to_owned()
            };
            FieldError::new(
                field,
                format!("no secret `{n}` in project `{}`", project.name),
            )
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(missing))
    }
}

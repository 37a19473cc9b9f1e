//! Access as an argument type (as svix makes a permission one): a handler
//! that takes [`Allowed<P>`] runs only for a key holding `P`'s scope, and one
//! that takes [`InProject<P>`], [`OnCommand<P>`], [`OnWebhook`] or [`OnKey`] gets the
//! resource named in its path, loaded, and only if the key may see it (404
//! otherwise, as if it did not exist). The scope is checked before the
//! resource is looked up, so a key without it learns nothing of what exists.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rdev_shared::db::keys::Visibility;
use rdev_shared::db::{commands, keys, projects, webhooks};
use rdev_shared::domain::{ApiKey, Command, Project, Scope, validate_project_name};
use rdev_shared::webhook::Webhook;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Path};

/// A scope as a type.
pub trait Permission {
    /// The scope a key must hold.
    const SCOPE: Scope;
}

/// The permissions handlers name.
pub mod perm {
    use super::{Permission, Scope};

    macro_rules! permissions {
        ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
            $(#[$doc])*
            pub struct $name;
            impl Permission for $name {
                const SCOPE: Scope = Scope::$name;
            }
        )*};
    }

    permissions!(
        /// `projects:read`
        ProjectsRead,
        /// `projects:write`
        ProjectsWrite,
        /// `commands:run`
        CommandsRun,
        /// `commands:read`
        CommandsRead,
        /// `commands:input`
        CommandsInput,
        /// `secrets:manage`
        SecretsManage,
        /// `webhooks:manage`
        WebhooksManage,
        /// `keys:manage`
        KeysManage,
        /// `audit:read`
        AuditRead,
        /// `files:read`
        FilesRead,
        /// `files:write`
        FilesWrite,
    );
}

/// An authenticated caller that holds `P`'s scope (403, audited, otherwise).
pub struct Allowed<P> {
    /// The caller.
    pub auth: Auth,
    scope: PhantomData<P>,
}

impl<P: Permission> FromRequestParts<AppState> for Allowed<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let auth = Auth::from_request_parts(parts, st).await?;
        auth.require(P::SCOPE)?;
        Ok(Self {
            auth,
            scope: PhantomData,
        })
    }
}

/// `{name}` of a project, as the OpenAPI document describes it (the
/// extractors read the path themselves). These types are only for routes
/// whose handler takes no `Path`: utoipa adds the parameters of a `Path`
/// argument itself and merges them with tuple entries of the same name,
/// but not with a type's, which would then appear twice.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ProjectName {
    /// Project name
    name: String,
}

/// `{id}` of a webhook endpoint, as the OpenAPI document describes it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct WebhookId {
    /// Webhook id (uuid)
    id: String,
}

/// `{id}` of an API key, as the OpenAPI document describes it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct KeyId {
    /// Key id (uuid)
    id: String,
}

/// The value of the path parameter `name` (a route may have several).
async fn path_param(parts: &mut Parts, st: &AppState, name: &str) -> ApiResult<String> {
    let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, st).await?;
    params
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
        .ok_or_else(|| ApiError::Internal(format!("route without a `{name}` parameter")))
}

/// The live project named by `{name}`, seen by a caller holding `P`'s scope.
pub struct InProject<P> {
    /// The caller.
    pub auth: Auth,
    /// Its project.
    pub project: Project,
    scope: PhantomData<P>,
}

impl<P: Permission> FromRequestParts<AppState> for InProject<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let Allowed { auth, .. } = Allowed::<P>::from_request_parts(parts, st).await?;
        let name = path_param(parts, st, "name").await?;
        let project = load_visible_project(st, &auth, &name).await?;
        Ok(Self {
            auth,
            project,
            scope: PhantomData,
        })
    }
}

/// Loads a live project the key may see; 404 otherwise.
/// Lookups go through the instance's project cache (invalidated on every
/// instance when a project changes).
pub async fn load_visible_project(st: &AppState, auth: &Auth, name: &str) -> ApiResult<Project> {
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

/// The command named by `{id}`, seen by a caller holding `P`'s scope.
pub struct OnCommand<P> {
    /// The caller.
    pub auth: Auth,
    /// The command.
    pub command: Command,
    scope: PhantomData<P>,
}

impl<P: Permission> FromRequestParts<AppState> for OnCommand<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let Allowed { auth, .. } = Allowed::<P>::from_request_parts(parts, st).await?;
        let id = path_param(parts, st, "id").await?;
        let command = load_visible_command(st, &auth, &id).await?;
        Ok(Self {
            auth,
            command,
            scope: PhantomData,
        })
    }
}

/// Loads a command the key may see; 404 otherwise (also for a malformed id).
pub async fn load_visible_command(st: &AppState, auth: &Auth, id: &str) -> ApiResult<Command> {
    let not_found = || ApiError::NotFound(format!("command `{id}` not found"));
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let client = st.pool.get().await?;
    match commands::get(&client, id).await? {
        Some(c) if auth.sees_project(c.project_id) => Ok(c),
        _ => Err(not_found()),
    }
}

/// The webhook endpoint named by `{id}`, seen by a caller holding
/// `webhooks:manage`: a project-restricted key sees only endpoints filtered
/// on one of its projects.
pub struct OnWebhook {
    /// The caller.
    pub auth: Auth,
    /// The endpoint.
    pub webhook: Webhook,
}

impl FromRequestParts<AppState> for OnWebhook {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let Allowed { auth, .. } =
            Allowed::<perm::WebhooksManage>::from_request_parts(parts, st).await?;
        let id = path_param(parts, st, "id").await?;
        let id: Uuid = id
            .parse()
            .map_err(|_| ApiError::NotFound(format!("no such resource: `{id}` is not a uuid")))?;
        let webhook = load_visible_webhook(st, &auth, id).await?;
        Ok(Self { auth, webhook })
    }
}

/// Whether the key may see the endpoint.
fn sees_webhook(auth: &Auth, w: &Webhook) -> bool {
    match (&auth.key.project_ids, w.project_id) {
        (None, _) => true,
        (Some(ids), Some(p)) => ids.contains(&p),
        (Some(_), None) => false,
    }
}

/// Loads an endpoint the key may see; 404 otherwise.
pub async fn load_visible_webhook(st: &AppState, auth: &Auth, id: Uuid) -> ApiResult<Webhook> {
    let client = st.pool.get().await?;
    match webhooks::get(&client, id).await? {
        Some(w) if sees_webhook(auth, &w) => Ok(w),
        _ => Err(ApiError::NotFound(format!("webhook `{id}` not found"))),
    }
}

/// The API key named by `{id}`, seen by a caller holding `keys:manage`: a
/// key sees only keys within its own scopes and projects ([`key_visibility`]).
pub struct OnKey {
    /// The caller.
    pub auth: Auth,
    /// The key.
    pub key: ApiKey,
}

impl FromRequestParts<AppState> for OnKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let Allowed { auth, .. } =
            Allowed::<perm::KeysManage>::from_request_parts(parts, st).await?;
        let id = path_param(parts, st, "id").await?;
        let not_found = || ApiError::NotFound(format!("API key `{id}` not found"));
        let uuid: Uuid = id.parse().map_err(|_| not_found())?;
        let client = st.pool.get().await?;
        let key = keys::get(&client, uuid, &key_visibility(&auth))
            .await?
            .ok_or_else(not_found)?;
        Ok(Self { auth, key })
    }
}

/// Which keys `auth` sees: all for an `admin`, else those whose scopes and
/// projects are within its own.
pub fn key_visibility(auth: &Auth) -> Visibility {
    Visibility {
        scopes_within: (!auth.key.has_scope(Scope::Admin)).then(|| auth.key.scopes.clone()),
        projects_within: auth.key.project_ids.clone(),
    }
}

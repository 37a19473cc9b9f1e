//! `/v1/api-keys`: create, list, get, revoke, rotate (scope `keys:manage`);
//! and `/v1/whoami`, the calling key itself (any key).
//!
//! No key can hand out more than it holds, on any axis: a new key's scopes
//! must be granted by the caller's (`admin` grants all), a project-restricted
//! caller can only make keys restricted to a subset of its projects, and the
//! caller's own IP allowlist, expiry and rate limit bound the new key's
//! (absent ones are inherited; wider ones are refused). The same rule
//! decides which existing keys a caller sees: those it could have created
//! (others are 404). Rotating and revoking reach only the keys the caller
//! created (and itself); an `admin` key reaches all. The creator is recorded
//! (`created_by`).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rdev_shared::db::audit::{self, AuditEntry};
use rdev_shared::db::keys::{self, KeyLimits, NewKey};
use rdev_shared::domain::validate;
use rdev_shared::domain::{ApiKey, FieldError, RateLimit, Scope};
use rdev_shared::secret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::access::{Allowed, KeyId, OnKey, key_visibility, perm};
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Json, Query, field_errors};
use super::page::{Page, PageQuery};
use crate::control;

/// The routes of this module (under `/v1`).
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, revoke))
        .routes(routes!(rotate))
        .routes(routes!(whoami))
}

/// Most projects a key may be restricted to.
const MAX_KEY_PROJECTS: usize = 1000;

/// A key as the API shows it; `secret` only in create and rotate answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyView {
    id: Uuid,
    name: String,
    prefix: String,
    scopes: Vec<Scope>,
    projects: Option<Vec<String>>,
    allowed_ips: Option<Vec<String>>,
    rate_limit: Option<RateLimit>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    /// The key that created this one; `null` when it was made from the
    /// command line (`rdev-api keys create`).
    created_by: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

async fn view(
    client: &impl deadpool_postgres::GenericClient,
    k: ApiKey,
    secret: Option<String>,
) -> ApiResult<KeyView> {
    Ok(views(client, vec![(k, secret)]).await?.remove(0))
}

/// Builds views of keys, resolving all their project ids in one query.
/// A deleted project keeps its name, so the restriction stays legible.
async fn views(
    client: &impl deadpool_postgres::GenericClient,
    items: Vec<(ApiKey, Option<String>)>,
) -> ApiResult<Vec<KeyView>> {
    let mut ids: Vec<Uuid> = items
        .iter()
        .flat_map(|(k, _)| k.project_ids.iter().flatten().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let names = if ids.is_empty() {
        Default::default()
    } else {
        keys::project_names(client, &ids).await?
    };
    Ok(items
        .into_iter()
        .map(|(k, secret)| KeyView {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            projects: k
                .project_ids
                .map(|ids| ids.iter().filter_map(|id| names.get(id).cloned()).collect()),
            allowed_ips: k
                .allowed_ips
                .map(|v| v.iter().map(ToString::to_string).collect()),
            rate_limit: k.rate_limit,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
            created_at: k.created_at,
            created_by: k.created_by,
            secret,
        })
        .collect())
}

/// Body of `POST /v1/api-keys`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    scopes: Vec<String>,
    projects: Option<Vec<String>>,
    allowed_ips: Option<Vec<String>>,
    rate_limit: Option<RateLimit>,
    expires_at: Option<DateTime<Utc>>,
}

async fn audit_key(
    client: &impl deadpool_postgres::GenericClient,
    auth: &Auth,
    action: &str,
    key: &ApiKey,
) -> ApiResult<()> {
    audit::append(
        client,
        &AuditEntry {
            details: json!({
                "name": key.name,
                "scopes": key.scopes,
                "projects": key.project_ids,
            }),
            ..auth.audit(action, "api_key", Some(key.id.to_string()), None)
        },
    )
    .await?;
    Ok(())
}

/// A key request that passed its checks (those that need no database).
struct KeyRequest {
    name: String,
    scopes: Vec<Scope>,
    projects: Option<Vec<String>>,
    allowed_ips: Option<Vec<ipnet::IpNet>>,
    rate_limit: Option<RateLimit>,
    expires_at: Option<DateTime<Utc>>,
}

impl TryFrom<CreateKey> for KeyRequest {
    type Error = ApiError;

    fn try_from(body: CreateKey) -> ApiResult<Self> {
        let mut errors = Vec::new();
        validate::name("name", &body.name, &mut errors);
        let mut scopes = Vec::new();
        if body.scopes.is_empty() {
            errors.push(FieldError::new("scopes", "must name at least one scope"));
        }
        for (i, s) in body.scopes.iter().enumerate() {
            match s.parse::<Scope>() {
                Ok(s) if !scopes.contains(&s) => scopes.push(s),
                Ok(_) => {}
                Err(e) => errors.push(FieldError::new(format!("scopes[{i}]"), e.to_string())),
            }
        }
        let allowed_ips = body
            .allowed_ips
            .as_ref()
            .map(|v| validate::cidrs("allowed_ips", v, &mut errors));
        if let Some(Err(m)) = body.rate_limit.map(|r| r.validate()) {
            errors.push(FieldError::new("rate_limit", m));
        }
        if body.expires_at.is_some_and(|e| e <= Utc::now()) {
            errors.push(FieldError::new("expires_at", "must be in the future"));
        }
        if body
            .projects
            .as_ref()
            .is_some_and(|p| p.len() > MAX_KEY_PROJECTS)
        {
            errors.push(FieldError::new(
                "projects",
                format!("at most {MAX_KEY_PROJECTS} projects"),
            ));
        }
        field_errors(errors)?;
        Ok(Self {
            name: body.name,
            scopes,
            projects: body.projects,
            allowed_ips,
            rate_limit: body.rate_limit,
            expires_at: body.expires_at,
        })
    }
}

/// `POST /v1/api-keys`
#[utoipa::path(
    post,
    path = "/api-keys",
    tag = "api-keys",
    security(("bearer" = [])),
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created; `secret` is shown only here (scope `keys:manage`)",
            body = KeyView),
    ),
)]
pub async fn create(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::KeysManage>,
    Json(body): Json<CreateKey>,
) -> ApiResult<Response> {
    let request = KeyRequest::try_from(body)?;
    let mut client = st.pool.get().await?;
    let project_ids = match &request.projects {
        None => None,
        Some(names) => Some(project_ids(&client, &auth, names).await?),
    };
    check_escalation(&auth, &request.scopes, project_ids.as_ref())?;
    let limits = KeyLimits {
        allowed_ips: request.allowed_ips,
        rate_limit: request.rate_limit,
        expires_at: request.expires_at,
        created_by: Some(auth.key.id),
    };
    let limits = within_creator(&auth.key, st.cfg.rate_limit, limits)
        .map_err(|(axis, detail)| auth.deny("escalation", json!({ "axis": axis }), detail))?;
    let generated = secret::generate_key();
    let new = NewKey {
        name: request.name,
        prefix: generated.prefix.clone(),
        hash: generated.hash,
        scopes: request.scopes,
        project_ids,
    };
    let tx = client.transaction().await?;
    let key = keys::insert_with(&tx, &new, &limits).await?;
    audit_key(&tx, &auth, "api_key.create", &key).await?;
    tx.commit().await?;
    let id = key.id;
    let v = view(&client, key, Some(generated.secret)).await?;
    let mut resp = (StatusCode::CREATED, axum::Json(v)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/api-keys/{id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

/// The ids of the projects a new key is restricted to, each one the caller
/// sees (a field error per name otherwise), in one query however many.
async fn project_ids(
    client: &impl deadpool_postgres::GenericClient,
    auth: &Auth,
    names: &[String],
) -> ApiResult<Vec<Uuid>> {
    let found = keys::project_ids_by_name(client, names).await?;
    let mut ids = Vec::with_capacity(names.len());
    let mut errors = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match found.get(n) {
            Some(&id) if auth.sees_project(id) => {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            _ => errors.push(FieldError::new(
                format!("projects[{i}]"),
                format!("no project named `{n}`"),
            )),
        }
    }
    field_errors(errors)?;
    Ok(ids)
}

/// No escalation: every scope granted by the caller's, projects within its
/// own (403, audited).
fn check_escalation(
    auth: &Auth,
    scopes: &[Scope],
    project_ids: Option<&Vec<Uuid>>,
) -> ApiResult<()> {
    if let Some(s) = scopes.iter().find(|s| !s.granted_by(&auth.key.scopes)) {
        return Err(auth.deny(
            "escalation",
            json!({ "scope": s.as_str() }),
            format!(
                "cannot grant the `{}` scope, which this key lacks",
                s.as_str()
            ),
        ));
    }
    if auth.key.project_ids.is_some() && project_ids.is_none() {
        return Err(auth.deny(
            "escalation",
            json!({}),
            "a project-restricted key can only create keys restricted to its projects".into(),
        ));
    }
    Ok(())
}

/// Bounds a new key's limits by its creator's: an absent limit is
/// inherited, a given one must be within the creator's. The creator's rate
/// limit is its own, or the server default (`default_rate`) unless it is an
/// `admin` key without one. `Err((axis, detail))` names what would widen.
pub fn within_creator(
    creator: &ApiKey,
    default_rate: RateLimit,
    mut new: KeyLimits,
) -> Result<KeyLimits, (&'static str, String)> {
    match (&new.allowed_ips, &creator.allowed_ips) {
        (None, theirs) => new.allowed_ips.clone_from(theirs),
        (Some(_), None) => {}
        (Some(mine), Some(theirs)) => {
            if let Some(n) = mine.iter().find(|n| !theirs.iter().any(|t| t.contains(*n))) {
                return Err((
                    "allowed_ips",
                    format!("cannot allow {n}, which is outside this key's own allowed_ips"),
                ));
            }
        }
    }
    match (new.expires_at, creator.expires_at) {
        (None, theirs) => new.expires_at = theirs,
        (Some(mine), Some(theirs)) if mine > theirs => {
            return Err((
                "expires_at",
                format!(
                    "cannot outlive this key, which expires at {}",
                    theirs.to_rfc3339()
                ),
            ));
        }
        _ => {}
    }
    let ceiling = match creator.rate_limit {
        Some(own) => Some(own),
        None if creator.has_scope(Scope::Admin) => None,
        None => Some(default_rate),
    };
    match (new.rate_limit, ceiling) {
        (None, _) => new.rate_limit = creator.rate_limit,
        (Some(mine), Some(max)) => {
            let burst_ok = mine.requests <= max.requests;
            let rate_ok = i64::from(mine.requests) * i64::from(max.window_s)
                <= i64::from(max.requests) * i64::from(mine.window_s);
            if !(burst_ok && rate_ok) {
                return Err((
                    "rate_limit",
                    format!(
                        "cannot allow more than this key's own budget of {} requests per {} s",
                        max.requests, max.window_s
                    ),
                ));
            }
        }
        (Some(_), None) => {}
    }
    Ok(new)
}

/// Whether `caller` may rotate or revoke `target`: keys it created, itself,
/// or any key for an `admin`.
fn may_manage(caller: &ApiKey, target: &ApiKey) -> bool {
    caller.has_scope(Scope::Admin) || target.id == caller.id || target.created_by == Some(caller.id)
}

fn not_creator(auth: &Auth, target: &ApiKey) -> ApiError {
    auth.deny(
        "not_creator",
        json!({ "key_id": target.id }),
        "this API key can rotate or revoke only the keys it created".into(),
    )
}

/// `GET /v1/api-keys`: in creation order, never with secrets.
#[utoipa::path(
    get,
    path = "/api-keys",
    tag = "api-keys",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of keys (scope `keys:manage`)", body = Page<KeyView>),
    ),
)]
pub async fn list(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::KeysManage>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Page<KeyView>> {
    let (limit, after) = q.parse::<Uuid>()?;
    let client = st.pool.get().await?;
    let items = keys::list(&client, after, &key_visibility(&auth), limit).await?;
    let page = Page::new(items, limit, |k| k.id);
    let items = views(&client, page.items.into_iter().map(|k| (k, None)).collect()).await?;
    Ok(Page {
        items,
        next_cursor: page.next_cursor,
    })
}

/// `GET /v1/api-keys/{id}`
#[utoipa::path(
    get,
    path = "/api-keys/{id}",
    tag = "api-keys",
    security(("bearer" = [])),
    params(KeyId),
    responses(
        (status = 200, description = "The key (scope `keys:manage`)", body = KeyView),
    ),
)]
pub async fn get(
    State(st): State<AppState>,
    OnKey { key, .. }: OnKey,
) -> ApiResult<impl IntoResponse> {
    let client = st.pool.get().await?;
    Ok(axum::Json(view(&client, key, None).await?))
}

/// `DELETE /v1/api-keys/{id}`: revokes the key on every instance within a
/// second (cache eviction over the control exchange). Idempotent.
#[utoipa::path(
    delete,
    path = "/api-keys/{id}",
    tag = "api-keys",
    security(("bearer" = [])),
    params(KeyId),
    responses(
        (status = 204, description = "Revoked (scope `keys:manage`)"),
    ),
)]
pub async fn revoke(
    State(st): State<AppState>,
    OnKey { auth, key }: OnKey,
) -> ApiResult<StatusCode> {
    if !may_manage(&auth.key, &key) {
        return Err(not_creator(&auth, &key));
    }
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let id = key.id;
    let key = keys::revoke(&tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("API key `{id}` not found")))?;
    audit_key(&tx, &auth, "api_key.revoke", &key).await?;
    tx.commit().await?;
    drop(client);
    control::announce_key_change(&st.keys, &st.publisher, key.id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/api-keys/{id}/rotate`: a new secret for the same key; the old
/// one stops working at once on every instance.
#[utoipa::path(
    post,
    path = "/api-keys/{id}/rotate",
    tag = "api-keys",
    security(("bearer" = [])),
    params(KeyId),
    responses(
        (status = 200, description = "A new secret, shown only here (scope `keys:manage`)", body = KeyView),
    ),
)]
pub async fn rotate(State(st): State<AppState>, OnKey { auth, key }: OnKey) -> ApiResult<Response> {
    if !may_manage(&auth.key, &key) {
        return Err(not_creator(&auth, &key));
    }
    if key.revoked_at.is_some() {
        return Err(ApiError::Conflict("a revoked key cannot be rotated".into()));
    }
    let generated = secret::generate_key();
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let key = keys::rotate(&tx, key.id, &generated.prefix, &generated.hash)
        .await?
        .ok_or_else(|| ApiError::Conflict("a revoked key cannot be rotated".into()))?;
    audit_key(&tx, &auth, "api_key.rotate", &key).await?;
    tx.commit().await?;
    control::announce_key_change(&st.keys, &st.publisher, key.id).await;
    let v = view(&client, key, Some(generated.secret)).await?;
    Ok(axum::Json(v).into_response())
}

/// `GET /v1/whoami`: the key making the request (never its secret). Any
/// valid key may read itself, whatever its scopes, so a client (the web
/// console) can tell what it is allowed to do before trying.
#[utoipa::path(
    get,
    path = "/whoami",
    tag = "api-keys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The calling key: its scopes, projects and limits (any valid key)", body = KeyView),
    ),
)]
pub async fn whoami(State(st): State<AppState>, auth: Auth) -> ApiResult<impl IntoResponse> {
    let client = st.pool.get().await?;
    Ok(axum::Json(view(&client, auth.key, None).await?))
}

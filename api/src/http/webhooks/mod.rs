//! `/v1/webhooks`: endpoints (create, list, get, update, delete, test) and
//! their delivery log (list, redeliver one, recover many). Scope
//! `webhooks:manage`; a project-restricted key sees only endpoints filtered
//! on one of its projects.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use rdev_shared::db::audit::{self, AuditEntry};
use rdev_shared::db::projects;
use rdev_shared::db::webhooks::{self as repo, NewWebhook, WebhookPatch};
use rdev_shared::domain::FieldError;
use rdev_shared::netguard;
use rdev_shared::webhook::{TEST_EVENT, Webhook, is_known_event};
use rdev_shared::webhook_sign;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use uuid::Uuid;

mod deliveries;

pub use self::deliveries::{
    DeliveriesQuery, DeliveryView, MAX_DELIVERIES_PAGE_BYTES, Recover, Recovered,
};
use super::AppState;
use super::access::{Allowed, OnWebhook, WebhookId, perm};
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Json, Query};
use super::page::{Page, PageQuery};

/// The routes of this module (under `/v1`).
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
        .routes(routes!(test))
        .routes(routes!(rotate_secret))
        .routes(routes!(deliveries::deliveries))
        .routes(routes!(deliveries::redeliver))
        .routes(routes!(deliveries::recover))
}

const MAX_EVENTS: usize = 16;

/// An endpoint as the API shows it (never its secret, except on create).
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    id: Uuid,
    url: String,
    events: Vec<String>,
    project: Option<String>,
    enabled: bool,
    disabled_reason: Option<String>,
    failing_since: Option<DateTime<Utc>>,
    /// After a secret rotation: until when the previous secret still signs
    /// too (a second `v1,` signature); `null` otherwise.
    previous_secret_expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id,
            url: w.url,
            events: w.events,
            project: w.project,
            enabled: w.enabled,
            disabled_reason: w.disabled_reason,
            failing_since: w.failing_since,
            previous_secret_expires_at: w.previous_secret_expires_at,
            created_at: w.created_at,
            updated_at: w.updated_at,
            secret: None,
        }
    }
}

/// Answer of `POST /v1/webhooks/{id}/test`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TestDelivery {
    event_id: Uuid,
    delivery_id: Uuid,
}

/// Body of `POST /v1/webhooks`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    url: String,
    events: Vec<String>,
    project: Option<String>,
    secret: Option<String>,
}

/// Body of `PATCH /v1/webhooks/{id}`: absent fields stay; `"project": null`
/// removes the project filter.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    url: Option<String>,
    events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    project: Option<Option<String>>,
    enabled: Option<bool>,
}

fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// Checks a URL's shape and, unless private destinations are allowed, that
/// every address it resolves to is public.
async fn check_url(url: &str, allow_private: bool, errors: &mut Vec<FieldError>) {
    let target = match netguard::parse_url(url) {
        Ok(t) => t,
        Err(e) => return errors.push(FieldError::new("url", e.to_string())),
    };
    if allow_private {
        return;
    }
    if let Err(e) = netguard::resolve_all_public(&target).await {
        errors.push(FieldError::new("url", e.to_string()));
    }
}

/// Validates and normalises (sorted, deduplicated) an event list.
fn check_events(events: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    if events.is_empty() || events.len() > MAX_EVENTS {
        errors.push(FieldError::new(
            "events",
            format!("list 1-{MAX_EVENTS} event types, or \"*\""),
        ));
    }
    for (i, e) in events.iter().enumerate() {
        if !is_known_event(e) {
            errors.push(FieldError::new(
                format!("events[{i}]"),
                format!("unknown event type `{e}`"),
            ));
        }
    }
    let mut out = events.to_vec();
    out.sort();
    out.dedup();
    out
}

/// Resolves a project name the key may see; a field error otherwise.
async fn project_id(
    st: &AppState,
    auth: &Auth,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> ApiResult<Option<Uuid>> {
    let client = st.pool.get().await?;
    match projects::get_by_name(&client, name).await? {
        Some(p) if auth.sees_project(p.id) => Ok(Some(p.id)),
        _ => {
            errors.push(FieldError::new("project", format!("no project `{name}`")));
            Ok(None)
        }
    }
}

fn restricted_needs_project() -> ApiError {
    ApiError::Forbidden(
        "a project-restricted key can only manage webhooks filtered on one of its projects".into(),
    )
}

fn entry<'a>(
    auth: &'a Auth,
    action: &'a str,
    w: &Webhook,
    details: serde_json::Value,
) -> AuditEntry<'a> {
    AuditEntry {
        details,
        ..auth.audit(action, "webhook", Some(w.id.to_string()), w.project_id)
    }
}

fn require_enabled(w: &Webhook) -> ApiResult<()> {
    if w.enabled {
        Ok(())
    } else {
        Err(ApiError::Conflict(
            "the webhook is disabled; re-enable it with PATCH {\"enabled\": true} first".into(),
        ))
    }
}

/// `POST /v1/webhooks`
#[utoipa::path(
    post,
    path = "/webhooks",
    tag = "webhooks",
    security(("bearer" = [])),
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = WebhookView, headers(("Location" = String))),
    ),
)]
pub async fn create(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::WebhooksManage>,
    Json(body): Json<CreateWebhook>,
) -> ApiResult<impl IntoResponse> {
    if auth.key.project_ids.is_some() && body.project.is_none() {
        return Err(restricted_needs_project());
    }
    let mut errors = Vec::new();
    check_url(&body.url, st.cfg.webhook_allow_private, &mut errors).await;
    let events = check_events(&body.events, &mut errors);
    if let Some(s) = &body.secret
        && let Err(m) = webhook_sign::validate_secret(s)
    {
        errors.push(FieldError::new("secret", m));
    }
    let project_id = match &body.project {
        Some(name) => project_id(&st, &auth, name, &mut errors).await?,
        None => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let secret = body.secret.unwrap_or_else(webhook_sign::generate_secret);
    let new = NewWebhook {
        url: body.url,
        secret: rdev_shared::config::Secret::new(secret.clone()),
        events,
        project_id,
    };
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let w = repo::insert(&tx, &new).await?;
    audit::append(
        &tx,
        &entry(
            &auth,
            "webhook.create",
            &w,
            json!({ "url": w.url, "events": w.events }),
        ),
    )
    .await?;
    tx.commit().await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/webhooks/{}", w.id)) {
        headers.insert(header::LOCATION, v);
    }
    let mut view = WebhookView::from(w);
    view.secret = Some(secret);
    Ok((StatusCode::CREATED, headers, axum::Json(view)))
}

/// `GET /v1/webhooks`
#[utoipa::path(
    get,
    path = "/webhooks",
    tag = "webhooks",
    security(("bearer" = [])),
    params(
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of endpoints", body = Page<WebhookView>),
    ),
)]
pub async fn list(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::WebhooksManage>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Page<WebhookView>> {
    let (limit, after) = q.parse::<Uuid>()?;
    let client = st.pool.get().await?;
    let items = repo::list(&client, after, auth.key.project_ids.as_deref(), limit).await?;
    Ok(Page::new(items, limit, |w| w.id).map(WebhookView::from))
}

/// `GET /v1/webhooks/{id}`
#[utoipa::path(
    get,
    path = "/webhooks/{id}",
    tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookId),
    responses(
        (status = 200, description = "The endpoint", body = WebhookView),
    ),
)]
pub async fn get(OnWebhook { webhook, .. }: OnWebhook) -> axum::Json<WebhookView> {
    axum::Json(WebhookView::from(webhook))
}

/// `PATCH /v1/webhooks/{id}`
#[utoipa::path(
    patch,
    path = "/webhooks/{id}",
    tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookId),
    request_body = UpdateWebhook,
    responses(
        (status = 200, description = "Updated", body = WebhookView),
    ),
)]
pub async fn update(
    State(st): State<AppState>,
    OnWebhook {
        auth,
        webhook: current,
    }: OnWebhook,
    Json(body): Json<UpdateWebhook>,
) -> ApiResult<impl IntoResponse> {
    let id = current.id;
    if auth.key.project_ids.is_some() && matches!(body.project, Some(None)) {
        return Err(restricted_needs_project());
    }
    let mut errors = Vec::new();
    if let Some(url) = &body.url {
        check_url(url, st.cfg.webhook_allow_private, &mut errors).await;
    }
    let events = body.events.as_ref().map(|e| check_events(e, &mut errors));
    let project_id = match &body.project {
        Some(Some(name)) => Some(project_id(&st, &auth, name, &mut errors).await?),
        Some(None) => Some(None),
        None => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let patch = WebhookPatch {
        url: body.url,
        events,
        project_id,
        enabled: body.enabled,
    };
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let updated = repo::update(&tx, id, &patch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("webhook `{id}` not found")))?;
    let mut changed = serde_json::Map::new();
    if patch.url.is_some() {
        changed.insert("url".into(), json!(updated.url));
    }
    if patch.events.is_some() {
        changed.insert("events".into(), json!(updated.events));
    }
    if patch.project_id.is_some() {
        changed.insert("project".into(), json!(updated.project));
    }
    if let Some(e) = patch.enabled {
        changed.insert("enabled".into(), json!(e));
        changed.insert("was_enabled".into(), json!(current.enabled));
    }
    audit::append(
        &tx,
        &entry(&auth, "webhook.update", &updated, changed.into()),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(WebhookView::from(updated)))
}

/// `DELETE /v1/webhooks/{id}`: pending deliveries stop; the log stays.
#[utoipa::path(
    delete,
    path = "/webhooks/{id}",
    tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookId),
    responses(
        (status = 204, description = "Deleted"),
    ),
)]
pub async fn delete(
    State(st): State<AppState>,
    OnWebhook { auth, webhook: w }: OnWebhook,
) -> ApiResult<impl IntoResponse> {
    let id = w.id;
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    if !repo::delete(&tx, id).await? {
        return Err(ApiError::NotFound(format!("webhook `{id}` not found")));
    }
    audit::append(&tx, &entry(&auth, "webhook.delete", &w, json!({}))).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/webhooks/{id}/rotate-secret`: a new signing secret, shown
/// only in this answer. Deliveries are signed with both the new and the
/// previous secret (two `v1,` entries in `webhook-signature`) for
/// `RDEV_WEBHOOK_SECRET_OVERLAP` (default 24 h), then with the new one only.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookId),
    responses(
        (status = 200, description = "The endpoint with its new `secret` (shown only here); `previous_secret_expires_at` says until when the old one still signs", body = WebhookView),
    ),
)]
pub async fn rotate_secret(
    State(st): State<AppState>,
    OnWebhook { auth, webhook: w }: OnWebhook,
) -> ApiResult<impl IntoResponse> {
    let id = w.id;
    let secret = webhook_sign::generate_secret();
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let rotated = repo::rotate_secret(
        &tx,
        w.id,
        &rdev_shared::config::Secret::new(secret.clone()),
        st.cfg.webhook_secret_overlap,
    )
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("webhook `{id}` not found")))?;
    audit::append(
        &tx,
        &entry(
            &auth,
            "webhook.rotate_secret",
            &rotated,
            json!({ "previous_secret_expires_at": rotated.previous_secret_expires_at }),
        ),
    )
    .await?;
    tx.commit().await?;
    let mut view = WebhookView::from(rotated);
    view.secret = Some(secret);
    Ok(axum::Json(view))
}

/// `POST /v1/webhooks/{id}/test`: enqueues a `webhook.test` event for this
/// endpoint only.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/test",
    tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookId),
    responses(
        (status = 202, description = "A `webhook.test` event is queued for this endpoint", body = TestDelivery),
    ),
)]
pub async fn test(
    State(st): State<AppState>,
    OnWebhook { auth, webhook: w }: OnWebhook,
) -> ApiResult<impl IntoResponse> {
    require_enabled(&w)?;
    let event_id = Uuid::now_v7();
    let body = json!({
        "id": event_id,
        "type": TEST_EVENT,
        "timestamp": Utc::now(),
        "data": { "webhook_id": w.id },
    });
    let payload = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let mut trace = std::collections::BTreeMap::new();
    rdev_shared::telemetry::inject_current(&mut trace);
    let delivery_id =
        repo::insert_delivery(&tx, w.id, event_id, TEST_EVENT, &payload, &trace).await?;
    audit::append(
        &tx,
        &entry(
            &auth,
            "webhook.test",
            &w,
            json!({ "event_id": event_id, "delivery_id": delivery_id }),
        ),
    )
    .await?;
    tx.commit().await?;
    let queued = TestDelivery {
        event_id,
        delivery_id,
    };
    Ok((StatusCode::ACCEPTED, axum::Json(queued)))
}

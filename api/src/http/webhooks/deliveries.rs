//! A webhook endpoint's delivery log: list (with attempts), redeliver one,
//! recover many.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use rdev_shared::db::audit;
use rdev_shared::db::webhooks as repo;
use rdev_shared::webhook::{Attempt, Delivery, DeliveryStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{entry, require_enabled};
use crate::http::AppState;
use crate::http::access::{OnWebhook, WebhookId};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::page::{Page, cursor, page_limit};

/// Largest deliveries page, in bytes of JSON: every attempt carries up to
/// 20 KB of response excerpt, so 200 deliveries could otherwise make a page
/// of tens of megabytes. A page stops before the delivery that would cross
/// it (it always holds at least one) and `next_cursor` continues after it.
pub const MAX_DELIVERIES_PAGE_BYTES: usize = 1024 * 1024;

/// Answer of `POST /v1/webhooks/{id}/recover`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Recovered {
    /// Deliveries put back to pending.
    recovered: i64,
}

/// A delivery as the API shows it, with its attempts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    id: Uuid,
    webhook_id: Uuid,
    event_id: Uuid,
    event_type: String,
    status: DeliveryStatus,
    next_attempt_at: Option<DateTime<Utc>>,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    last_duration_ms: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    attempts: Vec<Attempt>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            webhook_id: d.webhook_id,
            event_id: d.event_id,
            event_type: d.event_type,
            next_attempt_at: (d.status == DeliveryStatus::Pending).then_some(d.next_attempt_at),
            status: d.status,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            last_duration_ms: d.last_duration_ms,
            created_at: d.created_at,
            updated_at: d.updated_at,
            attempts: d.attempts,
        }
    }
}

/// Query of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    status: Option<String>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/webhooks/{id}/deliveries`: newest first, with attempts.
#[utoipa::path(
    get,
    path = "/webhooks/{id}/deliveries",
    tag = "webhooks",
    security(("bearer" = [])),
    params(
        WebhookId,
        DeliveriesQuery,
    ),
    responses(
        (status = 200, description = "A page of deliveries with their attempts", body = Page<DeliveryView>),
    ),
)]
pub async fn deliveries(
    State(st): State<AppState>,
    OnWebhook { webhook: w, .. }: OnWebhook,
    Query(q): Query<DeliveriesQuery>,
) -> ApiResult<Page<DeliveryView>> {
    let limit = page_limit(q.limit)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<DeliveryStatus>()
                .map_err(|_| ApiError::field("status", "one of pending, succeeded, failed, dead"))
        })
        .transpose()?;
    let before = cursor::decode_opt::<Uuid>(q.cursor.as_deref())?;
    let client = st.pool.get().await?;
    let items = repo::list_deliveries(&client, w.id, status, before, limit).await?;
    drop(client);
    Ok(bounded_page(items, limit))
}

/// A page of deliveries that stops before the one that would take it over
/// [`MAX_DELIVERIES_PAGE_BYTES`] of JSON (it always holds at least one); its
/// cursor then continues after the last delivery it holds.
fn bounded_page(items: Vec<Delivery>, limit: i64) -> Page<DeliveryView> {
    let page = Page::new(items, limit, |d| d.id);
    let mut out = Vec::with_capacity(page.items.len());
    let mut bytes = 0usize;
    let mut cut = false;
    for d in page.items {
        let v = DeliveryView::from(d);
        let size = serde_json::to_vec(&v).map_or(0, |b| b.len()) + 1;
        if !out.is_empty() && bytes + size > MAX_DELIVERIES_PAGE_BYTES {
            cut = true;
            break;
        }
        bytes += size;
        out.push(v);
    }
    let next_cursor = match out.last() {
        Some(last) if cut => Some(cursor::encode(&last.id.to_string())),
        _ => page.next_cursor,
    };
    Page {
        items: out,
        next_cursor,
    }
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery_id}/redeliver`: a new
/// attempt now (a finished delivery gets one attempt, without retries).
#[utoipa::path(
    post,
    path = "/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "Webhook id (uuid)"),
        ("delivery_id" = String, Path, description = "Delivery id (uuid)"),
    ),
    responses(
        (status = 202, description = "A new attempt is queued", body = DeliveryView),
    ),
)]
pub async fn redeliver(
    State(st): State<AppState>,
    OnWebhook { auth, webhook: w }: OnWebhook,
    Path(ids): Path<(Uuid, Uuid)>,
) -> ApiResult<impl IntoResponse> {
    let delivery_id = ids.1;
    require_enabled(&w)?;
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    if !repo::redeliver(&tx, w.id, delivery_id).await? {
        return Err(ApiError::NotFound(format!(
            "delivery `{delivery_id}` not found"
        )));
    }
    audit::append(
        &tx,
        &entry(
            &auth,
            "webhook.redeliver",
            &w,
            json!({ "delivery_id": delivery_id }),
        ),
    )
    .await?;
    let d = repo::get_delivery(&tx, w.id, delivery_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("delivery `{delivery_id}` not found")))?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, axum::Json(DeliveryView::from(d))))
}

/// Body of `POST /v1/webhooks/{id}/recover`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    since: DateTime<Utc>,
}

/// `POST /v1/webhooks/{id}/recover`: every failed or dead delivery created
/// since `since` goes back to pending with a fresh retry schedule.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/recover",
    tag = "webhooks",
    security(("bearer" = [])),
    params(WebhookId),
    request_body = Recover,
    responses(
        (status = 202, description = "Failed and dead deliveries since `since` are pending again", body = Recovered),
    ),
)]
pub async fn recover(
    State(st): State<AppState>,
    OnWebhook { auth, webhook: w }: OnWebhook,
    Json(body): Json<Recover>,
) -> ApiResult<impl IntoResponse> {
    require_enabled(&w)?;
    if body.since > Utc::now() {
        return Err(ApiError::field("since", "must not be in the future"));
    }
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    let n = repo::recover(&tx, w.id, body.since).await?;
    audit::append(
        &tx,
        &entry(
            &auth,
            "webhook.recover",
            &w,
            json!({ "since": body.since, "recovered": n }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Recovered {
            recovered: i64::try_from(n).unwrap_or(i64::MAX),
        }),
    ))
}

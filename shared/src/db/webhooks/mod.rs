//! `webhooks`, `webhook_deliveries` and `webhook_attempts` repository.
//!
//! Deliveries are a queue table: dispatchers claim due rows with
//! `FOR UPDATE SKIP LOCKED` and, in the same statement, push
//! `next_attempt_at` forward by a lease and stamp a `lease_token`. Only the
//! holder of the current token can record the attempt, so two dispatchers
//! never send or count the same attempt, and a dispatcher that dies
//! mid-attempt only delays it until the lease runs out.

use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::DbError;
use crate::config::Secret;
use crate::webhook::Webhook;

mod deliveries;

pub use deliveries::{
    AttemptRecord, Claimed, DUE_CHANNEL, FanOut, Next, claim_due, fan_out, get_delivery,
    insert_delivery, list_deliveries, lock_endpoint, mark_failing, mark_healthy, record_attempt,
    record_successes, recover, redeliver, release, subscribes, wants_event, write_event,
    write_events,
};

/// Reason recorded when an endpoint is disabled through the API.
pub const DISABLED_BY_USER: &str = "disabled through the API";
/// Error recorded on pending deliveries stopped because their endpoint was disabled.
const STOPPED_DISABLED: &str = "endpoint disabled";

/// Fields of a new endpoint.
#[derive(Clone, Debug)]
pub struct NewWebhook {
    /// Destination URL (already validated).
    pub url: String,
    /// Signing secret.
    pub secret: Secret,
    /// Subscribed event types.
    pub events: Vec<String>,
    /// Project filter.
    pub project_id: Option<Uuid>,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct WebhookPatch {
    /// New URL.
    pub url: Option<String>,
    /// New event list.
    pub events: Option<Vec<String>>,
    /// New project filter (`Some(None)` = every project).
    pub project_id: Option<Option<Uuid>>,
    /// Enable (clears the reason and the failure run) or disable.
    pub enabled: Option<bool>,
}

/// The sealed column (see [`crate::crypto`]).
pub const SECRET_FIELD: &str = "webhooks.secret";
/// The sealed column of the secret before the last rotation.
pub const PREVIOUS_SECRET_FIELD: &str = "webhooks.previous_secret";

const WEBHOOK_COLUMNS: &str = "w.id, w.url, w.secret, w.events, w.project_id, p.name AS project, \
     w.enabled, w.disabled_reason, w.failing_since, w.created_at, w.updated_at, \
     CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret_expires_at END \
     AS previous_secret_expires_at";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn webhook_from_row(row: &Row) -> Result<Webhook, DbError> {
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        secret: Secret::new(
            crate::crypto::ring().open_str(&row.try_get::<_, String>("secret")?, SECRET_FIELD)?,
        ),
        events: row.try_get("events")?,
        project_id: row.try_get("project_id")?,
        project: row.try_get("project")?,
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: row.try_get("failing_since")?,
        previous_secret_expires_at: row.try_get("previous_secret_expires_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Inserts an endpoint.
pub async fn insert(
    client: &impl deadpool_postgres::GenericClient,
    w: &NewWebhook,
) -> Result<Webhook, DbError> {
    let id = Uuid::now_v7();
    client
        .execute(
            "INSERT INTO webhooks (id, url, secret, events, project_id) VALUES ($1,$2,$3,$4,$5)",
            &[
                &id,
                &w.url,
                &crate::crypto::ring().seal_str(w.secret.expose(), SECRET_FIELD),
                &w.events,
                &w.project_id,
            ],
        )
        .await?;
    get(client, id)
        .await?
        .ok_or_else(|| DbError::Corrupt("inserted webhook vanished".into()))
}

/// A live (not deleted) endpoint.
pub async fn get(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<Webhook>, DbError> {
    let sql = format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks w LEFT JOIN projects p ON p.id = w.project_id \
         WHERE w.id = $1 AND w.deleted_at IS NULL"
    );
    client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(webhook_from_row)
        .transpose()
}

/// Live endpoints ordered by id, after `after`; with `only`, just those
/// filtered on one of these projects (a project-restricted key's view).
pub async fn list(
    client: &impl deadpool_postgres::GenericClient,
    after: Option<Uuid>,
    only: Option<&[Uuid]>,
    limit: i64,
) -> Result<Vec<Webhook>, DbError> {
    let sql = format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks w LEFT JOIN projects p ON p.id = w.project_id \
         WHERE w.deleted_at IS NULL AND ($1::uuid IS NULL OR w.id > $1) \
         AND ($2::uuid[] IS NULL OR w.project_id = ANY($2)) ORDER BY w.id LIMIT $3"
    );
    let only = only.map(|o| o.to_vec());
    let rows = client.query(&sql, &[&after, &only, &limit]).await?;
    rows.iter().map(webhook_from_row).collect()
}

/// Stops the pending deliveries of an endpoint (they become `failed` and
/// can be recovered later).
async fn stop_pending(
    client: &impl deadpool_postgres::GenericClient,
    webhook_id: Uuid,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = $2, lease_token = NULL, \
             updated_at = now() WHERE webhook_id = $1 AND status = 'pending'",
            &[&webhook_id, &STOPPED_DISABLED],
        )
        .await?)
}

/// Applies a patch to a live endpoint; `None` when there is none. Disabling
/// stops its pending deliveries; enabling clears the reason and the failure run.
pub async fn update(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    patch: &WebhookPatch,
) -> Result<Option<Webhook>, DbError> {
    // One static statement: absent fields keep their value. Re-enabling a
    // disabled endpoint clears its reason and starts a fresh failure clock;
    // disabling keeps the reason of an earlier automatic disable.
    let sql = "UPDATE webhooks w SET updated_at = now(), \
               url = COALESCE($2::text, w.url), \
               events = COALESCE($3::text[], w.events), \
               project_id = CASE WHEN $4 THEN $5::uuid ELSE w.project_id END, \
               enabled = COALESCE($6::boolean, w.enabled), \
               disabled_reason = CASE WHEN $6::boolean IS NULL THEN w.disabled_reason \
                   WHEN $6::boolean THEN NULL WHEN w.enabled THEN $7 \
                   ELSE w.disabled_reason END, \
               failing_since = CASE WHEN $6::boolean AND NOT w.enabled THEN NULL \
                   ELSE w.failing_since END \
               WHERE w.id = $1 AND w.deleted_at IS NULL RETURNING w.id";
    let params: [&(dyn ToSql + Sync); 7] = [
        &id,
        &patch.url,
        &patch.events,
        &patch.project_id.is_some(),
        &patch.project_id.flatten(),
        &patch.enabled,
        &DISABLED_BY_USER,
    ];
    if client.query_opt(sql, &params).await?.is_none() {
        return Ok(None);
    }
    if patch.enabled == Some(false) {
        stop_pending(client, id).await?;
    }
    get(client, id).await
}

/// Replaces a live endpoint's secret; the current one keeps signing beside
/// it for `overlap` (zero: it stops at once). `None` when there is none.
pub async fn rotate_secret(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    new_secret: &Secret,
    overlap: Duration,
) -> Result<Option<Webhook>, DbError> {
    let ring = crate::crypto::ring();
    let Some(row) = client
        .query_opt(
            "SELECT secret FROM webhooks WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let current = ring.open_str(&row.try_get::<_, String>(0)?, SECRET_FIELD)?;
    let (previous, until) = if overlap.is_zero() {
        (None, None)
    } else {
        (
            Some(ring.seal_str(&current, PREVIOUS_SECRET_FIELD)),
            Some(secs(overlap)),
        )
    };
    client
        .execute(
            "UPDATE webhooks SET secret = $2, previous_secret = $3, \
             previous_secret_expires_at = now() + make_interval(secs => $4), updated_at = now() \
             WHERE id = $1",
            &[
                &id,
                &ring.seal_str(new_secret.expose(), SECRET_FIELD),
                &previous,
                &until,
            ],
        )
        .await?;
    get(client, id).await
}

/// Soft-deletes a live endpoint and stops its pending deliveries.
pub async fn delete(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE webhooks SET deleted_at = now(), updated_at = now() \
             WHERE id = $1 AND deleted_at IS NULL",
            &[&id],
        )
        .await?;
    if n == 1 {
        stop_pending(client, id).await?;
    }
    Ok(n == 1)
}

/// Disables an enabled endpoint with a reason and stops its pending
/// deliveries; false when it was already disabled or gone.
pub async fn disable(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    reason: &str,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE webhooks SET enabled = false, disabled_reason = $2, updated_at = now() \
             WHERE id = $1 AND enabled AND deleted_at IS NULL",
            &[&id, &reason],
        )
        .await?;
    if n == 1 {
        stop_pending(client, id).await?;
    }
    Ok(n == 1)
}

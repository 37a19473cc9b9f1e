//! `outbox` repository: messages written in the same transaction as the
//! state change they announce, published after commit, and re-published by
//! the relay when the first attempt did not happen.

use std::time::Duration;

use tokio_postgres::Row;

use super::{DbError, from_json, prepared, to_json};
use crate::mq::OutgoingMessage;

/// A stored message and its id.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Row id.
    pub id: i64,
    /// The message.
    pub message: OutgoingMessage,
}

fn from_row(row: &Row) -> Result<Pending, DbError> {
    let priority: i16 = row.try_get("priority")?;
    Ok(Pending {
        id: row.try_get("id")?,
        message: OutgoingMessage {
            exchange: row.try_get("exchange")?,
            routing_key: row.try_get("routing_key")?,
            payload: row.try_get("payload")?,
            headers: from_json(row.try_get("headers")?, "outbox.headers")?,
            priority: u8::try_from(priority).unwrap_or(0),
        },
    })
}

/// Adds a message; call inside the transaction of the change it announces.
pub async fn insert(
    client: &impl deadpool_postgres::GenericClient,
    m: &OutgoingMessage,
) -> Result<i64, DbError> {
    const SQL: &str = "INSERT INTO outbox (exchange, routing_key, payload, headers, priority) \
        VALUES ($1,$2,$3,$4,$5) RETURNING id";
    let row = client
        .query_one(
            &prepared(client, SQL).await?,
            &[
                &m.exchange,
                &m.routing_key,
                &m.payload,
                &to_json(&m.headers),
                &i16::from(m.priority),
            ],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Adds a command's lifecycle event (its routing key is the event type)
/// only if an endpoint wants it: an enabled webhook, not deleted,
/// subscribed to the type or to `*`, for the command's project or for all
/// projects (the rule of [`super::webhooks::deliveries::subscribes`]).
/// Webhooks are the events' only consumer, so an event nobody subscribes to
/// is never stored, published or fanned out. The check and the insert are
/// one statement in the caller's transaction: an endpoint gets the events
/// of changes that commit after it exists. `None` when nothing was stored.
pub async fn insert_event(
    client: &impl deadpool_postgres::GenericClient,
    m: &OutgoingMessage,
    project_id: uuid::Uuid,
) -> Result<Option<i64>, DbError> {
    const SQL: &str = "INSERT INTO outbox (exchange, routing_key, payload, headers, priority) \
        SELECT $1,$2,$3,$4,$5 WHERE EXISTS (SELECT 1 FROM webhooks w \
          WHERE w.deleted_at IS NULL AND w.enabled \
            AND (w.project_id IS NULL OR w.project_id = $6) \
            AND ($2 = ANY(w.events) OR '*' = ANY(w.events))) \
        RETURNING id";
    let row = client
        .query_opt(
            &prepared(client, SQL).await?,
            &[
                &m.exchange,
                &m.routing_key,
                &m.payload,
                &to_json(&m.headers),
                &i16::from(m.priority),
                &project_id,
            ],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Marks messages as published.
pub async fn mark_published(
    client: &impl deadpool_postgres::GenericClient,
    ids: &[i64],
) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    const SQL: &str =
        "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL";
    client
        .execute(&prepared(client, SQL).await?, &[&ids])
        .await?;
    Ok(())
}

/// Locks up to `limit` unpublished messages older than `min_age`, oldest
/// first, skipping rows another relay holds. Call inside a transaction and
/// mark them published in it.
pub async fn lock_unpublished(
    client: &impl deadpool_postgres::GenericClient,
    min_age: Duration,
    limit: i64,
) -> Result<Vec<Pending>, DbError> {
    let age_ms = i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT id, exchange, routing_key, payload, headers, priority FROM outbox \
             WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1::float8 / 1000) \
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&(age_ms as f64), &limit],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// Number of unpublished messages.
pub async fn pending_count(client: &impl deadpool_postgres::GenericClient) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

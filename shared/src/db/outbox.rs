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

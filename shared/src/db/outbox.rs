//! `outbox` repository: messages written in the same transaction as the
//! state change they announce, published after commit, and re-published by
//! the relay when the first attempt did not happen.

use std::sync::LazyLock;
use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{DbError, from_json, insert_runs, insert_statements, prepared, to_json};
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
    let ids = insert_many(client, &[m]).await?;
    ids.first()
        .copied()
        .ok_or_else(|| DbError::Corrupt("an outbox insert returned no id".into()))
}

/// Adds messages, up to [`MAX_INSERT`](super::MAX_INSERT) to a statement;
/// their row ids, in the order of `messages`. Call inside the transaction
/// of the change they announce.
///
/// `RETURNING` does not promise the order of `VALUES`, so each row is
/// matched to its message by its exchange, routing key and payload; two
/// messages equal in those are interchangeable to whoever marks them
/// published.
pub async fn insert_many(
    client: &impl deadpool_postgres::GenericClient,
    messages: &[&OutgoingMessage],
) -> Result<Vec<i64>, DbError> {
    static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
        insert_statements(
            "INSERT INTO outbox (exchange, routing_key, payload, headers, priority)",
            5,
            " RETURNING id, exchange, routing_key, payload",
        )
    });
    let mut ids = Vec::with_capacity(messages.len());
    for (statement, chunk) in insert_runs(messages) {
        let extra: Vec<(serde_json::Value, i16)> = chunk
            .iter()
            .map(|m| (to_json(&m.headers), i16::from(m.priority)))
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = chunk
            .iter()
            .zip(&extra)
            .flat_map(|(m, (headers, priority))| -> [&(dyn ToSql + Sync); 5] {
                [&m.exchange, &m.routing_key, &m.payload, headers, priority]
            })
            .collect();
        let rows = client
            .query(&prepared(client, &SQL[statement]).await?, &params)
            .await?;
        let mut slots: Vec<Option<i64>> = vec![None; chunk.len()];
        for row in &rows {
            let (id, exchange, routing_key, payload): (i64, &str, &str, &[u8]) = (
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            );
            let slot = chunk.iter().zip(slots.iter_mut()).find_map(|(m, slot)| {
                (slot.is_none()
                    && m.exchange == exchange
                    && m.routing_key == routing_key
                    && m.payload == payload)
                    .then_some(slot)
            });
            match slot {
                Some(slot) => *slot = Some(id),
                None => {
                    return Err(DbError::Corrupt(
                        "outbox: a row no message asked for".into(),
                    ));
                }
            }
        }
        for slot in slots {
            ids.push(
                slot.ok_or_else(|| DbError::Corrupt("outbox: a message without its row".into()))?,
            );
        }
    }
    Ok(ids)
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

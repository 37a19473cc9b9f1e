//! The outbox relay: publishes outbox rows that were not published right
//! after their transaction committed (broker down, process crashed between
//! commit and publish). Safe with several relays at once: rows are locked
//! with `FOR UPDATE SKIP LOCKED` and marked in the same transaction.

use std::time::Duration;

use crate::db::{DbError, Pool, outbox};
use crate::mq::{MqError, Publisher};

/// Errors of one relay pass.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or marking rows failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Outcome of one relay pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Rows published and marked.
    pub published: usize,
    /// The publish error that ended the pass early, if any.
    pub failed: Option<String>,
}

/// Publishes up to `limit` rows older than `min_age`, oldest first, stopping
/// at the first publish failure (the rest wait for the next pass).
pub async fn relay_once(
    pool: &Pool,
    publisher: &Publisher,
    min_age: Duration,
    limit: i64,
) -> Result<RelayPass, RelayError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let rows = outbox::lock_unpublished(&tx, min_age, limit).await?;
    let mut done = Vec::with_capacity(rows.len());
    let mut failed: Option<MqError> = None;
    for row in &rows {
        match publisher.publish_confirmed(&row.message).await {
            Ok(()) => done.push(row.id),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    outbox::mark_published(&tx, &done).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(RelayPass {
        published: done.len(),
        failed: failed.map(|e| e.to_string()),
    })
}

/// Publishes freshly committed outbox rows right away and marks them; rows
/// that fail stay for [`relay_once`]. Never fails: the outbox is the safety net.
pub async fn publish_now(pool: &Pool, publisher: &Publisher, rows: &[outbox::Pending]) {
    let mut done = Vec::with_capacity(rows.len());
    for row in rows {
        match publisher.publish_confirmed(&row.message).await {
            Ok(()) => done.push(row.id),
            Err(e) => {
                tracing::warn!(error = %e, outbox_id = row.id, "publish failed; the relay will retry");
                break;
            }
        }
    }
    if done.is_empty() {
        return;
    }
    match pool.get().await {
        Ok(client) => {
            if let Err(e) = outbox::mark_published(&client, &done).await {
                tracing::warn!(error = %e, "could not mark outbox rows published; the relay will republish");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not mark outbox rows published"),
    }
}

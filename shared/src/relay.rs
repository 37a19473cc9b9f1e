//! The outbox relay: publishes outbox rows that were not published right
//! after their transaction committed (broker down, process crashed between
//! commit and publish). Safe with several relays at once: rows are locked
//! with `FOR UPDATE SKIP LOCKED` and marked in the same transaction.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::db::{DbError, Pool, outbox};
use crate::mq::{MqError, Publisher};

/// Ids waiting for their `published_at`; beyond this, marks are skipped
/// (the relay republishes those rows, which every consumer tolerates).
const MARK_QUEUE: usize = 8192;
/// Ids marked by one UPDATE at most.
const MARK_BATCH: usize = 1024;

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

/// Marks outbox rows published off the caller's path, many rows per
/// statement.
///
/// Once a publish is confirmed its row only needs `published_at`, so that
/// the relay leaves it alone. Doing that inline cost a commit per message
/// (two of the seven commits a command used to take). The marker's task
/// runs one `UPDATE … WHERE id = ANY(…)` at a time; ids that arrive while
/// it runs go into the next one, so under load a statement marks hundreds
/// of rows and on an idle system it marks one row right away.
///
/// A mark that never happens (process killed, database down, queue full)
/// costs a duplicate publish by the relay after `RDEV_RELAY_MIN_AGE`, never
/// a lost message: a run message for a command that is no longer queued is
/// skipped by the claim, and events carry ids receivers deduplicate by.
#[derive(Clone, Debug)]
pub struct PublishedMarker {
    tx: mpsc::Sender<i64>,
}

impl PublishedMarker {
    /// Starts the marking task; it ends once every clone is dropped and the
    /// ids queued by then are marked. Call inside a Tokio runtime.
    pub fn spawn(pool: Pool) -> Self {
        let (tx, rx) = mpsc::channel(MARK_QUEUE);
        tokio::spawn(mark_loop(pool, rx));
        Self { tx }
    }

    /// Queues a row to be marked; never waits.
    pub fn mark(&self, id: i64) {
        if let Err(e) = self.tx.try_send(id) {
            tracing::debug!(error = %e, outbox_id = id, "mark skipped; the relay will republish the row");
        }
    }
}

async fn mark_loop(pool: Pool, mut rx: mpsc::Receiver<i64>) {
    let mut ids = Vec::with_capacity(MARK_BATCH);
    while rx.recv_many(&mut ids, MARK_BATCH).await > 0 {
        let marked = match pool.get().await {
            Ok(client) => outbox::mark_published(&client, &ids).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = marked {
            tracing::warn!(error = %e, rows = ids.len(), "cannot mark outbox rows published; the relay will republish them");
        }
        ids.clear();
    }
}

/// Publishes freshly committed outbox rows right away and has them marked;
/// rows that fail stay for [`relay_once`]. Never fails: the outbox is the
/// safety net.
pub async fn publish_now(
    marker: &PublishedMarker,
    publisher: &Publisher,
    rows: &[outbox::Pending],
) {
    for row in rows {
        match publisher.publish_confirmed(&row.message).await {
            Ok(()) => marker.mark(row.id),
            Err(e) => {
                tracing::warn!(error = %e, outbox_id = row.id, "publish failed; the relay will retry");
                break;
            }
        }
    }
}

/// Publishes freshly committed outbox rows off the request's path: the
/// request is answered once its rows are committed (which is what makes
/// them durable), not once the broker has confirmed the message too.
///
/// At most `max` publishes are in flight; a row that finds none free, or
/// whose publish fails or is cut short (the process stopping), is left to
/// [`relay_once`], which publishes it after `RDEV_RELAY_MIN_AGE`.
#[derive(Clone, Debug)]
pub struct BackgroundPublisher {
    publisher: Arc<Publisher>,
    marker: PublishedMarker,
    slots: Arc<Semaphore>,
}

impl BackgroundPublisher {
    /// Publishes with `publisher` and marks rows with `marker`, at most
    /// `max` at once.
    pub fn new(publisher: Arc<Publisher>, marker: PublishedMarker, max: usize) -> Self {
        Self {
            publisher,
            marker,
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// Starts publishing `rows` in order; `false` when too many publishes
    /// are in flight (then the relay publishes them). Never waits. Call
    /// inside a Tokio runtime.
    pub fn publish(&self, rows: Vec<outbox::Pending>) -> bool {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::debug!(
                rows = rows.len(),
                "too many publishes in flight; the relay will publish these rows"
            );
            return false;
        };
        let publisher = self.publisher.clone();
        let marker = self.marker.clone();
        tokio::spawn(async move {
            publish_now(&marker, &publisher, &rows).await;
            drop(slot);
        });
        true
    }
}

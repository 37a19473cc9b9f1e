//! The requeue sweep: a command still `queued` long after it was accepted
//! has most likely lost its run message (a purged queue, a broker that lost
//! its disk). Its message is published again, through the outbox; if the
//! first one was only slow (a long backlog), the second finds the command
//! claimed and is dropped by the claim guard.

use std::sync::Arc;
use std::time::Duration;

use rdev_shared::db::{DbError, Pool, commands, outbox};
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::mq::Publisher;
use rdev_shared::relay;

const BATCH: i64 = 500;

/// Republishes stale queued commands every `after / 4` until stopped.
pub async fn run(pool: Pool, publisher: Arc<Publisher>, after: Duration, stop: CancellationToken) {
    let marker = relay::PublishedMarker::spawn(pool.clone());
    let mut tick = tokio::time::interval((after / 4).max(Duration::from_millis(200)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match requeue_once(&pool, &marker, &publisher, after).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                commands = n,
                "republished run messages of commands queued too long"
            ),
            Err(e) => tracing::warn!(error = %e, "requeue sweep failed"),
        }
    }
}

/// One pass: marks stale queued commands and stores their run messages in
/// one transaction, then publishes them.
pub async fn requeue_once(
    pool: &Pool,
    marker: &relay::PublishedMarker,
    publisher: &Publisher,
    after: Duration,
) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let stale = commands::take_stale_queued(&tx, after, BATCH).await?;
    let mut rows = Vec::with_capacity(stale.len());
    for (id, priority) in &stale {
        let message = publisher.topology().run_message(
            *id,
            u8::try_from(*priority).unwrap_or(rdev_shared::domain::DEFAULT_PRIORITY),
        );
        let outbox_id = outbox::insert(&tx, &message).await?;
        rows.push(outbox::Pending {
            id: outbox_id,
            message,
        });
    }
    tx.commit().await?;
    drop(client);
    relay::publish_now(marker, publisher, &rows).await;
    Ok(stale.len())
}

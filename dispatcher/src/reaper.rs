//! The lost-worker reaper: a running command whose heartbeat is older than
//! `RDEV_LOST_AFTER_S` belongs to a worker that died; it is failed with
//! error `worker_lost` and its event is emitted. A redelivered message for it
//! finds it no longer `queued` and does not run it again.

use std::sync::Arc;
use std::time::Duration;

use rdev_shared::db::notify::Notifier;
use rdev_shared::db::{DbError, Pool, commands, webhooks};
use rdev_shared::domain::{CommandStatus, command_event};
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::mq::{OutputEvent, Publisher};

const REAP_BATCH: i64 = 100;

/// Reaps lost commands every `lost_after / 3` until stopped.
pub async fn run(
    pool: Pool,
    publisher: Arc<Publisher>,
    lost_after: Duration,
    stop: CancellationToken,
) {
    let due = Notifier::spawn(pool.clone(), webhooks::DUE_CHANNEL);
    let mut tick = tokio::time::interval((lost_after / 3).max(Duration::from_millis(200)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = reap_once(&pool, &publisher, &due, lost_after).await {
            tracing::warn!(error = %e, "reaper pass failed");
        }
    }
}

/// One pass: fails lost commands, with their events' deliveries, in one
/// transaction, then wakes the dispatchers and ends the commands' live
/// output streams.
pub async fn reap_once(
    pool: &Pool,
    publisher: &Publisher,
    due: &Notifier,
    lost_after: Duration,
) -> Result<usize, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let reaped = commands::reap_lost(&tx, lost_after, REAP_BATCH).await?;
    let mut deliveries = 0;
    for cmd in &reaped {
        let kind = CommandStatus::Failed
            .event_type()
            .unwrap_or("command.failed");
        let message = publisher
            .topology()
            .event_message(kind, &command_event(kind, cmd));
        deliveries += webhooks::write_event(&tx, &message, cmd.project_id).await?;
    }
    tx.commit().await?;
    drop(client);
    if deliveries > 0 {
        due.wake();
    }
    for cmd in &reaped {
        tracing::warn!(command = %cmd.id, worker = ?cmd.worker_id, "command failed: worker_lost");
    }
    for cmd in &reaped {
        let _ = publisher.publish_output(cmd.id, &OutputEvent::End).await;
    }
    Ok(reaped.len())
}

//! What runs beside the consume loop until every command has ended: the
//! heartbeat of running commands, and the control exchange (cancels).

use std::sync::Arc;
use std::time::Duration;

use rdev_shared::db::commands;
use rdev_shared::mq::{self, ControlMessage};
use tokio_util::sync::CancellationToken;

use super::Worker;

/// Longest a heartbeat may take (a hung connection must not stall it for
/// good; the pool's statement timeout bounds the server's side).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// Refreshes the heartbeat of this worker's running commands every period
/// until `done` fires, so the reaper leaves them alone. A command that is no
/// longer this worker's (the reaper failed it as `worker_lost` while this
/// worker was cut off from PostgreSQL, or its clock ran ahead) is stopped:
/// its status is final and nobody counts its slot.
pub async fn heartbeat(worker: Arc<Worker>, done: CancellationToken) {
    let mut tick = tokio::time::interval(worker.cfg.heartbeat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = done.cancelled() => return,
        }
        let ids = worker.running_ids();
        if ids.is_empty() {
            continue;
        }
        let beat = async {
            let client = worker.pool.get().await?;
            commands::heartbeat(&client, &worker.worker_id, &ids).await
        };
        let result = match tokio::time::timeout(HEARTBEAT_TIMEOUT, beat).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(running = ids.len(), "heartbeat timed out");
                continue;
            }
        };
        match result {
            Ok(beat) => {
                // Cancels whose broadcast this worker missed.
                for id in beat.cancel {
                    worker.cancel(id);
                }
                for id in beat.lost {
                    worker.disown(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, running = ids.len(), "heartbeat failed"),
        }
    }
}

/// Follows the control exchange until `done` fires, acting on cancel
/// requests for commands this worker runs; reconnects with backoff.
pub async fn control(worker: Arc<Worker>, done: CancellationToken) {
    let name = format!("rdev-worker {} control", worker.worker_id);
    let handle = |d: lapin::message::Delivery| {
        match serde_json::from_slice::<ControlMessage>(&d.data) {
            Ok(ControlMessage::Cancel { command_id }) => {
                worker.cancel(command_id);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "malformed control message"),
        }
        std::future::ready(())
    };
    mq::follow(
        "control (worker)",
        &done,
        || mq::subscribe_control(&worker.cfg.amqp, &name),
        handle,
        |_| {},
    )
    .await;
}

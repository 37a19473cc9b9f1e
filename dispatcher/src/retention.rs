//! Retention of access-control data: audit entries older than
//! `RDEV_AUDIT_RETENTION` (deleted in batches so no pass holds long locks)
//! and rate-limit counters older than two of their windows (they no longer
//! count). Safe to run on every replica: deletes are idempotent.

use std::time::Duration;

use chrono::Utc;
use rdev_shared::db::{DbError, Pool, audit, rate_limits};
use tokio::sync::watch;

/// Audit rows deleted per statement.
const BATCH: i64 = 5_000;

/// One pass; returns (audit rows, counter rows) deleted.
pub async fn run_once(pool: &Pool, audit_retention: Duration) -> Result<(u64, u64), DbError> {
    let client = pool.get().await?;
    let counters = rate_limits::delete_expired(&client).await?;
    let cutoff = chrono::Duration::from_std(audit_retention)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d));
    let mut audited = 0;
    // A retention too long to represent keeps everything.
    while let Some(cutoff) = cutoff {
        let n = audit::delete_older_than(&client, cutoff, BATCH).await?;
        audited += n;
        if (n as i64) < BATCH {
            break;
        }
    }
    Ok((audited, counters))
}

/// Runs a pass every `interval` until stopped.
pub async fn run(
    pool: Pool,
    audit_retention: Duration,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        match run_once(&pool, audit_retention).await {
            Ok((a, c)) if a + c > 0 => {
                tracing::info!(audit = a, rate_limits = c, "retention deleted rows");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    }
}

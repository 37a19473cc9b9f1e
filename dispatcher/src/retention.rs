//! Retention: deletes what outlived its retention, per kind, in batches so
//! no statement holds long locks, and counts it in
//! `retention_deleted_total{kind}`. Safe to run on every replica: deletes
//! are idempotent.
//!
//! | kind | what | default |
//! |---|---|---|
//! | `audit` | audit entries (`RDEV_AUDIT_RETENTION`) | 90 days |
//! | `rate_limits` | counters older than two of their windows | – |
//! | `outbox` | published outbox rows (`RDEV_OUTBOX_RETENTION`) | 1 day |
//! | `output` | stored output of finished commands (`RDEV_OUTPUT_RETENTION`, or the project's `output_retention_s`) | 30 days |
//! | `commands` | finished commands, output included (`RDEV_COMMAND_RETENTION`, or the project's `command_retention_s`) | 90 days |
//! | `webhook_deliveries` | settled deliveries and their attempts (`RDEV_WEBHOOK_RETENTION`) | 30 days |
//!
//! A retention of 0 keeps that kind forever.

use std::time::Duration;

use chrono::Utc;
use rdev_shared::db::{DbError, Pool, audit, prune, rate_limits};
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::metrics::Metrics;

/// Rows (or commands, for output) removed per statement.
const BATCH: i64 = 5_000;

/// How long each kind is kept (0: forever).
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Audit entries.
    pub audit: Duration,
    /// Published outbox rows.
    pub outbox: Duration,
    /// Stored output of finished commands (a project may say otherwise).
    pub output: Duration,
    /// Finished commands (a project may say otherwise).
    pub commands: Duration,
    /// Settled webhook deliveries.
    pub webhook_deliveries: Duration,
}

/// What one pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Audit entries.
    pub audit: u64,
    /// Rate-limit counters.
    pub rate_limits: u64,
    /// Outbox rows.
    pub outbox: u64,
    /// Output chunks.
    pub output: u64,
    /// Commands.
    pub commands: u64,
    /// Webhook deliveries.
    pub webhook_deliveries: u64,
}

impl Pruned {
    fn total(&self) -> u64 {
        self.audit
            + self.rate_limits
            + self.outbox
            + self.output
            + self.commands
            + self.webhook_deliveries
    }

    fn count(&self, metrics: &Metrics) {
        for (kind, n) in [
            ("audit", self.audit),
            ("rate_limits", self.rate_limits),
            ("outbox", self.outbox),
            ("output", self.output),
            ("commands", self.commands),
            ("webhook_deliveries", self.webhook_deliveries),
        ] {
            metrics
                .retention_deleted_total
                .with_label_values(&[kind])
                .inc_by(n);
        }
    }
}

/// Repeats a batch until it comes back short.
async fn drain<F, Fut>(mut batch: F) -> Result<u64, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, DbError>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if (n as i64) < BATCH {
            return Ok(total);
        }
    }
}

/// One pass over every kind.
pub async fn run_once(pool: &Pool, keep: &Retention) -> Result<Pruned, DbError> {
    let client = pool.get().await?;
    let mut out = Pruned {
        rate_limits: rate_limits::delete_expired(&client).await?,
        ..Pruned::default()
    };
    // A retention too long to represent keeps everything.
    let cutoff = chrono::Duration::from_std(keep.audit)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d));
    if let Some(cutoff) = cutoff.filter(|_| !keep.audit.is_zero()) {
        out.audit = drain(|| audit::delete_older_than(&client, cutoff, BATCH)).await?;
    }
    if !keep.outbox.is_zero() {
        out.outbox = drain(|| prune::outbox(&client, keep.outbox, BATCH)).await?;
    }
    if !keep.output.is_zero() {
        // Per call: up to BATCH commands' output.
        loop {
            let n = prune::output(&client, keep.output, 100).await?;
            out.output += n;
            if n == 0 {
                break;
            }
        }
    }
    if !keep.commands.is_zero() {
        out.commands = drain(|| prune::commands(&client, keep.commands, BATCH)).await?;
    }
    if !keep.webhook_deliveries.is_zero() {
        out.webhook_deliveries =
            drain(|| prune::webhook_deliveries(&client, keep.webhook_deliveries, BATCH)).await?;
    }
    Ok(out)
}

/// Runs a pass every `interval` until stopped.
pub async fn run(
    pool: Pool,
    keep: Retention,
    interval: Duration,
    metrics: std::sync::Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match run_once(&pool, &keep).await {
            Ok(p) => {
                p.count(&metrics);
                if p.total() > 0 {
                    tracing::info!(?p, "retention deleted rows");
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    }
}

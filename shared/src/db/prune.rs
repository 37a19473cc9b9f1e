//! Retention SQL: deletes, in bounded batches, what has outlived its
//! retention. Every function removes at most `batch` rows (or commands) per
//! call and returns how many it removed, so a caller loops until a pass
//! comes back short, and no statement holds locks for long. Safe on every
//! replica at once: deletes are idempotent.

use std::time::Duration;

use super::DbError;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Published outbox rows older than `retention` (unpublished ones stay: the
/// relay still owes them).
pub async fn outbox(
    client: &impl deadpool_postgres::GenericClient,
    retention: Duration,
    batch: i64,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
             WHERE published_at < now() - make_interval(secs => $1) ORDER BY published_at LIMIT $2)",
            &[&secs(retention), &batch],
        )
        .await?)
}

/// Stored output of up to `batch` commands that finished longer ago than
/// their project's output retention (else `retention`); each command's
/// output goes in slices of `batch` rows, then the command is marked
/// (`output_pruned_at`) so it is not looked at again. Returns output rows
/// deleted.
pub async fn output(
    client: &impl deadpool_postgres::GenericClient,
    retention: Duration,
    batch: i64,
) -> Result<u64, DbError> {
    let ids: Vec<uuid::Uuid> = client
        .query(
            "SELECT c.id FROM commands c JOIN projects p ON p.id = c.project_id \
             WHERE c.finished_at IS NOT NULL AND c.output_pruned_at IS NULL \
             AND c.finished_at < now() - make_interval(secs => \
                 coalesce(p.output_retention_s::float8, $1)) \
             ORDER BY c.finished_at LIMIT $2",
            &[&secs(retention), &batch],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut deleted = 0;
    for id in ids {
        loop {
            let n = client
                .execute(
                    "DELETE FROM command_output WHERE command_id = $1 AND seq IN \
                     (SELECT seq FROM command_output WHERE command_id = $1 ORDER BY seq LIMIT $2)",
                    &[&id, &batch],
                )
                .await?;
            deleted += n;
            if (n as i64) < batch {
                break;
            }
        }
        client
            .execute(
                "UPDATE commands SET output_pruned_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
    }
    Ok(deleted)
}

/// Up to `batch` terminal commands that finished longer ago than their
/// project's command retention (else `retention`), with what hangs off
/// them (output, by cascade). Returns commands deleted.
pub async fn commands(
    client: &impl deadpool_postgres::GenericClient,
    retention: Duration,
    batch: i64,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM commands WHERE id IN (SELECT c.id FROM commands c \
             JOIN projects p ON p.id = c.project_id \
             WHERE c.finished_at IS NOT NULL \
             AND c.status IN ('succeeded','failed','timed_out','cancelled') \
             AND c.finished_at < now() - make_interval(secs => \
                 coalesce(p.command_retention_s::float8, $1)) \
             ORDER BY c.finished_at LIMIT $2)",
            &[&secs(retention), &batch],
        )
        .await?)
}

/// Webhook deliveries that are settled (not `pending`) and older than
/// `retention`, with their attempts (by cascade). Returns deliveries deleted.
pub async fn webhook_deliveries(
    client: &impl deadpool_postgres::GenericClient,
    retention: Duration,
    batch: i64,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
             WHERE status <> 'pending' AND updated_at < now() - make_interval(secs => $1) \
             ORDER BY updated_at LIMIT $2)",
            &[&secs(retention), &batch],
        )
        .await?)
}

//! Indexes built `CONCURRENTLY`, after the migrations.
//!
//! refinery runs each migration in a transaction, where `CREATE INDEX
//! CONCURRENTLY` is not allowed, and a plain `CREATE INDEX` blocks every
//! write to its table while it builds (minutes on a big `commands` or
//! `audit_log`, during a rolling upgrade). So a migration adds columns
//! (cheap, expand-only) and an index on a table that may be big is listed
//! here: built without blocking writes, after the migrations, under the same
//! advisory lock. A build interrupted half-way leaves an INVALID index,
//! which is dropped and built again.

use super::DbError;

/// (name, definition after `CREATE INDEX CONCURRENTLY IF NOT EXISTS <name>`).
pub const INDEXES: &[(&str, &str)] = &[
    // Retention (`db::prune`): finished commands whose output is still kept…
    (
        "commands_output_unpruned",
        "ON commands (finished_at) WHERE finished_at IS NOT NULL AND output_pruned_at IS NULL",
    ),
    // …finished commands…
    (
        "commands_finished",
        "ON commands (finished_at) WHERE finished_at IS NOT NULL",
    ),
    // …published outbox rows…
    (
        "outbox_published",
        "ON outbox (published_at) WHERE published_at IS NOT NULL",
    ),
    // …settled webhook deliveries.
    (
        "webhook_deliveries_settled",
        "ON webhook_deliveries (updated_at) WHERE status <> 'pending'",
    ),
    // The requeue sweep's `status = 'queued'` scan uses `commands_status`.
];

/// Builds every index of [`INDEXES`] that is missing or invalid. Runs
/// outside any transaction (on a session whose `statement_timeout` is off).
pub async fn ensure(client: &tokio_postgres::Client) -> Result<Vec<String>, DbError> {
    let mut built = Vec::new();
    for (name, definition) in INDEXES {
        let state = client
            .query_opt(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
                &[name],
            )
            .await?;
        match state.map(|r| r.try_get::<_, bool>(0)).transpose()? {
            Some(true) => continue,
            Some(false) => {
                tracing::warn!(index = name, "rebuilding an invalid index");
                client
                    .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                    .await?;
            }
            None => {}
        }
        client
            .batch_execute(&format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}"
            ))
            .await?;
        built.push((*name).to_owned());
    }
    Ok(built)
}

//! `audit_log` repository: append-only.

use std::net::IpAddr;
use std::sync::LazyLock;

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{DbError, insert_runs, insert_statements, prepared};

/// One audit entry to append.
#[derive(Clone, Debug)]
pub struct AuditEntry<'a> {
    /// Key that acted, if known.
    pub actor_key_id: Option<Uuid>,
    /// Name of the actor (key name, or `system`).
    pub actor: &'a str,
    /// Client address.
    pub ip: Option<IpAddr>,
    /// Dotted action name, e.g. `command.create`.
    pub action: &'a str,
    /// Kind of target, e.g. `command`.
    pub target_type: &'a str,
    /// Target id or name.
    pub target_id: Option<String>,
    /// Project concerned.
    pub project_id: Option<Uuid>,
    /// `success` or `denied`/`failure`.
    pub outcome: &'a str,
    /// Extra facts.
    pub details: serde_json::Value,
}

/// Appends an entry.
pub async fn append(
    client: &impl deadpool_postgres::GenericClient,
    e: &AuditEntry<'_>,
) -> Result<(), DbError> {
    append_many(client, std::slice::from_ref(e)).await
}

/// Appends entries, up to [`MAX_INSERT`](super::MAX_INSERT) to a statement.
pub async fn append_many(
    client: &impl deadpool_postgres::GenericClient,
    entries: &[AuditEntry<'_>],
) -> Result<(), DbError> {
    static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
        insert_statements(
            "INSERT INTO audit_log (actor_key_id, actor, ip, action, target_type, target_id, \
             project_id, outcome, details)",
            9,
            "",
        )
    });
    for (statement, chunk) in insert_runs(entries) {
        let params: Vec<&(dyn ToSql + Sync)> = chunk
            .iter()
            .flat_map(|e| -> [&(dyn ToSql + Sync); 9] {
                [
                    &e.actor_key_id,
                    &e.actor,
                    &e.ip,
                    &e.action,
                    &e.target_type,
                    &e.target_id,
                    &e.project_id,
                    &e.outcome,
                    &e.details,
                ]
            })
            .collect();
        client
            .execute(&prepared(client, &SQL[statement]).await?, &params)
            .await?;
    }
    Ok(())
}

/// An audit entry as read back, with its project's name.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditRecord {
    /// Sequence number (also the cursor).
    pub id: i64,
    /// When it happened.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Name of the actor.
    pub actor: String,
    /// Key that acted.
    pub actor_key_id: Option<Uuid>,
    /// Client address.
    pub ip: Option<String>,
    /// Dotted action name.
    pub action: String,
    /// Kind of target.
    pub target_type: String,
    /// Target id or name.
    pub target_id: Option<String>,
    /// Project name, when one was concerned.
    pub project: Option<String>,
    /// `success`, `denied` or `failure`.
    pub outcome: String,
    /// Extra facts.
    pub details: serde_json::Value,
}

/// Filters of [`list`]; `None` means any.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Acting key.
    pub actor_key_id: Option<Uuid>,
    /// Actor name.
    pub actor: Option<String>,
    /// Exact action.
    pub action: Option<String>,
    /// Project concerned.
    pub project_id: Option<Uuid>,
    /// Only entries of these projects (a restricted reader).
    pub project_ids: Option<Vec<Uuid>>,
    /// At or after.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only ids below this (the cursor).
    pub before_id: Option<i64>,
    /// Page size.
    pub limit: i64,
}

/// Entries matching `f`, newest first.
pub async fn list(
    client: &impl deadpool_postgres::GenericClient,
    f: &AuditFilter,
) -> Result<Vec<AuditRecord>, DbError> {
    let rows = client
        .query(
            "SELECT a.id, a.at, a.actor, a.actor_key_id, host(a.ip) AS ip, a.action, \
             a.target_type, a.target_id, p.name AS project, a.outcome, a.details \
             FROM audit_log a LEFT JOIN projects p ON p.id = a.project_id \
             WHERE ($1::uuid IS NULL OR a.actor_key_id = $1) \
             AND ($2::text IS NULL OR a.actor = $2) \
             AND ($3::text IS NULL OR a.action = $3) \
             AND ($4::uuid IS NULL OR a.project_id = $4) \
             AND ($5::uuid[] IS NULL OR a.project_id = ANY($5)) \
             AND ($6::timestamptz IS NULL OR a.at >= $6) \
             AND ($7::timestamptz IS NULL OR a.at < $7) \
             AND ($8::int8 IS NULL OR a.id < $8) \
             ORDER BY a.id DESC LIMIT $9",
            &[
                &f.actor_key_id,
                &f.actor,
                &f.action,
                &f.project_id,
                &f.project_ids,
                &f.since,
                &f.until,
                &f.before_id,
                &f.limit,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditRecord {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                actor_key_id: r.try_get("actor_key_id")?,
                ip: r.try_get("ip")?,
                action: r.try_get("action")?,
                target_type: r.try_get("target_type")?,
                target_id: r.try_get("target_id")?,
                project: r.try_get("project")?,
                outcome: r.try_get("outcome")?,
                details: r.try_get("details")?,
            })
        })
        .collect()
}

/// Deletes at most `batch` entries older than `older_than` (retention; the
/// append-only trigger forbids updates, not deletes); returns how many.
pub async fn delete_older_than(
    client: &impl deadpool_postgres::GenericClient,
    older_than: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM audit_log WHERE id IN \
             (SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)",
            &[&older_than, &batch],
        )
        .await?)
}

//! `audit_log` repository: append-only.

use std::net::IpAddr;

use uuid::Uuid;

use super::DbError;

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
    client
        .execute(
            "INSERT INTO audit_log (actor_key_id, actor, ip, action, target_type, target_id, \
             project_id, outcome, details) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            &[
                &e.actor_key_id,
                &e.actor,
                &e.ip,
                &e.action,
                &e.target_type,
                &e.target_id,
                &e.project_id,
                &e.outcome,
                &e.details,
            ],
        )
        .await?;
    Ok(())
}

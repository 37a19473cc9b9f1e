//! `projects` repository.

use std::collections::BTreeMap;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{DbError, from_json, parse_col, to_json};
use crate::containment::{NetworkMode, ResourceLimits};
use crate::domain::{ExecutorConfig, Project};

/// Fields of a new project.
#[derive(Clone, Debug)]
pub struct NewProject {
    /// Unique slug.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Where commands run.
    pub executor: ExecutorConfig,
    /// Variables for every command.
    pub env: BTreeMap<String, String>,
    /// Default timeout.
    pub default_timeout_s: i32,
    /// Stored-output cap.
    pub max_output_bytes: i64,
    /// Concurrency cap.
    pub max_concurrency: Option<i32>,
    /// Allowed command patterns.
    pub allowed_commands: Option<Vec<String>>,
    /// Network of its local commands.
    pub network: NetworkMode,
    /// Resource limits of its commands.
    pub limits: ResourceLimits,
    /// Secrets its commands may name (`None` = any).
    pub allowed_secrets: Option<Vec<String>>,
    /// Retention of its finished commands (seconds; none: the default).
    pub command_retention_s: Option<i64>,
    /// Retention of their output (seconds; none: the default).
    pub output_retention_s: Option<i64>,
    /// Cap on one upload of the files API (none: the server's).
    pub max_file_bytes: Option<i64>,
}

/// A partial update; `None` leaves a field as it is, `Some(None)` clears a nullable one.
#[derive(Clone, Debug, Default)]
pub struct ProjectPatch {
    /// New description.
    pub description: Option<String>,
    /// New executor.
    pub executor: Option<ExecutorConfig>,
    /// New env (replaces the map).
    pub env: Option<BTreeMap<String, String>>,
    /// New default timeout.
    pub default_timeout_s: Option<i32>,
    /// New output cap.
    pub max_output_bytes: Option<i64>,
    /// New concurrency cap.
    pub max_concurrency: Option<Option<i32>>,
    /// New command patterns.
    pub allowed_commands: Option<Option<Vec<String>>>,
    /// New network mode.
    pub network: Option<NetworkMode>,
    /// New limits (replace the object).
    pub limits: Option<ResourceLimits>,
    /// New secret policy.
    pub allowed_secrets: Option<Option<Vec<String>>>,
    /// New command retention.
    pub command_retention_s: Option<Option<i64>>,
    /// New output retention.
    pub output_retention_s: Option<Option<i64>>,
    /// New upload cap.
    pub max_file_bytes: Option<Option<i64>>,
}

/// The sealed column (see [`crate::crypto`]).
pub const ENV_FIELD: &str = "projects.env";

const COLUMNS: &str = "id, name, description, executor, env, default_timeout_s, max_output_bytes, \
                       max_concurrency, allowed_commands, network, limits, allowed_secrets, \
                       command_retention_s, output_retention_s, max_file_bytes, created_at, \
                       updated_at";

fn from_row(row: &Row) -> Result<Project, DbError> {
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        executor: from_json(row.try_get("executor")?, "projects.executor")?,
        env: from_json(
            crate::crypto::ring().open_json(row.try_get("env")?, ENV_FIELD)?,
            ENV_FIELD,
        )?,
        default_timeout_s: row.try_get("default_timeout_s")?,
        max_output_bytes: row.try_get("max_output_bytes")?,
        max_concurrency: row.try_get("max_concurrency")?,
        allowed_commands: row.try_get("allowed_commands")?,
        network: parse_col(row.try_get::<_, &str>("network")?, "projects.network")?,
        limits: from_json(row.try_get("limits")?, "projects.limits")?,
        allowed_secrets: row.try_get("allowed_secrets")?,
        command_retention_s: row.try_get("command_retention_s")?,
        output_retention_s: row.try_get("output_retention_s")?,
        max_file_bytes: row.try_get("max_file_bytes")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Inserts a project; a taken name is a unique violation.
pub async fn insert(
    client: &impl deadpool_postgres::GenericClient,
    p: &NewProject,
) -> Result<Project, DbError> {
    let sql = format!(
        "INSERT INTO projects (id, name, description, executor, env, default_timeout_s, \
         max_output_bytes, max_concurrency, allowed_commands, network, limits, allowed_secrets, \
         command_retention_s, output_retention_s, max_file_bytes) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15) RETURNING {COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &p.name,
                &p.description,
                &to_json(&p.executor),
                &crate::crypto::ring().seal_json(&to_json(&p.env), ENV_FIELD),
                &p.default_timeout_s,
                &p.max_output_bytes,
                &p.max_concurrency,
                &p.allowed_commands,
                &p.network.as_str(),
                &to_json(&p.limits),
                &p.allowed_secrets,
                &p.command_retention_s,
                &p.output_retention_s,
                &p.max_file_bytes,
            ],
        )
        .await?;
    from_row(&row)
}

/// A live (not deleted) project by name.
pub async fn get_by_name(
    client: &impl deadpool_postgres::GenericClient,
    name: &str,
) -> Result<Option<Project>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM projects WHERE name = $1 AND deleted_at IS NULL");
    client
        .query_opt(&sql, &[&name])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// A project by id, deleted or not.
pub async fn get_by_id(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<Project>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM projects WHERE id = $1");
    client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Live projects ordered by name, after the `after` name, restricted to `only`
/// when given; at most `limit`.
pub async fn list(
    client: &impl deadpool_postgres::GenericClient,
    after: Option<&str>,
    only: Option<&[Uuid]>,
    limit: i64,
) -> Result<Vec<Project>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM projects WHERE deleted_at IS NULL \
         AND ($1::text IS NULL OR name > $1) AND ($2::uuid[] IS NULL OR id = ANY($2)) \
         ORDER BY name LIMIT $3"
    );
    let only = only.map(|o| o.to_vec());
    let rows = client.query(&sql, &[&after, &only, &limit]).await?;
    rows.iter().map(from_row).collect()
}

/// Applies a patch to a live project; `None` when it does not exist.
pub async fn update(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    patch: &ProjectPatch,
) -> Result<Option<Project>, DbError> {
    let mut sets: Vec<String> = vec!["updated_at = now()".into()];
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(id)];
    let mut push = |col: &str, v: Box<dyn ToSql + Sync + Send>| {
        params.push(v);
        sets.push(format!("{col} = ${}", params.len()));
    };
    if let Some(v) = &patch.description {
        push("description", Box::new(v.clone()));
    }
    if let Some(v) = &patch.executor {
        push("executor", Box::new(to_json(v)));
    }
    if let Some(v) = &patch.env {
        push(
            "env",
            Box::new(crate::crypto::ring().seal_json(&to_json(v), ENV_FIELD)),
        );
    }
    if let Some(v) = patch.default_timeout_s {
        push("default_timeout_s", Box::new(v));
    }
    if let Some(v) = patch.max_output_bytes {
        push("max_output_bytes", Box::new(v));
    }
    if let Some(v) = patch.max_concurrency {
        push("max_concurrency", Box::new(v));
    }
    if let Some(v) = patch.command_retention_s {
        push("command_retention_s", Box::new(v));
    }
    if let Some(v) = patch.output_retention_s {
        push("output_retention_s", Box::new(v));
    }
    if let Some(v) = patch.max_file_bytes {
        push("max_file_bytes", Box::new(v));
    }
    if let Some(v) = &patch.allowed_commands {
        push("allowed_commands", Box::new(v.clone()));
    }
    if let Some(v) = patch.network {
        push("network", Box::new(v.as_str()));
    }
    if let Some(v) = &patch.limits {
        push("limits", Box::new(to_json(v)));
    }
    if let Some(v) = &patch.allowed_secrets {
        push("allowed_secrets", Box::new(v.clone()));
    }
    let sql = format!(
        "UPDATE projects SET {} WHERE id = $1 AND deleted_at IS NULL RETURNING {COLUMNS}",
        sets.join(", ")
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    client
        .query_opt(&sql, &refs)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Soft-deletes a live project; false when there was none.
pub async fn delete(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE projects SET deleted_at = now(), updated_at = now() \
             WHERE id = $1 AND deleted_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

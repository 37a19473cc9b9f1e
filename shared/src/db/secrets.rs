//! `project_secrets` repository, and the secret names a command asked for.
//!
//! Values are sealed with the process's key ring (column
//! [`VALUE_FIELD`]) on the way in and opened only by [`resolve`], which the
//! worker calls when it starts a command: nothing else in the code base
//! ever holds a secret's value read from the database.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{DbError, to_json};

/// The sealed column (see [`crate::crypto`]).
pub const VALUE_FIELD: &str = "project_secrets.value";

/// A secret as listed: everything but its value.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SecretMeta {
    /// Its name (also the environment variable a command sees).
    pub name: String,
    /// Starts at 1; every set adds one (a delete does not reset it).
    pub version: i32,
    /// Name of the API key that set the current version.
    pub set_by: String,
    /// Id of that key.
    pub set_by_key_id: Option<Uuid>,
    /// When the current version was set.
    pub set_at: DateTime<Utc>,
    /// When the secret was first set (since its last delete).
    pub created_at: DateTime<Utc>,
}

/// A value read for a command: its name, version and plaintext. `Debug`
/// never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Name.
    pub name: String,
    /// Version in force when the command started.
    pub version: i32,
    /// The plaintext.
    pub value: String,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("value", &"***")
            .finish()
    }
}

/// What a command asked for, and its project's policy at the time of reading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    /// Secrets given as environment variables.
    pub env: Vec<String>,
    /// Secrets given as files: name → path under the secrets directory.
    pub files: BTreeMap<String, String>,
    /// The project's `allowed_secrets` (`None` = any).
    pub allowed: Option<Vec<String>>,
}

impl Requested {
    /// Whether the command asked for no secret.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.files.is_empty()
    }

    /// Every name asked for, once, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.env.iter().chain(self.files.keys()).cloned().collect();
        names.sort();
        names.dedup();
        names
    }
}

const META: &str = "name, version, set_by, set_by_key_id, updated_at, created_at";

fn meta(row: &Row) -> Result<SecretMeta, DbError> {
    Ok(SecretMeta {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        set_by: row.try_get("set_by")?,
        set_by_key_id: row.try_get("set_by_key_id")?,
        set_at: row.try_get("updated_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Sets a secret's value (a new version); returns its metadata and whether
/// it was created (no live secret of that name before). `before` reads the
/// statement's snapshot, i.e. the row as it was (a `FOR UPDATE` there would
/// see the row this statement updates, and nothing).
pub async fn set(
    client: &impl deadpool_postgres::GenericClient,
    project_id: Uuid,
    name: &str,
    value: &str,
    key_id: Option<Uuid>,
    actor: &str,
) -> Result<(SecretMeta, bool), DbError> {
    let sealed = crate::crypto::ring().seal_str(value, VALUE_FIELD);
    let sql = format!(
        "WITH before AS (SELECT deleted_at IS NULL AS live FROM project_secrets \
         WHERE project_id = $1 AND name = $2) \
         INSERT INTO project_secrets AS s (project_id, name, version, value, set_by_key_id, set_by) \
         VALUES ($1, $2, 1, $3, $4, $5) \
         ON CONFLICT (project_id, name) DO UPDATE SET version = s.version + 1, \
         value = EXCLUDED.value, set_by_key_id = EXCLUDED.set_by_key_id, set_by = EXCLUDED.set_by, \
         updated_at = clock_timestamp(), deleted_at = NULL, \
         created_at = CASE WHEN s.deleted_at IS NULL THEN s.created_at ELSE clock_timestamp() END \
         RETURNING {META}, NOT coalesce((SELECT live FROM before), false) AS created"
    );
    let row = client
        .query_one(&sql, &[&project_id, &name, &sealed, &key_id, &actor])
        .await?;
    Ok((meta(&row)?, row.try_get("created")?))
}

/// A live secret's metadata.
pub async fn get(
    client: &impl deadpool_postgres::GenericClient,
    project_id: Uuid,
    name: &str,
) -> Result<Option<SecretMeta>, DbError> {
    let sql = format!(
        "SELECT {META} FROM project_secrets WHERE project_id = $1 AND name = $2 \
         AND deleted_at IS NULL"
    );
    client
        .query_opt(&sql, &[&project_id, &name])
        .await?
        .as_ref()
        .map(meta)
        .transpose()
}

/// A project's live secrets by name, after `after`; at most `limit`.
pub async fn list(
    client: &impl deadpool_postgres::GenericClient,
    project_id: Uuid,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<SecretMeta>, DbError> {
    let sql = format!(
        "SELECT {META} FROM project_secrets WHERE project_id = $1 AND deleted_at IS NULL \
         AND ($2::text IS NULL OR name > $2) ORDER BY name LIMIT $3"
    );
    let rows = client.query(&sql, &[&project_id, &after, &limit]).await?;
    rows.iter().map(meta).collect()
}

/// Deletes a live secret (its value is erased; the version number is
/// kept for the next set). Returns its last metadata, `None` when there was
/// none.
pub async fn delete(
    client: &impl deadpool_postgres::GenericClient,
    project_id: Uuid,
    name: &str,
) -> Result<Option<SecretMeta>, DbError> {
    let sql = format!(
        "UPDATE project_secrets SET value = NULL, deleted_at = clock_timestamp() \
         WHERE project_id = $1 AND name = $2 AND deleted_at IS NULL RETURNING {META}"
    );
    client
        .query_opt(&sql, &[&project_id, &name])
        .await?
        .as_ref()
        .map(meta)
        .transpose()
}

/// Erases every live secret of a project (when the project is deleted);
/// returns how many.
pub async fn delete_all(
    client: &impl deadpool_postgres::GenericClient,
    project_id: Uuid,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "UPDATE project_secrets SET value = NULL, deleted_at = clock_timestamp() \
             WHERE project_id = $1 AND deleted_at IS NULL",
            &[&project_id],
        )
        .await?)
}

/// Which of `names` are live secrets of the project.
pub async fn existing(
    client: &impl deadpool_postgres::GenericClient,
    project_id: Uuid,
    names: &[String],
) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT name FROM project_secrets WHERE project_id = $1 AND name = ANY($2) \
             AND deleted_at IS NULL",
            &[&project_id, &names],
        )
        .await?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(DbError::from))
        .collect()
}

/// Records what a new command asked for (in the transaction that inserts
/// it).
pub async fn attach(
    client: &impl deadpool_postgres::GenericClient,
    command_id: Uuid,
    env: &[String],
    files: &BTreeMap<String, String>,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE commands SET secrets = $2, secret_files = $3 WHERE id = $1",
            &[&command_id, &env, &to_json(files)],
        )
        .await?;
    Ok(())
}

/// The current values of `names` (live ones only; a missing name is simply
/// absent from the answer).
pub async fn resolve(
    client: &impl deadpool_postgres::GenericClient,
    project_id: Uuid,
    names: &[String],
) -> Result<Vec<Resolved>, DbError> {
    let rows = client
        .query(
            "SELECT name, version, value FROM project_secrets WHERE project_id = $1 \
             AND name = ANY($2) AND deleted_at IS NULL ORDER BY name",
            &[&project_id, &names],
        )
        .await?;
    let ring = crate::crypto::ring();
    rows.iter()
        .map(|r| {
            let stored: String = r.try_get(2)?;
            Ok(Resolved {
                name: r.try_get(0)?,
                version: r.try_get(1)?,
                value: ring.open_str(&stored, VALUE_FIELD)?,
            })
        })
        .collect()
}

/// `reencrypt`: rewrites live values not sealed under the ring's current
/// key; returns how many.
pub async fn reencrypt(
    client: &impl deadpool_postgres::GenericClient,
    ring: &crate::crypto::KeyRing,
) -> Result<u64, DbError> {
    const BATCH: i64 = 500;
    let mut after = (Uuid::nil(), String::new());
    let mut n = 0;
    loop {
        let rows = client
            .query(
                "SELECT project_id, name, value FROM project_secrets \
                 WHERE (project_id, name) > ($1, $2) AND value IS NOT NULL \
                 ORDER BY project_id, name LIMIT $3",
                &[&after.0, &after.1, &BATCH],
            )
            .await?;
        for r in &rows {
            let (project_id, name): (Uuid, String) = (r.try_get(0)?, r.try_get(1)?);
            let stored: String = r.try_get(2)?;
            after = (project_id, name.clone());
            if ring.is_current(stored.as_bytes()) {
                continue;
            }
            let plain = ring.open_str(&stored, VALUE_FIELD)?;
            let sealed = ring.seal_str(&plain, VALUE_FIELD);
            n += client
                .execute(
                    "UPDATE project_secrets SET value = $3 \
                     WHERE project_id = $1 AND name = $2 AND value = $4",
                    &[&project_id, &name, &sealed, &stored],
                )
                .await?;
        }
        if (rows.len() as i64) < BATCH {
            return Ok(n);
        }
    }
}

/// How many live secrets a project holds.
pub async fn count(
    client: &impl deadpool_postgres::GenericClient,
    project_id: Uuid,
) -> Result<i64, DbError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM project_secrets WHERE project_id = $1 AND deleted_at IS NULL",
            &[&project_id],
        )
        .await?
        .try_get(0)?)
}

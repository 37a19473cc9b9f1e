//! `api_keys` repository.

use tokio_postgres::Row;
use uuid::Uuid;

use super::{DbError, parse_col};
use crate::domain::{ApiKey, Scope};

/// Fields of a new key (the hash, never the secret).
#[derive(Clone, Debug)]
pub struct NewKey {
    /// Human name.
    pub name: String,
    /// Display prefix of the secret.
    pub prefix: String,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Project restriction.
    pub project_ids: Option<Vec<Uuid>>,
}

const COLUMNS: &str =
    "id, name, prefix, scopes, project_ids, expires_at, revoked_at, last_used_at, created_at";

fn from_row(row: &Row) -> Result<ApiKey, DbError> {
    let scopes: Vec<String> = row.try_get("scopes")?;
    Ok(ApiKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scopes: scopes
            .iter()
            .map(|s| parse_col(s, "api_keys.scopes"))
            .collect::<Result<_, _>>()?,
        project_ids: row.try_get("project_ids")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts a key.
pub async fn insert(
    client: &impl deadpool_postgres::GenericClient,
    k: &NewKey,
) -> Result<ApiKey, DbError> {
    let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
    let sql = format!(
        "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, project_ids) \
         VALUES ($1,$2,$3,$4,$5,$6) RETURNING {COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &k.name,
                &k.prefix,
                &&k.hash[..],
                &scopes,
                &k.project_ids,
            ],
        )
        .await?;
    from_row(&row)
}

/// The key whose secret hashes to `hash`, with its stored hash for the
/// constant-time check.
pub async fn find_by_hash(
    client: &impl deadpool_postgres::GenericClient,
    hash: &[u8; 32],
) -> Result<Option<(ApiKey, Vec<u8>)>, DbError> {
    let sql = format!("SELECT {COLUMNS}, secret_hash FROM api_keys WHERE secret_hash = $1");
    match client.query_opt(&sql, &[&&hash[..]]).await? {
        Some(row) => Ok(Some((from_row(&row)?, row.try_get("secret_hash")?))),
        None => Ok(None),
    }
}

/// Records a use, at most once a minute per key so authentication does not
/// turn every read into a write.
pub async fn touch(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE api_keys SET last_used_at = now() WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            &[&id],
        )
        .await?;
    Ok(())
}

//! `api_keys` repository.
//!
//! `allowed_ips` is a `cidr[]` column; tokio-postgres has no `ToSql` for
//! `ipnet`, so CIDRs cross the wire as canonical text (`$n::text[]::cidr[]`
//! in, `allowed_ips::text[]` out) and are parsed back into [`ipnet::IpNet`].

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{DbError, parse_col};
use crate::domain::{ApiKey, RateLimit, Scope};

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

/// Optional restrictions of a new key beyond [`NewKey`].
#[derive(Clone, Debug, Default)]
pub struct KeyLimits {
    /// Client networks allowed; none = any.
    pub allowed_ips: Option<Vec<IpNet>>,
    /// Own rate limit; none = the server default.
    pub rate_limit: Option<RateLimit>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// The key that makes this one (none: made from the command line).
    pub created_by: Option<Uuid>,
}

const COLUMNS: &str = "id, name, prefix, scopes, project_ids, allowed_ips::text[] AS allowed_ips, \
     rate_limit_requests, rate_limit_window_s, expires_at, revoked_at, last_used_at, created_at, \
     created_by";

fn from_row(row: &Row) -> Result<ApiKey, DbError> {
    let scopes: Vec<String> = row.try_get("scopes")?;
    let ips: Option<Vec<String>> = row.try_get("allowed_ips")?;
    let allowed_ips = ips
        .map(|v| {
            v.iter()
                .map(|s| parse_col::<IpNet>(s, "api_keys.allowed_ips"))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let requests: Option<i32> = row.try_get("rate_limit_requests")?;
    let window_s: Option<i32> = row.try_get("rate_limit_window_s")?;
    Ok(ApiKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scopes: scopes
            .iter()
            .map(|s| parse_col(s, "api_keys.scopes"))
            .collect::<Result<_, _>>()?,
        project_ids: row.try_get("project_ids")?,
        allowed_ips,
        rate_limit: requests
            .zip(window_s)
            .map(|(requests, window_s)| RateLimit { requests, window_s }),
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn scope_names(scopes: &[Scope]) -> Vec<&'static str> {
    scopes.iter().map(|s| s.as_str()).collect()
}

/// Inserts a key without restrictions beyond scopes and projects.
pub async fn insert(
    client: &impl deadpool_postgres::GenericClient,
    k: &NewKey,
) -> Result<ApiKey, DbError> {
    insert_with(client, k, &KeyLimits::default()).await
}

/// Inserts a key with its IP allowlist, rate limit and expiry.
pub async fn insert_with(
    client: &impl deadpool_postgres::GenericClient,
    k: &NewKey,
    limits: &KeyLimits,
) -> Result<ApiKey, DbError> {
    let ips: Option<Vec<String>> = limits
        .allowed_ips
        .as_ref()
        .map(|v| v.iter().map(|n| n.trunc().to_string()).collect());
    let sql = format!(
        "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, project_ids, allowed_ips, \
         rate_limit_requests, rate_limit_window_s, expires_at, created_by) \
         VALUES ($1,$2,$3,$4,$5,$6,$7::text[]::cidr[],$8,$9,$10,$11) RETURNING {COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &k.name,
                &k.prefix,
                &&k.hash[..],
                &scope_names(&k.scopes),
                &k.project_ids,
                &ips,
                &limits.rate_limit.map(|r| r.requests),
                &limits.rate_limit.map(|r| r.window_s),
                &limits.expires_at,
                &limits.created_by,
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

/// A key by id with its stored hash (an open event stream re-checking the
/// key it was opened with).
pub async fn find_by_id(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<(ApiKey, Vec<u8>)>, DbError> {
    let sql = format!("SELECT {COLUMNS}, secret_hash FROM api_keys WHERE id = $1");
    match client.query_opt(&sql, &[&id]).await? {
        Some(row) => Ok(Some((from_row(&row)?, row.try_get("secret_hash")?))),
        None => Ok(None),
    }
}

/// Which keys a caller may see and manage: those it could have created
/// (scopes ⊆ its own unless it is `admin`; projects ⊆ its own when it is
/// restricted). `None` fields mean "no constraint".
#[derive(Clone, Debug, Default)]
pub struct Visibility {
    /// The caller's scopes, unless it is `admin`.
    pub scopes_within: Option<Vec<Scope>>,
    /// The caller's projects, when it is restricted.
    pub projects_within: Option<Vec<Uuid>>,
}

const VISIBLE: &str = "($2::text[] IS NULL OR scopes <@ $2) \
     AND ($3::uuid[] IS NULL OR (project_ids IS NOT NULL AND project_ids <@ $3))";

/// A key by id, if visible.
pub async fn get(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    vis: &Visibility,
) -> Result<Option<ApiKey>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND {VISIBLE}");
    let scopes = vis.scopes_within.as_deref().map(scope_names);
    client
        .query_opt(&sql, &[&id, &scopes, &vis.projects_within])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Visible keys in id (creation) order after `after`; at most `limit`.
pub async fn list(
    client: &impl deadpool_postgres::GenericClient,
    after: Option<Uuid>,
    vis: &Visibility,
    limit: i64,
) -> Result<Vec<ApiKey>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM api_keys WHERE ($1::uuid IS NULL OR id > $1) AND {VISIBLE} \
         ORDER BY id LIMIT $4"
    );
    let scopes = vis.scopes_within.as_deref().map(scope_names);
    let rows = client
        .query(&sql, &[&after, &scopes, &vis.projects_within, &limit])
        .await?;
    rows.iter().map(from_row).collect()
}

/// Revokes a key (idempotent: the first revocation time is kept).
pub async fn revoke(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<ApiKey>, DbError> {
    let sql = format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 \
         RETURNING {COLUMNS}"
    );
    client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Replaces the secret of a live (not revoked) key; the old hash stops
/// matching at once. `None` when the key is absent or revoked.
pub async fn rotate(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    prefix: &str,
    hash: &[u8; 32],
) -> Result<Option<ApiKey>, DbError> {
    let sql = format!(
        "UPDATE api_keys SET prefix = $2, secret_hash = $3 WHERE id = $1 AND revoked_at IS NULL \
         RETURNING {COLUMNS}"
    );
    client
        .query_opt(&sql, &[&id, &prefix, &&hash[..]])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Ids of the live projects with these names, in one query (a key may
/// name up to 1,000 projects).
pub async fn project_ids_by_name(
    client: &impl deadpool_postgres::GenericClient,
    names: &[String],
) -> Result<std::collections::HashMap<String, Uuid>, DbError> {
    let rows = client
        .query(
            "SELECT name, id FROM projects WHERE name = ANY($1) AND deleted_at IS NULL",
            &[&names],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("id")?)))
        .collect()
}

/// Names of the projects with these ids (deleted ones included), in no
/// particular order; for showing key restrictions by name.
pub async fn project_names(
    client: &impl deadpool_postgres::GenericClient,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>, DbError> {
    let rows = client
        .query("SELECT id, name FROM projects WHERE id = ANY($1)", &[&ids])
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
        .collect()
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

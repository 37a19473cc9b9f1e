//! `rdev-api keys reencrypt`: rewrites every sealed column under the key
//! ring's current (first) key, after a key rotation or when encryption is
//! switched on for a database that holds plaintext. Idempotent and online:
//! rows are read in id order in batches, each rewritten with a
//! compare-and-set (a row changed meanwhile is left for the next run), and
//! rows already under the current key are skipped.

use uuid::Uuid;

use super::DbError;
use crate::crypto::KeyRing;

/// Rows read per batch.
const BATCH: i64 = 500;

/// What a run rewrote, per column.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// `projects.env` values rewritten.
    pub project_env: u64,
    /// `commands.env` values rewritten.
    pub command_env: u64,
    /// `commands.stdin` values rewritten.
    pub command_stdin: u64,
    /// `webhooks.secret` and `webhooks.previous_secret` values rewritten.
    pub webhook_secret: u64,
    /// `command_input.data` values (interactive input) rewritten.
    pub command_input: u64,
}

fn sealed_json(ring: &KeyRing, v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|s| ring.is_current(s.as_bytes()))
}

/// Rewrites a jsonb column of `table` (keyed by uuid `id`).
async fn json_column(
    client: &impl deadpool_postgres::GenericClient,
    ring: &KeyRing,
    table: &str,
    field: &str,
) -> Result<u64, DbError> {
    let select = format!("SELECT id, env FROM {table} WHERE id > $1 ORDER BY id LIMIT $2");
    let update = format!("UPDATE {table} SET env = $2 WHERE id = $1 AND env = $3");
    let mut after = Uuid::nil();
    let mut n = 0;
    loop {
        let rows = client.query(&select, &[&after, &BATCH]).await?;
        for r in &rows {
            let id: Uuid = r.try_get(0)?;
            let stored: serde_json::Value = r.try_get(1)?;
            after = id;
            if sealed_json(ring, &stored) || (ring.is_empty() && !stored.is_string()) {
                continue;
            }
            let plain = ring.open_json(stored.clone(), field)?;
            let sealed = ring.seal_json(&plain, field);
            n += client.execute(&update, &[&id, &sealed, &stored]).await?;
        }
        if (rows.len() as i64) < BATCH {
            return Ok(n);
        }
    }
}

/// Rewrites every sealed column under `ring`'s current key.
pub async fn run(
    client: &impl deadpool_postgres::GenericClient,
    ring: &KeyRing,
) -> Result<Report, DbError> {
    let mut report = Report {
        project_env: json_column(client, ring, "projects", super::projects::ENV_FIELD).await?,
        command_env: json_column(client, ring, "commands", super::commands::ENV_FIELD).await?,
        ..Report::default()
    };
    let mut after = Uuid::nil();
    loop {
        let rows = client
            .query(
                "SELECT id, stdin FROM commands WHERE id > $1 AND stdin IS NOT NULL \
                 ORDER BY id LIMIT $2",
                &[&after, &BATCH],
            )
            .await?;
        for r in &rows {
            let id: Uuid = r.try_get(0)?;
            let stored: Vec<u8> = r.try_get(1)?;
            after = id;
            if ring.is_current(&stored) {
                continue;
            }
            let plain = ring.open(&stored, super::commands::STDIN_FIELD)?;
            let sealed = ring.seal(&plain, super::commands::STDIN_FIELD);
            report.command_stdin += client
                .execute(
                    "UPDATE commands SET stdin = $2 WHERE id = $1 AND stdin = $3",
                    &[&id, &sealed, &stored],
                )
                .await?;
        }
        if (rows.len() as i64) < BATCH {
            break;
        }
    }
    report.webhook_secret = text_column(client, ring, "secret", super::webhooks::SECRET_FIELD)
        .await?
        + text_column(
            client,
            ring,
            "previous_secret",
            super::webhooks::PREVIOUS_SECRET_FIELD,
        )
        .await?;
    report.command_input = input_data(client, ring).await?;
    Ok(report)
}

/// Rewrites `command_input.data` (keyed by command and `seq`).
async fn input_data(
    client: &impl deadpool_postgres::GenericClient,
    ring: &KeyRing,
) -> Result<u64, DbError> {
    let field = super::input::DATA_FIELD;
    let (mut after_id, mut after_seq) = (Uuid::nil(), 0_i64);
    let mut n = 0;
    loop {
        let rows = client
            .query(
                "SELECT command_id, seq, data FROM command_input \
                 WHERE (command_id, seq) > ($1, $2) AND data IS NOT NULL \
                 ORDER BY command_id, seq LIMIT $3",
                &[&after_id, &after_seq, &BATCH],
            )
            .await?;
        for r in &rows {
            let (id, seq): (Uuid, i64) = (r.try_get(0)?, r.try_get(1)?);
            let stored: Vec<u8> = r.try_get(2)?;
            (after_id, after_seq) = (id, seq);
            if ring.is_current(&stored) {
                continue;
            }
            let sealed = ring.seal(&ring.open(&stored, field)?, field);
            n += client
                .execute(
                    "UPDATE command_input SET data = $3 \
                     WHERE command_id = $1 AND seq = $2 AND data = $4",
                    &[&id, &seq, &sealed, &stored],
                )
                .await?;
        }
        if (rows.len() as i64) < BATCH {
            return Ok(n);
        }
    }
}

/// Rewrites a text column of `webhooks`.
async fn text_column(
    client: &impl deadpool_postgres::GenericClient,
    ring: &KeyRing,
    column: &str,
    field: &str,
) -> Result<u64, DbError> {
    let select = format!(
        "SELECT id, {column} FROM webhooks WHERE id > $1 AND {column} IS NOT NULL \
         ORDER BY id LIMIT $2"
    );
    let update = format!("UPDATE webhooks SET {column} = $2 WHERE id = $1 AND {column} = $3");
    let mut after = Uuid::nil();
    let mut n = 0;
    loop {
        let rows = client.query(&select, &[&after, &BATCH]).await?;
        for r in &rows {
            let id: Uuid = r.try_get(0)?;
            let stored: String = r.try_get(1)?;
            after = id;
            if ring.is_current(stored.as_bytes()) {
                continue;
            }
            let plain = ring.open_str(&stored, field)?;
            let sealed = ring.seal_str(&plain, field);
            n += client.execute(&update, &[&id, &sealed, &stored]).await?;
        }
        if (rows.len() as i64) < BATCH {
            return Ok(n);
        }
    }
}

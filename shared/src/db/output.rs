//! `command_output` repository: numbered chunks of a command's output.

use tokio_postgres::Row;
use uuid::Uuid;

use super::{DbError, parse_col, prepared};
use crate::domain::OutputStream;

/// Largest chunk stored in one row (enforced by a CHECK too).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// One stored chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// 1, 2, 3… in the order the worker read them.
    pub seq: i64,
    /// Where it came from.
    pub stream: OutputStream,
    /// The raw bytes.
    pub data: Vec<u8>,
}

fn from_row(row: &Row) -> Result<Chunk, DbError> {
    let stream: String = row.try_get("stream")?;
    Ok(Chunk {
        seq: row.try_get("seq")?,
        stream: parse_col(&stream, "command_output.stream")?,
        data: row.try_get("data")?,
    })
}

/// Appends chunks and deletes evicted ones (the tail ring of a truncated
/// output moving on) in one statement, only while the command is
/// `worker_id`'s running command: output that arrives after its terminal
/// status (a command reaped while its worker still ran it) is refused.
/// Returns whether the command is still the worker's; idempotent, so a
/// retry after a partial failure is safe.
pub async fn store(
    client: &impl deadpool_postgres::GenericClient,
    command_id: Uuid,
    worker_id: &str,
    chunks: &[Chunk],
    evicted: &[i64],
) -> Result<bool, DbError> {
    let seqs: Vec<i64> = chunks.iter().map(|c| c.seq).collect();
    let streams: Vec<&str> = chunks.iter().map(|c| c.stream.as_str()).collect();
    let data: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
    const SQL: &str = "WITH owner AS (SELECT 1 FROM commands \
        WHERE id = $1 AND worker_id = $2 AND status = 'running'), \
        gone AS (DELETE FROM command_output WHERE command_id = $1 AND seq = ANY($6) \
        AND EXISTS (SELECT 1 FROM owner)), \
        ins AS (INSERT INTO command_output (command_id, seq, stream, data) \
        SELECT $1, u.* FROM unnest($3::bigint[], $4::text[], $5::bytea[]) u \
        WHERE EXISTS (SELECT 1 FROM owner) ON CONFLICT DO NOTHING) \
        SELECT EXISTS (SELECT 1 FROM owner)";
    let row = client
        .query_one(
            &prepared(client, SQL).await?,
            &[&command_id, &worker_id, &seqs, &streams, &data, &evicted],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Up to `limit` chunks with `seq > after`, in order, optionally of one stream.
pub async fn read(
    client: &impl deadpool_postgres::GenericClient,
    command_id: Uuid,
    after: i64,
    stream: Option<OutputStream>,
    limit: i64,
) -> Result<Vec<Chunk>, DbError> {
    let stream = stream.map(|s| s.as_str());
    let rows = client
        .query(
            "SELECT seq, stream, data FROM command_output WHERE command_id = $1 AND seq > $2 \
             AND ($3::text IS NULL OR stream = $3) ORDER BY seq LIMIT $4",
            &[&command_id, &after, &stream, &limit],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

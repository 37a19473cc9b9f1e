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

/// Appends chunks in one statement.
pub async fn append(
    client: &impl deadpool_postgres::GenericClient,
    command_id: Uuid,
    chunks: &[Chunk],
) -> Result<(), DbError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = chunks.iter().map(|c| c.seq).collect();
    let streams: Vec<&str> = chunks.iter().map(|c| c.stream.as_str()).collect();
    let data: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
    const SQL: &str = "INSERT INTO command_output (command_id, seq, stream, data) \
        SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::bytea[]) ON CONFLICT DO NOTHING";
    client
        .execute(
            &prepared(client, SQL).await?,
            &[&command_id, &seqs, &streams, &data],
        )
        .await?;
    Ok(())
}

/// Deletes chunks (the tail ring of a truncated output moving on).
pub async fn delete(
    client: &impl deadpool_postgres::GenericClient,
    command_id: Uuid,
    seqs: &[i64],
) -> Result<(), DbError> {
    if seqs.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "DELETE FROM command_output WHERE command_id = $1 AND seq = ANY($2)",
            &[&command_id, &seqs],
        )
        .await?;
    Ok(())
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

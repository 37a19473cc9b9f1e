//! The files of a local project: its directory on the workspace volume,
//! opened once per request and used only through [`crate::workspace`]
//! (blocking, in `spawn_blocking`) and [`crate::archive`].

use std::os::fd::OwnedFd;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::transfer::{Span, copy_body};
use super::{ArchiveTx, PIECE, blocking, spawn_archive};
use crate::archive::Extracted;
use crate::http::error::{ApiError, ApiResult};
use crate::workspace::{self, Entry, FilesError, Kind};

/// The regular file `rel`, streamed (the span `headers` ask for); a read
/// that takes longer than `idle` cuts the download.
pub(super) async fn download(
    dir: OwnedFd,
    rel: String,
    headers: &HeaderMap,
    idle: Duration,
) -> ApiResult<Response> {
    let (file, size) = blocking(move || workspace::open_file(&dir, &rel)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let span = Span::of(headers, size)?;
    if span.start > 0 {
        file.seek(std::io::SeekFrom::Start(span.start))
            .await
            .map_err(|e| ApiError::Internal(format!("seek: {e}")))?;
    }
    let stream = futures::stream::unfold(
        (file, span.len, vec![0u8; PIECE]),
        move |(mut file, left, mut buf)| async move {
            if left == 0 {
                return None;
            }
            let want = usize::try_from(left.min(PIECE as u64)).unwrap_or(PIECE);
            match tokio::time::timeout(idle, file.read(&mut buf[..want])).await {
                Ok(Ok(0)) => None,
                Ok(Ok(n)) => {
                    let piece = bytes::Bytes::copy_from_slice(&buf[..n]);
                    Some((Ok(piece), (file, left - n as u64, buf)))
                }
                Ok(Err(e)) => Some((Err(e), (file, 0, buf))),
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "reading the file timed out",
                    )),
                    (file, 0, buf),
                )),
            }
        },
    );
    Ok(span.response(Body::from_stream(stream)))
}

/// A page of the directory `rel`.
pub(super) async fn list(
    dir: OwnedFd,
    rel: String,
    after: Option<String>,
    limit: usize,
) -> ApiResult<Vec<Entry>> {
    blocking(move || workspace::list(&dir, &rel, after.as_deref(), limit)).await
}

/// Starts building the tar.gz of the directory `rel` into `tx`. The
/// directory must exist before the 200 goes out.
pub(super) async fn archive(dir: OwnedFd, rel: String, tx: ArchiveTx) -> ApiResult<()> {
    let (d2, r2) = (dir.try_clone().map_err(FilesError::from)?, rel.clone());
    let entry = blocking(move || workspace::stat(&d2, &r2)).await?;
    if !rel.is_empty() && entry.kind != Kind::Dir {
        return Err(FilesError::WrongType("not a directory".into()).into());
    }
    spawn_archive(tx, "building an archive", move |out| {
        crate::archive::build(&dir, &rel, out)
    });
    Ok(())
}

/// Checks the staged archive, then extracts it into `target`.
pub(super) async fn extract(
    dir: OwnedFd,
    mut staged: std::fs::File,
    max: u64,
    target: String,
) -> ApiResult<Extracted> {
    blocking(move || {
        crate::archive::check(&mut staged, max)?;
        crate::archive::extract(&mut staged, &dir, &target)
    })
    .await
}

/// Streams `body` (at most `max` bytes) to a temporary file that replaces
/// `rel` once complete; the new entry and the bytes written.
pub(super) async fn write(
    dir: OwnedFd,
    rel: String,
    body: Body,
    max: u64,
) -> ApiResult<(Entry, u64)> {
    let dir2 = dir.try_clone().map_err(FilesError::from)?;
    let rel2 = rel.clone();
    let (upload, file) = blocking(move || workspace::Upload::start(&dir2, &rel2)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let written = copy_body(body, &mut file, max, "writing an upload").await?;
    drop(file);
    blocking(move || upload.commit()).await?;
    let entry = blocking(move || workspace::stat(&dir, &rel)).await?;
    Ok((entry, written))
}

/// Removes a file, a symlink or an empty directory.
pub(super) async fn remove(dir: OwnedFd, rel: String) -> ApiResult<()> {
    blocking(move || workspace::remove(&dir, &rel)).await
}

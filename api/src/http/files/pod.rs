//! The files of a Kubernetes project: its workdir in one of its pods,
//! through [`crate::pod_files`]. What differs from a local project: the
//! kind of a path is checked from a stat here (the pod's scripts refuse
//! the rest), and an upload's exact size must be known before it starts.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use rdev_shared::domain::KubernetesSettings as KubeProject;
use tokio::io::AsyncSeekExt;

use super::transfer::{Span, body_error, copy_body, staging_file};
use super::{ArchiveTx, PIECE, blocking, spawn_archive};
use crate::archive::Extracted;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::pod_files::PodFiles;
use crate::workspace::{Entry, FilesError, Kind};

/// The regular file `rel`, streamed (the span `headers` ask for). `HEAD`
/// (a stat) opens no second session.
pub(super) async fn download(
    pods: &PodFiles,
    kp: &KubeProject,
    rel: &str,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult<Response> {
    let entry = pods.stat(kp, rel).await?;
    match entry.kind {
        Kind::File => {}
        Kind::Dir => {
            return Err(
                FilesError::WrongType("is a directory (list it with `?list`)".into()).into(),
            );
        }
        Kind::Symlink => return Err(FilesError::Escapes.into()),
        Kind::Special => return Err(FilesError::Special.into()),
    }
    let span = Span::of(headers, entry.size)?;
    let body = if span.len == 0 || head {
        Body::empty()
    } else {
        Body::from_stream(pods.read(kp, rel, span.start, span.len).await?)
    };
    Ok(span.response(body))
}

/// Starts repacking the pod's tar of the directory `rel` as a tar.gz into
/// `tx`.
pub(super) async fn archive(
    pods: &PodFiles,
    kp: &KubeProject,
    rel: &str,
    tx: ArchiveTx,
) -> ApiResult<()> {
    let entry = pods.stat(kp, rel).await?;
    match entry.kind {
        Kind::Dir => {}
        Kind::Symlink => return Err(FilesError::Escapes.into()),
        _ => return Err(FilesError::WrongType("not a directory".into()).into()),
    }
    let tar = tokio_util::io::StreamReader::new(pods.tar_out(kp, rel).await?);
    let tar = tokio_util::io::SyncIoBridge::new(tar);
    spawn_archive(tx, "repacking a pod's archive", move |out| {
        crate::archive::repack(tar, out)
    });
    Ok(())
}

/// Checks the staged archive and normalises it (a second staging file)
/// into the plain tar the pod's script extracts into `target`.
pub(super) async fn extract(
    st: &AppState,
    pods: &PodFiles,
    kp: &KubeProject,
    mut staged: std::fs::File,
    max: u64,
    target: &str,
) -> ApiResult<Extracted> {
    let (normal, _cleanup) = staging_file(st).await?;
    let mut normal = normal.into_std().await;
    let (done, normal, len) = blocking(move || {
        crate::archive::check(&mut staged, max)?;
        let done = crate::archive::normalize(&mut staged, &mut normal)?;
        let len = normal.metadata()?.len();
        Ok((done, normal, len))
    })
    .await?;
    pods.tar_in(kp, target, normal, len).await?;
    Ok(done)
}

/// Writes `body` to `rel`; the new entry and its size. The pod's script
/// needs the exact size first (its stdin cannot be closed on every exec
/// protocol): without a `Content-Length` the body is staged on disk.
pub(super) async fn write(
    st: &AppState,
    pods: &PodFiles,
    kp: &KubeProject,
    rel: &str,
    body: Body,
    announced: Option<u64>,
    max: u64,
) -> ApiResult<(Entry, u64)> {
    let entry = match announced {
        Some(len) => {
            let stream = body.into_data_stream().map(|r| r.map_err(body_error));
            pods.write(kp, rel, len, stream).await?
        }
        None => {
            let (mut staged, _cleanup) = staging_file(st).await?;
            let len = copy_body(body, &mut staged, max, "staging").await?;
            staged
                .seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(staged, PIECE);
            pods.write(kp, rel, len, stream).await?
        }
    };
    let size = entry.size;
    Ok((entry, size))
}

//! `/v1/projects/{name}/files/{path}`: the files of a local project's
//! directory: upload (`PUT`, streamed), download (`GET`, streamed, one
//! `Range`), stat (`HEAD`), delete, and directory listings (`?list`).
//!
//! The API reads and writes the workers' workspace volume itself
//! (`RDEV_WORKSPACE_ROOT`, mounted on the API too): no file passes through
//! the broker or a worker, and memory stays bounded (one 64 KiB buffer per
//! transfer). Paths are confined by the kernel (see [`crate::workspace`]).
//! Kubernetes projects are refused (`422`) for now.

use std::os::fd::OwnedFd;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rdev_shared::db::audit;
use rdev_shared::domain::{Project, Scope};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::AppState;
use super::access::load_visible_project as load_visible;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Path, Query};
use super::page::{Page, cursor, page_limit};
use crate::workspace::{self, Entry, FilesError};

/// The routes of this module (under `/v1`).
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list_root))
        .routes(routes!(archive_root, upload_archive))
        .routes(routes!(get, put, delete))
}

/// Bytes read from a file per piece of a download.
const PIECE: usize = 64 * 1024;
/// `GET …/files/{dir}:archive`: the directory as a tar.gz.
const ARCHIVE_SUFFIX: &str = ":archive";

/// Query of `GET …/files/{path}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// Present (any value, or none: `?list`): list the directory instead of
    /// downloading a file.
    list: Option<String>,
    /// Page size of a listing, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page of a listing.
    cursor: Option<String>,
}

impl From<FilesError> for ApiError {
    fn from(e: FilesError) -> Self {
        match e {
            FilesError::InvalidPath(_) | FilesError::Escapes | FilesError::Special => {
                ApiError::field("path", e.to_string())
            }
            FilesError::NotFound => ApiError::NotFound(e.to_string()),
            FilesError::WrongType(_) | FilesError::NotEmpty => ApiError::Conflict(e.to_string()),
            FilesError::TooLarge(_) => ApiError::PayloadTooLarge,
            FilesError::Io(e) => ApiError::Internal(format!("files: {e}")),
        }
    }
}

/// The project's directory, opened; 422 for a Kubernetes project, 503
/// when this API has no workspace.
async fn project_dir(st: &AppState, project: &Project) -> ApiResult<OwnedFd> {
    let Some(root) = st.cfg.workspace_root.clone() else {
        return Err(ApiError::Unavailable(
            "files are not served by this API (RDEV_WORKSPACE_ROOT is not set)".into(),
        ));
    };
    let Some(rel) = workspace::project_rel(project) else {
        return Err(ApiError::field(
            "project",
            "files of kubernetes projects are not available through the API yet",
        ));
    };
    blocking(move || workspace::project_dir(&root, &rel)).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("files task: {e}")))?
        .map_err(ApiError::from)
}

/// A parsed `Range: bytes=…` (one range).
fn range(headers: &HeaderMap, size: u64) -> ApiResult<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || ApiError::RangeNotSatisfiable(size);
    let spec = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().strip_prefix("bytes="))
        .ok_or_else(bad)?;
    if spec.contains(',') {
        // One range only: answer the whole file, as RFC 9110 allows.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(bad());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (s, "") => (s.parse().map_err(|_| bad())?, size.saturating_sub(1)),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| bad())?, e.parse().map_err(|_| bad())?);
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if size == 0 || start >= size || start > end {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

/// `GET /v1/projects/{name}/files/{path}` (and `HEAD`): the file, streamed;
/// with `?list`, the directory's entries.
#[utoipa::path(
    get,
    path = "/projects/{name}/files/{*path}",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
        ("path" = String, Path, description = "Path relative to the project directory"),
        FileQuery,
        ("Range" = Option<String>, Header, description = "One `bytes=` range"),
    ),
    responses(
        (status = 200, description = "The file's bytes (`application/octet-stream`), or with `?list` a page of entries (scope `files:read`)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
    ),
)]
pub async fn get(
    State(st): State<AppState>,
    auth: Auth,
    Path((name, path)): Path<(String, String)>,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    auth.require(Scope::FilesRead)?;
    let rel = workspace::validate_path(&path)?.to_owned();
    let project = load_visible(&st, &auth, &name).await?;
    let dir = project_dir(&st, &project).await?;
    if let Some(d) = rel.strip_suffix(ARCHIVE_SUFFIX) {
        let d = if d.is_empty() {
            String::new()
        } else {
            workspace::validate_path(d)?.to_owned()
        };
        return download_archive(dir, d).await;
    }
    if q.list.is_some() {
        return listing(dir, rel, q).await;
    }
    let (file, size) = blocking(move || workspace::open_file(&dir, &rel)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let (status, start, len) = match range(&headers, size)? {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::Internal(format!("seek: {e}")))?;
    }
    let idle = st.cfg.files_idle_timeout;
    let stream = futures::stream::unfold(
        (file, len, vec![0u8; PIECE]),
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
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// `GET /v1/projects/{name}/files?list`: the project directory's entries.
#[utoipa::path(
    get,
    path = "/projects/{name}/files",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
        FileQuery,
    ),
    responses(
        (status = 200, description = "A page of entries of the project directory, by name (scope `files:read`)", body = Page<Entry>),
    ),
)]
pub async fn list_root(
    State(st): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
) -> ApiResult<Response> {
    auth.require(Scope::FilesRead)?;
    let project = load_visible(&st, &auth, &name).await?;
    let dir = project_dir(&st, &project).await?;
    listing(dir, String::new(), q).await
}

async fn listing(dir: OwnedFd, rel: String, q: FileQuery) -> ApiResult<Response> {
    let limit = page_limit(q.limit)?;
    let after = q.cursor.as_deref().map(cursor::decode).transpose()?;
    let n = usize::try_from(limit).unwrap_or(50);
    let items: Vec<Entry> =
        blocking(move || workspace::list(&dir, &rel, after.as_deref(), n)).await?;
    Ok(Page::new(items, limit, |e| e.name.clone()).into_response())
}

/// Query of `POST …/files:archive`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ArchiveQuery {
    /// Directory (relative to the project directory) to extract into;
    /// default the project directory.
    path: Option<String>,
}

/// `GET /v1/projects/{name}/files:archive`: the project directory as a
/// tar.gz (`…/files/{dir}:archive` for a directory in it).
#[utoipa::path(
    get,
    path = "/projects/{name}/files:archive",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
    ),
    responses(
        (status = 200, description = "A tar.gz of the project directory: directories and regular files (scope `files:read`)", content_type = "application/gzip", body = Vec<u8>),
    ),
)]
pub async fn archive_root(
    State(st): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    auth.require(Scope::FilesRead)?;
    let project = load_visible(&st, &auth, &name).await?;
    let dir = project_dir(&st, &project).await?;
    download_archive(dir, String::new()).await
}

async fn download_archive(dir: OwnedFd, rel: String) -> ApiResult<Response> {
    // The directory must exist before the 200 goes out.
    let (d2, r2) = (dir.try_clone().map_err(FilesError::from)?, rel.clone());
    let entry = blocking(move || workspace::stat(&d2, &r2)).await?;
    if !rel.is_empty() && entry.kind != workspace::Kind::Dir {
        return Err(FilesError::WrongType("not a directory".into()).into());
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::archive::build(&dir, &rel, crate::archive::ChannelWriter::new(tx)) {
            tracing::warn!(error = %e, "building an archive failed; the download is cut");
            let _ = err_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    Ok(resp)
}

/// `POST /v1/projects/{name}/files:archive`: extracts a tar (or tar.gz) into
/// the project directory (or `?path=`). The whole archive is checked
/// before anything is written: `..`, absolute paths, symlinks, hard links
/// and special files refuse it (`422`).
#[utoipa::path(
    post,
    path = "/projects/{name}/files:archive",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
        ArchiveQuery,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A tar, or a tar.gz (any content type is accepted)"),
    responses(
        (status = 200, description = "Extracted (scope `files:write`)", body = crate::archive::Extracted),
    ),
)]
pub async fn upload_archive(
    State(st): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    Query(q): Query<ArchiveQuery>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::FilesWrite)?;
    let target = match q.path.as_deref() {
        None | Some("") => String::new(),
        Some(p) => workspace::validate_path(p)?.to_owned(),
    };
    let project = load_visible(&st, &auth, &name).await?;
    let dir = project_dir(&st, &project).await?;
    let Some(root) = st.cfg.workspace_root.clone() else {
        return Err(ApiError::Unavailable("no workspace".into()));
    };
    // Staged on the workspace volume, outside every project directory.
    let staging = root.join(".rdev-staging");
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
    let staged_path = staging.join(format!("{:016x}.tar", rand::random::<u64>()));
    let _cleanup = RemoveOnDrop(staged_path.clone());
    let mut staged = tokio::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&staged_path)
        .await
        .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
    let max = st.cfg.files_max_bytes;
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            if super::body::is_timeout(&e) {
                ApiError::RequestTimeout(e.to_string())
            } else {
                ApiError::BadRequest(format!("reading the body: {e}"))
            }
        })?;
        written += piece.len() as u64;
        if written > max {
            return Err(FilesError::TooLarge(max).into());
        }
        staged
            .write_all(&piece)
            .await
            .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
    }
    staged
        .flush()
        .await
        .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
    let mut staged = staged.into_std().await;
    let target2 = target.clone();
    let done = blocking(move || {
        crate::archive::check(&mut staged, max)?;
        crate::archive::extract(&mut staged, &dir, &target2)
    })
    .await?;
    let mut a = auth.audit("file.archive", "file", Some(target), Some(project.id));
    a.details = json!({ "files": done.files, "dirs": done.dirs, "bytes": done.bytes });
    let client = st.pool.get().await?;
    audit::append(&client, &a).await?;
    Ok(axum::Json(done))
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `PUT /v1/projects/{name}/files/{path}`: writes the body to the file
/// (creating missing directories), streamed to a temporary file that
/// replaces the destination once complete: a reader never sees half a
/// file, and a failed upload leaves nothing.
#[utoipa::path(
    put,
    path = "/projects/{name}/files/{*path}",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
        ("path" = String, Path, description = "Path relative to the project directory"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Written (scope `files:write`)", body = Entry),
    ),
)]
pub async fn put(
    State(st): State<AppState>,
    auth: Auth,
    Path((name, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::FilesWrite)?;
    let rel = workspace::validate_path(&path)?.to_owned();
    let max = st.cfg.files_max_bytes;
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > max)
    {
        return Err(ApiError::PayloadTooLarge);
    }
    let project = load_visible(&st, &auth, &name).await?;
    let dir = project_dir(&st, &project).await?;
    let dir2 = dir.try_clone().map_err(FilesError::from)?;
    let rel2 = rel.clone();
    let (upload, file) = blocking(move || workspace::Upload::start(&dir2, &rel2)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            if super::body::is_timeout(&e) {
                ApiError::RequestTimeout(e.to_string())
            } else {
                ApiError::BadRequest(format!("reading the body: {e}"))
            }
        })?;
        written += piece.len() as u64;
        if written > max {
            return Err(FilesError::TooLarge(max).into());
        }
        file.write_all(&piece)
            .await
            .map_err(|e| ApiError::Internal(format!("writing an upload: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(format!("writing an upload: {e}")))?;
    drop(file);
    blocking(move || upload.commit()).await?;
    let rel3 = rel.clone();
    let entry = blocking(move || workspace::stat(&dir, &rel3)).await?;
    let mut a = auth.audit("file.write", "file", Some(rel), Some(project.id));
    a.details = json!({ "size": written });
    let client = st.pool.get().await?;
    audit::append(&client, &a).await?;
    Ok((StatusCode::CREATED, axum::Json(entry)))
}

/// `DELETE /v1/projects/{name}/files/{path}`: a file, a symlink (not its
/// target) or an empty directory.
#[utoipa::path(
    delete,
    path = "/projects/{name}/files/{*path}",
    tag = "files",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
        ("path" = String, Path, description = "Path relative to the project directory"),
    ),
    responses(
        (status = 204, description = "Deleted (scope `files:write`)"),
    ),
)]
pub async fn delete(
    State(st): State<AppState>,
    auth: Auth,
    Path((name, path)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::FilesWrite)?;
    let rel = workspace::validate_path(&path)?.to_owned();
    let project = load_visible(&st, &auth, &name).await?;
    let dir = project_dir(&st, &project).await?;
    let rel2 = rel.clone();
    blocking(move || workspace::remove(&dir, &rel2)).await?;
    let client = st.pool.get().await?;
    audit::append(
        &client,
        &auth.audit("file.delete", "file", Some(rel), Some(project.id)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::RANGE, HeaderValue::from_str(v).expect("value"));
        m
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(range(&HeaderMap::new(), 10).expect("none"), None);
        assert_eq!(range(&h("bytes=0-4"), 10).expect("r"), Some((0, 4)));
        assert_eq!(range(&h("bytes=5-"), 10).expect("r"), Some((5, 9)));
        assert_eq!(range(&h("bytes=-3"), 10).expect("r"), Some((7, 9)));
        assert_eq!(range(&h("bytes=-30"), 10).expect("r"), Some((0, 9)));
        assert_eq!(range(&h("bytes=8-100"), 10).expect("r"), Some((8, 9)));
        assert_eq!(range(&h("bytes=0-1,4-5"), 10).expect("whole"), None);
        for bad in [
            "bytes=10-",
            "bytes=5-4",
            "bytes=-0",
            "items=0-1",
            "bytes=x-1",
        ] {
            assert!(
                matches!(range(&h(bad), 10), Err(ApiError::RangeNotSatisfiable(10))),
                "{bad}"
            );
        }
        assert!(range(&h("bytes=0-0"), 0).is_err());
    }
}

//! `/v1/projects/{name}/files/{path}`: the files of a project's directory:
//! upload (`PUT`, streamed), download (`GET`, streamed, one `Range`), stat
//! (`HEAD`), delete, directory listings (`?list`) and tar archives.
//!
//! Local projects: the API reads and writes the workers' workspace volume
//! itself (`RDEV_WORKSPACE_ROOT`, mounted on the API too); paths are
//! confined by the kernel (see [`crate::workspace`]). Kubernetes projects:
//! the API execs a small script in one of the project's pods (see
//! [`crate::pod_files`]). Either way no file passes through the broker or a
//! worker, and memory stays bounded (64 KiB pieces per transfer).

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
use crate::pod_files::PodFiles;
use crate::workspace::{self, Entry, FilesError, Kind};

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
            FilesError::Unavailable(m) => ApiError::Unavailable(m),
            FilesError::Body(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                ApiError::RequestTimeout(e.to_string())
            }
            FilesError::Body(e) => ApiError::BadRequest(format!("reading the body: {e}")),
            FilesError::Io(e) => ApiError::Internal(format!("files: {e}")),
        }
    }
}

/// Where a project's files are.
enum Files {
    /// A local project's directory on the workspace volume, opened.
    Local(OwnedFd),
    /// A Kubernetes project's workdir in its pods.
    Pod(
        std::sync::Arc<PodFiles>,
        rdev_shared::domain::KubernetesSettings,
    ),
}

/// The project's files; 503 when this API serves no workspace (local
/// projects).
async fn project_files(st: &AppState, project: &Project) -> ApiResult<Files> {
    if let rdev_shared::domain::ExecutorConfig::Kubernetes(k) = &project.executor {
        return Ok(Files::Pod(st.pod_files.clone(), k.clone()));
    }
    let Some(root) = st.cfg.workspace_root.clone() else {
        return Err(ApiError::Unavailable(
            "files are not served by this API (RDEV_WORKSPACE_ROOT is not set)".into(),
        ));
    };
    let Some(rel) = workspace::project_rel(project) else {
        return Err(ApiError::field("project", "the project has no directory"));
    };
    let spec = st.cfg.sandbox_user.clone();
    blocking(move || workspace::project_dir(&root, &rel, workspace::sandbox_owner(spec.as_deref())))
        .await
        .map(Files::Local)
}

/// The largest file (or sum of an archive's files) one upload may write to
/// `project`: its `max_file_bytes`, never above `RDEV_FILES_MAX_BYTES`.
pub fn max_file_bytes(st: &AppState, project: &Project) -> u64 {
    let global = st.cfg.files_max_bytes;
    project
        .max_file_bytes
        .and_then(|n| u64::try_from(n).ok())
        .map_or(global, |n| n.min(global))
}

/// Where uploads that must be complete before they are used (archives, and
/// uploads to a pod without a `Content-Length`) are staged: the workspace
/// volume when there is one (outside every project directory), else the
/// API's temporary directory.
async fn staging_file(st: &AppState) -> ApiResult<(tokio::fs::File, RemoveOnDrop)> {
    let staging = match &st.cfg.workspace_root {
        Some(root) => root.join(".rdev-staging"),
        None => std::env::temp_dir().join("rdev-staging"),
    };
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
    let path = staging.join(format!("{:016x}.tar", rand::random::<u64>()));
    let cleanup = RemoveOnDrop(path.clone());
    let file = tokio::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
    Ok((file, cleanup))
}

/// Writes `body` to `file`, at most `max` bytes (413 beyond); the size.
async fn stage_body(body: Body, file: &mut tokio::fs::File, max: u64) -> ApiResult<u64> {
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(body_error)?;
        written += piece.len() as u64;
        if written > max {
            return Err(FilesError::TooLarge(max).into());
        }
        file.write_all(&piece)
            .await
            .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
    Ok(written)
}

fn body_error(e: axum::Error) -> FilesError {
    if super::body::is_timeout(&e) {
        FilesError::Body(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            e.to_string(),
        ))
    } else {
        FilesError::Body(std::io::Error::other(e.to_string()))
    }
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
    method: axum::http::Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    auth.require(Scope::FilesRead)?;
    let rel = workspace::validate_path(&path)?.to_owned();
    let project = load_visible(&st, &auth, &name).await?;
    let files = project_files(&st, &project).await?;
    if let Some(d) = rel.strip_suffix(ARCHIVE_SUFFIX) {
        let d = if d.is_empty() {
            String::new()
        } else {
            workspace::validate_path(d)?.to_owned()
        };
        return download_archive(files, d).await;
    }
    if q.list.is_some() {
        return listing(files, rel, q).await;
    }
    let idle = st.cfg.files_idle_timeout;
    match files {
        Files::Local(dir) => {
            let (file, size) = blocking(move || workspace::open_file(&dir, &rel)).await?;
            let mut file = tokio::fs::File::from_std(file);
            let (status, start, len) = span(&headers, size)?;
            if start > 0 {
                file.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(|e| ApiError::Internal(format!("seek: {e}")))?;
            }
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
            Ok(file_response(
                Body::from_stream(stream),
                status,
                start,
                len,
                size,
            ))
        }
        Files::Pod(pods, kp) => {
            let entry = pods.stat(&kp, &rel).await?;
            match entry.kind {
                Kind::File => {}
                Kind::Dir => {
                    return Err(FilesError::WrongType(
                        "is a directory (list it with `?list`)".into(),
                    )
                    .into());
                }
                Kind::Symlink => return Err(FilesError::Escapes.into()),
                Kind::Special => return Err(FilesError::Special.into()),
            }
            let size = entry.size;
            let (status, start, len) = span(&headers, size)?;
            // `HEAD` (a stat) opens no second session.
            let body = if len == 0 || method == axum::http::Method::HEAD {
                Body::empty()
            } else {
                Body::from_stream(pods.read(&kp, &rel, start, len).await?)
            };
            Ok(file_response(body, status, start, len, size))
        }
    }
}

/// Status, first byte and length of the answer to `headers` for a file of
/// `size` bytes.
fn span(headers: &HeaderMap, size: u64) -> ApiResult<(StatusCode, u64, u64)> {
    Ok(match range(headers, size)? {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    })
}

fn file_response(body: Body, status: StatusCode, start: u64, len: u64, size: u64) -> Response {
    let mut resp = Response::new(body);
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
    resp
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
    let files = project_files(&st, &project).await?;
    listing(files, String::new(), q).await
}

async fn listing(files: Files, rel: String, q: FileQuery) -> ApiResult<Response> {
    let limit = page_limit(q.limit)?;
    let after = q.cursor.as_deref().map(cursor::decode).transpose()?;
    let n = usize::try_from(limit).unwrap_or(50);
    let items: Vec<Entry> = match files {
        Files::Local(dir) => {
            blocking(move || workspace::list(&dir, &rel, after.as_deref(), n)).await?
        }
        Files::Pod(pods, kp) => pods.list(&kp, &rel, after.as_deref(), n).await?,
    };
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
    let files = project_files(&st, &project).await?;
    download_archive(files, String::new()).await
}

async fn download_archive(files: Files, rel: String) -> ApiResult<Response> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let err_tx = tx.clone();
    match files {
        Files::Local(dir) => {
            // The directory must exist before the 200 goes out.
            let (d2, r2) = (dir.try_clone().map_err(FilesError::from)?, rel.clone());
            let entry = blocking(move || workspace::stat(&d2, &r2)).await?;
            if !rel.is_empty() && entry.kind != Kind::Dir {
                return Err(FilesError::WrongType("not a directory".into()).into());
            }
            tokio::task::spawn_blocking(move || {
                let out = crate::archive::ChannelWriter::new(tx);
                if let Err(e) = crate::archive::build(&dir, &rel, out) {
                    tracing::warn!(error = %e, "building an archive failed; the download is cut");
                    let _ = err_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                }
            });
        }
        Files::Pod(pods, kp) => {
            let entry = pods.stat(&kp, &rel).await?;
            match entry.kind {
                Kind::Dir => {}
                Kind::Symlink => return Err(FilesError::Escapes.into()),
                _ => return Err(FilesError::WrongType("not a directory".into()).into()),
            }
            let tar = tokio_util::io::StreamReader::new(pods.tar_out(&kp, &rel).await?);
            let tar = tokio_util::io::SyncIoBridge::new(tar);
            tokio::task::spawn_blocking(move || {
                let out = crate::archive::ChannelWriter::new(tx);
                if let Err(e) = crate::archive::repack(tar, out) {
                    tracing::warn!(error = %e, "repacking a pod's archive failed; the download is cut");
                    let _ = err_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                }
            });
        }
    }
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
/// and special files refuse it (`422`), and so does a sum of file sizes
/// above the project's `max_file_bytes` (`413`).
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
    let files = project_files(&st, &project).await?;
    let max = max_file_bytes(&st, &project);
    // Staged whole (on disk, never in memory): it is checked before use.
    let (mut staged, _cleanup) = staging_file(&st).await?;
    // A tar of `max` bytes of contents is a little larger than `max`.
    let slack = max / 64 + (1 << 20);
    stage_body(body, &mut staged, max.saturating_add(slack)).await?;
    let mut staged = staged.into_std().await;
    let target2 = target.clone();
    let done = match files {
        Files::Local(dir) => {
            blocking(move || {
                crate::archive::check(&mut staged, max)?;
                crate::archive::extract(&mut staged, &dir, &target2)
            })
            .await?
        }
        Files::Pod(pods, kp) => {
            let (normal, _cleanup2) = staging_file(&st).await?;
            let mut normal = normal.into_std().await;
            let (done, normal, len) = blocking(move || {
                crate::archive::check(&mut staged, max)?;
                let done = crate::archive::normalize(&mut staged, &mut normal)?;
                let len = normal.metadata()?.len();
                Ok((done, normal, len))
            })
            .await?;
            pods.tar_in(&kp, &target2, normal, len).await?;
            done
        }
    };
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
/// file, and a failed upload leaves nothing. At most the project's
/// `max_file_bytes` (`413`).
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
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > st.cfg.files_max_bytes) {
        return Err(ApiError::PayloadTooLarge);
    }
    let project = load_visible(&st, &auth, &name).await?;
    let max = max_file_bytes(&st, &project);
    if announced.is_some_and(|n| n > max) {
        return Err(ApiError::PayloadTooLarge);
    }
    let files = project_files(&st, &project).await?;
    let (entry, written) = match files {
        Files::Local(dir) => put_local(dir, rel.clone(), body, max).await?,
        Files::Pod(pods, kp) => {
            let entry = match announced {
                Some(len) => {
                    let stream = body.into_data_stream().map(|r| r.map_err(body_error));
                    pods.write(&kp, &rel, len, stream).await?
                }
                // The pod's script needs the exact size first (its stdin
                // cannot be closed on every exec protocol): staged on disk.
                None => {
                    let (mut staged, _cleanup) = staging_file(&st).await?;
                    let len = stage_body(body, &mut staged, max).await?;
                    staged
                        .seek(std::io::SeekFrom::Start(0))
                        .await
                        .map_err(|e| ApiError::Internal(format!("staging: {e}")))?;
                    let stream = tokio_util::io::ReaderStream::with_capacity(staged, PIECE);
                    pods.write(&kp, &rel, len, stream).await?
                }
            };
            let size = entry.size;
            (entry, size)
        }
    };
    let mut a = auth.audit("file.write", "file", Some(rel), Some(project.id));
    a.details = json!({ "size": written });
    let client = st.pool.get().await?;
    audit::append(&client, &a).await?;
    Ok((StatusCode::CREATED, axum::Json(entry)))
}

async fn put_local(dir: OwnedFd, rel: String, body: Body, max: u64) -> ApiResult<(Entry, u64)> {
    let dir2 = dir.try_clone().map_err(FilesError::from)?;
    let rel2 = rel.clone();
    let (upload, file) = blocking(move || workspace::Upload::start(&dir2, &rel2)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(body_error)?;
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
    let entry = blocking(move || workspace::stat(&dir, &rel)).await?;
    Ok((entry, written))
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
    match project_files(&st, &project).await? {
        Files::Local(dir) => {
            let rel2 = rel.clone();
            blocking(move || workspace::remove(&dir, &rel2)).await?;
        }
        Files::Pod(pods, kp) => pods.remove(&kp, &rel).await?,
    }
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

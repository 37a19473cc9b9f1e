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
//!
//! This file holds the handlers; `local.rs` and `pod.rs` the two kinds of
//! project's side of each operation, `transfer.rs` what both share (bodies
//! written to files, staging, ranges).

mod local;
mod pod;
mod transfer;

use std::os::fd::OwnedFd;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rdev_shared::db::audit;
use rdev_shared::domain::{Project, Scope};
use serde::Deserialize;
use serde_json::json;

use self::transfer::{copy_body, staging_file};
use super::AppState;
use super::access::load_visible_project as load_visible;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Path, Query};
use super::page::{Page, cursor, page_limit};
use crate::pod_files::PodFiles;
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

/// `{name}` and `{path}` of a file's routes: read by the handlers and
/// described in the OpenAPI document by the same type.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FilePath {
    /// Project name
    name: String,
    /// Path relative to the project directory
    path: String,
}

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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("files task: {e}")))?
        .map_err(ApiError::from)
}

/// `GET /v1/projects/{name}/files/{path}` (and `HEAD`): the file, streamed;
/// with `?list`, the directory's entries.
#[utoipa::path(
    get,
    path = "/projects/{name}/files/{*path}",
    tag = "files",
    security(("bearer" = [])),
    params(
        FilePath,
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
    Path(FilePath { name, path }): Path<FilePath>,
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
    match files {
        Files::Local(dir) => local::download(dir, rel, &headers, st.cfg.files_idle_timeout).await,
        Files::Pod(pods, kp) => {
            let head = method == axum::http::Method::HEAD;
            pod::download(&pods, &kp, &rel, &headers, head).await
        }
    }
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
        Files::Local(dir) => local::list(dir, rel, after, n).await?,
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
    match files {
        Files::Local(dir) => local::archive(dir, rel, tx).await?,
        Files::Pod(pods, kp) => pod::archive(&pods, &kp, &rel, tx).await?,
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

/// Where a tar.gz download's pieces go, as the client reads them.
type ArchiveTx = tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>;

/// Builds a tar.gz in a blocking task into `tx`; a failure cuts the
/// download (an error item; `what` names the step in the log).
fn spawn_archive(
    tx: ArchiveTx,
    what: &'static str,
    build: impl FnOnce(crate::archive::ChannelWriter) -> Result<(), FilesError> + Send + 'static,
) {
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = build(crate::archive::ChannelWriter::new(tx)) {
            tracing::warn!(error = %e, "{what} failed; the download is cut");
            let _ = err_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
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
    copy_body(body, &mut staged, max.saturating_add(slack), "staging").await?;
    let staged = staged.into_std().await;
    let done = match files {
        Files::Local(dir) => local::extract(dir, staged, max, target.clone()).await?,
        Files::Pod(pods, kp) => pod::extract(&st, &pods, &kp, staged, max, &target).await?,
    };
    let mut a = auth.audit("file.archive", "file", Some(target), Some(project.id));
    a.details = json!({ "files": done.files, "dirs": done.dirs, "bytes": done.bytes });
    let client = st.pool.get().await?;
    audit::append(&client, &a).await?;
    Ok(axum::Json(done))
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
    params(FilePath),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Written (scope `files:write`)", body = Entry),
    ),
)]
pub async fn put(
    State(st): State<AppState>,
    auth: Auth,
    Path(FilePath { name, path }): Path<FilePath>,
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
        Files::Local(dir) => local::write(dir, rel.clone(), body, max).await?,
        Files::Pod(pods, kp) => pod::write(&st, &pods, &kp, &rel, body, announced, max).await?,
    };
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
    params(FilePath),
    responses(
        (status = 204, description = "Deleted (scope `files:write`)"),
    ),
)]
pub async fn delete(
    State(st): State<AppState>,
    auth: Auth,
    Path(FilePath { name, path }): Path<FilePath>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::FilesWrite)?;
    let rel = workspace::validate_path(&path)?.to_owned();
    let project = load_visible(&st, &auth, &name).await?;
    match project_files(&st, &project).await? {
        Files::Local(dir) => local::remove(dir, rel.clone()).await?,
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

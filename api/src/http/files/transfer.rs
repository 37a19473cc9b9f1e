//! What downloads and uploads of both kinds of project share: request
//! bodies written to a file (an upload, or a staging file), the one `Range`
//! a download answers, and the headers of a file's answer.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::workspace::FilesError;

/// Writes `body` to `file`, at most `max` bytes (413 beyond); the size.
/// `what` names the file in an error (`staging`, `writing an upload`).
pub(super) async fn copy_body(
    body: Body,
    file: &mut tokio::fs::File,
    max: u64,
    what: &str,
) -> ApiResult<u64> {
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
            .map_err(|e| ApiError::Internal(format!("{what}: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(format!("{what}: {e}")))?;
    Ok(written)
}

/// A failed read of the request body: a timeout (408) or a broken body.
pub(super) fn body_error(e: axum::Error) -> FilesError {
    if crate::http::body::is_timeout(&e) {
        FilesError::Body(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            e.to_string(),
        ))
    } else {
        FilesError::Body(std::io::Error::other(e.to_string()))
    }
}

/// Where uploads that must be complete before they are used (archives, and
/// uploads to a pod without a `Content-Length`) are staged: the workspace
/// volume when there is one (outside every project directory), else the
/// API's temporary directory.
pub(super) async fn staging_file(st: &AppState) -> ApiResult<(tokio::fs::File, RemoveOnDrop)> {
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

/// A staging file, removed when the request is done with it.
pub(super) struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A parsed `Range: bytes=…` (one range).
pub(super) fn range(headers: &HeaderMap, size: u64) -> ApiResult<Option<(u64, u64)>> {
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

/// What part of a file of `size` bytes answers `headers`: its status, first
/// byte and length.
#[derive(Clone, Copy)]
pub(super) struct Span {
    pub(super) status: StatusCode,
    pub(super) start: u64,
    pub(super) len: u64,
    pub(super) size: u64,
}

impl Span {
    pub(super) fn of(headers: &HeaderMap, size: u64) -> ApiResult<Self> {
        let (status, start, len) = match range(headers, size)? {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
            None => (StatusCode::OK, 0, size),
        };
        Ok(Self {
            status,
            start,
            len,
            size,
        })
    }

    /// The answer carrying `body` (this span's bytes).
    pub(super) fn response(self, body: Body) -> Response {
        let Self {
            status,
            start,
            len,
            size,
        } = self;
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
            && let Ok(v) =
                HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        resp
    }
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

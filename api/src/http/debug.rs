//! `/debug/pprof/heap`: a jemalloc heap profile in pprof format (admin
//! only), for the high-memory runbook:
//! `curl -H "Authorization: Bearer $KEY" $API/debug/pprof/heap > heap.pb.gz`
//! then `go tool pprof -top heap.pb.gz` (or `pprof`).
//!
//! Profiling is on when the process runs on jemalloc with `prof:true`
//! (`rdev-api` does, sampling every 512 KiB on average); elsewhere the
//! endpoint answers 503.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use rdev_shared::domain::Scope;

use super::error::{ApiError, ApiResult};
use super::extract::Auth;

/// `GET /debug/pprof/heap`
#[utoipa::path(
    get,
    path = "/debug/pprof/heap",
    tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A gzipped pprof heap profile (scope `admin`)", content_type = "application/octet-stream", body = String),
    ),
)]
pub async fn heap(auth: Auth) -> ApiResult<Response> {
    auth.require(Scope::Admin)?;
    let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
        return Err(ApiError::Unavailable(
            "heap profiling is not enabled in this process".into(),
        ));
    };
    let mut ctl = ctl.lock().await;
    if !ctl.activated() {
        return Err(ApiError::Unavailable("heap profiling is not active".into()));
    }
    let pprof = ctl
        .dump_pprof()
        .map_err(|e| ApiError::Internal(format!("heap profile: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"heap.pb.gz\"",
            ),
        ],
        pprof,
    )
        .into_response())
}

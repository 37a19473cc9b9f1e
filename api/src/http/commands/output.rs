//! `GET /v1/commands/{id}/output`: a command's stored output, streamed.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use rdev_shared::db::output;
use rdev_shared::domain::OutputStream;
use serde::Deserialize;

use crate::http::AppState;
use crate::http::access::{Allowed, load_visible_command, perm};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Path, Query};

/// Chunks read from PostgreSQL per page when streaming stored output: at
/// most 4 × 64 KiB held per download, and the next page is read only when
/// the client has taken the previous one (the body is pulled, not pushed).
const OUTPUT_PAGE: i64 = 4;

/// Query of `GET /v1/commands/{id}/output`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    stream: Option<String>,
}

/// The line that stands where truncation removed output.
pub fn gap_marker(from_seq: i64, to_seq: i64) -> String {
    format!("\n[rdev: output truncated; chunks {from_seq}-{to_seq} were not kept]\n")
}

/// `GET /v1/commands/{id}/output[?stream=stdout|stderr]`: the stored bytes,
/// streamed page by page from PostgreSQL so the API never holds a whole
/// output in memory. Where truncation cut the middle, a marker line says so.
#[utoipa::path(
    get,
    path = "/commands/{id}/output",
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Command id (uuid)"), OutputQuery),
    responses(
        (status = 200, description = "The stored output bytes (scope `commands:read`)",
            content_type = "text/plain; charset=utf-8", body = String, headers(
                ("X-Rdev-Status" = String, description = "The command's status"),
                ("X-Rdev-Truncated" = String, description = "`true` when output was cut"),
            )),
    ),
)]
pub async fn output(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::CommandsRead>,
    Path(id): Path<String>,
    Query(q): Query<OutputQuery>,
) -> ApiResult<Response> {
    let stream = q
        .stream
        .as_deref()
        .map(|s| {
            s.parse::<OutputStream>()
                .map_err(|e| ApiError::field("stream", e.to_string()))
        })
        .transpose()?;
    let cmd = load_visible_command(&st, &auth, &id).await?;
    let slot = st.downloads.admit(auth.key.id).map_err(|r| {
        let n = match r {
            crate::admission::Refusal::Instance(n) | crate::admission::Refusal::Key(n) => n,
        };
        ApiError::TooManyRequests {
            detail: format!(
                "this API key has its maximum of {n} concurrent output downloads; retry when one ends"
            ),
            retry_after_s: 1,
        }
    })?;
    let pool = st.pool.clone();
    let body = async_stream::try_stream! {
        // Held until the download ends or the client goes away.
        let _slot = slot;
        let mut last = 0i64;
        loop {
            let client = pool.get().await.map_err(std::io::Error::other)?;
            // Unfiltered reads so a truncation gap is visible whatever the filter.
            let page = output::read(&client, cmd.id, last, None, OUTPUT_PAGE)
                .await
                .map_err(std::io::Error::other)?;
            drop(client);
            let n = page.len() as i64;
            for chunk in page {
                if chunk.seq > last + 1 {
                    yield bytes::Bytes::from(gap_marker(last + 1, chunk.seq - 1));
                }
                last = chunk.seq;
                if stream.is_none_or(|s| s == chunk.stream) {
                    yield bytes::Bytes::from(chunk.data);
                }
            }
            if n < OUTPUT_PAGE {
                break;
            }
        }
    };
    let mut resp = Response::new(Body::from_stream(io_stream(body)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-rdev-status",
        HeaderValue::from_static(cmd.status.as_str()),
    );
    h.insert(
        "x-rdev-truncated",
        HeaderValue::from_static(if cmd.truncated { "true" } else { "false" }),
    );
    Ok(resp)
}

/// Pins a byte stream's error type to `io::Error` (inference cannot see it
/// through `try_stream!`).
fn io_stream<S>(s: S) -> S
where
    S: futures::Stream<Item = Result<bytes::Bytes, std::io::Error>>,
{
    s
}

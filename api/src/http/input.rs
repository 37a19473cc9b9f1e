//! Input for running commands (`commands:input`):
//! `POST /v1/commands/{id}/stdin`, `…/resize`, `…/signal`.
//!
//! Each event is numbered and stored in PostgreSQL (one statement), then
//! sent to the worker that runs the command; a worker that missed the
//! message reads it from PostgreSQL, so input is applied in order and once
//! (`rdev_shared::interactive`). Input to an ended command is `409`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use rdev_shared::db::input::{self, Refused};
use rdev_shared::domain::{Command, Scope};
use rdev_shared::interactive::{Input, InputMessage, InputSignal, TtySize};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::access::load_visible_command;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Json, Path, Query};

/// The routes of this module (under `/v1`).
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(stdin))
        .routes(routes!(resize))
        .routes(routes!(signal))
}

/// Query of `POST /v1/commands/{id}/stdin`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StdinQuery {
    /// `true` closes standard input after the bytes (with a tty: sends the
    /// terminal's end-of-file character).
    eof: Option<bool>,
}

/// Body of `POST /v1/commands/{id}/signal`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    /// `INT`, `TERM`, `HUP`, `QUIT`, `KILL`, `USR1` or `USR2`.
    signal: InputSignal,
}

/// What an input request answers: the `seq` of its (last) event.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The event's number among the command's input events.
    pub seq: i64,
}

/// Stores `input` for `cmd` and sends it to its worker; the event's `seq`.
pub async fn send(st: &AppState, cmd: &Command, input: Input) -> ApiResult<i64> {
    let client = st.pool.get().await?;
    let stored = match input::append(&client, cmd.id, &input).await? {
        Ok(s) => s,
        Err(refused) => return Err(refusal(cmd, refused)),
    };
    drop(client);
    if let Some(worker) = &stored.worker_id {
        let message = InputMessage::Input {
            command_id: cmd.id,
            seq: stored.seq,
            input,
        };
        if let Err(e) = st.publisher.publish_input(worker, &message).await {
            // The worker reads PostgreSQL when it notices the gap.
            tracing::debug!(error = %e, command = %cmd.id, "input message not sent; the worker will read it");
        }
    }
    Ok(stored.seq)
}

fn refusal(cmd: &Command, r: Refused) -> ApiError {
    match r {
        Refused::NotFound => ApiError::NotFound(format!("command `{}` not found", cmd.id)),
        Refused::Ended(status) => ApiError::Conflict(format!(
            "the command has ended ({status}); it takes no input"
        )),
        Refused::NotAPipe => ApiError::Conflict(
            "the command's standard input is not a pipe: start it with `\"stdin\": \"pipe\"` \
             (or a `tty`) to send input"
                .into(),
        ),
        Refused::Closed => ApiError::Conflict("the command's standard input is closed".into()),
        Refused::NoTty => ApiError::Conflict(
            "the command has no terminal: start it with a `tty` to resize".into(),
        ),
    }
}

/// `POST /v1/commands/{id}/stdin`
#[utoipa::path(
    post,
    path = "/commands/{id}/stdin",
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Command id (uuid)"), StdinQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "Bytes for the command's standard input (or terminal), any content type; may be empty with `eof=true`"),
    responses((status = 202, description = "Stored and sent to the command's worker, in order (scope `commands:input`); `409` when the command has ended or its standard input is not a pipe", body = Accepted))
)]
pub async fn stdin(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<StdinQuery>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::CommandsInput)?;
    let cmd = load_visible_command(&st, &auth, &id).await?;
    let eof = q.eof.unwrap_or(false);
    if body.is_empty() && !eof {
        return Err(ApiError::BadRequest(
            "send some bytes, or `?eof=true` to close standard input".into(),
        ));
    }
    let mut seq = 0;
    if !body.is_empty() {
        seq = send(
            &st,
            &cmd,
            Input::Data {
                data: body.to_vec(),
            },
        )
        .await?;
    }
    if eof {
        seq = send(&st, &cmd, Input::Eof).await?;
    }
    Ok((StatusCode::ACCEPTED, axum::Json(Accepted { seq })))
}

/// `POST /v1/commands/{id}/resize`
#[utoipa::path(
    post,
    path = "/commands/{id}/resize",
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Command id (uuid)")),
    request_body = TtySize,
    responses((status = 202, description = "The terminal's new size, sent in order with the command's input (scope `commands:input`); `409` without a tty or after the end", body = Accepted))
)]
pub async fn resize(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(size): Json<TtySize>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::CommandsInput)?;
    if let Err(m) = size.validate() {
        return Err(ApiError::Validation(vec![
            rdev_shared::domain::FieldError::new("cols", m),
        ]));
    }
    let cmd = load_visible_command(&st, &auth, &id).await?;
    let seq = send(&st, &cmd, Input::Resize { size }).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(Accepted { seq })))
}

/// `POST /v1/commands/{id}/signal`
#[utoipa::path(
    post,
    path = "/commands/{id}/signal",
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Command id (uuid)")),
    request_body = SignalBody,
    responses((status = 202, description = "The signal, sent in order with the command's input (scope `commands:input`): with a tty to the terminal's foreground process group, else to the command's process group (`TERM`: to every process of the command); `409` after the end", body = Accepted))
)]
pub async fn signal(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<SignalBody>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::CommandsInput)?;
    let cmd = load_visible_command(&st, &auth, &id).await?;
    let seq = send(
        &st,
        &cmd,
        Input::Signal {
            signal: body.signal,
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(Accepted { seq })))
}

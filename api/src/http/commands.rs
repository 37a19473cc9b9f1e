//! `/v1/projects/{name}/commands` and `/v1/commands`: enqueue, read, list,
//! and the stored output.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rdev_shared::db::audit::{self, AuditEntry};
use rdev_shared::db::commands::{self, ListFilter, NewCommand};
use rdev_shared::db::{outbox, output, projects, secrets};
use rdev_shared::domain::{
    Command, CommandSpec, CommandStatus, FieldError, OutputStream, Scope, validate_env,
    validate_env_denylist,
};
use rdev_shared::interactive::TtySize;
use rdev_shared::mq::{ControlMessage, OutputEvent};
use rdev_shared::relay;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Json, Path, Query, cursor, page_limit};
use super::projects::load_visible;

const MAX_COMMAND_BYTES: usize = 64 * 1024;
const MAX_ARGS: usize = 4096;
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Chunks read from PostgreSQL per page when streaming stored output: at
/// most 4 × 64 KiB held per download, and the next page is read only when
/// the client has taken the previous one (the body is pulled, not pushed).
const OUTPUT_PAGE: i64 = 4;

/// Body of `POST /v1/projects/{name}/commands`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCommand {
    /// A shell command line; give exactly one of `command` and `argv`.
    command: Option<String>,
    /// Program and arguments, run without a shell.
    argv: Option<Vec<String>>,
    /// 0 (lowest) to 9 (highest).
    #[schema(minimum = 0, maximum = 9)]
    priority: Option<i16>,
    timeout_s: Option<i32>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// `"closed"` (the default: `/dev/null`), `"pipe"` (fed while it runs
    /// through `POST /v1/commands/{id}/stdin` or `…/attach`), or any other
    /// string: fixed input, then end-of-file.
    stdin: Option<String>,
    /// Project secrets given as environment variables of the same name.
    /// Their values (and common encodings of them) are redacted from the
    /// output. On kubernetes projects: non-interactive commands only.
    #[serde(default)]
    secrets: Vec<String>,
    /// Project secrets given as read-only files: secret name → path
    /// relative to `/run/secrets` (a private in-memory filesystem of the
    /// command, gone when it ends; `RDEV_SECRETS_DIR` names it). Local
    /// projects with the sandbox only.
    #[serde(default)]
    secret_files: BTreeMap<String, String>,
    /// A pseudo-terminal of this size: stdout and stderr merge into it (as
    /// in any terminal); `stdin` defaults to `"pipe"`.
    tty: Option<TtySize>,
}

/// How a command's standard input is fed, from the `stdin` field.
fn stdin_of(stdin: Option<String>, tty: bool) -> (bool, Option<Vec<u8>>) {
    match stdin.as_deref() {
        None if tty => (true, None),
        None | Some("closed") => (false, None),
        Some("pipe") => (true, None),
        Some(_) => (false, stdin.map(String::into_bytes)),
    }
}

fn validate(
    body: CreateCommand,
    max_timeout_s: i32,
) -> Result<(CommandSpec, CreateCommand), ApiError> {
    let mut errors = Vec::new();
    let spec = match (&body.command, &body.argv) {
        (Some(c), None) => {
            if c.trim().is_empty() {
                errors.push(FieldError::new("command", "must not be empty"));
            } else if c.len() > MAX_COMMAND_BYTES || c.contains('\0') {
                errors.push(FieldError::new(
                    "command",
                    format!("must be at most {MAX_COMMAND_BYTES} bytes without NUL"),
                ));
            }
            Some(CommandSpec::Shell(c.clone()))
        }
        (None, Some(a)) => {
            if a.is_empty() || a[0].is_empty() {
                errors.push(FieldError::new("argv", "must name a program"));
            } else if a.len() > MAX_ARGS
                || a.iter().any(|s| s.contains('\0'))
                || a.iter().map(String::len).sum::<usize>() > MAX_COMMAND_BYTES
            {
                errors.push(FieldError::new(
                    "argv",
                    format!("at most {MAX_ARGS} arguments, {MAX_COMMAND_BYTES} bytes, no NUL"),
                ));
            }
            Some(CommandSpec::Argv(a.clone()))
        }
        _ => {
            errors.push(FieldError::new(
                "command",
                "give exactly one of `command` or `argv`",
            ));
            None
        }
    };
    if body.priority.is_some_and(|p| !(0..=9).contains(&p)) {
        errors.push(FieldError::new("priority", "must be 0-9"));
    }
    if body.timeout_s.is_some_and(|t| t < 1 || t > max_timeout_s) {
        errors.push(FieldError::new(
            "timeout_s",
            format!("must be 1-{max_timeout_s}"),
        ));
    }
    validate_env("env", &body.env, &mut errors);
    if let Some(Err(m)) = body.tty.map(|t| t.validate()) {
        errors.push(FieldError::new("tty", m));
    }
    if body.tty.is_some()
        && body
            .stdin
            .as_deref()
            .is_some_and(|s| !matches!(s, "pipe" | "closed"))
    {
        errors.push(FieldError::new(
            "stdin",
            "a command with a tty takes `pipe` or `closed`, not fixed input",
        ));
    }
    match spec {
        Some(spec) if errors.is_empty() => Ok((spec, body)),
        _ => Err(ApiError::Validation(errors)),
    }
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(s.to_owned())),
        _ => Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))),
    }
}

fn command_response(status: StatusCode, cmd: &Command, replayed: bool) -> Response {
    let mut resp = (status, axum::Json(cmd)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/commands/{}", cmd.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// `POST /v1/projects/{name}/commands`: one transaction writes the command,
/// its audit row and its outbox message; after commit the message is
/// published with a confirm. If the broker is down the request still
/// succeeds and the dispatcher's relay publishes it later.
#[utoipa::path(post, path = "/v1/projects/{name}/commands", tag = "commands", security(("bearer" = [])), params(("name" = String, Path, description = "Project name"), ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and the same request return the first command; the same key with a different request answers 422")), request_body = CreateCommand, responses((status = 202, description = "Queued (scope `commands:run`)", body = crate::http::openapi::CommandDoc, headers(("Location" = String), ("Idempotent-Replayed" = String, description = "`true` when an earlier command was returned")))))]
pub async fn create(
    State(st): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CreateCommand>,
) -> ApiResult<Response> {
    auth.require(Scope::CommandsRun)?;
    let idem = idempotency_key(&headers)?;
    let (spec, body) = validate(body, st.cfg.max_timeout_s)?;
    let project = load_visible(&st, &auth, &name).await?;
    let mut errors = Vec::new();
    validate_env_denylist(
        "env",
        &body.env,
        project.allowed_commands.is_some(),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    super::secrets::check_request(
        &st,
        &auth,
        &project,
        &body.secrets,
        &body.secret_files,
        &body.env,
        body.tty.is_some() || body.stdin.as_deref() == Some("pipe"),
    )
    .await?;
    let allowed = match st.policies.get(&project).await {
        None => Ok(None),
        Some(policy) => policy.check(&spec),
    };
    let rule = match allowed {
        Ok(rule) => rule,
        Err(refusal) => {
            auth.record_denial(
                "command.create",
                "project",
                Some(project.name.clone()),
                Some(project.id),
                "policy",
                json!({ "detail": refusal.0 }),
            );
            return Err(ApiError::Forbidden(format!(
                "command refused by project policy: {}",
                refusal.0
            )));
        }
    };
    // What a retry with the same Idempotency-Key must repeat: the request as
    // sent (not the defaults filled in from the project).
    let fingerprint = idem.as_ref().map(|_| {
        let (command, argv) = match &spec {
            CommandSpec::Shell(c) => (Some(c.as_str()), None),
            CommandSpec::Argv(a) => (None, Some(a)),
        };
        commands::request_fingerprint(&json!({
            "project": project.id,
            "command": command,
            "argv": argv,
            "env": body.env,
            "stdin": body.stdin,
            "tty": body.tty.map(|t| [t.cols, t.rows]),
            "priority": body.priority,
            "timeout_s": body.timeout_s,
        }))
    });
    let (stdin_pipe, stdin) = stdin_of(body.stdin, body.tty.is_some());
    let new = NewCommand {
        id: Uuid::now_v7(),
        project_id: project.id,
        api_key_id: Some(auth.key.id),
        spec,
        env: body.env,
        stdin,
        stdin_pipe,
        tty: body.tty,
        priority: body.priority.unwrap_or(5),
        timeout_s: body.timeout_s.unwrap_or(project.default_timeout_s),
        idempotency_key: idem.clone(),
        idempotency_fingerprint: fingerprint.clone(),
    };
    let mut message = st
        .topology
        .run_message(new.id, u8::try_from(new.priority).unwrap_or(5));
    // The worker continues this request's trace.
    rdev_shared::telemetry::inject_current(&mut message.headers);

    let audit_entry = AuditEntry {
        details: json!({
            "priority": new.priority,
            "timeout_s": new.timeout_s,
            "allowed_by": rule,
            "secrets": body.secrets,
            "secret_files": body.secret_files.keys().collect::<Vec<_>>(),
        }),
        ..auth.audit(
            "command.create",
            "command",
            Some(new.id.to_string()),
            Some(project.id),
        )
    };

    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    // The three inserts are pipelined: sent together, one round trip. When
    // the command turns out to be a replay, the rollback undoes the others.
    let (inserted, audited, outboxed) = tokio::join!(
        commands::insert(&tx, &new),
        audit::append(&tx, &audit_entry),
        outbox::insert(&tx, &message),
    );
    let Some(cmd) = inserted? else {
        // Same key, same Idempotency-Key: answer with the original command.
        tx.rollback().await?;
        let key = idem.unwrap_or_default();
        let (original, original_fingerprint) =
            commands::find_by_idempotency_key(&client, auth.key.id, &key)
                .await?
                .ok_or_else(|| {
                    ApiError::Conflict("a request with this Idempotency-Key is in progress".into())
                })?;
        // Same key, different request: a client bug, not a retry (as Stripe
        // answers). Rows from before fingerprints are replayed.
        if original_fingerprint.is_some() && original_fingerprint != fingerprint {
            return Err(ApiError::field(
                "Idempotency-Key",
                "this key was used with a different request; use a new key",
            ));
        }
        return Ok(command_response(StatusCode::ACCEPTED, &original, true));
    };
    audited?;
    let outbox_id = outboxed?;
    if !body.secrets.is_empty() || !body.secret_files.is_empty() {
        secrets::attach(&tx, cmd.id, &body.secrets, &body.secret_files).await?;
    }
    tx.commit().await?;

    drop(client);
    // After commit: publish with a confirm and mark the row. If the broker is
    // down the row stays and the relay publishes it; the claim guard keeps a
    // double publish from running the command twice.
    relay::publish_now(
        &st.marker,
        &st.publisher,
        &[outbox::Pending {
            id: outbox_id,
            message,
        }],
    )
    .await;
    Ok(command_response(StatusCode::ACCEPTED, &cmd, false))
}

/// Loads a command the key may see; 404 otherwise (also for a malformed id).
pub async fn load_visible_command(st: &AppState, auth: &Auth, id: &str) -> ApiResult<Command> {
    let not_found = || ApiError::NotFound(format!("command `{id}` not found"));
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let client = st.pool.get().await?;
    match commands::get(&client, id).await? {
        Some(c) if auth.sees_project(c.project_id) => Ok(c),
        _ => Err(not_found()),
    }
}

/// `GET /v1/commands/{id}`
#[utoipa::path(get, path = "/v1/commands/{id}", tag = "commands", security(("bearer" = [])), params(("id" = String, Path, description = "Command id (uuid)")), responses((status = 200, description = "The command (scope `commands:read`)", body = crate::http::openapi::CommandDoc)))]
pub async fn get(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::CommandsRead)?;
    Ok(axum::Json(load_visible_command(&st, &auth, &id).await?))
}

/// Query of `GET /v1/commands`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    project: Option<String>,
    status: Option<String>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/commands?project=&status=`, newest first.
#[utoipa::path(get, path = "/v1/commands", tag = "commands", security(("bearer" = [])), params(ListQuery), responses((status = 200, description = "A page of commands (scope `commands:read`)", body = crate::http::openapi::CommandPage)))]
pub async fn list(
    State(st): State<AppState>,
    auth: Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    auth.require(Scope::CommandsRead)?;
    let limit = page_limit(q.limit)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<CommandStatus>()
                .map_err(|e| ApiError::field("status", e.to_string()))
        })
        .transpose()?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            cursor::decode(c)?
                .parse::<Uuid>()
                .map_err(|_| ApiError::BadRequest("invalid cursor".into()))
        })
        .transpose()?;
    let client = st.pool.get().await?;
    let project_id = match &q.project {
        Some(name) => match projects::get_by_name(&client, name).await? {
            Some(p) if auth.sees_project(p.id) => Some(p.id),
            _ => return Err(ApiError::NotFound(format!("project `{name}` not found"))),
        },
        None => None,
    };
    let filter = ListFilter {
        project_id,
        project_ids: auth.key.project_ids.clone(),
        status,
        before,
        limit,
    };
    let items = commands::list(&client, &filter).await?;
    let next_cursor = if items.len() as i64 == limit {
        items.last().map(|c| cursor::encode(&c.id.to_string()))
    } else {
        None
    };
    Ok(axum::Json(
        json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

/// `POST /v1/commands/{id}/cancel`: a queued command becomes `cancelled` at
/// once and never runs; a running one is stopped by its worker (broadcast on
/// the control exchange, with the worker's heartbeat as the backstop) and
/// ends `cancelled`. Cancelling a finished command is a 409.
#[utoipa::path(post, path = "/v1/commands/{id}/cancel", tag = "commands", security(("bearer" = [])), params(("id" = String, Path, description = "Command id (uuid)")), responses((status = 202, description = "Cancelled, or cancellation requested (scope `commands:run`)", body = crate::http::openapi::CommandDoc)))]
pub async fn cancel(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    auth.require(Scope::CommandsRun)?;
    let cmd = load_visible_command(&st, &auth, &id).await?;
    let audit_entry = |outcome: &'static str, details: serde_json::Value| AuditEntry {
        outcome,
        details,
        ..auth.audit(
            "command.cancel",
            "command",
            Some(cmd.id.to_string()),
            Some(cmd.project_id),
        )
    };
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    if let Some(cancelled) = commands::cancel_queued(&tx, cmd.id).await? {
        audit::append(&tx, &audit_entry("success", json!({ "was": "queued" }))).await?;
        let kind = CommandStatus::Cancelled
            .event_type()
            .unwrap_or("command.cancelled");
        let message = st
            .topology
            .event_message(kind, &rdev_shared::domain::command_event(kind, &cancelled));
        let outbox_id = outbox::insert(&tx, &message).await?;
        tx.commit().await?;
        drop(client);
        relay::publish_now(
            &st.marker,
            &st.publisher,
            &[outbox::Pending {
                id: outbox_id,
                message,
            }],
        )
        .await;
        // Watchers of the command see it end.
        let _ = st
            .publisher
            .publish_output(cancelled.id, &OutputEvent::End)
            .await;
        return Ok(command_response(StatusCode::ACCEPTED, &cancelled, false));
    }
    if let Some(running) = commands::request_cancel(&tx, cmd.id).await? {
        audit::append(&tx, &audit_entry("success", json!({ "was": "running" }))).await?;
        tx.commit().await?;
        drop(client);
        if let Err(e) = st
            .publisher
            .publish_control(&ControlMessage::Cancel {
                command_id: running.id,
            })
            .await
        {
            tracing::warn!(error = %e, command = %running.id, "cancel broadcast failed; the worker's heartbeat will pick it up");
        }
        return Ok(command_response(StatusCode::ACCEPTED, &running, false));
    }
    tx.rollback().await?;
    // Neither queued nor running any more: it finished meanwhile.
    let now = commands::get(&client, cmd.id)
        .await?
        .map_or(cmd.status, |c| c.status);
    Err(ApiError::Conflict(format!(
        "command `{}` already {now}; nothing to cancel",
        cmd.id
    )))
}

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
#[utoipa::path(get, path = "/v1/commands/{id}/output", tag = "commands", security(("bearer" = [])), params(("id" = String, Path, description = "Command id (uuid)"), OutputQuery), responses((status = 200, description = "The stored output bytes (scope `commands:read`)", content_type = "text/plain; charset=utf-8", body = String, headers(("X-Rdev-Status" = String, description = "The command's status"), ("X-Rdev-Truncated" = String, description = "`true` when output was cut")))))]
pub async fn output(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<OutputQuery>,
) -> ApiResult<Response> {
    auth.require(Scope::CommandsRead)?;
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
            crate::limits::Refusal::Instance(n) | crate::limits::Refusal::Key(n) => n,
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

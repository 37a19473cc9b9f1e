//! `/v1/projects/{name}/commands` and `/v1/commands`: enqueue, read, list,
//! cancel, and the stored output.

mod input;
mod output;
mod wait;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rdev_shared::db::audit::{self, AuditEntry};
use rdev_shared::db::commands::{self, ListFilter, NewCommand};
use rdev_shared::db::{outbox, projects, secrets, webhooks};
use rdev_shared::domain::{Command, CommandSpec, CommandStatus, Project};
use rdev_shared::mq::OutgoingMessage;
use rdev_shared::mq::{ControlMessage, OutputEvent};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub use self::input::{CommandRequest, CreateCommand};
pub use self::output::{OutputQuery, gap_marker};
use super::AppState;
use super::access::{Allowed, OnCommand, load_visible_project, perm};
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Checked, Json, Path, Query};
use super::page::{Page, cursor, page_limit};
use crate::group_commit::NewRows;

const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The routes of this module (under `/v1`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(output::output))
        .routes(routes!(cancel))
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
/// its audit row and its outbox message; the request is answered once it
/// commits, and the message is published (with a confirm) right after, in
/// the background. If the broker is down the dispatcher's relay publishes
/// it later.
#[utoipa::path(
    post,
    path = "/projects/{name}/commands",
    tag = "commands",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Project name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key \
            and the same request return the first command; the same key with a different \
            request answers 422"),
    ),
    request_body = CreateCommand,
    responses(
        (status = 202, description = "Queued (scope `commands:run`)", body = Command, headers(
            ("Location" = String),
            ("Idempotent-Replayed" = String, description = "`true` when an earlier command was returned"),
        )),
    ),
)]
pub async fn create(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::CommandsRun>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CreateCommand>,
) -> ApiResult<Response> {
    let idem = idempotency_key(&headers)?;
    let mut request = CommandRequest::try_from(Checked::new(body, &st.cfg))?;
    let project = load_visible_project(&st, &auth, &name).await?;
    request.check_for(&project)?;
    let secret_names = std::mem::take(&mut request.secrets);
    let secret_files = std::mem::take(&mut request.secret_files);
    super::secrets::check_request(
        &st,
        &auth,
        &project,
        &secret_names,
        &secret_files,
        &request.env,
        request.interactive(),
    )
    .await?;
    let rule = check_policy(&st, &auth, &project, &request.spec).await?;
    let idempotency = idem.map(|key| (key, request.fingerprint(&project)));
    let new = request.into_new(&project, auth.key.id, idempotency);
    let mut message = st.topology.run_message(
        new.id,
        u8::try_from(new.priority).unwrap_or(rdev_shared::domain::DEFAULT_PRIORITY),
    );
    // The worker continues this request's trace.
    rdev_shared::telemetry::inject_current(&mut message.headers);
    // Its actor (the key's name) is set by the path that writes it.
    let audit_entry = AuditEntry {
        actor_key_id: Some(auth.key.id),
        actor: "",
        ip: auth.ip,
        action: "command.create",
        target_type: "command",
        target_id: Some(new.id.to_string()),
        project_id: Some(project.id),
        outcome: "success",
        details: json!({
            "priority": new.priority,
            "timeout_s": new.timeout_s,
            "allowed_by": rule,
            "secrets": secret_names,
            "secret_files": secret_files.keys().collect::<Vec<_>>(),
        }),
    };
    let written = write(
        &st,
        &auth,
        new,
        audit_entry,
        message,
        &secret_names,
        &secret_files,
    );
    let (cmd, outbox_id, message) = match written.await? {
        (Inserted::New(cmd, outbox_id), message) => (cmd, outbox_id, message),
        (Inserted::Replayed(original), _) => {
            return Ok(command_response(StatusCode::ACCEPTED, &original, true));
        }
    };
    // Committed, so accepted: answer now, and publish (with a confirm, then
    // mark the row) in the background. If the broker is down or slow the row
    // stays and the relay publishes it; the claim guard keeps a double
    // publish from running the command twice.
    let publishing = st.run_messages.publish(vec![outbox::Pending {
        id: outbox_id,
        message,
    }]);
    if publishing {
        // The publish task waits in this thread's next-to-run slot, where it
        // would run only once the 202 is written. One yield lets it hand the
        // message to the broker's connection first (it does not wait for
        // the confirm), so the worker gets it sooner.
        tokio::task::yield_now().await;
    }
    Ok(command_response(StatusCode::ACCEPTED, &cmd, false))
}

/// The project's `allowed_commands` rule that lets `spec` run (`None`
/// without a policy); a 403, audited, when none does.
async fn check_policy(
    st: &AppState,
    auth: &Auth,
    project: &Project,
    spec: &CommandSpec,
) -> ApiResult<Option<String>> {
    let allowed = match st.policies.get(project).await {
        None => Ok(None),
        Some(policy) => policy.check(spec),
    };
    allowed.map_err(|refusal| {
        auth.record_denial(
            "command.create",
            "project",
            Some(project.name.clone()),
            Some(project.id),
            "policy",
            json!({ "detail": refusal.0 }),
        );
        ApiError::Forbidden(format!("command refused by project policy: {}", refusal.0))
    })
}

/// What [`insert`] did.
enum Inserted {
    /// A new command and its outbox row.
    New(Command, i64),
    /// The command an earlier request with the same Idempotency-Key made.
    Replayed(Command),
}

/// Writes a new command's rows: with concurrent requests' rows in one
/// transaction (`group_commit`) when they are the three inserts and
/// nothing else, else alone ([`insert`]). Hands the run message back.
async fn write(
    st: &AppState,
    auth: &Auth,
    new: NewCommand,
    audit_entry: AuditEntry<'static>,
    message: OutgoingMessage,
    secret_names: &[String],
    secret_files: &std::collections::BTreeMap<String, String>,
) -> ApiResult<(Inserted, OutgoingMessage)> {
    if new.idempotency_key.is_none() && secret_names.is_empty() && secret_files.is_empty() {
        let rows = NewRows {
            audit: audit_entry,
            actor: auth.key.name.clone(),
            command: new,
            message,
        };
        let w = st.commits.write(rows).await?;
        return Ok((Inserted::New(w.command, w.outbox_id), w.message));
    }
    let audit_entry = AuditEntry {
        actor: &auth.key.name,
        ..audit_entry
    };
    let inserted = insert(
        st,
        auth,
        &new,
        &audit_entry,
        &message,
        secret_names,
        secret_files,
    )
    .await?;
    Ok((inserted, message))
}

/// One transaction: the command, its audit row, its outbox message and its
/// secrets; or, for a repeated Idempotency-Key, the original command.
async fn insert(
    st: &AppState,
    auth: &Auth,
    new: &NewCommand,
    audit_entry: &AuditEntry<'_>,
    message: &OutgoingMessage,
    secret_names: &[String],
    secret_files: &std::collections::BTreeMap<String, String>,
) -> ApiResult<Inserted> {
    let mut client = st.pool.get().await?;
    let tx = client.transaction().await?;
    // The three inserts are pipelined: sent together, one round trip. When
    // the command turns out to be a replay, the rollback undoes the others.
    let (inserted, audited, outboxed) = tokio::join!(
        commands::insert(&tx, new),
        audit::append(&tx, audit_entry),
        outbox::insert(&tx, message),
    );
    let Some(cmd) = inserted? else {
        // Same key, same Idempotency-Key: answer with the original command.
        tx.rollback().await?;
        let key = new.idempotency_key.clone().unwrap_or_default();
        let (original, original_fingerprint) =
            commands::find_by_idempotency_key(&client, auth.key.id, &key)
                .await?
                .ok_or_else(|| {
                    ApiError::Conflict("a request with this Idempotency-Key is in progress".into())
                })?;
        // Same key, different request: a client bug, not a retry (as Stripe
        // answers). Rows from before fingerprints are replayed.
        if original_fingerprint.is_some() && original_fingerprint != new.idempotency_fingerprint {
            return Err(ApiError::field(
                "Idempotency-Key",
                "this key was used with a different request; use a new key",
            ));
        }
        return Ok(Inserted::Replayed(original));
    };
    audited?;
    let outbox_id = outboxed?;
    if !secret_names.is_empty() || !secret_files.is_empty() {
        secrets::attach(&tx, cmd.id, secret_names, secret_files).await?;
    }
    tx.commit().await?;
    Ok(Inserted::New(cmd, outbox_id))
}

/// Query of `GET /v1/commands/{id}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Seconds to wait for the command to end, 0-50 (default 0): the answer
    /// comes as soon as it has ended, or with the command as it is once the
    /// time has passed. A wait holds one of the key's event-stream slots.
    #[param(minimum = 0, maximum = 50)]
    wait: Option<u64>,
}

/// `GET /v1/commands/{id}[?wait=S]`
#[utoipa::path(
    get,
    path = "/commands/{id}",
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Command id (uuid)"), GetQuery),
    responses(
        (status = 200, description = "The command (scope `commands:read`); with `wait`, once it has ended or the wait has passed", body = Command),
    ),
)]
pub async fn get(
    State(st): State<AppState>,
    OnCommand { auth, command, .. }: OnCommand<perm::CommandsRead>,
    Query(q): Query<GetQuery>,
) -> ApiResult<axum::Json<Command>> {
    let wait = wait::parse(q.wait)?;
    Ok(axum::Json(
        wait::until_ended(&st, &auth, command, wait).await?,
    ))
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
#[utoipa::path(
    get,
    path = "/commands",
    tag = "commands",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of commands, newest first (scope `commands:read`)",
            body = Page<Command>),
    ),
)]
pub async fn list(
    State(st): State<AppState>,
    Allowed { auth, .. }: Allowed<perm::CommandsRead>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Page<Command>> {
    let limit = page_limit(q.limit)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<CommandStatus>()
                .map_err(|e| ApiError::field("status", e.to_string()))
        })
        .transpose()?;
    let before = cursor::decode_opt::<Uuid>(q.cursor.as_deref())?;
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
    Ok(Page::new(items, limit, |c| c.id))
}

/// `POST /v1/commands/{id}/cancel`: a queued command becomes `cancelled` at
/// once and never runs; a running one is stopped by its worker (broadcast on
/// the control exchange, with the worker's heartbeat as the backstop) and
/// ends `cancelled`. Cancelling a finished command is a 409.
#[utoipa::path(
    post,
    path = "/commands/{id}/cancel",
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Command id (uuid)")),
    responses(
        (status = 202, description = "Cancelled, or cancellation requested (scope `commands:run`)",
            body = Command),
    ),
)]
pub async fn cancel(
    State(st): State<AppState>,
    OnCommand {
        auth, command: cmd, ..
    }: OnCommand<perm::CommandsRun>,
) -> ApiResult<Response> {
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
        let deliveries = webhooks::write_event(&tx, &message, cancelled.project_id).await?;
        tx.commit().await?;
        drop(client);
        if deliveries > 0 {
            st.due.wake();
        }
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

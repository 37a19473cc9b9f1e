//! The OpenAPI 3.1 document, generated from the `#[utoipa::path]`
//! annotations next to the handlers, served at `GET /openapi.json`; and the
//! interactive page at `/docs` (Swagger UI, its assets vendored into the
//! binary).
//!
//! Every operation's error answers (`application/problem+json`) are added
//! here by [`ProblemResponses`], so the annotations only name what is
//! particular to an operation.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use rdev_shared::db::audit::AuditRecord;
use rdev_shared::domain::{CommandStatus, EndReason, FieldError};
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use super::keys::KeyView;
use super::projects::ProjectView;
use super::webhooks::{DeliveryView, WebhookView};
use super::{attach, audit, commands, debug, health, input, keys, projects, sse, webhooks};

/// An error answer (RFC 9457), sent as `application/problem+json`.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `urn:rdev:problem:<slug>`, e.g. `urn:rdev:problem:not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// Field-level failures; only on `422 validation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// A command (the same shape in API answers, SSE `status`/`end` events and
/// webhook payloads). Exactly one of `command` and `argv` is present.
#[derive(Serialize, ToSchema)]
#[schema(as = Command)]
pub struct CommandDoc {
    id: Uuid,
    /// Project name.
    project: String,
    /// Shell command line (run with `sh -c`).
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    /// Program and arguments, run without a shell.
    #[serde(skip_serializing_if = "Option::is_none")]
    argv: Option<Vec<String>>,
    /// Where its standard input comes from: `closed`, `fixed` (the
    /// `stdin` string given at enqueue, never shown) or `pipe`.
    #[schema(value_type = String)]
    stdin: String,
    /// Its pseudo-terminal, if it has one.
    tty: Option<rdev_shared::interactive::TtySize>,
    status: CommandStatus,
    exit_code: Option<i32>,
    error: Option<String>,
    /// Why it ended (null until it is terminal).
    reason: Option<EndReason>,
    /// The signal that ended it (with `reason` `signaled`, or a limit
    /// enforced by a signal).
    signal: Option<i32>,
    priority: i16,
    timeout_s: i32,
    output_bytes: i64,
    truncated: bool,
    worker_id: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

/// Where a project's commands run (`kind` selects the executor).
#[derive(Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[schema(as = ExecutorConfig)]
pub enum ExecutorConfigDoc {
    /// A child process of the worker, in a directory under the workspace root.
    Local(LocalExecutorDoc),
    /// `exec` into a pod chosen by label selector.
    Kubernetes(KubernetesExecutorDoc),
}

/// Settings of the `local` executor.
#[derive(Serialize, ToSchema)]
#[schema(as = LocalExecutor)]
pub struct LocalExecutorDoc {
    /// Directory relative to the workspace root; defaults to the project's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    workdir: Option<String>,
}

/// Settings of the `kubernetes` executor.
#[derive(Serialize, ToSchema)]
#[schema(as = KubernetesExecutor)]
pub struct KubernetesExecutorDoc {
    /// Namespace of the project's pods.
    namespace: String,
    /// Label selector, e.g. `app=web`.
    selector: String,
    /// Container to exec into; the pod's first container when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<String>,
    /// Working directory inside the container.
    #[serde(skip_serializing_if = "Option::is_none")]
    workdir: Option<String>,
}

macro_rules! page {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Serialize, ToSchema)]
        pub struct $name {
            items: Vec<$item>,
            /// Pass as `cursor` to get the next page; `null` on the last page.
            next_cursor: Option<String>,
        }
    };
}
page!(ProjectPage, ProjectView, "A page of projects.");
page!(CommandPage, CommandDoc, "A page of commands, newest first.");
page!(KeyPage, KeyView, "A page of API keys.");
page!(
    AuditPage,
    AuditRecord,
    "A page of audit entries, newest first."
);
page!(WebhookPage, WebhookView, "A page of webhook endpoints.");
page!(
    DeliveryPage,
    DeliveryView,
    "A page of deliveries, newest first."
);

/// Data of an SSE `output` event (its `id:` is `seq`).
#[derive(Serialize, ToSchema)]
pub struct OutputEventData {
    /// Chunk sequence number; resume with `Last-Event-ID: <seq>`.
    seq: i64,
    /// `stdout` or `stderr`.
    stream: String,
    /// The chunk, as UTF-8 (invalid bytes replaced).
    data: String,
}

/// Data of an SSE `gap` event: chunks cut by output truncation.
#[derive(Serialize, ToSchema)]
pub struct GapEventData {
    from_seq: i64,
    to_seq: i64,
}

/// Answer of `POST /v1/webhooks/{id}/test`.
#[derive(Serialize, ToSchema)]
pub struct TestDelivery {
    event_id: Uuid,
    delivery_id: Uuid,
}

/// Answer of `POST /v1/webhooks/{id}/recover`.
#[derive(Serialize, ToSchema)]
pub struct Recovered {
    /// Deliveries put back to pending.
    recovered: i64,
}

/// Answer of `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    status: String,
}

/// Answer of `GET /ready`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok` or `unavailable`.
    postgres: String,
    /// `ok` or `unavailable`.
    rabbitmq: String,
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rdev API",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
        description = "Run commands on remote executors and stream their output. \
            Authenticate with `Authorization: Bearer <api key>`. Errors are \
            `application/problem+json` (RFC 9457).",
    ),
    paths(
        health::health,
        health::ready,
        debug::heap,
        openapi_json,
        projects::create,
        projects::list,
        projects::get,
        projects::update,
        projects::delete,
        commands::create,
        commands::list,
        commands::get,
        commands::output,
        commands::cancel,
        sse::events,
        input::stdin,
        input::resize,
        input::signal,
        attach::attach,
        keys::create,
        keys::list,
        keys::get,
        keys::revoke,
        keys::rotate,
        keys::whoami,
        audit::list,
        webhooks::create,
        webhooks::list,
        webhooks::get,
        webhooks::update,
        webhooks::delete,
        webhooks::test,
        webhooks::rotate_secret,
        webhooks::deliveries,
        webhooks::redeliver,
        webhooks::recover,
    ),
    components(schemas(Problem, OutputEventData, GapEventData)),
    modifiers(&ProblemResponses),
    tags(
        (name = "system", description = "Health, readiness, profiling, this document (metrics are on the operations listener, `RDEV_OPS_LISTEN`)"),
        (name = "projects"),
        (name = "commands"),
        (name = "api-keys"),
        (name = "audit"),
        (name = "webhooks"),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` scheme, and the problem+json error answers to every
/// operation (401/403 only where a key is required).
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: `Authorization: Bearer rdev_...`"))
                    .build(),
            ),
        );
        let problem = ResponseBuilder::new()
            .description("An error, as `application/problem+json` (RFC 9457).")
            .content(
                super::error::PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        components
            .responses
            .insert("Problem".to_owned(), RefOr::T(problem));
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add_problems(op);
            }
        }
    }
}

fn add_problems(op: &mut Operation) {
    let authed = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let mut codes = vec![
        "400", "404", "405", "408", "413", "415", "422", "429", "500", "503",
    ];
    if authed {
        codes.extend(["401", "403", "409"]);
    }
    for code in codes {
        op.responses
            .responses
            .entry(code.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Problem")));
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `GET /openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(document()).unwrap_or_default(),
    )
}

/// The policy of every `/docs` answer: Swagger UI's own files only (its
/// script and style files are vendored into the binary), `fetch` only to
/// this origin (`/openapi.json`, and "Try it out" against this API), no
/// framing (clickjacking), no `<base>`, no form posts elsewhere. Swagger UI
/// (React) sets element styles at run time, hence `'unsafe-inline'` for
/// styles only; scripts stay file-only.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The Swagger UI at `/docs`, reading `/openapi.json`; its assets are
/// compiled into the binary, nothing is loaded from elsewhere. Every answer
/// carries [`DOCS_CSP`], `X-Frame-Options: DENY`, `nosniff` and
/// `no-referrer`.
pub fn docs<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    let ui: axum::Router<S> = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .config(
            utoipa_swagger_ui::Config::from("/openapi.json")
                // No validator badge: it would load from an outside service.
                .validator_url("none"),
        )
        .into();
    ui.layer(axum::middleware::from_fn(docs_headers))
}

async fn docs_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::HeaderValue;
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

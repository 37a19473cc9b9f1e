//! The parts of the OpenAPI 3.1 document that belong to no one route:
//! info, tags, the `bearer` security scheme and the problem+json answers
//! every operation shares. The operations themselves come from the
//! `#[utoipa::path]` attributes next to the handlers, collected with their
//! routes by each module's `router()` (see [`super::api`]); the document is
//! served at `GET /openapi.json`, and the interactive page at `/docs`
//! (Swagger UI, its assets vendored into the binary).

use axum::http::header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::Problem;
use crate::frames::{GapData, OutputData};

/// What the document says besides its operations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rdev API",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
        description = "Run commands on remote executors and stream their output. \
            Authenticate with `Authorization: Bearer <api key>`. Errors are \
            `application/problem+json` (RFC 9457).",
    ),
    components(schemas(Problem, OutputData, GapData)),
    tags(
        (name = "system", description = "Health, readiness, profiling, this document (metrics are on the operations listener, `RDEV_OPS_LISTEN`)"),
        (name = "projects"),
        (name = "files", description = "A local project's files: upload, download (with `Range`), stat, delete, list"),
        (name = "secrets", description = "A project's secrets: write-only values given to the commands that name them, redacted from their output"),
        (name = "commands"),
        (name = "api-keys"),
        (name = "audit"),
        (name = "webhooks"),
    )
)]
struct ApiDoc;

/// The document before any operation is added: info, tags and the schemas
/// no operation names (the SSE events' data).
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Completes a document whose operations are all in: the `bearer` scheme,
/// the shared problem+json answers of every operation, and wildcard path
/// segments written as OpenAPI parameters.
pub fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    ProblemResponses.modify(&mut doc);
    // The executor settings are variants of the `kind`-tagged
    // `ExecutorConfig`: their schemas are combined with `kind` (`allOf`), so
    // the `additionalProperties: false` their `deny_unknown_fields` implies
    // would refuse `kind` itself. The server still refuses unknown fields.
    if let Some(components) = doc.components.as_mut() {
        for name in ["LocalSettings", "KubernetesSettings"] {
            if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(name) {
                o.additional_properties = None;
            }
        }
    }
    // axum's catch-all `{*path}` is the parameter `{path}` in OpenAPI.
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    doc
}

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

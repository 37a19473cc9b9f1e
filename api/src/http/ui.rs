//! The web console at `GET /ui`: one HTML page, one script, one style sheet
//! and an icon, compiled into the binary (`api/ui/`), so the console works
//! offline and needs no build step or CDN.
//!
//! Every answer under `/ui` carries a strict Content-Security-Policy: only
//! this origin's script and style files run (no inline script or style, no
//! `eval`), the page may only call this origin, and it may not be framed.
//! The page asks for an API key and keeps it in the tab's `sessionStorage`;
//! nothing here reads or sets credentials.
//!
//! These routes are not API operations and are not in the OpenAPI document
//! (merged into the router like `/docs`).

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

/// The policy of every `/ui` answer: script and style only from files of
/// this origin, `fetch` only to this origin (the API), images from this
/// origin or `data:` URLs, no `<base>`, no form submission, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: &'static str,
}

/// A strong validator of an embedded file: an FNV-1a hash of its bytes,
/// computed at compile time, so every replica of one build agrees.
const fn etag_of(body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < body.len() {
        h ^= body[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

macro_rules! asset {
    ($file:literal, $type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $file));
        const HASH: u64 = etag_of(BODY);
        const HEX: [u8; 18] = hex_etag(HASH);
        Asset {
            body: BODY,
            content_type: $type,
            etag: match std::str::from_utf8(&HEX) {
                Ok(s) => s,
                Err(_) => panic!("etag is ASCII"),
            },
        }
    }};
}

/// `"<16 hex digits>"`, quotes included, as an entity tag is written.
const fn hex_etag(h: u64) -> [u8; 18] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = DIGITS[((h >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
/// The console's ES modules (`app.js` is the entry point; it imports the
/// others). A module missing here fails `every_imported_module_is_served`.
static SCRIPTS: [(&str, Asset); 13] = [
    (
        "/ui/app.js",
        asset!("app.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/api.js",
        asset!("api.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/audit.js",
        asset!("audit.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/command.js",
        asset!("command.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/dom.js",
        asset!("dom.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/events.js",
        asset!("events.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/format.js",
        asset!("format.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/nav.js",
        asset!("nav.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/projects.js",
        asset!("projects.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/secrets.js",
        asset!("secrets.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/terminal.js",
        asset!("terminal.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/webhooks.js",
        asset!("webhooks.js", "text/javascript; charset=utf-8"),
    ),
    (
        "/ui/widgets.js",
        asset!("widgets.js", "text/javascript; charset=utf-8"),
    ),
];
static STYLE: Asset = asset!("app.css", "text/css; charset=utf-8");
static ICON: Asset = asset!("icon.svg", "image/svg+xml");

/// The console's routes; merged into the application router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route("/ui", file(&INDEX))
        .route("/ui/", file(&INDEX))
        .route("/ui/app.css", file(&STYLE))
        .route("/ui/icon.svg", file(&ICON));
    for (path, asset) in &SCRIPTS {
        router = router.route(path, file(asset));
    }
    router.layer(middleware::from_fn(security_headers))
}

fn file<S: Clone + Send + Sync + 'static>(asset: &'static Asset) -> MethodRouter<S> {
    get(move |h: HeaderMap| async move { serve(asset, &h) })
}

/// Answers a file, or `304` when the client's copy is current. `no-cache`:
/// browsers keep the files but revalidate them, so an upgraded server is
/// picked up on the next load (and the page never runs a stale script
/// against a newer API).
fn serve(asset: &'static Asset, req: &HeaderMap) -> Response {
    let etag = HeaderValue::from_static(asset.etag);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == asset.etag)
        });
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), cache]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::ETAG, etag),
            cache,
        ],
        asset.body,
    )
        .into_response()
}

/// Adds the policy and hardening headers to every answer of these routes
/// (`304` included).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(t) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        router::<()>()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    fn header_of(r: &Response, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn every_file_has_its_type_and_the_policy() {
        for (path, ty) in [
            ("/ui", "text/html"),
            ("/ui/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/terminal.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
            ("/ui/icon.svg", "image/svg+xml"),
        ] {
            let r = get(path, None).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert!(
                header_of(&r, header::CONTENT_TYPE).starts_with(ty),
                "{path}"
            );
            assert_eq!(
                header_of(&r, header::CONTENT_SECURITY_POLICY),
                CSP,
                "{path}"
            );
            assert_eq!(header_of(&r, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(header_of(&r, header::REFERRER_POLICY), "no-referrer");
            assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-cache");
            assert!(header_of(&r, header::ETAG).starts_with('"'), "{path}");
        }
    }

    #[tokio::test]
    async fn a_current_copy_is_not_sent_again() {
        let r = get("/ui/app.js", None).await;
        let etag = header_of(&r, header::ETAG).to_owned();
        let again = get("/ui/app.js", Some(&format!("\"x\", {etag}"))).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header_of(&again, header::CONTENT_SECURITY_POLICY), CSP);
        let stale = get("/ui/app.js", Some("\"0000\"")).await;
        assert_eq!(stale.status(), StatusCode::OK);
    }

    /// Every `import … from './x.js'` of every module names a served file,
    /// and every served module is imported by some other (none is dead).
    #[test]
    fn every_imported_module_is_served() {
        let served: Vec<&str> = SCRIPTS.iter().map(|(p, _)| *p).collect();
        let mut imported = vec!["/ui/app.js".to_owned()];
        for (path, asset) in &SCRIPTS {
            let text = std::str::from_utf8(asset.body).expect("utf-8");
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let name = line
                    .split(" from './")
                    .nth(1)
                    .and_then(|rest| rest.strip_suffix("';"))
                    .unwrap_or_else(|| panic!("{path}: unexpected import line {line}"));
                let module = format!("/ui/{name}");
                assert!(
                    served.contains(&module.as_str()),
                    "{path} imports {module}, not served"
                );
                imported.push(module);
            }
        }
        for path in served {
            assert!(
                imported.iter().any(|m| m == path),
                "{path} is served but never imported"
            );
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(INDEX.body).expect("utf-8");
        assert!(
            html.contains(r#"<script type="module" src="/ui/app.js">"#),
            "{html}"
        );
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "{html}"
        );
        assert!(!html.contains(" style="), "{html}");
        // No event-handler attributes (`onclick=` and the like).
        for (i, _) in html.match_indices(" on") {
            let attr: String = html[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                !html[i + 1 + attr.len()..].starts_with('='),
                "inline handler {attr}"
            );
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}

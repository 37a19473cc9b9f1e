//! The served OpenAPI document: valid-looking 3.1, and exactly the routes the
//! router serves. The router's routes are read from the source of
//! `api/src/http/mod.rs`, so a route added there without a
//! `#[utoipa::path]` (listed in `ApiDoc`) fails this test; each documented
//! operation is also requested to show the server really serves it.

use std::collections::BTreeSet;

use serde_json::Value;

use rdev_tests::{Options, spawn_app_with};

const ROUTER_SRC: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../api/src/http/mod.rs"
));

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Everything from `open` (just after a `(`) to its matching `)`.
fn balanced(s: &str) -> &str {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in the router source");
}

/// `(METHOD, path)` of every `.route(...)` in `src`, prefixed.
fn routes_in(src: &str, prefix: &str, out: &mut BTreeSet<(String, String)>) {
    let mut rest = src;
    while let Some(at) = rest.find(".route(") {
        let args = balanced(&rest[at + ".route(".len()..]);
        let path = args.split('"').nth(1).expect("route path literal");
        let methods = &args[args.find(',').expect("method router")..];
        let mut found = false;
        for m in METHODS {
            for (i, _) in methods.match_indices(&format!("{m}(")) {
                let before = methods[..i].chars().last().unwrap_or(' ');
                if !before.is_alphanumeric() && before != '_' && before != ':' {
                    // A wildcard `{*path}` is the parameter `{path}` in OpenAPI.
                    let path = path.replace("{*", "{");
                    out.insert((m.to_uppercase(), format!("{prefix}{path}")));
                    found = true;
                }
            }
        }
        assert!(found, "no method found in route {path}");
        rest = &rest[at + ".route(".len() + args.len()..];
    }
}

/// The router's routes, from `router()` in `api/src/http/mod.rs`: the `v1`
/// router (nested under `/v1`) first, then the root router.
fn router_routes() -> BTreeSet<(String, String)> {
    let body = &ROUTER_SRC[ROUTER_SRC.find("pub fn router(").expect("router()")..];
    let v1_start = body.find("let v1 = ").expect("the v1 router");
    let v1_end = v1_start + body[v1_start..].find(';').expect("end of v1");
    assert!(body.contains(r#".nest("/v1", v1)"#), "v1 is nested at /v1");
    let mut out = BTreeSet::new();
    routes_in(&body[v1_start..v1_end], "/v1", &mut out);
    let root_end = body.find("\n}\n").expect("end of router()");
    routes_in(&body[v1_end..root_end], "", &mut out);
    out
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn router_source_parses() {
    let routes = router_routes();
    for r in [
        ("GET", "/health"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/projects"),
        ("PATCH", "/v1/projects/{name}"),
        ("DELETE", "/v1/webhooks/{id}"),
        (
            "POST",
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
        ),
    ] {
        assert!(
            routes.contains(&(r.0.to_owned(), r.1.to_owned())),
            "{r:?} missing from {routes:?}"
        );
    }
    assert!(routes.len() >= 30, "{routes:?}");
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    // No credential needed.
    let r = app.send(app.http.get(app.url("/openapi.json"))).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let doc = r.json();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi = {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let served = router_routes();
    let listed = documented(&doc);
    let undocumented: Vec<_> = served.difference(&listed).collect();
    let unserved: Vec<_> = listed.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "routes without an OpenAPI operation: {undocumented:?}; operations without a route: {unserved:?}"
    );

    // Bearer auth, and every secured operation documents its errors.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    for (method, path) in &listed {
        let op = &doc["paths"][path][method.to_lowercase()];
        let public = ["/health", "/ready", "/openapi.json"].contains(&path.as_str());
        if !public {
            assert_eq!(
                op["security"][0]["bearer"],
                Value::Array(vec![]),
                "{method} {path}"
            );
            assert!(op["responses"]["401"].is_object(), "{method} {path}: 401");
        }
        assert!(op["responses"]["500"].is_object(), "{method} {path}: 500");
        assert!(op["operationId"].is_string(), "{method} {path}");
        // Every `$ref` resolves.
        check_refs(&doc, op);
    }
    let sse = &doc["paths"]["/v1/commands/{id}/events"]["get"]["responses"]["200"];
    assert!(sse["content"]["text/event-stream"].is_object(), "{sse}");
    let text = sse["description"].as_str().unwrap_or_default();
    for ev in ["status", "output", "gap", "end", "reconnect"] {
        assert!(
            text.contains(&format!("`{ev}`")),
            "SSE event {ev} undocumented"
        );
    }

    // The server answers every documented operation with something other
    // than its "no such route" / "method not allowed" fallbacks.
    for (method, path) in &listed {
        let concrete = path
            .replace("{name}", "nope")
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{delivery_id}", "00000000-0000-0000-0000-000000000000");
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = app.send(app.http.request(m, app.url(&concrete))).await;
        let fallback = r.status == 405
            || (r.status == 404 && String::from_utf8_lossy(&r.body).contains("no such route"));
        assert!(!fallback, "{method} {concrete} is not served: {}", r.status);
    }
}

fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let ptr = r.strip_prefix('#').expect("local $ref");
                assert!(doc.pointer(ptr).is_some(), "dangling $ref {r}");
                check_refs(doc, doc.pointer(ptr).unwrap_or(&Value::Null));
            }
            for x in m.values() {
                check_refs(doc, x);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

#[tokio::test]
async fn docs_page_works_offline() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let r = app.send(app.http.get(app.url("/docs/"))).await;
    assert_eq!(r.status, 200);
    let html = String::from_utf8_lossy(&r.body).into_owned();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://"),
        "the page loads nothing from elsewhere: {html}"
    );
    // The page's assets and its configuration are served by the API itself.
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let r = app
            .send(app.http.get(app.url(&format!("/docs/{asset}"))))
            .await;
        assert_eq!(r.status, 200, "{asset}");
        assert!(!r.body.is_empty(), "{asset}");
        if asset == "swagger-initializer.js" {
            let init = String::from_utf8_lossy(&r.body);
            assert!(init.contains("/openapi.json"), "{init}");
            assert!(
                init.contains(r#""validatorUrl": "none""#)
                    || init.contains(r#""validatorUrl":"none""#),
                "{init}"
            );
        }
    }
}

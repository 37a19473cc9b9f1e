//! The served OpenAPI document: valid-looking 3.1, with every operation;
//! each documented operation is also requested to show the server really
//! serves it. (Routes and their operations are registered together, with
//! `utoipa-axum`'s `routes!`, so a route cannot go undocumented.)

use std::collections::BTreeSet;

use serde_json::Value;

use rdev_tests::{Options, spawn_app_with};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

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

    // Routes and operations are registered together (`utoipa-axum`), so
    // every served route is documented; check the document holds them all.
    let listed = documented(&doc);
    for r in [
        ("GET", "/health"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/projects"),
        ("PATCH", "/v1/projects/{name}"),
        ("GET", "/v1/projects/{name}/files/{path}"),
        ("DELETE", "/v1/webhooks/{id}"),
        (
            "POST",
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
        ),
    ] {
        assert!(
            listed.contains(&(r.0.to_owned(), r.1.to_owned())),
            "{r:?} missing from {listed:?}"
        );
    }
    assert_eq!(listed.len(), 46, "{listed:?}");

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

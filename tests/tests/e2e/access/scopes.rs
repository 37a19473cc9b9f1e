//! Scopes × routes: every route answers every scope as designed.

use reqwest::Method;
use serde_json::{Value, json};

use rdev_tests::spawn_app_with;

use super::{call, no_worker};

/// What a route acts on; each call gets a fresh target when it would consume one.
#[derive(Clone, Copy)]
enum Target {
    /// The shared project `alpha` (`{p}`) and its command (`{cmd}`).
    Shared,
    /// A fresh project, `{fresh}`.
    FreshProject,
    /// A fresh key (`{key}`): scopes `keys:manage`, restricted to `beta`.
    FreshKey,
}

struct Route {
    method: Method,
    path: &'static str,
    scope: &'static str,
    body: Option<fn() -> Value>,
    target: Target,
    /// Expected success status.
    ok: u16,
    /// Expected status for a key holding every scope but restricted to `beta`.
    restricted: u16,
}

/// Every route of the API with its scope (docs/API.md, "API keys"; `none` = no key
/// needed, `any key` = any valid key). Add new routes here.
fn routes() -> Vec<Route> {
    use Target::*;
    let r = |method: Method,
             path: &'static str,
             scope: &'static str,
             body: Option<fn() -> Value>,
             target: Target,
             ok: u16,
             restricted: u16| Route {
        method,
        path,
        scope,
        body,
        target,
        ok,
        restricted,
    };
    vec![
        r(Method::GET, "/health", "none", None, Shared, 200, 200),
        r(Method::GET, "/ready", "none", None, Shared, 200, 200),
        r(
            Method::GET,
            "/v1/projects",
            "projects:read",
            None,
            Shared,
            200,
            200,
        ),
        r(
            Method::POST,
            "/v1/projects",
            "projects:write",
            Some(
                || json!({ "name": format!("p{}", uuid::Uuid::now_v7().simple()).chars().take(40).collect::<String>() }),
            ),
            Shared,
            201,
            403,
        ),
        r(
            Method::GET,
            "/v1/projects/{p}",
            "projects:read",
            None,
            Shared,
            200,
            404,
        ),
        r(
            Method::PATCH,
            "/v1/projects/{p}",
            "projects:write",
            Some(|| json!({ "description": "changed" })),
            Shared,
            200,
            404,
        ),
        r(
            Method::DELETE,
            "/v1/projects/{fresh}",
            "projects:write",
            None,
            FreshProject,
            204,
            404,
        ),
        r(
            Method::POST,
            "/v1/projects/{p}/commands",
            "commands:run",
            Some(|| json!({ "argv": ["true"] })),
            Shared,
            202,
            404,
        ),
        r(
            Method::GET,
            "/v1/commands",
            "commands:read",
            None,
            Shared,
            200,
            200,
        ),
        r(
            Method::GET,
            "/v1/commands?project={p}",
            "commands:read",
            None,
            Shared,
            200,
            404,
        ),
        r(
            Method::GET,
            "/v1/commands/{cmd}",
            "commands:read",
            None,
            Shared,
            200,
            404,
        ),
        r(
            Method::GET,
            "/v1/commands/{cmd}/output",
            "commands:read",
            None,
            Shared,
            200,
            404,
        ),
        r(
            Method::GET,
            "/v1/commands/{cmd}/events",
            "commands:read",
            None,
            Shared,
            200,
            404,
        ),
        r(
            Method::POST,
            "/v1/api-keys",
            "keys:manage",
            Some(|| json!({ "name": "made", "scopes": ["keys:manage"] })),
            Shared,
            201,
            403,
        ),
        r(
            Method::GET,
            "/v1/api-keys",
            "keys:manage",
            None,
            Shared,
            200,
            200,
        ),
        r(
            Method::GET,
            "/v1/api-keys/{key}",
            "keys:manage",
            None,
            FreshKey,
            200,
            200,
        ),
        r(
            Method::DELETE,
            "/v1/api-keys/{key}",
            "keys:manage",
            None,
            FreshKey,
            204,
            204,
        ),
        r(
            Method::POST,
            "/v1/api-keys/{key}/rotate",
            "keys:manage",
            None,
            FreshKey,
            200,
            200,
        ),
        r(Method::GET, "/v1/whoami", "any key", None, Shared, 200, 200),
        r(
            Method::GET,
            "/v1/audit",
            "audit:read",
            None,
            Shared,
            200,
            200,
        ),
        r(
            Method::GET,
            "/v1/audit?project={p}",
            "audit:read",
            None,
            Shared,
            200,
            404,
        ),
    ]
}

const SCOPES: [&str; 8] = [
    "admin",
    "projects:read",
    "projects:write",
    "commands:run",
    "commands:read",
    "webhooks:manage",
    "keys:manage",
    "audit:read",
];

#[tokio::test]
async fn every_route_answers_every_scope_as_designed() {
    let app = spawn_app_with(no_worker()).await;
    app.create_project("alpha", json!({})).await;
    app.create_project("beta", json!({})).await;
    let cmd = app.run("alpha", json!({ "argv": ["true"] })).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut keys = Vec::new();
    for scope in SCOPES {
        let (_, secret) = app
            .create_key(json!({ "name": format!("only {scope}"), "scopes": [scope] }))
            .await;
        keys.push((scope.to_owned(), secret, false));
    }
    let every: Vec<&str> = SCOPES[1..].to_vec();
    let (_, restricted) = app
        .create_key(json!({ "name": "beta only", "scopes": every, "projects": ["beta"] }))
        .await;
    keys.push(("all scopes, beta only".into(), restricted, true));

    let mut failures = Vec::new();
    let mut n = 0;
    for route in routes() {
        for (scope, key, is_restricted) in &keys {
            let fresh = format!("fresh-{n}");
            n += 1;
            let mut path = route.path.replace("{p}", "alpha").replace("{cmd}", &cmd);
            match route.target {
                Target::Shared => {}
                Target::FreshProject => {
                    app.create_project(&fresh, json!({})).await;
                    path = path.replace("{fresh}", &fresh);
                }
                Target::FreshKey => {
                    // Rotate and revoke reach only keys the caller made: a
                    // caller that may make keys makes its own target.
                    let body = json!({ "name": "target", "scopes": ["keys:manage"], "projects": ["beta"] });
                    let id = if scope == "keys:manage" || *is_restricted {
                        let r = call(
                            &app,
                            &app.base,
                            Method::POST,
                            "/v1/api-keys",
                            key,
                            Some(body),
                            None,
                        )
                        .await;
                        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
                        r.json()["id"].as_str().expect("id").to_owned()
                    } else {
                        app.create_key(body).await.0
                    };
                    path = path.replace("{key}", &id);
                }
            }
            let expected = if *is_restricted {
                route.restricted
            } else if scope == "admin"
                || route.scope == "none"
                || route.scope == "any key"
                || scope == route.scope
            {
                route.ok
            } else {
                403
            };
            let r = call(
                &app,
                &app.base,
                route.method.clone(),
                &path,
                key,
                route.body.map(|b| b()),
                None,
            )
            .await;
            if r.status != expected {
                failures.push(format!(
                    "{} {path} with [{scope}]: expected {expected}, got {} {}",
                    route.method,
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            } else if r.status >= 400 {
                r.assert_problem(expected);
            }
            assert!(
                route.scope == "none" || r.header("ratelimit-limit").is_some(),
                "{} {path}: authenticated responses carry RateLimit-*",
                route.method
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn whoami_answers_the_calling_key_whatever_its_scopes() {
    let app = spawn_app_with(no_worker()).await;
    app.create_project("alpha", json!({})).await;
    let (id, secret) = app
        .create_key(json!({
            "name": "reader",
            "scopes": ["commands:read", "audit:read"],
            "projects": ["alpha"],
        }))
        .await;
    let r = call(
        &app,
        &app.base,
        Method::GET,
        "/v1/whoami",
        &secret,
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let me = r.json();
    assert_eq!(me["id"], id.as_str());
    assert_eq!(me["name"], "reader");
    assert_eq!(me["scopes"], json!(["commands:read", "audit:read"]));
    assert_eq!(me["projects"], json!(["alpha"]));
    assert!(me.get("secret").is_none(), "never the secret: {me}");
    assert_eq!(secret[..8], me["prefix"].as_str().expect("prefix")[..]);

    // The admin key sees itself, unrestricted.
    let admin = app.get("/v1/whoami").await.json();
    assert_eq!(admin["scopes"], json!(["admin"]));
    assert_eq!(admin["projects"], Value::Null);

    // No key, or a revoked one: 401.
    app.request(Method::GET, "/v1/whoami", None, None)
        .await
        .assert_problem(401);
    let revoked = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            Some(&app.admin_key.clone()),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    call(
        &app,
        &app.base,
        Method::GET,
        "/v1/whoami",
        &secret,
        None,
        None,
    )
    .await
    .assert_problem(401);
}

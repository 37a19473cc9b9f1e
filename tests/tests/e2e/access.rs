//! Access control and accountability: scopes × routes, key lifecycle across
//! instances, IP allowlists, shared sliding-window rate limits, the audit
//! log and per-project command policy.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{Value, json};

use rdev_tests::{Options, Resp, TestApp, spawn_app_with};

fn no_worker() -> Options {
    Options {
        worker: false,
        ..Default::default()
    }
}

/// Sends a request to `base` (an API instance) and reads it whole, except
/// event streams, whose status and headers are enough.
async fn call(
    app: &TestApp,
    base: &str,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
    xff: Option<&str>,
) -> Resp {
    let mut req = app
        .http
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let sse = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let body = if sse {
        bytes::Bytes::new()
    } else {
        r.bytes().await.expect("body")
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// Polls SQL until it returns at least one row, for audit rows written in
/// the background (denials).
async fn wait_rows(
    app: &TestApp,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<tokio_postgres::Row> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let client = app.env.pool.get().await.expect("db");
        let rows = client.query(sql, params).await.expect("query");
        if !rows.is_empty() || Instant::now() > deadline {
            return rows;
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
async fn ip_allowlists_use_the_peer_or_trusted_forwarded_for() {
    let mut app = spawn_app_with(no_worker()).await;
    let (_, ten) = app
        .create_key(
            json!({ "name": "ten", "scopes": ["projects:read"], "allowed_ips": ["10.0.0.0/8"] }),
        )
        .await;
    let (_, local) = app
        .create_key(json!({ "name": "local", "scopes": ["projects:read"], "allowed_ips": ["127.0.0.1/32"] }))
        .await;
    // A second instance that trusts 127.0.0.1 as a proxy.
    app.api_cfg.trusted_proxies = "127.0.0.1/32".parse().expect("proxies");
    let proxied = app.spawn_api().await;
    let direct = app.base.clone();
    // (instance, key, X-Forwarded-For, expected, why)
    let cases = [
        (
            &direct,
            &local,
            None,
            200,
            "no proxy: the peer 127.0.0.1 counts",
        ),
        (
            &direct,
            &ten,
            None,
            403,
            "no proxy: 127.0.0.1 is not in 10/8",
        ),
        (
            &direct,
            &ten,
            Some("10.1.2.3"),
            403,
            "spoofed XFF from an untrusted peer",
        ),
        (
            &direct,
            &local,
            Some("10.1.2.3"),
            200,
            "XFF ignored from an untrusted peer",
        ),
        (
            &proxied,
            &ten,
            Some("10.1.2.3"),
            200,
            "trusted proxy: the entry before it",
        ),
        (
            &proxied,
            &ten,
            Some("10.1.2.3, 127.0.0.1"),
            200,
            "trusted hops are skipped",
        ),
        (
            &proxied,
            &local,
            Some("10.1.2.3"),
            403,
            "the client, not the proxy, counts",
        ),
        (
            &proxied,
            &ten,
            None,
            403,
            "no XFF: the proxy itself is the client",
        ),
        (
            &proxied,
            &ten,
            Some("10.9.9.9, 192.0.2.1"),
            403,
            "forged entries left of the client",
        ),
    ];
    for (base, key, xff, expected, why) in cases {
        let r = call(&app, base, Method::GET, "/v1/projects", key, None, xff).await;
        assert_eq!(r.status, expected, "{why}");
    }

    let r = call(
        &app,
        &proxied,
        Method::GET,
        "/v1/projects",
        &ten,
        None,
        Some("192.0.2.1"),
    )
    .await;
    let p = r.assert_problem(403);
    assert!(
        p["detail"].as_str().unwrap_or("").contains("192.0.2.1"),
        "{p}"
    );
    let rows = wait_rows(
        &app,
        "SELECT actor, details FROM audit_log WHERE action = 'auth.denied' AND host(ip) = '192.0.2.1'",
        &[],
    )
    .await;
    assert!(
        !rows.is_empty(),
        "IP denials are audited with the client address"
    );
    let details: Value = rows[0].get(1);
    assert_eq!(rows[0].get::<_, String>(0), "ten");
    assert_eq!(details["reason"], "ip");
}

/// Status of `GET /v1/projects` with `key` on the instance at `base`.
async fn list_status(app: &TestApp, base: &str, key: &str) -> u16 {
    call(app, base, Method::GET, "/v1/projects", key, None, None)
        .await
        .status
}

/// Polls `base` with `key` until it answers 401; fails past `limit`.
async fn refused_within(app: &TestApp, base: &str, key: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while list_status(app, base, key).await != 401 {
        assert!(t0.elapsed() < limit, "{base} still accepts the key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

#[tokio::test]
async fn a_revoked_or_rotated_key_fails_on_another_instance_within_a_second() {
    let mut app = spawn_app_with(no_worker()).await;
    let b = app.spawn_api().await;
    let admin = app.admin_key.clone();
    let (id, secret) = app
        .create_key(json!({ "name": "victim", "scopes": ["projects:read"] }))
        .await;
    // Let B's control listener come up, then warm B's cache.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        assert_eq!(list_status(&app, &b, &secret).await, 200);
    }

    // Rotate via A: the old secret stops working on B, the new one works.
    let r = app
        .request(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rotated = r.json();
    assert_eq!(rotated["id"], id.as_str());
    let new_secret = rotated["secret"].as_str().expect("secret").to_owned();
    assert_ne!(new_secret, secret);
    let after_rotate = refused_within(&app, &b, &secret, Duration::from_secs(1)).await;
    for _ in 0..3 {
        assert_eq!(list_status(&app, &b, &new_secret).await, 200);
    }

    // Revoke via A.
    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let after_revoke = refused_within(&app, &b, &new_secret, Duration::from_secs(1)).await;
    println!("refused on B after rotate: {after_rotate:?}, after revoke: {after_revoke:?}");
    call(
        &app,
        &b,
        Method::GET,
        "/v1/projects",
        &new_secret,
        None,
        None,
    )
    .await
    .assert_problem(401);
    let k = app.get(&format!("/v1/api-keys/{id}")).await.json();
    assert!(k["revoked_at"].is_string());
    assert!(
        k.get("secret").is_none(),
        "the secret is shown only on create/rotate"
    );
    let rows = wait_rows(
        &app,
        "SELECT 1 FROM audit_log WHERE action = 'auth.denied' AND actor = 'victim' AND details->>'reason' = 'revoked'",
        &[],
    )
    .await;
    assert!(!rows.is_empty(), "use of a revoked key is audited");
    // ...but a revoked key hammering the API cannot grow the log without bound.
    for _ in 0..60 {
        assert_eq!(list_status(&app, &b, &new_secret).await, 401);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = app.env.pool.get().await.expect("db");
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'auth.denied' AND actor = 'victim'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert!(
        (1..=30).contains(&n),
        "{n} denial rows for 60+ refused requests"
    );
}

fn epoch_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[tokio::test]
async fn rate_limits_are_shared_by_instances_and_the_window_slides() {
    let mut app = spawn_app_with(no_worker()).await;
    let b = app.spawn_api().await;
    let a = app.base.clone();
    let (_, hourly) = app
        .create_key(json!({ "name": "hourly", "scopes": ["projects:read"],
                            "rate_limit": { "requests": 5, "window_s": 3600 } }))
        .await;
    // Stay clear of an hour boundary so all requests share one window.
    if epoch_s() % 3600.0 > 3590.0 {
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    for i in 0..5 {
        let base = if i % 2 == 0 { &a } else { &b };
        let r = call(&app, base, Method::GET, "/v1/projects", &hourly, None, None).await;
        assert_eq!(r.status, 200, "request {} of 5", i + 1);
        assert_eq!(r.header("ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(r.header("ratelimit-remaining"), Some((4 - i).to_string()));
    }
    let elapsed = epoch_s() % 3600.0;
    let r = call(&app, &b, Method::GET, "/v1/projects", &hourly, None, None).await;
    r.assert_problem(429);
    assert_eq!(r.header("ratelimit-remaining").as_deref(), Some("0"));
    let retry: f64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    // 5 used, none before: the next window, once 5 × (1 − e/3600) + 1 ≤ 5 (e = 720 s).
    let expected = 3600.0 - elapsed + 720.0;
    assert!(
        (retry - expected).abs() <= 2.0,
        "Retry-After {retry}, expected ≈{expected}"
    );
    let reset: f64 = r
        .header("ratelimit-reset")
        .expect("reset")
        .parse()
        .expect("secs");
    assert!(
        (reset - (3600.0 - elapsed)).abs() <= 2.0,
        "RateLimit-Reset {reset}"
    );

    // A 2-second window: refused, then admitted again after Retry-After.
    let (_, fast) = app
        .create_key(json!({ "name": "fast", "scopes": ["projects:read"],
                            "rate_limit": { "requests": 2, "window_s": 2 } }))
        .await;
    while !(0.05..0.8).contains(&(epoch_s() % 2.0)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        call(&app, &a, Method::GET, "/v1/projects", &fast, None, None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(&app, &b, Method::GET, "/v1/projects", &fast, None, None)
            .await
            .status,
        200
    );
    let r = call(&app, &a, Method::GET, "/v1/projects", &fast, None, None).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!((1..=4).contains(&retry), "Retry-After {retry}");
    tokio::time::sleep(Duration::from_millis(retry * 1000 + 100)).await;
    let r = call(&app, &b, Method::GET, "/v1/projects", &fast, None, None).await;
    assert_eq!(r.status, 200, "the window slid after Retry-After");
}

#[tokio::test]
async fn audited_actions_record_actor_and_ip_and_floods_write_nothing() {
    let app = spawn_app_with(no_worker()).await;
    let (actor_id, actor) = app
        .create_key(json!({ "name": "operator",
            "scopes": ["projects:write", "projects:read", "commands:run", "keys:manage", "audit:read"] }))
        .await;
    let base = app.base.clone();
    let send = |m: Method, path: &str, body: Option<Value>| {
        let (app, base, actor, path) = (&app, base.clone(), actor.clone(), path.to_owned());
        async move { call(app, &base, m, &path, &actor, body, None).await }
    };
    assert_eq!(
        send(Method::POST, "/v1/projects", Some(json!({"name": "web"})))
            .await
            .status,
        201
    );
    assert_eq!(
        send(
            Method::PATCH,
            "/v1/projects/web",
            Some(json!({"description": "d"}))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(
            Method::POST,
            "/v1/projects/web/commands",
            Some(json!({"argv": ["true"]}))
        )
        .await
        .status,
        202
    );
    let r = send(
        Method::POST,
        "/v1/api-keys",
        Some(json!({"name": "child", "scopes": ["projects:read"]})),
    )
    .await;
    assert_eq!(r.status, 201);
    let child = r.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(
        send(Method::POST, &format!("/v1/api-keys/{child}/rotate"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        send(Method::DELETE, &format!("/v1/api-keys/{child}"), None)
            .await
            .status,
        204
    );
    assert_eq!(
        send(Method::DELETE, "/v1/projects/web", None).await.status,
        204
    );
    // Denials: a scope it lacks, and a grant it cannot make.
    assert_eq!(send(Method::GET, "/v1/commands", None).await.status, 403);
    assert_eq!(
        send(
            Method::POST,
            "/v1/api-keys",
            Some(json!({"name": "x", "scopes": ["admin"]}))
        )
        .await
        .status,
        403
    );

    let rows = wait_rows(
        &app,
        "SELECT 1 FROM audit_log WHERE details->>'reason' = 'escalation'",
        &[],
    )
    .await;
    assert!(!rows.is_empty());
    let r = send(
        Method::GET,
        &format!("/v1/audit?actor={actor_id}&limit=200"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let items = r.json()["items"].as_array().expect("items").clone();
    let mut seen: Vec<(String, String)> = items
        .iter()
        .map(|e| {
            assert_eq!(e["actor"], "operator");
            assert_eq!(e["actor_key_id"], actor_id.as_str());
            assert_eq!(e["ip"], "127.0.0.1");
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.reverse(); // newest first → chronological
    let success: Vec<&str> = seen
        .iter()
        .filter(|(_, o)| o == "success")
        .map(|(a, _)| a.as_str())
        .collect();
    assert_eq!(
        success,
        [
            "project.create",
            "project.update",
            "command.create",
            "api_key.create",
            "api_key.rotate",
            "api_key.revoke",
            "project.delete"
        ]
    );
    let denied = seen.iter().filter(|(_, o)| o == "denied").count();
    assert_eq!(denied, 2, "{seen:?}");

    // Filters and pagination.
    let r = app.get("/v1/audit?action=project.update").await.json();
    assert_eq!(r["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(r["items"][0]["target_id"], "web");
    let page1 = app
        .get(&format!("/v1/audit?actor={actor_id}&limit=4"))
        .await
        .json();
    let cursor = page1["next_cursor"].as_str().expect("cursor").to_owned();
    let page2 = app
        .get(&format!(
            "/v1/audit?actor={actor_id}&limit=4&cursor={cursor}"
        ))
        .await
        .json();
    assert!(page1["items"][3]["id"].as_i64() > page2["items"][0]["id"].as_i64());
    let future = "2999-01-01T00:00:00Z";
    let r = app.get(&format!("/v1/audit?since={future}")).await.json();
    assert_eq!(r["items"].as_array().map(Vec::len), Some(0));

    // Unauthenticated floods write nothing.
    let client = app.env.pool.get().await.expect("db");
    let counts = "SELECT (SELECT count(*) FROM audit_log), (SELECT count(*) FROM rate_limits), \
                  (SELECT coalesce(sum(count), 0) FROM rate_limits)";
    let before = client.query_one(counts, &[]).await.expect("q");
    for i in 0..50 {
        let token = if i % 2 == 0 {
            rdev_shared::secret::generate_key().secret
        } else {
            format!("garbage-{i}")
        };
        let r = call(
            &app,
            &app.base,
            Method::POST,
            "/v1/projects",
            &token,
            Some(json!({"name": "x"})),
            None,
        )
        .await;
        assert_eq!(r.status, 401);
        assert!(r.header("ratelimit-limit").is_none());
    }
    let after = client.query_one(counts, &[]).await.expect("q");
    for i in 0..3 {
        assert_eq!(
            before.get::<_, i64>(i),
            after.get::<_, i64>(i),
            "column {i}"
        );
    }
}

#[tokio::test]
async fn keys_cannot_grant_more_than_they_hold() {
    let app = spawn_app_with(no_worker()).await;
    app.create_project("alpha", json!({})).await;
    app.create_project("beta", json!({})).await;
    let (_, manager) = app
        .create_key(json!({ "name": "mgr", "scopes": ["keys:manage", "commands:read"], "projects": ["alpha"] }))
        .await;
    let post = |body: Value| {
        let (app, manager) = (&app, manager.clone());
        async move {
            call(
                app,
                &app.base,
                Method::POST,
                "/v1/api-keys",
                &manager,
                Some(body),
                None,
            )
            .await
        }
    };
    post(json!({"name": "a", "scopes": ["admin"], "projects": ["alpha"]}))
        .await
        .assert_problem(403);
    post(json!({"name": "a", "scopes": ["commands:run"], "projects": ["alpha"]}))
        .await
        .assert_problem(403);
    post(json!({"name": "a", "scopes": ["commands:read"]}))
        .await
        .assert_problem(403);
    let p = post(json!({"name": "a", "scopes": ["commands:read"], "projects": ["beta"]}))
        .await
        .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "projects[0]");
    let r = post(json!({"name": "a", "scopes": ["commands:read"], "projects": ["alpha"],
                        "allowed_ips": ["10.1.2.3/8", "::1"], "rate_limit": {"requests": 9, "window_s": 30},
                        "expires_at": "2999-01-01T00:00:00Z"})).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let k = r.json();
    assert_eq!(k["allowed_ips"], json!(["10.0.0.0/8", "::1/128"]));
    assert_eq!(k["projects"], json!(["alpha"]));
    assert_eq!(k["rate_limit"], json!({"requests": 9, "window_s": 30}));
    assert!(
        k["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with(k["prefix"].as_str().unwrap_or("-")))
    );

    // Validation is per field.
    let p = app
        .post("/v1/api-keys", json!({"name": "", "scopes": ["nope"], "allowed_ips": ["x"],
                                      "rate_limit": {"requests": 0, "window_s": 1}, "expires_at": "2000-01-01T00:00:00Z"}))
        .await
        .assert_problem(422);
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "name",
            "scopes[0]",
            "allowed_ips[0]",
            "rate_limit",
            "expires_at"
        ]
    );

    // The manager sees only keys it could have made; never the admin key, never secrets.
    let list = call(
        &app,
        &app.base,
        Method::GET,
        "/v1/api-keys",
        &manager,
        None,
        None,
    )
    .await
    .json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["mgr", "a"]);
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|k| k.get("secret").is_none())
    );
    let admin_id = app.get("/v1/api-keys").await.json()["items"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = call(
        &app,
        &app.base,
        Method::POST,
        &format!("/v1/api-keys/{admin_id}/rotate"),
        &manager,
        None,
        None,
    )
    .await;
    r.assert_problem(404);
}

#[tokio::test]
async fn command_policy_is_checked_at_enqueue() {
    let app = spawn_app_with(no_worker()).await;
    let p = app
        .post(
            "/v1/projects",
            json!({"name": "strict", "allowed_commands": ["argv0:echo", "re:make", "glob:*"]}),
        )
        .await
        .assert_problem(422);
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["allowed_commands[1]", "allowed_commands[2]"]);
    app.create_project(
        "strict",
        json!({"allowed_commands": ["argv0:echo", "re:^make (test|lint)$"]}),
    )
    .await;
    app.run("strict", json!({"argv": ["echo", "hi"]})).await;
    app.run("strict", json!({"command": "make test"})).await;
    app.run("strict", json!({"command": "echo hi"})).await;
    for body in [
        json!({"command": "make deploy"}),
        json!({"command": "echo hi; rm -rf ~"}),
        json!({"argv": ["rm", "-rf", "/"]}),
        json!({"argv": ["make", "test"]}),
    ] {
        let p = app
            .post("/v1/projects/strict/commands", body.clone())
            .await
            .assert_problem(403);
        assert!(
            p["detail"].as_str().unwrap_or("").contains("no rule"),
            "{body}: {p}"
        );
    }
    let r = app
        .request(
            Method::PATCH,
            "/v1/projects/strict",
            Some(&app.admin_key.clone()),
            Some(json!({"allowed_commands": []})),
        )
        .await;
    assert_eq!(r.status, 200);
    let p = app
        .post("/v1/projects/strict/commands", json!({"argv": ["echo"]}))
        .await
        .assert_problem(403);
    assert!(p["detail"].as_str().unwrap_or("").contains("empty"), "{p}");
    let rows = wait_rows(
        &app,
        "SELECT 1 FROM audit_log WHERE action = 'command.create' AND outcome = 'denied'",
        &[],
    )
    .await;
    assert!(!rows.is_empty(), "policy refusals are audited");
}

/// The rate limiter's cost: one statement per authenticated request.
/// Run with `--nocapture` to see the number.
#[tokio::test]
async fn rate_limiter_costs_one_short_statement() {
    let app = spawn_app_with(no_worker()).await;
    let (id, _) = app
        .create_key(json!({ "name": "bench", "scopes": ["projects:read"] }))
        .await;
    let id: uuid::Uuid = id.parse().expect("id");
    let limit = rdev_shared::domain::RateLimit {
        requests: 1_000_000,
        window_s: 60,
    };
    let client = app.env.pool.get().await.expect("db");
    for _ in 0..50 {
        rdev_shared::db::rate_limits::hit(&client, id, limit)
            .await
            .expect("hit");
    }
    let n = 1000;
    let t0 = Instant::now();
    for _ in 0..n {
        let o = rdev_shared::db::rate_limits::hit(&client, id, limit)
            .await
            .expect("hit");
        assert!(o.admitted);
    }
    let per = t0.elapsed() / n;
    let t0 = Instant::now();
    for _ in 0..n {
        client.query_one("SELECT 1", &[]).await.expect("select");
    }
    let baseline = t0.elapsed() / n;
    println!(
        "rate limiter: {per:?} per request (mean of {n}, one round trip); `SELECT 1` round trip: {baseline:?}"
    );
    assert!(per < Duration::from_millis(20), "{per:?}");
    drop(client);

    // Eight connections hammering eight keys vs one key: rows are per key,
    // so distinct keys never wait on each other's row locks.
    for distinct in [true, false] {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let pool = app.env.pool.clone();
                let key = if distinct { uuid::Uuid::now_v7() } else { id };
                tokio::spawn(async move {
                    let c = pool.get().await.expect("db");
                    for _ in 0..200 {
                        rdev_shared::db::rate_limits::hit(&c, key, limit)
                            .await
                            .expect("hit");
                    }
                    i
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let rate = 1600.0 / t0.elapsed().as_secs_f64();
        let what = if distinct { "8 keys" } else { "1 key" };
        println!("rate limiter, 8 connections on {what}: {rate:.0} requests/s");
    }
}

#[tokio::test]
async fn retention_trims_old_audit_entries_and_stale_counters() {
    let app = spawn_app_with(no_worker()).await;
    let client = app.env.pool.get().await.expect("db");
    client
        .batch_execute(
            "INSERT INTO audit_log (at, actor, action, target_type, outcome) VALUES \
               (now() - interval '100 days', 'old', 'project.create', 'project', 'success'), \
               (now() - interval '1 day', 'new', 'project.create', 'project', 'success'); \
             INSERT INTO rate_limits (key_id, window_start, count, window_s) VALUES \
               (gen_random_uuid(), now() - interval '200 seconds', 1, 60), \
               (gen_random_uuid(), now(), 1, 60), \
               (gen_random_uuid(), now() - interval '200 seconds', 1, 3600);",
        )
        .await
        .expect("seed");
    let cfg = rdev_tests::dispatcher_config(&app.env);
    let pruned = rdev_dispatcher::retention::run_once(&app.env.pool, &cfg.retention())
        .await
        .expect("retention");
    assert_eq!((pruned.audit, pruned.rate_limits), (1, 1));
    let left: Vec<String> = client
        .query("SELECT actor FROM audit_log", &[])
        .await
        .expect("q")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["new"]);
    // Append-only: rows cannot be rewritten.
    assert!(
        client
            .execute("UPDATE audit_log SET actor = 'x'", &[])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn concurrent_requests_never_exceed_the_limit() {
    let app = spawn_app_with(no_worker()).await;
    let key = uuid::Uuid::now_v7();
    let limit = rdev_shared::domain::RateLimit {
        requests: 10,
        window_s: 3600,
    };
    if epoch_s() % 3600.0 > 3590.0 {
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let pool = app.env.pool.clone();
            tokio::spawn(async move {
                let c = pool.get().await.expect("db");
                rdev_shared::db::rate_limits::hit(&c, key, limit)
                    .await
                    .expect("hit")
                    .admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.expect("task"));
    }
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn an_instance_that_cannot_hear_key_changes_trusts_its_cache_for_a_second_at_most() {
    let mut app = spawn_app_with(no_worker()).await;
    // B's broker is unreachable: no invalidations reach it.
    app.api_cfg.amqp.amqp_url =
        rdev_shared::config::Secret::new("amqp://guest:guest@127.0.0.1:1/%2f");
    let b = app.spawn_api().await;
    let (id, secret) = app
        .create_key(json!({ "name": "deaf", "scopes": ["projects:read"] }))
        .await;
    assert_eq!(list_status(&app, &b, &secret).await, 200);
    let admin = app.admin_key.clone();
    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    refused_within(&app, &b, &secret, Duration::from_millis(1500)).await;
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

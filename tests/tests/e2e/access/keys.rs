//! The key lifecycle across instances: revocation and rotation heard by
//! every instance, and keys that cannot grant more than they hold.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use rdev_tests::{TestApp, spawn_app_with};

use super::{call, no_worker, wait_rows};

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

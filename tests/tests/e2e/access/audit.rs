//! The audit log: who did what from where, floods that write nothing, and
//! retention.

use reqwest::Method;
use serde_json::{Value, json};

use rdev_tests::spawn_app_with;

use super::{call, no_worker, wait_rows};

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

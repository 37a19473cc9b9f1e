//! Authentication, authorization and input errors answer problem+json.

use rdev_shared::db::keys;
use rdev_shared::domain::Scope;
use rdev_shared::secret;
use reqwest::Method;
use serde_json::json;

use rdev_tests::{Options, spawn_app_with};

async fn key_with(
    app: &rdev_tests::TestApp,
    scopes: Vec<Scope>,
    project_ids: Option<Vec<uuid::Uuid>>,
) -> String {
    let g = secret::generate_key();
    let client = app.env.pool.get().await.expect("db");
    keys::insert(
        &client,
        &keys::NewKey {
            name: "limited".into(),
            prefix: g.prefix.clone(),
            hash: g.hash,
            scopes,
            project_ids,
        },
    )
    .await
    .expect("key");
    g.secret
}

#[tokio::test]
async fn missing_or_bad_keys_get_401_problem_json() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let r = app.request(Method::GET, "/v1/projects", None, None).await;
    r.assert_problem(401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer"))
    );
    app.request(
        Method::GET,
        "/v1/projects",
        Some("rdev_notarealkey123"),
        None,
    )
    .await
    .assert_problem(401);
    app.request(Method::GET, "/v1/projects", Some("garbage"), None)
        .await
        .assert_problem(401);
    let r = app
        .send(
            app.http
                .get(app.url("/v1/projects"))
                .header("authorization", "Basic Zm9vOmJhcg=="),
        )
        .await;
    r.assert_problem(401);
}

#[tokio::test]
async fn unauthenticated_requests_write_nothing() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    for _ in 0..20 {
        app.request(
            Method::POST,
            "/v1/projects",
            Some("rdev_invalidinvalidinvalid"),
            Some(json!({"name":"x"})),
        )
        .await
        .assert_problem(401);
    }
    let client = app.env.pool.get().await.expect("db");
    let audit: i64 = client
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .expect("q")
        .get(0);
    let projects: i64 = client
        .query_one("SELECT count(*) FROM projects", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!((audit, projects), (0, 0));
}

#[tokio::test]
async fn missing_scope_is_403_and_foreign_project_is_404() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let mine = app.create_project("mine", json!({})).await;
    app.create_project("theirs", json!({})).await;
    let client = app.env.pool.get().await.expect("db");
    let mine_id: uuid::Uuid = client
        .query_one(
            "SELECT id FROM projects WHERE name = $1",
            &[&mine["name"].as_str()],
        )
        .await
        .expect("q")
        .get(0);
    drop(client);

    let reader = key_with(
        &app,
        vec![Scope::ProjectsRead, Scope::CommandsRead],
        Some(vec![mine_id]),
    )
    .await;
    // Reading is allowed, running is not.
    assert_eq!(
        app.request(Method::GET, "/v1/projects/mine", Some(&reader), None)
            .await
            .status,
        200
    );
    let p = app
        .request(
            Method::POST,
            "/v1/projects/mine/commands",
            Some(&reader),
            Some(json!({"command":"true"})),
        )
        .await
        .assert_problem(403);
    assert!(
        p["detail"].as_str().unwrap_or("").contains("commands:run"),
        "{p}"
    );
    app.request(
        Method::POST,
        "/v1/projects",
        Some(&reader),
        Some(json!({"name":"new"})),
    )
    .await
    .assert_problem(403);
    // A project outside the key's restriction does not exist for it.
    app.request(Method::GET, "/v1/projects/theirs", Some(&reader), None)
        .await
        .assert_problem(404);
    let list = app
        .request(Method::GET, "/v1/projects", Some(&reader), None)
        .await
        .json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, vec!["mine"]);
}

#[tokio::test]
async fn not_found_cases_are_problem_json() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.get("/v1/projects/nope").await.assert_problem(404);
    app.get("/v1/commands/not-a-uuid").await.assert_problem(404);
    app.get(&format!("/v1/commands/{}", uuid::Uuid::now_v7()))
        .await
        .assert_problem(404);
    app.get(&format!("/v1/commands/{}/events", uuid::Uuid::now_v7()))
        .await
        .assert_problem(404);
    app.get("/v1/no-such-route").await.assert_problem(404);
    app.post("/v1/projects/nope/commands", json!({"command":"true"}))
        .await
        .assert_problem(404);
    app.request(
        Method::PUT,
        "/v1/projects",
        Some(&app.admin_key.clone()),
        None,
    )
    .await
    .assert_problem(405);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = spawn_app_with(Options {
        worker: false,
        max_body_bytes: 4096,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let big = "x".repeat(10_000);
    app.post(
        "/v1/projects/p/commands",
        json!({"command": "true", "stdin": big}),
    )
    .await
    .assert_problem(413);
}

#[tokio::test]
async fn invalid_input_gets_field_level_422_or_400() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let p = app
        .post("/v1/projects", json!({"name": "Bad_Name"}))
        .await
        .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "name", "{p}");
    let p = app
        .post(
            "/v1/projects",
            json!({"name": "ok", "executor": {"kind": "local", "workdir": "../etc"}}),
        )
        .await
        .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "executor.workdir", "{p}");
    let p = app
        .post("/v1/projects", json!({"name": "ok", "colour": "red"}))
        .await
        .assert_problem(422);
    assert!(p["detail"].as_str().unwrap_or("").contains("colour"), "{p}");
    app.create_project("p", json!({})).await;
    app.post("/v1/projects", json!({"name": "p"}))
        .await
        .assert_problem(409);

    for (body, field) in [
        (json!({}), "command"),
        (json!({"command": "a", "argv": ["b"]}), "command"),
        (json!({"command": "true", "priority": 10}), "priority"),
        (json!({"command": "true", "timeout_s": 0}), "timeout_s"),
        (json!({"argv": []}), "argv"),
        (
            json!({"command": "true", "env": {"BAD-NAME": "x"}}),
            "env.BAD-NAME",
        ),
    ] {
        let p = app
            .post("/v1/projects/p/commands", body.clone())
            .await
            .assert_problem(422);
        assert_eq!(p["errors"][0]["field"], field, "{body} → {p}");
    }
    let r = app
        .send(
            app.http
                .post(app.url("/v1/projects/p/commands"))
                .bearer_auth(&app.admin_key)
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    r.assert_problem(400);
    let r = app
        .send(
            app.http
                .post(app.url("/v1/projects/p/commands"))
                .bearer_auth(&app.admin_key)
                .body("command=true"),
        )
        .await;
    r.assert_problem(415);
    app.get("/v1/commands?status=bogus")
        .await
        .assert_problem(422);
    app.get("/v1/projects?limit=0").await.assert_problem(422);
    app.get("/v1/projects?cursor=***").await.assert_problem(400);
    let queued = app.run("p", json!({"command": "true"})).await;
    let id = queued["id"].as_str().expect("id");
    let p = app
        .get(&format!("/v1/commands/{id}?wait=51"))
        .await
        .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "wait", "{p}");
    for q in ["wait=-1", "wait=soon", "wait=1&colour=red"] {
        app.get(&format!("/v1/commands/{id}?{q}"))
            .await
            .assert_problem(400);
    }
    let r = app
        .send(
            app.http
                .get(app.url(&format!("/v1/commands/{}/events", uuid::Uuid::now_v7())))
                .bearer_auth(&app.admin_key)
                .header("last-event-id", "abc"),
        )
        .await;
    r.assert_problem(400);
}

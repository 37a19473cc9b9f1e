//! Project CRUD and pagination.

use reqwest::Method;
use serde_json::json;

use rdev_tests::{Options, spawn_app_with};

#[tokio::test]
async fn projects_can_be_created_read_updated_and_deleted() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let r = app
        .post(
            "/v1/projects",
            json!({"name": "web", "description": "the site", "env": {"A": "1"}, "max_concurrency": 2,
                   "executor": {"kind": "local", "workdir": "web/src"}}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("location").as_deref(), Some("/v1/projects/web"));
    let p = r.json();
    assert_eq!(
        p["executor"],
        json!({"kind": "local", "workdir": "web/src"})
    );
    assert_eq!(p["max_concurrency"], 2);
    assert_eq!(p["default_timeout_s"], 3600);

    let r = app
        .request(
            Method::PATCH,
            "/v1/projects/web",
            Some(&app.admin_key.clone()),
            Some(json!({"description": "new", "max_concurrency": null})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let p = r.json();
    assert_eq!(p["description"], "new");
    assert_eq!(p["max_concurrency"], serde_json::Value::Null);
    assert_eq!(p["env_names"], json!(["A"]), "absent fields are kept");

    let r = app
        .request(
            Method::DELETE,
            "/v1/projects/web",
            Some(&app.admin_key.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    app.get("/v1/projects/web").await.assert_problem(404);
    // The name can be used again.
    app.create_project("web", json!({})).await;

    let client = app.env.pool.get().await.expect("db");
    let actions: Vec<String> = client
        .query("SELECT action FROM audit_log ORDER BY id", &[])
        .await
        .expect("q")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        [
            "project.create",
            "project.update",
            "project.delete",
            "project.create"
        ]
    );
}

#[tokio::test]
async fn project_list_pages_with_a_cursor() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    for i in 0..7 {
        app.create_project(&format!("p{i}"), json!({})).await;
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let page = app.get(&format!("/v1/projects?limit=3{q}")).await.json();
        pages += 1;
        for p in page["items"].as_array().expect("items") {
            names.push(p["name"].as_str().expect("name").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn a_project_change_is_seen_by_another_instance_within_a_second() {
    let mut app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("shared", json!({"description": "before"}))
        .await;
    let other = app.spawn_api().await;
    let get_other = || {
        app.send(
            app.http
                .get(format!("{other}/v1/projects/shared"))
                .bearer_auth(&app.admin_key),
        )
    };
    // Warm the other instance's cache.
    assert_eq!(get_other().await.json()["description"], "before");
    assert_eq!(get_other().await.json()["description"], "before");
    let r = app
        .request(
            Method::PATCH,
            "/v1/projects/shared",
            Some(&app.admin_key.clone()),
            Some(json!({"description": "after"})),
        )
        .await;
    assert_eq!(r.status, 200);
    let changed = std::time::Instant::now();
    loop {
        if get_other().await.json()["description"] == "after" {
            break;
        }
        assert!(
            changed.elapsed() < std::time::Duration::from_secs(1),
            "stale project after 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A deleted project disappears there too.
    let r = app
        .request(
            Method::DELETE,
            "/v1/projects/shared",
            Some(&app.admin_key.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let deleted = std::time::Instant::now();
    while get_other().await.status != 404 {
        assert!(
            deleted.elapsed() < std::time::Duration::from_secs(1),
            "deleted project still served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

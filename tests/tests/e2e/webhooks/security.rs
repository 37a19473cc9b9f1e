//! Who may send where: SSRF targets refused, and a project-restricted key
//! sees only its projects' webhooks.

use reqwest::Method;
use serde_json::json;

use rdev_tests::{Options, spawn_app_with};

use super::{create_webhook, id_of};

#[tokio::test]
async fn ssrf_targets_are_refused_with_problem_json() {
    let app = spawn_app_with(Options {
        worker: false,
        webhook_allow_private: false,
        ..Options::default()
    })
    .await;
    for url in [
        "http://127.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.64.0.1/",
        "http://localhost:8080/",
        "ftp://example.com/",
    ] {
        let r = app
            .post("/v1/webhooks", json!({"url": url, "events": ["*"]}))
            .await;
        let p = r.assert_problem(422);
        assert_eq!(p["errors"][0]["field"], "url", "{url}: {p}");
    }
    // A public literal is accepted; changing it to an internal one is not.
    let w = create_webhook(&app, json!({"url": "http://1.1.1.1/hook", "events": ["*"]})).await;
    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/webhooks/{}", id_of(&w)),
            Some(&app.admin_key),
            Some(json!({"url": "http://192.168.0.10/"})),
        )
        .await;
    assert_eq!(r.assert_problem(422)["errors"][0]["field"], "url");
    let r = app
        .post(
            "/v1/webhooks",
            json!({"url": "https://example.com/", "events": ["command.queued"], "bogus": 1}),
        )
        .await;
    assert!(r.status == 422 || r.status == 400, "{}", r.status);
    let r = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://1.1.1.1/", "events": ["command.queued"], "secret": "x"}),
        )
        .await;
    let p = r.assert_problem(422);
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, vec!["events[0]", "secret"], "{p}");
}

#[tokio::test]
async fn a_project_restricted_key_sees_only_its_projects_webhooks() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.create_project("mine", json!({})).await;
    app.create_project("theirs", json!({})).await;
    let global = create_webhook(
        &app,
        json!({"url": "http://127.0.0.1:9/a", "events": ["*"]}),
    )
    .await;
    let theirs = create_webhook(
        &app,
        json!({"url": "http://127.0.0.1:9/b", "events": ["*"], "project": "theirs"}),
    )
    .await;
    let own = create_webhook(
        &app,
        json!({"url": "http://127.0.0.1:9/c", "events": ["*"], "project": "mine"}),
    )
    .await;

    let c = app.env.pool.get().await.expect("db");
    let project_id: uuid::Uuid = c
        .query_one("SELECT id FROM projects WHERE name = 'mine'", &[])
        .await
        .expect("project")
        .get(0);
    let k = rdev_shared::secret::generate_key();
    rdev_shared::db::keys::insert(
        &c,
        &rdev_shared::db::keys::NewKey {
            name: "restricted".into(),
            prefix: k.prefix.clone(),
            hash: k.hash,
            scopes: vec![rdev_shared::domain::Scope::WebhooksManage],
            project_ids: Some(vec![project_id]),
        },
    )
    .await
    .expect("key");
    let key = k.secret;

    let r = app
        .request(Method::GET, "/v1/webhooks", Some(&key), None)
        .await;
    let ids: Vec<String> = r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, vec![id_of(&own)]);
    for other in [&global, &theirs] {
        let r = app
            .request(
                Method::GET,
                &format!("/v1/webhooks/{}", id_of(other)),
                Some(&key),
                None,
            )
            .await;
        r.assert_problem(404);
    }
    let r = app
        .request(
            Method::POST,
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": "http://127.0.0.1:9/d", "events": ["*"]})),
        )
        .await;
    r.assert_problem(403);
    let r = app
        .request(
            Method::POST,
            "/v1/webhooks",
            Some(&key),
            Some(json!({"url": "http://127.0.0.1:9/d", "events": ["*"], "project": "theirs"})),
        )
        .await;
    assert_eq!(r.assert_problem(422)["errors"][0]["field"], "project");
}

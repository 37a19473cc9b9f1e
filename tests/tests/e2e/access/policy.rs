//! Per-project command policy, checked at enqueue.

use reqwest::Method;
use serde_json::json;

use rdev_tests::spawn_app_with;

use super::{no_worker, wait_rows};

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

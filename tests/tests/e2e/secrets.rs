//! Project secrets end to end: set/list/delete through the API, given to
//! the commands that name them (environment, files in a private tmpfs),
//! never to others, rotated for new commands, and redacted from every place
//! output or command data shows up (stored output, SSE, `/output`, webhook
//! payloads, audit details, every API answer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest;

use rdev_tests::{Options, Resp, TestApp, spawn_app, spawn_app_with};

const WAIT: Duration = Duration::from_secs(60);

const TOKEN: &str = "tok_9f8E7d6C5b4A-s3cr3t";
const KEY: &str = "-----BEGIN TEST KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQw\n-----END TEST KEY-----";

async fn put_secret(app: &TestApp, key: &str, project: &str, name: &str, value: &str) -> Resp {
    app.request(
        Method::PUT,
        &format!("/v1/projects/{project}/secrets/{name}"),
        Some(key),
        Some(json!({ "value": value })),
    )
    .await
}

async fn set(app: &TestApp, project: &str, name: &str, value: &str) -> Value {
    let r = put_secret(app, &app.admin_key, project, name, value).await;
    assert!(
        r.status == 200 || r.status == 201,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// Every form of the values that must never appear anywhere.
fn forbidden() -> Vec<String> {
    let mut f = vec![TOKEN.to_owned(), STANDARD.encode(TOKEN), KEY.to_owned()];
    f.extend(KEY.lines().map(str::to_owned));
    f.push(STANDARD.encode(KEY));
    // As `base64` prints it: 76 columns a line.
    f.extend(
        STANDARD
            .encode(KEY)
            .as_bytes()
            .chunks(76)
            .filter(|l| l.len() >= 8)
            .map(|l| String::from_utf8_lossy(l).into_owned()),
    );
    f
}

fn assert_clean(what: &str, text: &str) {
    for f in forbidden() {
        assert!(!text.contains(&f), "{what} shows {f:?}:\n{text}");
    }
}

/// A webhook receiver that records bodies.
async fn receiver() -> (String, Arc<Mutex<Vec<Bytes>>>, tokio::task::JoinHandle<()>) {
    async fn record(State(hits): State<Arc<Mutex<Vec<Bytes>>>>, body: Bytes) -> &'static str {
        hits.lock().expect("hits").push(body);
        "ok"
    }
    let hits: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let app = Router::new().fallback(record).with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hits, task)
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn a_secret_never_shows_in_output_events_webhooks_audit_or_answers() {
    let app = spawn_app_with(Options {
        dispatcher: true,
        ..Default::default()
    })
    .await;
    let (url, hits, _rx) = receiver().await;
    let r = app
        .post("/v1/webhooks", json!({"url": url, "events": ["*"]}))
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    app.create_project("app", json!({})).await;
    let mut answers = vec![
        set(&app, "app", "TOKEN", TOKEN).await,
        set(&app, "app", "SIGNING_KEY", KEY).await,
    ];
    assert_eq!(answers[0]["version"], 1);
    assert_eq!(answers[0]["set_by"], "test-admin");

    // The token one character per write (a separate read each, so separate
    // chunks), on stdout and stderr; the multi-line key whole and line by
    // line through `while read`; both in base64; the key as a file too.
    let script = r#"
        i=1; n=${#TOKEN}
        while [ $i -le $n ]; do printf '%s' "$(printf '%s' "$TOKEN" | cut -c$i)"; sleep 0.02; i=$((i+1)); done
        echo
        printf 'err:%s\n' "$TOKEN" >&2
        printf '%s\n' "$SIGNING_KEY"
        printf '%s\n' "$SIGNING_KEY" | while IFS= read -r line; do echo "line: $line"; done
        printf '%s' "$TOKEN" | base64
        printf '%s' "$SIGNING_KEY" | base64
        printf 'user:%s' "$TOKEN" | base64
        echo "dir=$RDEV_SECRETS_DIR"
        stat -c 'mode=%a' /run/secrets/keys/signing.pem
        cat /run/secrets/keys/signing.pem; echo
        echo end-marker
    "#;
    let c = app
        .run(
            "app",
            json!({"command": script, "secrets": ["TOKEN", "SIGNING_KEY"],
                   "secret_files": {"SIGNING_KEY": "keys/signing.pem"}}),
        )
        .await;
    let id = id_of(&c);
    answers.push(c);
    let done = app.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let stdout = String::from_utf8_lossy(&app.output(&id, Some("stdout")).await).into_owned();
    let stderr = String::from_utf8_lossy(&app.output(&id, Some("stderr")).await).into_owned();
    let all = String::from_utf8_lossy(&app.output(&id, None).await).into_owned();
    assert!(stdout.contains("end-marker"), "{stdout}");
    assert!(stdout.starts_with("***TOKEN***\n"), "{stdout}");
    assert!(stdout.contains("***SIGNING_KEY***"), "{stdout}");
    assert!(stdout.contains("line: ***SIGNING_KEY***"), "{stdout}");
    assert!(stdout.contains("dir=/run/secrets"), "{stdout}");
    assert!(stdout.contains("mode=400"), "{stdout}");
    assert_eq!(stderr, "err:***TOKEN***\n");
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr), ("output", &all)] {
        assert_clean(what, text);
    }

    let events = app.events(&id, None, None).await;
    let mut sse = String::new();
    for e in &events {
        sse.push_str(&e.data.to_string());
    }
    assert!(sse.contains("end-marker"), "{sse}");
    assert_clean("SSE", &sse);

    // Webhooks: started + succeeded of the command.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let bodies: Vec<String> = hits
            .lock()
            .expect("hits")
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        if bodies.iter().any(|b| b.contains("command.succeeded")) {
            for b in &bodies {
                assert_clean("webhook", b);
            }
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no webhook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Audit: which command used which secret and version; no value.
    let audit = app.get("/v1/audit?action=secret.use").await;
    assert_eq!(audit.status, 200);
    let entries = audit.json();
    let entry = entries["items"]
        .as_array()
        .and_then(|i| i.iter().find(|e| e["target_id"] == id.as_str()))
        .unwrap_or_else(|| panic!("no secret.use entry: {entries}"))
        .clone();
    let used = entry["details"]["secrets"].as_array().expect("secrets");
    let by_name: HashMap<&str, &Value> = used
        .iter()
        .map(|u| (u["name"].as_str().expect("name"), u))
        .collect();
    assert_eq!(by_name["TOKEN"]["version"], 1);
    assert_eq!(by_name["TOKEN"]["env"], true);
    assert_eq!(by_name["SIGNING_KEY"]["file"], "keys/signing.pem");
    for path in [
        "/v1/audit",
        &format!("/v1/commands/{id}"),
        "/v1/commands",
        "/v1/projects/app",
        "/v1/projects/app/secrets",
        "/v1/projects/app/secrets/TOKEN",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_clean(path, &String::from_utf8_lossy(&r.body));
    }
    for a in &answers {
        assert_clean("answer", &a.to_string());
    }
    let list = app.get("/v1/projects/app/secrets").await.json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["SIGNING_KEY", "TOKEN"]);
    assert!(list["items"][0].get("value").is_none());
}

#[tokio::test]
async fn a_command_cannot_read_a_secret_it_did_not_name() {
    let app = spawn_app().await;
    app.create_project("app", json!({})).await;
    set(&app, "app", "TOKEN", TOKEN).await;
    // One command holds the secret (env and file) while another, which did
    // not name it, looks everywhere it could be.
    let holder = app
        .run(
            "app",
            json!({"command": "echo holding; sleep 30", "secrets": ["TOKEN"],
                   "secret_files": {"TOKEN": "token"}}),
        )
        .await;
    let holder = id_of(&holder);
    app.wait_status(&holder, "running", WAIT).await;
    let snoop = app
        .run(
            "app",
            json!({"command": "env; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; \
                   ls -laR /run /tmp 2>&1; cat /run/secrets/token 2>&1; \
                   grep -rl tok_9f8E7d6C5b4A /workspace /tmp 2>/dev/null; echo snoop-done"}),
        )
        .await;
    let snoop = id_of(&snoop);
    let done = app.wait_terminal(&snoop, WAIT).await;
    assert_eq!(done["reason"], "exited", "{done}");
    let out = String::from_utf8_lossy(&app.output(&snoop, None).await).into_owned();
    assert!(out.contains("snoop-done"), "{out}");
    // Raw value and its name: no redaction applies to this command, so the
    // value is truly absent, not hidden.
    assert!(!out.contains(TOKEN), "{out}");
    assert!(!out.contains("TOKEN="), "{out}");
    assert!(!out.contains("RDEV_SECRETS_DIR"), "{out}");
    assert!(!out.contains("***TOKEN***"), "{out}");
    let r = app
        .post(&format!("/v1/commands/{holder}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 202);
    app.wait_terminal(&holder, WAIT).await;
}

/// Runs a command that prints the SHA-256 of `$TOKEN` (a hash is not
/// redacted); returns its id and output.
async fn hashed_token(app: &TestApp) -> (String, String) {
    let c = app
        .run(
            "app",
            json!({"command": "printf %s \"$TOKEN\" | sha256sum", "secrets": ["TOKEN"]}),
        )
        .await;
    let id = id_of(&c);
    let done = app.wait_terminal(&id, WAIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let out = String::from_utf8_lossy(&app.output(&id, None).await).into_owned();
    (id, out)
}

#[tokio::test]
async fn rotation_takes_effect_for_commands_that_start_after_it() {
    let app = spawn_app().await;
    app.create_project("app", json!({})).await;
    let v1 = "first-version-value";
    let v2 = "second-version-value";
    set(&app, "app", "TOKEN", v1).await;
    let hash_of = |v: &str| {
        sha2::Sha256::digest(v.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (first, out) = hashed_token(&app).await;
    assert!(out.starts_with(&hash_of(v1)), "{out}");
    let meta = set(&app, "app", "TOKEN", v2).await;
    assert_eq!(meta["version"], 2);
    let (second, out) = hashed_token(&app).await;
    assert!(out.starts_with(&hash_of(v2)), "{out}");
    // The audit log says which version each command got.
    let audit = app.get("/v1/audit?action=secret.use").await.json();
    let version = |id: &str| {
        audit["items"]
            .as_array()
            .and_then(|i| i.iter().find(|e| e["target_id"] == id))
            .map(|e| e["details"]["secrets"][0]["version"].clone())
    };
    assert_eq!(version(&first), Some(json!(1)), "{audit}");
    assert_eq!(version(&second), Some(json!(2)), "{audit}");
}

#[tokio::test]
async fn a_secret_deleted_while_its_command_is_queued_fails_it_at_start() {
    let mut app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("app", json!({})).await;
    set(&app, "app", "TOKEN", TOKEN).await;
    let c = app
        .run("app", json!({"command": "echo ran", "secrets": ["TOKEN"]}))
        .await;
    let r = app
        .request(
            Method::DELETE,
            "/v1/projects/app/secrets/TOKEN",
            Some(&app.admin_key.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    app.start_worker(1, tokio_util::sync::CancellationToken::new());
    let done = app.wait_terminal(&id_of(&c), WAIT).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["reason"], "failed_to_start", "{done}");
    assert!(
        done["error"].as_str().unwrap_or("").contains("TOKEN"),
        "{done}"
    );
    assert!(app.output(&id_of(&c), None).await.is_empty());
    // Set again: the version continues (the audit's versions stay unique).
    let meta = set(&app, "app", "TOKEN", "a-new-value-after-delete").await;
    assert_eq!(meta["version"], 2);
}

#[tokio::test]
async fn the_api_checks_secrets_scope_values_names_policy_and_executor() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("app", json!({})).await;
    app.create_project(
        "kube",
        json!({"executor": {"kind": "kubernetes", "namespace": "ns", "selector": "app=x"}}),
    )
    .await;
    app.create_project("strict", json!({"allowed_secrets": ["ALLOWED"]}))
        .await;
    let admin = app.admin_key.clone();

    // Scope: secrets:manage (commands:run and projects:write are not enough).
    let (_, runner) = app
        .create_key(json!({"name": "runner", "scopes": ["commands:run", "projects:write"]}))
        .await;
    put_secret(&app, &runner, "app", "TOKEN", TOKEN)
        .await
        .assert_problem(403);
    let r = app
        .request(Method::GET, "/v1/projects/app/secrets", Some(&runner), None)
        .await;
    r.assert_problem(403);
    let (_, manager) = app
        .create_key(json!({"name": "manager", "scopes": ["secrets:manage"], "projects": ["app"]}))
        .await;
    let r = put_secret(&app, &manager, "app", "TOKEN", TOKEN).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["set_by"], "manager");
    let r = put_secret(&app, &manager, "app", "TOKEN", "another-value").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], 2);
    // A project-restricted key sees other projects as absent.
    put_secret(&app, &manager, "strict", "TOKEN", TOKEN)
        .await
        .assert_problem(404);

    // Values: at least 6 bytes; names: environment variable names, not reserved.
    let p = put_secret(&app, &admin, "app", "SHORT", "12345")
        .await
        .assert_problem(422);
    assert_eq!(p["errors"][0]["field"], "value", "{p}");
    for bad in ["1ABC", "A-B", "LD_PRELOAD", "PATH"] {
        put_secret(&app, &admin, "app", bad, TOKEN)
            .await
            .assert_problem(422);
    }
    let r = app
        .request(
            Method::PUT,
            "/v1/projects/app/secrets/TOKEN",
            Some(&admin),
            Some(json!({"value": TOKEN, "extra": 1})),
        )
        .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.status);
    app.request(
        Method::DELETE,
        "/v1/projects/app/secrets/NOPE",
        Some(&admin),
        None,
    )
    .await
    .assert_problem(404);

    // A project name no project can have (NUL, upper case) is a 404, not a
    // database error.
    for path in [
        "/v1/projects/%00/secrets",
        "/v1/projects/%00",
        "/v1/projects/Bad%00Name/files?list",
    ] {
        app.get(path).await.assert_problem(404);
    }

    // Enqueue: unknown secrets, policy, executor, bad paths, clashes.
    let run = |project: &'static str, body: Value| {
        let app = &app;
        async move {
            app.post(&format!("/v1/projects/{project}/commands"), body)
                .await
        }
    };
    run("app", json!({"command": "true", "secrets": ["MISSING"]}))
        .await
        .assert_problem(422);
    set(&app, "strict", "TOKEN", TOKEN).await;
    set(&app, "strict", "ALLOWED", TOKEN).await;
    let p = run("strict", json!({"command": "true", "secrets": ["TOKEN"]}))
        .await
        .assert_problem(403);
    assert!(p["detail"].as_str().unwrap_or("").contains("TOKEN"), "{p}");
    let r = run("strict", json!({"command": "true", "secrets": ["ALLOWED"]})).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    // Kubernetes: environment secrets of non-interactive commands only
    // (they travel on the exec's stdin, ahead of the command's input).
    set(&app, "kube", "TOKEN", TOKEN).await;
    let r = run("kube", json!({"command": "true", "secrets": ["TOKEN"]})).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let p = run(
        "kube",
        json!({"command": "true", "secret_files": {"TOKEN": "token"}}),
    )
    .await
    .assert_problem(422);
    assert!(p.to_string().contains("kubernetes"), "{p}");
    for interactive in [
        json!({"command": "sh", "secrets": ["TOKEN"], "stdin": "pipe"}),
        json!({"command": "sh", "secrets": ["TOKEN"], "tty": {"cols": 80, "rows": 24}}),
    ] {
        run("kube", interactive).await.assert_problem(422);
    }
    for files in [
        json!({"TOKEN": "../escape"}),
        json!({"TOKEN": "/abs"}),
        json!({"TOKEN": "a//b"}),
        json!({"TOKEN": ""}),
    ] {
        run("app", json!({"command": "true", "secret_files": files}))
            .await
            .assert_problem(422);
    }
    run(
        "app",
        json!({"command": "true", "secrets": ["TOKEN"], "env": {"TOKEN": "x"}}),
    )
    .await
    .assert_problem(422);
    run(
        "app",
        json!({"command": "true", "secrets": ["TOKEN", "TOKEN"]}),
    )
    .await
    .assert_problem(422);

    // allowed_secrets is containment: projects:admin sets it.
    let (_, writer) = app
        .create_key(json!({"name": "writer", "scopes": ["projects:write"]}))
        .await;
    app.request(
        Method::PATCH,
        "/v1/projects/app",
        Some(&writer),
        Some(json!({"allowed_secrets": ["TOKEN"]})),
    )
    .await
    .assert_problem(403);
    let r = app
        .request(
            Method::PATCH,
            "/v1/projects/app",
            Some(&admin),
            Some(json!({"allowed_secrets": ["TOKEN"]})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["allowed_secrets"], json!(["TOKEN"]));

    // Deleting a project erases its secrets' values.
    let r = app
        .request(Method::DELETE, "/v1/projects/strict", Some(&admin), None)
        .await;
    assert_eq!(r.status, 204);
    let client = app.env.pool.get().await.expect("db");
    let live: i64 = client
        .query_one(
            "SELECT count(*) FROM project_secrets s JOIN projects p ON p.id = s.project_id \
             WHERE p.name = 'strict' AND s.value IS NOT NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(live, 0);
}

/// A terminal merges stdout and stderr and turns `\n` into `\r\n`; it also
/// echoes what is typed. Its output goes through the same redactor: the
/// attach WebSocket and the stored output show names, never values.
#[tokio::test]
async fn a_terminal_and_its_echo_are_redacted_on_the_websocket_and_in_storage() {
    let app = spawn_app().await;
    app.create_project("app", json!({})).await;
    set(&app, "app", "TOKEN", TOKEN).await;
    set(&app, "app", "SIGNING_KEY", KEY).await;
    let c = app
        .run(
            "app",
            json!({"command": "sh -i", "tty": {"cols": 80, "rows": 24},
                   "secrets": ["TOKEN", "SIGNING_KEY"]}),
        )
        .await;
    let id = id_of(&c);
    let mut a = crate::interactive::Attached::open(&app, &id, 0).await;
    // Printed by the command, one character per write, and multi-line.
    a.send_bytes(
        b"i=1; while [ $i -le ${#TOKEN} ]; do printf '%s' \"$(printf '%s' \"$TOKEN\" | cut -c$i)\"; i=$((i+1)); done; echo\r",
    )
    .await;
    a.send_bytes(b"printf '%s\\n' \"$SIGNING_KEY\"; printf '%s' \"$TOKEN\" | base64\r")
        .await;
    // Typed by the user: the terminal echoes it back, in pieces.
    for piece in TOKEN.as_bytes().chunks(3) {
        a.send_bytes(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.send_bytes(b"\recho done-$((6*7))\r").await;
    a.read_until(Some("done-42\r\n"), None).await;
    a.send_bytes(b"exit\r").await;
    a.read_until(None, Some("end")).await;
    let ws = a.text();
    assert!(ws.contains("***TOKEN***"), "{ws}");
    assert!(ws.contains("***SIGNING_KEY***"), "{ws}");
    assert_clean("WebSocket", &ws);
    app.wait_terminal(&id, WAIT).await;
    let stored = String::from_utf8_lossy(&app.output(&id, None).await).into_owned();
    assert_clean("stored terminal output", &stored);
    assert!(stored.contains("done-42"), "{stored}");
}

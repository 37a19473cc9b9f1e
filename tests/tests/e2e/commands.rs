//! Running commands end to end: output, exit codes, timeouts, truncation,
//! idempotency, duplicate delivery, environment scrubbing, and the outbox.

use std::collections::BTreeSet;
use std::time::Duration;

use rdev_shared::mq::Publisher;
use rdev_shared::relay;
use serde_json::json;

use rdev_tests::{Options, sleep_marker, spawn_app, spawn_app_with, wait_no_marked};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn stdout_stderr_and_exit_codes_are_recorded_exactly() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;

    let ok = app
        .run(
            "p",
            json!({"command": "printf 'a\\n'; printf 'b\\n' >&2; printf 'c'"}),
        )
        .await;
    let bad = app
        .run(
            "p",
            json!({"command": "echo before; echo oops >&2; exit 3"}),
        )
        .await;
    let argv = app
        .run("p", json!({"argv": ["cat"], "stdin": "from stdin\n"}))
        .await;
    assert_eq!(ok["status"], "queued");

    let ok = app
        .wait_terminal(ok["id"].as_str().expect("id"), WAIT)
        .await;
    assert_eq!(
        (ok["status"].as_str(), ok["exit_code"].as_i64()),
        (Some("succeeded"), Some(0)),
        "{ok}"
    );
    let id = ok["id"].as_str().expect("id");
    assert_eq!(app.output(id, Some("stdout")).await, b"a\nc");
    assert_eq!(app.output(id, Some("stderr")).await, b"b\n");
    assert_eq!(ok["output_bytes"], 5);
    assert!(ok["started_at"].is_string() && ok["finished_at"].is_string());

    let bad = app
        .wait_terminal(bad["id"].as_str().expect("id"), WAIT)
        .await;
    assert_eq!(
        (bad["status"].as_str(), bad["exit_code"].as_i64()),
        (Some("failed"), Some(3)),
        "{bad}"
    );
    let id = bad["id"].as_str().expect("id");
    assert_eq!(app.output(id, Some("stdout")).await, b"before\n");
    assert_eq!(app.output(id, Some("stderr")).await, b"oops\n");

    let argv = app
        .wait_terminal(argv["id"].as_str().expect("id"), WAIT)
        .await;
    assert_eq!(argv["status"], "succeeded");
    assert_eq!(argv["argv"], json!(["cat"]));
    assert_eq!(
        app.output(argv["id"].as_str().expect("id"), None).await,
        b"from stdin\n"
    );

    // Listing filters by project and status.
    let failed = app.get("/v1/commands?project=p&status=failed").await.json();
    let ids: Vec<&str> = failed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id]);
    let all = app.get("/v1/commands?limit=2").await.json();
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    let next = all["next_cursor"].as_str().expect("cursor");
    let rest = app
        .get(&format!("/v1/commands?limit=2&cursor={next}"))
        .await
        .json();
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_every_process_it_started() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    // Background children, in the group or not, must die too.
    let m = sleep_marker();
    let c = app
        .run(
            "p",
            json!({"command": format!("sleep {m} & setsid sleep {m} & sleep {m}"), "timeout_s": 1}),
        )
        .await;
    let c = app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await;
    assert_eq!(c["status"], "timed_out", "{c}");
    assert!(
        c["error"].as_str().is_some_and(|e| e.contains("timed out")),
        "{c}"
    );
    assert_eq!(c["reason"], "timed_out", "{c}");
    wait_no_marked(&m).await;
}

#[tokio::test]
async fn output_over_the_limit_keeps_head_and_tail_and_the_command_finishes() {
    let app = spawn_app().await;
    app.create_project("p", json!({"max_output_bytes": 1000}))
        .await;
    // ~109 KB in many writes; exit code proves the process ran to the end.
    let c = app
        .run("p", json!({"command": "seq 1 20000; exit 7"}))
        .await;
    let c = app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await;
    assert_eq!(
        (c["status"].as_str(), c["exit_code"].as_i64()),
        (Some("failed"), Some(7)),
        "{c}"
    );
    assert_eq!(c["truncated"], true);
    let full: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(c["output_bytes"].as_u64(), Some(full.len() as u64));

    let out =
        String::from_utf8(app.output(c["id"].as_str().expect("id"), None).await).expect("utf8");
    let marker = out.find("\n[rdev: output truncated").expect("gap marker");
    let end_marker = marker + out[marker + 1..].find('\n').expect("marker line") + 2;
    let (head, tail) = (&out[..marker], &out[end_marker..]);
    assert!(!head.is_empty() && !tail.is_empty(), "{out}");
    assert!(
        head.len() + tail.len() <= 1000,
        "stored {} bytes",
        head.len() + tail.len()
    );
    assert!(full.starts_with(head), "head is the start of the output");
    assert!(
        full.ends_with(tail),
        "tail is the end of the output: {tail:?}"
    );
    assert!(tail.ends_with("19999\n20000\n"));
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_command() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let send = || {
        app.send(
            app.http
                .post(app.url("/v1/projects/p/commands"))
                .bearer_auth(&app.admin_key)
                .header("Idempotency-Key", "deploy-42")
                .json(&json!({"command": "make deploy"})),
        )
    };
    let first = send().await;
    let second = send().await;
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(first.json()["id"], second.json()["id"]);
    assert_eq!(first.header("location"), second.header("location"));
    assert_eq!(
        second.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert!(first.header("idempotent-replayed").is_none());
    let client = app.env.pool.get().await.expect("db");
    let n: i64 = client
        .query_one("SELECT count(*) FROM commands", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(n, 1);
}

/// Issue 15: a reused Idempotency-Key with a different request is a client
/// bug, answered 422 (as Stripe does), not with the first command.
#[tokio::test]
async fn an_idempotency_key_reused_with_another_request_is_refused() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let send = |body: serde_json::Value| {
        app.send(
            app.http
                .post(app.url("/v1/projects/p/commands"))
                .bearer_auth(&app.admin_key)
                .header("Idempotency-Key", "deploy-43")
                .json(&body),
        )
    };
    let first = send(json!({"command": "make deploy"})).await;
    assert_eq!(first.status, 202);
    for other in [
        json!({"command": "make deploy-prod"}),
        json!({"command": "make deploy", "priority": 9}),
        json!({"command": "make deploy", "env": {"A": "1"}}),
    ] {
        let p = send(other).await.assert_problem(422);
        assert!(p.to_string().contains("Idempotency-Key"), "{p}");
    }
    // The same request still replays.
    let again = send(json!({"command": "make deploy"})).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["id"], first.json()["id"]);
}

#[tokio::test]
async fn a_message_delivered_twice_runs_the_command_once() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    // The project's workdir (`p` under the workspace root) is where the
    // sandboxed command may write.
    let marker = app.workspace.join("p/ran.txt");
    let c = app
        .run("p", json!({"command": "echo ran >> ran.txt"}))
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    app.wait_terminal(&id, WAIT).await;

    // Redeliver the same run message twice more, then run a sentinel after it
    // with the lowest priority so the duplicates are consumed first.
    let publisher = Publisher::new(app.env.amqp.clone(), "test");
    let msg = app.env.topology.run_message(id.parse().expect("uuid"), 9);
    publisher.publish_confirmed(&msg).await.expect("publish");
    publisher.publish_confirmed(&msg).await.expect("publish");
    let sentinel = app
        .run("p", json!({"command": "true", "priority": 0}))
        .await;
    app.wait_terminal(sentinel["id"].as_str().expect("id"), WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "ran\n");
    let c = app.get(&format!("/v1/commands/{id}")).await.json();
    assert_eq!(c["status"], "succeeded");
    let client = app.env.pool.get().await.expect("db");
    let attempt: i32 = client
        .query_one(
            "SELECT attempt FROM commands WHERE id = $1",
            &[&id.parse::<uuid::Uuid>().expect("uuid")],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(attempt, 1);
}

#[tokio::test]
async fn commands_do_not_inherit_the_workers_environment() {
    let app = spawn_app().await;
    app.create_project(
        "p",
        json!({"env": {"FROM_PROJECT": "p", "SHARED": "project"}}),
    )
    .await;
    let c = app
        .run(
            "p",
            json!({"command": "env", "env": {"FROM_COMMAND": "c", "SHARED": "command"}}),
        )
        .await;
    let c = app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await;
    assert_eq!(c["status"], "succeeded");
    let out =
        String::from_utf8(app.output(c["id"].as_str().expect("id"), None).await).expect("utf8");
    let vars: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let allowed: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "LANG",
        "PWD",
        "SHLVL",
        "_",
        "FROM_PROJECT",
        "FROM_COMMAND",
        "SHARED",
    ]
    .into();
    assert!(
        vars.is_subset(&allowed),
        "unexpected variables: {:?}",
        vars.difference(&allowed).collect::<Vec<_>>()
    );
    assert!(
        out.contains("SHARED=command\n"),
        "the command's env overrides the project's"
    );
    assert!(out.contains("FROM_PROJECT=p\n"));
    for secret in [
        "DATABASE_URL",
        "AMQP_URL",
        "RDEV_TEST_DATABASE_URL",
        "CARGO_MANIFEST_DIR",
    ] {
        assert!(!vars.contains(secret), "{secret} leaked");
    }
}

/// Once its run message is confirmed, each command's outbox row is marked
/// published (by the API's marker, a moment after the publish), so the
/// relay does not publish it again.
#[tokio::test]
async fn published_run_messages_are_marked_in_the_outbox() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let c = app.run("p", json!({"command": "true"})).await;
        ids.push(c["id"].as_str().expect("id").to_owned());
    }
    let client = app.env.pool.get().await.expect("db");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let unmarked: i64 = client
            .query_one(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL \
                 AND exchange LIKE '%.commands'",
                &[],
            )
            .await
            .expect("q")
            .get(0);
        if unmarked == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unmarked} run messages still unmarked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        assert_eq!(app.wait_terminal(id, WAIT).await["status"], "succeeded");
    }
}

#[tokio::test]
async fn enqueue_survives_a_broker_that_refuses_the_publish() {
    // The API's broker is unreachable; the worker's is real.
    let app = spawn_app_with(Options {
        api_amqp_url: Some("amqp://guest:guest@127.0.0.1:1/%2f".into()),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "echo delivered"})).await;
    let id: uuid::Uuid = c["id"].as_str().expect("id").parse().expect("uuid");

    let client = app.env.pool.get().await.expect("db");
    let unpublished: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(unpublished, 1, "the command's message waits in the outbox");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.get(&format!("/v1/commands/{id}")).await.json()["status"],
        "queued"
    );

    // The relay, with a working broker, publishes it and the command runs.
    let publisher = Publisher::new(app.env.amqp.clone(), "relay");
    let pass = relay::relay_once(&app.env.pool, &publisher, Duration::ZERO, 100)
        .await
        .expect("relay");
    assert_eq!(pass.published, 1);
    assert_eq!(pass.failed, None);
    let c = app.wait_terminal(&id.to_string(), WAIT).await;
    assert_eq!(c["status"], "succeeded");
    assert_eq!(app.output(&id.to_string(), None).await, b"delivered\n");
    let unpublished: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND exchange LIKE '%.commands'",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(unpublished, 0);
}

#[tokio::test]
async fn the_dispatcher_relays_what_the_api_could_not_publish() {
    let app = spawn_app_with(Options {
        api_amqp_url: Some("amqp://guest:guest@127.0.0.1:1/%2f".into()),
        dispatcher: true,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "echo via-relay"})).await;
    let c = app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await;
    assert_eq!(c["status"], "succeeded");
    assert_eq!(
        app.output(c["id"].as_str().expect("id"), None).await,
        b"via-relay\n"
    );
}

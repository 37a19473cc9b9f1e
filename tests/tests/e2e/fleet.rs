//! Fleet semantics: priorities, cancel, lost workers, graceful shutdown.

use std::process::Stdio;
use std::time::Duration;

use futures::FutureExt;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use rdev_tests::{Options, first_line, sleep_marker, spawn_app_with, wait_no_marked};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_later_high_priority_command_starts_before_earlier_low_ones() {
    let app = spawn_app_with(Options {
        concurrency: 1,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    // Keep the only slot busy while the queue fills.
    let blocker = app.run("p", json!({"command": "sleep 1"})).await;
    app.wait_status(blocker["id"].as_str().expect("id"), "running", WAIT)
        .await;
    let mut low = Vec::new();
    for _ in 0..3 {
        low.push(
            app.run("p", json!({"command": "true", "priority": 1}))
                .await,
        );
    }
    let high = app
        .run("p", json!({"command": "true", "priority": 9}))
        .await;

    let high = app
        .wait_terminal(high["id"].as_str().expect("id"), WAIT)
        .await;
    for l in &low {
        let l = app.wait_terminal(l["id"].as_str().expect("id"), WAIT).await;
        assert!(
            high["started_at"].as_str() < l["started_at"].as_str(),
            "high priority started {} after low {}",
            high["started_at"],
            l["started_at"]
        );
    }
}

#[tokio::test]
async fn a_cancelled_queued_command_never_runs() {
    let mut app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let marker = app.workspace.join("p/ran");
    let c = app.run("p", json!({"command": "touch ran"})).await;
    let id = c["id"].as_str().expect("id").to_owned();
    let r = app
        .post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "cancelled");

    // A worker now receives the message and must skip it; a sentinel after it
    // proves the worker got that far.
    app.start_worker(1, CancellationToken::new());
    let sentinel = app
        .run("p", json!({"command": "true", "priority": 0}))
        .await;
    app.wait_terminal(sentinel["id"].as_str().expect("id"), WAIT)
        .await;
    assert!(!marker.exists(), "a cancelled command ran");
    let c = app.get(&format!("/v1/commands/{id}")).await.json();
    assert_eq!(c["status"], "cancelled");
    assert!(c["started_at"].is_null());

    // Cancelling again is a conflict, and says why.
    let p = app
        .post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await
        .assert_problem(409);
    assert!(
        p["detail"].as_str().unwrap_or("").contains("cancelled"),
        "{p}"
    );
    let client = app.env.pool.get().await.expect("db");
    let audited: i64 = client
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = 'command.cancel'",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn cancelling_a_running_command_stops_every_process_it_started() {
    let app = spawn_app_with(Options::default()).await;
    app.create_project("p", json!({})).await;
    let m = sleep_marker();
    let c = app
        .run(
            "p",
            json!({"command": format!("sleep {m} & setsid sleep {m} & echo started; wait")}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    assert_eq!(first_line(&app, &id).await, "started");
    let r = app
        .post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 202);
    let c = app.wait_terminal(&id, WAIT).await;
    assert_eq!(c["status"], "cancelled", "{c}");
    assert_eq!(c["reason"], "cancelled", "{c}");
    wait_no_marked(&m).await;
    // A finished command cannot be cancelled.
    app.post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await
        .assert_problem(409);
}

#[tokio::test]
async fn a_missed_cancel_broadcast_is_honoured_through_the_heartbeat() {
    let app = spawn_app_with(Options::default()).await;
    app.create_project("p", json!({})).await;
    let m = sleep_marker();
    let c = app
        .run(
            "p",
            json!({"command": format!("sleep {m} & echo started; wait")}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    assert_eq!(first_line(&app, &id).await, "started");
    // Record the request without broadcasting it, as if the message was lost.
    let client = app.env.pool.get().await.expect("db");
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    client
        .execute(
            "UPDATE commands SET cancel_requested_at = now() WHERE id = $1",
            &[&uuid],
        )
        .await
        .expect("q");
    let c = app.wait_terminal(&id, WAIT).await;
    assert_eq!(c["status"], "cancelled", "{c}");
    wait_no_marked(&m).await;
}

#[tokio::test]
async fn api_shutdown_closes_sse_streams_with_a_retry_hint() {
    let mut app = spawn_app_with(Options::default()).await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "echo hi; sleep 300"})).await;
    let id = c["id"].as_str().expect("id").to_owned();
    let stop = CancellationToken::new();
    let (base, task) = app.start_api(stop.clone()).await;
    let (first_output_tx, first_output) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let http = app.http.clone();
        let key = app.admin_key.clone();
        let url = format!("{base}/v1/commands/{id}/events");
        tokio::spawn(async move {
            use eventsource_stream::Eventsource;
            use futures::StreamExt;
            let resp = http.get(url).bearer_auth(key).send().await.expect("sse");
            let mut seen = vec![(format!("HTTP {}", resp.status()), None)];
            let mut events = resp.bytes_stream().eventsource();
            let mut first_output_tx = Some(first_output_tx);
            loop {
                let ev = match events.next().await {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => {
                        seen.push((format!("error: {e}"), None));
                        break;
                    }
                    None => break,
                };
                if ev.event == "output"
                    && let Some(tx) = first_output_tx.take()
                {
                    let _ = tx.send(());
                }
                seen.push((ev.event.clone(), ev.retry));
            }
            seen
        })
    };
    // Stop the instance once the watcher is streaming.
    let streaming = tokio::time::timeout(WAIT, first_output).await;
    if !matches!(streaming, Ok(Ok(()))) {
        let seen = watcher.await.expect("task");
        panic!("the watcher ended before any output: {seen:?}");
    }
    stop.cancel();
    let seen = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("stream closed")
        .expect("task");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("server stopped")
        .expect("task");
    assert!(seen.iter().any(|(e, _)| e == "output"), "{seen:?}");
    assert!(
        !seen.iter().any(|(e, _)| e == "end"),
        "the command did not end: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&("reconnect".to_owned(), Some(Duration::from_millis(500)))),
        "{seen:?}"
    );
    let r = app
        .post(&format!("/v1/commands/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 202);
}

/// Runs a worker in this process when started by
/// `a_killed_worker_is_reaped_and_its_command_never_runs_twice` (which kills it
/// with SIGKILL); does nothing in a normal test run.
#[tokio::test]
async fn worker_process_entry() {
    if std::env::var("RDEV_E2E_WORKER_PROCESS").is_err() {
        return;
    }
    use clap::Parser;
    // The same key ring as the test's own services (rdev-worker's main
    // installs it from RDEV_ENCRYPTION_KEYS).
    let keys = std::env::var("RDEV_ENCRYPTION_KEYS").unwrap_or_default();
    rdev_shared::crypto::install(rdev_shared::crypto::KeyRing::parse(&keys).expect("key ring"));
    let cfg = rdev_worker::Config::parse_from(["rdev-worker"]);
    // Its log goes to the stderr the test keeps, shown if the test fails.
    let _telemetry = rdev_shared::telemetry::init(&cfg.log, "rdev-worker");
    let worker = rdev_worker::start(cfg, rdev_shared::lifecycle::CancellationToken::new())
        .await
        .expect("worker");
    let _ = worker.task.await;
}

#[tokio::test]
async fn a_killed_worker_is_reaped_its_command_dies_with_it_and_never_runs_twice() {
    let lost_after_s = 2;
    let mut app = spawn_app_with(Options {
        worker: false,
        dispatcher: true,
        lost_after_s,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let exe = std::env::current_exe().expect("test binary");
    let leftovers = rdev_tests::KilledWorker::new();
    let log = app.workspace.join("killed-worker.log");
    let mut child = rdev_tests::spawn(
        tokio::process::Command::new(exe)
            .args(["--exact", "fleet::worker_process_entry", "--nocapture"])
            .envs(leftovers.env())
            .env("RDEV_E2E_WORKER_PROCESS", "1")
            .env("RDEV_ENCRYPTION_KEYS", rdev_tests::TEST_ENCRYPTION_KEYS)
            .env("DATABASE_URL", app.env.db.database_url.expose())
            .env("AMQP_URL", app.env.amqp.amqp_url.expose())
            .env("RDEV_AMQP_PREFIX", &app.env.amqp.prefix)
            .env("RDEV_WORKSPACE_ROOT", &app.workspace)
            .env("RDEV_LISTEN", "127.0.0.1:0")
            .env("RDEV_HEARTBEAT_S", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the worker's log"))
            .kill_on_drop(true),
    )
    .expect("worker process");

    let marker = app.workspace.join("p/runs");
    let m = sleep_marker();
    let c = app
        .run(
            "p",
            json!({"command": format!("echo started; echo run >> runs; setsid sleep {m} & sleep {m}")}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    let started = std::panic::AssertUnwindSafe(first_line(&app, &id))
        .catch_unwind()
        .await;
    let Ok(line) = started else {
        let status = app.get(&format!("/v1/commands/{id}")).await.json();
        panic!(
            "the command did not start: {status}\nthe worker's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    assert_eq!(line, "started");
    let killed_at = tokio::time::Instant::now();
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;

    // Another worker is around to receive the redelivered message.
    app.start_worker(2, CancellationToken::new());
    let c = app
        .wait_terminal(&id, Duration::from_secs(4 * lost_after_s))
        .await;
    let took = killed_at.elapsed();
    assert_eq!(
        (c["status"].as_str(), c["error"].as_str()),
        (Some("failed"), Some("worker_lost")),
        "{c}"
    );
    assert!(
        took <= Duration::from_secs(2 * lost_after_s) + Duration::from_secs(1),
        "reaped after {took:?}"
    );

    // The redelivery reached the new worker (a sentinel behind it finished)
    // and did not run the command again.
    let sentinel = app
        .run("p", json!({"command": "true", "priority": 0}))
        .await;
    app.wait_terminal(sentinel["id"].as_str().expect("id"), WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "run\n");
    let c = app.get(&format!("/v1/commands/{id}")).await.json();
    assert_eq!(c["status"], "failed");
    assert_eq!(c["reason"], "worker_lost", "{c}");
    // Its sandbox died with the worker: nothing of the command is left.
    wait_no_marked(&m).await;
}

#[tokio::test]
async fn max_concurrency_holds_across_workers_and_nothing_is_dropped() {
    let mut app = spawn_app_with(Options {
        concurrency: 4,
        ..Default::default()
    })
    .await;
    app.start_worker(4, CancellationToken::new());
    app.create_project("p", json!({"max_concurrency": 2})).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            app.run("p", json!({"command": "sleep 0.4"})).await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let mut spans = Vec::new();
    for id in &ids {
        let c = app.wait_terminal(id, WAIT).await;
        assert_eq!(c["status"], "succeeded", "{c}");
        let at = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(c[k].as_str().expect("time")).expect("rfc3339")
        };
        spans.push((at("started_at"), at("finished_at")));
    }
    // At no command's start were more than 2 commands of the project running.
    for (start, _) in &spans {
        let running = spans
            .iter()
            .filter(|(s, f)| s <= start && start < f)
            .count();
        assert!(running <= 2, "{running} running at {start}: {spans:?}");
    }
}

//! Faults around the broker and queues: a project at its limit, a
//! reconnected busy worker, a lost message, a black-holed broker.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cutproxy::CutProxy;
use rdev_tests::{Options, spawn_app_with};

use super::{WAIT, at, rabbit};

/// Finding 1: a deferred command waits in the delay queue, holding no
/// worker slot, so a project at its `max_concurrency` with a backlog does
/// not make other projects' commands wait behind it.
///
/// A's commands run for much longer than B could take even on a loaded
/// machine (the suite runs in parallel on two cores; a 3 s margin once ran
/// out in CI), and are cancelled at the end.
#[tokio::test]
async fn a_project_at_its_limit_does_not_starve_other_projects() {
    let app = spawn_app_with(Options {
        concurrency: 2,
        ..Default::default()
    })
    .await;
    app.create_project("a", json!({"max_concurrency": 1})).await;
    app.create_project("b", json!({})).await;
    let mut a = Vec::new();
    for _ in 0..10 {
        let id = app.run("a", json!({"command": "sleep 60"})).await["id"].clone();
        a.push(id.as_str().expect("id").to_owned());
    }
    // Whichever of A's commands won the project's one slot (two arrive at
    // the worker together) runs; the others wait.
    let first = running_one_of(&app, &a).await;
    let first = first.as_str();
    let b = app.run("b", json!({"command": "echo b"})).await;
    let b = app.wait_terminal(b["id"].as_str().expect("id"), WAIT).await;
    assert_eq!(b["status"], "succeeded", "{b}");
    // B did not queue behind A's backlog: it ended while A's running command
    // still ran, and before any of A's waiting commands had started.
    let a1 = app.get(&format!("/v1/commands/{first}")).await.json();
    assert!(
        a1["finished_at"].is_null() || at(&b, "finished_at") < at(&a1, "finished_at"),
        "b ended {} after a's first command {}",
        b["finished_at"],
        a1["finished_at"]
    );
    for id in a.iter().filter(|id| id.as_str() != first) {
        let waiting = app.get(&format!("/v1/commands/{id}")).await.json();
        assert!(
            waiting["started_at"].is_null() || at(&b, "finished_at") < at(&waiting, "started_at"),
            "b ended {} after a's waiting command started {}",
            b["finished_at"],
            waiting["started_at"]
        );
    }
    // A's waiting commands sit in the delay queue, not in a worker's slot
    // (which would sleep and hand the message straight back).
    let conn = rdev_shared::mq::connect(&app.env.amqp, "test")
        .await
        .expect("amqp");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                app.env.topology.commands_delay_queue().as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("the delay queue exists");
        if q.message_count() > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing waits in the delay queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &a {
        app.post(&format!("/v1/commands/{id}/cancel"), json!({}))
            .await;
    }
    let a1 = app.wait_terminal(first, WAIT).await;
    assert_eq!(a1["status"], "cancelled", "{a1}");
}

/// The one of `ids` that runs, once one does.
async fn running_one_of(app: &rdev_tests::TestApp, ids: &[String]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for id in ids {
            let c = app.get(&format!("/v1/commands/{id}")).await.json();
            if c["status"] == "running" {
                return id.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "none of {ids:?} runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finding 6: after its consumer reconnects, a worker whose slots are held
/// by commands it still runs takes no more messages than it has free slots,
/// so idle workers run the rest.
#[tokio::test]
async fn a_reconnected_busy_worker_leaves_new_commands_to_idle_workers() {
    let proxy = CutProxy::start(rabbit()).await;
    let mut app = spawn_app_with(Options {
        concurrency: 2,
        worker_amqp_url: Some(proxy.amqp_url()),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    // Both of its slots stay held by commands started before the cut.
    let mut long = Vec::new();
    for _ in 0..2 {
        let c = app.run("p", json!({"command": "sleep 60"})).await;
        long.push(c["id"].as_str().expect("id").to_owned());
    }
    for id in &long {
        app.wait_status(id, "running", WAIT).await;
    }
    app.start_worker(2, CancellationToken::new());
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    // The busy worker reconnects (its backoff is 0.5 s, then 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut short = Vec::new();
    for _ in 0..4 {
        let c = app.run("p", json!({"command": "echo hi"})).await;
        short.push(c["id"].as_str().expect("id").to_owned());
    }
    for id in &short {
        let c = app.wait_terminal(id, WAIT).await;
        assert_eq!(c["status"], "succeeded", "{c}");
        // The busy worker's commands still run (60 s; they are cancelled
        // below): the short ones did not wait for its slots.
        let first_long = app.get(&format!("/v1/commands/{}", long[0])).await.json();
        assert!(
            first_long["finished_at"].is_null()
                || at(&c, "finished_at") < at(&first_long, "finished_at"),
            "{id} waited for the busy worker: ended {} after {}",
            c["finished_at"],
            first_long["finished_at"]
        );
    }
    for id in &long {
        app.post(&format!("/v1/commands/{id}/cancel"), json!({}))
            .await;
        let c = app.wait_terminal(id, WAIT).await;
        assert_eq!(c["status"], "cancelled", "{c}");
    }
}

/// Issue 15 (smaller): a queued command whose run message was lost (the
/// queue purged, the broker's disk lost) is republished by the dispatcher's
/// sweep and runs, once.
#[tokio::test]
async fn a_command_whose_message_was_lost_still_runs_once() {
    let mut app = spawn_app_with(Options {
        worker: false,
        dispatcher: true,
        requeue_after: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app
        .run("p", json!({"command": "echo ran >> ran.txt"}))
        .await;
    let id = c["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conn = rdev_shared::mq::connect(&app.env.amqp, "test")
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_purge(
        app.env.topology.commands_queue().as_str().into(),
        lapin::options::QueuePurgeOptions::default(),
    )
    .await
    .expect("purge");
    app.start_worker(2, CancellationToken::new());
    let c = app.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    // Republished more than once meanwhile: still ran once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ran = std::fs::read_to_string(app.workspace.join("p/ran.txt")).expect("marker");
    assert_eq!(ran, "ran\n");
}

/// Issue 15 (smaller), then 17: a black-holed broker (connections open,
/// nothing answers) costs no enqueue its confirm timeout (the run message
/// is published after the answer), and every command still runs (the
/// outbox relay publishes them once the broker is back).
#[tokio::test]
async fn a_black_holed_broker_does_not_stall_every_enqueue() {
    let proxy = CutProxy::start(rabbit()).await;
    let app = spawn_app_with(Options {
        api_amqp_url: Some(proxy.amqp_url()),
        dispatcher: true,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let mut ids = vec![app.run("p", json!({"command": "true"})).await["id"].clone()];
    proxy.freeze();
    // Answered once committed: not even the first waits for its confirm
    // (5 s), which its background publish gives up on; the publisher then
    // drops that connection, and the relay publishes what is left.
    for _ in 0..5 {
        let started = Instant::now();
        ids.push(app.run("p", json!({"command": "true"})).await["id"].clone());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "an enqueue took {took:?}");
    }
    proxy.restore();
    for id in &ids {
        let c = app.wait_terminal(id.as_str().expect("id"), WAIT).await;
        assert_eq!(c["status"], "succeeded", "{c}");
    }
}

//! Faults around claims and reaping: a reaped command still running, a
//! statement that hangs, a claim whose answer was lost.

use std::time::Duration;

use serde_json::json;

use rdev_tests::{
    Options, TestApp, first_line, marked_processes, sleep_marker, spawn_app, spawn_app_with,
    wait_no_marked,
};

/// Marks a running command failed `worker_lost` the way the reaper does.
async fn reap_by_hand(app: &TestApp, id: &str) {
    let id: uuid::Uuid = id.parse().expect("uuid");
    let client = app.env.pool.get().await.expect("db");
    let n = client
        .execute(
            "UPDATE commands SET status = 'failed', error = 'worker_lost', reason = 'worker_lost', \
             finished_at = now() WHERE id = $1 AND status = 'running'",
            &[&id],
        )
        .await
        .expect("reap");
    assert_eq!(n, 1);
}

/// Finding 3: a command reaped while its worker still runs it (a
/// PostgreSQL outage longer than `RDEV_LOST_AFTER_S`, a stuck heartbeat)
/// is stopped by that worker, and nothing it prints afterwards is stored.
#[tokio::test]
async fn a_reaped_command_is_stopped_and_its_later_output_refused() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    let m = sleep_marker();
    let c = app
        .run(
            "p",
            json!({"command": format!("(while :; do echo tick; sleep 0.05; done) & exec sleep {m}")}),
        )
        .await;
    let id = c["id"].as_str().expect("id");
    first_line(&app, id).await;
    assert!(!marked_processes(&m).is_empty());
    reap_by_hand(&app, id).await;
    // The heartbeat (1 s in tests) learns the command is no longer its own.
    wait_no_marked(&m).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    let client = app.env.pool.get().await.expect("db");
    let late: i64 = client
        .query_one(
            "SELECT count(*) FROM command_output o JOIN commands c ON c.id = o.command_id \
             WHERE o.command_id = $1 AND o.at > c.finished_at + interval '200 milliseconds'",
            &[&uuid],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(late, 0, "chunks stored after the terminal status");
    let c = app.get(&format!("/v1/commands/{id}")).await.json();
    assert_eq!(
        (c["status"].as_str(), c["error"].as_str()),
        (Some("failed"), Some("worker_lost")),
        "{c}"
    );
}

/// Finding 3: statements have a timeout, so a stuck statement (a lock
/// held forever, a hung server) cannot hold a heartbeat or a request.
#[tokio::test]
async fn statements_time_out() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let mut db = app.env.db.clone();
    db.statement_timeout_s = 1;
    let pool = rdev_shared::db::pool(&db).expect("pool");
    let client = pool.get().await.expect("db");
    // Cancelled, not finished: the statement timeout stopped the sleep
    // (no bound on the elapsed time needed).
    let err = client
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("the statement should time out");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
}

/// Issue 15 (smaller): a claim whose commit succeeded but whose answer was
/// lost (the connection dropped) is retried by the worker with the same
/// token, finds the command running under it and runs it, instead of
/// leaving it `running` with no process until the reaper fails it.
#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_resumed_by_its_retry() {
    use rdev_shared::db::commands::{self, ClaimOutcome};
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let c = app.run("p", json!({"command": "true"})).await;
    let id: uuid::Uuid = c["id"].as_str().expect("id").parse().expect("uuid");
    let token = uuid::Uuid::now_v7();
    let pool = app.env.pool.clone();
    let claim = |token| {
        let pool = pool.clone();
        async move {
            let mut client = pool.get().await.expect("db");
            let tx = client.transaction().await.expect("tx");
            let out = commands::claim(&tx, id, "w1", token).await.expect("claim");
            tx.commit().await.expect("commit");
            out
        }
    };
    // The first attempt commits; its answer is "lost".
    assert!(matches!(claim(token).await, ClaimOutcome::Claimed(_)));
    // The retry of the same claim takes it up again…
    match claim(token).await {
        ClaimOutcome::Resumed(c) => assert_eq!(c.command.id, id),
        other => panic!("expected Resumed, got {other:?}"),
    }
    // …while any other claim (a redelivered message) still skips it.
    assert!(matches!(
        claim(uuid::Uuid::now_v7()).await,
        ClaimOutcome::NotQueued
    ));
}

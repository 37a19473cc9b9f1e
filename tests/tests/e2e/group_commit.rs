//! Group commit of new commands (issue 17): concurrent requests' rows share
//! one transaction, and a bad row fails only its own request.

use std::collections::BTreeMap;

use rdev_api::group_commit::{GroupCommit, NewRows};
use rdev_shared::db::audit::AuditEntry;
use rdev_shared::db::commands::NewCommand;
use rdev_shared::domain::CommandSpec;
use serde_json::json;
use uuid::Uuid;

use rdev_tests::{Options, TestApp, spawn_app_with};

async fn app_with_project() -> (TestApp, Uuid) {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.create_project("p", json!({})).await;
    let id = app
        .env
        .pool
        .get()
        .await
        .expect("db")
        .query_one("SELECT id FROM projects WHERE name = 'p'", &[])
        .await
        .expect("project")
        .get(0);
    (app, id)
}

fn rows(app: &TestApp, project_id: Uuid) -> NewRows {
    let id = Uuid::now_v7();
    NewRows {
        command: NewCommand {
            id,
            project_id,
            api_key_id: None,
            spec: CommandSpec::Shell("true".into()),
            env: BTreeMap::new(),
            stdin: None,
            stdin_pipe: false,
            tty: None,
            priority: 5,
            timeout_s: 60,
            idempotency_key: None,
            idempotency_fingerprint: None,
        },
        audit: AuditEntry {
            actor_key_id: None,
            actor: "",
            ip: None,
            action: "command.create",
            target_type: "command",
            target_id: Some(id.to_string()),
            project_id: Some(project_id),
            outcome: "success",
            details: json!({}),
        },
        actor: "group-commit-test".into(),
        message: app.env.topology.run_message(id, 5),
    }
}

/// Queues every `rows` before the committer starts (so they make one
/// batch), then starts it; each request's answer, in order.
async fn write_together(app: &TestApp, all: Vec<NewRows>) -> Vec<Result<Uuid, String>> {
    let n = all.len();
    let (commits, committer) = GroupCommit::new(app.env.pool.clone());
    let writes: Vec<_> = all
        .into_iter()
        .map(|r| {
            let commits = commits.clone();
            tokio::spawn(async move {
                commits
                    .write(r)
                    .await
                    .map(|w| w.command.id)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    while commits.queued() < n {
        tokio::task::yield_now().await;
    }
    tokio::spawn(committer);
    let mut answers = Vec::new();
    for w in writes {
        answers.push(w.await.expect("task"));
    }
    answers
}

/// How many transactions wrote these commands (rows one transaction
/// inserted share its `xmin`).
async fn transactions(app: &TestApp, ids: &[Uuid]) -> i64 {
    app.env
        .pool
        .get()
        .await
        .expect("db")
        .query_one(
            "SELECT count(DISTINCT xmin::text) FROM commands WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("xmin")
        .get(0)
}

async fn count(app: &TestApp, sql: &str, ids: &[String]) -> i64 {
    app.env
        .pool
        .get()
        .await
        .expect("db")
        .query_one(sql, &[&ids])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn waiting_requests_are_written_in_one_transaction_with_all_their_rows() {
    let (app, project) = app_with_project().await;
    let all: Vec<NewRows> = (0..20).map(|_| rows(&app, project)).collect();
    let answers = write_together(&app, all).await;
    let ids: Vec<Uuid> = answers.into_iter().map(|a| a.expect("written")).collect();
    assert_eq!(transactions(&app, &ids).await, 1);
    let text: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let audited = count(
        &app,
        "SELECT count(*) FROM audit_log WHERE action = 'command.create' \
         AND actor = 'group-commit-test' AND target_id = ANY($1)",
        &text,
    )
    .await;
    assert_eq!(audited, 20);
    let outboxed = count(
        &app,
        "SELECT count(*) FROM outbox WHERE convert_from(payload, 'UTF8') LIKE ANY \
         (SELECT '%' || i || '%' FROM unnest($1::text[]) i)",
        &text,
    )
    .await;
    assert_eq!(outboxed, 20);
}

#[tokio::test]
async fn a_bad_row_fails_only_its_own_request() {
    let (app, project) = app_with_project().await;
    let mut all: Vec<NewRows> = (0..10).map(|_| rows(&app, project)).collect();
    // A project that does not exist (deleted meanwhile): its insert fails.
    all[4] = rows(&app, Uuid::now_v7());
    let bad = all[4].command.id;
    let answers = write_together(&app, all).await;
    let mut good = Vec::new();
    for (i, a) in answers.into_iter().enumerate() {
        if i == 4 {
            assert!(a.is_err(), "the bad row was written: {a:?}");
        } else {
            good.push(a.expect("a good row fails with the bad one"));
        }
    }
    assert_eq!(good.len(), 9);
    assert_eq!(transactions(&app, &good).await, 9, "each written alone");
    assert_eq!(transactions(&app, &[bad]).await, 0);
    let text: Vec<String> = good.iter().map(Uuid::to_string).collect();
    let audited = count(
        &app,
        "SELECT count(*) FROM audit_log WHERE target_id = ANY($1)",
        &text,
    )
    .await;
    assert_eq!(audited, 9);
}

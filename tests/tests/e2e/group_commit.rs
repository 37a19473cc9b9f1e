//! Group commit of new commands (issue 17): concurrent requests' rows share
//! one transaction, and a bad row fails only its own request.

use std::collections::BTreeMap;

use rdev_api::group_commit::{GroupCommit, NewRows};
use rdev_shared::db::audit::AuditEntry;
use rdev_shared::db::commands::NewCommand;
use rdev_shared::domain::CommandSpec;
use serde_json::json;
use tokio_postgres::types::ToSql;
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
/// batch), then starts it; each request's answer (its command and outbox
/// row), in order.
async fn write_together(app: &TestApp, all: Vec<NewRows>) -> Vec<Result<(Uuid, i64), String>> {
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
                    .map(|w| (w.command.id, w.outbox_id))
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
    count(
        app,
        "SELECT count(DISTINCT xmin::text) FROM commands WHERE id = ANY($1)",
        &ids,
    )
    .await
}

/// How many statements wrote these commands (rows one statement of a
/// transaction inserted share its `cmin`).
async fn statements(app: &TestApp, ids: &[Uuid]) -> i64 {
    count(
        app,
        "SELECT count(DISTINCT cmin::text) FROM commands WHERE id = ANY($1)",
        &ids,
    )
    .await
}

/// The command each outbox row announces (the id in its run message).
async fn announced(app: &TestApp, outbox_ids: &[i64]) -> Vec<(i64, Uuid)> {
    let rows = app
        .env
        .pool
        .get()
        .await
        .expect("db")
        .query(
            "SELECT id, payload FROM outbox WHERE id = ANY($1) ORDER BY id",
            &[&outbox_ids],
        )
        .await
        .expect("outbox");
    rows.iter()
        .map(|r| {
            let message: rdev_shared::mq::RunMessage =
                serde_json::from_slice(r.get::<_, &[u8]>(1)).expect("a run message");
            (r.get(0), message.command_id)
        })
        .collect()
}

/// `sql`'s one count, with `ids` as `$1`.
async fn count(app: &TestApp, sql: &str, ids: &(dyn ToSql + Sync)) -> i64 {
    app.env
        .pool
        .get()
        .await
        .expect("db")
        .query_one(sql, &[ids])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn waiting_requests_are_written_in_one_transaction_with_all_their_rows() {
    let (app, project) = app_with_project().await;
    let all: Vec<NewRows> = (0..20).map(|_| rows(&app, project)).collect();
    let answers = write_together(&app, all).await;
    let written: Vec<(Uuid, i64)> = answers.into_iter().map(|a| a.expect("written")).collect();
    let ids: Vec<Uuid> = written.iter().map(|w| w.0).collect();
    assert_eq!(transactions(&app, &ids).await, 1);
    // Multi-row inserts for the commands, not one statement each: runs of
    // powers of two, 16 + 4.
    assert_eq!(statements(&app, &ids).await, 2);
    let text: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let audited = count(
        &app,
        "SELECT count(*) FROM audit_log WHERE action = 'command.create' \
         AND actor = 'group-commit-test' AND target_id = ANY($1)",
        &text,
    )
    .await;
    assert_eq!(audited, 20);
    let audit_statements = count(
        &app,
        "SELECT count(DISTINCT (xmin::text, cmin::text)) FROM audit_log WHERE target_id = ANY($1)",
        &text,
    )
    .await;
    assert_eq!(audit_statements, 2);
    // Each request's outbox row is the one carrying its own run message.
    let outbox_ids: Vec<i64> = written.iter().map(|w| w.1).collect();
    let mut expected: Vec<(i64, Uuid)> = written.iter().map(|&(id, row)| (row, id)).collect();
    expected.sort_unstable();
    assert_eq!(announced(&app, &outbox_ids).await, expected);
}

#[tokio::test]
async fn more_rows_than_one_insert_takes_come_back_in_order() {
    let (app, project) = app_with_project().await;
    let n = rdev_shared::db::MAX_INSERT + 6;
    let all: Vec<NewRows> = (0..n).map(|_| rows(&app, project)).collect();
    let mut client = app.env.pool.get().await.expect("db");
    let tx = client.transaction().await.expect("begin");
    let commands: Vec<&NewCommand> = all.iter().map(|r| &r.command).collect();
    let stored = rdev_shared::db::commands::insert_many(&tx, &commands)
        .await
        .expect("commands");
    let messages: Vec<&rdev_shared::mq::OutgoingMessage> = all.iter().map(|r| &r.message).collect();
    let outbox_ids = rdev_shared::db::outbox::insert_many(&tx, &messages)
        .await
        .expect("outbox");
    tx.commit().await.expect("commit");
    drop(client);
    let stored: Vec<Uuid> = stored
        .into_iter()
        .map(|c| c.expect("no idempotency key, so a row").id)
        .collect();
    let asked: Vec<Uuid> = all.iter().map(|r| r.command.id).collect();
    assert_eq!(stored, asked);
    // 64 + 4 + 2.
    assert_eq!(statements(&app, &asked).await, 3);
    let mut expected: Vec<(i64, Uuid)> = outbox_ids.iter().copied().zip(asked).collect();
    expected.sort_unstable();
    assert_eq!(announced(&app, &outbox_ids).await, expected);
}

#[tokio::test]
async fn a_bad_row_fails_only_its_own_request() {
    let (app, project) = app_with_project().await;
    let mut all: Vec<NewRows> = (0..10).map(|_| rows(&app, project)).collect();
    // A priority the table's CHECK refuses: its insert fails.
    all[4].command.priority = 42;
    let bad = all[4].command.id;
    let answers = write_together(&app, all).await;
    let mut good = Vec::new();
    for (i, a) in answers.into_iter().enumerate() {
        if i == 4 {
            assert!(a.is_err(), "the bad row was written: {a:?}");
        } else {
            good.push(a.expect("a good row fails with the bad one").0);
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

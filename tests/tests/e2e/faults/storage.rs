//! Faults around storage: retention that keeps what is in use, and an
//! older binary against a newer schema.

use std::time::Duration;

use serde_json::json;

use rdev_tests::{Options, spawn_app, spawn_app_with};

use super::WAIT;

/// Finding 10: retention removes, per kind and in batches, what outlived
/// it: published outbox rows, stored output, finished commands (a project
/// may keep its own), settled webhook deliveries; nothing still in use.
#[tokio::test]
async fn retention_prunes_each_kind_and_keeps_what_is_in_use() {
    let app = spawn_app().await;
    app.create_project("p", json!({})).await;
    // q keeps output longer than the default and commands shorter.
    app.create_project(
        "q",
        json!({"output_retention_s": 100 * 86_400, "command_retention_s": 3600}),
    )
    .await;
    let q = app.get("/v1/projects/q").await.json();
    assert_eq!(q["output_retention_s"], 100 * 86_400, "{q}");
    let bad = app
        .post(
            "/v1/projects",
            json!({"name": "r", "output_retention_s": 5}),
        )
        .await;
    bad.assert_problem(422);
    let mut ids = Vec::new();
    for project in ["p", "p", "q", "q"] {
        let c = app.run(project, json!({"command": "echo kept"})).await;
        let id = c["id"].as_str().expect("id").to_owned();
        app.wait_terminal(&id, WAIT).await;
        ids.push(id.parse::<uuid::Uuid>().expect("uuid"));
    }
    let client = app.env.pool.get().await.expect("db");
    let age = |id: uuid::Uuid, days: f64| {
        let client = &client;
        async move {
            client
                .execute(
                    "UPDATE commands SET finished_at = now() - make_interval(secs => $2) WHERE id = $1",
                    &[&id, &(days * 86_400.0)],
                )
                .await
                .expect("age");
        }
    };
    age(ids[0], 40.0).await; // p: output goes (30 d), command stays (90 d)
    age(ids[1], 100.0).await; // p: command goes
    age(ids[2], 40.0).await; // q: command goes (1 h); so would its output
    client
        .execute(
            "UPDATE commands SET finished_at = now() - interval '10 minutes' WHERE id = $1",
            &[&ids[3]],
        )
        .await
        .expect("age"); // q: kept
    client
        .batch_execute(
            "UPDATE outbox SET published_at = now() - interval '2 days' WHERE published_at IS NOT NULL; \
             INSERT INTO outbox (exchange, routing_key, payload, headers, created_at) \
             SELECT exchange, routing_key, payload, headers, now() - interval '3 days' FROM outbox LIMIT 1;",
        )
        .await
        .expect("outbox");
    let hook = app
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["command.succeeded"]}),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", String::from_utf8_lossy(&hook.body));
    let hook: uuid::Uuid = hook.json()["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    for (status, days) in [
        ("succeeded", 40),
        ("dead", 40),
        ("pending", 40),
        ("succeeded", 1),
    ] {
        client
            .execute(
                "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload, status, updated_at) \
                 VALUES ($1, $2, $3, 'command.succeeded', '\\x7b7d', $4, now() - make_interval(days => $5))",
                &[&uuid::Uuid::now_v7(), &hook, &uuid::Uuid::now_v7(), &status, &days],
            )
            .await
            .expect("delivery");
    }

    let cfg = rdev_tests::dispatcher_config(&app.env);
    let pruned = rdev_dispatcher::retention::run_once(&app.env.pool, &cfg.retention())
        .await
        .expect("retention");
    assert_eq!(pruned.commands, 2, "{pruned:?}");
    assert_eq!(pruned.webhook_deliveries, 2, "{pruned:?}");
    assert!(pruned.output >= 1 && pruned.outbox >= 1, "{pruned:?}");
    let exists = |id: uuid::Uuid| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT (SELECT count(*) FROM commands WHERE id = $1), \
                     (SELECT count(*) FROM command_output WHERE command_id = $1)",
                    &[&id],
                )
                .await
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                .expect("q")
        }
    };
    assert_eq!(
        exists(ids[0]).await,
        (1, 0),
        "p's old command keeps its row"
    );
    assert_eq!(exists(ids[1]).await, (0, 0));
    assert_eq!(exists(ids[2]).await, (0, 0), "q keeps commands 1 h");
    assert_eq!(exists(ids[3]).await, (1, 1));
    let unpublished: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(unpublished, 1, "the relay still owes it");
    let pending: i64 = client
        .query_one(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(pending, 1);
    // The stored output of a pruned command reads as empty, not as an error.
    assert!(app.output(&ids[0].to_string(), None).await.is_empty());
    // A second pass finds nothing more.
    let again = rdev_dispatcher::retention::run_once(&app.env.pool, &cfg.retention())
        .await
        .expect("retention");
    assert_eq!((again.commands, again.output, again.outbox), (0, 0, 0));
}

/// Finding 9: an older binary runs against a newer schema (a rollback, the
/// old half of a rolling upgrade): migrating finds nothing to do instead of
/// refusing to start; a worker or dispatcher waits for the schema it needs;
/// the indexes on big tables are built CONCURRENTLY and valid.
#[tokio::test]
async fn an_older_binary_runs_against_a_newer_schema() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let pool = &app.env.pool;
    let client = pool.get().await.expect("db");
    let need = rdev_shared::db::schema_version();
    assert!(need >= 12, "{need}");
    // A newer binary applied a migration this one does not know.
    client
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES ($1, 'from_a_newer_binary', '2030-01-01T00:00:00Z', '1')",
            &[&i32::try_from(need + 1).expect("i32")],
        )
        .await
        .expect("newer");
    let applied = rdev_shared::db::migrate(pool)
        .await
        .expect("older binary migrates");
    assert!(applied.is_empty(), "{applied:?}");
    rdev_shared::db::require_schema(pool, Duration::ZERO)
        .await
        .expect("a newer schema serves this binary");
    // A schema older than the binary: it waits, then refuses.
    client
        .execute(
            "DELETE FROM refinery_schema_history WHERE version >= $1",
            &[&i32::try_from(need).expect("i32")],
        )
        .await
        .expect("older");
    let err = rdev_shared::db::require_schema(pool, Duration::from_millis(100))
        .await
        .expect_err("behind");
    assert!(
        matches!(err, rdev_shared::db::DbError::SchemaBehind { .. }),
        "{err}"
    );
    let invalid: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid \
             WHERE c.relname = ANY($1) AND i.indisvalid",
            &[&rdev_shared::db::indexes::INDEXES
                .iter()
                .map(|(n, _)| (*n).to_owned())
                .collect::<Vec<_>>()],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        invalid.len(),
        rdev_shared::db::indexes::INDEXES.len(),
        "{invalid:?}"
    );
}

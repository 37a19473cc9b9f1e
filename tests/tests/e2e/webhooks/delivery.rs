//! Delivery: signed events that follow the endpoint's filters, once per
//! attempt however many dispatchers run, and a claim lost to a crash.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdev_shared::db::commands::{self, Finish};
use rdev_shared::db::webhooks;
use rdev_shared::domain::{CommandStatus, EndReason};
use rdev_shared::webhook_sign;
use serde_json::{Value, json};

use rdev_tests::{Options, dispatcher_config, spawn_app_with};
use tokio_util::sync::CancellationToken;

use super::{
    Receiver, RunningDispatcher, WAIT, attempt_codes, create_webhook, deliveries, delivery, id_of,
    opts, send_test, status_is, wait_delivery,
};

#[tokio::test]
async fn delivered_events_verify_and_follow_type_and_project_filters() {
    let app = spawn_app_with(opts(true)).await;
    app.create_project("p", json!({})).await;
    app.create_project("other", json!({})).await;
    let succeeded_only = Receiver::always(200).await;
    let all = Receiver::always(204).await;
    let elsewhere = Receiver::always(200).await;
    let w = create_webhook(
        &app,
        json!({"url": succeeded_only.url, "events": ["command.succeeded"], "project": "p"}),
    )
    .await;
    let secret = w["secret"]
        .as_str()
        .expect("secret shown on create")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(w["project"], "p");
    assert_eq!(w["enabled"], true);
    create_webhook(&app, json!({"url": all.url, "events": ["*"]})).await;
    create_webhook(
        &app,
        json!({"url": elsewhere.url, "events": ["*"], "project": "other"}),
    )
    .await;
    let listed = app.get(&format!("/v1/webhooks/{}", id_of(&w))).await.json();
    assert!(
        listed.get("secret").is_none(),
        "secret only in the create answer"
    );

    let cmd = app.run("p", json!({"command": "true"})).await;
    let cmd = app
        .wait_terminal(cmd["id"].as_str().expect("id"), WAIT)
        .await;

    let hit = succeeded_only.wait_hits(1).await.remove(0);
    let body: Value = serde_json::from_slice(&hit.body).expect("json body");
    assert_eq!(body["type"], "command.succeeded");
    assert_eq!(body["data"]["id"], cmd["id"]);
    assert_eq!(body["data"]["project"], "p");
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(
        hit.header("webhook-id"),
        body["id"].as_str().expect("event id")
    );
    let now = chrono::Utc::now().timestamp();
    webhook_sign::verify(
        &secret,
        &hit.header("webhook-id"),
        &hit.header("webhook-timestamp"),
        &hit.header("webhook-signature"),
        &hit.body,
        now,
        300,
    )
    .expect("signature verifies with the Standard Webhooks algorithm");
    assert!(
        webhook_sign::verify(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &hit.header("webhook-id"),
            &hit.header("webhook-timestamp"),
            &hit.header("webhook-signature"),
            &hit.body,
            now,
            300,
        )
        .is_err(),
        "another secret does not verify"
    );

    // `*` gets both lifecycle events; the other project's endpoint nothing.
    let types: Vec<String> = all
        .wait_hits(2)
        .await
        .iter()
        .map(|h| serde_json::from_slice::<Value>(&h.body).expect("json")["type"].to_string())
        .collect();
    assert!(
        types.contains(&"\"command.started\"".to_owned()),
        "{types:?}"
    );
    assert!(
        types.contains(&"\"command.succeeded\"".to_owned()),
        "{types:?}"
    );
    let d = deliveries(&app, &id_of(&w), "").await;
    assert_eq!(d.len(), 1, "only command.succeeded matches: {d:?}");
    let d = wait_delivery(
        &app,
        &id_of(&w),
        d[0]["id"].as_str().expect("id"),
        status_is("succeeded"),
    )
    .await;
    assert_eq!(attempt_codes(&d), vec![Some(200)]);
    assert_eq!(succeeded_only.hits().len(), 1);
    assert!(elsewhere.hits().is_empty());
}

/// The lifecycle events stored for command `id` (as deliveries), by type.
async fn stored_events(app: &rdev_tests::TestApp, id: &Value) -> Vec<String> {
    let client = app.env.pool.get().await.expect("db");
    client
        .query(
            "SELECT event_type FROM webhook_deliveries \
             WHERE convert_from(payload, 'UTF8')::jsonb -> 'data' ->> 'id' = $1 ORDER BY id",
            &[&id.as_str().expect("id")],
        )
        .await
        .expect("deliveries")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn an_event_is_stored_only_when_an_endpoint_wants_it() {
    let app = spawn_app_with(opts(true)).await;
    app.create_project("p", json!({})).await;
    app.create_project("other", json!({})).await;
    let run = |command: &'static str| {
        let app = &app;
        async move {
            let c = app.run("p", json!({ "command": command })).await;
            app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await
        }
    };
    // No endpoint at all: the command runs and stores no event.
    let quiet = run("true").await;
    assert_eq!(quiet["status"], "succeeded", "{quiet}");
    assert!(stored_events(&app, &quiet["id"]).await.is_empty());

    // Endpoints that do not match: another project's, another type,
    // a disabled one.
    let failed_only = Receiver::always(200).await;
    create_webhook(
        &app,
        json!({"url": Receiver::always(200).await.url, "events": ["*"], "project": "other"}),
    )
    .await;
    create_webhook(
        &app,
        json!({"url": failed_only.url, "events": ["command.failed"]}),
    )
    .await;
    let off = create_webhook(
        &app,
        json!({"url": Receiver::always(200).await.url, "events": ["*"]}),
    )
    .await;
    let r = app
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{}", id_of(&off)),
            Some(&app.admin_key.clone()),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let unmatched = run("true").await;
    assert!(stored_events(&app, &unmatched["id"]).await.is_empty());

    // The type one of them wants: stored once and delivered.
    let failed = run("exit 4").await;
    assert_eq!(stored_events(&app, &failed["id"]).await, ["command.failed"]);
    let hit = failed_only.wait_hits(1).await.remove(0);
    let body: Value = serde_json::from_slice(&hit.body).expect("json body");
    assert_eq!(
        (body["type"].as_str(), &body["data"]["id"]),
        (Some("command.failed"), &failed["id"])
    );
    // Written with the change, never through the outbox and the broker.
    let client = app.env.pool.get().await.expect("db");
    let outboxed: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE exchange LIKE '%.events'",
            &[],
        )
        .await
        .expect("outbox")
        .get(0);
    assert_eq!(outboxed, 0);
}

/// A delivery is claimed as soon as the change that wrote it commits: the
/// producer's `NOTIFY` wakes the dispatcher, which otherwise would look
/// only every `RDEV_WEBHOOK_POLL` (an hour here).
#[tokio::test]
async fn a_committed_event_wakes_the_dispatcher() {
    let app = spawn_app_with(opts(false)).await;
    app.create_project("p", json!({})).await;
    let mut cfg = dispatcher_config(&app.env);
    cfg.webhook_poll = Duration::from_secs(3600);
    let rx = Receiver::always(200).await;
    create_webhook(
        &app,
        json!({"url": rx.url, "events": ["command.succeeded"]}),
    )
    .await;
    let _d = RunningDispatcher::start(cfg).await;
    // The listener's first wake-up (after it connects) is spent before the
    // command exists.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=3 {
        let c = app.run("p", json!({"command": "true"})).await;
        app.wait_terminal(c["id"].as_str().expect("id"), WAIT).await;
        let hits = rx.wait_hits(n).await;
        let body: Value = serde_json::from_slice(&hits[n - 1].body).expect("json");
        assert_eq!(body["data"]["id"], c["id"]);
    }
}

/// Every writer of deliveries wakes the dispatchers after its commit: the
/// API cancelling a queued command, the reaper failing a lost one, and the
/// worker's claim and finish. The dispatcher looks on its own only every
/// `RDEV_WEBHOOK_POLL` (an hour here), so each event arrives only if its
/// writer sent the `NOTIFY`.
#[tokio::test]
async fn every_writer_of_deliveries_wakes_the_dispatcher() {
    let mut app = spawn_app_with(Options {
        worker: false,
        ..opts(false)
    })
    .await;
    app.create_project("p", json!({})).await;
    let rx = Receiver::always(200).await;
    create_webhook(
        &app,
        json!({"url": rx.url, "events": [
            "command.started", "command.succeeded", "command.failed", "command.cancelled"
        ]}),
    )
    .await;
    let mut cfg = dispatcher_config(&app.env);
    cfg.webhook_poll = Duration::from_secs(3600);
    cfg.lost_after_s = 1;
    let _d = RunningDispatcher::start(cfg).await;
    // The listener's first wake-up (after it connects) is spent before any
    // delivery exists.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let event = |hit: &super::Hit| -> (String, Value) {
        let body: Value = serde_json::from_slice(&hit.body).expect("json");
        (
            body["type"].as_str().unwrap_or("").to_owned(),
            body["data"]["id"].clone(),
        )
    };

    // The API: a queued command cancelled.
    let cancelled = app.run("p", json!({"command": "true"})).await;
    let r = app
        .post(
            &format!(
                "/v1/commands/{}/cancel",
                cancelled["id"].as_str().expect("id")
            ),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let hits = rx.wait_hits(1).await;
    assert_eq!(
        event(&hits[0]),
        ("command.cancelled".to_owned(), cancelled["id"].clone())
    );

    // The reaper: a command whose worker stopped heart-beating long ago.
    let lost = app.run("p", json!({"command": "true"})).await;
    let lost_id: uuid::Uuid = lost["id"].as_str().expect("id").parse().expect("uuid");
    app.env
        .pool
        .get()
        .await
        .expect("db")
        .execute(
            "UPDATE commands SET status = 'running', worker_id = 'gone', attempt = 1, \
             started_at = now(), heartbeat_at = now() - interval '1 hour' WHERE id = $1",
            &[&lost_id],
        )
        .await
        .expect("update");
    let hits = rx.wait_hits(2).await;
    assert_eq!(
        event(&hits[1]),
        ("command.failed".to_owned(), lost["id"].clone())
    );

    // The worker: a claim and a finish (the two commands above are skipped).
    app.start_worker(1, CancellationToken::new());
    let ran = app.run("p", json!({"command": "true"})).await;
    let hits = rx.wait_hits(4).await;
    let mut events: Vec<(String, Value)> = hits[2..].iter().map(event).collect();
    events.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        events,
        vec![
            ("command.started".to_owned(), ran["id"].clone()),
            ("command.succeeded".to_owned(), ran["id"].clone()),
        ]
    );
}

#[tokio::test]
async fn two_dispatchers_deliver_each_endpoint_and_event_once_per_attempt() {
    let app = spawn_app_with(opts(false)).await;
    app.create_project("p", json!({})).await;
    let cfg = dispatcher_config(&app.env);
    // The first request of every event fails, the second succeeds.
    let rx = Receiver::start(|_, per_id| if per_id == 0 { 500 } else { 200 }).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let a = RunningDispatcher::start(cfg.clone()).await;
    let b = RunningDispatcher::start(cfg).await;

    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(app.run("p", json!({"command": "true"})).await["id"].clone());
    }
    for id in &ids {
        app.wait_terminal(id.as_str().expect("id"), WAIT).await;
    }
    // 8 commands × (started, succeeded) = 16 events, 2 attempts each.
    let hits = rx.wait_hits(32).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let ds = deliveries(&app, &id_of(&w), "?limit=200").await;
        if ds.len() == 16 && ds.iter().all(|d| d["status"] == "succeeded") {
            for d in &ds {
                assert_eq!(attempt_codes(d), vec![Some(500), Some(200)], "{d}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "not all delivered: {ds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits_after = rx.hits();
    assert_eq!(
        hits_after.len(),
        32,
        "no extra sends (had {} at first)",
        hits.len()
    );
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for h in &hits_after {
        *per_id.entry(h.header("webhook-id")).or_default() += 1;
    }
    assert_eq!(per_id.len(), 16);
    assert!(per_id.values().all(|&n| n == 2), "{per_id:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_claim_lost_to_a_crash_is_retried_after_its_lease_and_counted_once() {
    use rdev_shared::db::webhooks::{self as repo, AttemptRecord, Next};

    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let w = create_webhook(&app, json!({"url": "http://127.0.0.1:9/", "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;
    let c = app.env.pool.get().await.expect("db");

    // A dispatcher claims the delivery, then "crashes" (never records).
    let first = repo::claim_due(&c, 10, Duration::from_millis(300))
        .await
        .expect("claim");
    assert_eq!(first.len(), 1);
    assert!(
        repo::claim_due(&c, 10, Duration::from_secs(30))
            .await
            .expect("claim")
            .is_empty(),
        "a leased delivery is not claimed twice"
    );
    // After the lease, another dispatcher gets it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = repo::claim_due(&c, 10, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id.to_string(), d);

    let record = |token| AttemptRecord {
        delivery_id: second[0].id,
        lease_token: token,
        at: chrono::Utc::now(),
        status_code: Some(200),
        duration_ms: 1,
        error: None,
        response_excerpt: None,
        next: Next::Succeeded,
    };
    // The crashed holder's late write is refused; the live holder's counts.
    assert!(
        !repo::record_attempt(&c, &record(first[0].lease_token))
            .await
            .expect("record")
    );
    assert!(
        repo::record_attempt(&c, &record(second[0].lease_token))
            .await
            .expect("record")
    );
    assert!(
        !repo::record_attempt(&c, &record(second[0].lease_token))
            .await
            .expect("record")
    );
    let d = delivery(&app, &id_of(&w), &d).await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(attempt_codes(&d), vec![Some(200)]);
}

/// Successes written together: each only by the holder of its delivery's
/// current claim, each once.
#[tokio::test]
async fn successes_written_together_count_only_live_claims() {
    use rdev_shared::db::webhooks::{self as repo, AttemptRecord, Next};

    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let w = create_webhook(&app, json!({"url": "http://127.0.0.1:9/", "events": ["*"]})).await;
    let a = send_test(&app, &id_of(&w)).await;
    let b = send_test(&app, &id_of(&w)).await;
    let c = app.env.pool.get().await.expect("db");
    let stale = repo::claim_due(&c, 10, Duration::from_millis(300))
        .await
        .expect("claim");
    assert_eq!(stale.len(), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let live = repo::claim_due(&c, 10, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(live.len(), 2);
    let token = |claims: &[repo::Claimed], id: &str| {
        claims
            .iter()
            .find(|x| x.id.to_string() == id)
            .expect("claimed")
            .lease_token
    };
    let record = |id: &str, token| AttemptRecord {
        delivery_id: id.parse().expect("uuid"),
        lease_token: token,
        at: chrono::Utc::now(),
        status_code: Some(204),
        duration_ms: 2,
        error: None,
        response_excerpt: Some("ok".into()),
        next: Next::Succeeded,
    };
    let written = repo::record_successes(
        &c,
        &[record(&a, token(&live, &a)), record(&b, token(&stale, &b))],
    )
    .await
    .expect("record");
    assert_eq!(
        written,
        [a.parse::<uuid::Uuid>().expect("uuid")],
        "b's claim was lost"
    );
    let written = repo::record_successes(
        &c,
        &[record(&b, token(&live, &b)), record(&a, token(&live, &a))],
    )
    .await
    .expect("record");
    assert_eq!(
        written,
        [b.parse::<uuid::Uuid>().expect("uuid")],
        "a was written already"
    );
    for id in [&a, &b] {
        let d = delivery(&app, &id_of(&w), id).await;
        assert_eq!(d["status"], "succeeded");
        assert_eq!(attempt_codes(&d), vec![Some(204)]);
    }
}

/// The finish of a command that exited with `code`.
fn exited(status: CommandStatus, code: i32) -> Finish {
    Finish {
        status,
        exit_code: Some(code),
        error: None,
        reason: EndReason::Exited,
        signal: None,
        output_bytes: 0,
        truncated: false,
    }
}

/// An app without a worker and three projects: `watched` (an endpoint
/// wants its `command.started`), `quiet` (one wants its `command.failed`
/// only) and `limited` (`max_concurrency`); a disabled `*` endpoint wants
/// nothing. Returns the endpoints' receiver with the app.
/// A command's status, read from its row.
async fn command_status(client: &rdev_shared::db::Client, id: uuid::Uuid) -> String {
    client
        .query_one("SELECT status FROM commands WHERE id = $1", &[&id])
        .await
        .expect("status")
        .get(0)
}

/// Enqueues `true` in each of `projects`, in order: the commands' ids.
async fn enqueue_true(app: &rdev_tests::TestApp, projects: &[&str]) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for project in projects {
        let c = app.run(project, json!({"command": "true"})).await;
        ids.push(c["id"].as_str().and_then(|s| s.parse().ok()).expect("id"));
    }
    ids
}

async fn watched_quiet_limited() -> (rdev_tests::TestApp, Receiver) {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    for (name, body) in [
        ("watched", json!({})),
        ("quiet", json!({})),
        ("limited", json!({"max_concurrency": 4})),
    ] {
        app.create_project(name, body).await;
    }
    let receiver = Receiver::always(200).await;
    create_webhook(
        &app,
        json!({"url": receiver.url, "events": ["command.started"], "project": "watched"}),
    )
    .await;
    create_webhook(
        &app,
        json!({"url": receiver.url, "events": ["command.failed"], "project": "quiet"}),
    )
    .await;
    let disabled = create_webhook(&app, json!({"url": receiver.url, "events": ["*"]})).await;
    let r = app
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{}", id_of(&disabled)),
            Some(&app.admin_key.clone()),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    (app, receiver)
}

/// Issue 17: a worker's claim or finish commits as one statement only when
/// nothing has to commit with it. When an enabled endpoint wants the
/// event (or the project has a concurrency limit), the one-statement form
/// changes nothing, and the change goes through the transaction that
/// writes the deliveries.
#[tokio::test]
async fn a_claim_or_finish_commits_alone_only_when_no_endpoint_wants_its_event() {
    let (app, _receiver) = watched_quiet_limited().await;

    let client = app.env.pool.get().await.expect("db");
    let status = |id| command_status(&client, id);
    let enqueue = |project: &'static str| {
        let app = &app;
        async move {
            let c = app.run(project, json!({"command": "true"})).await;
            c["id"]
                .as_str()
                .and_then(|s| s.parse::<uuid::Uuid>().ok())
                .expect("id")
        }
    };
    let claim =
        |id| commands::claim_alone(&client, id, "w1", uuid::Uuid::now_v7(), "command.started");

    // An endpoint wants `command.started` of this project; a limit needs
    // the project's lock: neither is claimed alone.
    for project in ["watched", "limited"] {
        let id = enqueue(project).await;
        assert!(claim(id).await.expect("claim").is_none(), "{project}");
        assert_eq!(status(id).await, "queued", "{project}");
    }
    // Nobody wants it (the other endpoint wants another type, the `*` one
    // is disabled): claimed in one statement.
    let id = enqueue("quiet").await;
    let claimed = claim(id).await.expect("claim").expect("claimed alone");
    assert_eq!(claimed.command.id, id);
    assert_eq!(status(id).await, "running");
    // Claimed once: a second claim finds it running.
    assert!(claim(id).await.expect("claim").is_none());

    // `command.failed` is wanted for this project: not finished alone.
    let failed = exited(CommandStatus::Failed, 1);
    assert!(
        commands::finish_alone(&client, id, "w1", &failed, "command.failed")
            .await
            .expect("finish")
            .is_none()
    );
    assert_eq!(status(id).await, "running");
    // Another worker's command is not this worker's to finish.
    let succeeded = exited(CommandStatus::Succeeded, 0);
    assert!(
        commands::finish_alone(&client, id, "w2", &succeeded, "command.succeeded")
            .await
            .expect("finish")
            .is_none()
    );
    // `command.succeeded` is not wanted: finished in one statement.
    let done = commands::finish_alone(&client, id, "w1", &succeeded, "command.succeeded")
        .await
        .expect("finish")
        .expect("finished alone");
    assert_eq!(
        (done.status, done.exit_code),
        (CommandStatus::Succeeded, Some(0))
    );
    assert_eq!(status(id).await, "succeeded");
    let written: i64 = client
        .query_one("SELECT count(*) FROM webhook_deliveries", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(written, 0, "nothing wanted these events");
}

/// The batched claim and finish (a worker's concurrent commands in one
/// statement) apply each row's own conditions: only the rows one statement
/// per command would change are changed, and each is reported once.
#[tokio::test]
async fn claims_and_finishes_written_together_keep_each_commands_conditions() {
    use uuid::Uuid;
    let (app, _receiver) = watched_quiet_limited().await;
    let client = app.env.pool.get().await.expect("db");
    let status = |id: Uuid| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT status, claim_token FROM commands WHERE id = $1",
                    &[&id],
                )
                .await
                .expect("status");
            (row.get::<_, String>(0), row.get::<_, Option<Uuid>>(1))
        }
    };
    let ids = enqueue_true(&app, &["watched", "limited", "quiet", "quiet", "quiet"]).await;
    let [watched, limited, q1, q2, q3] = ids[..] else {
        unreachable!()
    };
    // q3 is named twice (a redelivered message), q2 is not queued (another
    // worker has it).
    commands::claim_alone(&client, q2, "other", Uuid::now_v7(), "command.started")
        .await
        .expect("claim")
        .expect("claimed by the other worker");
    let tokens: Vec<(Uuid, Uuid)> = [watched, limited, q1, q2, q3, q3]
        .iter()
        .map(|id| (*id, Uuid::now_v7()))
        .collect();
    let claimed = commands::claim_many_alone(&client, "w1", &tokens, "command.started")
        .await
        .expect("claim");
    let mut got: Vec<(Uuid, Uuid)> = claimed.iter().map(|(t, c)| (c.command.id, *t)).collect();
    got.sort();
    assert_eq!(got.len(), 2, "q1 and q3, once: {got:?}");
    let token_of = |id: Uuid| got.iter().find(|(c, _)| *c == id).map(|(_, t)| *t);
    let q1_token = token_of(q1).expect("q1 claimed");
    let q3_token = token_of(q3).expect("q3 claimed");
    assert!(tokens.contains(&(q1, q1_token)));
    assert!(
        tokens.contains(&(q3, q3_token)),
        "under one of its own tokens"
    );
    assert_eq!(status(q1).await, ("running".into(), Some(q1_token)));
    assert_eq!(status(q3).await, ("running".into(), Some(q3_token)));
    for id in [watched, limited] {
        assert_eq!(
            status(id).await.0,
            "queued",
            "left for the transaction path"
        );
    }
    assert_eq!(status(q2).await.0, "running", "still the other worker's");

    let failed = exited(CommandStatus::Failed, 3);
    let succeeded = exited(CommandStatus::Succeeded, 0);
    // q1 fails (an endpoint wants that of `quiet`), q3 succeeds, q2 is the
    // other worker's, `watched` is not running.
    let done = commands::finish_many_alone(
        &client,
        "w1",
        &[
            (q1, &failed, "command.failed"),
            (q3, &succeeded, "command.succeeded"),
            (q2, &succeeded, "command.succeeded"),
            (watched, &succeeded, "command.succeeded"),
        ],
    )
    .await
    .expect("finish");
    let done: Vec<(Uuid, CommandStatus, Option<i32>)> =
        done.iter().map(|c| (c.id, c.status, c.exit_code)).collect();
    assert_eq!(done, vec![(q3, CommandStatus::Succeeded, Some(0))]);
    assert_eq!(status(q3).await.0, "succeeded");
    assert_eq!(
        status(q1).await.0,
        "running",
        "its finish takes the transaction path"
    );
    assert_eq!(status(q2).await.0, "running");
    assert_eq!(status(watched).await.0, "queued");
    // Empty batches write nothing.
    assert!(
        commands::claim_many_alone(&client, "w1", &[], "command.started")
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(
        commands::finish_many_alone(&client, "w1", &[])
            .await
            .expect("finish")
            .is_empty()
    );
}

/// The claims the one-statement batch leaves because an endpoint wants
/// `command.started` are made together in the writer's transaction
/// (`claim_many`): still only queued commands, still not those of a
/// project with a limit (they need the project's lock), once each.
#[tokio::test]
async fn claims_left_for_their_deliveries_keep_each_commands_conditions() {
    use uuid::Uuid;
    let (app, _receiver) = watched_quiet_limited().await;
    let mut client = app.env.pool.get().await.expect("db");
    let ids = enqueue_true(&app, &["watched", "limited", "quiet", "watched"]).await;
    let [watched, limited, quiet, taken] = ids[..] else {
        unreachable!()
    };
    client
        .execute(
            "UPDATE commands SET status = 'running', worker_id = 'other' WHERE id = $1",
            &[&taken],
        )
        .await
        .expect("taken");
    let pairs: Vec<(Uuid, Uuid)> = [watched, limited, quiet, taken, watched]
        .iter()
        .map(|id| (*id, Uuid::now_v7()))
        .collect();
    let tx = client.transaction().await.expect("tx");
    let claimed = commands::claim_many(&tx, "w1", &pairs)
        .await
        .expect("claim");
    tx.commit().await.expect("commit");
    let mut got: Vec<Uuid> = claimed.iter().map(|(_, c)| c.command.id).collect();
    got.sort();
    let mut want = vec![watched, quiet];
    want.sort();
    assert_eq!(got, want, "queued, of projects without a limit, once each");
    for (token, c) in &claimed {
        assert!(
            pairs.contains(&(c.command.id, *token)),
            "under one of its own tokens"
        );
        assert_eq!(c.command.status, CommandStatus::Running);
    }
    let status = |id| command_status(&client, id);
    assert_eq!(
        status(limited).await,
        "queued",
        "left for the project's lock"
    );
    assert_eq!(status(taken).await, "running");
    assert!(
        commands::claim_many(&client, "w1", &[])
            .await
            .expect("none")
            .is_empty()
    );
}

/// The finishes the one-statement batch leaves (an endpoint wants their
/// event) are written together in one transaction: the finishes in one
/// statement, each row under its own conditions, then every event's
/// deliveries in one insert, one per endpoint that wants it.
#[tokio::test]
async fn finishes_with_deliveries_are_written_together() {
    use uuid::Uuid;
    let (app, _receiver) = watched_quiet_limited().await;
    // A second endpoint for `quiet`'s failures, and one for every
    // project's successes.
    let rx = Receiver::always(200).await;
    create_webhook(
        &app,
        json!({"url": rx.url, "events": ["command.failed"], "project": "quiet"}),
    )
    .await;
    create_webhook(
        &app,
        json!({"url": rx.url, "events": ["command.succeeded"]}),
    )
    .await;
    let mut client = app.env.pool.get().await.expect("db");
    let ids = enqueue_true(&app, &["quiet", "quiet", "watched", "quiet"]).await;
    let [fails, succeeds, elsewhere, other] = ids[..] else {
        unreachable!()
    };
    // Running: three as w1's, one as another worker's.
    for (id, worker) in [
        (fails, "w1"),
        (succeeds, "w1"),
        (elsewhere, "w1"),
        (other, "w2"),
    ] {
        client
            .execute(
                "UPDATE commands SET status = 'running', worker_id = $2, started_at = now() \
                 WHERE id = $1",
                &[&id, &worker],
            )
            .await
            .expect("running");
    }
    let failed = exited(CommandStatus::Failed, 3);
    let succeeded = exited(CommandStatus::Succeeded, 0);
    let tx = client.transaction().await.expect("tx");
    let done = commands::finish_many(
        &tx,
        "w1",
        &[
            (fails, &failed),
            (succeeds, &succeeded),
            (elsewhere, &succeeded),
            (other, &succeeded),
        ],
    )
    .await
    .expect("finish");
    let mut got: Vec<(Uuid, CommandStatus)> = done.iter().map(|c| (c.id, c.status)).collect();
    got.sort_by_key(|(id, _)| *id);
    let mut want = vec![
        (fails, CommandStatus::Failed),
        (succeeds, CommandStatus::Succeeded),
        (elsewhere, CommandStatus::Succeeded),
    ];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(got, want, "w2's command is not w1's to finish");
    let topology = rdev_shared::mq::Topology::new(app.env.amqp.prefix.clone());
    let messages: Vec<_> = done
        .iter()
        .map(|c| {
            let kind = c.status.event_type().expect("terminal");
            let mut m = topology.event_message(kind, &rdev_shared::domain::command_event(kind, c));
            m.headers.insert(
                "traceparent".into(),
                format!("00-{:032x}-{:016x}-01", c.id.as_u128(), 1),
            );
            (m, c.project_id)
        })
        .collect();
    let written = webhooks::write_events(&tx, &messages)
        .await
        .expect("deliveries");
    tx.commit().await.expect("commit");
    // fails: the two endpoints for `quiet`'s failures; succeeds and
    // elsewhere: the one for every project's successes.
    assert_eq!(written, 4);
    let rows = client
        .query(
            "SELECT d.event_type, d.payload, d.trace_headers, w.url, d.id, d.xmin::text::bigint \
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id ORDER BY d.id",
            &[],
        )
        .await
        .expect("deliveries");
    assert_eq!(rows.len(), 4);
    let mut per_command: HashMap<String, Vec<String>> = HashMap::new();
    for row in &rows {
        let payload: Vec<u8> = row.get(1);
        let body: Value = serde_json::from_slice(&payload).expect("json");
        let kind: String = row.get(0);
        assert_eq!(body["type"], kind.as_str());
        let command = body["data"]["id"].as_str().expect("id").to_owned();
        let trace: Value = row.get(2);
        let id: Uuid = command.parse().expect("uuid");
        assert!(
            trace["traceparent"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("{:032x}", id.as_u128())),
            "each event keeps its own trace: {trace}"
        );
        per_command.entry(command).or_default().push(kind);
    }
    assert_eq!(per_command[&fails.to_string()], vec!["command.failed"; 2]);
    assert_eq!(
        per_command[&succeeds.to_string()],
        vec!["command.succeeded"]
    );
    assert_eq!(
        per_command[&elsewhere.to_string()],
        vec!["command.succeeded"]
    );
    let xmins: HashSet<i64> = rows.iter().map(|r| r.get(5)).collect();
    assert_eq!(xmins.len(), 1, "one transaction");
    let ids: HashSet<Uuid> = rows.iter().map(|r| r.get(4)).collect();
    assert_eq!(ids.len(), 4);
    // Nothing to write is no statement at all.
    let none: [(rdev_shared::mq::OutgoingMessage, Uuid); 0] = [];
    assert_eq!(
        webhooks::write_events(&client, &none).await.expect("none"),
        0
    );
}

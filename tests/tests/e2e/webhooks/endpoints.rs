//! An endpoint's health: the circuit breaker, `410 Gone`, disabling past
//! the failure limit, and disabling without deadlocks.

use std::time::{Duration, Instant};

use rdev_dispatcher::webhooks::schedule::parse_schedule;
use reqwest::Method;
use serde_json::{Value, json};

use rdev_tests::{dispatcher_config, spawn_app_with};

use super::{
    Receiver, RunningDispatcher, WAIT, attempt_codes, create_webhook, dead_url, deliveries, id_of,
    opts, send_test, status_is, total_attempts, wait_delivery,
};

#[tokio::test]
async fn the_circuit_breaker_stops_sends_to_a_dead_host() {
    let app = spawn_app_with(opts(false)).await;
    let mut cfg = dispatcher_config(&app.env);
    cfg.webhook_retry_schedule =
        parse_schedule("0s,100ms,100ms,100ms,100ms,100ms,100ms,100ms").expect("schedule");
    cfg.webhook_breaker_threshold = 2;
    cfg.webhook_breaker_open = Duration::from_secs(600);
    cfg.webhook_concurrency = 1;
    let url = dead_url().await;
    let w = create_webhook(&app, json!({"url": url, "events": ["*"]})).await;
    for _ in 0..3 {
        send_test(&app, &id_of(&w)).await;
    }
    let _d = RunningDispatcher::start(cfg).await;

    let deadline = Instant::now() + WAIT;
    while total_attempts(&app).await < 2 {
        assert!(Instant::now() < deadline, "no attempts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without the breaker, 3 deliveries × 8 attempts 100 ms apart would all
    // be dead within a second or two. With it, the count stays put.
    let opened = total_attempts(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        total_attempts(&app).await,
        opened,
        "sends continued while open"
    );
    assert_eq!(opened, 2, "the circuit opened after the threshold");
    let ds = deliveries(&app, &id_of(&w), "").await;
    assert_eq!(ds.len(), 3);
    assert!(ds.iter().all(|d| d["status"] == "pending"), "{ds:?}");
    let errors: Vec<&str> = ds
        .iter()
        .flat_map(|d| d["attempts"].as_array().cloned().unwrap_or_default())
        .map(|a| a["error"].as_str().unwrap_or_default().to_owned())
        .map(|e| if e.is_empty() { "none" } else { "some" })
        .collect();
    assert!(
        errors.iter().all(|e| *e == "some"),
        "connection errors are recorded"
    );
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_patch_re_enables_it() {
    let app = spawn_app_with(opts(true)).await;
    let rx = Receiver::start(|n, _| if n == 0 { 410 } else { 200 }).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let wid = id_of(&w);
    let d = send_test(&app, &wid).await;
    let d = wait_delivery(&app, &wid, &d, status_is("failed")).await;
    assert_eq!(attempt_codes(&d), vec![Some(410)]);
    let w = app.get(&format!("/v1/webhooks/{wid}")).await.json();
    assert_eq!(w["enabled"], false);
    assert!(
        w["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{w}"
    );
    let r = app
        .post(&format!("/v1/webhooks/{wid}/test"), json!({}))
        .await;
    r.assert_problem(409);

    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/webhooks/{wid}"),
            Some(&app.admin_key),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, 200);
    let w = r.json();
    assert_eq!(w["enabled"], true);
    assert_eq!(w["disabled_reason"], Value::Null);
    assert_eq!(w["failing_since"], Value::Null);
    let d = send_test(&app, &wid).await;
    wait_delivery(&app, &wid, &d, status_is("succeeded")).await;
    assert_eq!(rx.hits().len(), 2);

    // Deliveries page newest first with a cursor.
    let first = app
        .get(&format!("/v1/webhooks/{wid}/deliveries?limit=1"))
        .await
        .json();
    assert_eq!(first["items"][0]["id"], d);
    let cursor = first["next_cursor"].as_str().expect("cursor");
    let second = app
        .get(&format!(
            "/v1/webhooks/{wid}/deliveries?limit=1&cursor={cursor}"
        ))
        .await
        .json();
    assert_eq!(second["items"][0]["status"], "failed");

    // Other fields change; disabling by hand says so.
    let r = app
        .request(
            Method::PATCH,
            &format!("/v1/webhooks/{wid}"),
            Some(&app.admin_key),
            Some(json!({"events": ["command.failed", "command.failed"], "enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let w = r.json();
    assert_eq!(w["events"], json!(["command.failed"]));
    assert_eq!(w["enabled"], false);
    assert_eq!(w["disabled_reason"], "disabled through the API");

    let r = app
        .request(
            Method::DELETE,
            &format!("/v1/webhooks/{wid}"),
            Some(&app.admin_key),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    app.get(&format!("/v1/webhooks/{wid}"))
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn an_endpoint_failing_past_the_limit_is_disabled() {
    let app = spawn_app_with(opts(false)).await;
    let mut cfg = dispatcher_config(&app.env);
    cfg.webhook_retry_schedule = parse_schedule("0s,1s,1s,1s,1s,1s").expect("schedule");
    cfg.webhook_disable_after = Duration::from_secs(2);
    let _d = RunningDispatcher::start(cfg).await;
    let rx = Receiver::always(500).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let wid = id_of(&w);
    let d = send_test(&app, &wid).await;
    let d = wait_delivery(&app, &wid, &d, status_is("failed")).await;
    assert!(attempt_codes(&d).len() >= 3, "{d}");
    let w = app.get(&format!("/v1/webhooks/{wid}")).await.json();
    assert_eq!(w["enabled"], false);
    assert!(
        w["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("failing continuously")),
        "{w}"
    );
    assert!(w["failing_since"].is_string());
    let sent = rx.hits().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.hits().len(), sent, "no sends once disabled");
}

/// Issue 15, finding 8: an endpoint disabled (by the API) while a
/// dispatcher records an attempt of one of its deliveries. The API locks
/// the endpoint, then its pending deliveries; the dispatcher must take them
/// in the same order, or PostgreSQL finds a deadlock and aborts one side
/// (an attempt unrecorded, a 410 lost, or a 500).
#[tokio::test]
async fn disabling_an_endpoint_while_an_attempt_is_recorded_does_not_deadlock() {
    let app = spawn_app_with(opts(true)).await;
    let rx = Receiver::always(410).await;
    rx.answer_after(Duration::from_millis(800));
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let wid: uuid::Uuid = id_of(&w).parse().expect("uuid");
    let mut client = app.env.pool.get().await.expect("db");
    let before = deadlocks(&client).await;
    send_test(&app, &wid.to_string()).await;
    rx.wait_hits(1).await;
    // The API's disable, by hand so it can be held open: the endpoint
    // first; the receiver then answers and the dispatcher records.
    let tx = client.transaction().await.expect("tx");
    tx.execute(
        "UPDATE webhooks SET enabled = false, disabled_reason = 'by hand', updated_at = now() WHERE id = $1",
        &[&wid],
    )
    .await
    .expect("lock the endpoint");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Then its pending deliveries (`stop_pending`).
    tx.execute(
        "UPDATE webhook_deliveries SET status = 'failed', updated_at = now() \
         WHERE webhook_id = $1 AND status = 'pending'",
        &[&wid],
    )
    .await
    .expect("no deadlock on the API's side");
    tx.commit().await.expect("commit");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // pg_stat counters are flushed by backends at the end of transactions
    // (and at most every second): give them a moment.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = deadlocks(&client).await;
    assert_eq!(after - before, 0, "PostgreSQL found a deadlock");
}

async fn deadlocks(c: &rdev_shared::db::Client) -> i64 {
    c.query_one(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        &[],
    )
    .await
    .expect("stats")
    .get::<_, i64>(0)
}

/// A success ends the endpoint's failure run, and successes to a healthy
/// endpoint leave it healthy (that path takes no lock on the endpoint).
#[tokio::test]
async fn a_success_ends_the_endpoints_failure_run() {
    let app = spawn_app_with(opts(true)).await;
    let rx = Receiver::always(500).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let wid = id_of(&w);
    let d = send_test(&app, &wid).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let w = app.get(&format!("/v1/webhooks/{wid}")).await.json();
        if w["failing_since"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "never failing: {w}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rx.answer_with(|_, _| 200);
    wait_delivery(&app, &wid, &d, status_is("succeeded")).await;
    let w = app.get(&format!("/v1/webhooks/{wid}")).await.json();
    assert_eq!(w["failing_since"], Value::Null, "{w}");
    for _ in 0..3 {
        let d = send_test(&app, &wid).await;
        wait_delivery(&app, &wid, &d, status_is("succeeded")).await;
    }
    let w = app.get(&format!("/v1/webhooks/{wid}")).await.json();
    assert_eq!(w["failing_since"], Value::Null, "{w}");
    assert_eq!(w["enabled"], true, "{w}");
}

//! The retry schedule: spacing, `Retry-After`, dead deliveries, a
//! dispatcher restarted mid-schedule, redelivery and recovery.

use std::time::Duration;

use rdev_dispatcher::webhooks::schedule::parse_schedule;
use serde_json::{Value, json};

use rdev_tests::{dispatcher_config, spawn_app_with};

use super::{
    Receiver, RunningDispatcher, assert_spacing, attempt_codes, create_webhook, deliveries, id_of,
    opts, send_test, status_is, wait_delivery,
};

#[tokio::test]
async fn receiver_failing_twice_gets_three_attempts_at_the_scheduled_spacing() {
    let app = spawn_app_with(opts(true)).await; // schedule 0s,1s,1s
    let rx = Receiver::start(|n, _| if n < 2 { 500 } else { 200 }).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;

    let d = wait_delivery(&app, &id_of(&w), &d, status_is("succeeded")).await;
    assert_eq!(attempt_codes(&d), vec![Some(500), Some(500), Some(200)]);
    let hits = rx.hits();
    assert_eq!(hits.len(), 3);
    // 1 s minus the 10% jitter.
    assert_spacing(&hits, Duration::from_millis(900));
    let ids: Vec<String> = hits.iter().map(|h| h.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "webhook-id is stable across retries"
    );
    assert_eq!(d["next_attempt_at"], Value::Null);
}

#[tokio::test]
async fn receiver_that_never_succeeds_ends_dead_after_the_schedule() {
    let app = spawn_app_with(opts(true)).await;
    let rx = Receiver::always(503).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;
    let d = wait_delivery(&app, &id_of(&w), &d, status_is("dead")).await;
    assert_eq!(attempt_codes(&d), vec![Some(503); 3]);
    assert_eq!(rx.hits().len(), 3);
    let dead = deliveries(&app, &id_of(&w), "?status=dead").await;
    assert_eq!(dead.len(), 1);
    assert!(
        deliveries(&app, &id_of(&w), "?status=pending")
            .await
            .is_empty()
    );
    let r = app
        .get(&format!(
            "/v1/webhooks/{}/deliveries?status=nope",
            id_of(&w)
        ))
        .await;
    r.assert_problem(422);
}

#[tokio::test]
async fn retry_after_on_503_and_429_is_honoured_up_to_the_cap() {
    let app = spawn_app_with(opts(false)).await;
    let mut cfg = dispatcher_config(&app.env); // schedule 0s,1s,1s
    cfg.webhook_retry_after_max = Duration::from_secs(3);
    let _d = RunningDispatcher::start(cfg).await;

    // Retry-After: 2 beats the 1 s (±10%) scheduled delay.
    let rx = Receiver::start(|n, _| if n == 0 { 503 } else { 200 }).await;
    rx.send_retry_after("2");
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;
    wait_delivery(&app, &id_of(&w), &d, status_is("succeeded")).await;
    assert_spacing(&rx.hits(), Duration::from_millis(1950));

    // An hour is capped at 3 s: the retry still comes, after the cap.
    let rx = Receiver::start(|n, _| if n == 0 { 429 } else { 200 }).await;
    rx.send_retry_after("3600");
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;
    wait_delivery(&app, &id_of(&w), &d, status_is("succeeded")).await;
    assert_spacing(&rx.hits(), Duration::from_millis(2950));
}

#[tokio::test]
async fn restarting_the_dispatcher_mid_schedule_loses_and_doubles_no_attempt() {
    let app = spawn_app_with(opts(false)).await;
    let mut cfg = dispatcher_config(&app.env);
    cfg.webhook_retry_schedule = parse_schedule("0s,2s,2s,2s").expect("schedule");
    let rx = Receiver::start(|n, _| if n < 3 { 500 } else { 200 }).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let d = send_test(&app, &id_of(&w)).await;

    let first = RunningDispatcher::start(cfg.clone()).await;
    rx.wait_hits(1).await;
    first.shutdown().await;
    let after_stop = rx.hits().len();
    let second = RunningDispatcher::start(cfg.clone()).await;
    let d = wait_delivery(&app, &id_of(&w), &d, status_is("succeeded")).await;
    assert_eq!(
        second
            .metric("webhook_deliveries_total", "outcome=\"succeeded\"")
            .await,
        1.0
    );
    second.shutdown().await;

    assert!(after_stop >= 1);
    assert_eq!(
        attempt_codes(&d),
        vec![Some(500), Some(500), Some(500), Some(200)]
    );
    let hits = rx.hits();
    assert_eq!(hits.len(), 4, "every attempt sent exactly once");
    assert_spacing(&hits, Duration::from_millis(1800));
}

#[tokio::test]
async fn redeliver_and_recover_bring_failed_deliveries_back() {
    let app = spawn_app_with(opts(true)).await;
    let rx = Receiver::always(500).await;
    let w = create_webhook(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let wid = id_of(&w);
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let one = send_test(&app, &wid).await;
    let two = send_test(&app, &wid).await;
    let three = send_test(&app, &wid).await;
    for d in [&one, &two, &three] {
        wait_delivery(&app, &wid, d, status_is("dead")).await;
    }

    // Redeliver: one new attempt now.
    rx.answer_with(|_, _| 200);
    let r = app
        .post(
            &format!("/v1/webhooks/{wid}/deliveries/{one}/redeliver"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "pending");
    let d = wait_delivery(&app, &wid, &one, status_is("succeeded")).await;
    assert_eq!(attempt_codes(&d).len(), 4);

    // A failed manual redelivery is not retried.
    rx.answer_with(|_, _| 500);
    app.post(
        &format!("/v1/webhooks/{wid}/deliveries/{two}/redeliver"),
        json!({}),
    )
    .await;
    let d = wait_delivery(&app, &wid, &two, status_is("failed")).await;
    assert_eq!(attempt_codes(&d).len(), 4);

    // Recover: every failed/dead delivery since then, with a fresh schedule.
    rx.answer_with(|_, _| 200);
    let r = app
        .post(
            &format!("/v1/webhooks/{wid}/recover"),
            json!({"since": since.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["recovered"], 2);
    for d in [&two, &three] {
        wait_delivery(&app, &wid, d, status_is("succeeded")).await;
    }
    let r = app
        .post(
            &format!("/v1/webhooks/{wid}/deliveries/{}/redeliver", uuid_nil()),
            json!({}),
        )
        .await;
    r.assert_problem(404);

    let c = app.env.pool.get().await.expect("db");
    let actions: Vec<String> = c
        .query(
            "SELECT action FROM audit_log WHERE target_type = 'webhook' ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for a in [
        "webhook.create",
        "webhook.test",
        "webhook.redeliver",
        "webhook.recover",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
}

fn uuid_nil() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

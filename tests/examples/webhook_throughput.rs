//! Measures webhook dispatch throughput end to end: N events published to
//! `{prefix}.events` (the way workers publish them), consumed and fanned out
//! by a real dispatcher, signed and POSTed to a local receiver answering 204,
//! and recorded as succeeded.
//!
//! Run: `cargo run -p rdev-tests --example webhook_throughput [--release] -- [N] [CONCURRENCY]`
//! (needs PostgreSQL and RabbitMQ like the tests; leaves nothing behind).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use rdev_dispatcher::webhooks::schedule::parse_schedule;
use rdev_shared::config::Secret;
use rdev_shared::db::webhooks::{self, NewWebhook};
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::mq::Publisher;
use rdev_shared::test_support::TestEnv;
use rdev_shared::webhook_sign;

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let env = TestEnv::new().await;

    let (addr, received) = receiver().await;
    let client = env.pool.get().await.expect("db");
    webhooks::insert(
        &client,
        &NewWebhook {
            url: format!("http://{addr}/hook"),
            secret: Secret::new(webhook_sign::generate_secret()),
            events: vec!["*".into()],
            project_id: None,
        },
    )
    .await
    .expect("webhook");

    // Queue every event first, so the measurement is the dispatcher's alone.
    publish_events(&env, n).await;

    let stop = CancellationToken::new();
    let t = Instant::now();
    let d = rdev_dispatcher::start(config(&env, concurrency), stop.clone())
        .await
        .expect("dispatcher");
    let (fanned_out, total) = wait_for_deliveries(&env, n, t).await;
    stop.cancel();
    let _ = d.task.await;
    let attempts = count(&env, "SELECT count(*) FROM webhook_attempts").await;
    println!(
        "dispatched {n} events (concurrency {concurrency}): all fanned out after {fanned_out:?}, \
         all delivered after {total:?} = {:.0} deliveries/s; receiver got {} requests, {attempts} attempts recorded",
        n as f64 / total.as_secs_f64(),
        received.load(Ordering::Relaxed),
    );
}

/// A local receiver answering 204 to everything, and its request count.
async fn receiver() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let received = Arc::new(AtomicUsize::new(0));
    let app = Router::new().fallback({
        let received = received.clone();
        move || async move {
            received.fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, received)
}

/// `n` `command.succeeded` events on the events exchange, each confirmed.
async fn publish_events(env: &TestEnv, n: usize) {
    let publisher = Publisher::new(env.amqp.clone(), "throughput");
    let t = Instant::now();
    for i in 0..n {
        let body = serde_json::json!({
            "id": uuid::Uuid::now_v7(),
            "type": "command.succeeded",
            "timestamp": chrono::Utc::now(),
            "data": {"id": uuid::Uuid::now_v7(), "seq": i},
        });
        let m = env.topology.event_message("command.succeeded", &body);
        publisher.publish_confirmed(&m).await.expect("publish");
    }
    println!("published {n} events in {:?}", t.elapsed());
}

/// The dispatcher's settings: local ones, with a private receiver allowed,
/// fast polls, quick retries and a breaker that does not trip.
fn config(env: &TestEnv, concurrency: usize) -> rdev_dispatcher::config::Config {
    let db = rdev_shared::config::DbConfig {
        pool_size: 16,
        statement_timeout_s: 30,
        ..env.db.clone()
    };
    rdev_dispatcher::config::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        webhook_retry_schedule: parse_schedule("0s,1s,1s").expect("schedule"),
        webhook_allow_private: true,
        webhook_disable_after: Duration::from_secs(3600),
        webhook_concurrency: concurrency,
        webhook_poll: Duration::from_millis(100),
        webhook_breaker_threshold: 1000,
        ..rdev_dispatcher::config::Config::local(db, env.amqp.clone())
    }
}

/// Waits until `n` deliveries succeeded; returns when all were fanned out
/// and when all were delivered, measured from `t`.
async fn wait_for_deliveries(env: &TestEnv, n: usize, t: Instant) -> (Duration, Duration) {
    let mut fanned_out = None;
    loop {
        if fanned_out.is_none() && count(env, "SELECT count(*) FROM webhook_deliveries").await >= n
        {
            fanned_out = Some(t.elapsed());
        }
        if count(
            env,
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'",
        )
        .await
            >= n
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = t.elapsed();
    (fanned_out.unwrap_or(total), total)
}

/// The one number `sql` answers.
async fn count(env: &TestEnv, sql: &'static str) -> usize {
    let c = env.pool.get().await.expect("db");
    let v: i64 = c.query_one(sql, &[]).await.expect("count").get(0);
    usize::try_from(v).unwrap_or(0)
}

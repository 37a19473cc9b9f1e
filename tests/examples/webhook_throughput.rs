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
use rdev_shared::config::{LogConfig, LogFormat, Secret};
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

    let cfg = rdev_dispatcher::config::Config {
        db: rdev_shared::config::DbConfig {
            pool_size: 16,
            statement_timeout_s: 30,
            ..env.db.clone()
        },
        amqp: env.amqp.clone(),
        log: LogConfig {
            log_format: LogFormat::Text,
        },
        listen: "127.0.0.1:0".parse().expect("addr"),
        relay_interval: Duration::from_secs(1),
        relay_min_age: Duration::from_secs(5),
        lost_after_s: 30,
        requeue_after: Duration::from_secs(600),
        webhook_retry_schedule: parse_schedule("0s,1s,1s").expect("schedule"),
        webhook_timeout_s: 15,
        webhook_allow_private: true,
        webhook_disable_after: Duration::from_secs(3600),
        webhook_concurrency: concurrency,
        webhook_poll: Duration::from_millis(100),
        webhook_breaker_threshold: 1000,
        webhook_breaker_open: Duration::from_secs(30),
        webhook_retry_after_max: Duration::from_secs(3600),
        webhook_prefetch: 64,
        audit_retention: Duration::from_secs(90 * 86_400),
        outbox_retention: Duration::from_secs(86_400),
        output_retention: Duration::from_secs(30 * 86_400),
        command_retention: Duration::from_secs(90 * 86_400),
        webhook_retention: Duration::from_secs(30 * 86_400),
        retention_interval: Duration::from_secs(300),
    };
    let stop = CancellationToken::new();
    let t = Instant::now();
    let d = rdev_dispatcher::start(cfg, stop.clone())
        .await
        .expect("dispatcher");

    let count = |sql: &'static str| {
        let pool = env.pool.clone();
        async move {
            let c = pool.get().await.expect("db");
            let v: i64 = c.query_one(sql, &[]).await.expect("count").get(0);
            v as usize
        }
    };
    let mut fanned_out = None;
    loop {
        if fanned_out.is_none() && count("SELECT count(*) FROM webhook_deliveries").await >= n {
            fanned_out = Some(t.elapsed());
        }
        if count("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'").await >= n {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = t.elapsed();
    let fanned_out = fanned_out.unwrap_or(total);
    stop.cancel();
    let _ = d.task.await;
    let attempts = count("SELECT count(*) FROM webhook_attempts").await;
    println!(
        "dispatched {n} events (concurrency {concurrency}): all fanned out after {fanned_out:?}, \
         all delivered after {total:?} = {:.0} deliveries/s; receiver got {} requests, {attempts} attempts recorded",
        n as f64 / total.as_secs_f64(),
        received.load(Ordering::Relaxed),
    );
}

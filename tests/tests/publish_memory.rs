//! Issue 15, finding 2: publishing transient messages (live output, control
//! broadcasts) leaks nothing. lapin keeps every dropped, unanswered
//! publisher confirm until `wait_for_confirms()`, so transient traffic must
//! not go through a confirm-mode channel unawaited.
//!
//! Its own binary: it measures this process's resident memory.
//! `RDEV_PUBLISH_MEMTEST_N` chunks (default 200,000; the figure in
//! docs/BENCHMARKS.md is for 1,000,000: before the fix RSS grew 88 -> 647 MiB,
//! after it stayed at 25 MiB).

use std::time::Instant;

use bytes::Bytes;
use rdev_shared::domain::OutputStream;
use rdev_shared::mq::{OutputEvent, Publisher};
use rdev_shared::test_support::TestEnv;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_output_chunks_keeps_memory_flat() {
    let n: i64 = std::env::var("RDEV_PUBLISH_MEMTEST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let env = TestEnv::new().await;
    let publisher = Publisher::new(env.amqp.clone(), "publish-memtest");
    let id = uuid::Uuid::now_v7();
    let data = Bytes::from_static(b"0123456789abcdef0123456789abcdef");
    let publish = |from: i64, to: i64| {
        let publisher = publisher.clone();
        let data = data.clone();
        async move {
            for seq in from..to {
                let event = OutputEvent::Chunk {
                    seq,
                    stream: OutputStream::Stdout,
                    data: data.clone(),
                };
                publisher.publish_output(id, &event).await.expect("publish");
                if seq % 1000 == 0 {
                    publisher
                        .publish_control(&rdev_shared::mq::ControlMessage::Unknown)
                        .await
                        .expect("control");
                }
            }
        }
    };
    // Warm up: connection, buffers, allocator arenas.
    let warm = n / 10;
    publish(1, warm + 1).await;
    let before = rss_bytes();
    let started = Instant::now();
    publish(warm + 1, n + 1).await;
    let after = rss_bytes();
    let grew = after.saturating_sub(before);
    eprintln!(
        "published {} chunks in {:?}: RSS {} MiB -> {} MiB",
        n - warm,
        started.elapsed(),
        before >> 20,
        after >> 20
    );
    assert!(
        grew < 16 << 20,
        "RSS grew by {} MiB over {} chunks",
        grew >> 20,
        n - warm
    );
}

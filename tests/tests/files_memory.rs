//! A large file streams up and down through the files API byte-exact while
//! the process (the in-process API and the client) grows by less than
//! 32 MiB. Its own test binary, so no other test disturbs the measurement.
//!
//! Size: `RDEV_FILES_TEST_MB` (default 1024).

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use rdev_tests::spawn_app;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Deterministic bytes: piece `i` of `PIECE` bytes.
fn piece(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `RDEV_FILES_TEST_MB` (default 1024) streamed up and down; this whole
/// test process (client and API) must grow by less than 32 MiB.
#[tokio::test]
async fn a_large_file_streams_up_and_down_byte_exact_with_bounded_memory() {
    const PIECE: usize = 256 * 1024;
    let mb: u64 = std::env::var("RDEV_FILES_TEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let pieces = mb * 1024 * 1024 / PIECE as u64;
    let size = pieces * PIECE as u64;
    let app = spawn_app().await;
    app.create_project("app", json!({})).await;
    let base = rss_bytes();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let body = futures::stream::iter(0..pieces)
        .map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(piece(i, PIECE))));
    let started = std::time::Instant::now();
    let r = app
        .send(
            app.http
                .put(app.url("/v1/projects/app/files/big.bin"))
                .bearer_auth(&app.admin_key)
                .header("content-length", size)
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let up = started.elapsed();
    eprintln!(
        "files: after upload RSS +{:.1} MiB (peak +{:.1})",
        rss_bytes().saturating_sub(base) as f64 / 1048576.0,
        peak.load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(base) as f64
            / 1048576.0
    );
    let resp = app
        .http
        .get(app.url("/v1/projects/app/files/big.bin"))
        .bearer_auth(&app.admin_key)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let (mut at, mut expected, mut index) = (0u64, Vec::new(), 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            if expected.is_empty() {
                expected = piece(index, PIECE);
                index += 1;
            }
            let n = rest.len().min(expected.len());
            assert_eq!(&rest[..n], &expected[..n], "byte {at}");
            expected.drain(..n);
            rest = &rest[n..];
            at += n as u64;
        }
    }
    assert_eq!(at, size);
    sampler.abort();
    let growth = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(base);
    eprintln!(
        "files: {mb} MiB up in {:.1}s, round trip in {:.1}s; process RSS growth {:.1} MiB",
        up.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        growth as f64 / 1048576.0
    );
    assert!(growth < 32 << 20, "RSS grew by {growth} bytes");
    let _: Value = app.get("/v1/projects/app/files?list").await.json();
}

//! The SSE watchers: each follows one command's events to `end`, resuming
//! with `Last-Event-ID` whenever it is cut.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

use crate::{Failures, fail};

#[derive(Default)]
pub struct WatchStats {
    pub ended: AtomicU64,
    pub gave_up: AtomicU64,
    pub resumes: AtomicU64,
}

/// Follows a command's events until `end`, resuming with Last-Event-ID on
/// any cut, on a random API instance; returns the bytes seen if it ended.
pub async fn watch(
    http: reqwest::Client,
    apis: Vec<String>,
    key: String,
    id: String,
    stats: Arc<WatchStats>,
    until: Instant,
    failures: Failures,
) -> Option<Vec<u8>> {
    let mut last: i64 = 0;
    let mut seen: Vec<u8> = Vec::new();
    let mut attempt = 0usize;
    while Instant::now() < until {
        let base = &apis[(attempt + id.len()) % apis.len()];
        attempt += 1;
        let mut req = http
            .get(format!("{base}/v1/commands/{id}/events"))
            .bearer_auth(&key);
        if last > 0 {
            req = req.header("Last-Event-ID", last.to_string());
            stats.resumes.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(resp) = req.send().await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        if !resp.status().is_success() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let mut events = resp.bytes_stream().eventsource();
        while let Ok(Some(Ok(ev))) =
            tokio::time::timeout(Duration::from_secs(30), events.next()).await
        {
            match ev.event.as_str() {
                "output" => {
                    let d: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    let seq = d["seq"].as_i64().unwrap_or(0);
                    if seq != last + 1 {
                        fail(
                            &failures,
                            format!("watcher of {id}: seq {seq} after {last} (duplicate or hole)"),
                        );
                    }
                    last = seq;
                    seen.extend_from_slice(d["data"].as_str().unwrap_or_default().as_bytes());
                }
                "gap" => {
                    let d: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    last = d["to_seq"].as_i64().unwrap_or(last);
                }
                "end" => {
                    stats.ended.fetch_add(1, Ordering::Relaxed);
                    return Some(seen);
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stats.gave_up.fetch_add(1, Ordering::Relaxed);
    None
}

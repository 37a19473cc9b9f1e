//! `rdev bench enqueue`: closed-loop clients POSTing trivial commands for a
//! fixed time; throughput, latency percentiles, errors by status.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::json;

use super::Report;
use crate::args::EnqueueArgs;
use crate::client::{Client, ClientError};
use crate::units::seg;

/// What one client saw.
#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    errors: BTreeMap<String, u64>,
}

/// Runs the scenario.
pub async fn run(
    client: &Client,
    project: &str,
    mut rng: StdRng,
    a: &EnqueueArgs,
) -> Result<Report, ClientError> {
    let path = format!("/v1/projects/{}/commands", seg(project));
    let start = Instant::now();
    let deadline = start + a.duration;
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        // Each client gets its own seeded stream of priorities.
        let mut rng = StdRng::from_rng(&mut rng);
        let client = client.clone();
        let path = path.clone();
        let command = a.command.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let body = json!({ "command": command, "priority": rng.random_range(0..=9) });
                let sent = Instant::now();
                let res = client.request(Method::POST, &path).json(&body).send().await;
                let outcome = match res {
                    Ok(resp) => {
                        let status = resp.status();
                        // Read the body so the connection is reused.
                        let _ = resp.bytes().await;
                        if status.is_success() {
                            None
                        } else {
                            Some(status.as_u16().to_string())
                        }
                    }
                    Err(e) if e.is_timeout() => Some("timeout".to_owned()),
                    Err(_) => Some("transport".to_owned()),
                };
                match outcome {
                    None => t.latencies_ms.push(sent.elapsed().as_secs_f64() * 1e3),
                    Some(k) => *t.errors.entry(k).or_default() += 1,
                }
            }
            t
        }));
    }
    let mut t = Tally::default();
    for task in tasks {
        if let Ok(one) = task.await {
            t.latencies_ms.extend(one.latencies_ms);
            for (k, v) in one.errors {
                *t.errors.entry(k).or_default() += v;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let errors: u64 = t.errors.values().sum();
    let mut r = Report::new(
        "enqueue",
        json!({
            "project": project,
            "concurrency": a.concurrency,
            "duration_s": a.duration.as_secs_f64(),
            "command": a.command,
        }),
    );
    r.fig("requests_ok", t.latencies_ms.len() as f64, "");
    r.fig("errors", errors as f64, "");
    r.fig("elapsed", elapsed, "s");
    r.fig("throughput", t.latencies_ms.len() as f64 / elapsed, "req/s");
    r.latency("latency", &mut t.latencies_ms);
    r.extra = json!({ "errors_by_status": t.errors });
    r.ok = errors == 0;
    Ok(r)
}

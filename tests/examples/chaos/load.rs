//! The workload: a command every ~120 ms, round-robin over the APIs, a mix
//! of long, big-output, concurrency-limited and short ones; every third is
//! followed by an SSE watcher.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::Failures;
use crate::watch::{WatchStats, watch};

/// An accepted command.
pub struct Submitted {
    pub id: String,
    pub project: &'static str,
    pub token: String,
    pub watched: Option<JoinHandle<Option<Vec<u8>>>>,
}

/// What the submitting task shares with the run.
#[derive(Clone)]
pub struct Submitter {
    pub http: reqwest::Client,
    pub apis: Vec<String>,
    pub admin: String,
    pub stats: Arc<WatchStats>,
    pub failures: Failures,
    pub watch_until: Instant,
    stop: Arc<AtomicBool>,
    submitted: Arc<Mutex<Vec<Submitted>>>,
    refused: Arc<AtomicU64>,
}

/// The running workload.
pub struct Load {
    task: JoinHandle<()>,
    submitter: Submitter,
}

/// The `n`-th command: its project and command line. Each appends a line to
/// `ran.{token}` in its project's directory.
fn command(n: u64, token: &str) -> (&'static str, String) {
    match n % 10 {
        // Long, with output as it goes.
        0 | 1 => (
            "free",
            format!(
                "echo run >> ran.{token}; for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done; sleep 1.77{token}"
            ),
        ),
        // Big output.
        2 => (
            "free",
            format!(
                "echo run >> ran.{token}; yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 2000000"
            ),
        ),
        // The concurrency-limited project.
        3 | 4 => (
            "limited",
            format!("echo run >> ran.{token}; echo limited; sleep 0.77{token}"),
        ),
        _ => (
            "free",
            format!("echo run >> ran.{token}; echo short {token}"),
        ),
    }
}

impl Submitter {
    pub fn new(
        http: reqwest::Client,
        apis: Vec<String>,
        admin: String,
        stats: Arc<WatchStats>,
        failures: Failures,
        watch_until: Instant,
    ) -> Self {
        Self {
            http,
            apis,
            admin,
            stats,
            failures,
            watch_until,
            stop: Arc::new(AtomicBool::new(false)),
            submitted: Arc::default(),
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts submitting until [`Load::stop`].
    pub fn start(self) -> Load {
        let task = tokio::spawn(self.clone().submit_all());
        Load {
            task,
            submitter: self,
        }
    }

    async fn submit_all(self) {
        let mut n: u64 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            self.submit(n).await;
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }

    async fn submit(&self, n: u64) {
        let token = format!("{:06}", n);
        let (project, line) = command(n, &token);
        let api = &self.apis[(n as usize) % self.apis.len()];
        let resp = self
            .http
            .post(format!("{api}/v1/projects/{project}/commands"))
            .bearer_auth(&self.admin)
            .json(&json!({"command": line, "timeout_s": 120}))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().as_u16() == 202 => {
                let c: Value = r.json().await.unwrap_or(Value::Null);
                let id = c["id"].as_str().unwrap_or_default().to_owned();
                let watched = n.is_multiple_of(3).then(|| {
                    tokio::spawn(watch(
                        self.http.clone(),
                        self.apis.clone(),
                        self.admin.clone(),
                        id.clone(),
                        self.stats.clone(),
                        self.watch_until,
                        self.failures.clone(),
                    ))
                });
                self.submitted.lock().expect("submitted").push(Submitted {
                    id,
                    project,
                    token,
                    watched,
                });
            }
            _ => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

impl Load {
    /// Stops the workload and returns the accepted commands (and prints how
    /// many were accepted and refused).
    pub async fn stop(self) -> Vec<Submitted> {
        self.submitter.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let subs: Vec<Submitted> =
            std::mem::take(&mut *self.submitter.submitted.lock().expect("submitted"));
        println!(
            "chaos: load over: {} commands accepted, {} refused (a service down)",
            subs.len(),
            self.submitter.refused.load(Ordering::Relaxed)
        );
        subs
    }
}

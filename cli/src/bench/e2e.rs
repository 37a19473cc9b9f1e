//! `rdev bench e2e`: N trivial commands from enqueue to a terminal status.
//!
//! Durations come from the API's own timestamps (`created_at`,
//! `started_at`, `finished_at`), so how often we look does not change them:
//! queue-to-start is `started_at − created_at`, enqueue-to-finish is
//! `finished_at − created_at`, throughput is N over the span from the first
//! `created_at` to the last `finished_at`. A batch is followed by looking at
//! the project's newest queued command and our running ones until the
//! queue is empty and none of ours runs (two small requests per look,
//! whatever the backlog), then reading the pages once for the timestamps.
//! With `-n 1` each command is followed by `GET /v1/commands/{id}` every
//! few milliseconds (or, `--follow stream`, on its event stream to the
//! `end` event, as `rdev run` does; or, `--follow wait`, by
//! `GET /v1/commands/{id}?wait=50`, answered when it ends), which also
//! gives the latency a client observes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::{Report, enqueue, trivial};
use crate::args::{E2eArgs, Follow};
use crate::client::{Client, ClientError};
use crate::commands::run::has_ended;
use crate::units::seg;

/// Between looks at a batch's progress.
const BATCH_POLL: Duration = Duration::from_millis(50);
/// Between looks at a single command.
const SINGLE_POLL: Duration = Duration::from_millis(2);
/// `--follow wait`: the `wait` of each read, in seconds (the API's most).
const WAIT_S: u64 = 50;
/// Items per list page (the API's maximum).
const PAGE: i64 = 200;
/// Give up on a batch after this long without progress.
const STALL: Duration = Duration::from_secs(60);

fn ts(cmd: &Value, field: &str) -> Option<DateTime<Utc>> {
    cmd.get(field)?.as_str()?.parse().ok()
}

fn ms(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

/// Collected timings of finished commands.
#[derive(Default)]
struct Timings {
    queue_to_start: Vec<f64>,
    enqueue_to_finish: Vec<f64>,
    observed: Vec<f64>,
    statuses: HashMap<String, u64>,
    first_created: Option<DateTime<Utc>>,
    last_finished: Option<DateTime<Utc>>,
}

impl Timings {
    fn add(&mut self, cmd: &Value) {
        let status = cmd.get("status").and_then(Value::as_str).unwrap_or("?");
        *self.statuses.entry(status.to_owned()).or_default() += 1;
        let (Some(c), Some(f)) = (ts(cmd, "created_at"), ts(cmd, "finished_at")) else {
            return;
        };
        if let Some(s) = ts(cmd, "started_at") {
            self.queue_to_start.push(ms(c, s));
        }
        self.enqueue_to_finish.push(ms(c, f));
        self.first_created = Some(self.first_created.map_or(c, |x| x.min(c)));
        self.last_finished = Some(self.last_finished.map_or(f, |x| x.max(f)));
    }
}

/// Runs the scenario.
pub async fn run(
    client: &Client,
    project: &str,
    mut rng: StdRng,
    a: &E2eArgs,
) -> Result<Report, ClientError> {
    let mut t = Timings::default();
    let wall = Instant::now();
    let mut spans = Vec::new();
    for round in 0..a.repeat {
        if round > 0 {
            tokio::time::sleep(a.pause).await;
        }
        let bodies: Vec<Value> = (0..a.n).map(|_| trivial(&mut rng, &a.command)).collect();
        let round_start = Instant::now();
        if a.n == 1 {
            single(client, project, &bodies[0], a.follow, &mut t).await?;
        } else {
            batch(client, project, bodies, a.concurrency, &mut t).await?;
        }
        spans.push(round_start.elapsed().as_secs_f64());
    }
    let wall = wall.elapsed().as_secs_f64();
    let total = (a.n * a.repeat) as f64;
    let mut r = Report::new(
        "e2e",
        json!({
            "project": project, "n": a.n, "repeat": a.repeat,
            "concurrency": a.concurrency, "command": a.command, "follow": a.follow,
        }),
    );
    r.fig("commands", total, "");
    let succeeded = t.statuses.get("succeeded").copied().unwrap_or(0);
    r.fig("succeeded", succeeded as f64, "");
    if a.repeat == 1 {
        if let (Some(c), Some(f)) = (t.first_created, t.last_finished) {
            r.fig("throughput_server", total / (ms(c, f) / 1e3), "cmd/s");
        }
        r.fig("throughput_client", total / wall, "cmd/s");
    }
    r.latency("queue_to_start", &mut t.queue_to_start);
    r.latency("enqueue_to_finish", &mut t.enqueue_to_finish);
    if !t.observed.is_empty() {
        r.latency("client_observed", &mut t.observed);
    }
    r.extra = json!({ "statuses": t.statuses });
    r.ok = succeeded as f64 == total;
    Ok(r)
}

/// One command, polled by id or followed on its event stream.
async fn single(
    client: &Client,
    project: &str,
    body: &Value,
    follow: Follow,
    t: &mut Timings,
) -> Result<(), ClientError> {
    let sent = Instant::now();
    let cmd = enqueue(client, project, body).await?;
    let id = cmd
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if follow == Follow::Stream {
        let mut follower =
            crate::events::Follower::new(client.clone(), id).with_sink(Box::new(|_| {}));
        let cmd = tokio::time::timeout(STALL, follower.run())
            .await
            .map_err(|_| stalled(client, "the command is still not finished"))??;
        t.observed.push(sent.elapsed().as_secs_f64() * 1e3);
        t.add(&cmd);
        return Ok(());
    }
    let path = format!("/v1/commands/{}", seg(&id));
    let query = match follow {
        Follow::Wait => vec![("wait", WAIT_S.to_string())],
        Follow::Poll | Follow::Stream => Vec::new(),
    };
    loop {
        let cmd = client.get(&path, &query).await?;
        if has_ended(&cmd) {
            t.observed.push(sent.elapsed().as_secs_f64() * 1e3);
            t.add(&cmd);
            return Ok(());
        }
        if sent.elapsed() > STALL {
            return Err(stalled(client, "the command is still not finished"));
        }
        if follow == Follow::Poll {
            tokio::time::sleep(SINGLE_POLL).await;
        }
    }
}

fn stalled(client: &Client, left: &str) -> ClientError {
    ClientError::Transport {
        url: client.base_url().to_owned(),
        reason: format!(
            "{left} after {}s without progress — is a worker running?",
            STALL.as_secs()
        ),
    }
}

/// N commands enqueued by `concurrency` clients, then followed by listing.
async fn batch(
    client: &Client,
    project: &str,
    bodies: Vec<Value>,
    concurrency: usize,
    t: &mut Timings,
) -> Result<(), ClientError> {
    let created: Vec<Result<Value, ClientError>> = futures::stream::iter(bodies)
        .map(|b| async move { enqueue(client, project, &b).await })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut ours = HashSet::new();
    for c in created {
        let c = c?;
        if let Some(id) = c.get("id").and_then(Value::as_str) {
            ours.insert(id.to_owned());
        }
    }
    wait_until_done(client, project, &ours).await?;
    // Read the finished commands, newest first, until all of ours are seen.
    let mut left = ours.clone();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("project", project.to_owned()), ("limit", PAGE.to_string())];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page = client.get("/v1/commands", &q).await?;
        for c in page
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(id) = c.get("id").and_then(Value::as_str)
                && left.remove(id)
            {
                t.add(c);
            }
        }
        cursor = page
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if left.is_empty() || cursor.is_none() {
            break;
        }
    }
    Ok(())
}

/// Waits until the project has nothing queued and none of `ours` runs. A
/// look costs two small requests whatever the queue's depth (the newest
/// queued command, and the running ones, at most the workers' slots): a
/// look that read every queued command would load the API and the
/// database in proportion to the backlog, on the machine being measured.
async fn wait_until_done(
    client: &Client,
    project: &str,
    ours: &HashSet<String>,
) -> Result<(), ClientError> {
    let mut last_look = None;
    let mut progress_at = Instant::now();
    loop {
        let look = Look {
            newest_queued: first_id(client, project, "queued").await?,
            running: list(client, project, Some("running"), |c| {
                c.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| ours.contains(id))
            })
            .await?
            .iter()
            .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        };
        if look.newest_queued.is_none() && look.running.is_empty() {
            break;
        }
        if last_look.as_ref() != Some(&look) {
            last_look = Some(look);
            progress_at = Instant::now();
        } else if progress_at.elapsed() > STALL {
            let left = format!(
                "{} of ours running, {} queued",
                look.running.len(),
                if look.newest_queued.is_some() {
                    "some"
                } else {
                    "none"
                }
            );
            return Err(stalled(client, &left));
        }
        tokio::time::sleep(BATCH_POLL).await;
    }
    Ok(())
}

/// What one look at a batch saw: it progresses while this changes.
#[derive(PartialEq, Eq)]
struct Look {
    /// The project's newest queued command (any, not only ours: the bench's
    /// project is the bench's own).
    newest_queued: Option<String>,
    /// Ours that run.
    running: HashSet<String>,
}

/// The id of the project's newest command in `status`, if any.
async fn first_id(
    client: &Client,
    project: &str,
    status: &str,
) -> Result<Option<String>, ClientError> {
    let q = [
        ("project", project.to_owned()),
        ("status", status.to_owned()),
        ("limit", "1".to_owned()),
    ];
    let page = client.get("/v1/commands", &q).await?;
    Ok(page
        .get("items")
        .and_then(Value::as_array)
        .and_then(|items| items.first())
        .and_then(|c| c.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned))
}

/// Every command of `project` (in `status`) on all pages that `keep` accepts.
async fn list(
    client: &Client,
    project: &str,
    status: Option<&str>,
    keep: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>, ClientError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("project", project.to_owned()), ("limit", PAGE.to_string())];
        if let Some(s) = status {
            q.push(("status", s.to_owned()));
        }
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page = client.get("/v1/commands", &q).await?;
        out.extend(
            page.get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| keep(c))
                .cloned(),
        );
        cursor = page
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if cursor.is_none() {
            return Ok(out);
        }
    }
}

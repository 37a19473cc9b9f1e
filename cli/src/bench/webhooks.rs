//! `rdev bench webhooks`: an HTTP receiver inside this process, registered
//! as a webhook endpoint (DESIGN §5: `POST /v1/webhooks {url, events,
//! project}`); N trivial commands; deliveries/s and event-to-delivery
//! latency (receive time − the event body's `timestamp`).
//!
//! The receiver listens on 127.0.0.1, so the dispatcher must allow private
//! addresses (`RDEV_WEBHOOK_ALLOW_PRIVATE=1`). The endpoint is deleted at
//! the end.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Report, enqueue, trivial};
use crate::args::WebhooksArgs;
use crate::client::{Client, ClientError};
use crate::units::seg;

/// One delivery as the receiver saw it.
struct Received {
    at: DateTime<Utc>,
    at_instant: Instant,
    webhook_id: Option<String>,
    body: Value,
}

async fn receive(
    State(tx): State<mpsc::UnboundedSender<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = Utc::now();
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = tx.send(Received {
        at,
        at_instant: Instant::now(),
        webhook_id,
        body,
    });
    StatusCode::NO_CONTENT
}

/// The largest number of `arrivals` (in order) within any 1 s window.
fn peak_per_second(arrivals: &[Instant]) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (i, t) in arrivals.iter().enumerate() {
        while t.duration_since(arrivals[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        best = best.max(i + 1 - start);
    }
    best
}

fn io_error(e: std::io::Error) -> ClientError {
    ClientError::Transport {
        url: "http://127.0.0.1:0 (the embedded receiver)".to_owned(),
        reason: e.to_string(),
    }
}

/// Runs the scenario.
pub async fn run(
    client: &Client,
    project: &str,
    mut rng: StdRng,
    a: &WebhooksArgs,
) -> Result<Report, ClientError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io_error)?;
    let addr = listener.local_addr().map_err(io_error)?;
    let app = Router::new().route("/hook", post(receive)).with_state(tx);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let hook = client
        .post(
            "/v1/webhooks",
            &json!({
                "url": format!("http://{addr}/hook"),
                "events": a.events,
                "project": project,
            }),
        )
        .await?;
    let hook_id = hook
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let result = drive(client, project, &mut rng, a, &mut rx).await;
    // Leave no endpoint behind, whatever happened.
    let _ = client
        .delete(&format!("/v1/webhooks/{}", seg(&hook_id)))
        .await;
    server.abort();
    result
}

/// Enqueues `a.n` trivial commands, `a.concurrency` at a time; their ids.
async fn enqueue_all(
    client: &Client,
    project: &str,
    rng: &mut StdRng,
    a: &WebhooksArgs,
) -> Result<HashSet<String>, ClientError> {
    let bodies: Vec<Value> = (0..a.n).map(|_| trivial(rng, "true")).collect();
    let created: Vec<Result<Value, ClientError>> = futures::stream::iter(bodies)
        .map(|b| async move { enqueue(client, project, &b).await })
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    let mut ours = HashSet::new();
    for c in created {
        if let Some(id) = c?.get("id").and_then(Value::as_str) {
            ours.insert(id.to_owned());
        }
    }
    Ok(ours)
}

/// What the receiver has taken so far.
#[derive(Default)]
struct Taken {
    lat: Vec<f64>,
    seen: HashSet<String>,
    duplicates: u64,
    foreign: u64,
    arrivals: Vec<Instant>,
}

impl Taken {
    /// Counts one delivery; whether it was one of `ours` seen for the first
    /// time.
    fn take(&mut self, d: Received, ours: &HashSet<String>) -> bool {
        let cmd_id = d.body.pointer("/data/id").and_then(Value::as_str);
        if !cmd_id.is_some_and(|id| ours.contains(id)) {
            self.foreign += 1;
            return false;
        }
        if let Some(wid) = d.webhook_id
            && !self.seen.insert(wid)
        {
            self.duplicates += 1;
            return false;
        }
        let ts: Option<DateTime<Utc>> = d
            .body
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        if let Some(ts) = ts {
            self.lat
                .push((d.at - ts).num_microseconds().unwrap_or(0) as f64 / 1e3);
        }
        self.arrivals.push(d.at_instant);
        true
    }

    /// Takes deliveries until `want` more of ours arrived, or none for
    /// `stall`; whether they all did.
    async fn take_until(
        &mut self,
        want: usize,
        ours: &HashSet<String>,
        rx: &mut mpsc::UnboundedReceiver<Received>,
        stall: Duration,
    ) -> bool {
        let mut got = 0;
        while got < want {
            let Ok(Some(d)) = tokio::time::timeout(stall, rx.recv()).await else {
                return false;
            };
            if self.take(d, ours) {
                got += 1;
            }
        }
        true
    }
}

/// Enqueues the commands and takes the deliveries they cause.
async fn drive(
    client: &Client,
    project: &str,
    rng: &mut StdRng,
    a: &WebhooksArgs,
    rx: &mut mpsc::UnboundedReceiver<Received>,
) -> Result<Report, ClientError> {
    let start = Instant::now();
    let expected = a.n * a.events.len();
    let mut t = Taken::default();
    if a.one_at_a_time {
        let mut ours = HashSet::new();
        for _ in 0..a.n {
            let created = enqueue(client, project, &trivial(rng, "true")).await?;
            if let Some(id) = created.get("id").and_then(Value::as_str) {
                ours.insert(id.to_owned());
            }
            if !t.take_until(a.events.len(), &ours, rx, a.stall).await {
                break;
            }
        }
    } else {
        let ours = enqueue_all(client, project, rng, a).await?;
        t.take_until(expected, &ours, rx, a.stall).await;
    }
    let Taken {
        mut lat,
        duplicates,
        foreign,
        arrivals,
        ..
    } = t;
    let (first, last) = (arrivals.first().copied(), arrivals.last().copied());
    let received = lat.len();
    let mut r = Report::new(
        "webhooks",
        json!({ "project": project, "n": a.n, "events": a.events, "concurrency": a.concurrency, "one_at_a_time": a.one_at_a_time }),
    );
    r.fig("expected", expected as f64, "");
    r.fig("received", received as f64, "");
    r.fig("duplicates", duplicates as f64, "");
    r.fig("other_events", foreign as f64, "");
    if let (Some(f), Some(l)) = (first, last) {
        let span = l.duration_since(f).as_secs_f64();
        if span > 0.0 {
            r.fig("deliveries_per_s", received as f64 / span, "1/s");
        }
        r.fig(
            "deliveries_per_s_from_enqueue",
            received as f64 / l.duration_since(start).as_secs_f64(),
            "1/s",
        );
    }
    // The dispatcher's own pace, even when the span above includes time
    // it waited for events: the most deliveries within any one second.
    r.fig(
        "deliveries_peak_1s",
        peak_per_second(&arrivals) as f64,
        "1/s",
    );
    r.latency("event_to_delivery", &mut lat);
    r.ok = received == expected;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_counts_the_busiest_second() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let arrivals = [at(0), at(1500), at(1600), at(2400), at(2499), at(2600)];
        assert_eq!(peak_per_second(&arrivals), 4);
        assert_eq!(peak_per_second(&[]), 0);
    }
}

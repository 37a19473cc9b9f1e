//! `rdev bench sse`: W watchers of one command that writes B bytes at R
//! bytes/s; checks that every watcher got every byte in order and measures
//! how late the bytes arrive.
//!
//! The command is a small Perl loop (Perl is on every Debian-based image,
//! and one process keeps the pace better than a shell loop spawning
//! `date`/`sleep`): it waits, so the watchers can connect, until the bench
//! writes a line to its standard input (once every stream is open and the
//! idle RSS was read) or `--start-delay` has passed, whichever comes first,
//! then writes fixed-length lines `<16-digit µs since the epoch> xxx…\n`
//! whenever it is behind the target rate. A watcher checks that `seq` runs
//! 1, 2, 3… without a hole, that lines are whole and of the right length,
//! and that the byte total matches; the lag of a chunk is the receive time
//! minus the timestamp of its first complete line (its oldest).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{Report, api_rss, enqueue};
use crate::args::SseArgs;
use crate::client::{Client, ClientError};
use crate::units::seg;

/// Watchers connecting at once.
const CONNECT_PARALLELISM: usize = 128;
/// Between RSS samples while the watchers run.
const RSS_SAMPLE: Duration = Duration::from_millis(250);
/// How long every stream is left idle before the idle RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Digits of the timestamp at the start of each line.
const TS_DIGITS: usize = 16;

/// The shell command that writes `bytes` in `line`-byte lines at `rate`
/// bytes/s once a line arrives on its standard input, or after `delay`.
pub fn writer_command(bytes: u64, rate: u64, line: usize, delay: Duration) -> String {
    format!(
        "perl -e 'use Time::HiRes qw(time sleep alarm); $|=1; my ($b,$r,$l,$d)=@ARGV; \
         eval {{ local $SIG{{ALRM}} = sub {{ die }}; alarm $d; my $go = <STDIN>; alarm 0; }}; \
         my $pad = \"x\" x ($l - {pad}); my $t0 = time; my $sent = 0; \
         while ($sent < $b) {{ my $now = time; my $due = ($now - $t0) * $r; \
         $due = $b if $due > $b; my $n = int(($due - $sent) / $l); \
         if ($n > 0) {{ my $ts = sprintf(\"%0{TS_DIGITS}d\", $now * 1e6); \
         print((\"$ts $pad\\n\") x $n); $sent += $n * $l; }} else {{ sleep 0.002 }} }}' \
         {bytes} {rate} {line} {delay}",
        pad = TS_DIGITS + 2,
        delay = delay.as_secs_f64(),
    )
}

#[derive(Deserialize)]
struct Output {
    seq: i64,
    data: String,
}

/// What one watcher saw.
#[derive(Default, Debug)]
pub struct Watch {
    /// Bytes of output received.
    pub bytes: u64,
    /// Output events received.
    pub chunks: u64,
    /// Problems: a hole in `seq`, a gap event, a malformed line, no `end`.
    pub faults: Vec<String>,
    /// Lag of each chunk's oldest line, in ms.
    pub lags_ms: Vec<f64>,
    /// Whether the `end` event came.
    pub ended: bool,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Checks the stream of output events of one watcher.
#[derive(Default)]
pub struct Checker {
    line: usize,
    next_seq: i64,
    partial: String,
    /// The result so far.
    pub watch: Watch,
}

impl Checker {
    /// A checker for lines of `line` bytes.
    pub fn new(line: usize) -> Self {
        Self {
            line,
            next_seq: 1,
            ..Self::default()
        }
    }

    /// One `output` event's `seq` and data, received at `at_us`.
    pub fn output(&mut self, seq: i64, data: &str, at_us: i64) {
        if seq != self.next_seq && self.watch.faults.len() < 10 {
            self.watch
                .faults
                .push(format!("expected seq {}, got {seq}", self.next_seq));
        }
        self.next_seq = seq + 1;
        self.watch.chunks += 1;
        self.watch.bytes += data.len() as u64;
        self.partial.push_str(data);
        let mut first = true;
        let mut done = 0;
        while let Some(nl) = self.partial[done..].find('\n') {
            let line = &self.partial[done..=done + nl];
            done += nl + 1;
            let ts = line.get(..TS_DIGITS).and_then(|t| t.parse::<i64>().ok());
            match ts {
                Some(ts) if line.len() == self.line && first => {
                    self.watch.lags_ms.push((at_us - ts) as f64 / 1e3);
                    first = false;
                }
                Some(_) if line.len() == self.line => {}
                _ if self.watch.faults.len() < 10 => {
                    let msg = format!("malformed line of {} bytes", line.len());
                    self.watch.faults.push(msg);
                }
                _ => {}
            }
        }
        self.partial.drain(..done);
    }
}

async fn watch(
    client: Client,
    id: String,
    line: usize,
    gate: Arc<Semaphore>,
    connected: Arc<AtomicU64>,
) -> Result<Watch, ClientError> {
    let permit = gate.acquire_owned().await;
    let req = client
        .request(Method::GET, &format!("/v1/commands/{}/events", seg(&id)))
        .header(reqwest::header::ACCEPT, "text/event-stream");
    let resp = client.send(req).await?;
    drop(permit);
    let url = resp.url().to_string();
    let mut events = Box::pin(resp.bytes_stream().eventsource());
    let mut c = Checker::new(line);
    let mut counted = false;
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| ClientError::Transport {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if !counted {
            // The stream is set up: subscribed and its first `status` sent.
            connected.fetch_add(1, Ordering::Relaxed);
            counted = true;
        }
        match ev.event.as_str() {
            "output" => match serde_json::from_str::<Output>(&ev.data) {
                Ok(o) => c.output(o.seq, &o.data, now_us()),
                Err(e) => c.watch.faults.push(format!("bad output event: {e}")),
            },
            "gap" => c.watch.faults.push(format!("gap event {}", ev.data)),
            "end" => {
                c.watch.ended = true;
                break;
            }
            _ => {}
        }
    }
    if !c.watch.ended {
        c.watch.faults.push("stream closed before `end`".to_owned());
    }
    Ok(c.watch)
}

/// Samples the API's RSS every `RSS_SAMPLE` until aborted; the peak seen.
fn sample_rss(client: &Client, url: Option<String>) -> (JoinHandle<()>, Arc<AtomicU64>) {
    let peak = Arc::new(AtomicU64::new(0));
    let client = client.clone();
    let seen = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Some(v) = api_rss(&client, url.as_deref()).await {
                seen.fetch_max(v, Ordering::Relaxed);
            }
            tokio::time::sleep(RSS_SAMPLE).await;
        }
    });
    (task, peak)
}

/// The API's RSS once every watcher's stream is set up and has been idle
/// for [`IDLE_SETTLE`]; `None` when the command's output was due before
/// then (`deadline`, from `started`) or the API's RSS is unknown.
async fn idle_rss(
    client: &Client,
    url: Option<&str>,
    connected: &AtomicU64,
    watchers: usize,
    started: Instant,
    deadline: Duration,
) -> Option<u64> {
    while connected.load(Ordering::Relaxed) < watchers as u64 {
        if started.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(IDLE_SETTLE).await;
    let rss = api_rss(client, url).await;
    (started.elapsed() < deadline).then_some(rss).flatten()
}

/// The watchers' results: the completed watches, how many failed to
/// connect, and the first failure.
async fn join_watchers(
    tasks: Vec<JoinHandle<Result<Watch, ClientError>>>,
) -> (Vec<Watch>, u64, Option<String>) {
    let mut watches = Vec::new();
    let mut errors = 0u64;
    let mut first = None;
    for t in tasks {
        let failure = match t.await {
            Ok(Ok(w)) => {
                watches.push(w);
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        errors += 1;
        first.get_or_insert(failure);
    }
    (watches, errors, first)
}

/// Runs the scenario.
pub async fn run(client: &Client, project: &str, a: &SseArgs) -> Result<Report, ClientError> {
    let line = a.line_bytes.max(TS_DIGITS + 2);
    let lines = a.bytes.div_ceil(line as u64);
    let bytes = lines * line as u64;
    let delay = a
        .start_delay
        .unwrap_or_else(|| Duration::from_secs_f64(2.0 + a.watchers as f64 / 100.0));
    let metrics_url = a.metrics_url.as_deref();
    let rss_before = api_rss(client, metrics_url).await;

    let body = json!({
        "command": writer_command(bytes, a.rate, line, delay),
        "timeout_s": 3600,
        "stdin": "pipe",
    });
    let cmd = enqueue(client, project, &body).await?;
    let id = cmd
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();

    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let connected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.watchers)
        .map(|_| {
            let watch = watch(
                client.clone(),
                id.clone(),
                line,
                gate.clone(),
                connected.clone(),
            );
            tokio::spawn(watch)
        })
        .collect();
    let (sampler, peak) = sample_rss(client, a.metrics_url.clone());
    // The output starts `delay` after the enqueue at the latest; leave it a
    // margin.
    let output_due = delay.saturating_sub(Duration::from_millis(500));
    let idle = async {
        let rss = idle_rss(
            client,
            metrics_url,
            &connected,
            a.watchers,
            started,
            output_due,
        )
        .await;
        // Go: without it, the command starts after `delay` anyway.
        let go = client
            .request(Method::POST, &format!("/v1/commands/{}/stdin", seg(&id)))
            .query(&[("eof", "true")])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body("go\n");
        let _ = client.send(go).await;
        rss
    };
    let ((watches, connect_errors, first_error), rss_idle) =
        tokio::join!(join_watchers(tasks), idle);
    let elapsed = started.elapsed().as_secs_f64();
    sampler.abort();
    let rss_peak = Some(peak.load(Ordering::Relaxed));
    // Give the API a moment to drop the connections' buffers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = api_rss(client, metrics_url).await;

    let complete = watches
        .iter()
        .filter(|w| w.faults.is_empty() && w.bytes == bytes)
        .count();
    let mut lags: Vec<f64> = watches
        .iter()
        .flat_map(|w| w.lags_ms.iter().copied())
        .collect();
    let faults: Vec<&String> = watches.iter().flat_map(|w| &w.faults).take(10).collect();

    let mut r = Report::new(
        "sse",
        json!({
            "project": project, "watchers": a.watchers, "bytes": bytes,
            "rate_bytes_per_s": a.rate, "line_bytes": line,
            "start_delay_s": delay.as_secs_f64(), "command_id": id,
        }),
    );
    r.fig("watchers_complete", complete as f64, "");
    r.fig("watchers_failed", (a.watchers - complete) as f64, "");
    r.fig("connect_errors", connect_errors as f64, "");
    r.fig("elapsed", elapsed, "s");
    r.fig(
        "delivered",
        watches.iter().map(|w| w.bytes).sum::<u64>() as f64 / (1024.0 * 1024.0),
        "MiB",
    );
    r.latency("lag", &mut lags);
    let mb = |v: Option<u64>| v.map_or(f64::NAN, |v| v as f64 / (1024.0 * 1024.0));
    r.fig("api_rss_before", mb(rss_before), "MiB");
    r.fig("api_rss_idle", mb(rss_idle), "MiB");
    r.fig("api_rss_peak", mb(rss_peak.filter(|v| *v > 0)), "MiB");
    r.fig("api_rss_after", mb(rss_after), "MiB");
    r.extra = json!({ "faults": faults, "first_error": first_error });
    r.ok = complete == a.watchers;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: i64, len: usize) -> String {
        format!("{ts:016} {}\n", "x".repeat(len - TS_DIGITS - 2))
    }

    #[test]
    fn lines_split_across_chunks_are_checked_whole() {
        let mut c = Checker::new(64);
        let text = format!("{}{}", line(1_000_000, 64), line(2_000_000, 64));
        c.output(1, &text[..70], 3_000_000);
        c.output(2, &text[70..], 4_000_000);
        assert!(c.watch.faults.is_empty(), "{:?}", c.watch.faults);
        assert_eq!(c.watch.bytes, 128);
        assert_eq!(c.watch.lags_ms, vec![2000.0, 2000.0]);
    }

    #[test]
    fn holes_and_bad_lines_are_faults() {
        let mut c = Checker::new(64);
        c.output(1, &line(1, 64), 1);
        c.output(3, "short\n", 1);
        assert_eq!(c.watch.faults.len(), 2, "{:?}", c.watch.faults);
    }
}

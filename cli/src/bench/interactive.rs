//! `rdev bench interactive`: keystroke → echo round trips of a remote
//! terminal, through API → RabbitMQ → worker → PTY → program → back.
//!
//! Each session runs `stty raw -echo; exec cat` on a terminal, so every byte
//! typed is read by `cat` and written back at once (the program echoes, not
//! the line discipline). The measuring session types `--keys` keystrokes,
//! each when the previous one's echo came back: first over the attach
//! WebSocket (a binary frame up, an output frame down), then over HTTP
//! (`POST …/stdin` up, the SSE event stream down). Meanwhile `--background`
//! other sessions, attached over WebSockets, each type `--rate` keys per
//! second, like people at their keyboards. Every echo is checked: the
//! byte that comes back must be the byte typed.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{Report, enqueue};
use crate::args::InteractiveBenchArgs;
use crate::client::{Client, ClientError};
use crate::units::seg;

/// The program of every session.
const ECHO: &str = "stty raw -echo; exec cat";
/// How long one echo may take before the run counts it lost.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts one echo session and waits until it runs.
async fn start(client: &Client, project: &str) -> Result<String, ClientError> {
    let body = json!({"command": ECHO, "tty": {"cols": 80, "rows": 24}, "timeout_s": 3600});
    let cmd = enqueue(client, project, &body).await?;
    let id = cmd["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/commands/{}", seg(&id));
    for _ in 0..600 {
        let c = client.get(&path, &[]).await?;
        match c["status"].as_str() {
            Some("running") => {
                // `stty` has run once the first output (none) or a moment passed.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Ok(id);
            }
            Some("queued") => tokio::time::sleep(Duration::from_millis(50)).await,
            other => {
                return Err(ClientError::Local(format!(
                    "echo session {id} is {other:?}, not running (worker slots: \
                     RDEV_WORKER_CONCURRENCY must exceed --background)"
                )));
            }
        }
    }
    Err(ClientError::Local(format!(
        "echo session {id} never started"
    )))
}

/// The key typed as the `i`th keystroke.
fn key(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}

/// Output bytes of a binary attach frame (`[stream][seq u64][bytes]`).
fn frame_data(b: &[u8]) -> &[u8] {
    b.get(9..).unwrap_or_default()
}

/// `keys` round trips over the attach WebSocket, in milliseconds, and the
/// `seq` of the last echo.
async fn over_websocket(
    client: &Client,
    id: &str,
    keys: usize,
) -> Result<(Vec<f64>, i64), ClientError> {
    let socket = crate::attach::connect(client, id, 0).await?;
    let (mut up, mut down) = socket.split();
    let mut rtts = Vec::with_capacity(keys);
    let mut last = 0;
    for i in 0..keys {
        let k = key(i);
        let t0 = Instant::now();
        up.send(Message::Binary(vec![k].into()))
            .await
            .map_err(|e| ClientError::Local(format!("attach send: {e}")))?;
        let echoed = tokio::time::timeout(ECHO_TIMEOUT, async {
            while let Some(frame) = down.next().await {
                if let Ok(Message::Binary(b)) = frame {
                    let data = frame_data(&b);
                    if !data.is_empty() {
                        let seq = b
                            .get(1..9)
                            .and_then(|s| s.try_into().ok())
                            .map(u64::from_be_bytes);
                        last = seq.and_then(|s| i64::try_from(s).ok()).unwrap_or(last);
                        return Some(data.to_vec());
                    }
                }
            }
            None
        })
        .await;
        match echoed {
            Ok(Some(d)) if d == [k] => rtts.push(t0.elapsed().as_secs_f64() * 1e3),
            Ok(Some(d)) => {
                return Err(ClientError::Local(format!(
                    "typed {:?}, the echo was {:?}",
                    k as char,
                    String::from_utf8_lossy(&d)
                )));
            }
            Ok(None) => return Err(ClientError::Local("the attach socket closed".into())),
            Err(_) => {
                return Err(ClientError::Local(format!(
                    "no echo of keystroke {i} within {ECHO_TIMEOUT:?}"
                )));
            }
        }
    }
    let _ = up.close().await;
    Ok((rtts, last))
}

/// `keys` round trips over `POST …/stdin` and the SSE stream, in milliseconds.
async fn over_http(
    client: &Client,
    id: &str,
    keys: usize,
    after: i64,
) -> Result<Vec<f64>, ClientError> {
    let req = client
        .request(Method::GET, &format!("/v1/commands/{}/events", seg(id)))
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .header("Last-Event-ID", after.to_string());
    let resp = client.send(req).await?;
    let mut events = Box::pin(resp.bytes_stream().eventsource());
    let stdin = format!("/v1/commands/{}/stdin", seg(id));
    let mut rtts = Vec::with_capacity(keys);
    for i in 0..keys {
        let k = key(i);
        let t0 = Instant::now();
        let post = client
            .request(Method::POST, &stdin)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(vec![k]);
        client.send(post).await?;
        let echoed = tokio::time::timeout(ECHO_TIMEOUT, async {
            while let Some(Ok(ev)) = events.next().await {
                if ev.event == "output" {
                    let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    return v["data"].as_str().map(str::to_owned);
                }
            }
            None
        })
        .await;
        match echoed {
            Ok(Some(d)) if d.as_bytes() == [k] => rtts.push(t0.elapsed().as_secs_f64() * 1e3),
            Ok(Some(d)) => {
                return Err(ClientError::Local(format!(
                    "typed {:?}, the echo was {d:?}",
                    k as char
                )));
            }
            Ok(None) => return Err(ClientError::Local("the event stream closed".into())),
            Err(_) => {
                return Err(ClientError::Local(format!(
                    "no echo of keystroke {i} within {ECHO_TIMEOUT:?}"
                )));
            }
        }
    }
    Ok(rtts)
}

/// A background session: types `rate` keys/s over its own socket until
/// `stop`, reading (and discarding) the echoes; the keys it typed.
async fn typist(
    client: Client,
    id: String,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, ClientError> {
    let socket = crate::attach::connect(&client, &id, 0).await?;
    let (mut up, mut down) = socket.split();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut typed = 0_u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                if up.send(Message::Binary(vec![key(typed as usize)].into())).await.is_err() {
                    break;
                }
                typed += 1;
            }
            f = down.next() => if f.is_none() { break },
        }
    }
    let _ = up.close().await;
    Ok(typed)
}

/// Runs the scenario.
pub async fn run(
    client: &Client,
    project: &str,
    a: &InteractiveBenchArgs,
) -> Result<Report, ClientError> {
    let mut r = Report::new(
        "interactive",
        json!({"project": project, "keys": a.keys, "background": a.background, "rate": a.rate}),
    );
    let mut ids = Vec::new();
    let result = async {
        let mut background = Vec::new();
        for _ in 0..a.background {
            background.push(start(client, project).await?);
        }
        ids.extend(background.iter().cloned());
        let id = start(client, project).await?;
        ids.push(id.clone());

        let (stop, stopped) = watch::channel(false);
        let typists: Vec<_> = background
            .into_iter()
            .map(|b| tokio::spawn(typist(client.clone(), b, a.rate, stopped.clone())))
            .collect();
        let started = Instant::now();
        // Let the typists settle in.
        if !typists.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (mut ws, last_seq) = over_websocket(client, &id, a.keys).await?;
        let mut http = over_http(client, &id, a.keys, last_seq).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let _ = stop.send(true);
        let mut typed = 0;
        for t in typists {
            typed += t
                .await
                .map_err(|e| ClientError::Local(format!("typist: {e}")))??;
        }
        r.latency("websocket.rtt", &mut ws);
        r.latency("http_sse.rtt", &mut http);
        r.fig("background.sessions", a.background as f64, "");
        r.fig(
            "background.keys_per_s",
            typed as f64 / elapsed.max(1e-9),
            "keys/s",
        );
        Ok::<_, ClientError>(())
    }
    .await;
    for id in &ids {
        let _ = client
            .post(&format!("/v1/commands/{}/cancel", seg(id)), &json!({}))
            .await;
    }
    result?;
    Ok(r)
}

//! Following a command's SSE stream (`GET /v1/commands/{id}/events`) until
//! its `end` event, across dropped connections.
//!
//! Exactly-once output rests on the server numbering chunks (`seq`, sent as
//! the event id): after a drop the stream is reopened with `Last-Event-ID`
//! set to the last `seq` written, and any chunk at or below it is skipped.
//! A partial event cut by the drop is never dispatched by the parser (it
//! lacks its blank line), so it is simply asked for again.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::{Client, ClientError};
use crate::output::note;
use crate::spinner::Spinner;

/// Without a byte for this long (the server sends keep-alives every 15 s)
/// the connection is taken for dead and reopened.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Give up after this long without a byte from the API.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
/// A connection that stayed up this long was healthy: back off from scratch.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct Output {
    seq: i64,
    stream: String,
    data: String,
}

#[derive(Deserialize)]
struct Gap {
    from_seq: i64,
    to_seq: i64,
}

/// What a follower hands its sink, in `seq` order, each once.
pub enum Piece<'a> {
    /// A chunk of output (`stream` is `stdout` or `stderr`).
    Output {
        /// The chunk's number.
        seq: i64,
        /// `stdout` or `stderr`.
        stream: &'a str,
        /// The chunk, as UTF-8 (invalid bytes replaced by the server).
        data: &'a str,
    },
    /// Chunks `from_seq..=to_seq` were not kept (output truncation).
    Gap {
        /// First chunk missing.
        from_seq: i64,
        /// Last chunk missing.
        to_seq: i64,
    },
}

/// Where a follower puts what it reads.
pub type Sink = Box<dyn FnMut(Piece<'_>) + Send>;

/// The terminal sink of `rdev run` / `rdev logs -f`: chunks to our
/// stdout/stderr, gaps as a note on stderr.
fn terminal(piece: Piece<'_>) {
    match piece {
        Piece::Output { stream, data, .. } => write_stream(stream, data.as_bytes()),
        Piece::Gap { from_seq, to_seq } => note(&format!(
            "output truncated: chunks {from_seq}-{to_seq} were not kept"
        )),
    }
}

/// Follows one command's stream, handing each chunk to its sink (by default
/// this process's stdout/stderr).
pub struct Follower {
    client: Client,
    id: String,
    last_seq: i64,
    sink: Sink,
    /// Progress notes (reconnecting) only on a terminal.
    chatty: bool,
    /// Stopped once the command leaves the queue or writes output.
    spinner: Spinner,
}

impl Follower {
    /// Starts after chunk `seq` instead of from the first.
    pub fn after(mut self, seq: i64) -> Self {
        self.last_seq = seq;
        self
    }

    /// A follower starting from the first chunk.
    pub fn new(client: Client, id: String) -> Self {
        Self {
            client,
            id,
            last_seq: 0,
            sink: Box::new(terminal),
            chatty: std::io::stderr().is_terminal(),
            spinner: Spinner::default(),
        }
    }

    /// Shows `spinner` while the command is queued.
    pub fn with_spinner(mut self, spinner: Spinner) -> Self {
        self.spinner = spinner;
        self
    }

    /// Hands chunks to `sink` instead of writing them to stdout/stderr,
    /// and prints no notes (`rdev mcp`, whose stdout is the protocol).
    pub fn with_sink(mut self, sink: Sink) -> Self {
        self.sink = sink;
        self.chatty = false;
        self
    }

    /// The last chunk handed to the sink (or skipped as truncated).
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// Streams until the `end` event and returns the final command object.
    pub async fn run(&mut self) -> Result<Value, ClientError> {
        let mut backoff = BACKOFF_MIN;
        // When the API last sent anything (an answer, data, a keep-alive).
        let alive = Arc::new(Mutex::new(Instant::now()));
        loop {
            let opened = Instant::now();
            let mut delivered = false;
            let reason = match self.connect_once(&alive, &mut delivered).await {
                Ok(Some(end)) => return Ok(end),
                Ok(None) => "the stream ended early".to_owned(),
                Err(e) if e.is_transient() => e.to_string(),
                Err(e) => return Err(e),
            };
            let silent = alive.lock().map(|a| a.elapsed()).unwrap_or_default();
            if silent > GIVE_UP_AFTER {
                return Err(ClientError::Transport {
                    url: self.client.base_url().to_owned(),
                    reason: format!(
                        "gave up following command {id}: nothing from the API for {}s \
                         ({reason}); it may still be running: `rdev logs -f {id}`",
                        GIVE_UP_AFTER.as_secs(),
                        id = self.id,
                    ),
                });
            }
            // A connection that brought new output, or held for a while,
            // starts the backoff afresh; quick failures double it.
            if delivered || opened.elapsed() >= HEALTHY_CONNECTION {
                backoff = BACKOFF_MIN;
            }
            if self.chatty {
                note(&format!(
                    "connection lost ({reason}); resuming after chunk {}",
                    self.last_seq
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Hands an `output` or `gap` event to the sink unless it was already
    /// delivered before a reconnect; true when it was new.
    fn deliver(&mut self, event: &str, data: &str) -> bool {
        if event == "gap" {
            let Ok(g) = serde_json::from_str::<Gap>(data) else {
                return false;
            };
            if g.to_seq <= self.last_seq {
                return false;
            }
            (self.sink)(Piece::Gap {
                from_seq: g.from_seq,
                to_seq: g.to_seq,
            });
            self.last_seq = g.to_seq;
            return true;
        }
        let Ok(o) = serde_json::from_str::<Output>(data) else {
            return false;
        };
        if o.seq <= self.last_seq {
            return false; // already written before a reconnect
        }
        self.spinner.stop();
        (self.sink)(Piece::Output {
            seq: o.seq,
            stream: &o.stream,
            data: &o.data,
        });
        self.last_seq = o.seq;
        true
    }

    /// One connection: `Ok(Some(end))` when the stream finished, `Ok(None)`
    /// when it was cut short. Sets `delivered` when new output arrived.
    async fn connect_once(
        &mut self,
        alive: &Arc<Mutex<Instant>>,
        delivered: &mut bool,
    ) -> Result<Option<Value>, ClientError> {
        let touch = |alive: &Mutex<Instant>| {
            if let Ok(mut a) = alive.lock() {
                *a = Instant::now();
            }
        };
        let mut req = self
            .client
            .request(Method::GET, &format!("/v1/commands/{}/events", self.id))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if self.last_seq > 0 {
            req = req.header("Last-Event-ID", self.last_seq.to_string());
        }
        // The answer's headers come at once (the stream's first event
        // follows them); a server or proxy that took the connection and never
        // answers is as dead as a silent stream, so the same limit applies.
        let resp = tokio::time::timeout(IDLE_TIMEOUT, self.client.send(req))
            .await
            .map_err(|_| ClientError::Transport {
                url: self.client.base_url().to_owned(),
                reason: format!("no answer for {}s", IDLE_TIMEOUT.as_secs()),
            })??;
        touch(alive);
        let url = resp.url().to_string();
        let bytes =
            futures::stream::unfold((resp, alive.clone()), move |(mut resp, alive)| async move {
                match tokio::time::timeout(IDLE_TIMEOUT, resp.chunk()).await {
                    Ok(Ok(Some(b))) => {
                        touch(&alive);
                        Some((Ok(b), (resp, alive)))
                    }
                    Ok(Ok(None)) => None,
                    Ok(Err(e)) => Some((Err(e.to_string()), (resp, alive))),
                    Err(_) => Some((
                        Err("no data or keep-alive for 45s".to_owned()),
                        (resp, alive),
                    )),
                }
            });
        let mut events = Box::pin(bytes.eventsource());
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| ClientError::Transport {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            match ev.event.as_str() {
                "output" | "gap" => *delivered |= self.deliver(&ev.event, &ev.data),
                "status" => {
                    if let Ok(cmd) = serde_json::from_str::<Value>(&ev.data)
                        && cmd.get("status").and_then(Value::as_str) != Some("queued")
                    {
                        self.spinner.stop();
                    }
                }
                "end" => {
                    self.spinner.stop();
                    let cmd = serde_json::from_str::<Value>(&ev.data).map_err(|e| {
                        ClientError::Transport {
                            url: url.clone(),
                            reason: format!("bad end event: {e}"),
                        }
                    })?;
                    return Ok(Some(cmd));
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// Writes a chunk to our stdout or stderr, flushed so it shows at once.
fn write_stream(stream: &str, data: &[u8]) {
    let result = if stream == "stderr" {
        let mut e = std::io::stderr().lock();
        e.write_all(data).and_then(|()| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(data).and_then(|()| o.flush())
    };
    // A closed pipe (e.g. `rdev run … | head`) must not abort the stream:
    // the command still runs to its end and its exit code still matters.
    let _ = result;
}

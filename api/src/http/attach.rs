//! `GET /v1/commands/{id}/attach`: a WebSocket carrying a command's output
//! down and its input up, for terminals (docs/API.md, "Attach").
//!
//! Down (server → client):
//! - binary frames: one output chunk each, `[stream: u8 (1 stdout, 2
//!   stderr)][seq: u64, big-endian][bytes]`, in `seq` order without gaps
//!   or duplicates (stored output first, from `?from_seq=` on, then live);
//! - text frames, JSON: `{"type":"status","command":…}` first and on each
//!   change, `{"type":"gap","from_seq","to_seq"}` (truncation),
//!   `{"type":"ack","seq"}` for each input event taken,
//!   `{"type":"error","status","detail"}` for one refused,
//!   `{"type":"end","command":…}` (then the server closes), or
//!   `{"type":"reconnect","reason"}` (shutdown, lifetime, key change:
//!   reconnect with `from_seq` = the last `seq` received).
//!
//! Up (client → server, scope `commands:input`): binary frames are bytes for
//! standard input; text frames are JSON `{"type":"stdin","data":"text"}`,
//! `{"type":"eof"}`, `{"type":"resize","cols","rows"}`,
//! `{"type":"signal","signal":"INT"}`. Each is stored and sent to the
//! command's worker exactly as `POST …/stdin|resize|signal` do, in the order
//! the frames arrive.
//!
//! The same admission as event streams applies (`RDEV_SSE_MAX_*`, the
//! maximum lifetime, key revocation); while attached to a running command
//! the server tells its worker every [`ATTACHED_EVERY`] that a client is
//! there, which keeps an interactive command from ending `idle`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use rdev_shared::db::{commands, output};
use rdev_shared::domain::{Command, CommandStatus, OutputStream, Scope};
use rdev_shared::interactive::{Input, InputMessage, InputSignal, TtySize};
use rdev_shared::mq::OutputEvent;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Interval, MissedTickBehavior};
use uuid::Uuid;

use super::AppState;
use super::access::load_visible_command;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Path, Query};
use super::input;
use super::sse::{KeyWatch, key_still_valid};
use crate::admission::{Refusal, Slot};
use crate::frames::LiveEvent;
use crate::hub::Subscription;

/// The routes of this module (under `/v1`).
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new().routes(routes!(attach))
}

/// The subprotocol the server speaks (and selects).
pub const PROTOCOL: &str = "rdev.v1";
/// How often the worker is told a client is attached.
pub const ATTACHED_EVERY: Duration = Duration::from_secs(30);
/// Chunks read from PostgreSQL per page while catching up.
const CATCH_UP_PAGE: i64 = 2;
/// Ping interval (keeps proxies from closing an idle connection).
const PING_EVERY: Duration = Duration::from_secs(15);

/// Query of `GET /v1/commands/{id}/attach`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AttachQuery {
    /// Resume after this output `seq` (0 = from the start).
    #[param(minimum = 0)]
    from_seq: Option<i64>,
}

/// An input frame in JSON.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum UpFrame {
    Stdin { data: String },
    Eof,
    Resize { cols: u16, rows: u16 },
    Signal { signal: InputSignal },
}

/// `GET /v1/commands/{id}/attach`
#[utoipa::path(
    get,
    path = "/commands/{id}/attach",
    tag = "commands",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Command id (uuid)"), AttachQuery),
    responses((status = 101, description = "A WebSocket (subprotocol `rdev.v1`; a browser may pass its key as the subprotocol `rdev.bearer.<key>`). Reading takes `commands:read`, sending input `commands:input`. Down: binary output frames `[stream u8][seq u64 BE][bytes]` and JSON text frames (`status`, `gap`, `ack`, `error`, `end`, `reconnect`); up: binary stdin bytes or JSON (`stdin`, `eof`, `resize`, `signal`). See docs/API.md, \"Attach\"."))
)]
pub async fn attach(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<AttachQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    auth.require(Scope::CommandsRead)?;
    let from = q.from_seq.unwrap_or(0);
    if from < 0 {
        return Err(ApiError::BadRequest("from_seq must be 0 or more".into()));
    }
    let cmd = load_visible_command(&st, &auth, &id).await?;
    let slot = st.sse.admit(auth.key.id).map_err(|r| match r {
        Refusal::Instance(n) => ApiError::TooManyRequests {
            detail: format!("this instance serves its maximum of {n} streams; retry later"),
            retry_after_s: 5,
        },
        Refusal::Key(n) => ApiError::TooManyRequests {
            detail: format!("this API key has its maximum of {n} open streams"),
            retry_after_s: 5,
        },
    })?;
    let may_input = auth.key.has_scope(Scope::CommandsInput);
    let watch = KeyWatch::of(&auth);
    let key_changes = st.keys.subscribe_changes();
    Ok(ws
        .protocols([PROTOCOL])
        .max_message_size(st.cfg.max_body_bytes)
        .on_upgrade(move |socket| async move {
            let session = Session {
                st,
                status: cmd.status,
                finished: cmd.status.is_terminal(),
                need_catch_up: true,
                cmd,
                last: from,
                may_input,
                watch,
                _slot: slot,
            };
            session.run(socket, key_changes).await;
        }))
}

struct Session {
    st: AppState,
    cmd: Command,
    /// The last output `seq` sent.
    last: i64,
    /// The last status sent.
    status: CommandStatus,
    /// The command has ended: send everything stored, then `end`.
    finished: bool,
    /// PostgreSQL may hold chunks not sent yet (a gap, a lag, no live feed).
    need_catch_up: bool,
    may_input: bool,
    watch: KeyWatch,
    _slot: Slot,
}

/// Why a session stopped following.
enum Stop {
    End,
    Reconnect(&'static str),
    Gone,
}

/// The client is gone (a send failed).
fn gone<E>(_: E) -> Stop {
    Stop::Gone
}

/// An interval whose missed ticks are delayed, not bunched.
fn interval(every: Duration) -> Interval {
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

impl Session {
    async fn run(mut self, socket: WebSocket, key_changes: broadcast::Receiver<Uuid>) {
        let (mut tx, rx) = socket.split();
        let sub = Box::pin(self.st.hub.subscribe(self.cmd.id)).await;
        let first = json!({"type": "status", "command": &self.cmd});
        if send_json(&mut tx, &first).await.is_err() {
            return;
        }
        let stop = self.follow(&mut tx, rx, sub, key_changes).await;
        self.close(&mut tx, stop).await;
    }

    /// Sends stored output, then live output, and takes input, until the
    /// command ends, the client leaves or the client must reconnect.
    async fn follow(
        &mut self,
        tx: &mut Sink,
        mut rx: SplitStream<WebSocket>,
        mut sub: Subscription,
        mut key_changes: broadcast::Receiver<Uuid>,
    ) -> Stop {
        let expires = tokio::time::sleep(self.st.cfg.sse_max_lifetime);
        tokio::pin!(expires);
        let shutdown = self.st.shutdown.clone();
        let mut poll = interval(self.st.cfg.sse_poll);
        let mut ping = interval(PING_EVERY);
        let mut attached = interval(ATTACHED_EVERY);
        loop {
            if let Some(stop) = self.catch_up_if_needed(tx).await {
                return stop;
            }
            let step = tokio::select! {
                () = &mut expires => Err(Stop::Reconnect("maximum connection lifetime reached")),
                () = shutdown.cancelled() => Err(Stop::Reconnect("server shutting down")),
                change = key_changes.recv() => self.on_key_change(change).await,
                msg = sub.recv() => self.on_live(tx, &mut sub, msg).await,
                frame = rx.next() => self.on_frame(tx, frame).await,
                _ = poll.tick() => self.on_poll(tx, &mut sub).await,
                _ = ping.tick() => tx.send(Message::Ping(Bytes::new())).await.map_err(gone),
                _ = attached.tick() => {
                    self.tell_worker_attached().await;
                    Ok(())
                }
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    /// Sends the stored output when it may hold what was not sent (all of
    /// it, for a finished command); `Some` when following is over.
    async fn catch_up_if_needed(&mut self, tx: &mut Sink) -> Option<Stop> {
        if self.need_catch_up || self.finished {
            match self.catch_up(tx).await {
                Err(_) => return Some(Stop::Gone),
                // `end` only after everything stored was sent: a finished
                // command whose output could not be read ends the session
                // for a resume instead.
                Ok(false) if self.finished => {
                    return Some(Stop::Reconnect(
                        "the stored output could not be read; reconnect with from_seq",
                    ));
                }
                // Running: the next poll tries again.
                Ok(complete) => self.need_catch_up = !complete,
            }
        }
        self.finished.then_some(Stop::End)
    }

    /// A key changed somewhere: ends the session if it was this one's and
    /// it is no longer valid.
    async fn on_key_change(&self, change: Result<Uuid, RecvError>) -> Result<(), Stop> {
        let recheck = match change {
            Ok(k) => k == self.watch.id || k.is_nil(),
            Err(_) => true,
        };
        if recheck && !Box::pin(key_still_valid(&self.st.pool, &self.watch)).await {
            return Err(Stop::Reconnect(
                "the API key was revoked, rotated or has expired",
            ));
        }
        Ok(())
    }

    /// A live message: the next chunk is sent, a later one means a catch-up
    /// from PostgreSQL; a status change is sent.
    async fn on_live(
        &mut self,
        tx: &mut Sink,
        sub: &mut Subscription,
        msg: Option<Arc<LiveEvent>>,
    ) -> Result<(), Stop> {
        match msg.as_deref().map(|m| &m.event) {
            Some(OutputEvent::Chunk { seq, stream, data }) => {
                if *seq == self.last + 1 && !sub.take_lagged() {
                    tx.send(Message::Binary(chunk_frame(*seq, *stream, data)))
                        .await
                        .map_err(gone)?;
                    self.last = *seq;
                } else if *seq > self.last + 1 {
                    self.need_catch_up = true;
                }
            }
            Some(OutputEvent::Status) => {
                if let Some(c) = reload(&self.st, self.cmd.id).await
                    && c.status != self.status
                {
                    self.finished = c.status.is_terminal();
                    self.send_status(tx, &c).await?;
                }
            }
            Some(OutputEvent::End) => self.finished = true,
            None => {
                tokio::time::sleep(self.st.cfg.sse_poll).await;
                self.need_catch_up = true;
            }
        }
        Ok(())
    }

    /// A frame from the client: input (bytes or JSON), or its leaving.
    async fn on_frame(
        &mut self,
        tx: &mut Sink,
        frame: Option<Result<Message, axum::Error>>,
    ) -> Result<(), Stop> {
        let sent = match frame {
            Some(Ok(Message::Binary(b))) => self.input(tx, Input::Data { data: b.to_vec() }).await,
            Some(Ok(Message::Text(t))) => match up_frame_input(t.as_str()) {
                Ok(event) => self.input(tx, event).await,
                Err(detail) => {
                    let refusal = json!({"type": "error", "status": 400, "detail": detail});
                    send_json(tx, &refusal).await
                }
            },
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Err(Stop::Gone),
            Some(Ok(_)) => Ok(()),
        };
        sent.map_err(gone)
    }

    /// The poll: reads PostgreSQL when live messages were lost, and the
    /// command's status (a missed status message).
    async fn on_poll(&mut self, tx: &mut Sink, sub: &mut Subscription) -> Result<(), Stop> {
        self.need_catch_up = sub.take_lagged();
        if let Some(c) = reload(&self.st, self.cmd.id).await {
            if c.status != self.status {
                self.send_status(tx, &c).await?;
            }
            self.finished = c.status.is_terminal();
        }
        Ok(())
    }

    /// Sends `c`'s status and remembers it as the last one sent.
    async fn send_status(&mut self, tx: &mut Sink, c: &Command) -> Result<(), Stop> {
        self.status = c.status;
        send_json(tx, &json!({"type": "status", "command": c}))
            .await
            .map_err(gone)
    }

    /// Ends the session as `stop` says: `end` (with the command as it
    /// ended) or `reconnect`, then a close frame.
    async fn close(&self, tx: &mut Sink, stop: Stop) {
        let (code, reason) = match stop {
            Stop::End => {
                if let Some(c) = reload(&self.st, self.cmd.id).await {
                    let _ = send_json(tx, &json!({"type": "end", "command": c})).await;
                }
                (1000, "end")
            }
            Stop::Reconnect(why) => {
                let _ = send_json(tx, &json!({"type": "reconnect", "reason": why})).await;
                (1012, "reconnect")
            }
            Stop::Gone => return,
        };
        let _ = tx
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
    }

    /// Sends the stored chunks after `last` (pages of [`CATCH_UP_PAGE`]);
    /// false when a read failed before the end of what is stored.
    async fn catch_up(&mut self, tx: &mut Sink) -> Result<bool, axum::Error> {
        loop {
            let page = match self.st.pool.get().await {
                Ok(client) => output::read(&client, self.cmd.id, self.last, None, CATCH_UP_PAGE)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, command = %self.cmd.id, "attach catch-up read failed");
                    return Ok(false);
                }
            };
            let full = page.len() as i64 == CATCH_UP_PAGE;
            for c in page {
                if c.seq > self.last + 1 {
                    send_json(
                        tx,
                        &json!({"type": "gap", "from_seq": self.last + 1, "to_seq": c.seq - 1}),
                    )
                    .await?;
                }
                tx.send(Message::Binary(chunk_frame(c.seq, c.stream, &c.data)))
                    .await?;
                self.last = c.seq;
            }
            if !full {
                return Ok(true);
            }
        }
    }

    /// Takes one input event (as `POST …/stdin|resize|signal` would) and
    /// answers `ack` or `error`.
    async fn input(&self, tx: &mut Sink, event: Input) -> Result<(), axum::Error> {
        if !self.may_input {
            return send_json(
                tx,
                &json!({"type": "error", "status": 403, "detail": "this API key lacks the `commands:input` scope"}),
            )
            .await;
        }
        match input::send(&self.st, &self.cmd, event).await {
            Ok(seq) => send_json(tx, &json!({"type": "ack", "seq": seq})).await,
            Err(e) => {
                let (status, detail) = e.status_and_detail();
                send_json(
                    tx,
                    &json!({"type": "error", "status": status, "detail": detail}),
                )
                .await
            }
        }
    }

    /// Tells the command's worker a client is attached (not idle).
    async fn tell_worker_attached(&self) {
        let Some(c) = reload(&self.st, self.cmd.id).await else {
            return;
        };
        if let Some(worker) = c.worker_id.filter(|_| !c.status.is_terminal()) {
            let m = InputMessage::Attached { command_id: c.id };
            let _ = self.st.publisher.publish_input(&worker, &m).await;
        }
    }
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

/// The input event of a JSON text frame, or why it is refused.
fn up_frame_input(text: &str) -> Result<Input, String> {
    match serde_json::from_str::<UpFrame>(text) {
        Ok(UpFrame::Stdin { data }) => Ok(Input::Data {
            data: data.into_bytes(),
        }),
        Ok(UpFrame::Eof) => Ok(Input::Eof),
        Ok(UpFrame::Resize { cols, rows }) => {
            let size = TtySize { cols, rows };
            size.validate().map(|()| Input::Resize { size })
        }
        Ok(UpFrame::Signal { signal }) => Ok(Input::Signal { signal }),
        Err(e) => Err(format!("malformed frame: {e}")),
    }
}

async fn send_json(tx: &mut Sink, value: &serde_json::Value) -> Result<(), axum::Error> {
    tx.send(Message::Text(value.to_string().into())).await
}

/// A binary output frame: stream, seq, bytes.
pub fn chunk_frame(seq: i64, stream: OutputStream, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + data.len());
    b.put_u8(match stream {
        OutputStream::Stdout => 1,
        OutputStream::Stderr => 2,
    });
    b.put_u64(u64::try_from(seq).unwrap_or(0));
    b.put_slice(data);
    b.freeze()
}

async fn reload(st: &AppState, id: Uuid) -> Option<Command> {
    let client = st.pool.get().await.ok()?;
    commands::get(&client, id).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_frames_carry_stream_and_seq() {
        let f = chunk_frame(258, OutputStream::Stderr, b"hi");
        assert_eq!(&f[..], &[2, 0, 0, 0, 0, 0, 0, 1, 2, b'h', b'i']);
    }
}

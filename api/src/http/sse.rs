//! `GET /v1/commands/{id}/events`: replay stored output, then relay live
//! output, without gaps or duplicates.
//!
//! The order of operations is what makes it gap-free: subscribe (the queue
//! is bound) *before* reading PostgreSQL, then emit chunks strictly in `seq`
//! order. A live chunk that is not the next one means something was missed
//! (a slow client's dropped messages, a reconnect): the stream then reads
//! PostgreSQL until it has caught up. A missing `seq` that PostgreSQL has
//! moved past was cut by truncation and is reported as a `gap` event.
//! A periodic status poll is the backstop for a lost `end` message.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use rdev_shared::db::{Pool, commands, output};
use rdev_shared::domain::{Command, CommandStatus, Scope};
use rdev_shared::mq::OutputEvent;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Interval, MissedTickBehavior, Sleep};
use uuid::Uuid;

use super::AppState;
use super::access::load_visible_command;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Path};
use crate::admission::{Refusal, Slot};
use crate::frames::{self, LiveEvent, StoredPage};
use crate::hub::Subscription;

/// The routes of this module (under `/v1`).
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new().routes(routes!(events))
}

/// Chunks read from PostgreSQL per page: at most 2 × 64 KiB held per
/// connection while catching up.
const CATCH_UP_PAGE: i64 = 2;
/// Extra PostgreSQL reads after subscribing, each this long after the last
/// (see `Timers::settle`): at 0.2, 1, 3, 6, 10 and 16 s, which covers the
/// worker's retries of a batch (about 16 s, `worker/src/output.rs`), so a
/// chunk published before the subscription and stored late still arrives
/// without waiting for more output.
const SETTLE_READS: [Duration; 6] = [
    Duration::from_millis(200),
    Duration::from_millis(800),
    Duration::from_secs(2),
    Duration::from_secs(3),
    Duration::from_secs(4),
    Duration::from_secs(6),
];
/// Recent chunks taken from the hub per step when catching up from memory.
const RECENT_PAGE: usize = 16;
/// How soon to look again when PostgreSQL has not yet stored a chunk seen live.
const BEHIND_RETRY: Duration = Duration::from_millis(100);
/// How soon to read PostgreSQL again after a catch-up read failed.
const CATCH_UP_RETRY: Duration = Duration::from_millis(500);
/// Reconnection delay suggested when this instance shuts down.
const SHUTDOWN_RETRY: Duration = Duration::from_millis(500);
/// Reconnection delay suggested to clients.
const CLIENT_RETRY: Duration = Duration::from_secs(2);

/// Largest `Last-Event-ID` accepted: 2^53 - 1 (the largest integer every
/// JSON client holds exactly). A chunk `seq` never comes near it, and the
/// stream's `seq + 1` arithmetic can then never overflow.
pub const MAX_LAST_EVENT_ID: i64 = (1 << 53) - 1;

fn last_event_id(headers: &HeaderMap) -> ApiResult<i64> {
    match headers.get("last-event-id") {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| (0..=MAX_LAST_EVENT_ID).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Last-Event-ID must be a chunk sequence number (0-{MAX_LAST_EVENT_ID})"
                ))
            }),
    }
}

/// Reads the next page of stored chunks after `after` and turns it into
/// events. Returns the events, the last `seq` they reach, and whether the
/// page was full.
async fn read_page(pool: &Pool, id: Uuid, after: i64) -> Result<StoredPage, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let page = output::read(&client, id, after, None, CATCH_UP_PAGE)
        .await
        .map_err(|e| e.to_string())?;
    let full = page.len() as i64 == CATCH_UP_PAGE;
    let mut events = Vec::with_capacity(page.len() + 1);
    let mut last = after;
    for c in page {
        if c.seq > last + 1 {
            events.push(frames::gap(last + 1, c.seq - 1));
        }
        events.push(frames::output(c.seq, c.stream.as_str(), &c.data));
        last = c.seq;
    }
    Ok((events, last, full))
}

/// The key an event stream was opened with, re-checked when it changes.
pub(crate) struct KeyWatch {
    pub(crate) id: Uuid,
    secret_hash: [u8; 32],
    pub(crate) expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl KeyWatch {
    /// The key `auth` authenticated with.
    pub(crate) fn of(auth: &Auth) -> Self {
        Self {
            id: auth.key.id,
            secret_hash: auth.secret_hash,
            expires_at: auth.key.expires_at,
        }
    }

    /// After a key-change announcement heard on `open` changes: whether
    /// this key still authenticates. Rechecked when the change was this
    /// key's, every key's (nil) or announcements were missed; a closed
    /// channel clears `open` (nothing more will be heard on it).
    pub(crate) async fn survives(
        &self,
        pool: &Pool,
        change: Result<Uuid, RecvError>,
        open: &mut bool,
    ) -> bool {
        let recheck = match change {
            Ok(id) => id == self.id || id.is_nil(),
            Err(RecvError::Lagged(_)) => true,
            Err(RecvError::Closed) => {
                *open = false;
                false
            }
        };
        !recheck || Box::pin(key_still_valid(pool, self)).await
    }
}

/// Whether the key still authenticates the stream: present, not revoked,
/// not expired, and its secret not rotated. A failed read keeps the stream
/// (the next change or the lifetime ends it).
pub(crate) async fn key_still_valid(pool: &Pool, watch: &KeyWatch) -> bool {
    let Ok(client) = pool.get().await else {
        return true;
    };
    match rdev_shared::db::keys::find_by_id(&client, watch.id).await {
        Ok(Some((key, stored))) => {
            key.is_active(chrono::Utc::now())
                && rdev_shared::secret::constant_time_eq(&stored, &watch.secret_hash)
        }
        Ok(None) => false,
        Err(_) => true,
    }
}

/// The command as stored now; `None` when it cannot be read.
pub(crate) async fn reload(pool: &Pool, id: Uuid) -> Option<Command> {
    let client = pool.get().await.ok()?;
    commands::get(&client, id).await.ok().flatten()
}

/// One of the instance's and the key's event-stream slots, held by an
/// event stream or a waiting read (`GET /v1/commands/{id}?wait=`) while it
/// lasts; `429` when none is free.
pub(crate) fn admit(st: &AppState, auth: &Auth) -> ApiResult<Slot> {
    st.sse.admit(auth.key.id).map_err(|r| match r {
        Refusal::Instance(n) => ApiError::TooManyRequests {
            detail: format!(
                "this instance serves its maximum of {n} event streams and waits; retry later"
            ),
            retry_after_s: 5,
        },
        Refusal::Key(n) => ApiError::TooManyRequests {
            detail: format!("this API key has its maximum of {n} open event streams and waits"),
            retry_after_s: 5,
        },
    })
}

/// `GET /v1/commands/{id}/events`
#[utoipa::path(
    get,
    path = "/commands/{id}/events",
    tag = "commands",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "Command id (uuid)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this output `seq`"),
    ),
    responses(
        (status = 200, description = "A `text/event-stream` (scope `commands:read`). Events: `status` (data: a Command, sent first and on each status change), `output` (id: seq; data: OutputEventData), `gap` (data: GapEventData; chunks cut by truncation), `end` (data: the final Command; the stream then closes), `reconnect` (this instance is shutting down; reconnect with `Last-Event-ID`). Stored output is replayed first, then live output, without gaps or duplicates.", content_type = "text/event-stream", body = String),
    ),
)]
pub async fn events(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    auth.require(Scope::CommandsRead)?;
    let after = last_event_id(&headers)?;
    let cmd = load_visible_command(&st, &auth, &id).await?;
    let slot = admit(&st, &auth)?;
    let watch = KeyWatch::of(&auth);
    // Before the answer leaves: a key change announced while the client
    // reads the headers is not missed.
    let key_changes = st.keys.subscribe_changes();
    let stream = event_stream(st, cmd, after, slot, watch, key_changes);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Proxies that buffer responses (nginx) would hold the stream back.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn event_stream(
    st: AppState,
    cmd: Command,
    after: i64,
    slot: Slot,
    watch: KeyWatch,
    key_changes: broadcast::Receiver<Uuid>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + use<> {
    async_stream::stream! {
        // Held for the life of the stream: dropping the stream (client gone,
        // server shutting down, end) releases it.
        let _slot = slot;
        let lifetime = Lifetime::start(&watch, st.cfg.sse_max_lifetime);
        // Subscribe first: from here on nothing published is missed.
        let sub = Box::pin(st.hub.subscribe(cmd.id)).await;
        yield Ok(frames::command("status", &cmd, Some(CLIENT_RETRY)));
        let mut timers = Timers::start(&st, lifetime).await;
        let mut follower = Follower::new(st, &cmd, after, sub, watch, key_changes);
        loop {
            if follower.need_catch_up || follower.finished {
                // One page at a time: a replay never holds a command's
                // whole output.
                let mut phase = follower.catch_up_start();
                while let Some(page) = follower.catch_up_page(&mut phase).await {
                    for frame in page {
                        yield Ok(frame);
                    }
                }
                if let Some(close) = follower.catch_up_end(&phase) {
                    yield Ok(close);
                    break;
                }
            }
            if follower.finished {
                if let Some(end) = follower.end_frame().await {
                    yield Ok(end);
                }
                break;
            }
            match follower.next_step(&mut timers).await {
                Step::Quiet => {}
                Step::Send(frame) => yield Ok(frame),
                Step::Close(frame) => {
                    yield Ok(frame);
                    break;
                }
            }
        }
    }
}

/// What one wake-up of a stream writes.
enum Step {
    /// Nothing.
    Quiet,
    /// One frame; the stream goes on.
    Send(Bytes),
    /// A last frame (a `reconnect`); the stream then closes.
    Close(Bytes),
}

/// Where a catch-up is: the hub's recent chunks, then PostgreSQL.
enum CatchUp {
    Recent,
    Stored,
    /// Over; `caught_up` is false when PostgreSQL could not be read.
    Done {
        caught_up: bool,
    },
}

/// When the stream ends: at its maximum lifetime, or when its key expires
/// if that comes first. Started before subscribing, as the stream's clock.
struct Lifetime {
    ends: Pin<Box<Sleep>>,
    reason: &'static str,
}

impl Lifetime {
    fn start(watch: &KeyWatch, max: Duration) -> Self {
        let until_expiry = watch
            .expires_at
            .map(|e| (e - chrono::Utc::now()).to_std().unwrap_or_default());
        let (limit, reason) = match until_expiry {
            Some(left) if left < max => (left, "the API key expired"),
            _ => (max, "maximum connection lifetime reached"),
        };
        Self {
            ends: Box::pin(tokio::time::sleep(limit)),
            reason,
        }
    }
}

/// A stream's clocks besides its lifetime: heartbeats, status polls and
/// settle reads.
struct Timers {
    lifetime: Lifetime,
    /// Comment lines while nothing else is written.
    keepalive: Interval,
    /// The status poll, the backstop for a lost `end` message.
    poll: Interval,
    /// Settle reads: the worker publishes a chunk live before its batch
    /// reaches PostgreSQL (within ~50 ms), so a chunk published just before
    /// we subscribed may land in PostgreSQL just after our first read.
    /// Reading again shortly after closes that window.
    settle: std::slice::Iter<'static, Duration>,
    settle_sleep: Pin<Box<Sleep>>,
    settling: bool,
}

impl Timers {
    async fn start(st: &AppState, lifetime: Lifetime) -> Self {
        let mut keepalive = tokio::time::interval(st.cfg.sse_keepalive);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        keepalive.tick().await;
        let mut poll = tokio::time::interval(st.cfg.sse_poll);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        poll.tick().await;
        let mut settle = SETTLE_READS.iter();
        let settle_sleep = Box::pin(tokio::time::sleep(SETTLE_READS[0]));
        let settling = settle.next().is_some();
        Self {
            lifetime,
            keepalive,
            poll,
            settle,
            settle_sleep,
            settling,
        }
    }

    /// Arms the next settle read, if any is left.
    fn next_settle(&mut self) {
        match self.settle.next() {
            Some(after) => self
                .settle_sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + *after),
            None => self.settling = false,
        }
    }
}

/// One event stream's position and what it must do next.
struct Follower {
    st: AppState,
    id: Uuid,
    sub: Subscription,
    watch: KeyWatch,
    /// Key changes heard on this instance (every instance hears every
    /// announcement on the control exchange): a revoked or rotated key's
    /// streams end at once (subscribed in the handler).
    key_changes: broadcast::Receiver<Uuid>,
    changes_open: bool,
    /// The last output `seq` sent.
    last: i64,
    /// The highest `seq` heard of (live, or resumed after).
    max_seen: i64,
    /// The last status sent.
    status: CommandStatus,
    /// The command has ended: send everything stored, then `end`.
    finished: bool,
    /// Replay what is stored (at first: and, for a finished command,
    /// everything).
    need_catch_up: bool,
    /// Whether the next catch-up must read PostgreSQL (the first replay and
    /// the settle reads), not only the hub's recent chunks.
    must_read_stored: bool,
    /// The last catch-up failed (PostgreSQL unavailable): try again soon.
    retry_catch_up: bool,
    /// The command's `end` message, once it came: the reads after it are
    /// shared with the command's other watchers.
    ended: Option<Arc<LiveEvent>>,
}

impl Follower {
    fn new(
        st: AppState,
        cmd: &Command,
        after: i64,
        sub: Subscription,
        watch: KeyWatch,
        key_changes: broadcast::Receiver<Uuid>,
    ) -> Self {
        Self {
            st,
            id: cmd.id,
            sub,
            watch,
            key_changes,
            changes_open: true,
            last: after,
            max_seen: after,
            status: cmd.status,
            finished: cmd.status.is_terminal(),
            need_catch_up: true,
            must_read_stored: true,
            retry_catch_up: false,
            ended: None,
        }
    }

    /// A watcher that fell behind live output catches up from the hub's
    /// recent chunks (shared, already encoded) while they reach; PostgreSQL
    /// only when they do not, and once more at the end (usually an empty
    /// page) so nothing stored is missed.
    fn catch_up_start(&self) -> CatchUp {
        if self.must_read_stored {
            CatchUp::Stored
        } else {
            CatchUp::Recent
        }
    }

    /// The next page of the catch-up, advancing `last`; `None` once the
    /// catch-up is over.
    async fn catch_up_page(&mut self, phase: &mut CatchUp) -> Option<Vec<Bytes>> {
        loop {
            match *phase {
                // The hub hands out chunks from `last + 1` on, without a hole.
                CatchUp::Recent => match self.sub.recent_after(self.last, RECENT_PAGE) {
                    Some(recent) if recent.is_empty() => {
                        *phase = if self.finished {
                            CatchUp::Stored
                        } else {
                            CatchUp::Done { caught_up: true }
                        };
                    }
                    Some(recent) => {
                        let mut page = Vec::with_capacity(recent.len());
                        for (seq, frame) in recent {
                            page.push(frame);
                            self.last = seq;
                            self.max_seen = self.max_seen.max(seq);
                        }
                        return Some(page);
                    }
                    None => *phase = CatchUp::Stored,
                },
                CatchUp::Stored => {
                    let (pool, id, after) = (&self.st.pool, self.id, self.last);
                    let load = || read_page(pool, id, after);
                    let read = match &self.ended {
                        // Read once for every watcher at this position.
                        Some(end) => Box::pin(end.stored_after(after, load)).await,
                        None => Box::pin(load()).await,
                    };
                    match read {
                        Ok((page, last, full)) => {
                            self.last = last;
                            if !full {
                                *phase = CatchUp::Done { caught_up: true };
                            }
                            return Some(page);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, command = %self.id, "SSE catch-up read failed");
                            *phase = CatchUp::Done { caught_up: false };
                        }
                    }
                }
                CatchUp::Done { .. } => return None,
            }
        }
    }

    /// Ends a catch-up; `Some(frame)` closes the stream.
    fn catch_up_end(&mut self, phase: &CatchUp) -> Option<Bytes> {
        let caught_up = matches!(phase, CatchUp::Done { caught_up: true });
        self.need_catch_up = false;
        self.must_read_stored = false;
        self.retry_catch_up = !caught_up;
        // Never `end` without every stored chunk: clients trust it. Close
        // instead; the client resumes after `last`.
        (self.retry_catch_up && self.finished).then(|| {
            frames::reconnect(
                "the stored output could not be read; resume with Last-Event-ID",
                CLIENT_RETRY,
            )
        })
    }

    /// The `end` event. Every chunk is stored before a command turns
    /// terminal, and the catch-up before it sent them all.
    async fn end_frame(&self) -> Option<Bytes> {
        let load = || reload(&self.st.pool, self.id);
        match &self.ended {
            Some(end) => Box::pin(end.command_after(load))
                .await
                .map(|(_, frame)| frame),
            None => {
                let c = Box::pin(load()).await?;
                Some(frames::command("end", &c, None))
            }
        }
    }

    /// Waits for the next thing to happen and handles it.
    async fn next_step(&mut self, t: &mut Timers) -> Step {
        let behind = self.last < self.max_seen;
        tokio::select! {
            () = &mut t.lifetime.ends => {
                Step::Close(frames::reconnect(t.lifetime.reason, SHUTDOWN_RETRY))
            }
            change = self.key_changes.recv(), if self.changes_open => {
                self.on_key_change(change).await
            }
            () = self.st.shutdown.cancelled() => {
                // Resume elsewhere: the client reconnects with Last-Event-ID.
                Step::Close(frames::reconnect("server shutting down", SHUTDOWN_RETRY))
            }
            msg = self.sub.recv() => self.on_live(msg, behind).await,
            _ = tokio::time::sleep(BEHIND_RETRY), if behind => {
                self.need_catch_up = true;
                Step::Quiet
            }
            _ = tokio::time::sleep(CATCH_UP_RETRY), if self.retry_catch_up => {
                self.need_catch_up = true;
                self.must_read_stored = true;
                Step::Quiet
            }
            () = &mut t.settle_sleep, if t.settling => {
                self.need_catch_up = true;
                self.must_read_stored = true;
                t.next_settle();
                Step::Quiet
            }
            _ = t.keepalive.tick() => Step::Send(frames::KEEPALIVE),
            _ = t.poll.tick() => self.on_poll().await,
        }
    }

    /// A key changed somewhere: closes the stream if it was this one's and
    /// it no longer authenticates.
    async fn on_key_change(&mut self, change: Result<Uuid, RecvError>) -> Step {
        let valid = Box::pin(
            self.watch
                .survives(&self.st.pool, change, &mut self.changes_open),
        )
        .await;
        if !valid {
            return Step::Close(frames::reconnect(
                "the API key was revoked, rotated or has expired",
                CLIENT_RETRY,
            ));
        }
        Step::Quiet
    }

    /// A live message: the next chunk is sent (unless the stream is
    /// `behind`, i.e. was behind when it started waiting), a later one
    /// means a catch-up; a status change is sent.
    async fn on_live(&mut self, msg: Option<Arc<LiveEvent>>, behind: bool) -> Step {
        match msg.as_ref().map(|m| (&m.event, m)) {
            Some((OutputEvent::Chunk { seq, .. }, live)) => {
                self.max_seen = self.max_seen.max(*seq);
                if *seq == self.last + 1 && !behind {
                    self.last = *seq;
                    // Encoded once for every watcher on this instance.
                    if let Some(frame) = live.frame() {
                        return Step::Send(frame);
                    }
                } else if *seq > self.last + 1 {
                    // Missed something: PostgreSQL has it (or it was cut).
                    self.need_catch_up = true;
                    self.sub.take_lagged();
                }
            }
            Some((OutputEvent::Status, live)) => {
                let load = || reload(&self.st.pool, self.id);
                if let Some((status, frame)) = Box::pin(live.command_after(load)).await
                    && status != self.status
                {
                    self.status = status;
                    self.finished = status.is_terminal();
                    return Step::Send(frame);
                }
            }
            Some((OutputEvent::End, live)) => {
                self.finished = true;
                self.ended = Some(Arc::clone(live));
            }
            None => {
                // Hub dropped us; rely on polling.
                tokio::time::sleep(self.st.cfg.sse_poll).await;
                self.need_catch_up = true;
            }
        }
        Step::Quiet
    }

    /// The status poll: reads PostgreSQL when live messages were lost, and
    /// the command's status (a lost status or `end` message).
    async fn on_poll(&mut self) -> Step {
        // While the hub has no broker link, every tick reads PostgreSQL
        // (`take_lagged` says so).
        self.need_catch_up = self.sub.take_lagged() || self.last < self.max_seen;
        let Some(c) = Box::pin(reload(&self.st.pool, self.id)).await else {
            return Step::Quiet;
        };
        if c.status.is_terminal() {
            self.finished = true;
        }
        if c.status != self.status {
            self.status = c.status;
            return Step::Send(frames::command("status", &c, None));
        }
        Step::Quiet
    }
}

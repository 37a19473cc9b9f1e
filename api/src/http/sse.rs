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
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use rdev_shared::db::{Pool, commands, output};
use rdev_shared::domain::{Command, Scope};
use rdev_shared::mq::OutputEvent;
use uuid::Uuid;

use super::AppState;
use super::access::load_visible_command;
use super::error::{ApiError, ApiResult};
use super::extract::{Auth, Path};
use crate::admission::{Refusal, Slot};
use crate::frames;

/// The routes of this module (under `/v1`).
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new().routes(routes!(events))
}

/// Chunks read from PostgreSQL per page: at most 2 × 64 KiB held per
/// connection while catching up.
const CATCH_UP_PAGE: i64 = 2;
/// Extra PostgreSQL reads after subscribing, each this long after the last
/// (see `event_stream`): at 0.2, 1, 3, 6, 10 and 16 s, which covers the
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

/// Reads the next page of stored chunks after `*last` and turns it into
/// events, advancing `*last`. Returns the events and whether the page was full.
async fn read_page(pool: &Pool, id: Uuid, last: &mut i64) -> Result<(Vec<Bytes>, bool), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let page = output::read(&client, id, *last, None, CATCH_UP_PAGE)
        .await
        .map_err(|e| e.to_string())?;
    let full = page.len() as i64 == CATCH_UP_PAGE;
    let mut events = Vec::with_capacity(page.len() + 1);
    for c in page {
        if c.seq > *last + 1 {
            events.push(frames::gap(*last + 1, c.seq - 1));
        }
        events.push(frames::output(c.seq, c.stream.as_str(), &c.data));
        *last = c.seq;
    }
    Ok((events, full))
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

async fn reload(pool: &Pool, id: Uuid) -> Option<Command> {
    let client = pool.get().await.ok()?;
    commands::get(&client, id).await.ok().flatten()
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
    let slot = st.sse.admit(auth.key.id).map_err(|r| match r {
        Refusal::Instance(n) => ApiError::TooManyRequests {
            detail: format!("this instance serves its maximum of {n} event streams; retry later"),
            retry_after_s: 5,
        },
        Refusal::Key(n) => ApiError::TooManyRequests {
            detail: format!("this API key has its maximum of {n} open event streams"),
            retry_after_s: 5,
        },
    })?;
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
    mut key_changes: tokio::sync::broadcast::Receiver<Uuid>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + use<> {
    async_stream::stream! {
        // Held for the life of the stream: dropping the stream (client gone,
        // server shutting down, end) releases it.
        let _slot = slot;
        // Key changes heard on this instance (every instance hears every
        // announcement on the control exchange): a revoked or rotated key's
        // streams end at once (`key_changes` was subscribed in the handler).
        let mut changes_open = true;
        // The stream ends at its maximum lifetime, or when its key expires
        // if that comes first.
        let until_expiry = watch
            .expires_at
            .map(|e| (e - chrono::Utc::now()).to_std().unwrap_or_default());
        let (limit, limit_reason) = match until_expiry {
            Some(left) if left < st.cfg.sse_max_lifetime => (left, "the API key expired"),
            _ => (st.cfg.sse_max_lifetime, "maximum connection lifetime reached"),
        };
        let expires = tokio::time::sleep(limit);
        tokio::pin!(expires);
        let pool = st.pool.clone();
        let id = cmd.id;
        // Subscribe first: from here on nothing published is missed.
        let mut sub = Box::pin(st.hub.subscribe(id)).await;
        let shutdown = st.shutdown.clone();
        let mut last = after;
        let mut max_seen = after;
        let mut status = cmd.status;
        yield Ok(frames::command("status", &cmd, Some(CLIENT_RETRY)));

        // Comment lines while nothing else is written.
        let mut keepalive = tokio::time::interval(st.cfg.sse_keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        let mut poll = tokio::time::interval(st.cfg.sse_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        // Replay what is stored (and, for a finished command, everything).
        let mut need_catch_up = true;
        // Whether the next catch-up must read PostgreSQL (the first replay
        // and the settle reads), not only the hub's recent chunks.
        let mut must_read_stored = true;
        // Settle reads: the worker publishes a chunk live before its batch
        // reaches PostgreSQL (within ~50 ms), so a chunk published just
        // before we subscribed may land in PostgreSQL just after our first
        // read. Reading again shortly after closes that window.
        let mut settle = SETTLE_READS.iter();
        let settle_sleep = tokio::time::sleep(SETTLE_READS[0]);
        tokio::pin!(settle_sleep);
        let mut settling = settle.next().is_some();
        let mut finished = cmd.status.is_terminal();
        // The last catch-up failed (PostgreSQL unavailable): try again soon.
        let mut retry_catch_up = false;
        loop {
            if need_catch_up || finished {
                // A watcher that fell behind live output catches up from the
                // hub's recent chunks (shared, already encoded) while they
                // reach; PostgreSQL only when they do not, and once more at
                // the end (usually an empty page) so nothing stored is missed.
                let mut caught_up = false;
                if !must_read_stored {
                    // The hub hands out chunks from `last + 1` on, without a hole.
                    while let Some(recent) = sub.recent_after(last, RECENT_PAGE) {
                        if recent.is_empty() {
                            caught_up = !finished;
                            break;
                        }
                        for (seq, frame) in recent {
                            yield Ok(frame);
                            last = seq;
                            max_seen = max_seen.max(seq);
                        }
                    }
                }
                while !caught_up {
                    match Box::pin(read_page(&pool, id, &mut last)).await {
                        Ok((events, full)) => {
                            for e in events {
                                yield Ok(e);
                            }
                            if !full {
                                caught_up = true;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, command = %id, "SSE catch-up read failed");
                            break;
                        }
                    }
                }
                need_catch_up = false;
                must_read_stored = false;
                retry_catch_up = !caught_up;
                if retry_catch_up && finished {
                    // Never `end` without every stored chunk: clients trust
                    // it. Close instead; the client resumes after `last`.
                    yield Ok(frames::reconnect(
                        "the stored output could not be read; resume with Last-Event-ID",
                        CLIENT_RETRY,
                    ));
                    break;
                }
            }
            if finished {
                // Every chunk is stored before a command turns terminal.
                if let Some(c) = Box::pin(reload(&pool, id)).await {
                    yield Ok(frames::command("end", &c, None));
                }
                break;
            }
            let behind = last < max_seen;
            tokio::select! {
                () = &mut expires => {
                    yield Ok(frames::reconnect(limit_reason, SHUTDOWN_RETRY));
                    break;
                }
                change = key_changes.recv(), if changes_open => {
                    let recheck = match change {
                        Ok(id) => id == watch.id || id.is_nil(),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            changes_open = false;
                            false
                        }
                    };
                    if recheck && !Box::pin(key_still_valid(&pool, &watch)).await {
                        yield Ok(frames::reconnect(
                            "the API key was revoked, rotated or has expired",
                            CLIENT_RETRY,
                        ));
                        break;
                    }
                }
                () = shutdown.cancelled() => {
                    // Resume elsewhere: the client reconnects with Last-Event-ID.
                    yield Ok(frames::reconnect("server shutting down", SHUTDOWN_RETRY));
                    break;
                }
                msg = sub.recv() => match msg.as_deref().map(|m| (&m.event, m)) {
                    Some((OutputEvent::Chunk { seq, .. }, live)) => {
                        max_seen = max_seen.max(*seq);
                        if *seq == last + 1 && !behind {
                            // Encoded once for every watcher on this instance.
                            if let Some(frame) = live.frame() {
                                yield Ok(frame);
                            }
                            last = *seq;
                        } else if *seq > last + 1 {
                            // Missed something: PostgreSQL has it (or it was cut).
                            need_catch_up = true;
                            sub.take_lagged();
                        }
                    }
                    Some((OutputEvent::Status, _)) => {
                        if let Some(c) = Box::pin(reload(&pool, id)).await
                            && c.status != status
                        {
                            status = c.status;
                            finished = c.status.is_terminal();
                            yield Ok(frames::command("status", &c, None));
                        }
                    }
                    Some((OutputEvent::End, _)) => finished = true,
                    None => {
                        // Hub dropped us; rely on polling.
                        tokio::time::sleep(st.cfg.sse_poll).await;
                        need_catch_up = true;
                    }
                },
                _ = tokio::time::sleep(BEHIND_RETRY), if behind => need_catch_up = true,
                _ = tokio::time::sleep(CATCH_UP_RETRY), if retry_catch_up => {
                    need_catch_up = true;
                    must_read_stored = true;
                }
                () = &mut settle_sleep, if settling => {
                    need_catch_up = true;
                    must_read_stored = true;
                    match settle.next() {
                        Some(after) => settle_sleep.as_mut().reset(tokio::time::Instant::now() + *after),
                        None => settling = false,
                    }
                }
                _ = keepalive.tick() => yield Ok(frames::KEEPALIVE),
                _ = poll.tick() => {
                    // While the hub has no broker link, every tick reads
                    // PostgreSQL (`take_lagged` says so).
                    need_catch_up = sub.take_lagged() || last < max_seen;
                    if let Some(c) = Box::pin(reload(&pool, id)).await {
                        if c.status != status {
                            status = c.status;
                            yield Ok(frames::command("status", &c, None));
                        }
                        if c.status.is_terminal() {
                            finished = true;
                        }
                    }
                }
            }
        }
        drop(sub);
    }
}

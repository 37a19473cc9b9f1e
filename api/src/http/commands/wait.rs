//! `GET /v1/commands/{id}?wait=S`: the command as soon as it has ended, or
//! as it is once `S` seconds have passed, whichever comes first; one
//! request where a client would otherwise poll.
//!
//! It follows the command the way an event stream does (`sse.rs`), but
//! for its end alone: subscribe to the end (`OutputHub::subscribe_end`,
//! through the instance's one binding of every command's end, so a wait
//! costs the broker no binding of its own), then read PostgreSQL, so an
//! end after that read is heard. The worker publishes `end` after its
//! finishing commit, so the read that follows it sees the terminal row. A
//! periodic read (`RDEV_SSE_POLL`) is the backstop for a lost message, and
//! the only source while the hub has no broker link. A wait holds one of
//! the instance's and the key's event-stream slots, ends early when the
//! key stops authenticating (`401`) and, when the instance shuts down,
//! answers with the command as it is.

use std::time::Duration;

use rdev_shared::domain::Command;
use rdev_shared::mq::OutputEvent;
use tokio::time::MissedTickBehavior;

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Auth;
use crate::http::sse::{KeyWatch, admit, reload};

/// Longest `wait` a request may ask for, in seconds: below the usual
/// client and proxy timeouts (60 s).
pub const MAX_WAIT_S: u64 = 50;

/// The `wait` of a request, checked.
pub fn parse(wait: Option<u64>) -> ApiResult<Duration> {
    match wait {
        None => Ok(Duration::ZERO),
        Some(s) if s <= MAX_WAIT_S => Ok(Duration::from_secs(s)),
        Some(_) => Err(ApiError::field(
            "wait",
            format!("must be 0-{MAX_WAIT_S} seconds"),
        )),
    }
}

/// `cmd` once it has ended, or as it is after `wait` (shortened to when
/// the key expires).
pub async fn until_ended(
    st: &AppState,
    auth: &Auth,
    cmd: Command,
    wait: Duration,
) -> ApiResult<Command> {
    if cmd.status.is_terminal() || wait.is_zero() {
        return Ok(cmd);
    }
    let _slot = admit(st, auth)?;
    let watch = KeyWatch::of(auth);
    let wait = match watch.expires_at {
        Some(at) => wait.min((at - chrono::Utc::now()).to_std().unwrap_or_default()),
        None => wait,
    };
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let mut key_changes = st.keys.subscribe_changes();
    let mut changes_open = true;
    // Subscribe first: an end published after the read below is heard.
    let mut sub = Box::pin(st.hub.subscribe_end(cmd.id)).await;
    let mut live = true;
    let mut current = Box::pin(reload(&st.pool, cmd.id)).await.unwrap_or(cmd);
    let mut poll = tokio::time::interval(st.cfg.sse_poll);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    poll.tick().await;
    while !current.status.is_terminal() {
        let read = tokio::select! {
            () = &mut deadline => break,
            () = st.shutdown.cancelled() => break,
            change = key_changes.recv(), if changes_open => {
                if !Box::pin(watch.survives(&st.pool, change, &mut changes_open)).await {
                    return Err(ApiError::Unauthorized(
                        "the API key was revoked, rotated or has expired".into(),
                    ));
                }
                false
            }
            msg = sub.recv(), if live => match msg {
                // Only ends are delivered here: every way a command ends
                // (the worker's finish, a cancel, the reaper) publishes
                // `end` after its commit.
                Some(m) => matches!(m.event, OutputEvent::End),
                // The hub dropped this watcher: the poll goes on alone.
                None => {
                    live = false;
                    false
                }
            },
            _ = poll.tick() => true,
        };
        if read && let Some(c) = Box::pin(reload(&st.pool, current.id)).await {
            current = c;
        }
    }
    Ok(current)
}

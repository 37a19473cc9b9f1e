//! Input for the interactive commands this worker runs.
//!
//! The API stores each input event in PostgreSQL (numbered per command) and
//! sends it to the owning worker over `<prefix>.input` (routing key = this
//! worker's id). [`follow_input`] takes those messages and hands them to the
//! command's [`pump`], which applies events to the executor strictly in
//! `seq` order: a message out of order, or one never received, is read from
//! PostgreSQL (on a gap, and every [`POLL`]). So input is applied in order
//! and once, whatever the broker does.
//!
//! The pump also ends a command that has been idle for `RDEV_INTERACTIVE_IDLE`:
//! no input, no output and no attached client (the API sends `attached`
//! messages while a client is attached).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdev_shared::config::AmqpConfig;
use rdev_shared::db::{Pool, input};
use rdev_shared::interactive::{Input, InputMessage};
use rdev_shared::mq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often a pump reads PostgreSQL for events it did not hear about.
const POLL: Duration = Duration::from_secs(1);
/// Messages waiting per command before new ones are dropped (the pump then
/// reads them from PostgreSQL).
const NOTICES: usize = 64;
/// Input events waiting for the executor.
pub const INPUT_CHANNEL_CAPACITY: usize = 64;

/// What the input consumer hands a command's pump.
#[derive(Debug)]
pub enum Notice {
    /// Event `seq` (may arrive out of order, twice, or never).
    Input {
        /// Its number.
        seq: i64,
        /// The event.
        input: Input,
    },
    /// A client is attached.
    Attached,
}

/// The running interactive commands' pumps, by command id.
#[derive(Debug, Default)]
pub struct Router {
    pumps: Mutex<HashMap<Uuid, mpsc::Sender<Notice>>>,
}

impl Router {
    /// Registers a command; its notices arrive on the receiver until the
    /// registration drops.
    pub fn register(self: &Arc<Self>, id: Uuid) -> (Registration, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(NOTICES);
        self.lock().insert(id, tx);
        (
            Registration {
                router: self.clone(),
                id,
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, mpsc::Sender<Notice>>> {
        self.pumps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a message to its command's pump; dropped when the command is
    /// not running here, or its queue is full (it reads PostgreSQL).
    fn route(&self, m: InputMessage) {
        let (id, notice) = match m {
            InputMessage::Input {
                command_id,
                seq,
                input,
            } => (command_id, Notice::Input { seq, input }),
            InputMessage::Attached { command_id } => (command_id, Notice::Attached),
        };
        if let Some(tx) = self.lock().get(&id) {
            let _ = tx.try_send(notice);
        }
    }
}

/// Removes a command from the [`Router`] when dropped.
pub struct Registration {
    router: Arc<Router>,
    id: Uuid,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.router.lock().remove(&self.id);
    }
}

/// When a command last showed signs of life (input, output, an attached
/// client), for the idle limit.
#[derive(Clone, Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: Arc<AtomicU64>,
}

impl Activity {
    /// Activity now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Notes activity now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// How a pump ends an idle command.
#[derive(Clone, Debug)]
pub struct IdleLimit {
    /// `RDEV_INTERACTIVE_IDLE`.
    pub after: Duration,
    /// Stops the command.
    pub stop: CancellationToken,
    /// Set before `stop` fires, so the end is recorded as `idle`.
    pub fired: Arc<AtomicBool>,
}

/// Feeds one command's input to its executor in `seq` order until the
/// executor stops taking it (the command ended).
pub async fn pump(
    pool: Pool,
    id: Uuid,
    mut notices: mpsc::Receiver<Notice>,
    exec: mpsc::Sender<Input>,
    activity: Activity,
    idle: IdleLimit,
) {
    let mut next = 1_i64;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = notices.recv() => match n {
                None => return,
                Some(Notice::Attached) => activity.touch(),
                Some(Notice::Input { seq, input }) => {
                    activity.touch();
                    if seq == next {
                        if exec.send(input).await.is_err() {
                            return;
                        }
                        next += 1;
                    } else if seq > next && !catch_up(&pool, id, &mut next, &exec).await {
                        return;
                    }
                }
            },
            // The first tick is immediate: input sent while it was queued.
            _ = poll.tick() => {
                if !catch_up(&pool, id, &mut next, &exec).await {
                    return;
                }
                if activity.idle_for() >= idle.after {
                    tracing::info!(command_id = %id, idle = ?idle.after, "interactive command idle; stopping it");
                    idle.fired.store(true, Ordering::Release);
                    idle.stop.cancel();
                }
            }
            () = exec.closed() => return,
        }
    }
}

/// Applies the stored events from `*next` on; false when the executor no
/// longer takes input.
async fn catch_up(pool: &Pool, id: Uuid, next: &mut i64, exec: &mpsc::Sender<Input>) -> bool {
    loop {
        let page = match pool.get().await {
            Ok(client) => input::read_after(&client, id, *next - 1).await,
            Err(e) => Err(e.into()),
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(command_id = %id, error = %e, "cannot read input; retrying");
                return true;
            }
        };
        let full = page.len() as i64 == input::READ_PAGE;
        for (seq, event) in page {
            if seq != *next {
                return true;
            }
            if exec.send(event).await.is_err() {
                return false;
            }
            *next += 1;
        }
        if !full {
            return true;
        }
    }
}

/// Follows `<prefix>.input` for this worker until `done` fires, handing
/// messages to the router; reconnects with backoff.
pub async fn follow_input(
    amqp: AmqpConfig,
    worker_id: String,
    router: Arc<Router>,
    done: CancellationToken,
) {
    let name = format!("rdev-worker {worker_id} input");
    let handle = |d: lapin::message::Delivery| {
        match serde_json::from_slice::<InputMessage>(&d.data) {
            Ok(m) => router.route(m),
            Err(e) => tracing::debug!(error = %e, "malformed input message"),
        }
        std::future::ready(())
    };
    mq::follow(
        "input",
        &done,
        || mq::subscribe_input(&amqp, &name, &worker_id),
        handle,
        |_| {},
    )
    .await;
}

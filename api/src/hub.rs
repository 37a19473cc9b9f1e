//! Live output relay of this API instance. One exclusive, auto-delete
//! queue on the output exchange (followed with `mq::follow`, reconnecting
//! with the shared backoff) is bound to `cmd.<id>` while at least one
//! watcher (an SSE stream or an attach socket) follows that command; each
//! message is decoded once, its SSE frame encoded once (`frames.rs`), and
//! fanned out to the watchers in memory.
//!
//! Ends travel on `cmd.<id>.end`, which one binding (`cmd.*.end`) matches
//! for every command: a wait (`?wait=`), which needs only the end, costs
//! the broker no binding of its own, and a watcher one instead of two. The
//! ends binding is made when the instance first needs it and kept until
//! nothing has needed it for [`ENDS_LINGER`], so an instance nobody
//! watches through hears no ends, and one that waits often binds once.
//!
//! The hub also keeps each watched command's recent chunks (bounded per
//! command and per instance, dropped with the last watcher), so a watcher
//! that lagged, or one that joins late, replays them from memory; it reads
//! PostgreSQL only when the hub cannot vouch for the next `seq` (see
//! `http/sse.rs`). `is_connected` feeds `/ready`.
//!
//! Memory is bounded by construction: each watcher has a fixed-size channel
//! of shared (`Arc`) messages; when it is full the message is dropped for
//! that watcher, which catches up from the recent chunks or PostgreSQL
//! instead. The hub never buffers on a slow client's behalf.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use rdev_shared::config::AmqpConfig;
use rdev_shared::lifecycle::CancellationToken;
use rdev_shared::mq::{self, MqError, OutputEvent, Topology};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::frames::LiveEvent;

/// Messages a watcher may have waiting before it is considered lagging.
pub const WATCHER_BUFFER: usize = 8;
/// Recent live chunks kept per watched command, so that a watcher that fell
/// behind catches up from memory instead of PostgreSQL (measured: 1,000
/// watchers of 10 MB took 85 s and 60 s of PostgreSQL CPU with catch-up
/// from PostgreSQL, 30 s and 2.5 s with this): at most this many…
const RECENT_CHUNKS: usize = 4096;
/// …and this many bytes per command (chunk data and its encoded SSE frame
/// together)…
const RECENT_BYTES: usize = 16 << 20;
/// …and this many bytes for all commands of this instance together (data
/// and frames: a chunk of control characters encodes to six times its size,
/// so counting only the data would let the frames go far past the budget).
const RECENT_BUDGET: usize = 48 << 20;
/// How long the ends binding outlives its last user. Adding and removing
/// a topic binding costs RabbitMQ ~1 ms of CPU each (measured: 2.1 ms per
/// waited command when every wait bound its own); while bound, the
/// instance receives every command's end, a small transient message.
pub const ENDS_LINGER: Duration = Duration::from_secs(60);

/// A command's latest live chunks, contiguous in `seq`.
#[derive(Default)]
struct Recent {
    chunks: std::collections::VecDeque<Arc<LiveEvent>>,
    bytes: usize,
}

struct Watcher {
    id: u64,
    tx: mpsc::Sender<Arc<LiveEvent>>,
    lagged: Arc<AtomicBool>,
}

/// What a subscription hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Everything live about the command (its binding is `cmd.<id>`).
    Output,
    /// Only its end (no binding of its own).
    End,
}

#[derive(Default)]
struct State {
    watchers: HashMap<Uuid, Vec<Watcher>>,
    /// Subscribers of a command's end only (waits).
    enders: HashMap<Uuid, Vec<Watcher>>,
    bound: HashSet<Uuid>,
    /// Whether [`Topology::ENDS_BINDING`] is bound to the queue.
    ends_bound: bool,
    /// When a subscriber last came or went (see [`ENDS_LINGER`]); `None`
    /// before the first.
    ends_used_at: Option<Instant>,
    next_id: u64,
    /// Only for watched commands; dropped with their last watcher.
    recent: HashMap<Uuid, Recent>,
    /// Chunk bytes held in `recent`, all commands together.
    recent_bytes: usize,
}

impl State {
    fn list(&mut self, kind: Kind) -> &mut HashMap<Uuid, Vec<Watcher>> {
        match kind {
            Kind::Output => &mut self.watchers,
            Kind::End => &mut self.enders,
        }
    }

    /// Whether the ends binding has been unused for `linger`.
    fn ends_idle(&self, linger: Duration) -> bool {
        self.watchers.is_empty()
            && self.enders.is_empty()
            && self.ends_used_at.is_none_or(|at| at.elapsed() >= linger)
    }

    /// Keeps `event` among the command's recent chunks, evicting the
    /// oldest past the limits. A chunk that does not follow the last one
    /// (a publish was lost) or does not fit the instance's budget empties
    /// the command's list: it must stay contiguous to be trusted.
    fn remember(&mut self, command_id: Uuid, event: &Arc<LiveEvent>) {
        let Some((seq, _)) = event.chunk_seq_len() else {
            return;
        };
        // The budget counts what is held: data and encoded frame.
        let len = event.held_bytes();
        let recent = self.recent.entry(command_id).or_default();
        let follows = recent
            .chunks
            .back()
            .and_then(|last| last.chunk_seq_len())
            .is_none_or(|(last, _)| last + 1 == seq);
        if !follows || self.recent_bytes + len > RECENT_BUDGET {
            self.recent_bytes -= recent.bytes;
            *recent = Recent::default();
            if self.recent_bytes + len > RECENT_BUDGET {
                return;
            }
        }
        recent.chunks.push_back(event.clone());
        recent.bytes += len;
        self.recent_bytes += len;
        while recent.chunks.len() > RECENT_CHUNKS || recent.bytes > RECENT_BYTES {
            let Some(old) = recent.chunks.pop_front() else {
                break;
            };
            let freed = old.held_bytes();
            recent.bytes -= freed;
            self.recent_bytes -= freed;
        }
    }

    fn forget(&mut self, command_id: Uuid) {
        if let Some(r) = self.recent.remove(&command_id) {
            self.recent_bytes -= r.bytes;
        }
    }
}

/// The per-instance relay of live output.
pub struct OutputHub {
    amqp: AmqpConfig,
    topology: Topology,
    queue: String,
    state: Mutex<State>,
    channel: RwLock<Option<Channel>>,
    /// Serialises bind/unbind so a command is bound exactly while watched,
    /// and the ends binding kept while needed.
    binding: tokio::sync::Mutex<()>,
    connected: AtomicBool,
}

/// One watcher's live feed; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<OutputHub>,
    command_id: Uuid,
    kind: Kind,
    id: u64,
    rx: mpsc::Receiver<Arc<LiveEvent>>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The next live message; `None` if the hub dropped this watcher.
    pub async fn recv(&mut self) -> Option<Arc<LiveEvent>> {
        self.rx.recv().await
    }

    /// The live chunks after `last` that the hub still holds, as `(seq,
    /// SSE frame)` from `last + 1` on without a hole, at most `max`.
    /// `Some(empty)` means none came after `last`; `None` means the hub
    /// cannot tell (it no longer holds `last + 1`, or holds nothing): read
    /// PostgreSQL.
    pub fn recent_after(&self, last: i64, max: usize) -> Option<Vec<(i64, Bytes)>> {
        let chunks: Vec<Arc<LiveEvent>> = {
            let st = lock(&self.hub.state);
            let recent = st.recent.get(&self.command_id)?;
            let (first, _) = recent.chunks.front()?.chunk_seq_len()?;
            let (newest, _) = recent.chunks.back()?.chunk_seq_len()?;
            if newest <= last {
                return Some(Vec::new());
            }
            let skip = usize::try_from(last + 1 - first).ok()?;
            recent.chunks.iter().skip(skip).take(max).cloned().collect()
        };
        // Encoded (once, shared) outside the lock every watcher takes.
        Some(
            chunks
                .iter()
                .filter_map(|c| Some((c.chunk_seq_len()?.0, c.frame()?)))
                .collect(),
        )
    }

    /// Whether messages were dropped since the last call (then read
    /// PostgreSQL). A lagging watcher's buffered messages are discarded at
    /// once: it re-reads them from PostgreSQL anyway, and holding them would
    /// pin up to [`WATCHER_BUFFER`] chunks per slow client.
    ///
    /// While the hub is disconnected from the broker, or this command is not
    /// bound, it is always true: nothing live arrives, so every poll must
    /// read PostgreSQL (once was not enough: a watcher then heard nothing
    /// until the hub reconnected).
    pub fn take_lagged(&mut self) -> bool {
        let lagged = self.lagged.swap(false, Ordering::AcqRel) || !self.is_live();
        if lagged {
            while self.rx.try_recv().is_ok() {}
        }
        lagged
    }
}

impl Subscription {
    /// Whether live messages for this command reach this subscription.
    fn is_live(&self) -> bool {
        let st = lock(&self.hub.state);
        self.hub.is_connected()
            && st.ends_bound
            && (self.kind == Kind::End || st.bound.contains(&self.command_id))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.command_id, self.kind, self.id);
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OutputHub {
    /// A hub for this API instance; call [`OutputHub::run`] to connect it.
    pub fn new(amqp: AmqpConfig, instance: &str) -> Arc<Self> {
        let topology = Topology::new(amqp.prefix.clone());
        Arc::new(Self {
            queue: format!("{}.output.{instance}", topology.prefix()),
            topology,
            amqp,
            state: Mutex::new(State::default()),
            channel: RwLock::new(None),
            binding: tokio::sync::Mutex::new(()),
            connected: AtomicBool::new(false),
        })
    }

    /// Whether the hub's consumer is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Number of commands currently watched on this instance.
    pub fn watched_commands(&self) -> usize {
        lock(&self.state).watchers.len()
    }

    fn current_channel(&self) -> Option<Channel> {
        self.channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Registers a watcher of `command_id` and makes sure the instance queue
    /// is bound for it before returning, so everything published afterwards
    /// reaches the watcher (what came before is in PostgreSQL).
    pub async fn subscribe(self: &Arc<Self>, command_id: Uuid) -> Subscription {
        let sub = self.register(command_id, Kind::Output, WATCHER_BUFFER);
        let _guard = self.binding.lock().await;
        let needs_bind = !lock(&self.state).bound.contains(&command_id);
        if needs_bind {
            match self.bind(&Topology::output_key(command_id)).await {
                Ok(()) => {
                    lock(&self.state).bound.insert(command_id);
                }
                Err(e) => {
                    // Not fatal: the watcher polls PostgreSQL until the hub reconnects.
                    tracing::debug!(error = %e, command = %command_id, "output bind failed");
                    sub.lagged.store(true, Ordering::Release);
                }
            }
        }
        if let Err(e) = self.ensure_ends().await {
            tracing::debug!(error = %e, "ends bind failed");
            sub.lagged.store(true, Ordering::Release);
        }
        sub
    }

    /// Registers a subscriber of `command_id`'s end only, and makes sure
    /// the instance hears ends before returning, so an end published
    /// afterwards reaches it. No binding of its own: see [`ENDS_LINGER`].
    pub async fn subscribe_end(self: &Arc<Self>, command_id: Uuid) -> Subscription {
        let sub = self.register(command_id, Kind::End, 1);
        let _guard = self.binding.lock().await;
        if let Err(e) = self.ensure_ends().await {
            // Not fatal: the waiter polls PostgreSQL until the hub reconnects.
            tracing::debug!(error = %e, "ends bind failed");
            sub.lagged.store(true, Ordering::Release);
        }
        sub
    }

    fn register(self: &Arc<Self>, command_id: Uuid, kind: Kind, buffer: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = {
            let mut st = lock(&self.state);
            st.next_id += 1;
            st.ends_used_at = Some(Instant::now());
            let id = st.next_id;
            st.list(kind).entry(command_id).or_default().push(Watcher {
                id,
                tx,
                lagged: lagged.clone(),
            });
            id
        };
        Subscription {
            hub: self.clone(),
            command_id,
            kind,
            id,
            rx,
            lagged,
        }
    }

    /// Binds [`Topology::ENDS_BINDING`] unless it is bound; the caller
    /// holds `binding`.
    async fn ensure_ends(&self) -> Result<(), MqError> {
        if lock(&self.state).ends_bound {
            return Ok(());
        }
        self.bind(Topology::ENDS_BINDING).await?;
        lock(&self.state).ends_bound = true;
        Ok(())
    }

    async fn bind(&self, key: &str) -> Result<(), MqError> {
        let ch = self.current_channel().ok_or(MqError::Unavailable)?;
        ch.queue_bind(
            self.queue.as_str().into(),
            self.topology.output_exchange().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    async fn unbind(&self, key: &str) -> Result<(), MqError> {
        let ch = self.current_channel().ok_or(MqError::Unavailable)?;
        ch.queue_unbind(
            self.queue.as_str().into(),
            self.topology.output_exchange().into(),
            key.into(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    /// Removes the ends binding once nothing has needed it for `linger`.
    async fn release_idle_ends(&self, linger: Duration) {
        let _guard = self.binding.lock().await;
        {
            let mut st = lock(&self.state);
            if !st.ends_bound || !st.ends_idle(linger) {
                return;
            }
            // Cleared first: a subscriber that comes while the unbind is
            // under way binds again (after this guard).
            st.ends_bound = false;
        }
        if let Err(e) = self.unbind(Topology::ENDS_BINDING).await {
            // Bound still, or the queue went with the connection: both
            // harmless (ends nobody waits for are dropped on arrival).
            tracing::debug!(error = %e, "ends unbind failed");
        }
    }

    fn unsubscribe(self: &Arc<Self>, command_id: Uuid, kind: Kind, id: u64) {
        let last = {
            let mut st = lock(&self.state);
            st.ends_used_at = Some(Instant::now());
            let lists = st.list(kind);
            let Some(list) = lists.get_mut(&command_id) else {
                return;
            };
            list.retain(|w| w.id != id);
            if !list.is_empty() {
                return;
            }
            lists.remove(&command_id);
            if kind == Kind::End {
                return;
            }
            st.forget(command_id);
            true
        };
        if !last {
            return;
        }
        let hub = self.clone();
        // Drop may run outside a runtime (e.g. at process exit); then the
        // auto-delete queue disappears with the connection anyway.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _guard = hub.binding.lock().await;
                let still_unwatched = !lock(&hub.state).watchers.contains_key(&command_id);
                if still_unwatched
                    && lock(&hub.state).bound.remove(&command_id)
                    && let Err(e) = hub.unbind(&Topology::output_key(command_id)).await
                {
                    tracing::debug!(error = %e, command = %command_id, "output unbind failed");
                }
            });
        }
    }

    fn dispatch(&self, routing_key: &str, event: OutputEvent) {
        let Some((id, _)) = Topology::parse_live_key(routing_key) else {
            return;
        };
        let end = event == OutputEvent::End;
        {
            // Most ends are of commands nobody here follows (the ends
            // binding matches them all): drop those before any work.
            let st = lock(&self.state);
            let heard = st.watchers.contains_key(&id) || (end && st.enders.contains_key(&id));
            if !heard {
                return;
            }
        }
        // Shared by every watcher, SSE frame included (encoded once, here,
        // outside the lock, so the recent list's budget counts it).
        let event = Arc::new(LiveEvent::new(event));
        let _ = event.frame();
        let mut st = lock(&self.state);
        if st.watchers.contains_key(&id) {
            st.remember(id, &event);
        }
        let enders = if end { st.enders.get(&id) } else { None };
        for w in st.watchers.get(&id).into_iter().chain(enders).flatten() {
            if let Err(mpsc::error::TrySendError::Full(_)) = w.tx.try_send(event.clone()) {
                w.lagged.store(true, Ordering::Release);
            }
        }
    }

    fn mark_all_lagged(&self) {
        let mut st = lock(&self.state);
        st.bound.clear();
        st.ends_bound = false;
        // What was published while disconnected is not in them.
        st.recent.clear();
        st.recent_bytes = 0;
        drop(st);
        self.mark_watchers_lagged();
    }

    fn mark_watchers_lagged(&self) {
        let st = lock(&self.state);
        for w in st.watchers.values().chain(st.enders.values()).flatten() {
            w.lagged.store(true, Ordering::Release);
        }
    }

    async fn connect(&self) -> Result<(Connection, lapin::Consumer), MqError> {
        let conn = mq::connect(&self.amqp, &format!("rdev-api {}", self.queue)).await?;
        let ch = conn.create_channel().await?;
        mq::declare(&ch, &self.topology).await?;
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(self.queue.as_str().into(), opts, FieldTable::default())
            .await?;
        // Live output is transient: no acks, PostgreSQL holds the durable copy.
        let consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = Some(ch);
        // Re-bind every command watched while we were away.
        let _guard = self.binding.lock().await;
        let (watched, ends): (Vec<Uuid>, bool) = {
            let st = lock(&self.state);
            let ends = !st.ends_idle(ENDS_LINGER);
            (st.watchers.keys().copied().collect(), ends)
        };
        for id in watched {
            self.bind(&Topology::output_key(id)).await?;
            lock(&self.state).bound.insert(id);
        }
        if ends {
            self.ensure_ends().await?;
        }
        // What was published between a watcher's last read of PostgreSQL
        // and its re-bind reached nobody: every watcher reads once more.
        self.mark_watchers_lagged();
        Ok((conn, consumer))
    }

    /// Keeps the hub connected until `shutdown` is cancelled, reconnecting
    /// with backoff; while disconnected, watchers are marked lagging so they
    /// poll PostgreSQL.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let open = || async {
            let opened = self.connect().await;
            if opened.is_err() {
                *self.channel.write().unwrap_or_else(|e| e.into_inner()) = None;
            }
            opened
        };
        let handle = |d: lapin::message::Delivery| {
            if let Some(ev) = OutputEvent::decode(&d.properties, d.data) {
                self.dispatch(d.routing_key.as_str(), ev);
            }
            std::future::ready(())
        };
        let connected = |up: bool| {
            self.connected.store(up, Ordering::Release);
            if !up {
                *self.channel.write().unwrap_or_else(|e| e.into_inner()) = None;
                self.mark_all_lagged();
            }
        };
        // Unbinds the ends once unused for the linger (checked every
        // quarter of it).
        let janitor = async {
            let mut tick = tokio::time::interval(ENDS_LINGER / 4);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => self.release_idle_ends(ENDS_LINGER).await,
                }
            }
        };
        let follow = mq::follow("live output (api)", &shutdown, open, handle, connected);
        tokio::join!(follow, janitor);
    }
}

#[cfg(test)]
mod tests {
    use rdev_shared::config::Secret;
    use rdev_shared::domain::OutputStream;

    use super::*;

    fn hub() -> Arc<OutputHub> {
        // Never connected: subscriptions work in memory, binds fail quietly.
        OutputHub::new(
            AmqpConfig {
                amqp_url: Secret::new("amqp://127.0.0.1:1/%2f"),
                prefix: "unit".into(),
                ca_file: None,
            },
            "test",
        )
    }

    fn chunk(hub: &OutputHub, id: Uuid, seq: i64, len: usize) {
        hub.dispatch(
            &format!("cmd.{id}"),
            OutputEvent::Chunk {
                seq,
                stream: OutputStream::Stdout,
                data: Bytes::from(vec![b'x'; len]),
            },
        );
    }

    fn seqs(frames: &[(i64, Bytes)]) -> Vec<i64> {
        frames.iter().map(|(seq, _)| *seq).collect()
    }

    #[tokio::test]
    async fn a_lagging_watcher_finds_the_chunks_it_missed_in_order() {
        let hub = hub();
        let id = Uuid::now_v7();
        let sub = hub.subscribe(id).await;
        assert!(sub.recent_after(0, 16).is_none(), "nothing held yet");
        for seq in 1..=20 {
            chunk(&hub, id, seq, 10);
        }
        assert_eq!(seqs(&sub.recent_after(3, 5).unwrap()), vec![4, 5, 6, 7, 8]);
        assert_eq!(sub.recent_after(20, 5).unwrap().len(), 0, "up to date");
        // A publish lost between 20 and 22: the list restarts at 22, so the
        // hub can no longer vouch for 21.
        chunk(&hub, id, 22, 10);
        assert!(sub.recent_after(20, 5).is_none());
        assert_eq!(seqs(&sub.recent_after(21, 5).unwrap()), vec![22]);
    }

    #[tokio::test]
    async fn recent_chunks_are_bounded_and_dropped_with_the_last_watcher() {
        let hub = hub();
        let id = Uuid::now_v7();
        let sub = hub.subscribe(id).await;
        let n = i64::try_from(RECENT_CHUNKS).unwrap() + 10;
        for seq in 1..=n {
            chunk(&hub, id, seq, 1);
        }
        assert!(sub.recent_after(5, 1).is_none(), "the oldest were evicted");
        assert_eq!(seqs(&sub.recent_after(10, 1).unwrap()), vec![11]);
        // Per command by bytes: 1 MiB chunks, at most RECENT_BYTES of them.
        let big = 1 << 20;
        for seq in n + 1..=n + 20 {
            chunk(&hub, id, seq, big);
        }
        assert!(lock(&hub.state).recent_bytes <= RECENT_BYTES);
        assert!(sub.recent_after(n, 1).is_none(), "evicted by size");
        drop(sub);
        let st = lock(&hub.state);
        assert!(st.recent.is_empty());
        assert_eq!(st.recent_bytes, 0);
    }

    #[tokio::test]
    async fn the_budget_counts_encoded_frames() {
        let hub = hub();
        let id = Uuid::now_v7();
        let _sub = hub.subscribe(id).await;
        hub.dispatch(
            &format!("cmd.{id}"),
            OutputEvent::Chunk {
                seq: 1,
                stream: OutputStream::Stdout,
                data: Bytes::from(vec![1u8; 64 * 1024]),
            },
        );
        let st = lock(&hub.state);
        let held = st.recent.get(&id).expect("held").chunks[0].clone();
        let frame = held.frame().expect("frame").len();
        assert!(frame > 5 * 64 * 1024, "\\u0001 per byte: {frame}");
        assert_eq!(st.recent_bytes, 64 * 1024 + frame);
    }

    #[tokio::test]
    async fn unwatched_commands_are_not_remembered() {
        let hub = hub();
        chunk(&hub, Uuid::now_v7(), 1, 10);
        hub.dispatch(&Topology::end_key(Uuid::now_v7()), OutputEvent::End);
        assert!(lock(&hub.state).recent.is_empty());
    }

    #[tokio::test]
    async fn an_end_subscriber_hears_only_its_commands_end() {
        let hub = hub();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut end_a = hub.subscribe_end(a).await;
        let watch_a = hub.subscribe(a).await;
        chunk(&hub, a, 1, 10);
        hub.dispatch(&Topology::output_key(a), OutputEvent::Status);
        hub.dispatch(&Topology::end_key(b), OutputEvent::End);
        assert!(
            end_a.rx.try_recv().is_err(),
            "no chunk, status or other end"
        );
        hub.dispatch(&Topology::end_key(a), OutputEvent::End);
        let heard = end_a.rx.try_recv().expect("the end");
        assert_eq!(heard.event, OutputEvent::End);
        assert_eq!(watch_a.rx.len(), 3, "the watcher: chunk, status, end");
        drop((end_a, watch_a));
        let st = lock(&hub.state);
        assert!(st.enders.is_empty() && st.watchers.is_empty());
    }

    /// Publishes `event` about `id` with `mandatory`, as the worker would
    /// (its routing key); whether the broker routed it to a queue.
    async fn routed(ch: &Channel, topology: &Topology, id: Uuid, event: &OutputEvent) -> bool {
        let (body, headers) = event.encode();
        let confirm = ch
            .basic_publish(
                topology.output_exchange().into(),
                Topology::live_key(id, event).into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                lapin::BasicProperties::default().with_headers(headers),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "{confirm:?}");
        confirm.take_message().is_none()
    }

    #[tokio::test]
    async fn waits_share_one_binding_of_every_end_which_outlives_them_by_the_linger() {
        let env = rdev_shared::test_support::TestEnv::new().await;
        let hub = OutputHub::new(env.amqp.clone(), "ends");
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(hub.clone().run(shutdown.clone()));
        let conn = mq::connect(&env.amqp, "rdev-test probe")
            .await
            .expect("broker");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirms");
        for _ in 0..500 {
            if hub.is_connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(hub.is_connected(), "the hub connects to the test broker");
        let t = &env.topology;
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(
            !routed(&ch, t, a, &OutputEvent::End).await,
            "nothing bound yet"
        );

        let mut end_a = hub.subscribe_end(a).await;
        let _end_b = hub.subscribe_end(b).await;
        let chunk_a = OutputEvent::Chunk {
            seq: 1,
            stream: OutputStream::Stdout,
            data: Bytes::from_static(b"x"),
        };
        assert!(
            !routed(&ch, t, a, &chunk_a).await,
            "a wait binds nothing for its command"
        );
        assert!(
            routed(&ch, t, a, &OutputEvent::End).await,
            "the ends are bound"
        );
        let heard = tokio::time::timeout(Duration::from_secs(10), end_a.recv())
            .await
            .expect("the end arrives")
            .expect("subscribed");
        assert_eq!(heard.event, OutputEvent::End);

        // A watcher binds its command's output; the ends binding serves it.
        let mut watch_a = hub.subscribe(a).await;
        assert!(
            routed(&ch, t, a, &chunk_a).await,
            "a watcher's command is bound"
        );
        assert!(routed(&ch, t, a, &OutputEvent::End).await);
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(10), watch_a.recv())
                .await
                .expect("live")
                .expect("subscribed");
            assert!(matches!(
                m.event,
                OutputEvent::Chunk { .. } | OutputEvent::End
            ));
        }
        assert!(!watch_a.take_lagged(), "live: output and end bound");
        drop((end_a, _end_b, watch_a));

        // Unused, but within the linger: kept.
        hub.release_idle_ends(ENDS_LINGER).await;
        assert!(
            routed(&ch, t, b, &OutputEvent::End).await,
            "kept for the linger"
        );
        // Past it: unbound at the broker.
        hub.release_idle_ends(Duration::ZERO).await;
        assert!(!routed(&ch, t, b, &OutputEvent::End).await, "released");
        // A later wait binds again before it returns.
        let _end_b = hub.subscribe_end(b).await;
        assert!(routed(&ch, t, b, &OutputEvent::End).await, "bound again");

        shutdown.cancel();
        running.await.expect("hub stops");
        let _ = conn.close(200, "bye".into()).await;
    }
}

//! The worker loop: consume run messages, claim each command in PostgreSQL,
//! run it, record how it ended, then acknowledge the message.
//!
//! Invariants:
//! - a command runs only after its conditional claim matched (a redelivered
//!   message is acknowledged and skipped);
//! - the terminal status and its event's webhook deliveries are written in
//!   one transaction (one statement when no endpoint wants the event), then
//!   the end marker is published, then the message is acknowledged;
//! - a lost broker connection does not stop running commands; their acks may
//!   then fail, and the redelivery is harmless because of the claim.

mod batch;
mod command;
mod consume;
mod finish;
mod heartbeat;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdev_shared::db::notify::Notifier;
use rdev_shared::db::{Pool, webhooks};
use rdev_shared::metrics::Metrics;
use rdev_shared::mq::{Publisher, Topology};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::executor::Executors;

pub use consume::consume;
pub use heartbeat::{control, heartbeat};

/// Connections of the pool the claims and finishes are written through
/// ([`rdev_shared::db::key_lookup_pool`]): [`batch::IN_FLIGHT`] writes of
/// each kind at once.
pub const WRITE_CONNECTIONS: usize = 2 * batch::IN_FLIGHT;

/// How long database writes of a claim or a finish are retried.
const DB_RETRY_FOR: Duration = Duration::from_secs(60);
/// Error recorded for commands stopped because the worker shuts down.
pub const SHUTDOWN_ERROR: &str = "worker shutting down";

/// State shared by the consumer loop, the command tasks and the heartbeat.
pub struct Worker {
    cfg: Config,
    worker_id: String,
    pool: Pool,
    publisher: Arc<Publisher>,
    topology: Topology,
    executors: Executors,
    /// Running commands and the token that stops each one.
    running: Mutex<HashMap<Uuid, CancellationToken>>,
    /// The pumps of running interactive commands.
    inputs: Arc<crate::interactive::Router>,
    /// Fires when the drain period is over: running commands are stopped.
    stop_commands: CancellationToken,
    consumer_connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// Claims and finishes written together.
    batches: batch::Batches,
    /// Wakes the dispatchers after a commit that wrote webhook deliveries.
    due: Notifier,
}

impl Worker {
    /// Builds the shared state.
    /// `writes` is the pool of the claims and finishes (see
    /// [`WRITE_CONNECTIONS`]).
    pub fn new(
        cfg: Config,
        worker_id: String,
        pool: Pool,
        writes: Pool,
        executors: Executors,
    ) -> Self {
        let publisher = Publisher::new(cfg.amqp.clone(), format!("rdev-worker {worker_id}"));
        let metrics = Arc::new(Metrics::new("rdev-worker"));
        publisher.set_metrics(metrics.clone());
        executors.set_metrics(&metrics);
        let due = Notifier::spawn(pool.clone(), webhooks::DUE_CHANNEL);
        Self {
            batches: batch::Batches::start(
                writes,
                &worker_id,
                metrics.clone(),
                Topology::new(cfg.amqp.prefix.clone()),
                due.clone(),
            ),
            due,
            topology: Topology::new(cfg.amqp.prefix.clone()),
            cfg,
            worker_id,
            pool,
            publisher,
            executors,
            running: Mutex::new(HashMap::new()),
            inputs: Arc::default(),
            stop_commands: CancellationToken::new(),
            consumer_connected: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    /// This worker's id (its input routing key, its name in the database).
    pub fn id(&self) -> &str {
        &self.worker_id
    }

    /// The broker this worker uses.
    pub fn amqp(&self) -> &rdev_shared::config::AmqpConfig {
        &self.cfg.amqp
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// What contains local commands (`None` when the local executor is off).
    pub fn sandbox_status(&self) -> Option<crate::sandbox::SandboxStatus> {
        self.executors.local().map(|l| l.sandbox().status())
    }

    /// Where input messages for running commands go.
    pub fn input_router(&self) -> Arc<crate::interactive::Router> {
        self.inputs.clone()
    }

    /// Flag telling `/ready` whether the consumer is connected.
    pub fn consumer_connected(&self) -> Arc<AtomicBool> {
        self.consumer_connected.clone()
    }

    fn running_ids(&self) -> Vec<Uuid> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Stops a command this worker runs (a client's cancel); false when it
    /// does not run it.
    pub fn cancel(&self, id: Uuid) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.get(&id) {
            Some(token) => {
                if !token.is_cancelled() {
                    tracing::info!(command_id = %id, "cancel requested; stopping the command");
                }
                token.cancel();
                true
            }
            None => false,
        }
    }
}

impl Worker {
    /// Stops a command that is no longer this worker's (its row is terminal
    /// or claimed by another worker). Its end is then not recorded: the
    /// conditional `finish` finds it not running.
    fn disown(&self, id: Uuid) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = running.get(&id)
            && !token.is_cancelled()
        {
            tracing::warn!(command_id = %id, "command is no longer this worker's (reaped as worker_lost?); stopping it");
            token.cancel();
        }
    }
}

/// Removes a command from the heartbeat set however its task ends.
struct RunningGuard<'a> {
    worker: &'a Worker,
    id: Uuid,
}

impl<'a> RunningGuard<'a> {
    /// Registers the command; the token stops it on a client's cancel or at
    /// the end of the drain period.
    fn new(worker: &'a Worker, id: Uuid) -> (Self, CancellationToken) {
        let token = worker.stop_commands.child_token();
        worker
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, token.clone());
        worker.metrics.commands_active.inc();
        (Self { worker, id }, token)
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.worker
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.worker.metrics.commands_active.dec();
    }
}
